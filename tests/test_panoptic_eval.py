"""Tests of panoptic quality: one hand-computed case per rule, then a cross-check.

The hand cases use 1-row images so the pixel counts can be read off the arrays. Segment maps are
given directly (GT id 0 = VOID) with their segments_info.
"""

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from pix2seq_d_jax.evaluation import panoptic
from pix2seq_d_jax.formats import coco_format as cf

CATS = [
    {'id': 1, 'name': 'person', 'isthing': 1},
    {'id': 3, 'name': 'car', 'isthing': 1},
    {'id': 7, 'name': 'road', 'isthing': 0},
    {'id': 9, 'name': 'sky', 'isthing': 0},
]
NAME = {c['id']: c['name'] for c in CATS}


def seg(ids, cat, crowd=()):
  """A 1-row segment map and its segments_info; `cat` maps segment id → COCO category."""
  m = np.array([ids])
  info = [{'id': i, 'category_id': c, 'iscrowd': int(i in crowd)} for i, c in cat.items()]
  return m, info


def evaluate(gt, pred, categories=CATS):
  ev = panoptic.PanopticEvaluator(categories)
  ev.add(*gt, *pred)
  return ev.result()


def assert_close(a, b, tol=1e-9):
  """Result dicts equal, floats to `tol` (summation order may differ)."""
  assert set(a) == set(b)
  for key in panoptic.SUMMARY_KEYS:
    assert a[key] == pytest.approx(b[key], abs=tol), key
  assert (a['n'], a['n_th'], a['n_st']) == (b['n'], b['n_th'], b['n_st'])
  assert list(a['per_class']) == list(b['per_class'])
  for name, ra in a['per_class'].items():
    rb = b['per_class'][name]
    assert {k: ra[k] for k in ('TP', 'FP', 'FN', 'isthing')} == {
        k: rb[k] for k in ('TP', 'FP', 'FN', 'isthing')}, name
    for key in ('PQ', 'SQ', 'RQ'):
      assert ra[key] == pytest.approx(rb[key], abs=tol), (name, key)


def counts(result, cat_id):
  r = result['per_class'][NAME[cat_id]]
  return r['TP'], r['FP'], r['FN']


def test_iou_exactly_half_is_not_a_match():
  gt = seg([1, 1, 1, 1, 2, 2, 2, 2], {1: 1, 2: 7})
  pred = seg([5, 5, 6, 6, 6, 6, 6, 6], {5: 1, 6: 7})
  r = evaluate(gt, pred)
  # person: |∩| = 2, |∪| = 4 → IoU 0.5, no match; the prediction lies on no VOID → FP.
  assert counts(r, 1) == (0, 1, 1)
  assert r['per_class']['person']['PQ'] == 0.0
  assert r['per_class']['person']['SQ'] == 0.0  # no TP: SQ is 0 by convention
  # road: |∩| = 4, |∪| = 6 → a match with IoU 2/3.
  assert counts(r, 7) == (1, 0, 0)
  assert r['per_class']['road']['PQ'] == pytest.approx(200 / 3)


def test_iou_just_above_half_is_a_match():
  gt = seg([1, 1, 1, 1, 1, 2, 2, 2], {1: 1, 2: 7})
  pred = seg([5, 5, 5, 6, 6, 6, 6, 6], {5: 1, 6: 7})
  r = evaluate(gt, pred)
  assert counts(r, 1) == (1, 0, 0)  # IoU 3/5
  assert r['per_class']['person']['SQ'] == pytest.approx(60.0)
  assert r['per_class']['person']['RQ'] == 100.0


def test_void_is_excluded_from_the_union():
  gt = seg([1, 1, 1, 0, 0, 0, 2, 2], {1: 1, 2: 7})
  pred = seg([5, 5, 5, 5, 5, 5, 6, 6], {5: 1, 6: 7})
  r = evaluate(gt, pred)
  # Counting VOID, IoU would be 3/6 (no match); without it 3/3.
  assert counts(r, 1) == (1, 0, 0)
  assert r['per_class']['person']['PQ'] == 100.0


def test_crowd_is_never_matched_and_unmatched_crowd_is_not_fn():
  gt = seg([4, 4, 4, 4, 2, 2, 2, 2], {4: 3, 2: 7}, crowd={4})
  pred = seg([5, 5, 5, 5, 6, 6, 6, 6], {5: 3, 6: 7})
  r = evaluate(gt, pred)
  # The prediction equals the crowd region: no TP, not an FP (all on same-category crowd).
  assert counts(r, 3) == (0, 0, 0)
  assert r['n'] == 1 and r['n_th'] == 0 and r['PQ_th'] == 0.0
  # Nothing predicted on the crowd region: still no FN.
  r = evaluate(gt, seg([0, 0, 0, 0, 6, 6, 6, 6], {6: 7}))
  assert counts(r, 3) == (0, 0, 0)


