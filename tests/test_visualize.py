"""Tests of the image | ground truth | prediction pictures."""

import numpy as np
import pytest
from PIL import Image

from pix2seq_d_jax.evaluation import visualize as vz

CATS = [
    {'id': 1, 'name': 'person', 'isthing': 1, 'color': [220, 20, 60]},
    {'id': 3, 'name': 'car', 'isthing': 1, 'color': [0, 0, 142]},
    {'id': 7, 'name': 'road', 'isthing': 0, 'color': [128, 64, 128]},
    {'id': 9, 'name': 'sky', 'isthing': 0, 'color': [70, 130, 180]},
    {'id': 11, 'name': 'tree', 'isthing': 0, 'color': [107, 142, 35]},
]
PERSON, CAR, ROAD, SKY, TREE = 1, 2, 3, 4, 5
H, W = 30, 40


def scene():
  cls = np.full((H, W), ROAD)
  cls[:10] = SKY
  ids = np.ones((H, W), int)
  cls[12:20, 5:12], ids[12:20, 5:12] = PERSON, 1
  cls[12:20, 14:20], ids[12:20, 14:20] = PERSON, 2
  cls[22:28, 25:35], ids[22:28, 25:35] = CAR, 3
  cls[0:3, 0:3], ids[0:3, 0:3] = 0, 0
  return cls, ids


def image():
  return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def panel_region(out, k, scale):
  x0 = vz.GAP + k * (W * scale + vz.GAP)
  return out[vz.TITLE_HEIGHT:vz.TITLE_HEIGHT + H * scale, x0:x0 + W * scale]


def has_color(region, color):
  return bool(np.all(region.reshape(-1, 3) == np.asarray(color), axis=1).any())


def test_shape_dtype_and_default_upscaling():
  cls, ids = scene()
  out = vz.render_panel(image(), cls, ids, cls, ids, CATS)
  scale = 9  # the smallest integer with 30·s ≥ 256
  assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
  assert out.shape[1] == 3 * W * scale + 4 * vz.GAP
  assert out.shape[0] > vz.TITLE_HEIGHT + H * scale  # legend below
  np.testing.assert_array_equal(panel_region(out, 0, scale)[::scale, ::scale], image())
  small = vz.render_panel(image(), cls, ids, cls, ids, CATS, scale=2)
  assert small.shape[1] == 3 * W * 2 + 4 * vz.GAP
  big_image = np.asarray(Image.fromarray(image()).resize((2 * W, 2 * H)))
  assert vz.render_panel(big_image, cls, ids, cls, ids, CATS, scale=2).shape == small.shape


def test_identical_prediction_gives_identical_panels():
  cls, ids = scene()
  out = vz.render_panel(image(), cls, ids, cls, ids, CATS, scale=3)
  np.testing.assert_array_equal(panel_region(out, 1, 3), panel_region(out, 2, 3))


def test_panels_differ_exactly_where_gt_and_prediction_differ():
  cls, ids = scene()
  pred_cls = cls.copy()
  pred_cls[22:28, 25:35] = ROAD  # the car is missed
  s = 3
  out = vz.render_panel(image(), cls, ids, pred_cls, ids, CATS, scale=s)
  gt, pred = panel_region(out, 1, s), panel_region(out, 2, s)
  diff = np.any(gt != pred, axis=-1)
  changed = np.zeros((H * s, W * s), bool)
  # The car box, one pixel wider for its boundary line drawn just outside.
  changed[22 * s - 1:28 * s, 25 * s - 1:35 * s] = True
  assert diff[22 * s + 1:28 * s - 1, 25 * s + 1:35 * s - 1].all()
  assert not diff[~changed].any()
  assert has_color(pred[22 * s:28 * s, 25 * s:35 * s], CATS[ROAD - 1]['color'])


def test_colours_void_stuff_things_and_boundaries():
  cls, ids = scene()
  s = 2
  out = vz.render_panel(image(), cls, ids, cls, ids, CATS, scale=s)
  gt = panel_region(out, 1, s)
  assert (gt[0:2, 0:2] == vz.VOID_COLOR).all()
  assert (gt[24 * s, 5 * s] == CATS[ROAD - 1]['color']).all()
  assert (gt[5, 50] == CATS[SKY - 1]['color']).all()
  # Two person instances: distinct shades, both different from the plain class colour.
  a, b = gt[16 * s, 8 * s], gt[16 * s, 17 * s]
  assert not (a == b).all()
  # Boundary between sky (rows < 10) and road: white.
  assert (gt[10 * s - 1, 60] == vz.BOUNDARY_COLOR).all()
  # Stuff with several ids is one segment: no boundary inside the road.
  ids2 = ids.copy()
  ids2[25:, :20] = 7
  out2 = vz.render_panel(image(), cls, ids2, cls, ids2, CATS, scale=s)
  np.testing.assert_array_equal(panel_region(out2, 1, s), gt)


def test_legend_lists_the_classes_present():
  cls, ids = scene()
  pred_cls = cls.copy()
  pred_cls[22:28, 25:35] = TREE  # tree only in the prediction, car only in the GT
  s = 2
  out = vz.render_panel(image(), cls, ids, pred_cls, ids, CATS, scale=s)
  legend = out[vz.TITLE_HEIGHT + H * s:]
  for c in (PERSON, CAR, ROAD, SKY, TREE):
    assert has_color(legend, CATS[c - 1]['color']), CATS[c - 1]['name']
  no_tree = vz.render_panel(image(), cls, ids, cls, ids, CATS, scale=s)
  assert not has_color(no_tree[vz.TITLE_HEIGHT + H * s:], CATS[TREE - 1]['color'])


def test_default_palette_without_colors():
  cats = [{k: v for k, v in c.items() if k != 'color'} for c in CATS]
  colors = vz.class_colors(cats)
  assert colors.shape == (6, 3) and colors.dtype == np.uint8
  assert (colors[0] == 0).all()
  assert len({tuple(c) for c in colors}) == 6  # void and 5 distinct classes
  cls, ids = scene()
  out = vz.render_panel(image(), cls, ids, cls, ids, cats)
  assert out.dtype == np.uint8


def test_render_panel_errors():
  cls, ids = scene()
  with pytest.raises(ValueError, match=r'class values must lie in 0\.\.5'):
    vz.render_panel(image(), cls + 5, ids, cls, ids, CATS)
  with pytest.raises(ValueError, match='resize the prediction'):
    vz.render_panel(image(), cls, ids, cls[:-1], ids[:-1], CATS)
  with pytest.raises(ValueError, match='uint8'):
    vz.render_panel(image().astype(np.float32), cls, ids, cls, ids, CATS)


def test_render_grid_and_save_png(tmp_path):
  a = np.full((10, 20, 3), 200, np.uint8)
  b = np.full((5, 30, 3), 100, np.uint8)
  grid = vz.render_grid([a, b])
  assert grid.shape == (10 + vz.GAP + 5, 30, 3) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[:10, :20], a)
  assert (grid[:10, 20:] == vz.BACKGROUND).all()
  np.testing.assert_array_equal(grid[10 + vz.GAP:, :], b)
  path = tmp_path / 'sub' / 'grid.png'
  vz.save_png(path, grid)
  with Image.open(path) as im:
    np.testing.assert_array_equal(np.asarray(im), grid)
  with pytest.raises(ValueError, match='no panels'):
    vz.render_grid([])
  with pytest.raises(ValueError, match='uint8'):
    vz.save_png(path, grid.astype(np.float32))
