"""TFDS `coco/2017_panoptic` as a sequential source (splits 'train' and 'validation').

Prepare the data once (`tfds build coco/2017_panoptic`, ~40 GB of downloads) and point
`config.dataset.tfds_data_dir` at the TFDS folder ('' = the TFDS default). Examples are read in
TFRecord order: training reads this process's share of the split (`tfds.even_splits` by process),
with the files shuffled by `ReadConfig(shuffle_seed=...)` and a seeded shuffle buffer of
`config.dataset.shuffle_buffer` records, so a run's order is fixed by the config seed (and the
pipeline resumes by skipping records before decoding them); evaluation reads the validation
split in file order.

Records are kept encoded (`SkipDecoding`) until `decode_fn` turns them into examples:
  image: the JPEG, decoded to uint8 [H, W, 3];
  label: int32 [H, W, 3]: class = panoptic_objects/label + 1 (TFDS labels 0..132 are the COCO
    panoptic categories in `categories` order), provisional id = position in panoptic_objects
    + 1, crowd = is_crowd; PNG pixels whose id is not listed are void;
  id: image/id (the COCO image id).
"""

from __future__ import annotations

import tensorflow as tf

from pix2seq_d_jax.data import folder
from pix2seq_d_jax.data import sources

TFDS_NAME = 'coco/2017_panoptic'

# The 133 COCO panoptic categories (panopticapi's panoptic_coco_categories.json order, which is
# TFDS's label order): 80 things, then 53 stuff. (COCO id, name).
_THINGS = (
    (1, 'person'), (2, 'bicycle'), (3, 'car'), (4, 'motorcycle'), (5, 'airplane'), (6, 'bus'),
    (7, 'train'), (8, 'truck'), (9, 'boat'), (10, 'traffic light'), (11, 'fire hydrant'),
    (13, 'stop sign'), (14, 'parking meter'), (15, 'bench'), (16, 'bird'), (17, 'cat'),
    (18, 'dog'), (19, 'horse'), (20, 'sheep'), (21, 'cow'), (22, 'elephant'), (23, 'bear'),
    (24, 'zebra'), (25, 'giraffe'), (27, 'backpack'), (28, 'umbrella'), (31, 'handbag'),
    (32, 'tie'), (33, 'suitcase'), (34, 'frisbee'), (35, 'skis'), (36, 'snowboard'),
    (37, 'sports ball'), (38, 'kite'), (39, 'baseball bat'), (40, 'baseball glove'),
    (41, 'skateboard'), (42, 'surfboard'), (43, 'tennis racket'), (44, 'bottle'),
    (46, 'wine glass'), (47, 'cup'), (48, 'fork'), (49, 'knife'), (50, 'spoon'), (51, 'bowl'),
    (52, 'banana'), (53, 'apple'), (54, 'sandwich'), (55, 'orange'), (56, 'broccoli'),
    (57, 'carrot'), (58, 'hot dog'), (59, 'pizza'), (60, 'donut'), (61, 'cake'), (62, 'chair'),
    (63, 'couch'), (64, 'potted plant'), (65, 'bed'), (67, 'dining table'), (70, 'toilet'),
    (72, 'tv'), (73, 'laptop'), (74, 'mouse'), (75, 'remote'), (76, 'keyboard'),
    (77, 'cell phone'), (78, 'microwave'), (79, 'oven'), (80, 'toaster'), (81, 'sink'),
    (82, 'refrigerator'), (84, 'book'), (85, 'clock'), (86, 'vase'), (87, 'scissors'),
    (88, 'teddy bear'), (89, 'hair drier'), (90, 'toothbrush'),
)
_STUFF = (
    (92, 'banner'), (93, 'blanket'), (95, 'bridge'), (100, 'cardboard'), (107, 'counter'),
    (109, 'curtain'), (112, 'door-stuff'), (118, 'floor-wood'), (119, 'flower'), (122, 'fruit'),
    (125, 'gravel'), (128, 'house'), (130, 'light'), (133, 'mirror-stuff'), (138, 'net'),
    (141, 'pillow'), (144, 'platform'), (145, 'playingfield'), (147, 'railroad'), (148, 'river'),
    (149, 'road'), (151, 'roof'), (154, 'sand'), (155, 'sea'), (156, 'shelf'), (159, 'snow'),
    (161, 'stairs'), (166, 'tent'), (168, 'towel'), (171, 'wall-brick'), (175, 'wall-stone'),
    (176, 'wall-tile'), (177, 'wall-wood'), (178, 'water-other'), (180, 'window-blind'),
    (181, 'window-other'), (184, 'tree-merged'), (185, 'fence-merged'), (186, 'ceiling-merged'),
    (187, 'sky-other-merged'), (188, 'cabinet-merged'), (189, 'table-merged'),
    (190, 'floor-other-merged'), (191, 'pavement-merged'), (192, 'mountain-merged'),
    (193, 'grass-merged'), (194, 'dirt-merged'), (195, 'paper-merged'),
    (196, 'food-other-merged'), (197, 'building-other-merged'), (198, 'rock-merged'),
    (199, 'wall-other-merged'), (200, 'rug-merged'),
)
COCO_PANOPTIC_CATEGORIES = tuple(
    [{'id': i, 'name': n, 'isthing': 1} for i, n in _THINGS]
    + [{'id': i, 'name': n, 'isthing': 0} for i, n in _STUFF])