def test_unmatched_prediction_mostly_on_void_is_not_fp():
  gt = seg([0, 0, 0, 2, 2, 2, 2, 2], {2: 7})
  # 3 of 4 pixels on VOID.
  r = evaluate(gt, seg([5, 5, 5, 5, 6, 6, 6, 6], {5: 1, 6: 7}))
  assert counts(r, 1) == (0, 0, 0)
  assert counts(r, 7) == (1, 0, 0)


def test_unmatched_prediction_half_on_void_is_fp():
  gt = seg([0, 0, 0, 2, 2, 2, 2, 2], {2: 7})
  # 2 of 4 pixels on VOID: exactly 50 % is not "more than half".
  r = evaluate(gt, seg([0, 5, 5, 5, 5, 6, 6, 6], {5: 1, 6: 7}))
  assert counts(r, 1) == (0, 1, 0)
  # 1 of 4.
  r = evaluate(gt, seg([0, 0, 5, 5, 5, 5, 6, 6], {5: 1, 6: 7}))
  assert counts(r, 1) == (0, 1, 0)


def test_unmatched_prediction_mostly_on_same_category_crowd_is_not_fp():
  gt = seg([4, 4, 4, 4, 2, 2, 2, 2], {4: 3, 2: 7}, crowd={4})
  pred = seg([0, 5, 5, 5, 5, 5, 6, 6], {5: 3, 6: 7})  # 3 of 5 on the car crowd
  assert counts(evaluate(gt, pred), 3) == (0, 0, 0)
  pred = seg([0, 0, 5, 5, 5, 5, 6, 6], {5: 3, 6: 7})  # 2 of 4
  assert counts(evaluate(gt, pred), 3) == (0, 1, 0)


def test_void_and_same_category_crowd_add_up():
  gt = seg([0, 0, 4, 4, 2, 2, 2, 2, 2, 2], {4: 3, 2: 7}, crowd={4})
  # 1 on VOID + 2 on crowd = 3 of 5: neither alone is more than half.
  pred = seg([0, 5, 5, 5, 5, 5, 6, 6, 6, 6], {5: 3, 6: 7})
  assert counts(evaluate(gt, pred), 3) == (0, 0, 0)


def test_other_category_crowd_does_not_excuse():
  gt = seg([4, 4, 4, 4, 2, 2, 2, 2], {4: 1, 2: 7}, crowd={4})  # a person crowd
  pred = seg([5, 5, 5, 5, 5, 6, 6, 6], {5: 3, 6: 7})  # a car on it
  r = evaluate(gt, pred)
  assert counts(r, 3) == (0, 1, 0)
  assert counts(r, 1) == (0, 0, 0)


def test_crowd_region_is_the_last_listed_crowd_segment_of_the_category():
  # panopticapi keeps one crowd segment per category: the last one listed. COCO ground truth
  # has at most one per category and image, so only hand-made data can tell.
  gt_map = np.array([[4, 4, 4, 8, 8, 8, 2, 2]])
  info = [{'id': 4, 'category_id': 3, 'iscrowd': 1}, {'id': 8, 'category_id': 3, 'iscrowd': 1},
          {'id': 2, 'category_id': 7, 'iscrowd': 0}]
  on_first = seg([5, 5, 5, 0, 0, 0, 6, 6], {5: 3, 6: 7})
  on_last = seg([0, 0, 0, 5, 5, 5, 6, 6], {5: 3, 6: 7})
  assert counts(evaluate((gt_map, info), on_first), 3) == (0, 1, 0)
  assert counts(evaluate((gt_map, info), on_last), 3) == (0, 0, 0)
  swapped = [info[1], info[0], info[2]]
  assert counts(evaluate((gt_map, swapped), on_first), 3) == (0, 0, 0)


def test_crowd_overlap_stays_in_the_union():
  # panopticapi removes only the VOID overlap from the union: 3 / (5 + 3 − 3) = 0.6 matches,
  # and would be 3/4 if the 1 pixel on the car crowd were also removed.
  gt = seg([1, 1, 1, 4, 2, 2, 2, 2], {1: 3, 4: 3, 2: 7}, crowd={4})
  pred = seg([5, 5, 5, 5, 5, 6, 6, 6], {5: 3, 6: 7})
  r = evaluate(gt, pred)
  assert counts(r, 3) == (1, 0, 0)
  assert r['per_class']['car']['SQ'] == pytest.approx(60.0)


