"""The COCO panoptic format: segment PNGs plus a JSON of segments_info.

A panoptic segmentation of one image is a segment map (int32 [H, W], 0 = VOID) plus a list of
segment dicts `{'id', 'category_id', 'iscrowd', 'area', 'bbox'}`. On disk the map is an RGB PNG
with id = R + 256·G + 256²·B, and one JSON file holds `images`, `annotations` (one per image, with
the PNG name and its segments_info) and `categories` (`{'id', 'name', 'isthing', 'color'?}`).

This module converts the model's (class, instance id) maps to segments (docs/decisions.md §4),
writes such folders and reads them back with validation. Pure numpy + PIL.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

VOID = 0
# The largest id an RGB PNG can hold.
MAX_SEGMENT_ID = 256**3 - 1
# segments_from_maps counts keys with bincount below this bound (8 MiB of counters), else sorts.
_DENSE_KEY_LIMIT = 1 << 20

Category = Mapping[str, Any]
SegmentInfo = dict[str, Any]


class PanopticFormatError(ValueError):
  """An input does not follow the COCO panoptic format; the message names input, field and fix."""


def rgb2id(rgb: np.ndarray) -> np.ndarray:
  """Decodes a panoptic PNG's pixels to segment ids.

  Args:
    rgb: uint8 [H, W, 3].

  Returns:
    int32 [H, W], id = R + 256·G + 256²·B, in 0..256³−1 (0 = VOID).
  """
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise PanopticFormatError(f'rgb2id: expected an [H, W, 3] array, got shape {rgb.shape}')
  rgb = rgb.astype(np.int32)
  return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(id_map: np.ndarray) -> np.ndarray:
  """Encodes segment ids as PNG pixels (inverse of `rgb2id`).

  Args:
    id_map: int [H, W], values in 0..256³−1.

  Returns:
    uint8 [H, W, 3] (R, G, B) = (id % 256, id // 256 % 256, id // 256²).
  """
  id_map = np.asarray(id_map)
  if not np.issubdtype(id_map.dtype, np.integer):
    raise PanopticFormatError(f'id2rgb: expected an integer id map, got dtype {id_map.dtype}')
  if id_map.size and (id_map.min() < 0 or id_map.max() > MAX_SEGMENT_ID):
    raise PanopticFormatError(
        f'id2rgb: ids must lie in 0..{MAX_SEGMENT_ID} to fit an RGB PNG, got '
        f'{id_map.min()}..{id_map.max()}')
  id_map = id_map.astype(np.int64)
  return np.stack([id_map % 256, id_map // 256 % 256, id_map // 65536], axis=-1).astype(np.uint8)


def describe_ids(ids: Sequence[int]) -> str:
  """Formats a set of ids for error messages: '1..133' when contiguous, else a (short) list."""
  ids = sorted(set(int(i) for i in ids))
  if not ids:
    return 'none'
  if len(ids) > 2 and ids[-1] - ids[0] + 1 == len(ids):
    return f'{ids[0]}..{ids[-1]}'
  if len(ids) > 12:
    return ', '.join(map(str, ids[:10])) + f', ... ({len(ids)} ids)'
  return ', '.join(map(str, ids))


def _is_int(value: Any) -> bool:
  # bool is an int subclass, but True as an id or category is always a mistake.
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_categories(categories: Any, source: str = 'categories') -> list[dict[str, Any]]:
  """Validates a COCO category list and returns it as a list of plain dicts.

  Args:
    categories: sequence of `{'id': int, 'name': str, 'isthing': 0/1 or bool, 'color'?: [r,g,b]}`;
      ids and names must be unique.
    source: what to call the input in error messages (e.g. 'gt.json: categories').

  Returns:
    A list of shallow copies, in the given order.
  """
  if isinstance(categories, (str, bytes)) or not isinstance(categories, Sequence):
    raise PanopticFormatError(f'{source}: expected a list of category dicts, got '
                              f'{type(categories).__name__}')
  if not categories:
    raise PanopticFormatError(f'{source}: the category list is empty; give at least one '
                              "{'id', 'name', 'isthing'} dict")
  out, seen_ids, seen_names = [], set(), set()
  for k, cat in enumerate(categories):
    if not isinstance(cat, Mapping):
      raise PanopticFormatError(f'{source}: entry {k} is a {type(cat).__name__}, expected a dict '
                                "with 'id', 'name', 'isthing'")
    for key in ('id', 'name', 'isthing'):
      if key not in cat:
        raise PanopticFormatError(f"{source}: entry {k} ({dict(cat)}) has no '{key}'; every "
                                  "category needs 'id', 'name' and 'isthing'")
    if not _is_int(cat['id']):
      raise PanopticFormatError(f"{source}: entry {k} has id {cat['id']!r}; ids must be integers")
    if cat['isthing'] not in (0, 1):
      raise PanopticFormatError(f"{source}: category {cat['id']} has isthing={cat['isthing']!r}; "
                                'use 1 (countable thing) or 0 (amorphous stuff)')
    if cat['id'] in seen_ids:
      raise PanopticFormatError(f"{source}: category id {cat['id']} appears twice; ids must be "
                                'unique')
    if cat['name'] in seen_names:
      raise PanopticFormatError(f"{source}: category name {cat['name']!r} appears twice; names "
                                'must be unique (results are keyed by name)')
    seen_ids.add(cat['id'])
    seen_names.add(cat['name'])
    out.append(dict(cat))
  return out


def _int_map(x: Any, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise PanopticFormatError(f'{name}: expected a 2-D [H, W] map, got shape {x.shape}')
  if not np.issubdtype(x.dtype, np.integer):
    raise PanopticFormatError(f'{name}: expected an integer map, got dtype {x.dtype}; cast with '
                              '.astype(np.int32) after rounding')
  return x


def segments_from_maps(
    class_map: np.ndarray,
    id_map: np.ndarray,
    categories: Sequence[Category],
    crowd_map: np.ndarray | None = None,
) -> tuple[np.ndarray, list[SegmentInfo]]:
  """Turns (class, instance id) maps into COCO panoptic segments (docs/decisions.md §4).

  Void is decided by the class alone: class 0 is VOID (segment 0) whatever its id. All pixels of
  one stuff class form one segment whatever their ids; for thing classes each distinct
  (class, id) pair is one segment (a thing pixel with id 0 is one more instance: §6 already sets
  id 0 wherever the class is void). Crowd pixels of one (class, id) — of one class, for stuff —
  form their own segment with iscrowd = 1. Segment ids are 1..n, ordered by (class index,
  instance id, crowd), so equal inputs give equal outputs.

  Args:
    class_map: int [H, W], contiguous class index + 1 in 0..len(categories); 0 = void; class c
      means categories[c − 1].
    id_map: int [H, W] ≥ 0, instance ids.
    categories: COCO category dicts `{'id', 'name', 'isthing'}`.
    crowd_map: optional bool [H, W], True on crowd pixels (ground truth only).

  Returns:
    seg_map: int32 [H, W], 0 = VOID, 1..n = segments.
    segments_info: n dicts `{'id', 'category_id' (COCO id), 'iscrowd' (0/1), 'area' (pixels),
      'bbox' [x, y, w, h] (inclusive pixel extent)}`, sorted by id; plain Python ints.
  """
  cats = check_categories(categories)
  class_map = _int_map(class_map, 'class_map')
  id_map = _int_map(id_map, 'id_map')
  if id_map.shape != class_map.shape:
    raise PanopticFormatError(f'id_map has shape {id_map.shape} but class_map has '
                              f'{class_map.shape}; both must be [H, W] of the same image')
  if class_map.size and (class_map.min() < 0 or class_map.max() > len(cats)):
    raise PanopticFormatError(
        f'class_map: values must lie in 0..{len(cats)} (0 = void, c = categories[c-1]), got '
        f'{class_map.min()}..{class_map.max()}; pass the category list the model was trained on')
  if id_map.size and id_map.min() < 0:
    raise PanopticFormatError(f'id_map: instance ids must be ≥ 0, got {id_map.min()}')
  if crowd_map is None:
    crowd = np.zeros(class_map.shape, bool)
  else:
    crowd = np.asarray(crowd_map)
    if crowd.shape != class_map.shape:
      raise PanopticFormatError(f'crowd_map has shape {crowd.shape} but class_map has '
                                f'{class_map.shape}; pass a bool [H, W] map or None')
    crowd = crowd.astype(bool)

  height, width = class_map.shape
  cls = class_map.astype(np.int64)
  isthing = np.array([False] + [bool(c['isthing']) for c in cats])
  inst = np.where(isthing[cls], id_map.astype(np.int64), 0)
  span = int(inst.max()) + 1 if inst.size else 1
  key = (cls * span + inst) * 2 + crowd
  # Void pixels share key 0 so they become segment 0 whatever their id or crowd flag.
  key[cls == 0] = 0
  key = key.ravel()
  if key.size and key.max() < _DENSE_KEY_LIMIT:
    # Model outputs have small classes and ids: a counting pass beats np.unique's sort.
    keys = np.flatnonzero(np.bincount(key))
    lut = np.zeros(int(keys[-1]) + 1, np.int64)
    lut[keys] = np.arange(keys.size)
    inverse = lut[key]
  else:
    keys, inverse = np.unique(key, return_inverse=True)
  has_void = keys.size > 0 and keys[0] == 0
  seg = inverse.reshape(height, width).astype(np.int32) + (0 if has_void else 1)
  nseg = keys.size - (1 if has_void else 0)
  seg_keys = keys[1:] if has_void else keys

  areas = np.bincount(seg.ravel(), minlength=nseg + 1)
  # Row and column occupancy per segment gives the bbox without one pass per segment.
  rows = np.zeros((nseg + 1, height), bool)
  rows[seg, np.arange(height)[:, None]] = True
  cols = np.zeros((nseg + 1, width), bool)
  cols[seg, np.arange(width)[None, :]] = True

  segments_info = []
  for k in range(nseg):
    sid = k + 1
    c = int(seg_keys[k] // 2 // span)
    y0 = int(np.argmax(rows[sid]))
    y1 = height - 1 - int(np.argmax(rows[sid][::-1]))
    x0 = int(np.argmax(cols[sid]))
    x1 = width - 1 - int(np.argmax(cols[sid][::-1]))
    segments_info.append({
        'id': sid,
        'category_id': int(cats[c - 1]['id']),
        'iscrowd': int(seg_keys[k] % 2),
        'area': int(areas[sid]),
        'bbox': [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
    })
  return seg, segments_info


def index_segments(
    seg_map: np.ndarray,
    segments_info: Any,
    category_ids: Sequence[int] | set[int],
    *,
    source: str,
    image: str,
    require_all_painted: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Validates one image's segments and indexes its pixels by segment.

  Checks, as panopticapi does for predictions: every non-zero PNG id is listed in segments_info,
  every listed id is in the PNG (unless `require_all_painted` is False), categories are known;
  and also: ids are unique integers in 1..256³−1 and iscrowd is 0/1.

  Args:
    seg_map: int [H, W] segment ids, 0 = VOID.
    segments_info: list of dicts with at least 'id' and 'category_id'.
    category_ids: the valid COCO category ids.
    source: the input's name for errors, e.g. 'pred.json' or 'prediction'.
    image: the image's name for errors, e.g. '42 (000042.png)'.
    require_all_painted: whether a listed segment must have pixels in seg_map.

  Returns:
    ids: int64 [k+1], 0 (VOID) then the listed ids in segments_info order.
    index: int64 [H, W] in 0..k, position in `ids` of each pixel's segment.
    counts: int64 [k+1], pixels per entry of `ids`.
  """
  seg_map = np.asarray(seg_map)
  if seg_map.ndim != 2 or not np.issubdtype(seg_map.dtype, np.integer):
    raise PanopticFormatError(f'{source}: image {image}: expected an integer [H, W] segment map, '
                              f'got {seg_map.dtype} of shape {seg_map.shape}')
  if isinstance(segments_info, (str, bytes, Mapping)) or not isinstance(segments_info, Sequence):
    raise PanopticFormatError(f"{source}: image {image}: 'segments_info' must be a list of "
                              f'segment dicts, got {type(segments_info).__name__}')
  valid = set(int(c) for c in category_ids)
  listed = []
  for k, s in enumerate(segments_info):
    if not isinstance(s, Mapping) or 'id' not in s or 'category_id' not in s:
      raise PanopticFormatError(f"{source}: entry {k} of segments_info of image {image} needs "
                                f"'id' and 'category_id', got {s!r}")
    sid, cat = s['id'], s['category_id']
    if not _is_int(sid) or not 0 < sid <= MAX_SEGMENT_ID:
      raise PanopticFormatError(
          f'{source}: entry {k} of segments_info of image {image} has id {sid!r}; ids must be '
          f'integers in 1..{MAX_SEGMENT_ID} (0 is VOID: leave void pixels unlisted)')
    if sid in listed:
      raise PanopticFormatError(f'{source}: image {image} lists segment id {sid} twice in '
                                'segments_info; give each segment its own id')
    if not _is_int(cat) or int(cat) not in valid:
      raise PanopticFormatError(f'{source}: segment {sid} of image {image} has category {cat!r}, '
                                f'which is not in categories (valid: {describe_ids(valid)})')
    if s.get('iscrowd', 0) not in (0, 1):
      raise PanopticFormatError(f"{source}: segment {sid} of image {image} has iscrowd="
                                f"{s['iscrowd']!r}; use 0 or 1")
    listed.append(int(sid))

  ids = np.array([VOID] + listed, np.int64)
  order = np.argsort(ids, kind='stable')
  sorted_ids = ids[order]
  flat = seg_map.astype(np.int64).ravel()
  pos = np.clip(np.searchsorted(sorted_ids, flat), 0, sorted_ids.size - 1)
  unknown = sorted_ids[pos] != flat
  if unknown.any():
    bad = np.unique(flat[unknown])
    raise PanopticFormatError(
        f'{source}: image {image} has segment id(s) {describe_ids(bad.tolist())} in its PNG but '
        'not in segments_info; list every non-zero PNG id in segments_info (id 0 is VOID)')
  index = order[pos].reshape(seg_map.shape)
  counts = np.bincount(index.ravel(), minlength=ids.size)
  if require_all_painted:
    missing = ids[1:][counts[1:] == 0]
    if missing.size:
      raise PanopticFormatError(
          f'{source}: image {image} lists segment id(s) {describe_ids(missing.tolist())} in '
          'segments_info that do not occur in its PNG; drop them or paint them')
  return ids, index, counts


def write_json(path: pathlib.Path, obj: Any, **dump_options) -> None:
  """Writes `obj` as JSON to `path` (its folder created) through a temporary file, so a reader
  never sees half a file; `dump_options` go to `json.dump` (e.g. indent=2)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(obj, f, **dump_options)
  os.replace(tmp, path)


def _plain(value: Any) -> Any:
  """numpy scalars/arrays → Python values, so json.dump accepts segments_info built anywhere."""
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


class CocoPanopticWriter:
  """Writes a COCO panoptic folder: `out_dir/panoptic/<stem>.png` and `out_dir/panoptic.json`.

  PNGs are written as images are added; the JSON is written (atomically) by `close()`. Used as a
  context manager, the JSON is written only when the block exits without an exception, so a
  crashed export never leaves a JSON that looks complete.
  """

  def __init__(self, out_dir: str | os.PathLike[str], categories: Sequence[Category]):
    """Args: out_dir: the folder to create/fill; categories: COCO category dicts."""
    self.out_dir = pathlib.Path(out_dir)
    self.categories = check_categories(categories)
    self._category_ids = {c['id'] for c in self.categories}
    self.png_dir = self.out_dir / 'panoptic'
    self.json_path = self.out_dir / 'panoptic.json'
    self.png_dir.mkdir(parents=True, exist_ok=True)
    self._images: list[dict[str, Any]] = []
    self._annotations: list[dict[str, Any]] = []
    self._image_ids: set[Any] = set()
    self._png_names: dict[str, Any] = {}
    self._closed = False

  def add(
      self,
      image_id: int,
      file_name: str,
      seg_map: np.ndarray,
      segments_info: Sequence[SegmentInfo],
      height: int | None = None,
      width: int | None = None,
  ) -> None:
    """Writes one image's PNG and records its entry.

    Args:
      image_id: the image's id (unique within the folder).
      file_name: the image's file name (e.g. '000000000042.jpg'); the PNG is '<stem>.png'.
      seg_map: int [H, W] segment ids, 0 = VOID, ≤ 256³−1.
      segments_info: dicts with 'id', 'category_id' and optionally 'iscrowd' (default 0) and
        'bbox'; 'area' is set to the pixel count.
      height: the image height, a check that seg_map has the image's size (default: H).
      width: the image width, likewise (default: W).
    """
    if self._closed:
      raise RuntimeError(f'{self.json_path}: the writer is closed; create a new one to add more')
    if image_id in self._image_ids:
      raise PanopticFormatError(f'{self.json_path}: image id {image_id} was added twice; image '
                                'ids must be unique')
    seg_map = np.asarray(seg_map)
    where = f'{image_id} ({file_name})'
    h, w = seg_map.shape[:2] if seg_map.ndim == 2 else (None, None)
    if (height is not None and height != h) or (width is not None and width != w):
      raise PanopticFormatError(
          f'{self.json_path}: image {where}: seg_map is {h}x{w} but the image is '
          f'{height}x{width}; resize the map to the image size (nearest) before writing')
    _, _, counts = index_segments(seg_map, segments_info, self._category_ids,
                                  source=str(self.json_path), image=where)
    png_name = pathlib.PurePath(file_name).stem + '.png'
    if png_name in self._png_names:
      raise PanopticFormatError(
          f'{self.json_path}: images {self._png_names[png_name]} and {image_id} both map to '
          f'{png_name}; give images distinct file-name stems')
    infos = []
    for k, s in enumerate(segments_info):
      info = _plain(dict(s))
      info.setdefault('iscrowd', 0)
      # The pixel count is the area by definition; a stale value would skew GT-based IoUs.
      info['area'] = int(counts[k + 1])
      infos.append(info)

    tmp = self.png_dir / (png_name + '.tmp')
    Image.fromarray(id2rgb(seg_map)).save(tmp, format='PNG')
    os.replace(tmp, self.png_dir / png_name)
    self._image_ids.add(image_id)
    self._png_names[png_name] = image_id
    self._images.append({'id': _plain(image_id), 'file_name': file_name, 'height': int(h),
                         'width': int(w)})
    self._annotations.append({'image_id': _plain(image_id), 'file_name': png_name,
                              'segments_info': infos})

  def close(self) -> pathlib.Path:
    """Writes panoptic.json (idempotent) and returns its path."""
    if not self._closed:
      write_json(self.json_path, {
          'images': self._images,
          'annotations': self._annotations,
          'categories': _plain(self.categories),
      })
      self._closed = True
    return self.json_path

  def __enter__(self) -> CocoPanopticWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()


def read_panoptic_png(path: str | os.PathLike[str], source: str = '') -> np.ndarray:
  """Reads a panoptic PNG.

  Args:
    path: an RGB PNG with id = R + 256·G + 256²·B.
    source: prefix for error messages (e.g. 'pred.json: image 42').

  Returns:
    int32 [H, W] segment ids.
  """
  prefix = f'{source}: ' if source else ''
  try:
    with Image.open(path) as im:
      mode = im.mode
      arr = np.asarray(im)
  except FileNotFoundError:
    raise PanopticFormatError(f'{prefix}PNG {path} does not exist; check the PNG folder '
                              "argument and the annotation's file_name") from None
  except OSError as e:
    raise PanopticFormatError(f'{prefix}cannot read PNG {path} ({e}); rewrite it as an RGB '
                              'PNG') from None
  if mode != 'RGB':
    raise PanopticFormatError(f'{prefix}PNG {path} has mode {mode}; panoptic PNGs must be RGB '
                              'with id = R + 256·G + 256²·B')
  return rgb2id(arr)


class PanopticFolder:
  """Lazily reads the PNGs of a COCO panoptic folder; iterable over (annotation, seg_map)."""

  def __init__(self, data: dict[str, Any], png_dir: pathlib.Path, source: str):
    self.data = data
    self.png_dir = png_dir
    self.source = source
    self.annotations: list[dict[str, Any]] = data['annotations']
    self.by_image_id = {a['image_id']: a for a in self.annotations}

  def __len__(self) -> int:
    return len(self.annotations)

  def describe(self, annotation: Mapping[str, Any]) -> str:
    """The image's name in errors: 'ID (PNG)'."""
    return f"{annotation['image_id']} ({annotation['file_name']})"

  def seg_map(self, annotation: Mapping[str, Any]) -> np.ndarray:
    """Reads one annotation's PNG: int32 [H, W] segment ids."""
    return read_panoptic_png(self.png_dir / annotation['file_name'],
                             f"{self.source}: image {annotation['image_id']}")

  def __iter__(self) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    for ann in self.annotations:
      yield ann, self.seg_map(ann)


def load_coco_panoptic(
    json_path: str | os.PathLike[str],
    png_dir: str | os.PathLike[str],
    *,
    require_categories: bool = True,
) -> tuple[dict[str, Any], PanopticFolder]:
  """Loads a COCO panoptic JSON and gives access to its PNGs.

  The JSON's structure is checked here (annotations with image_id, file_name, segments_info;
  unique image ids; valid categories when present); PNGs are read when iterated, and
  `index_segments` checks a PNG against its segments_info.

  Args:
    json_path: the panoptic JSON.
    png_dir: the folder holding the annotations' PNGs.
    require_categories: whether the JSON must hold 'categories' (ground truth); prediction
      files may omit them.

  Returns:
    data: the parsed JSON.
    folder: a `PanopticFolder`, iterable over (annotation dict, int32 [H, W] seg_map).
  """
  json_path = pathlib.Path(json_path)
  png_dir = pathlib.Path(png_dir)
  src = str(json_path)
  try:
    with open(json_path) as f:
      data = json.load(f)
  except FileNotFoundError:
    raise PanopticFormatError(f'{src}: no such file; pass the panoptic JSON path') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise PanopticFormatError(f'{src}: not valid JSON ({e}); regenerate the file') from None
  if not isinstance(data, dict) or not isinstance(data.get('annotations'), list):
    raise PanopticFormatError(f"{src}: expected a JSON object with an 'annotations' list (COCO "
                              'panoptic format)')
  if 'categories' in data:
    data['categories'] = check_categories(data['categories'], f'{src}: categories')
  elif require_categories:
    raise PanopticFormatError(f"{src}: no 'categories' list; ground truth must define its "
                              "categories ({'id', 'name', 'isthing'})")
  if not png_dir.is_dir():
    raise PanopticFormatError(f'{png_dir}: no such folder (PNGs of {src}); pass the folder that '
                              'holds the panoptic PNGs')
  seen = set()
  for k, ann in enumerate(data['annotations']):
    if not isinstance(ann, dict):
      raise PanopticFormatError(f'{src}: annotation {k} is not an object')
    for key in ('image_id', 'file_name', 'segments_info'):
      if key not in ann:
        raise PanopticFormatError(f"{src}: annotation {k} (image {ann.get('image_id', '?')}) has "
                                  f"no '{key}'; each annotation needs image_id, file_name and "
                                  'segments_info')
    if not isinstance(ann['file_name'], str) or not ann['file_name']:
      raise PanopticFormatError(f"{src}: annotation of image {ann['image_id']} has file_name "
                                f"{ann['file_name']!r}; give the PNG's name (e.g. 'x.png')")
    if not isinstance(ann['segments_info'], list):
      raise PanopticFormatError(f"{src}: annotation of image {ann['image_id']}: segments_info "
                                'must be a list')
    try:
      hash(ann['image_id'])
    except TypeError:
      raise PanopticFormatError(f"{src}: annotation {k} has image_id {ann['image_id']!r}; use an "
                                'integer or string') from None
    if ann['image_id'] in seen:
      raise PanopticFormatError(f"{src}: image {ann['image_id']} has more than one annotation; "
                                'give one annotation per image')
    seen.add(ann['image_id'])
  return data, PanopticFolder(data, png_dir, src)
