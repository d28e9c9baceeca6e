"""Real-data sources through the tf.data pipeline: COCO-panoptic folders, TFDS COCO panoptic
(mock), DAVIS folders and TFDS DAVIS (mock); exact resume; one end-to-end training run."""

import json
import os
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

import data_fixtures as fx  # noqa: E402
from pix2seq_d_jax import config_lib  # noqa: E402
from pix2seq_d_jax import data  # noqa: E402
from pix2seq_d_jax.data import coco  # noqa: E402
from pix2seq_d_jax.data import davis  # noqa: E402
from pix2seq_d_jax.data import folder  # noqa: E402
from pix2seq_d_jax.data import pipeline  # noqa: E402
from pix2seq_d_jax.formats import coco_format  # noqa: E402

ROOT = fx.ROOT
# Geometry that keeps source pixels where they are: no jitter, no flip, no colour change.
PLAIN = ['dataset.flip_prob=0.0', 'dataset.min_scale=1.0', 'dataset.max_scale=1.0',
         'dataset.color_jitter=0.0']


def load(spec: str, overrides):
  """A locked config from configs/<spec> with `key=value` overrides."""
  return config_lib.load_config(str(ROOT / 'configs' / spec), list(overrides))


def batches(ds, n: int) -> list[dict]:
  it = pipeline.as_numpy(ds)
  return [next(it) for _ in range(n)]


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def inside(rect: fx.Rect) -> tuple[int, int]:
  """A pixel well inside a rectangle: (row, column)."""
  return (rect.y0 + rect.y1) // 2, (rect.x0 + rect.x1) // 2


@pytest.fixture(scope='module')
def coco_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('coco')
  train = fx.write_coco_folder(root, 'train', num_images=5)
  val = fx.write_coco_folder(root, 'val', num_images=3, first_image_id=100, seed=3,
                             vary_size=True, image_format='png')
  return train, val


def folder_config(coco_folder, *extra):
  train, val = coco_folder
  return load('coco_panoptic.py:runlocal', [
      'dataset.name=coco_panoptic_folder', 'dataset.num_classes=5', 'train.batch_size=4',
      'dataset.max_original_size=(64, 64)', *train.overrides('train'), *val.overrides('eval'),
      *extra])


# ---------------------------------------------------------------------------------------------
# Training order.


@pytest.mark.parametrize('start_step,process_index,process_count', [(0, 0, 1), (3, 0, 1),
                                                                     (2, 1, 2), (5, 0, 4)])
