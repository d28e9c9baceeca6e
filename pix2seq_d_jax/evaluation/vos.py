"""DAVIS-2017 unsupervised video object segmentation metrics: J, F and J&F.

A numpy/scipy reimplementation of the official `davis2017-evaluation` protocol
(docs/spec.md §7.3-7.4), so its numbers can be compared with published ones:

- J (region similarity): IoU of a GT object mask and a predicted mask over the non-void pixels;
  1 when the union is empty.
- F (boundary measure): one-pixel boundaries (a pixel is on the boundary when it differs from its
  right, lower or lower-right neighbour; the last row compares to the right only, the last column
  downwards only); a boundary pixel counts as matched when the other mask's boundary lies within
  a disk of radius r = ceil(0.008 * image diagonal) pixels (8 px at 854x480). Void pixels are
  cleared from both masks before the boundaries are taken.
- Unsupervised matching: per sequence, J and F of every (predicted id, GT object) pair on every
  frame; the Hungarian assignment maximises the mean over frames of (J + F) / 2. The GT objects
  are the ids 1..n with n the largest id of the FIRST annotation frame; predicted ids run over
  1..max id and must not exceed 20.
- Per object and metric: mean (nanmean over frames), recall (fraction of frames above 0.5) and
  decay (mean of the first quarter of the frames minus mean of the last quarter).
- Reported: the averages of those over all objects of all sequences, in percent, and
  J&F = (J_mean + F_mean) / 2.

The boundary dilation is done exactly but not with an image dilation: a boundary pixel is matched
when its Euclidean distance to the nearest boundary pixel of the other mask is at most r, which is
the same set as a dilation by the disk {dy^2 + dx^2 <= r^2}; a k-d tree makes that cheap for all
(prediction, object) pairs of a frame at once.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
from scipy import optimize
from scipy import spatial

from pix2seq_d_jax.formats import davis_format

__all__ = [
    "DEFAULT_BOUND_TH",
    "MAX_PROPOSALS",
    "VOID_ID",
    "VOSEvaluator",
    "boundary_map",
    "boundary_measure",
    "evaluate_davis_folders",
    "match_sequence",
    "region_similarity",
    "statistics",
    "tolerance_radius",
]

VOID_ID = 255
MAX_PROPOSALS = 20
DEFAULT_BOUND_TH = 0.008
RESULT_KEYS = ("J&F", "J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay")


# ----------------------------------------------------------------------------------------------
# Per-frame measures.
# ----------------------------------------------------------------------------------------------


def _check_masks(name: str, arr: Any, shape: tuple[int, ...] | None) -> np.ndarray:
  out = np.asarray(arr)
  if out.ndim != 3:
    raise ValueError(f"{name} has shape {out.shape}; it must be [T, H, W] (for one frame, add a "
                     f"leading axis: mask[None])")
  if shape is not None and out.shape != shape:
    raise ValueError(f"{name} has shape {out.shape} but gt has shape {shape}: pass masks of the "
                     f"same frames at the same resolution")
  return out.astype(bool)


def region_similarity(gt: np.ndarray, pred: np.ndarray,
                      void: np.ndarray | None = None) -> np.ndarray:
  """Region similarity J: IoU of binary masks, per frame, ignoring void pixels.

  Args:
    gt: bool [T, H, W] ground-truth object mask.
    pred: bool [T, H, W] predicted mask.
    void: optional bool [T, H, W]; True pixels count in neither intersection nor union.

  Returns:
    float64 [T] in [0, 1]; 1 where the union (outside void) is empty.
  """
  gt = _check_masks("gt", gt, None)
  pred = _check_masks("pred", pred, gt.shape)
  keep = np.ones_like(gt) if void is None else ~_check_masks("void", void, gt.shape)
  inter = np.count_nonzero(gt & pred & keep, axis=(1, 2))
  union = np.count_nonzero((gt | pred) & keep, axis=(1, 2))
  return _iou(inter, union)


def _iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
  inter = np.asarray(inter, dtype=np.float64)
  union = np.asarray(union, dtype=np.float64)
  # An object absent from both GT and prediction is segmented perfectly.
  return np.divide(inter, union, out=np.ones_like(inter), where=union > 0)


def tolerance_radius(bound_th: float, height: int, width: int) -> int:
  """Boundary tolerance in pixels.

  Args:
    bound_th: a fraction (< 1) of the image diagonal, or (>= 1) a radius in pixels.
    height, width: frame size.

  Returns:
    r = ceil(bound_th * sqrt(H^2 + W^2)) for a fraction (8 at 854x480 with 0.008), else bound_th.
  """
  if not bound_th > 0:
    raise ValueError(f"bound_th={bound_th} must be positive: a fraction of the image diagonal "
                     f"(< 1, the DAVIS default is {DEFAULT_BOUND_TH}) or a radius in pixels")
  if bound_th >= 1:
    if bound_th != int(bound_th):
      raise ValueError(f"bound_th={bound_th} is read as a radius in pixels and must be a whole "
                       f"number; pass e.g. {math.ceil(bound_th)}, or a fraction < 1 of the "
                       f"image diagonal")
    return int(bound_th)
  # np.linalg.norm of the shape, as the official code computes the diagonal, so that the ceil
  # lands on the same integer even at ties.
  return int(np.ceil(bound_th * np.linalg.norm((height, width))))


def _boundary_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Boundary pixels of every label of a label map at once.

  A pixel is on the boundary of label k when exactly one of it and one of its right, lower or
  lower-right neighbours has label k. Edge padding makes a pixel its own neighbour past the
  image, which gives the official rule at the last row (right neighbour only), the last column
  (lower neighbour only) and the last pixel (never a boundary).

  Args:
    labels: int [H, W] labels; 0 is "no object" and gets no boundary.

  Returns:
    (label int64 [N], yx int64 [N, 2]): one row per (label, boundary pixel); a pixel between two
    objects appears once for each.
  """
  h, w = labels.shape
  padded = np.pad(labels.astype(np.int64), ((0, 1), (0, 1)), mode="edge")
  here = padded[:h, :w]
  codes = []
  for dy, dx in ((0, 1), (1, 0), (1, 1)):
    other = padded[dy:dy + h, dx:dx + w]
    ys, xs = np.nonzero(here != other)
    for lab in (here[ys, xs], other[ys, xs]):
      keep = lab > 0
      codes.append((lab[keep] * h + ys[keep]) * w + xs[keep])
  codes = np.unique(np.concatenate(codes))
  yx = np.stack([(codes // w) % h, codes % w], axis=1)
  return codes // (h * w), yx


def boundary_map(mask: np.ndarray) -> np.ndarray:
  """One-pixel-wide boundary of a binary mask, as DAVIS defines it.

  Args:
    mask: bool [H, W].

  Returns:
    bool [H, W]: pixels that differ from their right, lower or lower-right neighbour (the last
    row is compared to the right only, the last column downwards only). The boundary sits half a
    pixel towards the origin from the true contour; a mask that covers the whole image has none.
  """
  mask = np.asarray(mask, dtype=bool)
  if mask.ndim != 2:
    raise ValueError(f"mask has shape {mask.shape}; boundary_map takes one frame [H, W]")
  _, yx = _boundary_pixels(mask.astype(np.int64))
  out = np.zeros(mask.shape, dtype=bool)
  out[yx[:, 0], yx[:, 1]] = True
  return out


def _f_measure(n_pred: np.ndarray, n_gt: np.ndarray, pred_hits: np.ndarray,
               gt_hits: np.ndarray) -> np.ndarray:
  """F from boundary pixel counts, with the DAVIS conventions for empty boundaries.

  Args:
    n_pred, n_gt: boundary sizes of the predicted and GT masks (broadcastable int arrays).
    pred_hits: predicted boundary pixels within the tolerance of the GT boundary.
    gt_hits: GT boundary pixels within the tolerance of the predicted boundary.

  Returns:
    float64 F in [0, 1]: no boundary on either side scores 1, a boundary on one side only 0.
  """
  n_pred, n_gt, pred_hits, gt_hits = np.broadcast_arrays(
      *(np.asarray(a, dtype=np.float64) for a in (n_pred, n_gt, pred_hits, gt_hits)))
  precision = np.divide(pred_hits, n_pred, out=np.ones_like(n_pred), where=n_pred > 0)
  recall = np.divide(gt_hits, n_gt, out=np.ones_like(n_gt), where=n_gt > 0)
  # With one boundary empty the official code sets (P, R) to (1, 0) or (0, 1): F = 0 either way.
  one_sided = (n_pred > 0) != (n_gt > 0)
  precision = np.where(one_sided, n_pred == 0, precision)
  recall = np.where(one_sided, n_gt == 0, recall)
  total = precision + recall
  return np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)


def _pairwise_frame(pred_labels: np.ndarray, n_pred: int, gt_labels: np.ndarray, n_gt: int,
                    keep: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
  """J and F of every (predicted label, GT label) pair on one frame.

  Args:
    pred_labels: int [H, W] predicted labels in 0..n_pred (0 = background).
    n_pred: number of predicted labels (rows of the output).
    gt_labels: int [H, W] GT labels in 0..n_gt (0 = background; void and ignored ids are 0).
    n_gt: number of GT labels (columns of the output).
    keep: bool [H, W], False on void pixels.
    radius: boundary tolerance in pixels.

  Returns:
    (j, f): float64 [n_pred, n_gt] each.
  """
  # J from one joint histogram of the non-void pixels: the masks of an id map are disjoint.
  cols = n_gt + 1
  joint = np.bincount((pred_labels[keep] * cols + gt_labels[keep]).ravel(),
                      minlength=(n_pred + 1) * cols).reshape(n_pred + 1, cols)
  inter = joint[1:, 1:]
  area_pred = joint[1:, :].sum(axis=1)
  area_gt = joint[:, 1:].sum(axis=0)
  j = _iou(inter, area_pred[:, None] + area_gt[None, :] - inter)

  # F: void pixels are cleared from both masks before the boundaries are taken.
  pred_lab, pred_yx = _boundary_pixels(np.where(keep, pred_labels, 0))
  gt_lab, gt_yx = _boundary_pixels(np.where(keep, gt_labels, 0))
  size_pred = np.bincount(pred_lab, minlength=n_pred + 1)[1:]
  size_gt = np.bincount(gt_lab, minlength=n_gt + 1)[1:]
  pred_hits = np.zeros((n_pred + 1, n_gt + 1), np.int64)
  gt_hits = np.zeros((n_pred + 1, n_gt + 1), np.int64)
  if len(pred_lab) and len(gt_lab):
    # Squared distances are integers, so any bound in (r, sqrt(r^2 + 1)) keeps exactly the pairs
    # with dy^2 + dx^2 <= r^2 whether the comparison is strict or not.
    bound = math.sqrt(radius * radius + 0.5)
    pairs = spatial.cKDTree(pred_yx).sparse_distance_matrix(
        spatial.cKDTree(gt_yx), bound, output_type="ndarray")
    i, k = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)
    # A predicted boundary pixel is a hit for GT object g once, however many g pixels are near.
    hit = np.unique(i * cols + gt_lab[k])
    np.add.at(pred_hits, (pred_lab[hit // cols], hit % cols), 1)
    rows = n_pred + 1
    hit = np.unique(k * rows + pred_lab[i])
    np.add.at(gt_hits, (hit % rows, gt_lab[hit // rows]), 1)
  f = _f_measure(size_pred[:, None], size_gt[None, :], pred_hits[1:, 1:], gt_hits[1:, 1:])
  return j, f


def boundary_measure(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
                     bound_th: float = DEFAULT_BOUND_TH) -> np.ndarray:
  """Boundary measure F of binary masks, per frame.

  Args:
    gt: bool [T, H, W] ground-truth object mask.
    pred: bool [T, H, W] predicted mask.
    void: optional bool [T, H, W]; void pixels are removed from both masks before their
      boundaries are taken (so a mask edge against void is a boundary), as the official code does.
    bound_th: tolerance as a fraction (< 1) of the image diagonal or (>= 1) whole pixels.

  Returns:
    float64 [T] in [0, 1]: F = 2PR / (P + R) of boundary precision P and recall R at tolerance
    r = `tolerance_radius(bound_th, H, W)`. Neither mask with a boundary scores 1; only one
    with a boundary scores 0.
  """
  gt = _check_masks("gt", gt, None)
  pred = _check_masks("pred", pred, gt.shape)
  keep = np.ones_like(gt) if void is None else ~_check_masks("void", void, gt.shape)
  radius = tolerance_radius(bound_th, *gt.shape[1:])
  out = np.zeros(gt.shape[0], dtype=np.float64)
  for t in range(gt.shape[0]):
    _, f = _pairwise_frame(pred[t].astype(np.int64), 1, gt[t].astype(np.int64), 1, keep[t],
                           radius)
    out[t] = f[0, 0]
  return out


# ----------------------------------------------------------------------------------------------
# Statistics over frames.
# ----------------------------------------------------------------------------------------------


def statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
  """Mean, recall and decay of one object's per-frame J or F.

  Args:
    per_frame: float [T] values in [0, 1] (NaN allowed), T >= 1.

  Returns:
    (mean, recall, decay), fractions: mean = nanmean; recall = fraction of all T frames with a
    value > 0.5 (NaN frames count as misses); decay = nanmean of the first quarter bin minus
    nanmean of the last. The bins follow the official edges e = round(linspace(1, T, 5)) - 1,
    halves rounded up, bin i = frames e[i]..e[i+1] inclusive, so neighbouring bins share a frame
    (T = 7: first bin frames 0-2, last bin 5-6). The official code stores the edges as uint8,
    which wraps for T > 256; here they do not wrap (DAVIS sequences have at most 104 frames).
  """
  values = np.asarray(per_frame, dtype=np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(f"per_frame has shape {values.shape}; statistics needs a non-empty [T] "
                     f"vector of per-frame values")
  n = values.size
  # The 1e-10 makes np.round (half to even) round halves up, as the official edges do.
  edges = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64)
  first = values[edges[0]:edges[1] + 1]
  last = values[edges[3]:edges[4] + 1]
  with warnings.catch_warnings():
    # All-NaN input gives NaN statistics, as in the official code, without a warning.
    warnings.simplefilter("ignore", category=RuntimeWarning)
    mean = float(np.nanmean(values))
    recall = float(np.mean(values > 0.5))
    decay = float(np.nanmean(first) - np.nanmean(last))
  return mean, recall, decay


# ----------------------------------------------------------------------------------------------
# Sequence matching and the evaluator.
# ----------------------------------------------------------------------------------------------


def _check_id_maps(name: str, seq: str, arr: Any) -> np.ndarray:
  out = np.asarray(arr)
  if out.ndim != 3 or out.shape[0] == 0:
    raise ValueError(f"sequence {seq!r}: {name} has shape {out.shape}; it must be a non-empty "
                     f"[T, H, W] id map")
  if out.dtype != bool and not np.issubdtype(out.dtype, np.integer):
    raise ValueError(f"sequence {seq!r}: {name} has dtype {out.dtype}; ids must be integers")
  out = out.astype(np.int64)
  if out.min() < 0:
    raise ValueError(f"sequence {seq!r}: {name} holds the negative id {int(out.min())}; ids are "
                     f"0 (background) or positive")
  return out


def match_sequence(gt_ids: np.ndarray, pred_ids: np.ndarray, *, name: str = "<sequence>",
                   bound_th: float = DEFAULT_BOUND_TH, max_proposals: int = MAX_PROPOSALS
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Matches predicted ids to GT objects of one sequence and scores them (unsupervised protocol).

  Args:
    gt_ids: uint8/int [T, H, W] GT ids: 0 background, 255 void, objects 1..n where n is the
      largest non-void id of the FIRST frame (larger ids in later frames count as background).
    pred_ids: int [T, H, W] predicted ids: 0 background, proposals 1..max (at most
      `max_proposals`); an id that never occurs is an empty mask.
    name: the sequence name, for error messages.
    bound_th: boundary tolerance, see `boundary_measure`.
    max_proposals: largest predicted id allowed (20 in DAVIS).

  Returns:
    (j, f, assignment): j and f are float64 [n, T] per-frame J and F of GT object k + 1 against
    its assigned proposal; assignment is int64 [n], the predicted id given to each GT object by
    the Hungarian assignment that maximises the sum over objects of mean_t (J + F) / 2. When
    there are fewer proposals than objects, objects may get ids above the largest predicted id:
    those are empty masks.

  Raises:
    ValueError: shapes differ, ids are negative or a predicted id exceeds `max_proposals`.
  """
  gt = _check_id_maps("gt_ids", name, gt_ids)
  pred = _check_id_maps("pred_ids", name, pred_ids)
  if gt.shape != pred.shape:
    raise ValueError(f"sequence {name!r}: predictions have shape {pred.shape} but the ground "
                     f"truth has {gt.shape} [T, H, W]: predict every annotated frame at the "
                     f"annotation resolution")
  first = gt[0]
  n_gt = int(first[first != VOID_ID].max(initial=0))
  n_pred = int(pred.max())
  if n_pred > max_proposals:
    raise ValueError(
        f"sequence {name!r}: predictions use id {n_pred}, but the unsupervised protocol allows "
        f"at most {max_proposals} proposals with ids 1..{max_proposals}: keep the "
        f"{max_proposals} best objects and renumber them 1..{max_proposals}")
  num_frames = gt.shape[0]
  # Missing proposals are empty masks, so every GT object can be assigned one.
  n_rows = max(n_pred, n_gt)
  radius = tolerance_radius(bound_th, *gt.shape[1:])
  j_all = np.zeros((n_rows, n_gt, num_frames))
  f_all = np.zeros((n_rows, n_gt, num_frames))
  if n_gt == 0:
    return np.zeros((0, num_frames)), np.zeros((0, num_frames)), np.zeros(0, dtype=np.int64)
  for t in range(num_frames):
    keep = gt[t] != VOID_ID
    gt_labels = np.where(gt[t] <= n_gt, gt[t], 0)
    j_all[..., t], f_all[..., t] = _pairwise_frame(pred[t], n_rows, gt_labels, n_gt, keep,
                                                   radius)
  score = (j_all.mean(axis=2) + f_all.mean(axis=2)) / 2
  rows, cols = optimize.linear_sum_assignment(-score)
  order = np.argsort(cols)
  rows, cols = rows[order], cols[order]
  return j_all[rows, cols], f_all[rows, cols], rows.astype(np.int64) + 1


def _percent(value: float) -> float:
  return float(100.0 * value)


class VOSEvaluator:
  """Accumulates sequences and reports the DAVIS unsupervised metrics.

  Usage:
    ev = VOSEvaluator()
    ev.add_sequence('bike-packing', gt_ids, pred_ids)   # [T, H, W] id maps
    metrics = ev.result()   # {'J&F': 71.2, 'J_mean': ..., 'per_sequence': {...}, ...}
  """

  def __init__(self, bound_th: float = DEFAULT_BOUND_TH, max_proposals: int = MAX_PROPOSALS):
    """Args: see `match_sequence`."""
    self.bound_th = bound_th
    self.max_proposals = max_proposals
    self.reset()

  def reset(self) -> None:
    """Forgets every added sequence."""
    self._stats: dict[str, np.ndarray] = {}  # name -> float64 [n_objects, 6]

  def add_sequence(self, name: str, gt_ids: np.ndarray, pred_ids: np.ndarray) -> dict[str, Any]:
    """Scores one sequence.

    Args:
      name: sequence name; each name may be added once.
      gt_ids: uint8/int [T, H, W] GT ids (0 background, 255 void, objects 1..n from frame 0).
      pred_ids: int [T, H, W] predicted ids (0 background, proposals 1..20).

    Returns:
      This sequence's summary: {'J&F', 'J_mean', 'F_mean' (percent, None without objects),
      'num_objects'}.
    """
    if name in self._stats:
      raise ValueError(f"sequence {name!r} was already added: each sequence is scored once; "
                       f"call reset() to start a new evaluation")
    j, f, _ = match_sequence(gt_ids, pred_ids, name=name, bound_th=self.bound_th,
                             max_proposals=self.max_proposals)
    rows = [statistics(j_obj) + statistics(f_obj) for j_obj, f_obj in zip(j, f)]
    self._stats[name] = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return self._summary(self._stats[name])

  @staticmethod
  def _summary(stats: np.ndarray) -> dict[str, Any]:
    if len(stats) == 0:
      return {"J&F": None, "J_mean": None, "F_mean": None, "num_objects": 0}
    j_mean, f_mean = stats[:, 0].mean(), stats[:, 3].mean()
    return {"J&F": _percent((j_mean + f_mean) / 2), "J_mean": _percent(j_mean),
            "F_mean": _percent(f_mean), "num_objects": int(len(stats))}

  def result(self) -> dict[str, Any]:
    """The metrics over every object of every added sequence.

    Returns:
      {'J&F', 'J_mean', 'J_recall', 'J_decay', 'F_mean', 'F_recall', 'F_decay'}: floats in
      percent (decay may be negative), each the average over all objects, and
      J&F = (J_mean + F_mean) / 2; 'per_sequence': {name: {'J&F', 'J_mean', 'F_mean',
      'num_objects'}}; 'num_objects': int.
    """
    if not self._stats:
      raise ValueError("no sequence was added: call add_sequence(name, gt_ids, pred_ids) first")
    stats = np.concatenate(list(self._stats.values()), axis=0)
    if len(stats) == 0:
      raise ValueError(f"the {len(self._stats)} added sequences have no GT object in their first "
                       f"frame, so there is nothing to score: check that the annotations hold "
                       f"object ids 1..n in frame 0")
    means = stats.mean(axis=0)
    out: dict[str, Any] = {"J&F": _percent((means[0] + means[3]) / 2)}
    for i, key in enumerate(("J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay")):
      out[key] = _percent(means[i])
    out["per_sequence"] = {name: self._summary(s) for name, s in self._stats.items()}
    out["num_objects"] = int(len(stats))
    return out


# ----------------------------------------------------------------------------------------------
# Folders in the DAVIS layout.
# ----------------------------------------------------------------------------------------------


def _annotation_dir(gt_dir: str) -> tuple[str, str]:
  """(absolute, relative) path of the annotations to evaluate against."""
  for folder in davis_format.ANNOTATION_FOLDERS:
    rel = os.path.join(folder, davis_format.RESOLUTION)
    if os.path.isdir(os.path.join(gt_dir, rel)):
      return os.path.join(gt_dir, rel), rel
  wanted = " nor ".join(f"{f}/{davis_format.RESOLUTION}" for f in davis_format.ANNOTATION_FOLDERS)
  raise FileNotFoundError(f"{gt_dir} holds neither {wanted}: pass the DAVIS root (the folder "
                          f"that holds ImageSets/ and the annotations) as the GT folder")


def _read_split(gt_dir: str, split: str) -> list[str]:
  rel = os.path.join("ImageSets", davis_format.IMAGESETS_YEAR, f"{split}.txt")
  path = os.path.join(gt_dir, rel)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing: the DAVIS root must list the sequences of split "
                            f"{split!r} in {rel}, one name a line")
  with open(path, encoding="utf-8") as f:
    names = [line.strip() for line in f if line.strip()]
  if not names:
    raise ValueError(f"{path} lists no sequence: add one sequence name a line")
  # A name listed twice would count its objects twice.
  return list(dict.fromkeys(names))


def _read_predictions(pred_dir: str, seq: str, frames: list[str], gt_rel: str,
                      size: tuple[int, int]) -> np.ndarray:
  seq_dir = os.path.join(pred_dir, seq)
  if not os.path.isdir(seq_dir):
    raise FileNotFoundError(f"{seq_dir} is missing: every sequence listed in the split file needs "
                            f"a folder of prediction PNGs ({seq}/{frames[0]}.png, ...)")
  out = np.zeros((len(frames), *size), dtype=np.uint8)
  for t, frame in enumerate(frames):
    path = os.path.join(seq_dir, f"{frame}.png")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} is missing: every frame listed in {gt_rel}/{seq} needs a "
                              f"prediction PNG")
    ids = davis_format.read_id_png(path)
    if ids.shape != size:
      raise ValueError(
          f"{path} is {ids.shape[1]}x{ids.shape[0]} but the annotation "
          f"{gt_rel}/{seq}/{frame}.png is {size[1]}x{size[0]}: resize the predicted ids to the "
          f"annotation size with nearest-neighbour interpolation before saving")
    out[t] = ids
  return out


def evaluate_davis_folders(gt_dir: str | os.PathLike, pred_dir: str | os.PathLike,
                           split: str = "val", *,
                           bound_th: float = DEFAULT_BOUND_TH) -> dict[str, Any]:
  """Scores a DAVIS results folder against a DAVIS root (official unsupervised protocol).

  Args:
    gt_dir: DAVIS root with `Annotations_unsupervised/480p/SEQ/*.png` or `Annotations/480p/SEQ/
      *.png` (the unsupervised annotations win when both exist) and `ImageSets/2017/<split>.txt`.
    pred_dir: results root with `SEQ/<frame>.png` palette or grayscale PNGs of instance ids, one
      for every annotated frame, at the annotation size; extra PNGs are ignored.
    split: which ImageSets list to evaluate.
    bound_th: boundary tolerance, see `boundary_measure`.

  Returns:
    `VOSEvaluator.result()`: 'J&F', 'J_mean', 'J_recall', 'J_decay', 'F_mean', 'F_recall',
    'F_decay' in percent, 'per_sequence' and 'num_objects'.
  """
  gt_dir, pred_dir = os.fspath(gt_dir), os.fspath(pred_dir)
  ann_dir, ann_rel = _annotation_dir(gt_dir)
  evaluator = VOSEvaluator(bound_th=bound_th)
  for seq in _read_split(gt_dir, split):
    seq_dir = os.path.join(ann_dir, seq)
    if not os.path.isdir(seq_dir):
      raise FileNotFoundError(f"{seq_dir} is missing: sequence {seq!r} is listed in "
                              f"ImageSets/{davis_format.IMAGESETS_YEAR}/{split}.txt but has no "
                              f"annotation folder")
    frames, gt = davis_format.read_davis_sequence(seq_dir)
    pred = _read_predictions(pred_dir, seq, frames, ann_rel, gt.shape[1:])
    evaluator.add_sequence(seq, gt, pred)
  return evaluator.result()
