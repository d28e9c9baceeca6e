"""Panoptic quality (PQ, SQ, RQ) with the COCO panopticapi semantics (docs/spec.md §8.1).

Per image, with VOID = ground-truth segment id 0:
- a GT segment and a predicted segment of the same category match when IoU > 0.5, where the union
  leaves out the prediction's pixels on VOID (and nothing else: panopticapi does not remove the
  prediction's overlap with crowd regions from the union);
- crowd GT segments are never matched, and an unmatched crowd segment is not a false negative;
- every other unmatched GT segment is a false negative;
- an unmatched prediction is not a false positive when more than half of its pixels lie on VOID
  plus the same-category crowd region. As in panopticapi, that crowd region is the *last* crowd
  segment of the category listed in the image's GT segments_info; crowd regions of one category
  are not merged (COCO ground truth has at most one per category and image);
- the GT area is the segments_info 'area' when given (as panopticapi does; pixel count otherwise);
  the predicted area is always the pixel count.
Over the data set, per category c: PQ_c = ΣIoU / (TP + ½FP + ½FN), SQ_c = ΣIoU / TP (0 when
TP = 0), RQ_c = TP / (TP + ½FP + ½FN); PQ, SQ, RQ average over the categories with
TP + FP + FN > 0; the _th and _st variants over those with isthing = 1 / 0.

Inputs are validated as panopticapi validates predictions (PNG ids missing from segments_info
and the reverse, unknown categories) and beyond it (duplicate ids; the same checks on ground
truth, except that a GT segment may be listed without pixels, which panopticapi counts as a
false negative). Pure numpy + PIL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pix2seq_d_jax.formats import coco_format
from pix2seq_d_jax.formats.coco_format import PanopticFormatError

SUMMARY_KEYS = ('PQ', 'SQ', 'RQ', 'PQ_th', 'SQ_th', 'RQ_th', 'PQ_st', 'SQ_st', 'RQ_st')


class PanopticEvaluator:
  """Accumulates PQ statistics image by image (in memory); `result()` averages them.

  Example:
    ev = PanopticEvaluator(categories)
    for gt, pred in pairs:
      ev.add(gt.seg_map, gt.segments_info, pred.seg_map, pred.segments_info)
    metrics = ev.result()   # {'PQ': 53.1, ..., 'per_class': {...}}
  """

  def __init__(self, categories: Sequence[Mapping[str, Any]]):
    """Args: categories: COCO category dicts `{'id', 'name', 'isthing'}` (ids, names unique)."""
    self.categories = coco_format.check_categories(categories)
    self._cat_index = {c['id']: k for k, c in enumerate(self.categories)}
    self.reset()

  def reset(self) -> None:
    """Forgets every image added so far."""
    n = len(self.categories)
    self.iou = np.zeros(n, np.float64)
    self.tp = np.zeros(n, np.int64)
    self.fp = np.zeros(n, np.int64)
    self.fn = np.zeros(n, np.int64)
    self.num_images = 0

  def merge(self, other: PanopticEvaluator) -> None:
    """Adds another evaluator's statistics (e.g. from another process) to this one."""
    if [c['id'] for c in other.categories] != [c['id'] for c in self.categories]:
      raise ValueError('merge: the evaluators have different category lists; build both from '
                       'the same categories')
    self.iou += other.iou
    self.tp += other.tp
    self.fp += other.fp
    self.fn += other.fn
    self.num_images += other.num_images

  def add(
      self,
      gt_seg_map: np.ndarray,
      gt_segments_info: Sequence[Mapping[str, Any]],
      pred_seg_map: np.ndarray,
      pred_segments_info: Sequence[Mapping[str, Any]],
      image_id: Any = None,
  ) -> None:
    """Adds one image.

    Args:
      gt_seg_map: int [H, W] ground-truth segment ids, 0 = VOID.
      gt_segments_info: dicts `{'id', 'category_id', 'iscrowd'?, 'area'?}` (iscrowd default 0).
      pred_seg_map: int [H, W] predicted segment ids, 0 = VOID (no prediction).
      pred_segments_info: dicts `{'id', 'category_id'}`; other keys are ignored.
      image_id: the image's name in error messages (default: its position, '#k').
    """
    name = f'#{self.num_images}' if image_id is None else str(image_id)
    self._add(gt_seg_map, gt_segments_info, pred_seg_map, pred_segments_info,
              gt_where=('ground truth', name), pred_where=('prediction', name))

  def add_maps(
      self,
      gt_class_map: np.ndarray,
      gt_id_map: np.ndarray,
      gt_crowd_map: np.ndarray | None,
      pred_class_map: np.ndarray,
      pred_id_map: np.ndarray,
      image_id: Any = None,
  ) -> None:
    """Adds one image given as (class, instance id) maps (see `segments_from_maps`).

    Args:
      gt_class_map: int [H, W], contiguous class index + 1 (0 = void) into `categories`.
      gt_id_map: int [H, W] ≥ 0 instance ids.
      gt_crowd_map: bool [H, W] crowd pixels, or None.
      pred_class_map: int [H, W], like gt_class_map.
      pred_id_map: int [H, W], like gt_id_map.
      image_id: the image's name in error messages.
    """
    gt_seg, gt_info = coco_format.segments_from_maps(gt_class_map, gt_id_map, self.categories,
                                                     gt_crowd_map)
    pred_seg, pred_info = coco_format.segments_from_maps(pred_class_map, pred_id_map,
                                                         self.categories)
    self.add(gt_seg, gt_info, pred_seg, pred_info, image_id=image_id)

  def _add(self, gt_seg_map, gt_segments_info, pred_seg_map, pred_segments_info, *, gt_where,
           pred_where) -> None:
    gt_seg_map = np.asarray(gt_seg_map)
    pred_seg_map = np.asarray(pred_seg_map)
    if gt_seg_map.shape != pred_seg_map.shape:
      raise PanopticFormatError(
          f'{pred_where[0]}: image {pred_where[1]} is {pred_seg_map.shape} but its ground truth '
          f'is {gt_seg_map.shape}; predict at the ground-truth size (resize with nearest)')
    cat_ids = self._cat_index.keys()
    gt_ids, gt_index, gt_counts = coco_format.index_segments(
        gt_seg_map, gt_segments_info, cat_ids, source=gt_where[0], image=gt_where[1],
        require_all_painted=False)
    pred_ids, pred_index, pred_counts = coco_format.index_segments(
        pred_seg_map, pred_segments_info, cat_ids, source=pred_where[0], image=pred_where[1])

    ng, npred = gt_ids.size, pred_ids.size
    # Entry 0 of both id lists is VOID; the cat index −1 keeps it out of every comparison.
    gt_cat = np.array([-1] + [self._cat_index[s['category_id']] for s in gt_segments_info])
    gt_crowd = np.array([False] + [s.get('iscrowd', 0) == 1 for s in gt_segments_info])
    gt_area = np.zeros(ng, np.float64)
    for k, s in enumerate(gt_segments_info):
      area = s.get('area')
      if area is None:
        gt_area[k + 1] = gt_counts[k + 1]
      elif isinstance(area, (int, float, np.number)) and not isinstance(area, bool) and area >= 0:
        gt_area[k + 1] = area
      else:
        raise PanopticFormatError(f"{gt_where[0]}: segment {s['id']} of image {gt_where[1]} has "
                                  f'area {area!r}; give a pixel count or leave it out')
    pred_cat = np.array([-1] + [self._cat_index[s['category_id']] for s in pred_segments_info])
    pred_area = pred_counts.astype(np.float64)

    inter = np.bincount((gt_index * npred + pred_index).ravel(),
                        minlength=ng * npred).reshape(ng, npred)
    on_void = inter[0].astype(np.float64)
    # Row-major order walks pairs by GT then prediction, as panopticapi does, so the IoU sums
    # are added in the same order.
    candidate = ((inter > 0) & (gt_cat[:, None] == pred_cat[None, :]) & (gt_cat[:, None] >= 0)
                 & ~gt_crowd[:, None])
    gs, ps = np.nonzero(candidate)
    gt_matched = np.zeros(ng, bool)
    pred_matched = np.zeros(npred, bool)
    for g, p in zip(gs, ps):
      union = pred_area[p] + gt_area[g] - inter[g, p] - on_void[p]
      iou = inter[g, p] / union
      if iou > 0.5:
        c = gt_cat[g]
        self.tp[c] += 1
        self.iou[c] += iou
        gt_matched[g] = True
        pred_matched[p] = True

    crowd_of_category = {}
    for g in range(1, ng):
      if gt_matched[g]:
        continue
      if gt_crowd[g]:
        crowd_of_category[gt_cat[g]] = g  # the last one listed wins, as in panopticapi
        continue
      self.fn[gt_cat[g]] += 1

    for p in range(1, npred):
      if pred_matched[p]:
        continue
      c = pred_cat[p]
      ignored = on_void[p]
      if c in crowd_of_category:
        ignored += inter[crowd_of_category[c], p]
      if ignored / pred_area[p] > 0.5:
        continue
      self.fp[c] += 1
    self.num_images += 1

  def result(self) -> dict[str, Any]:
    """Averages the statistics of the images added so far.

    Returns:
      {'PQ', 'SQ', 'RQ', 'PQ_th', 'SQ_th', 'RQ_th', 'PQ_st', 'SQ_st', 'RQ_st'}: floats in percent
      (0–100), 0.0 where no category of the group is counted; 'n', 'n_th', 'n_st': categories
      counted (TP + FP + FN > 0); 'per_class': {name: {'PQ', 'SQ', 'RQ' (percent, 0.0 for an
      uncounted category), 'TP', 'FP', 'FN' (ints), 'isthing' (bool)}} for every category, in the
      categories' order.
    """
    per_class = {}
    sums = {'': [0.0, 0.0, 0.0, 0], '_th': [0.0, 0.0, 0.0, 0], '_st': [0.0, 0.0, 0.0, 0]}
    for k, cat in enumerate(self.categories):
      tp, fp, fn, iou = int(self.tp[k]), int(self.fp[k]), int(self.fn[k]), float(self.iou[k])
      isthing = cat['isthing'] == 1
      if tp + fp + fn == 0:
        pq = sq = rq = 0.0
      else:
        denom = tp + 0.5 * fp + 0.5 * fn
        pq, sq, rq = iou / denom, (iou / tp if tp else 0.0), tp / denom
        for group in ('', '_th' if isthing else '_st'):
          acc = sums[group]
          acc[0] += pq
          acc[1] += sq
          acc[2] += rq
          acc[3] += 1
      per_class[cat['name']] = {'PQ': 100 * pq, 'SQ': 100 * sq, 'RQ': 100 * rq,
                                'TP': tp, 'FP': fp, 'FN': fn, 'isthing': isthing}
    out: dict[str, Any] = {}
    for group, (pq, sq, rq, n) in sums.items():
      out['PQ' + group] = 100 * pq / n if n else 0.0
      out['SQ' + group] = 100 * sq / n if n else 0.0
      out['RQ' + group] = 100 * rq / n if n else 0.0
    out['n'], out['n_th'], out['n_st'] = sums[''][3], sums['_th'][3], sums['_st'][3]
    out['per_class'] = per_class
    return out


