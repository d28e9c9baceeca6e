"""Tests for pix2seq_d_jax.data.transforms: per-example preprocessing, eagerly and in tf.data."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from pix2seq_d_jax.data import transforms  # noqa: E402

BG = np.array([0.1, 0.2, 0.8], np.float32)     # background colour, segment (class 1, id 1)
RECT = np.array([0.9, 0.6, 0.1], np.float32)   # rectangle colour, segment (class 2, id 2)


def _seed(*values: int) -> tf.Tensor:
  return tf.constant(values, tf.int64)


def _pattern(height: int, width: int, rect: tuple[int, int, int, int]):
  """A background with one rectangle: image float32 [h, w, 3] and its label int32 [h, w, 2]."""
  y0, y1, x0, x1 = rect
  inside = np.zeros((height, width), bool)
  inside[y0:y1, x0:x1] = True
  image = np.where(inside[..., None], RECT, BG).astype(np.float32)
  label = np.where(inside[..., None], [2, 2], [1, 1]).astype(np.int32)
  return image, label


def _segments(num: int, height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
  """A label int32 [h, w, 2] with segments 1..num (class = 10 + id) on void background."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, num + 1, size=(height, width)).astype(np.int32)
  ids.reshape(-1)[:num + 1] = np.arange(num + 1)  # every id present
  return np.stack([np.where(ids > 0, 10 + ids, 0), ids], axis=-1).astype(np.int32)


def _train(example, seed, **overrides):
  kwargs = dict(image_size=(40, 40), mask_size=(20, 20), min_scale=0.5, max_scale=2.0,
                color_jitter_strength=1.0, flip_prob=0.5)
  kwargs.update(overrides)
  return transforms.train_transform(example, seed=seed, **kwargs)


def _assert_trees_equal(a: dict, b: dict) -> None:
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


# ---------------------------------------------------------------------------------------------
# Determinism.


def test_eager_and_dataset_map_agree():
  image = tf.cast(tf.random.stateless_uniform([30, 50, 3], (1, 1), 0, 256, tf.int32), tf.uint8)
  label = tf.constant(_segments(9, 30, 50))
  video = tf.stack([image, tf.reverse(image, [0])])
  video_label = tf.stack([label, tf.reverse(label, [0])])
  seeds = tf.constant([[0, 1], [0, 2], [7, 3]], tf.int64)

  def fn(example, seed):
    ordered, dropped = transforms.order_ids(example['label'], order='random', max_instances=6,
                                            seed=seed)
    out = _train({**example, 'label': ordered}, seed)
    out['dropped'] = dropped
    out['eval'] = transforms.eval_transform(example, image_size=(40, 40), mask_size=(20, 20))
    return out

  for img, lab in ((image, label), (video, video_label)):
    example = {'image': img, 'label': lab, 'id': tf.constant(3)}
    ds = tf.data.Dataset.from_tensors(example).repeat(3)
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(seeds)).map(fn)
    for i, from_map in enumerate(ds):
      eager = fn(example, seeds[i])
      _assert_trees_equal({k: v for k, v in eager.items() if k != 'eval'},
                          {k: v for k, v in from_map.items() if k != 'eval'})
      _assert_trees_equal(eager['eval'], from_map['eval'])
      assert int(from_map['id']) == 3
      assert int(from_map['dropped']) == 4   # 9 segments, K - 1 = 5 ids


def test_same_seed_same_output_different_seed_differs():
  image = tf.cast(tf.random.stateless_uniform([36, 28, 3], (2, 2), 0, 256, tf.int32), tf.uint8)
  example = {'image': image, 'label': tf.constant(_segments(5, 36, 28))}
  first = _train(example, _seed(4, 5))
  _assert_trees_equal(first, _train(example, _seed(4, 5)))
  # The seed's dtype does not matter: the pipeline may pass int32 or int64.
  _assert_trees_equal(first, _train(example, tf.constant([4, 5], tf.int32)))
  other = _train(example, _seed(4, 6))
  assert not np.array_equal(first['image'], other['image'])
  assert not np.array_equal(first['masks'], other['masks'])


