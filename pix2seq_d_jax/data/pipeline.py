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

import itertools
import logging

import numpy as np
import tensorflow as tf

from pix2seq_d_jax.data import transforms
from pix2seq_d_jax.data.sources import Source


def _local_batch(global_batch: int, process_count: int, what: str) -> int:
  if global_batch % process_count:
    raise ValueError(f'{what}={global_batch} must be divisible by the number of processes '
                     f'({process_count}).')
  return global_batch // process_count


def train_positions(num_examples: int, seed: int, start_step: int, global_batch: int,
                    process_index: int, process_count: int):
  """Yields (example index, global position) for this process, from `start_step` on."""
  local = global_batch // process_count
  perms = {}
  for step in itertools.count(start_step):
    first = step * global_batch + process_index * local
    for p in range(first, first + local):
      epoch, slot = divmod(p, num_examples)
      if epoch not in perms:
        perms.clear()  # One epoch at a time: a permutation of COCO is ~1 MB.
        perms[epoch] = np.random.default_rng([seed, epoch]).permutation(num_examples)
      yield int(perms[epoch][slot]), p


def _split_label(label):
  """Source label [.., 3] -> training target [.., 2] with crowd regions as void."""
  crowd = label[..., 2:3] > 0
  return tf.where(crowd, 0, label[..., :2])


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
    positions = tf.data.Dataset.from_generator(
        lambda: train_positions(n, config.seed, start_step, config.train.batch_size,
                                process_index, process_count),
        output_signature=(tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.int64)))
    load = source.example_fn('train')
    ds = positions.map(lambda i, p: (load(i), p), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)
  else:
    ds = source.stream('train', shard_index=process_index, shard_count=process_count,
                       seed=config.seed).repeat()
    # Sequential sources resume by skipping what this process already read.
    ds = ds.skip(start_step * local).enumerate(start_step * local)
    ds = ds.map(lambda p, ex: (ex, p * process_count + process_index))
  ds = ds.map(lambda ex, p: _prepare_train(ex, p, config=config, is_video=source.is_video),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local, drop_remainder=True).prefetch(2)


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
    raise NotImplementedError(f'{config.dataset.name}: evaluation of sequential sources is '
                              'read through source.eval_stream.')

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
    return out

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local, drop_remainder=True).prefetch(2), num_batches


def as_numpy(ds: tf.data.Dataset):
  """Iterates a dataset as numpy dicts."""
  return ds.as_numpy_iterator()


def log_dropped(step: int, dropped: np.ndarray, total: list) -> None:
  """Counts segments made void because an example had more than K - 1 of them."""
  count = int(np.sum(dropped))
  if count:
    total[0] += count
    logging.warning('step %d: %d segments beyond config.dataset.max_instances were made void '
                    '(smallest first); %d so far.', step, count, total[0])