def evaluate_files(
    gt_json: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    pred_json: str | os.PathLike[str],
    pred_dir: str | os.PathLike[str],
) -> dict[str, Any]:
  """Scores a COCO panoptic prediction folder against a ground-truth folder.

  Predictions are paired with GT annotations by image_id; categories come from the GT JSON (a
  'categories' list in the prediction JSON is ignored, as panopticapi does).

  Args:
    gt_json: GT panoptic JSON (images, annotations, categories).
    gt_dir: folder of the GT PNGs.
    pred_json: prediction JSON (annotations; categories optional).
    pred_dir: folder of the predicted PNGs.

  Returns:
    The `PanopticEvaluator.result()` dict.
  """
  gt_data, gt_folder = coco_format.load_coco_panoptic(gt_json, gt_dir)
  _, pred_folder = coco_format.load_coco_panoptic(pred_json, pred_dir, require_categories=False)
  gt_ids = gt_folder.by_image_id
  for ann in pred_folder.annotations:
    if ann['image_id'] not in gt_ids:
      raise PanopticFormatError(
          f"{pred_json}: image {ann['image_id']} ({ann['file_name']}) is not in the ground "
          f'truth {gt_json}; predict only the ground-truth images')
  evaluator = PanopticEvaluator(gt_data['categories'])
  for gt_ann in gt_folder.annotations:
    pred_ann = pred_folder.by_image_id.get(gt_ann['image_id'])
    if pred_ann is None:
      raise PanopticFormatError(
          f"{pred_json}: no prediction for image {gt_ann['image_id']} ({gt_ann['file_name']}) "
          f'of {gt_json}; predict every ground-truth image')
    gt_seg = gt_folder.seg_map(gt_ann)
    pred_seg = pred_folder.seg_map(pred_ann)
    evaluator._add(
        gt_seg, gt_ann['segments_info'], pred_seg, pred_ann['segments_info'],
        gt_where=(str(gt_json), gt_folder.describe(gt_ann)),
        pred_where=(str(pred_json), pred_folder.describe(pred_ann)))
  return evaluator.result()


