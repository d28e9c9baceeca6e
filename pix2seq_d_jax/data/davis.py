"""DAVIS 2017 (unsupervised video object segmentation) as sources: a DAVIS folder and TFDS.

Labels (a project decision). DAVIS annotations are object ids per frame: 0 background,
1..n objects, 255 void. This project's label maps are (class + 1, segment id, crowd flag), so
DAVIS uses ONE category, {'id': 1, 'name': 'object', 'isthing': 1} (config.dataset.num_classes
= 2):
  object k     -> class 1, id k (the DAVIS object id; the pipeline's 'shuffle' order then gives
                  each training clip one random permutation of its ids, docs/spec.md §1.2);
  background   -> class 0, id 0 (void: the model learns to output (0, 0) there, as for padding);
  255 (void)   -> class 0, id 0, crowd flag 1 (void in training; evaluation can exclude it).
The reference leaves the class channel 0 everywhere (docs/spec.md §7.3); a class-1 foreground keeps
the label format meaningful (categories, visualisation, num_classes) and costs the model nothing it
does not already encode in the ids. Evaluation (J&F) reads the ids only.
One quirk is corrected (docs/spec.md §7.3): in the video 'tennis' the value 255 marks an object, not
void, so there it becomes max(other ids in the example) + 1.

Examples: training examples are windows of `config.dataset.num_frames` consecutive frames
(uint8 [T, H, W, 3] frames, int32 [T, H, W, 3] labels; the last frame is the target, the others
the condition); evaluation examples are whole videos. Ids: a video's id is a 31-bit hash of its
name (`video_id`); a training window's id is video_id * 1000 + its first frame.

DavisFolder reads `config.dataset.root`:
  JPEGImages/480p/<video>/*.jpg                       frames, ordered by file name;
  Annotations_unsupervised/480p/<video>/*.png (preferred) or Annotations/480p/<video>/*.png
                                                      palette (or grayscale) PNGs of ids;
  ImageSets/2017/train.txt, val.txt                   video names ('train' / 'validation').
Palette PNGs are decoded to colours in tf.data and mapped back to palette indices with the file's
own palette (read once, when the split is first used); a palette that gives two used indices
one colour maps both to the smaller index (the check tool reports such files).
DavisTfds reads TFDS `davis/480p` (splits 'train' and 'validation'; note that TFDS packs the
semi-supervised `Annotations`, not `Annotations_unsupervised`) with `config.dataset.tfds_data_dir`
and `config.dataset.shuffle_buffer`, sequentially like the COCO TFDS source.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
import tensorflow as tf
from PIL import Image

from pix2seq_d_jax.data import coco
from pix2seq_d_jax.data import folder
from pix2seq_d_jax.data import sources
from pix2seq_d_jax.formats import davis_format

OBJECT_CATEGORY = {'id': 1, 'name': 'object', 'isthing': 1}
VOID = 255
RELABEL_255_VIDEOS = ('tennis',)   # 255 marks an object there (create_davis_tfrecord.py)
SPLIT_FILES = {'train': 'train', 'validation': 'val'}
FRAME_EXTENSIONS = ('.jpg', '.jpeg', '.png')
WINDOW_ID_STRIDE = 1000
TFDS_NAME = 'davis/480p'
_ID_MODES = ('P', 'L', '1')


def video_id(names) -> np.ndarray:
  """int64 31-bit ids of video names (FarmHash fingerprints, as tf.strings.to_hash_bucket_fast)."""
  return tf.strings.to_hash_bucket_fast(tf.constant(names), 2**31 - 1).numpy().astype(np.int64)


def _video_id_tf(name: tf.Tensor) -> tf.Tensor:
  return tf.strings.to_hash_bucket_fast(name, 2**31 - 1)


def check_num_classes(dataset_config) -> None:
  if dataset_config.num_classes != 2:
    raise ValueError(f'config.dataset.num_classes={dataset_config.num_classes}, but '
                     f'{dataset_config.name} has one category (object): set '
                     '--config.dataset.num_classes=2')


def davis_label(ids: tf.Tensor, relabel_255: tf.Tensor) -> tf.Tensor:
  """DAVIS ids -> label triples (module docstring).

  Args:
    ids: int [T, H, W] DAVIS values (0 background, 1..254 objects, 255 void).
    relabel_255: bool scalar; True turns 255 into max(other ids) + 1 (the 'tennis' quirk).

  Returns:
    int32 [T, H, W, 3] (class, id, crowd flag).
  """
  ids = tf.cast(ids, tf.int32)
  is_255 = tf.equal(ids, VOID)
  next_id = tf.reduce_max(tf.where(is_255, 0, ids)) + 1
  ids = tf.where(tf.logical_and(is_255, relabel_255), next_id, ids)
  void = tf.equal(ids, VOID)
  is_object = tf.logical_and(ids > 0, tf.logical_not(void))
  return tf.stack([tf.cast(is_object, tf.int32), tf.where(is_object, ids, 0),
                   tf.cast(void, tf.int32)], axis=-1)


def _window_fields(num_frames: int, length: tf.Tensor, split: str) -> tf.Tensor:
  if split == 'train':
    return tf.range(tf.maximum(length - num_frames + 1, 0), dtype=tf.int64)
  return tf.zeros([1], tf.int64)


# ---------------------------------------------------------------------------------------------
# Palette tables (host side).


def palette_table(path: str | os.PathLike) -> tuple[str, bytes | None, tuple[int, int]]:
  """(mode, palette bytes or None, (width, height)) of an annotation PNG, from its header."""
  with Image.open(path) as im:
    if im.format != 'PNG':
      raise ValueError(f'{path} is a {im.format} file; DAVIS annotations are PNGs')
    palette = bytes(im.getpalette('RGB') or []) if im.mode == 'P' else None
    return im.mode, palette, im.size


def table_keys(mode: str, palette: bytes | None) -> tuple[np.ndarray, np.ndarray]:
  """Sorted colour keys (R + 256 G + 256² B, as decode to RGB gives them) and their ids.

  'P': the palette's colours (the smallest index wins a colour that appears twice);
  'L': gray levels v -> v; '1': black -> 0, white -> 1.
  """
  if mode == 'L':
    values = np.arange(256, dtype=np.int64)
    rgb = np.stack([values] * 3, -1)
  elif mode == '1':
    values = np.array([0, 1], np.int64)
    rgb = np.array([[0, 0, 0], [255, 255, 255]], np.int64)
  else:
    colours = np.frombuffer(palette or b'', np.uint8)
    colours = colours[:len(colours) // 3 * 3].reshape(-1, 3).astype(np.int64)
    values = np.arange(len(colours), dtype=np.int64)
    rgb = colours
  keys = rgb[:, 0] + 256 * rgb[:, 1] + 65536 * rgb[:, 2]
  # np.unique keeps the first (smallest index) occurrence of a duplicated colour.
  unique_keys, first = np.unique(keys, return_index=True)
  return unique_keys.astype(np.int32), values[first].astype(np.int32)


@dataclasses.dataclass
class VideoIndex:
  """Precomputed tables of one split (numpy, built once)."""
  names: list
  video_ids: np.ndarray         # int64 [V]
  first_frame: np.ndarray       # int64 [V]
  num_frames: np.ndarray        # int64 [V]
  relabel: np.ndarray           # bool [V]
  frame_paths: np.ndarray       # str [F]
  annotation_paths: np.ndarray  # str [F]
  frame_table: np.ndarray       # int64 [F], palette table of each annotation
  table_keys: np.ndarray        # int32 [K]
  table_values: np.ndarray      # int32 [K]
  table_offsets: np.ndarray     # int64 [P + 1]
  window_video: np.ndarray      # int64 [N]
  window_start: np.ndarray      # int64 [N]
  annotation_dir: str

  def __len__(self) -> int:
    return len(self.window_video)


def annotation_folder(root: pathlib.Path) -> pathlib.Path | None:
  for name in davis_format.ANNOTATION_FOLDERS:
    path = root / name / davis_format.RESOLUTION
    if path.is_dir():
      return path
  return None


def read_split_file(root: pathlib.Path, split: str) -> list[str]:
  path = root / 'ImageSets' / davis_format.IMAGESETS_YEAR / f'{SPLIT_FILES[split]}.txt'
  if not path.is_file():
    raise folder.DataError(f'{path} does not exist; a DAVIS root lists the videos of each split '
                           f'in ImageSets/2017/{{train,val}}.txt (set --config.dataset.root)')
  return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def build_video_index(root: str | os.PathLike, split: str, num_frames: int,
                      problems: folder.Problems) -> VideoIndex:
  """Lists a DAVIS split's videos, frames and annotation palettes; collects every problem.

  Args:
    root: the DAVIS root.
    split: 'train' (windows of num_frames) or 'validation' (whole videos).
    num_frames: training window length.
    problems: collects errors and warnings.

  Returns:
    The split's index (videos with errors are left out).
  """
  root = pathlib.Path(root)
  frames_root = root / 'JPEGImages' / davis_format.RESOLUTION
  if not frames_root.is_dir():
    raise folder.DataError(f'{frames_root} does not exist; config.dataset.root must be a DAVIS '
                           'root with JPEGImages/480p, Annotations_unsupervised/480p (or '
                           'Annotations/480p) and ImageSets/2017')
  ann_root = annotation_folder(root)
  if ann_root is None:
    raise folder.DataError(f'{root} has neither Annotations_unsupervised/480p nor '
                           'Annotations/480p; add the annotations of the DAVIS release')
  names = read_split_file(root, split)
  tables: dict[tuple, int] = {}
  keys_list, values_list = [], []
  out_names, first, counts, frame_paths, ann_paths, frame_table = [], [], [], [], [], []
  for name in names:
    frame_dir, ann_dir = frames_root / name, ann_root / name
    if not frame_dir.is_dir() or not ann_dir.is_dir():
      missing = frame_dir if not frame_dir.is_dir() else ann_dir
      problems.error('missing_file', f'{missing} does not exist (video {name!r} of '
                     f'{SPLIT_FILES[split]}.txt); add the video or remove it from the list')
      continue
    frames = {os.path.splitext(n)[0]: n for n in os.listdir(frame_dir)
              if n.lower().endswith(FRAME_EXTENSIONS) and not n.startswith('.')}
    anns = set(davis_format.list_frames(ann_dir))
    stems = sorted(frames)
    extra = sorted(anns - set(frames))
    lacking = [s for s in stems if s not in anns]
    ok = True
    if lacking:
      problems.error('missing_file', f'{ann_dir}: frames {lacking[:3]} (and {len(lacking)} in '
                     'all) have no annotation PNG; every frame needs one')
      ok = False
    if extra:
      problems.warn('unused_file', f'{ann_dir}: annotations {extra[:3]} have no frame in '
                    f'{frame_dir}; they are not used')
    if not stems:
      problems.error('missing_file', f'{frame_dir} holds no frames (*.jpg)')
      ok = False
    video_tables = []
    for stem in stems:
      path = ann_dir / f'{stem}.png'
      if stem not in anns:
        continue
      try:
        mode, palette, _ = palette_table(path)
      except (OSError, ValueError) as e:
        problems.error('unreadable', f'{path}: cannot read it ({e}); re-save it as a palette '
                       'PNG of object ids')
        ok = False
        continue
      if mode not in _ID_MODES:
        problems.error('annotation_mode', f'{path} is a {mode!r} PNG; DAVIS annotations are '
                       'palette or grayscale PNGs whose values are object ids: save the ids '
                       'with pix2seq_d_jax.formats.davis_format.write_palette_png')
        ok = False
        continue
      key = (mode, palette)
      if key not in tables:
        tables[key] = len(tables)
        k, v = table_keys(mode, palette)
        keys_list.append(k)
        values_list.append(v)
      video_tables.append(tables[key])
    if not ok:
      continue
    if split == 'train' and len(stems) < num_frames:
      problems.warn('short_video', f'{frame_dir}: {len(stems)} frames, fewer than '
                    f'dataset.num_frames={num_frames}; it gives no training window')
    out_names.append(name)
    first.append(len(frame_paths))
    counts.append(len(stems))
    frame_paths.extend(str(frame_dir / frames[s]) for s in stems)
    ann_paths.extend(str(ann_dir / f'{s}.png') for s in stems)
    frame_table.extend(video_tables)
  num = np.asarray(counts, np.int64)
  if split == 'train':
    win_video = np.concatenate([np.full(max(n - num_frames + 1, 0), v, np.int64)
                                for v, n in enumerate(num)] or [np.zeros([0], np.int64)])
    win_start = np.concatenate([np.arange(max(n - num_frames + 1, 0), dtype=np.int64)
                                for n in num] or [np.zeros([0], np.int64)])
  else:
    win_video = np.arange(len(out_names), dtype=np.int64)
    win_start = np.zeros(len(out_names), np.int64)
  ids = video_id(out_names) if out_names else np.zeros([0], np.int64)
  if len(set(ids.tolist())) != len(ids):
    problems.error('json', f'{root}: two video names hash to one id; rename one of them')
  sizes = [len(k) for k in keys_list]
  return VideoIndex(
      names=out_names, video_ids=ids, first_frame=np.asarray(first, np.int64),
      num_frames=num, relabel=np.asarray([n in RELABEL_255_VIDEOS for n in out_names], bool),
      frame_paths=np.asarray(frame_paths, dtype=object).astype(str),
      annotation_paths=np.asarray(ann_paths, dtype=object).astype(str),
      frame_table=np.asarray(frame_table, np.int64),
      table_keys=(np.concatenate(keys_list) if keys_list else np.zeros([0], np.int32)),
      table_values=(np.concatenate(values_list) if values_list else np.zeros([0], np.int32)),
      table_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
      window_video=win_video, window_start=win_start, annotation_dir=str(ann_root))


class DavisFolder(sources.Source):
  """A DAVIS 2017 root (module docstring), random access over (video, first frame) windows.

  Config keys: dataset.root, dataset.num_frames, dataset.num_classes (2).
  """
  random_access = True
  is_video = True

  def __init__(self, dataset_config):
    self.config = dataset_config
    check_num_classes(dataset_config)
    self.categories = [dict(OBJECT_CATEGORY)]
    self._indexes: dict[str, VideoIndex] = {}

  def index(self, split: str) -> VideoIndex:
    split = sources.check_split(split, self.config.name)
    if split not in self._indexes:
      if not self.config.root:
        raise ValueError(f'{self.config.name}: set --config.dataset.root to a DAVIS 2017 root '
                         '(JPEGImages/480p, Annotations_unsupervised/480p, ImageSets/2017)')
      problems = folder.Problems()
      index = build_video_index(self.config.root, split, self.config.num_frames, problems)
      problems.raise_if_errors(f'{self.config.name} ({split}: {self.config.root})')
      problems.log_warnings(f'{self.config.name} ({split})')
      self._indexes[split] = index
    return self._indexes[split]

  def num_examples(self, split: str) -> int:
    return len(self.index(split))

  def example_fn(self, split: str):
    split = sources.check_split(split, self.config.name)
    index = self.index(split)
    source = f'{self.config.name} ({self.config.root})'
    t = {k: tf.constant(getattr(index, k)) for k in (
        'video_ids', 'first_frame', 'num_frames', 'relabel', 'frame_paths', 'annotation_paths',
        'frame_table', 'table_keys', 'table_values', 'table_offsets', 'window_video',
        'window_start')}
    window = self.config.num_frames if split == 'train' else None

    def load_frame(f):
      frame_path, ann_path = t['frame_paths'][f], t['annotation_paths'][f]
      image = folder.decode_image(tf.io.read_file(frame_path), frame_path, source)
      ids = decode_id_png(tf.io.read_file(ann_path), ann_path, source,
                          t['table_keys'], t['table_values'], t['table_offsets'],
                          t['frame_table'][f])
      ids = folder.assert_same_size(image, ids, frame_path, ann_path, source,
                                    'an annotation must have its frame\'s size')
      return image, ids

    def load(i):
      v, start = t['window_video'][i], t['window_start'][i]
      length = t['num_frames'][v] if window is None else tf.constant(window, tf.int64)
      frames = t['first_frame'][v] + start + tf.range(length, dtype=tf.int64)
      images, ids = tf.map_fn(
          load_frame, frames,
          fn_output_signature=(tf.TensorSpec([None, None, 3], tf.uint8),
                               tf.TensorSpec([None, None], tf.int32)))
      if window is not None:
        images.set_shape([window, None, None, 3])
      example_id = t['video_ids'][v]
      if window is not None:
        example_id = example_id * WINDOW_ID_STRIDE + start
      return {'image': images, 'label': davis_label(ids, t['relabel'][v]), 'id': example_id}

    return load


def decode_id_png(contents, path, source, keys, values, offsets, table):
  """An annotation PNG -> int32 [H, W] ids via its palette table (see `table_keys`)."""
  head = folder.head_bytes(contents, 8)
  complete = (folder.starts_with(head, folder.PNG_SIGNATURE)
              & folder.tail_contains(contents, b'IEND', 64))
  checks = [folder.tf_assert(complete, f'{source}: annotation ', path, ' is not a complete PNG; '
                             're-save it as a palette PNG of object ids '
                             f'({folder.CHECK_HINT})')]
  with tf.control_dependencies(checks):
    colour = folder.png_colour_keys(contents)
  lo, hi = offsets[table], offsets[table + 1]
  k, v = keys[lo:hi], values[lo:hi]
  flat = tf.reshape(colour, [-1])
  pos = tf.clip_by_value(tf.searchsorted(k, flat), 0, tf.size(k) - 1)
  ids = tf.where(tf.equal(tf.gather(k, pos), flat), tf.gather(v, pos), 0)
  return tf.reshape(ids, tf.shape(colour))


# ---------------------------------------------------------------------------------------------
# TFDS.


class DavisTfds(sources.Source):
  """TFDS `davis/480p` (module docstring), read sequentially.

  Config keys: dataset.tfds_data_dir, dataset.shuffle_buffer, dataset.num_frames,
  dataset.num_classes (2).
  """
  random_access = False
  is_video = True

  def __init__(self, dataset_config):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self.config = dataset_config
    check_num_classes(dataset_config)
    self.categories = [dict(OBJECT_CATEGORY)]
    self.builder = tfds.builder(TFDS_NAME, data_dir=dataset_config.tfds_data_dir or None)
    self._num_windows = None

  def _split_size(self, split):
    return coco.split_size(self.builder, split, self.config.name)

  def num_examples(self, split: str) -> int:
    """Videos of 'validation'; windows of 'train' (counted once from the videos' metadata)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    split = sources.check_split(split, self.config.name)
    size = self._split_size(split)
    if split == 'validation':
      return size
    if self._num_windows is None:
      ds = self.builder.as_dataset(split='train',
                                   decoders=tfds.decode.PartialDecoding({'metadata': True}))
      lengths = [int(ex['metadata']['num_frames']) for ex in ds.as_numpy_iterator()]
      self._num_windows = sum(max(n - self.config.num_frames + 1, 0) for n in lengths)
    return self._num_windows

  def stream(self, split, *, shard_index, shard_count, seed):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    split = sources.check_split(split, self.config.name)
    self._split_size(split)
    spec = split if shard_count == 1 else tfds.even_splits(split, n=shard_count)[shard_index]
    skip = tfds.decode.SkipDecoding()
    ds = self.builder.as_dataset(
        split=spec, shuffle_files=seed is not None,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
        decoders={'video': {'frames': skip, 'segmentations': skip}})
    window = self.config.num_frames

    def windows(ex):
      frames, segs = ex['video']['frames'], ex['video']['segmentations']
      name = ex['metadata']['video_name']
      length = tf.shape(frames, out_type=tf.int64)[0]
      starts = _window_fields(window, length, split)
      size = window if split == 'train' else length
      return tf.data.Dataset.from_tensor_slices(starts).map(
          lambda s: {'frames': frames[s:s + size], 'segmentations': segs[s:s + size],
                     'name': name, 'start': s})

    ds = ds.flat_map(windows)
    if seed is not None:
      ds = ds.shuffle(self.config.shuffle_buffer, seed=seed + shard_index,
                      reshuffle_each_iteration=True)
    return ds

  def decode_fn(self, split):
    split = sources.check_split(split, self.config.name)
    source = f'{self.config.name} ({TFDS_NAME}, {split})'
    window = self.config.num_frames if split == 'train' else None

    def decode(record):
      where = tf.strings.format('video {} frame {}', (record['name'], record['start']))
      images = tf.map_fn(lambda b: folder.decode_image(b, where, source), record['frames'],
                         fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
      ids = tf.map_fn(lambda b: tf.io.decode_png(b, channels=1)[..., 0], record['segmentations'],
                      fn_output_signature=tf.TensorSpec([None, None], tf.uint8))
      same = tf.reduce_all(tf.equal(tf.shape(images)[:3], tf.shape(ids)))
      with tf.control_dependencies([folder.tf_assert(
          same, f'{source}: ', where, ': frames and segmentations differ in number or size; '
          'rebuild the dataset')]):
        ids = tf.identity(ids)
      if window is not None:
        images.set_shape([window, None, None, 3])
      relabel = tf.reduce_any(tf.equal(record['name'], list(RELABEL_255_VIDEOS)))
      example_id = _video_id_tf(record['name'])
      if window is not None:
        example_id = example_id * WINDOW_ID_STRIDE + record['start']
      return {'image': images, 'label': davis_label(ids, relabel), 'id': example_id}

    return decode
