"""Validates a config's data before training and prints a summary as one JSON object.

  python -m pix2seq_d_jax.data.check --config=configs/X.py[:arg] [--config.k=v ...] \
      [--split=train|validation|both] [--max_images=N] [--workers=N] [--limit=N]

Checks what training would trip over, and keeps going to report every problem (the first
`--limit` messages of each kind, with counts):
  COCO-panoptic folders: the JSON's structure, image and PNG files present and readable (not
    truncated, a format tf.data decodes), every PNG segment id listed in segments_info and every
    listed id present in the PNG, category ids known, image and PNG sizes equal, panoptic PNGs
    8-bit RGB; warns about documented conversions (grayscale / RGBA / palette / 16-bit images),
    images without segments, and images with more segments than dataset.max_instances - 1 (the
    smallest become void in training); for the evaluation split, images larger than
    dataset.max_original_size are errors.
  DAVIS folders: the layout, frames with annotations, readable frames, annotation modes and
    palettes, sizes, objects per video against dataset.max_instances.
  TFDS sources: the dataset is prepared.
The summary gives, per split: images, segments per image (percentiles), classes present, crowd
share, void share and the largest original size (set dataset.max_original_size from it).
Exit status: 0 without errors (warnings allowed), 1 with errors, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import sys
import threading
from typing import Any

import numpy as np
from PIL import Image

from pix2seq_d_jax import config_lib
from pix2seq_d_jax import data
from pix2seq_d_jax.data import davis
from pix2seq_d_jax.data import folder
from pix2seq_d_jax.formats import coco_format

_FORMATS = {'JPEG', 'PNG', 'GIF', 'BMP'}        # what tf.io.decode_image reads
_CONVERTED_MODES = {'L': 'grayscale (replicated to RGB)', 'LA': 'grayscale+alpha (alpha dropped)',
                    'P': 'palette (expanded to RGB)', 'PA': 'palette+alpha (expanded to RGB)',
                    'RGBA': 'RGBA (alpha dropped)', '1': '1-bit (expanded to RGB)',
                    'I;16': '16-bit grayscale (scaled to 8 bits, replicated to RGB)',
                    'I': '16/32-bit grayscale (scaled to 8 bits, replicated to RGB)'}


class _Shared:
  """Problems and statistics, written by worker threads."""

  def __init__(self, problems: folder.Problems):
    self.problems = problems
    self.lock = threading.Lock()

  def error(self, kind, message):
    with self.lock:
      self.problems.error(kind, message)

  def warn(self, kind, message):
    with self.lock:
      self.problems.warn(kind, message)


def _complete(path: str, data: bytes, fmt: str) -> bool:
  if fmt == 'JPEG':
    return b'\xff\xd9' in data[-1024:]
  if fmt == 'PNG':
    return b'IEND' in data[-64:]
  return True


def check_image_file(path: str, shared: _Shared) -> tuple[int, int] | None:
  """Checks that tf.data can decode an image file; returns its (height, width) or None."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    shared.error('unreadable', f'{path}: cannot read the image ({e.strerror}); fix the file '
                 'permissions or replace the file')
    return None
  if not data:
    shared.error('unreadable', f'{path}: the image file is empty; re-download or re-encode it')
    return None
  try:
    with Image.open(path) as im:
      fmt, mode, size = im.format, im.mode, im.size
      im.load()
  except Image.DecompressionBombError as e:
    shared.error('too_large', f'{path}: {e}; downscale the image (training would decode it '
                 'whole on every read)')
    return None
  except (OSError, SyntaxError, ValueError) as e:
    shared.error('unreadable', f'{path}: the image cannot be decoded ({e}); re-download it or '
                 're-encode it as JPEG or PNG')
    return None
  if fmt not in _FORMATS:
    shared.error('image_format', f'{path}: the image is {fmt}, which tf.data cannot decode; '
                 're-encode it as JPEG or PNG')
    return None
  if not _complete(path, data, fmt):
    shared.error('unreadable', f'{path}: the {fmt} file is truncated (no end marker); '
                 're-download or re-encode it')
    return None
  if fmt == 'PNG':
    header = folder.png_header(path)
    if header and header[0] == 16:
      shared.warn('image_conversion', f'{path}: 16-bit PNG image; training scales it to 8 bits')
  if mode == 'CMYK':
    shared.error('image_format', f'{path}: CMYK JPEG, which tf.data cannot decode to RGB; '
                 're-save it as RGB')
    return None
  if mode != 'RGB':
    shared.warn('image_conversion', f'{path}: {_CONVERTED_MODES.get(mode, mode)} image; '
                'training converts it to RGB')
  return size[1], size[0]