# ---------------------------------------------------------------------------------------------
# Geometry keeps image and label aligned.


def _separable_pattern(height: int, width: int, rect: tuple[int, int, int, int]):
  """Channel 0 marks the rectangle's columns, channel 1 its rows; the label marks both (id 2).

  Bilinear resizing is separable, so channel 0 after any resize depends on x alone: it is >= 0.5
  exactly where the nearest source column is inside the rectangle (that column carries at least
  half of the weight), and likewise channel 1 for rows. Nearest-resized labels must agree.
  """
  y0, y1, x0, x1 = rect
  cols = np.zeros((height, width), np.float32)
  cols[:, x0:x1] = 1.0
  rows = np.zeros((height, width), np.float32)
  rows[y0:y1] = 1.0
  image = np.stack([cols, rows, np.full_like(cols, 0.5)], axis=-1)
  inside = (cols * rows)[..., None] > 0
  label = np.where(inside, [2, 2], [1, 1]).astype(np.int32)
  return image, label


def _check_exact_alignment(image: np.ndarray, masks: np.ndarray) -> tuple[int, int]:
  ids = masks[..., 1]
  np.testing.assert_allclose(image[ids == 0], 0.3, atol=1e-6)
  np.testing.assert_array_equal(masks[..., 0], ids)   # the class travels with the id
  is_rect, is_other = ids == 2, ids == 1
  eps = 1e-4   # a source pixel centre exactly between two columns may round either way
  assert (image[is_rect][:, :2] >= 0.5 - eps).all()
  assert (image[is_other][:, :2].min(-1) <= 0.5 + eps).all()
  return int(is_rect.sum()), int(is_other.sum())


def _check_interior_alignment(image: np.ndarray, masks: np.ndarray) -> tuple[int, int]:
  """Downscaling antialiases over several source pixels, so only test away from edges."""
  ids = masks[..., 1]
  np.testing.assert_allclose(image[ids == 0], 0.3, atol=1e-6)
  np.testing.assert_array_equal(masks[..., 0], ids)
  padded = np.pad(ids, 1, mode='edge')
  window = np.stack([padded[dy:dy + ids.shape[0], dx:dx + ids.shape[1]]
                     for dy in range(3) for dx in range(3)])
  is_rect = (window == 2).all(0)
  is_bg = (window == 1).all(0)
  np.testing.assert_allclose(image[is_rect], np.broadcast_to(RECT, image[is_rect].shape),
                             atol=1e-3)
  np.testing.assert_allclose(image[is_bg], np.broadcast_to(BG, image[is_bg].shape), atol=1e-3)
  return int(is_rect.sum()), int(is_bg.sum())


@pytest.mark.parametrize('min_scale,max_scale,exact', [(1.0, 3.0, True), (0.3, 1.0, False)])
def test_image_and_label_stay_aligned(min_scale, max_scale, exact):
  make, check = ((_separable_pattern, _check_exact_alignment) if exact
                 else (_pattern, _check_interior_alignment))
  image, label = make(30, 44, (4, 19, 27, 40))
  totals = np.zeros(2, int)
  for s in range(24):
    out = _train({'image': image, 'label': label}, _seed(s, 11), mask_size=(40, 40),
                 min_scale=min_scale, max_scale=max_scale, color_jitter_strength=0.0,
                 flip_prob=1.0 if s % 3 == 0 else 0.5)
    totals += check(out['image'].numpy(), out['masks'].numpy())
  assert (totals > 100).all(), totals   # the checks were not vacuous


