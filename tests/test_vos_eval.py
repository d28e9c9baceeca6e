"""Tests for pix2seq_d_jax.evaluation.vos (DAVIS-2017 unsupervised J, F and J&F)."""
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pix2seq_d_jax.evaluation import vos
from pix2seq_d_jax.formats import davis_format


def _square(shape, top, left, size):
  mask = np.zeros(shape, bool)
  mask[top:top + size, left:left + size] = True
  return mask


def _random_blobs(rng, shape, threshold=0.6, sigma=2.5):
  """bool masks with a few irregular blobs, holes and edge-touching parts."""
  noise = ndimage.gaussian_filter(rng.random(shape), sigma)
  noise = (noise - noise.min()) / (noise.max() - noise.min() + 1e-12)
  return noise > threshold


# ---- an independent reference for F: per-pixel loops and a Euclidean distance transform ----


def _reference_boundary(mask):
  """The DAVIS boundary rule spelled out pixel by pixel."""
  h, w = mask.shape
  out = np.zeros((h, w), bool)
  for y in range(h):
    for x in range(w):
      if y == h - 1 and x == w - 1:
        continue
      if y == h - 1:
        neighbours = [(y, x + 1)]
      elif x == w - 1:
        neighbours = [(y + 1, x)]
      else:
        neighbours = [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
      out[y, x] = any(mask[y, x] != mask[n] for n in neighbours)
  return out


def _within(boundary, radius):
  """Pixels whose Euclidean distance to `boundary` is at most `radius` (a disk dilation)."""
  if not boundary.any():
    return np.zeros_like(boundary)
  return ndimage.distance_transform_edt(~boundary) <= radius


def _reference_f(gt, pred, void, radius):
  keep = ~void
  gt_b = _reference_boundary(gt & keep)
  pred_b = _reference_boundary(pred & keep)
  n_gt, n_pred = gt_b.sum(), pred_b.sum()
  if n_pred == 0 and n_gt == 0:
    return 1.0
  if n_pred == 0 or n_gt == 0:
    return 0.0
  precision = (pred_b & _within(gt_b, radius)).sum() / n_pred
  recall = (gt_b & _within(pred_b, radius)).sum() / n_gt
  if precision + recall == 0:
    return 0.0
  return 2 * precision * recall / (precision + recall)


# ---- boundary map ----


def test_boundary_of_a_single_pixel():
  mask = np.zeros((5, 5), bool)
  mask[2, 2] = True
  expected = np.zeros((5, 5), bool)
  # The pixel itself and the three pixels whose right, lower or lower-right neighbour it is.
  expected[[1, 1, 2, 2], [1, 2, 1, 2]] = True
  np.testing.assert_array_equal(vos.boundary_map(mask), expected)


def test_boundary_of_a_square_is_an_outline_shifted_towards_the_origin():
  mask = _square((40, 40), 10, 10, 10)
  outline = _square((40, 40), 9, 9, 11) & ~_square((40, 40), 10, 10, 9)
  np.testing.assert_array_equal(vos.boundary_map(mask), outline)
  assert outline.sum() == 40


def test_boundary_at_the_image_edges():
  # A mask filling the last column: the last column compares downwards only, so it has no
  # boundary, and the column before it does.
  mask = np.zeros((4, 5), bool)
  mask[:, -1] = True
  expected = np.zeros((4, 5), bool)
  expected[:, -2] = True
  np.testing.assert_array_equal(vos.boundary_map(mask), expected)
  # A mask filling the last row: the row above is the boundary.
  np.testing.assert_array_equal(vos.boundary_map(mask.T), expected.T)
  # The whole image: no boundary at all.
  assert not vos.boundary_map(np.ones((4, 5), bool)).any()
  # Only the bottom-right pixel: its neighbours up and left see it, the pixel itself never counts.
  mask = np.zeros((3, 3), bool)
  mask[2, 2] = True
  np.testing.assert_array_equal(np.argwhere(vos.boundary_map(mask)), [[1, 1], [1, 2], [2, 1]])


def test_boundary_map_matches_the_per_pixel_rule():
  rng = np.random.default_rng(1)
  for shape in ((13, 17), (20, 9), (1, 6), (6, 1)):
    for _ in range(3):
      mask = rng.random(shape) > 0.5
      np.testing.assert_array_equal(vos.boundary_map(mask), _reference_boundary(mask))


# ---- region similarity J ----


def test_region_similarity_hand_values():
  gt = np.zeros((3, 4, 4), bool)
  pred = np.zeros((3, 4, 4), bool)
  gt[0, 0, :] = True                 # 4 pixels
  pred[0, 0, :2] = True
  pred[0, 1, :2] = True              # 2 overlap, 2 outside: 2 / 6
  gt[1, 2, 2] = True                 # no prediction: 0
  # Frame 2: both empty, a perfect score.
  np.testing.assert_allclose(vos.region_similarity(gt, pred), [2 / 6, 0.0, 1.0])


def test_region_similarity_excludes_void():
  gt = np.zeros((2, 4, 4), bool)
  pred = np.zeros((2, 4, 4), bool)
  void = np.zeros((2, 4, 4), bool)
  gt[0, 0, :] = True
  pred[0, 0, :2] = True
  pred[0, 1, :2] = True
  void[0, 1, :] = True               # the 2 stray predicted pixels are void: 2 / 4
  pred[1, 3, 3] = True
  void[1, 3, 3] = True               # everything in void: empty union, J = 1
  np.testing.assert_allclose(vos.region_similarity(gt, pred, void), [0.5, 1.0])
  np.testing.assert_allclose(vos.region_similarity(gt, pred), [2 / 6, 0.0])


def test_region_similarity_checks_shapes():
  with pytest.raises(ValueError, match="same frames"):
    vos.region_similarity(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
  with pytest.raises(ValueError, match=r"mask\[None\]"):
    vos.region_similarity(np.zeros((4, 4)), np.zeros((4, 4)))


# ---- boundary measure F ----


def test_tolerance_radius():
  assert vos.tolerance_radius(0.008, 480, 854) == 8
  assert vos.tolerance_radius(0.03, 40, 40) == 2     # ceil(1.70)
  assert vos.tolerance_radius(3, 40, 40) == 3
  assert vos.tolerance_radius(3.0, 40, 40) == 3
  with pytest.raises(ValueError, match="whole number"):
    vos.tolerance_radius(2.5, 40, 40)
  with pytest.raises(ValueError, match="positive"):
    vos.tolerance_radius(0, 40, 40)


@pytest.mark.parametrize("shift, bound_th, expected", [
    (0, 1, 1.0),
    (1, 1, 1.0),
    (2, 2, 1.0),
    (3, 3, 1.0),
    (3, 0.05, 1.0),     # r = ceil(0.05 * 56.6) = 3
    # Shift 3, r = 1: of each 40-pixel outline, 9 + 9 pixels of the top and bottom rows and the
    # 2 ends of the near side are within 1 pixel of the other outline: P = R = 20 / 40.
    (3, 1, 0.5),
    # Shift 3, r = 2: 10 + 10 on the rows and 4 on the near side: P = R = 24 / 40.
    (3, 2, 0.6),
    (3, 0.03, 0.6),     # r = ceil(0.03 * 56.6) = 2
])
def test_boundary_measure_of_a_shifted_square(shift, bound_th, expected):
  gt = _square((40, 40), 10, 10, 10)[None]
  pred = _square((40, 40), 10, 10 + shift, 10)[None]
  np.testing.assert_allclose(vos.boundary_measure(gt, pred, bound_th=bound_th), [expected])
  # Precision and recall are symmetric here, so swapping the roles changes nothing.
  np.testing.assert_allclose(vos.boundary_measure(pred, gt, bound_th=bound_th), [expected])


def test_boundary_measure_empty_conventions():
  empty = np.zeros((1, 20, 20), bool)
  square = _square((20, 20), 5, 5, 6)[None]
  full = np.ones((1, 20, 20), bool)
  assert vos.boundary_measure(empty, empty)[0] == 1.0     # neither has a boundary
  assert vos.boundary_measure(square, empty)[0] == 0.0    # no prediction for a real object
  assert vos.boundary_measure(empty, square)[0] == 0.0    # a prediction for no object
  # A full-image mask has no boundary, so it counts as "empty" for F (but not for J).
  assert vos.boundary_measure(full, full)[0] == 1.0
  assert vos.boundary_measure(full, square)[0] == 0.0


def test_boundary_measure_void_is_cleared_from_both_masks():
  gt = _square((30, 30), 5, 5, 10)[None]
  spill = gt.copy()
  spill[0, 5:15, 15:25] = True                   # spills into a region that is void
  void = np.zeros_like(gt)
  void[0, :, 15:] = True
  assert vos.boundary_measure(gt, spill)[0] < 0.9
  # Once the void pixels are cleared the two masks are identical.
  assert vos.boundary_measure(gt, spill, void)[0] == 1.0
  np.testing.assert_allclose(vos.region_similarity(gt, spill, void), [1.0])
  # Clearing void also cuts the masks, so an edge against void is a boundary: a mask that stops
  # at the void border matches one that runs into the void.
  cut = gt.copy()
  cut[0, :, 10:] = False
  void = np.zeros_like(gt)
  void[0, :, 10:] = True
  assert vos.boundary_measure(gt, cut, void, bound_th=1)[0] == 1.0
  assert vos.boundary_measure(gt, cut, bound_th=1)[0] < 1.0


def test_boundary_measure_matches_a_brute_force_reference():
  rng = np.random.default_rng(7)
  scores = []
  for shape, bound_th in (((37, 53), 0.05), ((24, 31), 2), ((30, 30), 1), ((19, 41), 0.008)):
    radius = vos.tolerance_radius(bound_th, *shape)
    for _ in range(4):
      gt = _random_blobs(rng, (3, *shape))
      pred = _random_blobs(rng, (3, *shape), threshold=0.55)
      pred[1] = np.roll(gt[1], (1, 2), axis=(0, 1))      # a near miss
      void = rng.random((3, *shape)) > 0.97
      void[2] = False
      got = vos.boundary_measure(gt, pred, void, bound_th=bound_th)
      want = [_reference_f(g, p, v, radius) for g, p, v in zip(gt, pred, void)]
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
      scores.extend(got)
  # The cases must exercise partial matches, not only the 0 / 1 conventions.
  assert len(scores) == 48
  assert sum(0.05 < s < 0.95 for s in scores) >= 30


# ---- statistics ----


def test_statistics_hand_values():
  # T = 4: bins [0, 1] and [2, 3].
  mean, recall, decay = vos.statistics(np.array([1.0, 0.8, 0.4, 0.2]))
  assert mean == pytest.approx(0.6)
  assert recall == pytest.approx(0.5)
  assert decay == pytest.approx(0.9 - 0.3)
  assert vos.statistics(np.ones(4)) == (1.0, 1.0, 0.0)
  # Exactly 0.5 is not a recall.
  assert vos.statistics(np.full(3, 0.5))[1] == 0.0


@pytest.mark.parametrize("length, first, last", [
    (1, [0], [0]),
    (2, [0], [1]),
    (5, [0, 1], [3, 4]),
    (6, [0, 1], [4, 5]),
    # Edges round(1, 2.5, 4, 5.5, 7) - 1 with halves rounded up: 0, 2, 3, 5, 6.
    (7, [0, 1, 2], [5, 6]),
    (9, [0, 1, 2], [6, 7, 8]),
    # Edges round(1, 3.25, 5.5, 7.75, 10) - 1 = 0, 2, 5, 7, 9.
    (10, [0, 1, 2], [7, 8, 9]),
])
def test_statistics_decay_bins(length, first, last):
  values = np.linspace(0.0, 1.0, length) ** 2
  _, _, decay = vos.statistics(values)
  assert decay == pytest.approx(values[first].mean() - values[last].mean())


def test_statistics_nan():
  mean, recall, decay = vos.statistics(np.array([np.nan, 1.0, 0.0, 0.0]))
  assert mean == pytest.approx(1 / 3)
  assert recall == pytest.approx(0.25)       # a NaN frame is a miss
  assert decay == pytest.approx(1.0 - 0.0)   # first bin nanmean([nan, 1]) = 1
  with pytest.raises(ValueError, match="non-empty"):
    vos.statistics(np.zeros(0))


# ---- matching and the evaluator ----


def _two_object_sequence(num_frames=4, shape=(32, 48)):
  """uint8 [T, H, W] GT with two moving objects and a void band."""
  gt = np.zeros((num_frames, *shape), np.uint8)
  for t in range(num_frames):
    gt[t, 4 + t:14 + t, 4:16] = 1
    gt[t, 16:26, 20 + 2 * t:34 + 2 * t] = 2
  gt[:, -2:, :] = 255
  return gt


def _without_void(ids):
  return np.where(ids == 255, 0, ids)


def test_match_sequence_permuted_ids_score_perfectly():
  gt = _two_object_sequence()
  pred = _without_void(gt).astype(np.int64)
  permuted = np.choose(pred, [0, 7, 3])      # object 1 -> id 7, object 2 -> id 3
  j, f, assignment = vos.match_sequence(gt, permuted)
  assert j.shape == f.shape == (2, 4)
  np.testing.assert_array_equal(j, 1.0)
  np.testing.assert_array_equal(f, 1.0)
  np.testing.assert_array_equal(assignment, [7, 3])


def test_match_sequence_missing_object_and_empty_proposals():
  gt = _two_object_sequence()
  pred = np.where(gt == 1, 1, 0)
  j, f, assignment = vos.match_sequence(gt, pred)
  np.testing.assert_array_equal(j, [[1] * 4, [0] * 4])
  np.testing.assert_array_equal(f, [[1] * 4, [0] * 4])
  # Object 2 gets id 2, which never occurs: an empty proposal.
  np.testing.assert_array_equal(assignment, [1, 2])
  j, f, assignment = vos.match_sequence(gt, np.zeros_like(gt))
  np.testing.assert_array_equal(j, 0.0)
  np.testing.assert_array_equal(np.sort(assignment), [1, 2])


def test_match_sequence_counts_objects_from_the_first_frame():
  gt = _two_object_sequence()
  gt[2:, 28:30, 0:4] = 3                      # appears later: not an object, just background
  pred = _without_void(gt)
  j, f, _ = vos.match_sequence(gt, np.where(pred == 3, 0, pred))
  assert j.shape == (2, 4)
  np.testing.assert_array_equal(j, 1.0)
  np.testing.assert_array_equal(f, 1.0)


def test_match_sequence_prefers_the_best_total_score():
  gt = _two_object_sequence(num_frames=2)
  pred = np.zeros(gt.shape, np.int64)
  # id 1 covers object 1 exactly and half of object 2; id 2 covers the other half of object 2.
  pred[gt == 1] = 1
  pred[:, 16:26, 20:27] = 1
  pred[(gt == 2) & (pred == 0)] = 2
  _, _, assignment = vos.match_sequence(gt, pred)
  np.testing.assert_array_equal(assignment, [1, 2])


def test_match_sequence_agrees_with_the_binary_measures():
  rng = np.random.default_rng(3)
  shape = (3, 29, 37)
  gt = np.zeros(shape, np.uint8)
  pred = np.zeros(shape, np.int64)
  for k in range(1, 4):
    gt[_random_blobs(rng, shape, threshold=0.7)] = k
  for k in range(1, 6):
    pred[_random_blobs(rng, shape, threshold=0.68)] = k
  gt[rng.random(shape) > 0.95] = 255
  gt[0, 0, 0] = 3                             # make sure frame 0 holds the largest id
  j, f, assignment = vos.match_sequence(gt, pred, bound_th=2)
  void = gt == 255
  for obj, pred_id in enumerate(assignment):
    obj_mask, pred_mask = gt == obj + 1, pred == pred_id
    np.testing.assert_allclose(j[obj], vos.region_similarity(obj_mask, pred_mask, void))
    np.testing.assert_allclose(f[obj], vos.boundary_measure(obj_mask, pred_mask, void, 2))


def test_match_sequence_too_many_proposals():
  gt = _two_object_sequence()
  pred = _without_void(gt).astype(np.int64)
  pred[0, 0, 0] = 20
  vos.match_sequence(gt, pred, name="bike")    # id 20 is still allowed
  pred[0, 0, 0] = 21
  with pytest.raises(ValueError) as err:
    vos.match_sequence(gt, pred, name="bike")
  message = str(err.value)
  assert "'bike'" in message and "21" in message and "renumber" in message
  # A void value copied into the predictions is an id too.
  with pytest.raises(ValueError, match="id 255"):
    vos.match_sequence(gt, gt, name="bike")


def test_match_sequence_shape_mismatch():
  gt = _two_object_sequence()
  with pytest.raises(ValueError, match="'cows'.*annotation resolution"):
    vos.match_sequence(gt, gt[:, :-1], name="cows")


def test_evaluator_gt_against_itself():
  ev = vos.VOSEvaluator()
  gt = _two_object_sequence(num_frames=7)
  ev.add_sequence("a", gt, _without_void(gt))
  out = ev.result()
  for key in ("J&F", "J_mean", "J_recall", "F_mean", "F_recall"):
    assert out[key] == pytest.approx(100.0), key
  assert out["J_decay"] == pytest.approx(0.0)
  assert out["F_decay"] == pytest.approx(0.0)
  assert out["num_objects"] == 2
  assert out["per_sequence"] == {
      "a": {"J&F": 100.0, "J_mean": 100.0, "F_mean": 100.0, "num_objects": 2}}


def test_evaluator_missing_object_hand_values():
  gt = _two_object_sequence(num_frames=4)
  gt[2:][gt[2:] == 2] = 0                     # object 2 leaves after frame 1
  pred = np.where(gt == 1, 1, 0)              # and is never predicted
  ev = vos.VOSEvaluator()
  summary = ev.add_sequence("s", gt, pred)
  out = ev.result()
  # Object 1: J = F = [1, 1, 1, 1]. Object 2: [0, 0, 1, 1] (absent in both on frames 2-3 is a
  # perfect score): mean 0.5, recall 0.5, decay 0 - 1 = -1.
  expected = {"J&F": 75.0, "J_mean": 75.0, "J_recall": 75.0, "J_decay": -50.0,
              "F_mean": 75.0, "F_recall": 75.0, "F_decay": -50.0}
  for key, value in expected.items():
    assert out[key] == pytest.approx(value), key
  assert summary == {"J&F": 75.0, "J_mean": 75.0, "F_mean": 75.0, "num_objects": 2}


def test_evaluator_averages_over_objects_not_sequences():
  ev = vos.VOSEvaluator()
  one = _two_object_sequence()
  one[one == 2] = 0
  ev.add_sequence("one", one, _without_void(one))          # 1 object, perfect
  three = _two_object_sequence()
  three[:, 28:30, 40:46] = 3
  ev.add_sequence("three", three, np.where(three == 1, 1, 0))   # 1 of 3 objects found
  out = ev.result()
  assert out["num_objects"] == 4
  assert out["J_mean"] == pytest.approx(50.0)              # (1 + 1 + 0 + 0) / 4
  assert out["per_sequence"]["three"]["J_mean"] == pytest.approx(100 / 3)
  assert out["per_sequence"]["three"]["num_objects"] == 3
  with pytest.raises(ValueError, match="already added"):
    ev.add_sequence("one", one, _without_void(one))


def test_evaluator_without_sequences_or_objects():
  ev = vos.VOSEvaluator()
  with pytest.raises(ValueError, match="add_sequence"):
    ev.result()
  empty = np.zeros((2, 8, 8), np.uint8)
  assert ev.add_sequence("e", empty, empty)["num_objects"] == 0
  with pytest.raises(ValueError, match="no GT object"):
    ev.result()


# ---- DAVIS folders ----


def _write_davis(root, results, sequences, annotations="Annotations_unsupervised"):
  for seq, (gt, pred) in sequences.items():
    davis_format.write_davis_groundtruth(root, seq, gt, annotations=annotations)
    davis_format.write_davis_results(results, seq, pred)


def test_evaluate_davis_folders_round_trip(tmp_path):
  gt_a = _two_object_sequence(num_frames=5)
  gt_b = _two_object_sequence(num_frames=3)
  gt_b[gt_b == 2] = 0
  # Permuted ids in one sequence, one object missing in the other.
  pred_a = np.choose(_without_void(gt_a), [0, 2, 1]).astype(np.uint8)
  pred_b = np.zeros_like(gt_b)
  root, results = tmp_path / "davis", tmp_path / "results"
  _write_davis(root, results, {"a": (gt_a, pred_a), "b": (gt_b, pred_b)})
  out = vos.evaluate_davis_folders(root, results)
  assert out["num_objects"] == 3
  assert out["J_mean"] == pytest.approx(200 / 3)
  assert out["F_mean"] == pytest.approx(200 / 3)
  assert out["per_sequence"]["a"]["J&F"] == pytest.approx(100.0)
  assert out["per_sequence"]["b"]["J&F"] == pytest.approx(0.0)
  # Same numbers as the in-memory evaluator.
  ev = vos.VOSEvaluator()
  ev.add_sequence("a", gt_a, pred_a)
  ev.add_sequence("b", gt_b, pred_b)
  assert ev.result() == out


def test_evaluate_davis_folders_annotation_folders(tmp_path):
  gt = _two_object_sequence()
  root, results = tmp_path / "davis", tmp_path / "results"
  # Only the semi-supervised folder: it is used.
  _write_davis(root, results, {"s": (gt, _without_void(gt))}, annotations="Annotations")
  assert vos.evaluate_davis_folders(root, results)["J&F"] == pytest.approx(100.0)
  # Both folders: the unsupervised one wins (here it has a third object nobody predicted).
  unsup = gt.copy()
  unsup[:, 28:30, 40:46] = 3
  davis_format.write_davis_groundtruth(root, "s", unsup)
  assert vos.evaluate_davis_folders(root, results)["num_objects"] == 3


def test_evaluate_davis_folders_errors(tmp_path):
  gt = _two_object_sequence()
  root, results = tmp_path / "davis", tmp_path / "results"
  with pytest.raises(FileNotFoundError, match="Annotations_unsupervised/480p nor Annotations"):
    vos.evaluate_davis_folders(root, results)
  _write_davis(root, results, {"bike": (gt, _without_void(gt))})
  with pytest.raises(FileNotFoundError, match=r"ImageSets/2017/train\.txt"):
    vos.evaluate_davis_folders(root, results, split="train")

  os.remove(results / "bike" / "00003.png")
  with pytest.raises(FileNotFoundError) as err:
    vos.evaluate_davis_folders(root, results)
  assert str(err.value) == (
      f"{results / 'bike' / '00003.png'} is missing: every frame listed in "
      f"Annotations_unsupervised/480p/bike needs a prediction PNG")

  davis_format.write_palette_png(results / "bike" / "00003.png", np.zeros((32, 47), np.uint8))
  with pytest.raises(ValueError, match="is 47x32 but the annotation .* is 48x32.*nearest"):
    vos.evaluate_davis_folders(root, results)

  Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(results / "bike" / "00003.png")
  with pytest.raises(ValueError, match="'RGB'"):
    vos.evaluate_davis_folders(root, results)

  with open(root / "ImageSets" / "2017" / "val.txt", "a") as f:
    f.write("cows\n")
  davis_format.write_palette_png(results / "bike" / "00003.png", _without_void(gt[3]))
  with pytest.raises(FileNotFoundError, match="'cows' is listed .* no annotation folder"):
    vos.evaluate_davis_folders(root, results)
  davis_format.write_davis_groundtruth(root, "cows", gt)
  with pytest.raises(FileNotFoundError, match="cows is missing: every sequence listed"):
    vos.evaluate_davis_folders(root, results)