def read_panoptic_ids(path: str, shared: _Shared) -> np.ndarray | None:
  """The segment ids of a panoptic PNG as training reads them, or None (problem recorded)."""
  header = folder.png_header(path)
  if header is None:
    shared.error('panoptic_png', f'{path}: not a PNG file; panoptic segmentations are RGB PNGs '
                 'with id = R + 256 G + 256^2 B')
    return None
  depth, color_type = header
  if depth != 8:
    shared.error('panoptic_png', f'{path}: {depth}-bit {folder.png_color_name(color_type)} PNG; '
                 'panoptic PNGs must be 8-bit RGB (id = R + 256 G + 256^2 B): re-save it')
    return None
  if color_type in (0, 4):
    shared.error('panoptic_png', f'{path}: grayscale PNG; panoptic PNGs must be RGB with '
                 'id = R + 256 G + 256^2 B: convert the id map with coco_format.id2rgb')
    return None
  if color_type == 6:
    shared.warn('panoptic_png', f'{path}: RGBA panoptic PNG; the alpha channel is ignored')
  try:
    with open(path, 'rb') as f:
      data = f.read()
    with Image.open(path) as im:
      rgb = np.asarray(im.convert('RGB'))
  except (OSError, SyntaxError, ValueError) as e:
    shared.error('unreadable', f'{path}: the PNG cannot be decoded ({e}); regenerate it')
    return None
  if not _complete(path, data, 'PNG'):
    shared.error('unreadable', f'{path}: the PNG is truncated (no IEND chunk); regenerate it')
    return None
  return coco_format.rgb2id(rgb)


def _percentiles(values) -> dict[str, float]:
  if not len(values):
    return {}
  v = np.asarray(values, np.float64)
  return {'p50': float(np.percentile(v, 50)), 'p90': float(np.percentile(v, 90)),
          'p99': float(np.percentile(v, 99)), 'max': float(v.max()), 'mean': float(v.mean())}


def check_coco_split(config, split: str, problems: folder.Problems, *, max_images: int,
                     workers: int) -> dict[str, Any]:
  """Checks one COCO-panoptic-folder split; returns its summary."""
  d = config.dataset
  try:
    json_path, image_dir, png_dir = folder.split_paths(d, split)
  except ValueError as e:
    problems.error('config', str(e))
    return {}
  try:
    index = folder.build_index(json_path, image_dir, png_dir, problems)
  except coco_format.PanopticFormatError as e:
    problems.error('json', str(e))
    return {}
  n_cat = len(index.categories)
  if d.num_classes != n_cat + 1:
    problems.error('config', f'config.dataset.num_classes={d.num_classes}, but {json_path} has '
                   f'{n_cat} categories: set --config.dataset.num_classes={n_cat + 1}')
  k = d.max_instances
  segs = [len(a['segments_info']) for a in index.annotations]
  over = [(a['image_id'], n) for a, n in zip(index.annotations, segs) if n > k - 1]
  for image_id, n in over:
    problems.warn('too_many_segments', f'{json_path}: image {image_id} has {n} segments, more '
                  f'than dataset.max_instances - 1 = {k - 1}; training makes the smallest '
                  f'{n - k + 1} void (raise dataset.max_instances, at most 256, to keep them)')
  used = collections.Counter()
  crowd_segments = 0
  for a in index.annotations:
    for s in a['segments_info']:
      used[s['category_id']] += 1
      crowd_segments += int(s.get('iscrowd', 0) == 1)

  shared = _Shared(problems)
  count = len(index) if max_images <= 0 else min(max_images, len(index))
  stats = {'pixels': 0, 'void': 0, 'crowd': 0, 'sizes': []}

  def check_one(j: int):
    ann = index.annotations[j]
    where = f'{json_path}: image {ann["image_id"]}'
    size = check_image_file(index.image_paths[j], shared)
    ids = read_panoptic_ids(index.png_paths[j], shared)
    if ids is None:
      return None
    if size is not None and size != ids.shape:
      shared.error('size_mismatch', f'{where}: image {index.image_paths[j]} is {size[1]}x'
                   f'{size[0]} but panoptic PNG {index.png_paths[j]} is {ids.shape[1]}x'
                   f'{ids.shape[0]}; regenerate the PNG at the image size')
    listed = {s['id']: s for s in ann['segments_info']}
    present, counts = np.unique(ids, return_counts=True)
    in_png = set(present.tolist()) - {0}
    not_listed = sorted(in_png - set(listed))
    not_painted = sorted(set(listed) - in_png)
    if not_listed:
      shared.error('id_not_in_json', f'{where}: PNG {index.png_paths[j]} has segment id(s) '
                   f'{coco_format.describe_ids(not_listed)} that segments_info does not list '
                   '(training makes them void); list them in segments_info or repaint them 0')
    if not_painted:
      shared.error('id_not_in_png', f'{where}: segments_info lists id(s) '
                   f'{coco_format.describe_ids(not_painted)} that PNG {index.png_paths[j]} does '
                   'not contain; drop them from segments_info or paint them')
    by_id = dict(zip(present.tolist(), counts.tolist()))
    crowd = sum(by_id.get(i, 0) for i, s in listed.items() if s.get('iscrowd', 0) == 1)
    return ids.shape, ids.size, by_id.get(0, 0), crowd

  with concurrent.futures.ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
    for result in pool.map(check_one, range(count)):
      if result is None:
        continue
      shape, pixels, void, crowd = result
      stats['sizes'].append(shape)
      stats['pixels'] += pixels
      stats['void'] += void
      stats['crowd'] += crowd

  largest = ([int(max(s[0] for s in stats['sizes'])), int(max(s[1] for s in stats['sizes']))]
             if stats['sizes'] else [0, 0])
  if split == 'validation' and stats['sizes']:
    max_h, max_w = d.max_original_size
    too_big = [s for s in stats['sizes'] if s[0] > max_h or s[1] > max_w]
    if too_big:
      problems.error('max_original_size', f'{json_path}: {len(too_big)} evaluation image(s) are '
                     f'larger than dataset.max_original_size={tuple(d.max_original_size)} (the '
                     f'largest is {largest[0]}x{largest[1]}, height x width); set '
                     f'--config.dataset.max_original_size="({largest[0]}, {largest[1]})"')
  names = {c['id']: c['name'] for c in index.categories}
  absent = [names[c['id']] for c in index.categories if c['id'] not in used]
  total_segments = sum(segs)
  return {
      'json': json_path,
      'images': len(index),
      'images_checked': count,
      'segments': total_segments,
      'segments_per_image': _percentiles(segs),
      'images_over_max_instances': len(over),
      'empty_images': sum(1 for n in segs if n == 0),
      'categories': n_cat,
      'classes_present': n_cat - len(absent),
      'classes_absent': absent[:20],
      'crowd_segment_share': round(crowd_segments / max(total_segments, 1), 5),
      'crowd_pixel_share': round(stats['crowd'] / max(stats['pixels'], 1), 5),
      'void_pixel_share': round(stats['void'] / max(stats['pixels'], 1), 5),
      'largest_original_size': largest,
  }