def test_gt_area_from_segments_info_as_panopticapi():
  gt_map = np.array([[1, 1, 1, 2, 2, 2, 2, 2]])
  pred = seg([5, 5, 5, 5, 6, 6, 6, 6], {5: 1, 6: 7})
  info = [{'id': 1, 'category_id': 1, 'iscrowd': 0}, {'id': 2, 'category_id': 7, 'iscrowd': 0}]
  r = evaluate((gt_map, info), pred)
  assert r['per_class']['person']['SQ'] == pytest.approx(75.0)  # 3 / (4 + 3 − 3)
  info[0]['area'] = 4
  r = evaluate((gt_map, info), pred)
  assert r['per_class']['person']['SQ'] == pytest.approx(60.0)  # 3 / (4 + 4 − 3)
  info[0]['area'] = 5
  r = evaluate((gt_map, info), pred)
  assert counts(r, 1) == (0, 1, 1)  # 3 / (4 + 5 − 3) = 0.5: no match


def test_gt_segment_without_pixels_is_fn():
  gt_map = np.array([[2, 2, 2, 2]])
  info = [{'id': 2, 'category_id': 7, 'iscrowd': 0}, {'id': 3, 'category_id': 1, 'iscrowd': 0,
                                                       'area': 10}]
  r = evaluate((gt_map, info), seg([6, 6, 6, 6], {6: 7}))
  assert counts(r, 1) == (0, 0, 1)


def test_things_stuff_split_and_absent_categories_are_not_averaged():
  gt = seg([1, 1, 1, 1, 1, 2, 2, 2, 2, 2], {1: 1, 2: 7})
  pred = seg([5, 5, 5, 5, 6, 6, 6, 6, 6, 6], {5: 1, 6: 7})
  r = evaluate(gt, pred)
  pq_person, pq_road = 4 / 5 * 100, 5 / 6 * 100
  assert r['PQ_th'] == pytest.approx(pq_person)
  assert r['PQ_st'] == pytest.approx(pq_road)
  # car and sky never occur: the averages are over 2 categories, not 4.
  assert r['PQ'] == pytest.approx((pq_person + pq_road) / 2)
  assert (r['n'], r['n_th'], r['n_st']) == (2, 1, 1)
  assert r['per_class']['car'] == {'PQ': 0.0, 'SQ': 0.0, 'RQ': 0.0, 'TP': 0, 'FP': 0, 'FN': 0,
                                   'isthing': True}
  assert r['per_class']['sky']['isthing'] is False


def test_pq_sq_rq_formulas_over_several_images():
  ev = panoptic.PanopticEvaluator(CATS)
  # image 1: person TP (IoU 3/4) and an FP person; image 2: a missed person (FN).
  ev.add(*seg([1, 1, 1, 1, 2, 2, 2, 2], {1: 1, 2: 7}),
         *seg([5, 5, 5, 6, 6, 6, 7, 7], {5: 1, 6: 7, 7: 1}))
  ev.add(*seg([3, 3, 2, 2], {3: 1, 2: 7}), *seg([6, 6, 6, 6], {6: 7}))
  r = ev.result()
  p = r['per_class']['person']
  assert (p['TP'], p['FP'], p['FN']) == (1, 1, 1)
  assert p['SQ'] == pytest.approx(75.0)
  assert p['RQ'] == pytest.approx(100 * 1 / 2)
  assert p['PQ'] == pytest.approx(100 * 0.75 / 2)
  assert ev.num_images == 2


def test_no_thing_or_stuff_category_counted_gives_zero():
  r = evaluate(seg([2, 2], {2: 7}), seg([6, 6], {6: 7}))
  assert (r['PQ_th'], r['SQ_th'], r['RQ_th'], r['n_th']) == (0.0, 0.0, 0.0, 0)
  assert r['PQ_st'] == 100.0 and r['PQ'] == 100.0
  empty = panoptic.PanopticEvaluator(CATS).result()
  assert all(empty[k] == 0.0 for k in panoptic.SUMMARY_KEYS) and empty['n'] == 0


