"""COCO-panoptic-format folders as a random-access source (custom data, Cityscapes, COCO files).

A split is three config keys (docs/contracts.md §4.1): `dataset.<split>_json` (the panoptic JSON:
`images`, `annotations` with `segments_info`, `categories`), `dataset.<split>_image_dir` (the
images, JPEG / PNG / BMP / GIF) and `dataset.<split>_panoptic_dir` (the RGB panoptic PNGs, segment
id = R + 256·G + 256²·B, 0 = void), with <split> = train or eval.

Labels. Categories come from the JSON: the contiguous class of a category is its position in the
JSON's category list + 1 (0 = void), so `config.dataset.num_classes` must be that list's length
+ 1. Each segment of an image gets the provisional id 1..n in segments_info order (the pipeline
re-orders ids), its category's class and crowd flag = iscrowd. Example ids are the JSON's
image ids: integers as they are, digit strings as integers, other strings (Cityscapes'
'frankfurt_000000_000294') as a stable 31-bit hash of the name (collisions are resolved in sorted
name order, so equal sets of names give equal ids).

Everything that can be known from the JSON and the file listings is checked when a split is first
used, and all problems are reported together (`DataError`). Pixel-level problems are checked while
reading, with messages that name the file:
  - missing / unreadable image or PNG, wrong file type, truncated JPEG or PNG -> error;
  - image and PNG of different sizes -> error;
  - grayscale images are replicated to RGB, RGBA images lose their alpha, palette images are
    expanded, 16-bit images are scaled to 8 bits (documented conversions);
  - panoptic PNGs must be 8-bit RGB; palette PNGs are expanded to their colours and RGBA PNGs lose
    their alpha; 16-bit or grayscale panoptic PNGs -> error (their pixels are not ids);
  - PNG pixels whose id is not in segments_info become void (class 0, id 0) in training; the
    check tool (`python -m pix2seq_d_jax.data.check`) reports them as errors, and segments listed
    but absent from the PNG too;
  - images without segments are kept, all void (the check tool warns).
Folder sources read local paths (for cloud storage, use the TFDS source).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pathlib
import sys
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from pix2seq_d_jax.data import sources
from pix2seq_d_jax.formats import coco_format

MAX_SEGMENT_ID = coco_format.MAX_SEGMENT_ID
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
CHECK_HINT = 'python -m pix2seq_d_jax.data.check --config=... lists every problem'
# Split -> its config keys (json, image folder, panoptic folder) under config.dataset.
SPLIT_KEYS = {'train': ('train_json', 'train_image_dir', 'train_panoptic_dir'),
              'validation': ('eval_json', 'eval_image_dir', 'eval_panoptic_dir')}

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_JPEG_SIGNATURE = b'\xff\xd8\xff'
_PNG_COLOR_TYPES = {0: 'grayscale', 2: 'RGB', 3: 'palette', 4: 'grayscale+alpha', 6: 'RGBA'}
# Cityscapes' csCreatePanopticImgs writes image file names with an extra '_gtFine'.
_CITYSCAPES_SUFFIX = ('_gtFine_leftImg8bit', '_leftImg8bit')


class DataError(ValueError):
  """Input data does not match what the config promises; the message lists every problem."""


class Problems:
  """Collects errors and warnings by kind, keeping the first `limit` messages of each kind.

  Used by the sources (which raise on errors) and by the check tool (which reports everything).
  """

  def __init__(self, limit: int = 20):
    self.limit = limit
    self.errors: dict[str, list[str]] = collections.defaultdict(list)
    self.warnings: dict[str, list[str]] = collections.defaultdict(list)
    self.error_counts: collections.Counter = collections.Counter()
    self.warning_counts: collections.Counter = collections.Counter()

  def error(self, kind: str, message: str) -> None:
    self.error_counts[kind] += 1
    if len(self.errors[kind]) < self.limit:
      self.errors[kind].append(message)

  def warn(self, kind: str, message: str) -> None:
    self.warning_counts[kind] += 1
    if len(self.warnings[kind]) < self.limit:
      self.warnings[kind].append(message)

  @property
  def num_errors(self) -> int:
    return sum(self.error_counts.values())

  def lines(self, errors: bool = True) -> list[str]:
    """Messages, with '... and N more' per kind beyond the limit."""
    messages = self.errors if errors else self.warnings
    counts = self.error_counts if errors else self.warning_counts
    out = []
    for kind in sorted(messages):
      out.extend(messages[kind])
      if counts[kind] > len(messages[kind]):
        out.append(f'... and {counts[kind] - len(messages[kind])} more {kind} problems')
    return out

  def raise_if_errors(self, what: str) -> None:
    if self.num_errors:
      lines = self.lines()
      raise DataError(f'{what}: {self.num_errors} problem(s) in the input data '
                      f'({CHECK_HINT}):\n  ' + '\n  '.join(lines))

  def log_warnings(self, what: str) -> None:
    for kind, count in sorted(self.warning_counts.items()):
      logging.warning('%s: %d x %s, e.g. %s', what, count, kind, self.warnings[kind][0])


# ---------------------------------------------------------------------------------------------
# Reading files in tf.data (traceable).


def head_bytes(contents: tf.Tensor, n: int) -> tf.Tensor:
  """uint8 [n]: the first n bytes of a string tensor, zero-padded when the file is shorter."""
  head = tf.strings.substr(contents, 0, n)
  head = tf.strings.join([head, tf.constant(b'\0' * n)])
  return tf.io.decode_raw(tf.strings.substr(head, 0, n), tf.uint8)


def tail_contains(contents: tf.Tensor, pattern: bytes, window: int) -> tf.Tensor:
  """bool scalar: whether the last `window` bytes contain `pattern` (a truncation test)."""
  length = tf.strings.length(contents)
  start = tf.maximum(length - window, 0)
  tail = tf.io.decode_raw(tf.strings.substr(contents, start, window), tf.uint8)
  k, m = tf.shape(tail)[0], len(pattern)
  if m == 1:
    return tf.reduce_any(tf.equal(tail, pattern[0]))
  hits = tf.ones([tf.maximum(k - m + 1, 0)], tf.bool)
  for j, byte in enumerate(pattern):
    hits = tf.logical_and(hits, tf.equal(tail[j:tf.maximum(k - m + 1, 0) + j], byte))
  return tf.reduce_any(hits)


def starts_with(head: tf.Tensor, signature: bytes) -> tf.Tensor:
  return tf.reduce_all(tf.equal(head[:len(signature)], tf.constant(list(signature), tf.uint8)))


def tf_assert(condition: tf.Tensor, *message) -> tf.Operation:
  # tf.debugging.Assert prints its data tensors in full, so the message can carry the path.
  return tf.debugging.Assert(condition, list(message), summarize=1)


def decode_image(contents: tf.Tensor, path: tf.Tensor, source: str) -> tf.Tensor:
  """Decodes an image file to RGB, failing with a message that names the file.

  Grayscale is replicated to RGB, alpha is dropped, palettes are expanded, 16-bit PNGs are
  scaled to 8 bits, GIFs give their first frame.

  Args:
    contents: string scalar, the file's bytes.
    path: string scalar, the file's path (for messages).
    source: what to call the data set in messages.

  Returns:
    uint8 [H, W, 3].
  """
  head = head_bytes(contents, 8)
  is_jpeg = starts_with(head, _JPEG_SIGNATURE)
  is_png = starts_with(head, PNG_SIGNATURE)
  known = is_jpeg | is_png | starts_with(head, b'GIF8') | starts_with(head, b'BM')
  # A JPEG ends with the EOI marker FF D9 (some writers append a little data after it); a PNG
  # with its IEND chunk. A file cut short lacks both.
  complete = tf.cond(is_jpeg, lambda: tail_contains(contents, b'\xff\xd9', 1024),
                     lambda: tf.cond(is_png, lambda: tail_contains(contents, b'IEND', 64),
                                     lambda: tf.constant(True)))
  checks = [
      tf_assert(tf.strings.length(contents) > 0, f'{source}: image file ', path,
                ' is empty; re-download or re-encode it (', CHECK_HINT, ')'),
      tf_assert(known, f'{source}: image file ', path, ' is not a JPEG, PNG, GIF or BMP file; '
                're-encode it as JPEG or PNG (', CHECK_HINT, ')'),
      tf_assert(complete, f'{source}: image file ', path, ' is truncated (no end marker); '
                're-download or re-encode it (', CHECK_HINT, ')'),
  ]
  with tf.control_dependencies(checks):
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def decode_panoptic_png(contents: tf.Tensor, path: tf.Tensor, source: str) -> tf.Tensor:
  """Decodes a COCO panoptic PNG to its segment ids, failing with a message naming the file.

  Args:
    contents: string scalar, the PNG's bytes.
    path: string scalar, its path (for messages).
    source: what to call the data set in messages.

  Returns:
    int32 [H, W] ids = R + 256·G + 256²·B (0 = void).
  """
  head = head_bytes(contents, 32)
  depth, color_type = head[24], head[25]
  checks = [
      tf_assert(starts_with(head, PNG_SIGNATURE), f'{source}: panoptic PNG ', path,
                ' is not a PNG file; panoptic segmentations must be RGB PNGs with id = R + 256 G '
                '+ 256^2 B (', CHECK_HINT, ')'),
      tf_assert(tail_contains(contents, b'IEND', 64), f'{source}: panoptic PNG ', path,
                ' is truncated (no IEND chunk); regenerate it (', CHECK_HINT, ')'),
      tf_assert(tf.equal(depth, 8), f'{source}: panoptic PNG ', path, ' has ', depth,
                ' bits per channel; panoptic PNGs must be 8-bit RGB (id = R + 256 G + 256^2 B): '
                're-save it as 8-bit RGB'),
      tf_assert(tf.reduce_any(tf.equal(color_type, [2, 3, 6])), f'{source}: panoptic PNG ', path,
                ' is a grayscale PNG (colour type ', color_type, '); panoptic PNGs must be RGB '
                'with id = R + 256 G + 256^2 B: convert the id map with id2rgb'),
  ]
  with tf.control_dependencies(checks):
    return png_colour_keys(contents)


def png_colour_keys(contents: tf.Tensor) -> tf.Tensor:
  """A PNG's pixels as int32 [H, W] keys R + 256·G + 256²·B (alpha ignored, palettes expanded)."""
  if sys.byteorder == 'little':
    # Decoded as R, G, B, A bytes, a pixel read as one little-endian int32 is the key plus
    # A·256³: masking A off is one pass.
    rgba = tf.io.decode_png(contents, channels=4, dtype=tf.uint8)
    return tf.bitwise.bitwise_and(tf.bitcast(rgba, tf.int32), 0xFFFFFF)
  rgb = tf.cast(tf.io.decode_png(contents, channels=3, dtype=tf.uint8), tf.int32)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def assert_same_size(image: tf.Tensor, other: tf.Tensor, image_path: tf.Tensor,
                     other_path: tf.Tensor, source: str, fix: str) -> tf.Tensor:
  """Returns `other`, failing when its [H, W] differs from the image's."""
  a, b = tf.shape(image)[:2], tf.shape(other)[:2]
  check = tf_assert(tf.reduce_all(tf.equal(a, b)), f'{source}: image ', image_path, ' is ', a,
                  ' (H, W) but its annotation ', other_path, ' is ', b, f'; {fix}')
  with tf.control_dependencies([check]):
    return tf.identity(other)


