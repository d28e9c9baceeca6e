"""The source interface, and the embedded synthetic sources (images and videos).

A source yields decoded examples, one dict per image (or video clip):
  'image': uint8 [H, W, 3] ([T, H, W, 3] for video),
  'label': int32 [H, W, 3] ([T, H, W, 3]): class index + 1 (0 = void), segment id (0 = void;
           provisional, the pipeline re-orders ids), crowd flag (1 on crowd regions, which keep
           their class and id so that evaluation can honour them; training sees them as void),
  'id':    int64 stable example id (COCO image id, a hash of the file name, ...).
Categories are COCO-style dicts; class c in a label map is `categories[c - 1]`.

Random-access sources implement `example_fn(split)`; the pipeline then orders examples
itself (exact resume, results independent of the process count). Sources that can only be read
in order (TFDS TFRecords) implement `stream(...)` instead.
"""

import concurrent.futures
import threading

import numpy as np
import tensorflow as tf

from pix2seq_d_jax.data import synthetic

SPLITS = ('train', 'validation')


class Source:
  """Base class. Attributes: categories, is_video, random_access."""
  categories: list = []
  is_video: bool = False
  random_access: bool = True

  def num_examples(self, split: str) -> int:
    raise NotImplementedError

  def example_fn(self, split: str):
    """A traceable function: int64 index in [0, num_examples) -> decoded example."""
    raise NotImplementedError

  def prepare(self, splits) -> None:
    """Starts a split's slow one-time set-up (generating it, ...) in the background, so that it
    overlaps what the caller does next (compiling); reading the split waits for it. Optional."""
    del splits

  def stream(self, split: str, *, shard_index: int, shard_count: int,
             seed: int | None) -> tf.data.Dataset:
    """Records of this process's shard, in an order fixed by `seed` (None: file order).

    A record is what `decode_fn(split)` turns into an example; the pipeline skips and filters
    records before decoding them, so a source that can keep its records encoded should.
    """
    raise NotImplementedError

  def decode_fn(self, split: str):
    """A traceable function: record of `stream(split, ...)` -> decoded example (identity here)."""
    del split
    return lambda record: record


def check_split(split: str, source: str) -> str:
  if split == 'val':
    split = 'validation'
  if split not in SPLITS:
    raise ValueError(f'{source}: unknown split {split!r}; valid: {SPLITS}.')
  return split


class _InMemory(Source):
  """A source whose examples are generated once into numpy arrays."""

  def __init__(self, dataset_config):
    self.config = dataset_config
    self._futures = {}
    self._lock = threading.Lock()
    self.categories = [dict(c) for c in synthetic.SHAPES_CATEGORIES]
    if dataset_config.num_classes != len(self.categories) + 1:
      raise ValueError(f'config.dataset.num_classes={dataset_config.num_classes}, but '
                       f'{dataset_config.name} has {len(self.categories)} categories: set it to '
                       f'{len(self.categories) + 1} (categories + void).')

  def num_examples(self, split):
    split = check_split(split, self.config.name)
    return self.config.num_train if split == 'train' else self.config.num_eval

  def prepare(self, splits) -> None:
    """Generates the splits in a background thread. Generation is numpy, and XLA compiles
    without holding the GIL, so on a 2-core CPU it costs almost no wall time beside a compile."""
    for split in splits:
      self._future(check_split(split, self.config.name), background=True)

  def _future(self, split, background=False) -> concurrent.futures.Future:
    with self._lock:
      future = self._futures.get(split)
      if future is None:
        future = self._futures[split] = concurrent.futures.Future()
        run = lambda: future.set_result(self._generate(split))
        if background:
          threading.Thread(target=self._run, args=(future, run), daemon=True,
                           name=f'generate-{split}').start()
        else:
          self._run(future, run)
    return future

  @staticmethod
  def _run(future, run):
    try:
      run()
    except BaseException as e:  # pylint: disable=broad-except
      future.set_exception(e)  # re-raised where the split is read

  def _arrays(self, split):
    return self._future(check_split(split, self.config.name)).result()

  def _generate(self, split):
    raise NotImplementedError

  def example_fn(self, split):
    tensors = {k: tf.constant(v) for k, v in self._arrays(split).items()}
    return lambda i: {k: tf.gather(v, i) for k, v in tensors.items()}


class SyntheticShapes(_InMemory):
  """Synthetic panoptic images (`pix2seq_d_jax.data.synthetic`): textured stuff regions, thing
  instances that touch and overlap, void clutter. Deterministic by `config.dataset.data_seed`."""

  def _generate(self, split):
    n = self.num_examples(split)
    d = synthetic.generate_panoptic_split(self.config.data_seed, split, n,
                                          self.config.synthetic_size)
    crowd = np.zeros(d['label'].shape[:-1] + (1,), np.int32)
    return {'image': d['image'], 'label': np.concatenate([d['label'], crowd], -1),
            'id': d['image_id'].astype(np.int64)}


class MovingShapes(_InMemory):
  """Synthetic videos of moving, occluding shapes (`synthetic.generate_video_split`)."""
  is_video = True

  def _generate(self, split):
    n = self.num_examples(split)
    frames = self.config.num_frames if split == 'train' else self.config.eval_num_frames
    d = synthetic.generate_video_split(self.config.data_seed, split, n, frames,
                                       self.config.synthetic_size)
    crowd = np.zeros(d['label'].shape[:-1] + (1,), np.int32)
    return {'image': d['frames'], 'label': np.concatenate([d['label'], crowd], -1),
            'id': d['video_id'].astype(np.int64)}
