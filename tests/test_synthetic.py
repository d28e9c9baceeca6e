"""Tests of the embedded synthetic panoptic data (pix2seq_d_jax/data/synthetic.py)."""

import hashlib

import numpy as np
import pytest

from pix2seq_d_jax.data import synthetic

S = 64
NUM_IMAGES = 300
NUM_CLIPS = 40
NUM_FRAMES = 6
THINGS = np.array(synthetic.THING_CLASSES)
STUFF = np.array(synthetic.STUFF_CLASSES)
CLASS = {c['name']: i + 1 for i, c in enumerate(synthetic.SHAPES_CATEGORIES)}


@pytest.fixture(scope='module')
def train():
  return synthetic.generate_panoptic_split(0, 'train', NUM_IMAGES, S)


@pytest.fixture(scope='module')
def val():
  return synthetic.generate_panoptic_split(0, 'validation', NUM_IMAGES, S)


@pytest.fixture(scope='module')
def clips():
  return synthetic.generate_video_split(0, 'train', NUM_CLIPS, NUM_FRAMES, S)


def _segments(label):
  """(ids, classes, areas) of the non-void segments of one label map [..., 2]."""
  flat = label.reshape(-1, 2)
  ids, first, areas = np.unique(flat[:, 1], return_index=True, return_counts=True)
  keep = ids > 0
  return ids[keep], flat[first, 0][keep], areas[keep]


def _dilate(mask, steps):
  out = mask.copy()
  for _ in range(steps):
    m = out.copy()
    out[1:] |= m[:-1]
    out[:-1] |= m[1:]
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
  return out


def _erode(mask, steps):
  return ~_dilate(~mask, steps)


def _touching_things(ids, cls):
  """Whether two different thing segments of one label map are 4-adjacent."""
  thing = np.isin(cls, THINGS)
  h = thing[:, :-1] & thing[:, 1:] & (ids[:, :-1] != ids[:, 1:])
  v = thing[:-1] & thing[1:] & (ids[:-1] != ids[1:])
  return bool(h.any() or v.any())


def _check_label(label, max_ids):
  """Invariants of the label convention for one label map [..., 2] (an image or a clip)."""
  assert label.dtype == np.int32
  cls, ids = label[..., 0], label[..., 1]
  np.testing.assert_array_equal(cls == 0, ids == 0)
  assert cls.min() >= 0 and cls.max() <= synthetic.NUM_CATEGORIES
  pairs = np.unique(label.reshape(-1, 2), axis=0)
  pairs = pairs[pairs[:, 1] > 0]
  pairs = pairs[np.argsort(pairs[:, 1], kind='stable')]
  # One class per id, and ids contiguous 1..n.
  np.testing.assert_array_equal(pairs[:, 1], np.arange(1, len(pairs) + 1))
  assert 3 <= len(pairs) <= max_ids
  return pairs


# ----------------------------------------------------------------------------------------------
# Categories and constants.


def test_categories_are_coco_like():
  cats = synthetic.SHAPES_CATEGORIES
  assert [c['id'] for c in cats] == list(range(1, len(cats) + 1))
  assert len({c['name'] for c in cats}) == len(cats)
  for c in cats:
    assert set(c) == {'id', 'name', 'isthing', 'color'}
    assert c['isthing'] in (0, 1) and len(c['color']) == 3
    assert all(0 <= v <= 255 for v in c['color'])
  assert 3 <= len(synthetic.THING_CLASSES) <= 4
  assert len(synthetic.STUFF_CLASSES) >= 2
  assert synthetic.num_classes() == len(cats) + 1
  assert synthetic.max_segments() == synthetic.MAX_SEGMENTS == 7
  assert synthetic.min_segment_area(64) == 62


# ----------------------------------------------------------------------------------------------
# Images.


def test_example_shapes_and_ids():
  ex = synthetic.generate_panoptic_example(3, 'validation', 17, S)
  assert ex['image'].shape == (S, S, 3) and ex['image'].dtype == np.uint8
  assert ex['label'].shape == (S, S, 2) and ex['label'].dtype == np.int32
  assert ex['image_id'] == synthetic.ID_SPLIT_STRIDE + 17
  assert synthetic.generate_panoptic_example(3, 'train', 17, S)['image_id'] == 17


def test_deterministic_in_seed_split_index(train):
  a = synthetic.generate_panoptic_example(0, 'train', 5, S)
  np.testing.assert_array_equal(a['image'], train['image'][5])
  np.testing.assert_array_equal(a['label'], train['label'][5])
  assert a['image_id'] == train['image_id'][5]
  b = synthetic.generate_panoptic_example(0, 'val', 5, S)
  c = synthetic.generate_panoptic_example(0, 'validation', 5, S)
  np.testing.assert_array_equal(b['image'], c['image'])
  np.testing.assert_array_equal(b['label'], c['label'])
  assert not np.array_equal(train['image'][5], train['image'][6])
  other_seed = synthetic.generate_panoptic_example(1, 'train', 5, S)
  assert not np.array_equal(other_seed['label'], a['label'])