def check_davis_split(config, split: str, problems: folder.Problems, *, max_images: int,
                      workers: int) -> dict[str, Any]:
  """Checks one split of a DAVIS folder; returns its summary."""
  d = config.dataset
  if not d.root:
    problems.error('config', f'{d.name}: set --config.dataset.root to a DAVIS 2017 root')
    return {}
  try:
    index = davis.build_video_index(d.root, split, d.num_frames, problems)
  except folder.DataError as e:
    problems.error('layout', str(e))
    return {}
  shared = _Shared(problems)
  frames = list(range(len(index.frame_paths)))
  if max_images > 0:
    frames = frames[:max_images]
  tables = {}
  for t in range(len(index.table_offsets) - 1):
    lo, hi = index.table_offsets[t], index.table_offsets[t + 1]
    tables[t] = dict(zip(index.table_keys[lo:hi].tolist(), index.table_values[lo:hi].tolist()))

  def check_one(f: int):
    size = check_image_file(index.frame_paths[f], shared)
    path = index.annotation_paths[f]
    try:
      with Image.open(path) as im:
        ids = np.asarray(im).astype(np.int64)
        rgb = np.asarray(im.convert('RGB')).astype(np.int64)
    except (OSError, SyntaxError, ValueError) as e:
      shared.error('unreadable', f'{path}: cannot decode the annotation ({e}); re-save it')
      return None
    if size is not None and size != ids.shape:
      shared.error('size_mismatch', f'{path} is {ids.shape[1]}x{ids.shape[0]} but frame '
                   f'{index.frame_paths[f]} is {size[1]}x{size[0]}; annotations must have their '
                   "frame's size")
    table = tables[int(index.frame_table[f])]
    keys = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    colours, inverse = np.unique(keys, return_inverse=True)
    as_read = np.asarray([table.get(c, 0) for c in colours.tolist()], np.int64)[inverse]
    if not np.array_equal(as_read.reshape(ids.shape), ids):
      shared.error('palette', f'{path}: its palette gives two used ids one colour, so the ids '
                   'cannot be recovered from the colours; re-save it with distinct colours '
                   '(davis_format.write_palette_png)')
    values = np.unique(ids)
    return ids.shape, set(values.tolist()) - {0, davis.VOID}, int((ids == davis.VOID).sum()), \
        ids.size

  results = {}
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
    for f, result in zip(frames, pool.map(check_one, frames)):
      results[f] = result
  k = d.max_instances
  objects, sizes, void, pixels = [], [], 0, 0
  for v, name in enumerate(index.names):
    first, n = int(index.first_frame[v]), int(index.num_frames[v])
    ids = set()
    for f in range(first, first + n):
      r = results.get(f)
      if r:
        sizes.append(r[0])
        ids |= r[1]
        void += r[2]
        pixels += r[3]
    objects.append(len(ids))
    if len(ids) > k - 1:
      problems.warn('too_many_segments', f'video {name}: {len(ids)} objects, more than '
                    f'dataset.max_instances - 1 = {k - 1}; training makes the smallest void')
  largest = ([int(max(s[0] for s in sizes)), int(max(s[1] for s in sizes))] if sizes else [0, 0])
  if split == 'validation' and sizes:
    max_h, max_w = d.max_original_size
    if largest[0] > max_h or largest[1] > max_w:
      problems.error('max_original_size', f'{d.root}: frames up to {largest[0]}x{largest[1]} '
                     f'exceed dataset.max_original_size={tuple(d.max_original_size)}; set '
                     f'--config.dataset.max_original_size="({largest[0]}, {largest[1]})"')
  return {
      'root': str(d.root),
      'annotations': index.annotation_dir,
      'videos': len(index.names),
      'frames': int(index.num_frames.sum()),
      'frames_checked': len(frames),
      'examples': len(index),
      'frames_per_video': _percentiles(index.num_frames.tolist()),
      'objects_per_video': _percentiles(objects),
      'void_pixel_share': round(void / max(pixels, 1), 5),
      'largest_original_size': largest,
  }