def format_table(result: Mapping[str, Any]) -> str:
  """Formats a result dict as a per-class table plus the All/Things/Stuff summary, for logs."""
  per_class = result.get('per_class', {})
  width = max([len('category')] + [len(str(name)) for name in per_class])
  head = (f"{'category':<{width}} | {'PQ':>6} {'SQ':>6} {'RQ':>6} | "
          f"{'TP':>6} {'FP':>6} {'FN':>6} | kind")
  lines = [head, '-' * len(head)]
  for name, r in per_class.items():
    kind = 'thing' if r['isthing'] else 'stuff'
    if r['TP'] + r['FP'] + r['FN'] == 0:
      scores = f"{'-':>6} {'-':>6} {'-':>6}"  # absent everywhere: not averaged
    else:
      scores = f"{r['PQ']:6.1f} {r['SQ']:6.1f} {r['RQ']:6.1f}"
    lines.append(f"{name:<{width}} | {scores} | {r['TP']:6d} {r['FP']:6d} {r['FN']:6d} | {kind}")
  lines.append('-' * len(head))
  for label, suffix, n_key in (('All', '', 'n'), ('Things', '_th', 'n_th'),
                               ('Stuff', '_st', 'n_st')):
    lines.append(f"{label:<{width}} | {result['PQ' + suffix]:6.1f} {result['SQ' + suffix]:6.1f} "
                 f"{result['RQ' + suffix]:6.1f} | n = {result[n_key]}")
  return '\n'.join(lines)