def test_geometry_ops_are_exact():
  image, label = _pattern(12, 16, (2, 6, 1, 5))
  flipped, flipped_label = transforms.random_horizontal_flip(image, label, prob=1.0,
                                                             seed=_seed(0, 0))
  np.testing.assert_array_equal(flipped, image[:, ::-1])
  np.testing.assert_array_equal(flipped_label, label[:, ::-1])
  kept, kept_label = transforms.random_horizontal_flip(image, label, prob=0.0, seed=_seed(0, 0))
  np.testing.assert_array_equal(kept, image)
  np.testing.assert_array_equal(kept_label, label)

  offsets = set()
  for s in range(20):
    crop, crop_label = transforms.fixed_size_crop(image, label, output_size=(8, 20),
                                                  seed=_seed(s, 1))
    assert crop.shape == (8, 16, 3)   # width 16 < 20 is kept whole
    y0 = [y for y in range(5) if np.array_equal(crop, image[y:y + 8])][0]
    np.testing.assert_array_equal(crop_label, label[y0:y0 + 8])
    offsets.add(y0)
  assert len(offsets) > 2

  # One draw u serves both axes: with slack (10, 20), offset = (floor(10u), floor(20u)).
  grid = np.arange(21 * 31).reshape(21, 31, 1).repeat(3, -1).astype(np.float32)
  offsets = set()
  for s in range(10):
    crop, _ = transforms.fixed_size_crop(grid, np.zeros((21, 31, 2), np.int32),
                                         output_size=(11, 11), seed=_seed(s, 2))
    assert crop.shape == (11, 11, 3)
    y0, x0 = divmod(int(crop[0, 0, 0]), 31)
    assert y0 == x0 // 2, (y0, x0)
    offsets.add(x0)
  assert len(offsets) > 3


def test_scale_jitter_sizes():
  image = np.zeros((48, 64, 3), np.uint8)
  label = np.zeros((48, 64, 2), np.int32)
  out, out_label = transforms.scale_jitter(image, label, output_size=(40, 40), min_scale=1.0,
                                           max_scale=1.0, seed=_seed(0, 0))
  assert out.dtype == tf.float32 and out_label.dtype == tf.int32
  assert out.shape == (30, 40, 3) and out_label.shape == (30, 40, 2)
  sizes = {transforms.scale_jitter(image, label, output_size=(40, 40), min_scale=1.0,
                                   max_scale=3.0, seed=_seed(s, 0))[0].shape[1]
           for s in range(8)}
  assert len(sizes) > 4 and min(sizes) >= 40 and max(sizes) <= 120
  # An image that exactly fits must not lose its last row to float rounding.
  for height in range(100, 1200, 37):
    out, _ = transforms.scale_jitter(np.zeros((height, 1, 3), np.float32),
                                     np.zeros((height, 1, 2), np.int32), output_size=(1024, 1024),
                                     min_scale=1.0, max_scale=1.0, seed=_seed(0, 0))
    assert out.shape[0] == 1024, height


# ---------------------------------------------------------------------------------------------
# Colour jitter, padding, label resizing.


def test_color_jitter_changes_image_only_and_stays_in_range():
  image, label = _pattern(30, 44, (4, 19, 27, 40))
  grays = changed = 0
  for s in range(16):
    with_color = _train({'image': image, 'label': label}, _seed(s, 3), color_jitter_strength=1.0)
    without = _train({'image': image, 'label': label}, _seed(s, 3), color_jitter_strength=0.0)
    np.testing.assert_array_equal(with_color['masks'], without['masks'])
    jittered = transforms.color_jitter(image, strength=1.0, seed=_seed(s, 4)).numpy()
    assert jittered.min() >= 0.0 and jittered.max() <= 1.0
    changed += not np.allclose(jittered, image, atol=1e-3)
    grays += np.allclose(jittered[..., 0], jittered[..., 1], atol=1e-6)
  assert changed >= 10 and 0 < grays < 16
  np.testing.assert_array_equal(transforms.color_jitter(image, strength=0.0, seed=_seed(1, 1)),
                                image)
  with pytest.raises(TypeError, match='float'):
    transforms.color_jitter(np.zeros((4, 4, 3), np.uint8), strength=1.0, seed=_seed(1, 1))