def test_perfect_prediction_scores_100_and_result_is_json():
  rng = np.random.default_rng(3)
  ev = panoptic.PanopticEvaluator(CATS)
  for _ in range(3):
    cls = rng.integers(0, 5, (16, 20))
    ids = rng.integers(1, 4, (16, 20))
    ev.add_maps(cls, ids, None, cls, ids)
  r = ev.result()
  for key in panoptic.SUMMARY_KEYS:
    assert r[key] == pytest.approx(100.0), key
  assert r['n'] == 4
  assert set(r) == set(panoptic.SUMMARY_KEYS) | {'n', 'n_th', 'n_st', 'per_class'}
  assert json.loads(json.dumps(r)) == r


def test_add_maps_passes_the_crowd_map():
  cls = np.array([[2, 2, 2, 3, 3]])
  ids = np.array([[1, 1, 1, 1, 1]])
  crowd = np.array([[True, True, True, False, False]])
  ev = panoptic.PanopticEvaluator(CATS)
  ev.add_maps(cls, ids, crowd, cls, ids)
  r = ev.result()
  # The predicted car lies on the car crowd region: neither TP nor FP nor FN.
  assert counts(r, 3) == (0, 0, 0)
  assert counts(r, 7) == (1, 0, 0)


def test_merge_equals_single_evaluator():
  rng = np.random.default_rng(4)
  pairs = []
  for _ in range(4):
    gc, gi = rng.integers(0, 5, (10, 12)), rng.integers(1, 3, (10, 12))
    noise = rng.random(gc.shape) < 0.2
    pairs.append((gc, gi, np.where(noise, 1, gc), gi))
  one, a, b = (panoptic.PanopticEvaluator(CATS) for _ in range(3))
  for k, (gc, gi, pc, pi) in enumerate(pairs):
    one.add_maps(gc, gi, None, pc, pi)
    (a if k % 2 else b).add_maps(gc, gi, None, pc, pi)
  a.merge(b)
  assert_close(a.result(), one.result())
  assert one.result()['PQ'] > 10  # the case is not trivially all zeros
  assert a.num_images == 4


def test_format_table():
  gt = seg([1, 1, 1, 1, 2, 2, 2, 2], {1: 1, 2: 7})
  r = evaluate(gt, seg([5, 5, 5, 6, 6, 6, 6, 6], {5: 1, 6: 7}))
  table = panoptic.format_table(r)
  lines = table.splitlines()
  person = next(l for l in lines if l.startswith('person'))
  assert person.split() == ['person', '|', '75.0', '75.0', '100.0', '|', '1', '0', '0', '|',
                            'thing']
  road = next(l for l in lines if l.startswith('road'))
  assert road.split()[-1] == 'stuff' and '80.0' in road
  car = next(l for l in lines if l.startswith('car'))
  assert car.split()[2:5] == ['-', '-', '-']
  all_line = next(l for l in lines if l.startswith('All'))
  assert f"{r['PQ']:.1f}" in all_line and 'n = 2' in all_line


def test_prediction_validation_errors():
  gt = seg([1, 1, 2, 2], {1: 1, 2: 7})

  def err(pred_map, pred_info):
    with pytest.raises(cf.PanopticFormatError) as e:
      ev = panoptic.PanopticEvaluator(CATS)
      ev.add(*gt, np.array([pred_map]), pred_info, image_id=42)
    return str(e.value)

  assert err([5, 5, 6, 6], [{'id': 5, 'category_id': 1}]) == (
      'prediction: image 42 has segment id(s) 6 in its PNG but not in segments_info; list '
      'every non-zero PNG id in segments_info (id 0 is VOID)')
  assert 'lists segment id(s) 7 in segments_info that do not occur in its PNG' in err(
      [5, 5, 0, 0], [{'id': 5, 'category_id': 1}, {'id': 7, 'category_id': 7}])
  assert err([5, 5, 0, 0], [{'id': 5, 'category_id': 999}]) == (
      'prediction: segment 5 of image 42 has category 999, which is not in categories '
      '(valid: 1, 3, 7, 9)')
  assert 'twice' in err([5, 5, 0, 0], [{'id': 5, 'category_id': 1}, {'id': 5,
                                                                      'category_id': 1}])
  with pytest.raises(cf.PanopticFormatError, match=r'predict at the ground-truth size'):
    panoptic.PanopticEvaluator(CATS).add(*gt, np.zeros((2, 2), int), [])
  with pytest.raises(cf.PanopticFormatError, match='ground truth: image #0 has segment id'):
    panoptic.PanopticEvaluator(CATS).add(gt[0], gt[1][:1], *seg([5, 5, 6, 6], {5: 1, 6: 7}))


