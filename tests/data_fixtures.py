"""Writers of small data sets on disk for the data tests and the input benchmark.

`write_coco_folder` writes a COCO-panoptic-format folder (JPEG or PNG images, RGB panoptic PNGs
with id = R + 256·G + 256²·B, one JSON) whose images show known patterns: a sky band (stuff) over
a road band (stuff) and a few solid rectangles (things), each painted in its category's colour, so
a test can find a category's segment in a batch by its colour. `write_davis_folder` writes a
DAVIS-2017-layout root (JPEG frames, palette PNG annotations, ImageSets lists) of squares that move
one pixel per frame. Everything is deterministic by `seed`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from pix2seq_d_jax.formats import coco_format  # noqa: E402
from pix2seq_d_jax.formats import davis_format  # noqa: E402

# COCO-style ids on purpose not contiguous; contiguous class = position + 1.
CATEGORIES = (
    {'id': 1, 'name': 'person', 'isthing': 1},
    {'id': 3, 'name': 'car', 'isthing': 1},
    {'id': 7, 'name': 'road', 'isthing': 0},
    {'id': 23, 'name': 'sky', 'isthing': 0},
)
PERSON, CAR, ROAD, SKY = 1, 2, 3, 4
# Saturated, well separated colours survive JPEG compression away from edges.
COLOURS = {1: (230, 30, 30), 3: (30, 30, 230), 7: (90, 90, 90), 23: (120, 220, 250)}
CROWD_COLOUR = (240, 240, 40)     # a crowd of persons is painted yellow


@dataclasses.dataclass
class Rect:
  """A thing in a generated image: rows y0:y1, columns x0:x1."""
  y0: int
  y1: int
  x0: int
  x1: int
  category_id: int
  iscrowd: int = 0
  segment_id: int = 0


@dataclasses.dataclass
class CocoFolder:
  """Paths of a generated split and what each image shows."""
  json: pathlib.Path
  image_dir: pathlib.Path
  panoptic_dir: pathlib.Path
  image_ids: list
  rects: dict          # image_id -> [Rect]
  sizes: dict          # image_id -> (height, width)

  def overrides(self, prefix: str) -> list[str]:
    """`dataset.<prefix>_json=...` style overrides (prefix 'train' or 'eval')."""
    return [f'dataset.{prefix}_json={self.json}', f'dataset.{prefix}_image_dir={self.image_dir}',
            f'dataset.{prefix}_panoptic_dir={self.panoptic_dir}']


def _segment_id(rng: np.random.Generator, used: set) -> int:
  # Large ids exercise all three PNG channels (id = R + 256 G + 256² B).
  while True:
    sid = int(rng.integers(1, 256**3))
    if sid not in used:
      used.add(sid)
      return sid


def draw_image(height: int, width: int, rects: list[Rect], rng: np.random.Generator,
               stuff_ids: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
  """Paints one image and its segment map.

  Returns:
    image: uint8 [h, w, 3]; seg: int32 [h, w] PNG ids (0 = void); segments_info list.
  """
  image = np.zeros((height, width, 3), np.uint8)
  seg = np.zeros((height, width), np.int64)
  sky_id, road_id = stuff_ids
  split = height // 2
  image[:split] = COLOURS[23]
  seg[:split] = sky_id
  image[split:] = COLOURS[7]
  seg[split:] = road_id
  infos = [{'id': sky_id, 'category_id': 23, 'iscrowd': 0},
           {'id': road_id, 'category_id': 7, 'iscrowd': 0}]
  for r in rects:
    image[r.y0:r.y1, r.x0:r.x1] = CROWD_COLOUR if r.iscrowd else COLOURS[r.category_id]
    seg[r.y0:r.y1, r.x0:r.x1] = r.segment_id
    infos.append({'id': r.segment_id, 'category_id': r.category_id, 'iscrowd': r.iscrowd})
  # A void strip at the bottom (unlabelled pixels).
  seg[-2:] = 0
  noise = rng.integers(-6, 7, size=image.shape)
  image = np.clip(image.astype(np.int32) + noise, 0, 255).astype(np.uint8)
  for info in infos:
    mask = seg == info['id']
    ys, xs = np.nonzero(mask)
    info['area'] = int(mask.sum())
    info['bbox'] = ([int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                     int(ys.max() - ys.min() + 1)] if ys.size else [0, 0, 0, 0])
  infos = [i for i in infos if i['area'] > 0]
  return image, seg.astype(np.int32), infos


def _random_rects(rng, height, width, num, used, crowd):
  rects = []
  cell = width // max(num, 1)
  for k in range(num):
    h = int(rng.integers(height // 5, height // 3))
    w = int(rng.integers(max(cell // 2, 2), max(cell - 2, 3)))
    y0 = int(rng.integers(1, height - h - 3))
    x0 = k * cell + 1
    cat = 1 if k % 2 == 0 else 3
    rects.append(Rect(y0, y0 + h, x0, min(x0 + w, width - 1), cat,
                      int(crowd and k == num - 1 and cat == 1), _segment_id(rng, used)))
  return rects


def write_coco_folder(root, split: str = 'train', *, num_images: int = 4,
                      size: tuple[int, int] = (48, 64), seed: int = 0,
                      image_format: str = 'jpg', first_image_id: int = 1,
                      num_rects: int = 3, crowd: bool = True,
                      vary_size: bool = False) -> CocoFolder:
  """Writes root/<split>/images, root/<split>/panoptic and root/<split>.json.

  Args:
    root: output folder.
    split: a name for the sub-folders and the JSON.
    num_images: images to write, with ids first_image_id, first_image_id + 1, ...
    size: (height, width) of every image (vary_size=False).
    seed: fixes colours' noise, rectangles and segment ids.
    image_format: 'jpg' or 'png'.
    first_image_id: the first COCO image id.
    num_rects: things per image (persons and cars alternating); the last person is a crowd
      when `crowd`.
    crowd: whether to include a crowd region.
    vary_size: give image k the size (h + 4k, w - 2k).

  Returns:
    A CocoFolder with the paths and the rectangles of each image.
  """
  rng = np.random.default_rng(seed)
  root = pathlib.Path(root)
  image_dir = root / split / 'images'
  png_dir = root / split / 'panoptic'
  image_dir.mkdir(parents=True, exist_ok=True)
  png_dir.mkdir(parents=True, exist_ok=True)
  images, annotations, ids, all_rects, sizes = [], [], [], {}, {}
  for k in range(num_images):
    image_id = first_image_id + k
    h, w = size
    if vary_size:
      h, w = h + 4 * k, w - 2 * k
    used: set = set()
    stuff = (_segment_id(rng, used), _segment_id(rng, used))
    rects = _random_rects(rng, h, w, num_rects, used, crowd)
    image, seg, infos = draw_image(h, w, rects, rng, stuff)
    stem = f'{image_id:012d}'
    name = f'{stem}.{image_format}'
    if image_format == 'jpg':
      Image.fromarray(image).save(image_dir / name, quality=95)
    else:
      Image.fromarray(image).save(image_dir / name)
    Image.fromarray(coco_format.id2rgb(seg)).save(png_dir / f'{stem}.png')
    images.append({'id': image_id, 'file_name': name, 'height': h, 'width': w})
    annotations.append({'image_id': image_id, 'file_name': f'{stem}.png',
                        'segments_info': infos})
    ids.append(image_id)
    all_rects[image_id] = rects
    sizes[image_id] = (h, w)
  json_path = root / f'{split}.json'
  json_path.write_text(json.dumps({'images': images, 'annotations': annotations,
                                   'categories': [dict(c) for c in CATEGORIES]}))
  return CocoFolder(json_path, image_dir, png_dir, ids, all_rects, sizes)


def read_json(path) -> dict:
  return json.loads(pathlib.Path(path).read_text())


def write_json(path, data) -> None:
  pathlib.Path(path).write_text(json.dumps(data))


# ---------------------------------------------------------------------------------------------
# DAVIS.

# Object colours in DAVIS frames (id -> RGB); the background is dark green.
DAVIS_COLOURS = {1: (230, 30, 30), 2: (30, 30, 230), 3: (240, 240, 40), 4: (240, 40, 240)}
DAVIS_BACKGROUND = (20, 90, 20)


@dataclasses.dataclass
class DavisVideo:
  name: str
  num_frames: int
  num_objects: int = 2
  void_square: bool = False       # paint a 255 (void) square in every frame
  object_255: bool = False        # one object carries annotation value 255 ('tennis' quirk)


def davis_frames(video: DavisVideo, size: tuple[int, int], seed: int):
  """Frames uint8 [T, h, w, 3] and annotations uint8 [T, h, w] of one generated video."""
  rng = np.random.default_rng(seed)
  h, w = size
  starts = [(int(rng.integers(1, h // 2)), int(rng.integers(1, w // 2)))
            for _ in range(video.num_objects)]
  side = max(min(h, w) // 4, 3)
  frames = np.zeros((video.num_frames, h, w, 3), np.uint8)
  ann = np.zeros((video.num_frames, h, w), np.uint8)
  for t in range(video.num_frames):
    frames[t] = DAVIS_BACKGROUND
    for k, (y, x) in enumerate(starts):
      obj = k + 1
      y0, x0 = min(y + t, h - side), min(x + t, w - side)
      frames[t, y0:y0 + side, x0:x0 + side] = DAVIS_COLOURS[obj]
      value = 255 if (video.object_255 and obj == video.num_objects) else obj
      ann[t, y0:y0 + side, x0:x0 + side] = value
    if video.void_square:
      ann[t, h - 4:h - 1, 1:4] = 255
  return frames, ann


def write_davis_folder(root, videos: dict[str, list[DavisVideo]], *,
                       size: tuple[int, int] = (24, 40), seed: int = 0,
                       annotations: str = 'Annotations_unsupervised') -> pathlib.Path:
  """Writes a DAVIS root: JPEGImages/480p, <annotations>/480p, ImageSets/2017/<split>.txt.

  Args:
    root: output folder.
    videos: split name ('train', 'val') -> videos of that split.
    size: (height, width) of every frame.
    seed: fixes the squares' starting positions.
    annotations: 'Annotations_unsupervised' or 'Annotations'.

  Returns:
    The root path.
  """
  root = pathlib.Path(root)
  for split, vids in videos.items():
    for v_index, video in enumerate(vids):
      frames, ann = davis_frames(video, size, seed + 1000 * v_index + len(video.name))
      frame_dir = root / 'JPEGImages' / '480p' / video.name
      frame_dir.mkdir(parents=True, exist_ok=True)
      for t in range(video.num_frames):
        Image.fromarray(frames[t]).save(frame_dir / f'{t:05d}.jpg', quality=95)
      davis_format.write_davis_groundtruth(root, video.name, ann, split=split,
                                           annotations=annotations)
  return root


# ---------------------------------------------------------------------------------------------
# TFDS: metadata of prepared data sets and consistent mock examples.


def coco_tfds_example(image_id: int, size=(48, 64), seed: int = 0) -> tuple[dict, list[Rect]]:
  """One `coco/2017_panoptic` feature dict (images as arrays) and its rectangles.

  TFDS labels index the COCO panoptic categories (0 = person, 2 = car, 149 ... ): the sky band
  gets 'sky-other-merged', the road band 'road', rectangles 'person' / 'car'.
  """
  from pix2seq_d_jax.data import coco  # pylint: disable=g-import-not-at-top
  label_of = {c['id']: k for k, c in enumerate(coco.COCO_PANOPTIC_CATEGORIES)}
  coco_ids = {1: 1, 3: 3, 7: 149, 23: 187}      # fixture category -> COCO panoptic id
  rng = np.random.default_rng(seed + image_id)
  h, w = size
  used: set = set()
  stuff = (_segment_id(rng, used), _segment_id(rng, used))
  rects = _random_rects(rng, h, w, 3, used, crowd=True)
  image, seg, infos = draw_image(h, w, rects, rng, stuff)
  objects = {'id': [], 'area': [], 'bbox': [], 'label': [], 'is_crowd': []}
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  for info in infos:
    x, y, bw, bh = info['bbox']
    objects['id'].append(info['id'])
    objects['area'].append(info['area'])
    objects['bbox'].append(tfds.features.BBox(y / h, x / w, (y + bh) / h, (x + bw) / w))
    objects['label'].append(label_of[coco_ids[info['category_id']]])
    objects['is_crowd'].append(bool(info['iscrowd']))
  return {'image': image, 'image/filename': f'{image_id:012d}.jpg', 'image/id': image_id,
          'panoptic_image': coco_format.id2rgb(seg),
          'panoptic_image/filename': f'{image_id:012d}.png',
          'panoptic_objects': objects}, rects


def davis_tfds_example(video: DavisVideo, size=(24, 40), seed: int = 0) -> dict:
  frames, ann = davis_frames(video, size, seed)
  return {'video': {'frames': list(frames), 'segmentations': list(ann[..., None])},
          'metadata': {'num_frames': video.num_frames, 'video_name': video.name}}


def write_tfds_metadata(data_dir, name: str, split_sizes: dict[str, int],
                        label_names: list[str] | None = None) -> pathlib.Path:
  """Writes dataset_info.json (+ feature files) as a prepared TFDS data set has them."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import naming  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import splits as splits_lib  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=str(data_dir))
  template = naming.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=builder.name,
                                        filetype_suffix='tfrecord')
  builder.info.set_splits(splits_lib.SplitDict([
      splits_lib.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=template)
      for s, n in split_sizes.items()]))
  if label_names is not None:
    builder.info.features['panoptic_objects']['label'].names = label_names
  pathlib.Path(builder.data_dir).mkdir(parents=True, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)
  return pathlib.Path(builder.data_dir)