def test_padding_values():
  image, label = _pattern(20, 10, (0, 5, 0, 5))
  padded, padded_label = transforms.pad_to_size(image, label, output_size=(24, 16))
  np.testing.assert_array_equal(padded[:20, :10], image)
  np.testing.assert_array_equal(padded_label[:20, :10], label)
  np.testing.assert_allclose(padded[20:], 0.3)
  np.testing.assert_allclose(padded[:, 10:], 0.3)
  assert (padded_label.numpy()[20:] == 0).all() and (padded_label.numpy()[:, 10:] == 0).all()
  with pytest.raises(tf.errors.InvalidArgumentError, match='larger than output_size'):
    transforms.pad_to_size(image, label, output_size=(16, 16))

  # The train pipeline pads too: at scale 0.5 a 40x40 canvas holds a 20x20 image.
  out = _train({'image': image, 'label': label}, _seed(0, 0), min_scale=0.5, max_scale=0.5,
               mask_size=(40, 40), color_jitter_strength=0.0)
  np.testing.assert_allclose(out['image'][20:], 0.3)
  np.testing.assert_allclose(out['image'][:, 10:], 0.3)
  assert (out['masks'].numpy()[20:] == 0).all() and (out['masks'].numpy()[:, 10:] == 0).all()
  assert (out['masks'].numpy()[:20, :10] > 0).all()


def test_outputs_stay_in_unit_range_and_inputs_are_checked():
  white = np.full((30, 44, 3), 255, np.uint8)   # antialiased resizing overshoots 1 by an ulp here
  label = np.ones((30, 44, 2), np.int32)
  out = transforms.eval_transform({'image': white}, image_size=(40, 40), mask_size=(20, 20))
  assert out['image'].numpy().max() <= 1.0
  for s in range(4):
    out = _train({'image': white, 'label': label}, _seed(s, 5), color_jitter_strength=0.0)
    assert out['image'].numpy().max() <= 1.0
  with pytest.raises(ValueError, match='label'):
    _train({'image': white, 'label': label[:20]}, _seed(0, 0))
  with pytest.raises(KeyError, match='label'):
    _train({'image': white}, _seed(0, 0))


def test_resize_label_is_nearest():
  label = _segments(7, 13, 17)
  out = transforms.resize_label(label, (29, 5)).numpy()
  assert out.shape == (29, 5, 2) and out.dtype == np.int32
  rows = np.floor((np.arange(29) + 0.5) * 13 / 29).astype(int)
  cols = np.floor((np.arange(5) + 0.5) * 17 / 5).astype(int)
  np.testing.assert_array_equal(out, label[rows][:, cols])


# ---------------------------------------------------------------------------------------------
# Video: one set of random parameters for the whole clip.


def test_video_frames_share_geometry_and_colour():
  frames = [_pattern(30, 44, (4 + t, 19 + t, 27 - 3 * t, 40)) for t in range(3)]
  video = np.stack([f[0] for f in frames])
  video_label = np.stack([f[1] for f in frames])
  for s in range(6):
    out = _train({'image': video, 'label': video_label}, _seed(s, 9), mask_size=(40, 40))
    assert out['image'].shape == (3, 40, 40, 3) and out['masks'].shape == (3, 40, 40, 2)
    for t in range(3):
      single = _train({'image': frames[t][0], 'label': frames[t][1]}, _seed(s, 9),
                      mask_size=(40, 40))
      np.testing.assert_allclose(out['image'][t], single['image'], atol=1e-5)
      np.testing.assert_array_equal(out['masks'][t], single['masks'])
    same = _train({'image': np.stack([video[0]] * 3), 'label': np.stack([video_label[0]] * 3)},
                  _seed(s, 9), mask_size=(40, 40))
    for t in (1, 2):
      np.testing.assert_array_equal(same['image'][t], same['image'][0])
      np.testing.assert_array_equal(same['masks'][t], same['masks'][0])


# ---------------------------------------------------------------------------------------------
# Evaluation transform.


@pytest.mark.parametrize('shape,unpadded', [((60, 30), (40, 20)), ((30, 80), (15, 40)),
                                            ((10, 10), (40, 40))])