assert len(COCO_PANOPTIC_CATEGORIES) == 133


def categories_for_labels(label_names: list[str]) -> list[dict]:
  """The category of each TFDS label, in label order.

  A prepared dataset names its labels (the panoptic JSON's category names); an unprepared
  builder only numbers them ('0', '1', ...), and then the panopticapi order applies.
  """
  by_name = {c['name']: c for c in COCO_PANOPTIC_CATEGORIES}
  if all(name.isdigit() for name in label_names):
    return [dict(c) for c in COCO_PANOPTIC_CATEGORIES]
  unknown = [n for n in label_names if n not in by_name]
  if unknown or len(label_names) != len(by_name):
    raise ValueError(f'{TFDS_NAME}: the TFDS label names do not match the 133 COCO panoptic '
                     f'categories (unknown: {unknown[:5]}); rebuild the dataset with '
                     '`tfds build coco/2017_panoptic`')
  return [dict(by_name[n]) for n in label_names]


def _builder(dataset_config):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.builder(TFDS_NAME, data_dir=dataset_config.tfds_data_dir or None)


def split_size(builder, split: str, name: str) -> int:
  """Examples in a prepared TFDS split, with an error that says how to prepare it."""
  if split not in builder.info.splits:
    raise ValueError(f'{name}: TFDS {builder.info.full_name} has no split {split!r} in '
                     f'{builder.data_dir}; prepare it with `tfds build {TFDS_NAME}` or set '
                     '--config.dataset.tfds_data_dir to the folder that holds it')
  return builder.info.splits[split].num_examples


class CocoPanopticTfds(sources.Source):
  """TFDS `coco/2017_panoptic` (module docstring). Config keys: dataset.tfds_data_dir,
  dataset.shuffle_buffer, dataset.num_classes (134)."""
  random_access = False
  is_video = False

  def __init__(self, dataset_config):
    self.config = dataset_config
    self.builder = _builder(dataset_config)
    names = self.builder.info.features['panoptic_objects']['label'].names
    self.categories = categories_for_labels(list(names))
    if dataset_config.num_classes != len(self.categories) + 1:
      raise ValueError(f'config.dataset.num_classes={dataset_config.num_classes}, but '
                       f'{TFDS_NAME} has {len(self.categories)} categories: set '
                       f'--config.dataset.num_classes={len(self.categories) + 1}')

  def num_examples(self, split: str) -> int:
    split = sources.check_split(split, self.config.name)
    return split_size(self.builder, split, self.config.name)

  def stream(self, split, *, shard_index, shard_count, seed):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    split = sources.check_split(split, self.config.name)
    self.num_examples(split)
    spec = split if shard_count == 1 else tfds.even_splits(split, n=shard_count)[shard_index]
    read_config = tfds.ReadConfig(shuffle_seed=seed, add_tfds_id=False)
    skip = tfds.decode.SkipDecoding()
    ds = self.builder.as_dataset(
        split=spec, shuffle_files=seed is not None, read_config=read_config,
        decoders={'image': skip, 'panoptic_image': skip})
    ds = ds.map(lambda ex: {'image': ex['image'], 'panoptic_image': ex['panoptic_image'],
                            'objects': ex['panoptic_objects'], 'id': ex['image/id']})
    if seed is not None:
      ds = ds.shuffle(self.config.shuffle_buffer, seed=seed + shard_index,
                      reshuffle_each_iteration=True)
    return ds

  def decode_fn(self, split):
    name = f'{self.config.name} ({TFDS_NAME}, {sources.check_split(split, self.config.name)})'

    def decode(record):
      where = tf.strings.format('image {}', record['id'])
      image = folder.decode_image(record['image'], where, name)
      seg = folder.decode_panoptic_png(record['panoptic_image'], where, name)
      seg = folder.assert_same_size(image, seg, where, where, name,
                                    'the dataset is inconsistent; rebuild it')
      objects = record['objects']
      n = tf.shape(objects['id'])[0]
      values = tf.stack([tf.cast(objects['label'], tf.int32) + 1,
                         tf.range(1, n + 1, dtype=tf.int32),
                         tf.cast(objects['is_crowd'], tf.int32)], axis=1)
      keys = tf.cast(objects['id'], tf.int32)
      order = tf.argsort(keys, stable=True)
      keys = tf.concat([[0], tf.gather(keys, order)], 0)
      values = tf.concat([tf.zeros([1, 3], tf.int32), tf.gather(values, order)], 0)
      label = folder.lookup_segments(seg, keys, values)
      return {'image': image, 'label': label, 'id': tf.cast(record['id'], tf.int64)}

    return decode