def mock_tfds(data_dir, examples: dict[str, list[dict]]):
  """`tfds.testing.mock_data` serving `examples[split]` through the real (de)serialisation.

  Examples are serialised with the builder's features and parsed back with the caller's
  decoders (so SkipDecoding yields the encoded bytes); split slices (`tfds.even_splits`,
  'train[:2]') select the matching range.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  cache: dict = {}

  def as_dataset_fn(builder, split, decoders=None, read_config=None, shuffle_files=False,
                    **kwargs):
    del read_config, shuffle_files, kwargs
    instruction = (tfds.core.ReadInstruction.from_spec(split) if isinstance(split, str)
                   else split)
    (absolute,) = instruction.to_absolute(builder.info.splits)
    key = (builder.info.full_name, absolute.splitname)
    if key not in cache:
      cache[key] = [builder.info.features.serialize_example(ex)
                    for ex in examples[absolute.splitname]]
    records = cache[key][absolute.from_:absolute.to]
    features = builder.info.features
    if isinstance(decoders, tfds.decode.PartialDecoding):   # as TFDS's reader does
      features = decoders.extract_features(features)
      decoders = decoders.decoders
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(records, tf.string))
    return ds.map(lambda s: features.deserialize_example(s, decoders=decoders))

  return tfds.testing.mock_data(as_dataset_fn=as_dataset_fn, data_dir=str(data_dir))


def write_png_header_only(path, width: int, height: int) -> None:
  """A PNG whose header declares width x height RGB pixels but holds only a few: enough for a
  reader that checks the size first (PIL's decompression-bomb limit) without writing gigabytes."""
  import struct  # pylint: disable=g-import-not-at-top
  import zlib  # pylint: disable=g-import-not-at-top

  def chunk(kind, body):
    return (struct.pack('>I', len(body)) + kind + body
            + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF))
  ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  pathlib.Path(path).write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr)
                                 + chunk(b'IDAT', zlib.compress(b'\0' * 64))
                                 + chunk(b'IEND', b''))