def test_eval_transform_sizes(shape, unpadded):
  image, label = _pattern(*shape, (0, shape[0], 0, shape[1] // 2))
  for video in (False, True):
    img, lab = (np.stack([image] * 2), np.stack([label] * 2)) if video else (image, label)
    out = transforms.eval_transform({'image': (img * 255).astype(np.uint8), 'label': lab,
                                     'id': 'a', 'label_orig': lab},
                                    image_size=(40, 40), mask_size=(20, 20))
    lead = (2,) if video else ()
    assert out['image'].shape == lead + (40, 40, 3) and out['image'].dtype == tf.float32
    assert out['masks'].shape == lead + (20, 20, 2) and out['masks'].dtype == tf.int32
    np.testing.assert_array_equal(out['orig_size'], shape)
    np.testing.assert_array_equal(out['unpadded_size'], unpadded)
    assert out['id'] == 'a' and out['label_orig'] is lab
    h, w = unpadded
    assert abs(h / w - shape[0] / shape[1]) < 0.05
    pixels = out['image'].numpy()
    np.testing.assert_allclose(pixels[..., h:, :, :], 0.3)
    np.testing.assert_allclose(pixels[..., :, w:, :], 0.3)
    assert (np.abs(pixels[..., :h, :w, :] - 0.3).max(-1) > 0.05).all()
    masks = out['masks'].numpy()
    assert (masks[..., h // 2:, :, :] == 0).all() and (masks[..., :, w // 2:, :] == 0).all()
    assert (masks[..., :h // 2, :w // 2, :] > 0).all()
  no_label = transforms.eval_transform({'image': image}, image_size=(40, 40), mask_size=(20, 20))
  assert 'masks' not in no_label and no_label['image'].shape == (40, 40, 3)


# ---------------------------------------------------------------------------------------------
# Segment ids.


def _id_mapping(before: np.ndarray, after: np.ndarray) -> dict[int, int]:
  """Old id -> new id, asserting every old segment maps to exactly one new id."""
  mapping = {}
  for old in np.unique(before[..., 1]):
    new = np.unique(after[..., 1][before[..., 1] == old])
    assert len(new) == 1, (old, new)
    mapping[int(old)] = int(new[0])
  return mapping


def test_order_ids_random_is_a_bijection_into_the_whole_range():
  label = _segments(12)
  seen = set()
  for s in range(12):
    out, dropped = transforms.order_ids(label, order='random', max_instances=101,
                                        seed=_seed(s, 0))
    out = out.numpy()
    assert out.dtype == np.int32 and out.shape == label.shape and int(dropped) == 0
    mapping = _id_mapping(label, out)
    assert mapping[0] == 0
    new_ids = [v for k, v in mapping.items() if k]
    assert len(set(new_ids)) == 12 and all(1 <= v <= 100 for v in new_ids)
    np.testing.assert_array_equal(out[..., 0], label[..., 0])
    seen.update(new_ids)
  assert max(seen) > 50   # spread over 1..K-1, not packed to 1..n


def test_order_ids_shuffle_compacts_gapped_ids():
  label = _segments(5)
  gapped = label.copy()
  gapped[..., 1] = np.array([0, 3, 17, 250, 1000, 70000])[label[..., 1]]
  perms = set()
  for s in range(8):
    out, dropped = transforms.order_ids(gapped, order='shuffle', max_instances=16,
                                        seed=_seed(s, 0))
    out = out.numpy()
    assert int(dropped) == 0
    assert sorted(np.unique(out[..., 1])) == [0, 1, 2, 3, 4, 5]
    mapping = _id_mapping(gapped, out)
    assert mapping[0] == 0
    perms.add(tuple(mapping[k] for k in sorted(mapping)))
    np.testing.assert_array_equal(out[..., 0], gapped[..., 0])
  assert len(perms) > 3   # different seeds give different permutations

  out, dropped = transforms.order_ids(label, order='none', max_instances=16, seed=_seed(0, 0))
  np.testing.assert_array_equal(out, label)
  with pytest.raises(tf.errors.InvalidArgumentError, match='max_instances'):
    transforms.order_ids(gapped, order='none', max_instances=16, seed=_seed(0, 0))
  with pytest.raises(ValueError, match='shuffle'):
    transforms.order_ids(label, order='sorted', max_instances=16, seed=_seed(0, 0))


def test_order_ids_video_uses_one_permutation():
  clip = np.stack([_segments(6, seed=t) for t in range(3)])
  for order in ('shuffle', 'random'):
    out, _ = transforms.order_ids(clip, order=order, max_instances=16, seed=_seed(1, 2))
    assert out.shape == clip.shape
    mapping = _id_mapping(clip, out.numpy())   # over all frames at once
    assert len(set(mapping.values())) == 7


def test_raster_ids_number_segments_by_their_first_pixel():
  ids = np.array([[0, 0, 9, 9, 9],
                  [4, 4, 9, 0, 0],
                  [4, 4, 2, 2, 0],
                  [7, 7, 7, 7, 7]], np.int32)
  masks = np.stack([ids % 5 + 1, ids], -1)
  out = transforms.raster_ids(tf.constant(masks)).numpy()
  expected = np.array([[0, 0, 1, 1, 1],
                       [2, 2, 1, 0, 0],
                       [2, 2, 3, 3, 0],
                       [4, 4, 4, 4, 4]])
  np.testing.assert_array_equal(out[..., 1], expected)
  np.testing.assert_array_equal(out[..., 0], masks[..., 0])
  # A clip is scanned frame after frame: one numbering for all frames.
  clip = np.stack([masks, masks[::-1]])
  out = transforms.raster_ids(tf.constant(clip)).numpy()
  np.testing.assert_array_equal(out[0, ..., 1], expected)
  np.testing.assert_array_equal(out[1, ..., 1], expected[::-1])
  # The same segments in any other numbering get the same ids.
  relabelled = np.stack([masks[..., 0], np.array([0, 30, 3, 3, 1, 3, 3, 2, 3, 40])[ids]], -1)
  np.testing.assert_array_equal(transforms.raster_ids(tf.constant(relabelled)).numpy(), out[0])


@pytest.mark.parametrize('order', ['none', 'shuffle', 'random', 'raster'])
def test_order_ids_overflow_drops_the_smallest(order):
  # Segments 1..6 with 6, 5, 4, 1, 3, 2 pixels (+ void); K = 4 keeps the 3 largest: 1, 2, 3.
  sizes = {1: 6, 2: 5, 3: 4, 4: 1, 5: 3, 6: 2}
  ids = np.concatenate([np.full(n, i) for i, n in sizes.items()] + [np.zeros(4, int)])
  ids = np.random.default_rng(0).permutation(ids).reshape(5, 5)
  label = np.stack([np.where(ids > 0, 20 + ids, 0), ids], -1).astype(np.int32)
  out, dropped = transforms.order_ids(label, order=order, max_instances=4, seed=_seed(3, 3))
  out = out.numpy()
  assert int(dropped) == 3
  dropped_px = np.isin(ids, [4, 5, 6])
  assert (out[dropped_px] == 0).all()   # class and id
  assert (out[ids == 0] == 0).all()
  kept = ~dropped_px & (ids > 0)
  np.testing.assert_array_equal(out[..., 0][kept], label[..., 0][kept])
  mapping = _id_mapping(label[kept][None], out[kept][None])
  assert sorted(mapping) == [1, 2, 3]
  if order in ('none', 'raster'):
    assert mapping == {1: 1, 2: 2, 3: 3}
  else:
    assert sorted(mapping.values()) == [1, 2, 3]


def test_order_ids_overflow_ties_drop_the_smaller_id():
  ids = np.array([[2, 7, 3, 3], [4, 4, 5, 5]], np.int32)   # 2 and 7 have one pixel each
  label = np.stack([ids, ids], -1)
  out, dropped = transforms.order_ids(label, order='shuffle', max_instances=5, seed=_seed(0, 0))
  out = out.numpy()
  assert int(dropped) == 1
  assert (out[0, 0] == 0).all() and (out[0, 1] > 0).all()