def lookup_segments(seg: tf.Tensor, keys: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
  """Maps PNG segment ids to label triples.

  Args:
    seg: int32 [H, W] ids.
    keys: int32 [n + 1], sorted, keys[0] = 0 (void).
    values: int32 [n + 1, 3] (class + 1, provisional id, crowd); values[0] = 0.

  Returns:
    int32 [H, W, 3]; ids missing from `keys` give (0, 0, 0).
  """
  flat = tf.reshape(seg, [-1])
  pos = tf.searchsorted(keys, flat, side='right') - 1    # keys[0] = 0 <= every id
  # Unknown ids point at row 0 (void).
  pos = tf.where(tf.equal(tf.gather(keys, pos), flat), pos, 0)
  return tf.reshape(tf.gather(values, pos), tf.concat([tf.shape(seg), [3]], 0))


# ---------------------------------------------------------------------------------------------
# Reading files on the host (construction and the check tool).


def png_header(path: str | os.PathLike) -> tuple[int, int] | None:
  """(bit depth, colour type) from a PNG's IHDR, or None if the file is not a PNG."""
  with open(path, 'rb') as f:
    head = f.read(26)
  if len(head) < 26 or not head.startswith(PNG_SIGNATURE):
    return None
  return head[24], head[25]


def png_color_name(color_type: int) -> str:
  return _PNG_COLOR_TYPES.get(color_type, f'colour type {color_type}')


def stable_ids(image_ids: Sequence[Any]) -> list[int]:
  """int ids for JSON image ids: ints as they are, digit strings as ints, other strings hashed.

  Hashes are crc32 & 0x7fffffff (they fit the int32 sampling keys); a collision moves the later
  name (in sorted order) to the next free value.
  """
  out: dict[Any, int] = {}
  taken = set()
  for i in image_ids:
    if isinstance(i, (int, np.integer)) and not isinstance(i, bool):
      out[i] = int(i)
    elif isinstance(i, str) and i.isdigit():
      out[i] = int(i)
  taken.update(out.values())
  for name in sorted(str(i) for i in image_ids if i not in out):
    value = zlib.crc32(name.encode()) & 0x7FFFFFFF
    while value in taken:
      value = (value + 1) & 0x7FFFFFFF
    taken.add(value)
    out[name] = value
  return [out[i] if i in out else out[str(i)] for i in image_ids]


def list_files(folder: pathlib.Path) -> tuple[set[str], dict[str, str]]:
  """(names directly in folder, basename -> relative path of files in sub-folders)."""
  top, nested = set(), {}
  for dirpath, _, files in os.walk(folder):
    rel = os.path.relpath(dirpath, folder)
    for name in files:
      if rel == '.':
        top.add(name)
      else:
        nested.setdefault(name, os.path.join(rel, name))
  return top, nested


def resolve_image(file_name: str, top: set[str], nested: dict[str, str]) -> str | None:
  """The image's path relative to the image folder, or None.

  Tries the JSON's file_name, then its base name anywhere below the folder (Cityscapes keeps
  images in per-city folders), then the Cityscapes image name that csCreatePanopticImgs'
  '<id>_gtFine_leftImg8bit.png' stands for ('<id>_leftImg8bit.png').
  """
  candidates = [file_name]
  stem, ext = os.path.splitext(os.path.basename(file_name))
  if stem.endswith(_CITYSCAPES_SUFFIX[0]):
    candidates.append(stem[:-len(_CITYSCAPES_SUFFIX[0])] + _CITYSCAPES_SUFFIX[1] + ext)
  for name in candidates:
    if name in top:
      return name
    base = os.path.basename(name)
    if base in nested:
      return nested[base]
  return None


@dataclasses.dataclass
class SplitIndex:
  """What the source precomputes for one split (all numpy, built once in Python).

  Example k (sorted by image id) reads image_paths[k] and png_paths[k]; its segment table is
  keys[offsets[k]:offsets[k+1]] (sorted PNG ids, led by 0) and the matching rows of values
  (class + 1, provisional id, crowd).
  """
  json_path: str
  image_ids: list            # the JSON's ids
  example_ids: np.ndarray    # int64 [N]
  image_paths: np.ndarray    # str [N]
  png_paths: np.ndarray      # str [N]
  keys: np.ndarray           # int32 [S]
  values: np.ndarray         # int32 [S, 3]
  offsets: np.ndarray        # int64 [N + 1]
  annotations: list          # the JSON annotation of each example
  categories: list

  def __len__(self) -> int:
    return len(self.image_ids)


def _sort_key(image_id):
  return (0, int(image_id), '') if isinstance(image_id, (int, np.integer)) else (1, 0,
                                                                                str(image_id))


def build_index(json_path: str, image_dir: str, png_dir: str, problems: Problems) -> SplitIndex:
  """Reads a COCO panoptic JSON and the folder listings; collects every problem they show.

  Structural JSON errors (not JSON, missing keys, invalid categories) raise
  `coco_format.PanopticFormatError` at once; everything else goes to `problems`.

  Args:
    json_path: the panoptic JSON.
    image_dir: folder of the images (searched recursively for names not found at the top).
    png_dir: folder of the panoptic PNGs.
    problems: collects errors and warnings.

  Returns:
    The split's index (entries with errors are left out).
  """
  image_dir, png_dir = pathlib.Path(image_dir), pathlib.Path(png_dir)
  if not image_dir.is_dir():
    raise coco_format.PanopticFormatError(
        f'{image_dir}: no such folder (images of {json_path}); set the image folder key '
        '(dataset.train_image_dir / dataset.eval_image_dir)')
  data, _ = coco_format.load_coco_panoptic(json_path, png_dir)
  src = str(json_path)
  categories = data['categories']
  cat_class = {c['id']: k + 1 for k, c in enumerate(categories)}
  valid_cats = coco_format.describe_ids(cat_class)
  images = data.get('images')
  if not isinstance(images, list):
    raise coco_format.PanopticFormatError(f"{src}: no 'images' list; a COCO panoptic JSON lists "
                                          "its images ({'id', 'file_name', ...})")
  by_id = {}
  for k, im in enumerate(images):
    if not isinstance(im, Mapping) or 'id' not in im or 'file_name' not in im:
      problems.error('json', f"{src}: images[{k}] = {im!r} needs 'id' and 'file_name'")
      continue
    by_id[im['id']] = im
  top_images, nested_images = list_files(image_dir)
  png_names = {p.name for p in png_dir.iterdir()}

  entries = []
  annotated = set()
  for ann in data['annotations']:
    image_id = ann['image_id']
    annotated.add(image_id)
    where = f'{src}: image {image_id}'
    entry = by_id.get(image_id)
    ok = True
    if entry is None:
      problems.error('json', f"{where} has an annotation but no entry in 'images'; add "
                     "{'id', 'file_name', 'height', 'width'} for it")
      ok = False
    else:
      rel = resolve_image(str(entry['file_name']), top_images, nested_images)
      if rel is None:
        problems.error('missing_file', f"{where}: image file {image_dir / entry['file_name']} "
                       'does not exist; fix the image folder key or the file_name')
        ok = False
    if ann['file_name'] not in png_names:
      problems.error('missing_file', f"{where}: panoptic PNG {png_dir / ann['file_name']} does "
                     'not exist; fix the panoptic folder key or the file_name')
      ok = False
    keys, values = [0], [(0, 0, 0)]
    seen = set()
    for n, s in enumerate(ann['segments_info']):
      if not isinstance(s, Mapping) or 'id' not in s or 'category_id' not in s:
        problems.error('json', f"{where}: segments_info[{n}] = {s!r} needs 'id' and "
                       "'category_id'")
        ok = False
        continue
      sid, cat = s['id'], s['category_id']
      if (not isinstance(sid, (int, np.integer)) or isinstance(sid, bool)
          or not 0 < sid <= MAX_SEGMENT_ID):
        problems.error('json', f'{where}: segment id {sid!r} must be an integer in '
                       f'1..{MAX_SEGMENT_ID} (0 is void: leave void pixels unlisted)')
        ok = False
        continue
      if sid in seen:
        problems.error('json', f'{where}: segment id {sid} is listed twice in segments_info; '
                       'give each segment its own id')
        ok = False
        continue
      seen.add(sid)
      if cat not in cat_class:
        problems.error('unknown_category', f'{where}: segment {sid} has category_id {cat!r}, '
                       f'which is not in categories (valid: {valid_cats}); add the category or '
                       'fix the segment')
        ok = False
        continue
      crowd = s.get('iscrowd', 0)
      if crowd not in (0, 1):
        problems.error('json', f'{where}: segment {sid} has iscrowd={crowd!r}; use 0 or 1')
        ok = False
        continue
      keys.append(int(sid))
      values.append((cat_class[cat], len(values), int(crowd)))
    if not ann['segments_info']:
      problems.warn('empty_image', f'{where} has no segments; it trains as all void')
    if ok:
      order = np.argsort(np.asarray(keys, np.int64), kind='stable')
      entries.append((image_id, str(image_dir / rel), str(png_dir / ann['file_name']),
                      np.asarray(keys, np.int32)[order], np.asarray(values, np.int32)[order],
                      ann))
  unannotated = [i for i in by_id if i not in annotated]
  for image_id in unannotated:
    problems.warn('unannotated_image', f"{src}: image {image_id} is in 'images' but has no "
                  'annotation; it is not used')
  entries.sort(key=lambda e: _sort_key(e[0]))
  ids = [e[0] for e in entries]
  sizes = [len(e[3]) for e in entries]
  return SplitIndex(
      json_path=src, image_ids=ids,
      example_ids=np.asarray(stable_ids(ids), np.int64),
      image_paths=np.asarray([e[1] for e in entries], dtype=object).astype(str),
      png_paths=np.asarray([e[2] for e in entries], dtype=object).astype(str),
      keys=(np.concatenate([e[3] for e in entries]) if entries else np.zeros([0], np.int32)),
      values=(np.concatenate([e[4] for e in entries]) if entries
              else np.zeros([0, 3], np.int32)),
      offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
      annotations=[e[5] for e in entries], categories=categories)


def split_paths(dataset_config, split: str) -> tuple[str, str, str]:
  """(json, image folder, panoptic folder) of a split from its `SPLIT_KEYS`."""
  keys = SPLIT_KEYS[split]
  d = dataset_config
  # Read key by key (not through SPLIT_KEYS) so that tests/test_configs.py sees each read.
  paths = ((d.train_json, d.train_image_dir, d.train_panoptic_dir) if split == 'train' else
           (d.eval_json, d.eval_image_dir, d.eval_panoptic_dir))
  missing = [f'dataset.{k}' for k, p in zip(keys, paths) if not p]
  if missing:
    raise ValueError(f'{dataset_config.name}: the {split} split needs {", ".join(missing)}; '
                     f'pass --config.{missing[0]}=PATH (see configs/coco_panoptic.py)')
  return paths


class CocoPanopticFolder(sources.Source):
  """A COCO-panoptic-format folder per split (module docstring), read with random access.

  Config keys: dataset.{train,eval}_{json,image_dir,panoptic_dir}, dataset.num_classes.
  """
  random_access = True
  is_video = False

  def __init__(self, dataset_config):
    self.config = dataset_config
    self._indexes: dict[str, SplitIndex] = {}
    self._categories = None

  def index(self, split: str) -> SplitIndex:
    """The split's precomputed tables (built on first use; raises DataError on problems)."""
    split = sources.check_split(split, self.config.name)
    if split not in self._indexes:
      json_path, image_dir, png_dir = split_paths(self.config, split)
      problems = Problems()
      index = build_index(json_path, image_dir, png_dir, problems)
      problems.raise_if_errors(f'{self.config.name} ({split}: {json_path})')
      problems.log_warnings(f'{self.config.name} ({split})')
      self._set_categories(index.categories, json_path)
      self._indexes[split] = index
    return self._indexes[split]

  def _set_categories(self, categories: list, json_path: str) -> None:
    if self._categories is None:
      n = len(categories)
      if self.config.num_classes != n + 1:
        raise ValueError(f'config.dataset.num_classes={self.config.num_classes}, but {json_path} '
                         f'has {n} categories: set --config.dataset.num_classes={n + 1} '
                         '(categories + void)')
      self._categories = [dict(c) for c in categories]
      self._categories_source = json_path
    else:
      key = lambda cats: [(c['id'], c['name'], int(c['isthing'])) for c in cats]
      if key(categories) != key(self._categories):
        raise ValueError(f'{json_path} and {self._categories_source} list different categories '
                         '(ids, names, isthing or order); the train and eval JSONs must share '
                         'one category list')

  @property
  def categories(self) -> list:
    if self._categories is None:
      self.index('train' if self.config.train_json else 'validation')
    return self._categories

  def num_examples(self, split: str) -> int:
    return len(self.index(split))

  def example_fn(self, split: str):
    index = self.index(split)
    source = f'{self.config.name} ({index.json_path})'
    image_paths = tf.constant(index.image_paths)
    png_paths = tf.constant(index.png_paths)
    ids = tf.constant(index.example_ids)
    offsets = tf.constant(index.offsets)
    keys = tf.constant(index.keys)
    values = tf.constant(index.values)

    def load(i):
      image_path, png_path = image_paths[i], png_paths[i]
      image = decode_image(tf.io.read_file(image_path), image_path, source)
      seg = decode_panoptic_png(tf.io.read_file(png_path), png_path, source)
      seg = assert_same_size(image, seg, image_path, png_path, source,
                             'the panoptic PNG must have the image\'s size')
      lo, hi = offsets[i], offsets[i + 1]
      label = lookup_segments(seg, keys[lo:hi], values[lo:hi])
      return {'image': image, 'label': label, 'id': ids[i]}

    return load

