"""The tf.data input pipeline: order, shard, augment and batch a source's examples.

Training order (random-access sources): global example position p = step * global_batch + j runs
through epochs; epoch e visits the examples in the permutation drawn from (seed, e); example p's
augmentation uses the stateless seed (seed, p). So the batch of step s depends only on the config
and s: a resumed run reads exactly what an uninterrupted one would, and every process count sees
the same global batches (process i reads its slice of each one). The iterator state saved in a
checkpoint is therefore just the step.

Batches are numpy dicts of this process's share; `jax.make_array_from_process_local_data` makes
them global arrays.
"""

import logging

import numpy as np
import tensorflow as tf

from pix2seq_d_jax import compile_options
from pix2seq_d_jax.data import transforms
from pix2seq_d_jax.data.sources import Source


def _local_batch(global_batch: int, process_count: int, what: str) -> int:
  if global_batch % process_count:
    raise ValueError(f'{what}={global_batch} must be divisible by the number of processes '
                     f'({process_count}).')
  return global_batch // process_count


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order in which epoch `epoch` visits the examples."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_positions(num_examples: int, seed: int, start_step: int, global_batch: int,
                    process_index: int, process_count: int) -> tf.data.Dataset:
  """This process's (example index, global position) pairs from `start_step` on (endless).

  Positions are tf ops; the example of each position is looked up in its epoch's permutation by
  one numpy call per step (no Python generator, whose state tf.data would have to hold and tear
  down with the iterator).
  """
  local = global_batch // process_count
  cache = {}   # epoch -> permutation (~1 MB for COCO): the newest two epochs are kept

  def lookup(positions: np.ndarray) -> np.ndarray:
    # Safe if tf.data runs calls concurrently: a permutation is a function of its epoch.
    epochs, slots = np.divmod(positions, num_examples)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs).tolist():
      perm = cache.get(epoch)
      if perm is None:
        perm = cache[epoch] = epoch_permutation(num_examples, seed, epoch)
        for old in [e for e in list(cache) if e < epoch - 1]:
          cache.pop(old, None)
      here = epochs == epoch
      out[here] = perm[slots[here]]
    return out

  def step_positions(step):
    first = step * global_batch + process_index * local
    positions = tf.range(first, first + local, dtype=tf.int64)
    index = tf.numpy_function(lookup, [positions], tf.int64, stateful=False)
    return tf.ensure_shape(index, [local]), positions

  steps = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max // global_batch)
  return steps.map(step_positions).unbatch()


def _split_label(label):
  """Source label [.., 3] -> training target [.., 2] with crowd regions as void."""
  not_crowd = tf.cast(tf.equal(label[..., 2:3], 0), label.dtype)
  return label[..., :2] * not_crowd


def _prepare_train(example, position, *, config, is_video):
  d, m = config.dataset, config.model
  seed = tf.stack([tf.cast(config.seed, tf.int64), tf.cast(position, tf.int64)])
  id_seed, aug_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  label, dropped = transforms.order_ids(_split_label(example['label']), order=d.object_order,
                                        max_instances=d.max_instances, seed=id_seed)
  out = transforms.train_transform(
      {'image': example['image'], 'label': label}, image_size=tuple(m.image_size),
      mask_size=tuple(m.mask_size), min_scale=d.min_scale, max_scale=d.max_scale,
      color_jitter_strength=d.color_jitter, flip_prob=d.flip_prob, seed=aug_seed)
  if d.object_order == 'raster':
    out['masks'] = transforms.raster_ids(out['masks'])
  batch = {'image': out['image'], 'masks': out['masks'], 'id': example['id'],
           'dropped_segments': dropped}
  if is_video:
    # A window of frames: the last is the target, the earlier ones are the condition.
    batch['image'] = out['image'][-1]
    batch['masks'] = out['masks'][-1]
    batch['cond_masks'] = out['masks'][:-1]
  return batch