def _write(folder, entries, categories):
  with cf.CocoPanopticWriter(folder, categories) as w:
    for image_id, name, seg_map, info in entries:
      w.add(image_id, name, seg_map, info)
  return folder / 'panoptic.json', folder / 'panoptic'


def test_evaluate_files_matches_in_memory_and_checks_image_ids(tmp_path):
  rng = np.random.default_rng(5)
  gt_entries, pred_entries, ev = [], [], panoptic.PanopticEvaluator(CATS)
  for k in range(3):
    gc, gi = rng.integers(0, 5, (10, 14)), rng.integers(1, 4, (10, 14))
    pc, pi = gc.copy(), gi.copy()
    pc[rng.random(gc.shape) < 0.3] = 1
    crowd = rng.random(gc.shape) < 0.1
    gt_entries.append((k, f'{k}.jpg', *cf.segments_from_maps(gc, gi, CATS, crowd)))
    pred_entries.append((k, f'{k}.jpg', *cf.segments_from_maps(pc, pi, CATS)))
    ev.add_maps(gc, gi, crowd, pc, pi)
  gt = _write(tmp_path / 'gt', gt_entries, CATS)
  pred = _write(tmp_path / 'pred', pred_entries[::-1], CATS)  # order must not matter
  result = panoptic.evaluate_files(*gt, *pred)
  assert_close(result, ev.result())
  assert 10 < result['PQ'] < 100

  missing = _write(tmp_path / 'missing', pred_entries[:2], CATS)
  with pytest.raises(cf.PanopticFormatError,
                     match=r'missing/panoptic.json: no prediction for image 2 \(2.png\)'):
    panoptic.evaluate_files(*gt, *missing)
  extra = _write(tmp_path / 'extra', pred_entries + [(99, 'x.jpg', *pred_entries[0][2:])], CATS)
  with pytest.raises(cf.PanopticFormatError, match=r'image 99 \(x.png\) is not in the ground'):
    panoptic.evaluate_files(*gt, *extra)