def test_train_positions_follow_each_epochs_permutation(start_step, process_index,
                                                        process_count):
  """Position p = step * G + process_index * G / P + j visits example perm(seed, p // n)[p % n];
  with n = 5 and G = 4 steps straddle epochs."""
  n, seed, global_batch = 5, 3, 4
  local = global_batch // process_count
  ds = pipeline.train_positions(n, seed, start_step, global_batch, process_index, process_count)
  got = [(int(i), int(p)) for i, p in ds.take(6 * local).as_numpy_iterator()]
  want = []
  for step in range(start_step, start_step + 6):
    for j in range(local):
      p = step * global_batch + process_index * local + j
      want.append((int(np.random.default_rng([seed, p // n]).permutation(n)[p % n]), p))
  assert got == want
  # Every epoch visits each example once.
  epoch_of = {}
  for i, p in got:
    epoch_of.setdefault(p // n, []).append(i)
  for epoch, seen in epoch_of.items():
    assert len(set(seen)) == len(seen), epoch


# ---------------------------------------------------------------------------------------------
# COCO-panoptic folder.


def test_folder_train_batches_show_the_painted_segments(coco_folder):
  train, _ = coco_folder
  config = folder_config(coco_folder, *PLAIN)
  source = data.get_source(config.dataset)
  assert source.random_access and not source.is_video
  assert [c['id'] for c in source.categories] == [1, 3, 7, 23]
  assert source.num_examples('train') == 5
  (batch,) = batches(pipeline.train_dataset(config, source), 1)
  assert batch['image'].dtype == np.float32 and batch['image'].shape == (4, 64, 64, 3)
  assert batch['masks'].dtype == np.int32 and batch['masks'].shape == (4, 32, 32, 2)
  assert batch['id'].dtype == np.int64 and batch['dropped_segments'].shape == (4,)
  for image, masks, image_id in zip(batch['image'], batch['masks'], batch['id']):
    # 48x64 images fit the 64x64 canvas unscaled; mask pixel (i, j) is canvas (2i+1, 2j+1).
    ids_seen = set()
    for rect in train.rects[int(image_id)]:
      y, x = inside(rect)
      cls, seg = masks[y // 2, x // 2]
      colour = fx.CROWD_COLOUR if rect.iscrowd else fx.COLOURS[rect.category_id]
      np.testing.assert_allclose(image[y, x] * 255, colour, atol=40)
      if rect.iscrowd:
        assert (cls, seg) == (0, 0)          # crowd regions train as void
      else:
        assert cls == {1: fx.PERSON, 3: fx.CAR}[rect.category_id] and seg > 0
        ids_seen.add(int(seg))
    assert len(ids_seen) == sum(not r.iscrowd for r in train.rects[int(image_id)])
    assert masks[1, 31, 0] == fx.SKY and masks[22, 31, 0] == fx.ROAD
    np.testing.assert_array_equal(masks[24:], 0)            # padding rows are void
    np.testing.assert_allclose(image[48:], 0.3)
    assert masks[..., 1].max() < config.dataset.max_instances


def test_folder_eval_batches_resume_and_process_shards(coco_folder):
  _, val = coco_folder
  config = folder_config(coco_folder)
  source = data.get_source(config.dataset)
  ds, num = pipeline.eval_dataset(config, source)
  got = list(pipeline.as_numpy(ds))
  assert num == 2 and len(got) == 2
  assert got[0]['label_orig'].shape == (2, 64, 64, 3) and got[0]['image'].shape == (2, 64, 64, 3)
  assert got[1]['valid'].tolist() == [True, False]
  assert [int(i) for b in got for i, v in zip(b['id'], b['valid']) if v] == [100, 101, 102]
  for b in got:
    for label, size, image_id, valid in zip(b['label_orig'], b['orig_size'], b['id'], b['valid']):
      if not valid:
        continue
      assert tuple(size) == val.sizes[int(image_id)]
      for rect in val.rects[int(image_id)]:
        y, x = inside(rect)
        assert label[y, x, 2] == rect.iscrowd and label[y, x, 0] in (fx.PERSON, fx.CAR)
      np.testing.assert_array_equal(label[size[0]:], 0)

  # Exact resume: the batches from step 2 equal those of an uninterrupted run.
  full = batches(pipeline.train_dataset(config, source), 4)
  assert_batches_equal(full[2:], batches(pipeline.train_dataset(config, source, start_step=2), 2))
  # Two processes read the two halves of the same global batches.
  halves = [batches(pipeline.train_dataset(config, source, start_step=1, process_index=p,
                                           process_count=2), 1)[0] for p in range(2)]
  for key in ('image', 'masks', 'id'):
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), full[1][key])


def test_cityscapes_files_from_csCreatePanopticImgs(tmp_path):
  """The recipe of configs/cityscapes_panoptic.py, run on two generated frames."""
  from cityscapesscripts.preparation import createPanopticImgs  # pylint: disable=g-import-not-at-top
  gt = tmp_path / 'gtFine' / 'val' / 'frankfurt'
  left = tmp_path / 'leftImg8bit' / 'val' / 'frankfurt'
  gt.mkdir(parents=True)
  left.mkdir(parents=True)
  # Cityscapes instance ids: label id (stuff), label id * 1000 + k (things), label id alone on
  # a thing class = crowd. 7 road, 23 sky, 26 car, 24 person, 0 unlabelled (ignored).
  ids = np.full((16, 24), 23, np.uint16)
  ids[8:] = 7
  ids[2:6, 2:8] = 26000
  ids[9:14, 10:16] = 26001
  ids[3:7, 14:20] = 24
  ids[15] = 0
  for k in range(2):
    name = f'frankfurt_000000_00000{k}'
    Image.fromarray(ids).save(gt / f'{name}_gtFine_instanceIds.png')
    Image.fromarray(np.full((16, 24, 3), 60 + k, np.uint8)).save(left / f'{name}_leftImg8bit.png')
  createPanopticImgs.convert2panoptic(str(tmp_path / 'gtFine'), str(tmp_path), True, ['val'])
  config = load('cityscapes_panoptic.py:runlocal', [
      f'dataset.eval_json={tmp_path}/cityscapes_panoptic_val_trainId.json',
      f'dataset.eval_image_dir={tmp_path}/leftImg8bit/val',
      f'dataset.eval_panoptic_dir={tmp_path}/cityscapes_panoptic_val_trainId'])
  source = data.get_source(config.dataset)
  cats = source.categories
  assert len(cats) == 19 and sum(c['isthing'] for c in cats) == 8 and cats[0]['name'] == 'road'
  cls = {c['name']: k + 1 for k, c in enumerate(cats)}
  example = source.example_fn('validation')(tf.constant(1, tf.int64))
  assert int(example['id']) == folder.stable_ids(['frankfurt_000000_000001'])[0]
  assert example['image'].numpy()[0, 0].tolist() == [61, 61, 61]
  label = example['label'].numpy()
  assert label[0, 0, 0] == cls['sky'] and label[12, 2, 0] == cls['road']
  assert label[3, 3, 0] == cls['car'] and label[10, 11, 0] == cls['car']
  assert label[3, 3, 1] != label[10, 11, 1] and label[3, 3, 2] == 0
  assert label[4, 15].tolist()[0::2] == [cls['person'], 1]      # a crowd region
  assert label[15].max() == 0                                    # unlabelled -> void


# ---------------------------------------------------------------------------------------------
# TFDS coco/2017_panoptic (mock data with consistent examples).


@pytest.fixture(scope='module')
def coco_tfds(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  examples = {split: [fx.coco_tfds_example(first + k, seed=k) for k in range(n)]
              for split, first, n in (('train', 1, 6), ('validation', 500, 3))}
  names = [c['name'] for c in coco.COCO_PANOPTIC_CATEGORIES]
  fx.write_tfds_metadata(data_dir, coco.TFDS_NAME, {'train': 6, 'validation': 3}, names)
  features = {s: [e for e, _ in v] for s, v in examples.items()}
  rects = {e['image/id']: r for v in examples.values() for e, r in v}
  return data_dir, features, rects


def test_coco_tfds_source_batches_resume_and_eval_order(coco_tfds):
  data_dir, features, rects = coco_tfds
  config = load('coco_panoptic.py:runlocal', [
      f'dataset.tfds_data_dir={data_dir}', 'train.batch_size=2', 'dataset.shuffle_buffer=4',
      'dataset.max_original_size=(48, 64)', *PLAIN])
  label_of = {c['id']: k + 1 for k, c in enumerate(coco.COCO_PANOPTIC_CATEGORIES)}
  with fx.mock_tfds(data_dir, features):
    source = data.get_source(config.dataset)
    assert not source.random_access and len(source.categories) == 133
    assert source.categories[0] == {'id': 1, 'name': 'person', 'isthing': 1}
    assert source.categories[80]['isthing'] == 0 and source.num_examples('train') == 6
    full = batches(pipeline.train_dataset(config, source), 5)
    resumed = batches(pipeline.train_dataset(config, source, start_step=3), 2)
    ds, num = pipeline.eval_dataset(config, source)
    evals = list(pipeline.as_numpy(ds))
    shards = [list(pipeline.as_numpy(pipeline.eval_dataset(config, source, process_index=p,
                                                           process_count=2)[0]))
              for p in range(2)]
  assert_batches_equal(full[3:], resumed)
  first_epoch = sorted(int(i) for b in full[:3] for i in b['id'])
  assert first_epoch == [1, 2, 3, 4, 5, 6]        # a shuffled epoch sees every example once
  assert [int(i) for b in full[:3] for i in b['id']] != first_epoch
  batch = full[0]
  assert batch['image'].shape == (2, 64, 64, 3) and batch['masks'].shape == (2, 32, 32, 2)
  for image, masks, image_id in zip(batch['image'], batch['masks'], batch['id']):
    for rect in rects[int(image_id)]:
      if rect.iscrowd:
        continue
      y, x = inside(rect)     # 48x64 images are not rescaled on the 64x64 canvas
      assert masks[y // 2, x // 2, 0] == label_of[rect.category_id]
      np.testing.assert_allclose(image[y, x] * 255, fx.COLOURS[rect.category_id], atol=40)
    assert masks[1, 31, 0] == label_of[187]       # sky-other-merged
  assert num == 2
  assert [int(i) for b in evals for i, v in zip(b['id'], b['valid']) if v] == [500, 501, 502]
  assert evals[1]['valid'].tolist() == [True, False]
  assert evals[0]['label_orig'].shape == (2, 48, 64, 3)
  # Two processes: process p holds slot p of each global batch, in order.
  for p in range(2):
    assert [int(b['id'][0]) for b in shards[p]] == [[500, 502], [501, 500]][p]
    assert [bool(b['valid'][0]) for b in shards[p]] == [[True, True], [True, False]][p]


# ---------------------------------------------------------------------------------------------
# DAVIS folder and TFDS davis/480p.


DAVIS_VIDEOS = {'train': [fx.DavisVideo('bear', 5, void_square=True),
                          fx.DavisVideo('tennis', 4, object_255=True)],
                'val': [fx.DavisVideo('cows', 6, 3), fx.DavisVideo('dog', 4, 2)]}


def _object_ids(masks: np.ndarray, frames_ann: np.ndarray) -> dict[int, int]:
  """{DAVIS object id: id in the mask} at each object's square (mask = ann downscaled 2x)."""
  out = {}
  h, w = frames_ann.shape
  for obj in np.unique(frames_ann):
    if obj in (0, 255):
      continue
    ys, xs = np.nonzero(frames_ann == obj)
    y, x = int(ys.mean() * 64 / 24), int(xs.mean() * 64 / 24)   # source -> canvas (scale 8/3)
    out[int(obj)] = int(masks[y // 2, x // 2, 1])
  return out


def test_davis_folder_windows_whole_videos_and_labels(tmp_path):
  root = fx.write_davis_folder(tmp_path, DAVIS_VIDEOS)
  config = load('davis_video.py:runlocal', [f'dataset.root={root}', 'eval.batch_size=2',
                                            *PLAIN])
  source = data.get_source(config.dataset)
  assert source.is_video and source.categories == [{'id': 1, 'name': 'object', 'isthing': 1}]
  assert source.num_examples('train') == 3 + 2 and source.num_examples('validation') == 2
  (batch,) = batches(pipeline.train_dataset(config, source), 1)
  assert batch['image'].shape == (2, 64, 128, 3) and batch['masks'].shape == (2, 32, 64, 2)
  assert batch['cond_masks'].shape == (2, 2, 32, 64, 2) and batch['cond_masks'].dtype == np.int32
  # The annotations write_davis_folder wrote (its seed for video k of a split).
  videos = {v.name: fx.davis_frames(v, (24, 40), 1000 * k + len(v.name))[1]
            for split in DAVIS_VIDEOS.values() for k, v in enumerate(split)}
  for b in range(2):
    video_id, start = divmod(int(batch['id'][b]), 1000)
    name = [n for n in videos if davis.video_id([n])[0] == video_id][0]
    ann = videos[name][start:start + 3]
    target = _object_ids(batch['masks'][b], ann[2])
    assert target and all(v > 0 for v in target.values())
    for t in range(2):    # one id permutation for the whole clip
      assert _object_ids(batch['cond_masks'][b, t], ann[t]) == target
    assert set(np.unique(batch['masks'][b, ..., 0])) <= {0, 1}

  example = source.example_fn('train')(tf.constant(3, tf.int64))   # 'tennis', first window
  label = example['label'].numpy()
  assert example['image'].shape == (3, 24, 40, 3)
  ann = videos['tennis'][0]
  np.testing.assert_array_equal(label[0, ..., 1][ann == 255], 2)   # 255 relabelled to max + 1
  assert label[0, ..., 2].max() == 0
  bear = source.example_fn('train')(tf.constant(0, tf.int64))['label'].numpy()
  void = videos['bear'][0] == 255
  assert (bear[0, ..., 2][void] == 1).all() and (bear[0, ..., :2][void] == 0).all()

  ds, num = pipeline.eval_dataset(config, source)
  (ev,) = list(pipeline.as_numpy(ds))
  assert num == 1 and ev['num_frames'].tolist() == [6, 4]          # 'cows', 'dog'
  assert ev['image'].shape == (2, 6, 64, 128, 3) and ev['label_orig'].shape == (2, 6, 64, 128, 3)
  np.testing.assert_array_equal(ev['label_orig'][1, 4:], 0)        # padded frames
  np.testing.assert_array_equal(ev['label_orig'][0, :, :24, :40, 1],
                                videos['cows'].astype(np.int32))


def test_davis_tfds_source_through_the_pipeline(tmp_path):
  examples = {'train': [fx.davis_tfds_example(v, seed=k) for k, v in
                        enumerate(DAVIS_VIDEOS['train'])],
              'validation': [fx.davis_tfds_example(v, seed=k) for k, v in
                             enumerate(DAVIS_VIDEOS['val'])]}
  fx.write_tfds_metadata(tmp_path, davis.TFDS_NAME, {'train': 2, 'validation': 2})
  config = load('davis_video.py:runlocal', ['dataset.name=davis_tfds', 'dataset.shuffle_buffer=8',
                                            f'dataset.tfds_data_dir={tmp_path}', *PLAIN])
  with fx.mock_tfds(tmp_path, examples):
    source = data.get_source(config.dataset)
    assert not source.random_access and source.num_examples('train') == 3 + 2
    full = batches(pipeline.train_dataset(config, source), 3)
    resumed = batches(pipeline.train_dataset(config, source, start_step=1), 2)
    evals = list(pipeline.as_numpy(pipeline.eval_dataset(config, source)[0]))
    decode = source.decode_fn('train')
    windows = list(source.stream('train', shard_index=0, shard_count=1, seed=None))
  assert_batches_equal(full[1:], resumed)
  assert full[0]['cond_masks'].shape == (2, 2, 32, 64, 2) and full[0]['masks'].max() > 0
  assert len(evals) == 2 and evals[0]['num_frames'].tolist() == [6]
  assert evals[0]['image'].shape == (1, 6, 64, 128, 3)
  tennis = [w for w in windows if w['name'] == b'tennis'][0]
  label = decode(tennis)['label'].numpy()
  raw = tf.io.decode_png(tennis['segmentations'][0], channels=1).numpy()[..., 0]
  np.testing.assert_array_equal(label[0, ..., 1][raw == 255], 2)


# ---------------------------------------------------------------------------------------------
# End to end.


def test_main_trains_and_evaluates_on_a_coco_folder(coco_folder, tmp_path):
  train, val = coco_folder
  flags = [f'--config.{o}' for o in train.overrides('train') + val.overrides('eval')]
  workdir = tmp_path / 'work'
  cmd = [sys.executable, '-m', 'pix2seq_d_jax.main',
         '--config=configs/coco_panoptic.py:runlocal', f'--workdir={workdir}',
         '--config.dataset.name=coco_panoptic_folder', '--config.dataset.num_classes=5', *flags]
  # Unoptimised XLA code compiles in about half the CPU time; the run is two steps.
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_backend_optimization_level=0 '
         '--xla_llvm_disable_expensive_passes=true'}
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  step_dir = workdir / 'eval' / 'step_2'
  metrics = json.loads((step_dir / 'metrics.json').read_text())
  assert {'PQ', 'SQ', 'RQ', 'PQ_th', 'PQ_st'} <= set(metrics) and metrics['num_images'] == 3
  pred, pred_folder = coco_format.load_coco_panoptic(step_dir / 'predictions' / 'panoptic.json',
                                                     step_dir / 'predictions' / 'panoptic')
  assert sorted(a['image_id'] for a in pred['annotations']) == [100, 101, 102]
  cat_ids = [c['id'] for c in pred['categories']]
  assert cat_ids == [1, 3, 7, 23]
  for ann, seg in pred_folder:
    coco_format.index_segments(seg, ann['segments_info'], cat_ids, source='predictions',
                               image=pred_folder.describe(ann))
    assert seg.shape == val.sizes[ann['image_id']]
  gt, gt_folder = coco_format.load_coco_panoptic(step_dir / 'groundtruth' / 'panoptic.json',
                                                 step_dir / 'groundtruth' / 'panoptic')
  for ann, seg in gt_folder:
    info = coco_format.index_segments(seg, ann['segments_info'], cat_ids, source='groundtruth',
                                      image=gt_folder.describe(ann))
    assert len(info[0]) == 1 + 2 + 3        # void, sky, road, three things (one a crowd)


# ---------------------------------------------------------------------------------------------
# object_order='raster' through the pipeline (after the crop and flip).


def _first_appearance_order(ids: np.ndarray) -> list[int]:
  seen = []
  for v in ids.reshape(-1):
    if v and v not in seen:
      seen.append(int(v))
  return seen


@pytest.mark.parametrize('spec', ['shapes.py:runlocal', 'moving_shapes.py:runlocal'])
def test_raster_order_numbers_training_ids_by_first_pixel(spec):
  config = load(spec, ['dataset.object_order=raster', 'dataset.flip_prob=0.5'])
  source = data.get_source(config.dataset)
  for batch in batches(pipeline.train_dataset(config, source), 2):
    masks = batch['masks']
    if source.is_video:   # the condition frames come first in the scan, then the target
      masks = np.concatenate([batch['cond_masks'], masks[:, None]], axis=1)
    for example in masks:
      order = _first_appearance_order(example[..., 1])
      assert order == list(range(1, len(order) + 1)), order
      assert len(order) >= 2
  # The same batches with shuffled ids are not in that order (the check can fail).
  config = load(spec, ['dataset.object_order=shuffle', 'dataset.flip_prob=0.5'])
  masks = batches(pipeline.train_dataset(config, source), 1)[0]['masks']
  orders = [_first_appearance_order(m[..., 1]) for m in masks]
  assert any(o != list(range(1, len(o) + 1)) for o in orders)