def train_dataset(config, source: Source, *, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> tf.data.Dataset:
  """This process's training batches from `start_step` on (an endless dataset).

  Elements: 'image' float32 [L, H, W, 3]; 'masks' int32 [L, h, w, 2]; 'id' int64 [L];
  'dropped_segments' int32 [L] (segments beyond K made void); video adds 'cond_masks'
  int32 [L, P, h, w, 2]. L = train.batch_size / process_count.
  """
  local = _local_batch(config.train.batch_size, process_count, 'config.train.batch_size')
  if source.random_access:
    n = source.num_examples('train')
    if n <= 0:
      raise ValueError(f'{config.dataset.name}: the train split is empty.')
    positions = train_positions(n, config.seed, start_step, config.train.batch_size,
                                process_index, process_count)
    load = source.example_fn('train')
    ds = positions.map(lambda i, p: (load(i), p), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)
  else:
    ds = source.stream('train', shard_index=process_index, shard_count=process_count,
                       seed=config.seed).repeat()
    # Sequential sources resume by skipping the records this process already read; records
    # are skipped before they are decoded.
    ds = ds.skip(start_step * local).enumerate(start_step * local)
    decode = source.decode_fn('train')
    ds = ds.map(lambda p, rec: (decode(rec), p * process_count + process_index),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.map(lambda ex, p: _prepare_train(ex, p, config=config, is_video=source.is_video),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local, drop_remainder=True).prefetch(2)
  return ds.with_options(_options())


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # No autotuning: every AUTOTUNE map runs as many calls at once as tf.data's thread pool has
  # threads (one per core); benchmarks/input_pipeline.py measured the same images/s as with the
  # tuner. With the tuner on, deleting the iterator after an evaluation (the end of every run)
  # waited on its thread for 16-55 s (configs/shapes.py, configs/moving_shapes.py).
  options.autotune.enabled = False
  options.autotune.initial_parallelism = compile_options.usable_cores()
  # Each op of an example runs on one thread: the parallelism comes from the many examples in
  # flight, and single-threaded ops avoid intra-op hand-offs (benchmarks/input_pipeline.py).
  options.threading.max_intra_op_parallelism = 1
  return options


def num_eval_examples(config, source: Source) -> int:
  n = source.num_examples('validation')
  if config.eval.max_examples > 0:
    n = min(n, config.eval.max_examples)
  return n


def eval_dataset(config, source: Source, *, process_index: int = 0,
                 process_count: int = 1) -> tuple[tf.data.Dataset, int]:
  """This process's evaluation batches, padded so every process runs the same number of steps.

  Elements: 'image' float32 [L, H, W, 3]; 'label_orig' int32 [L, Hmax, Wmax, 3] (class, id,
  crowd at the original size, zero-padded to dataset.max_original_size); 'orig_size',
  'unpadded_size' int32 [L, 2]; 'id' int64 [L]; 'valid' bool [L] (False on padding examples).
  Video sources add a frame axis after L to 'image' and 'label_orig' (padded with zeros to the
  longest video of the batch) and 'num_frames' int32 [L].

  Returns:
    (dataset, number of batches).
  """
  local = _local_batch(config.eval.batch_size, process_count, 'config.eval.batch_size')
  n = num_eval_examples(config, source)
  per_step = config.eval.batch_size
  num_batches = -(-n // per_step)
  m = config.model
  max_h, max_w = config.dataset.max_original_size
  # Global position g = b * global_batch + process_index * local + j; examples in order.
  positions = [b * per_step + process_index * local + j
               for b in range(num_batches) for j in range(local)]
  if source.random_access:
    load = source.example_fn('validation')
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(positions, np.int64))
    ds = ds.map(lambda g: (load(tf.minimum(g, n - 1)), g < n),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    # Every process reads the split in order and keeps the records of its slots (the positions
    # above), so batches hold the same examples as for a random-access source. Records are
    # filtered before they are decoded; padding slots repeat the first record, marked invalid.
    decode = source.decode_fn('validation')
    read = lambda: source.stream('validation', shard_index=0, shard_count=1, seed=None)
    mine = read().take(n).enumerate().filter(
        lambda g, rec: tf.equal((g // local) % process_count, process_index))
    mine = mine.map(lambda g, rec: (rec, tf.constant(True)))
    filler = read().take(1).map(lambda rec: (rec, tf.constant(False))).repeat()
    ds = mine.concatenate(filler).take(len(positions))
    ds = ds.map(lambda rec, valid: (decode(rec), valid), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)

  def prepare(ex, valid):
    label = tf.cast(ex['label'], tf.int32)
    size = tf.shape(label)[-3:-1]
    check = tf.debugging.assert_less_equal(
        size, tf.constant([max_h, max_w], tf.int32),
        message=f'{config.dataset.name}: an evaluation image is larger than '
                f'config.dataset.max_original_size={tuple(config.dataset.max_original_size)}; '
                'raise it (python -m pix2seq_d_jax.data.check prints the largest size)')
    with tf.control_dependencies([check]):
      label = tf.identity(label)
    out = transforms.eval_transform({'image': ex['image']}, image_size=tuple(m.image_size),
                                    mask_size=tuple(m.mask_size))
    pad = [[0, max_h - size[0]], [0, max_w - size[1]], [0, 0]]
    if source.is_video:
      pad = [[0, 0]] + pad
    out['label_orig'] = tf.pad(label, pad)
    out['id'] = ex['id']
    out['valid'] = valid
    if source.is_video:
      out['num_frames'] = tf.shape(ex['image'])[0]
    return out

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if source.is_video:
    # Whole videos differ in length: frames beyond 'num_frames' are zero padding.
    return ds.padded_batch(local, drop_remainder=True).prefetch(2), num_batches
  return ds.batch(local, drop_remainder=True).prefetch(2), num_batches


class InputError(RuntimeError):
  """Reading or decoding an input example failed; the message says how to find the file."""


def as_numpy(ds: tf.data.Dataset):
  """Iterates a dataset as numpy dicts.

  A failure inside tf.data (a corrupt file, a failed check) is re-raised as InputError with
  TF's message, which names the file where a check could, and the way to list every problem.
  """
  iterator = ds.as_numpy_iterator()
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      raise InputError(
          f'Reading the input data failed: {e.message.strip()}\nIf no file is named above, run '
          'python -m pix2seq_d_jax.data.check --config=<the same config and --config.* flags> '
          'to list every unreadable or inconsistent file.') from e
    yield batch


def log_dropped(step: int, dropped: np.ndarray, total: list) -> None:
  """Counts segments made void because an example had more than K - 1 of them."""
  count = int(np.sum(dropped))
  if count:
    total[0] += count
    logging.warning('step %d: %d segments beyond config.dataset.max_instances were made void '
                    '(smallest first); %d so far.', step, count, total[0])