def _random_scene(rng, h, w, n_cls):
  """Random GT (class, id, crowd) maps with stuff bands, things, crowd and VOID rectangles."""
  things = [k + 1 for k, c in enumerate(CROSS_CATS[:n_cls]) if c['isthing']]
  stuff = [k + 1 for k, c in enumerate(CROSS_CATS[:n_cls]) if not c['isthing']]
  cls = np.zeros((h, w), np.int64)
  ids = np.zeros((h, w), np.int64)
  crowd = np.zeros((h, w), bool)
  cuts = np.sort(rng.choice(np.arange(1, h), rng.integers(1, 4), replace=False))
  for a, b in zip(np.r_[0, cuts], np.r_[cuts, h]):
    cls[a:b] = rng.choice(stuff)
    ids[a:b] = rng.integers(1, 50)

  def rect():
    y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
    return slice(y, y + rng.integers(2, h // 2)), slice(x, x + rng.integers(2, w // 2))

  for _ in range(rng.integers(3, 9)):
    r = rect()
    cls[r], ids[r], crowd[r] = rng.choice(things), rng.integers(1, 12), False
  for _ in range(rng.integers(0, 3)):  # crowd regions, sometimes two of one category
    r = rect()
    cls[r], ids[r], crowd[r] = rng.choice(things[:2]), rng.integers(12, 20), True
  for _ in range(rng.integers(0, 4)):
    r = rect()
    cls[r], ids[r], crowd[r] = 0, 0, False
  r = rect()  # at least one non-crowd thing, so both groups are counted
  cls[r], ids[r], crowd[r] = rng.choice(things), 30, False
  assert cls.max() <= n_cls
  return cls, ids, crowd


def _perturb(rng, cls, ids, n_cls):
  """A prediction near the GT: shifted, relabelled, merged, with blobs and noise."""
  pc, pi = cls.copy(), ids.copy()
  if rng.random() < 0.5:
    pc = np.roll(pc, rng.integers(-2, 3), axis=int(rng.integers(0, 2)))
    pi = np.roll(pi, rng.integers(-2, 3), axis=int(rng.integers(0, 2)))
  for _ in range(rng.integers(0, 4)):  # relabel one instance
    i = rng.choice(np.unique(pi))
    pc[pi == i] = rng.integers(0, n_cls + 1)
  for _ in range(rng.integers(0, 3)):  # merge two ids
    a, b = rng.choice(np.unique(pi), 2)
    pi[pi == a] = b
  h, w = cls.shape
  for _ in range(rng.integers(0, 6)):  # blobs, some of them VOID
    y, x = rng.integers(0, h), rng.integers(0, w)
    r = slice(y, y + rng.integers(1, h // 2)), slice(x, x + rng.integers(1, w // 2))
    pc[r], pi[r] = rng.integers(0, n_cls + 1), rng.integers(1, 40)
  noise = rng.random(cls.shape) < rng.uniform(0, 0.2)
  pc[noise] = rng.integers(0, n_cls + 1, noise.sum())
  pi[noise] = rng.integers(1, 40, noise.sum())
  return pc, pi


CROSS_CATS = [
    {'id': 1, 'name': 'person', 'isthing': 1},
    {'id': 3, 'name': 'car', 'isthing': 1},
    {'id': 4, 'name': 'bicycle', 'isthing': 1},
    {'id': 7, 'name': 'road', 'isthing': 0},
    {'id': 21, 'name': 'sky', 'isthing': 0},
    {'id': 22, 'name': 'grass', 'isthing': 0},
    {'id': 30, 'name': 'never', 'isthing': 0},  # in no image: must not be averaged
]


@pytest.mark.parametrize('seed', range(40))
def test_agrees_with_cityscapesscripts(seed, tmp_path):
  """PQ/SQ/RQ (all, things, stuff) and per-class values equal cityscapesscripts' to 1e-9.

  `evalPanopticSemanticLabeling` carries panopticapi's evaluation code. On valid input nothing
  differs: same matching, the same crowd region per category (the last one listed), the same
  order of IoU sums. Differences are outside this test's input: where it divides by zero (a
  group without counted categories) we report 0.0; where it silently accepts GT ids missing
  from segments_info, unknown GT categories, duplicate ids or predictions for unknown images,
  we raise. Its values are fractions, ours percent.
  """
  from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as eps

  rng = np.random.default_rng(seed)
  n_cls = len(CROSS_CATS) - 1  # the last category is never drawn
  gt_entries, pred_entries = [], []
  ev = panoptic.PanopticEvaluator(CROSS_CATS)
  for k in range(3):
    h, w = int(rng.integers(20, 48)), int(rng.integers(20, 48))
    cls, ids, crowd = _random_scene(rng, h, w, n_cls)
    pc, pi = _perturb(rng, cls, ids, n_cls)
    gt_entries.append((1000 + k, f'{seed}_{k}.jpg', *cf.segments_from_maps(cls, ids, CROSS_CATS,
                                                                          crowd)))
    pred_entries.append((1000 + k, f'{seed}_{k}.jpg',
                         *cf.segments_from_maps(pc, pi, CROSS_CATS)))
    ev.add_maps(cls, ids, crowd, pc, pi)
  gt_json, gt_dir = _write(tmp_path / 'gt', gt_entries, CROSS_CATS)
  pred_json, pred_dir = _write(tmp_path / 'pred', pred_entries, CROSS_CATS)

  ours = panoptic.evaluate_files(gt_json, gt_dir, pred_json, pred_dir)
  assert ev.result() == ours

  gt_data = json.loads(gt_json.read_text())
  pred_data = json.loads(pred_json.read_text())
  cats = {c['id']: c for c in gt_data['categories']}
  pairs = list(zip(gt_data['annotations'], copy.deepcopy(pred_data['annotations'])))
  with contextlib.redirect_stdout(io.StringIO()):
    stat = eps.pq_compute_single_core(0, pairs, str(gt_dir), str(pred_dir), cats)
  theirs = eps.average_pq(stat, cats)

  for group, suffix in (('All', ''), ('Things', '_th'), ('Stuff', '_st')):
    for metric in ('pq', 'sq', 'rq'):
      assert abs(ours[metric.upper() + suffix] - 100 * theirs[group][metric]) < 1e-9, (group,
                                                                                      metric)
    assert ours['n' + suffix] == theirs[group]['n']
  assert ours['n'] < len(CROSS_CATS)
  for cat_id, values in theirs['per_class'].items():
    mine = ours['per_class'][cats[cat_id]['name']]
    for metric in ('pq', 'sq', 'rq'):
      assert abs(mine[metric.upper()] - 100 * values[metric]) < 1e-9, (cat_id, metric)
    st = stat[cat_id]
    assert (mine['TP'], mine['FP'], mine['FN']) == (st.tp, st.fp, st.fn)