def check_config(config, splits, *, max_images: int = 0, workers: int = 0,
                 limit: int = 20) -> dict[str, Any]:
  """Checks the data of `config.dataset`; returns the report (see the module docstring)."""
  problems = folder.Problems(limit)
  workers = workers or os.cpu_count() or 1
  name = config.dataset.name
  summaries = {}
  for split in splits:
    if name == 'coco_panoptic_folder':
      summaries[split] = check_coco_split(config, split, problems, max_images=max_images,
                                          workers=workers)
    elif name == 'davis_folder':
      summaries[split] = check_davis_split(config, split, problems, max_images=max_images,
                                           workers=workers)
    elif name in ('coco_panoptic_tfds', 'davis_tfds'):
      try:
        source = data.get_source(config.dataset)
        summaries[split] = {'examples': source.num_examples(split)}
      except (ValueError, OSError) as e:
        problems.error('tfds', str(e))
    else:
      summaries[split] = {'note': f'{name} is generated in memory; nothing to check'}
  return {
      'dataset': name,
      'ok': problems.num_errors == 0,
      'splits': summaries,
      'error_counts': dict(problems.error_counts),
      'warning_counts': dict(problems.warning_counts),
      'errors': problems.lines(errors=True),
      'warnings': problems.lines(errors=False),
  }


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  argv, overrides = config_lib.split_config_flags(argv)
  parser = argparse.ArgumentParser(prog='python -m pix2seq_d_jax.data.check',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', required=True, help='configs/X.py[:arg]')
  parser.add_argument('--split', default='both', choices=('train', 'validation', 'both'))
  parser.add_argument('--max_images', type=int, default=0,
                      help='check the pixels of at most this many images per split (0: all)')
  parser.add_argument('--workers', type=int, default=0, help='threads (0: one per core)')
  parser.add_argument('--limit', type=int, default=20, help='messages kept per kind of problem')
  try:
    args = parser.parse_args(argv)
    config = config_lib.load_config(args.config, overrides)
  except SystemExit as e:   # argparse: --help (0) or a usage error (2)
    return e.code if isinstance(e.code, int) else 2
  except (FileNotFoundError, KeyError, TypeError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  splits = ('train', 'validation') if args.split == 'both' else (args.split,)
  report = check_config(config, splits, max_images=args.max_images, workers=args.workers,
                        limit=args.limit)
  print(json.dumps(report, indent=1))
  if not report['ok']:
    print(f'{sum(report["error_counts"].values())} error(s) in the data of {args.config}:',
          file=sys.stderr)
    for line in report['errors']:
      print(f'  {line}', file=sys.stderr)
  return 0 if report['ok'] else 1


if __name__ == '__main__':
  sys.exit(main())