def test_train_and_validation_are_disjoint(train, val):
  def digests(images):
    return {hashlib.sha1(im.tobytes()).hexdigest() for im in images}
  assert len(digests(train['image'])) == NUM_IMAGES
  assert len(digests(val['image'])) == NUM_IMAGES
  assert not digests(train['image']) & digests(val['image'])
  assert not set(train['image_id'].tolist()) & set(val['image_id'].tolist())


def test_label_invariants(train):
  assert train['label'].shape == (NUM_IMAGES, S, S, 2)
  for label in train['label']:
    pairs = _check_label(label, synthetic.MAX_SEGMENTS)
    stuff = np.isin(pairs[:, 0], STUFF)
    things = np.isin(pairs[:, 0], THINGS)
    assert np.all(stuff | things)
    # Stuff regions have distinct classes (one segment per stuff class, as COCO panoptic).
    assert 2 <= stuff.sum() <= synthetic.MAX_STUFF_REGIONS
    assert len(set(pairs[stuff, 0].tolist())) == stuff.sum()
    assert 1 <= things.sum() <= synthetic.DEFAULT_MAX_THINGS


def test_no_segment_below_minimum_area(train):
  min_area = synthetic.min_segment_area(S)
  smallest = min(_segments(label)[2].min() for label in train['label'])
  assert smallest >= min_area


def test_sample_covers_classes_repeats_touching_and_void(train):
  stats = synthetic.describe_split(train)
  assert all(v > 0.2 for v in stats['images_with_class'].values()), stats['images_with_class']
  assert stats['things_per_image_hist'][1:] == [h for h in stats['things_per_image_hist'][1:] if h]
  assert len(stats['things_per_image_hist']) == 5
  assert stats['images_with_repeated_thing_class'] > 0.25
  assert stats['images_with_touching_things'] > 0.25
  assert stats['images_with_void'] > 0.5
  assert 0.005 < stats['void_fraction_mean'] < 0.08
  # Independent recount of two of the statistics.
  touching = np.mean([_touching_things(l[..., 1], l[..., 0]) for l in train['label']])
  assert touching == pytest.approx(stats['images_with_touching_things'])
  repeats = 0
  for label in train['label']:
    _, classes, _ = _segments(label)
    things = classes[np.isin(classes, THINGS)]
    repeats += len(things) > len(set(things.tolist()))
  assert repeats / NUM_IMAGES == pytest.approx(stats['images_with_repeated_thing_class'])


def test_crowded_layouts_still_respect_the_minimum_area():
  """With more shapes than fit, occluded shapes are redrawn or removed, never left as slivers."""
  min_area = synthetic.min_segment_area(S)
  for index in range(25):
    label = synthetic.generate_panoptic_example(0, 'train', index, S, min_things=9,
                                                max_things=9)['label']
    _check_label(label, synthetic.max_segments(9))
    assert _segments(label)[2].min() >= min_area


def test_void_has_both_kinds(train):
  """Void comes as thin lines on stuff boundaries and as compact clutter blobs."""
  void = train['label'][..., 1] == 0
  blobs = np.array([_erode(v, 1).any() for v in void])
  lines = void.any(axis=(1, 2)) & ~blobs
  assert 0.3 < blobs.mean() < 0.9 and lines.mean() > 0.1


def test_things_are_large(train):
  stats = synthetic.describe_split(train)
  assert stats['thing_area_fraction']['p50'] > 0.05
  assert stats['stuff_area_fraction']['p5'] > 0.1


def test_number_of_things_is_configurable():
  for index in range(15):
    label = synthetic.generate_panoptic_example(0, 'train', index, S, min_things=3,
                                                max_things=3)['label']
    _, classes, _ = _segments(label)
    assert np.isin(classes, THINGS).sum() == 3


@pytest.mark.parametrize('size', [32, 128])
def test_other_image_sizes(size):
  for index in range(4):
    ex = synthetic.generate_panoptic_example(0, 'train', index, size)
    assert ex['image'].shape == (size, size, 3)
    _check_label(ex['label'], synthetic.MAX_SEGMENTS)
    assert _segments(ex['label'])[2].min() >= synthetic.min_segment_area(size)


def test_invalid_arguments_are_named():
  with pytest.raises(ValueError, match='test.*valid'):
    synthetic.generate_panoptic_example(0, 'test', 0)
  with pytest.raises(ValueError, match='index'):
    synthetic.generate_panoptic_example(0, 'train', -1)
  with pytest.raises(ValueError, match='min_things'):
    synthetic.generate_panoptic_example(0, 'train', 0, min_things=3, max_things=2)


def _thing_contrast(image, label):
  """Per thing segment: distance (0..441) of its mean colour to a 2-pixel band around it."""
  img = image.astype(np.float64)
  ids, cls = label[..., 1], label[..., 0]
  out = []
  for i in np.unique(ids[np.isin(cls, THINGS)]):
    m = ids == i
    band = _dilate(m, 2) & ~m & (ids > 0)
    if band.sum() >= 10:
      out.append(np.linalg.norm(img[m].mean(0) - img[band].mean(0)))
  return out


def test_thing_pixels_differ_from_their_surroundings(train):
  """The labels match the drawn content: each thing is a distinct colour patch."""
  aligned, shifted = [], []
  for image, label in zip(train['image'][:150], train['label'][:150]):
    aligned += _thing_contrast(image, label)
    # Control: the same statistic with the label misplaced by a quarter of the image.
    shifted += _thing_contrast(image, np.roll(label, (S // 4, S // 4), axis=(0, 1)))
  aligned, shifted = np.array(aligned), np.array(shifted)
  assert np.mean(aligned > 40) > 0.95, np.percentile(aligned, [1, 5, 50])
  assert np.median(aligned) > 2.5 * np.median(shifted)


def test_stuff_texture_matches_stuff_class(train):
  """Grass is drawn as near-vertical stripes, water as horizontal ones."""
  votes = {CLASS['grass']: [], CLASS['water']: []}
  for image, label in zip(train['image'], train['label']):
    grey = image.astype(np.float64).mean(-1)
    gx = np.abs(np.diff(grey, axis=1))[:-1]
    gy = np.abs(np.diff(grey, axis=0))[:, :-1]
    for i, c, _ in zip(*_segments(label)):
      if c in votes:
        inner = _erode(label[..., 1] == i, 2)[:-1, :-1]
        if inner.sum() >= 100:
          votes[c].append(gx[inner].mean() > gy[inner].mean())
  grass, water = np.array(votes[CLASS['grass']]), np.array(votes[CLASS['water']])
  assert len(grass) > 50 and len(water) > 50
  assert grass.mean() > 0.95 and water.mean() < 0.05


def test_ring_and_disc_shapes_match_their_class(train):
  """The centroid of an unoccluded ring lies in its hole; that of a disc lies on the disc."""
  checked = {CLASS['ring']: 0, CLASS['disc']: 0}
  for label in train['label']:
    ids, cls = label[..., 1], label[..., 0]
    for i, c, _ in zip(*_segments(label)):
      if c not in checked:
        continue
      m = ids == i
      around = _dilate(m, 1) & ~m
      isolated = not (np.isin(cls[around], THINGS).any() or (ids[around] == 0).any())
      on_border = m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
      if not isolated or on_border:
        continue
      ys, xs = np.nonzero(m)
      centre_in = m[int(ys.mean()), int(xs.mean())]
      assert centre_in == (c == CLASS['disc'])
      checked[c] += 1
  assert min(checked.values()) > 10, checked


# ----------------------------------------------------------------------------------------------
# Video.


def test_video_shapes_ids_and_determinism(clips):
  assert clips['frames'].shape == (NUM_CLIPS, NUM_FRAMES, S, S, 3)
  assert clips['frames'].dtype == np.uint8
  assert clips['label'].shape == (NUM_CLIPS, NUM_FRAMES, S, S, 2)
  np.testing.assert_array_equal(clips['video_id'], np.arange(NUM_CLIPS))
  again = synthetic.generate_video_example(0, 'train', 7, NUM_FRAMES, S)
  np.testing.assert_array_equal(again['frames'], clips['frames'][7])
  np.testing.assert_array_equal(again['label'], clips['label'][7])
  val = synthetic.generate_video_example(0, 'val', 7, NUM_FRAMES, S)
  assert val['video_id'] == synthetic.ID_SPLIT_STRIDE + 7
  assert not np.array_equal(val['frames'], again['frames'])
  image = synthetic.generate_panoptic_example(0, 'train', 7, S)
  assert not np.array_equal(image['image'], again['frames'][0])
  single = synthetic.generate_video_example(0, 'train', 0, 1, S)
  assert single['frames'].shape == (1, S, S, 3)


def test_video_label_invariants(clips):
  min_area = synthetic.min_segment_area(S)
  for clip in clips['label']:
    # Checked over the whole clip: an id has one class in every frame, ids are 1..n per clip.
    _check_label(clip, synthetic.MAX_SEGMENTS)
    for frame in clip:
      np.testing.assert_array_equal(frame[..., 0] == 0, frame[..., 1] == 0)
      assert _segments(frame)[2].min() >= min_area
      assert np.isin(_segments(frame)[1], STUFF).sum() >= 2


def _centroids(clip, obj):
  m = clip[..., 1] == obj
  area = m.sum(axis=(1, 2))
  ys, xs = np.mgrid[:S, :S]
  with np.errstate(invalid='ignore'):
    return area, np.stack([(m * ys).sum((1, 2)) / area, (m * xs).sum((1, 2)) / area], -1)


def test_video_objects_keep_ids_and_move(clips):
  steps = []
  for clip in clips['label']:
    for obj in np.unique(clip[..., 1][np.isin(clip[..., 0], THINGS)]):
      area, c = _centroids(clip, obj)
      both = (area[:-1] > 0) & (area[1:] > 0)
      step = np.linalg.norm(np.diff(c, axis=0), axis=-1)[both]
      # Same object in consecutive frames: its id does not jump to another place.
      assert np.all(step < 0.25 * S), step
      steps += step.tolist()
  steps = np.array(steps)
  assert len(steps) > 100
  assert np.median(steps) > 0.5 and np.mean(steps > 0.2) > 0.8


def test_video_objects_enter_or_leave(clips):
  stats = synthetic.describe_split(clips)
  assert stats['clips_with_enter_or_leave'] > 0.2
  # Independent check: some object is absent in a frame and present at the border in the next.
  events = 0
  for clip in clips['label']:
    for obj in np.unique(clip[..., 1][np.isin(clip[..., 0], THINGS)]):
      m = clip[..., 1] == obj
      present = m.any(axis=(1, 2))
      border = m[:, 0].any(1) | m[:, -1].any(1) | m[:, :, 0].any(1) | m[:, :, -1].any(1)
      events += int(np.sum(~present[:-1] & border[1:]) + np.sum(border[:-1] & ~present[1:]))
  assert events >= 5


def test_video_objects_occlude_each_other(clips):
  """An object's visible area drops well below its clip maximum while it meets another object."""
  occlusions = 0
  for clip in clips['label']:
    for obj in np.unique(clip[..., 1][np.isin(clip[..., 0], THINGS)]):
      area, _ = _centroids(clip, obj)
      for t in range(NUM_FRAMES):
        m = clip[t, ..., 1] == obj
        if not m.any() or m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any():
          continue
        around = _dilate(m, 1) & ~m
        touches = np.isin(clip[t, ..., 0][around], THINGS).any()
        occlusions += bool(touches and area[t] < 0.75 * area.max())
  assert occlusions >= 5


def test_video_thing_pixels_differ_from_their_surroundings(clips):
  contrast = []
  for frames, label in zip(clips['frames'][:20], clips['label'][:20]):
    for t in (0, NUM_FRAMES - 1):
      contrast += _thing_contrast(frames[t], label[t])
  assert len(contrast) > 30 and np.mean(np.array(contrast) > 40) > 0.9


def test_prepare_generates_in_the_background_and_reading_waits(monkeypatch):
  """The in-memory source's `prepare` starts generating a split on another thread; reading the
  split waits for it, gets the arrays a plain read gets, and generates nothing twice; an error
  raised while generating reaches the reader."""
  import threading  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import config_lib  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import data  # pylint: disable=g-import-not-at-top

  config = config_lib.load_config('configs/shapes.py:runlocal')
  plain = data.get_source(config.dataset)._arrays('train')    # pylint: disable=protected-access
  source = data.get_source(config.dataset)
  calls, release, threads = [], threading.Event(), []
  generate = synthetic.generate_panoptic_split

  def slow(*args, **kwargs):
    calls.append(args[1])
    threads.append(threading.current_thread().name)
    release.wait(timeout=30)
    return generate(*args, **kwargs)

  monkeypatch.setattr(synthetic, 'generate_panoptic_split', slow)
  source.prepare(['train'])
  source.prepare(['train'])                   # already under way: not started again
  threading.Timer(0.2, release.set).start()
  got = source._arrays('train')               # pylint: disable=protected-access
  assert calls == ['train'] and threads == ['generate-train']
  assert all(np.array_equal(got[k], plain[k]) for k in plain)

  def broken(*args, **kwargs):
    raise ValueError('the generator failed')

  monkeypatch.setattr(synthetic, 'generate_panoptic_split', broken)
  source.prepare(['validation'])
  with pytest.raises(ValueError, match='the generator failed'):
    source._arrays('val')                     # pylint: disable=protected-access
