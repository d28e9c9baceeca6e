"""The video evaluation loop (docs/spec.md §7.3-7.4): stream the evaluation clips, write
DAVIS-format predictions and ground truth, score them with the DAVIS-2017 unsupervised protocol
(J&F), and write `metrics.json` and pictures (docs/contracts.md §2).

Panoptic clips -> DAVIS objects. DAVIS scores foreground objects only, so one rule turns a
(class, id) clip into a DAVIS id clip, for the ground truth and the predictions alike:

- An object is a segment (id > 0) whose class is not a stuff class (`isthing` = 0): the thing
  instances of a panoptic data set, and every segment of a data set whose objects carry class 0
  (the reference labels DAVIS objects so). Stuff regions and void become background 0.
- Ground-truth crowd pixels become 255 (DAVIS void: ignored by J and F).
- Predictions: in each frame an id takes the majority class of its pixels
  (`predict_video.postprocess_frames`), so a predicted id whose majority class is stuff becomes
  0 there.
  At most 20 proposals are allowed (the protocol's limit): when a clip holds more object ids,
  the 20 with the most pixels over the clip are kept and the rest become 0.
- Object ids are renumbered 1..n in order of first appearance (by frame, then raster order).
  The protocol counts the ground-truth objects of the first frame (ids 1..n of frame 0), so
  objects that enter a clip later are written (with larger ids) but not scored, as in DAVIS.

Every process samples its share of the clips; process 0 gathers them and alone writes files
(pix2seq_d_jax/eval_loop.py).
"""

import functools
import logging
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from pix2seq_d_jax import compile_options
from pix2seq_d_jax import eval_loop
from pix2seq_d_jax import predict_video
from pix2seq_d_jax import sampling
from pix2seq_d_jax.evaluation import visualize
from pix2seq_d_jax.evaluation import vos
from pix2seq_d_jax.formats import coco_format
from pix2seq_d_jax.formats import davis_format

VIDEO_KEYS = vos.RESULT_KEYS


def make_video_fn(config, model):
  """The jitted clip sampler + per-frame post-processing (one compile per clip shape and
  static setting)."""
  settings = sampling.SampleSettings.from_config(config)
  out_size = tuple(config.dataset.max_original_size)
  image_size = tuple(config.model.image_size)
  mask_size = tuple(config.model.mask_size)

  @functools.partial(jax.jit,
                     static_argnames=('steps_first', 'steps_later', 'decode', 'use_gt_cond'),
                     compiler_options=compile_options.sampler())
  def run(variables, frames, ids, labels, orig_size, unpadded_size, rng, td, *, steps_first,
          steps_later, decode, use_gt_cond):
    gt = None
    if use_gt_cond:
      gt = predict_video.label_to_mask_grid(
          labels, orig_size, unpadded_size, image_size=image_size, mask_size=mask_size,
          max_instances=settings.max_instances)
    masks = predict_video.sample_video(
        variables, frames, ids, rng, td, model=model, settings=settings,
        steps_first=steps_first, steps_later=steps_later, decode=decode, gt_cond=gt)
    b, t = masks.shape[:2]
    cls, inst = predict_video.postprocess_frames(
        masks.reshape(b * t, *masks.shape[2:]), jnp.repeat(orig_size, t, axis=0),
        jnp.repeat(unpadded_size, t, axis=0), image_size=image_size, out_size=out_size,
        num_classes=settings.num_classes, max_instances=settings.max_instances)
    return cls.reshape(b, t, *out_size), inst.reshape(b, t, *out_size)
  return run


def stuff_classes(categories) -> np.ndarray:
  """Label-map class values (category index + 1) of the stuff categories, int64 [S]."""
  return np.array([k + 1 for k, c in enumerate(categories) if not c.get('isthing', 1)], np.int64)


def _renumber(ids: np.ndarray, objects: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
  """Object ids -> 1..n by first appearance (frame, then raster order); others -> 0.

  Args:
    ids: int [T, H, W]; objects: bool [T, H, W] pixels that belong to an object;
    keep: optional bool [max id + 1], ids to keep (others become 0).

  Returns:
    int64 [T, H, W].
  """
  ids = ids.astype(np.int64)
  objects = objects & (ids > 0)
  if keep is not None:
    objects &= keep[ids]
  flat_ids = ids.reshape(-1)[objects.reshape(-1)]
  lut = np.zeros(int(ids.max(initial=0)) + 1, np.int64)
  if flat_ids.size:
    uniq, first = np.unique(flat_ids, return_index=True)
    lut[uniq[np.argsort(first, kind='stable')]] = np.arange(1, len(uniq) + 1)
  return np.where(objects, lut[ids], 0)


def davis_ground_truth(label: np.ndarray, stuff: np.ndarray) -> np.ndarray:
  """A panoptic clip's ground truth -> DAVIS ids (see the module doc).

  Args:
    label: int [T, H, W, 3] (class, id, crowd) at the original size.
    stuff: int [S] stuff class values.

  Returns:
    uint8 [T, H, W]: 0 background, objects 1..n by first appearance, 255 crowd (void).
  """
  cls, ids, crowd = label[..., 0], label[..., 1], label[..., 2] > 0
  out = _renumber(ids, ~np.isin(cls, stuff) & ~crowd)
  if out.max(initial=0) >= vos.VOID_ID:
    raise ValueError(f'A ground-truth clip holds {out.max()} objects; DAVIS ids stop at 254 '
                     '(255 is void). Split the clip or lower the number of objects.')
  return np.where(crowd, vos.VOID_ID, out).astype(np.uint8)


def davis_predictions(cls: np.ndarray, ids: np.ndarray, stuff: np.ndarray,
                      max_proposals: int = vos.MAX_PROPOSALS) -> np.ndarray:
  """Predicted (class, id) frames of a clip -> DAVIS proposals (see the module doc).

  Args:
    cls, ids: int [T, H, W] per-frame voted classes and predicted ids.
    stuff: int [S] stuff class values.
    max_proposals: most proposals kept (the largest over the clip; ties: the smaller id).

  Returns:
    uint8 [T, H, W]: 0 background, proposals 1..m (m <= max_proposals) by first appearance.
  """
  ids = ids.astype(np.int64)
  objects = (ids > 0) & ~np.isin(cls, stuff)
  areas = np.bincount(ids[objects], minlength=int(ids.max(initial=0)) + 1)
  keep = None
  if np.count_nonzero(areas) > max_proposals:
    order = np.lexsort((np.arange(len(areas)), -areas))   # largest first, then smaller id
    keep = np.zeros(len(areas), bool)
    keep[order[:max_proposals]] = True
  return _renumber(ids, objects, keep).astype(np.uint8)


def sequence_name(clip_id: int, source=None) -> str:
  """DAVIS folder name of a clip: the source's own name when it offers one
  (`source.sequence_name(clip_id)`, e.g. 'bike-packing'), else the stable id, zero-padded."""
  name_fn = getattr(source, 'sequence_name', None)
  if name_fn is not None:
    return str(name_fn(int(clip_id)))
  return f'{int(clip_id):010d}'


def _original_frames(canvases: np.ndarray, unpadded, orig) -> np.ndarray:
  return np.stack([sampling.original_image(c, unpadded, orig) for c in canvases])


def evaluate_video(config, variables, source, model, mesh, out_dir, *, step: int,
                   steps: int | None = None, steps_later: int | None = None,
                   td: float | None = None, decode: str | None = None,
                   use_gt_cond: bool | None = None, fn=None) -> tuple[dict, list]:
  """Streams the evaluation clips and scores them with the DAVIS unsupervised J&F.

  Writes (process 0) under out_dir: predictions/SEQ/00000.png ... (palette PNGs of DAVIS ids),
  groundtruth/Annotations_unsupervised/480p/SEQ/*.png and groundtruth/ImageSets/2017/val.txt,
  vis/SEQ.png (rows image / ground truth / prediction, one column per frame) and vis/SEQ.gif for
  the first config.eval.num_visualizations clips, and metrics.json. Earlier predictions and
  ground truth in out_dir are replaced.

  Args:
    config, variables, source, model, mesh: as for `eval_panoptic.evaluate_panoptic`.
    out_dir: e.g. WORKDIR/eval/step_N.
    step: the training step, recorded in the metrics.
    steps, steps_later, td, decode, use_gt_cond: override config.eval.steps (frame 0),
      .steps_later, .td, .decode and .use_gt_cond (condition on the ground truth of the
      previous frames instead of the model's own predictions).
    fn: the sampler, `make_video_fn(config, model)` by default; any callable with its signature
      that returns (class, id) int [B, T, Hmax, Wmax] can stand in (e.g. to score given maps).

  Returns:
    (metrics, panels): 'J&F', 'J_mean', 'J_recall', 'J_decay', 'F_mean', 'F_recall', 'F_decay'
    in percent (None when no clip has an object in its first frame), 'per_sequence',
    'num_objects', 'num_sequences', the sampling settings and 'eval_seconds'; and the frame
    strips (for TensorBoard). ({}, []) on processes other than 0.
  """
  opts = sampling.EvalOptions.from_config(config, steps=steps, steps_later=steps_later, td=td,
                                          decode=decode, use_gt_cond=use_gt_cond)
  fn = fn or make_video_fn(config, model)
  rng = jax.random.PRNGKey(config.seed)
  sample = lambda batch: fn(variables, batch['image'], batch['id'].astype(jnp.int32),
                            batch['label_orig'], batch['orig_size'], batch['unpadded_size'], rng,
                            jnp.float32(opts.td), steps_first=opts.steps,
                            steps_later=opts.steps_later, decode=opts.decode,
                            use_gt_cond=opts.use_gt_cond)
  out_dir = pathlib.Path(out_dir)
  main = jax.process_index() == 0
  pred_root, gt_root = out_dir / 'predictions', out_dir / 'groundtruth'
  if main:
    for folder in (pred_root, gt_root):
      if folder.exists():
        shutil.rmtree(folder)
    pred_root.mkdir(parents=True)
  writer = _ClipWriter(out_dir, source, config.eval.num_visualizations)
  start = time.time()
  for ex in eval_loop.sampled_examples(config, source, mesh, sample, ('num_frames',)):
    writer.add(ex)
  elapsed = time.time() - start
  if not main:
    return {}, []
  if writer.first_frame_objects:
    metrics = vos.evaluate_davis_folders(gt_root, pred_root, 'val')
  else:
    logging.warning('eval step %d: no clip has an object in its first frame, so J&F is '
                    'undefined (reported as null).', step)
    metrics = {k: None for k in VIDEO_KEYS}
    metrics.update({'per_sequence': {}, 'num_objects': 0})
  metrics.update({'step': step, 'sampling_steps': opts.steps,
                  'sampling_steps_later': opts.steps_later, 'td': opts.td,
                  'decode': opts.decode, 'use_gt_cond': opts.use_gt_cond,
                  'num_sequences': len(writer.names), 'eval_seconds': round(elapsed, 2)})
  coco_format.write_json(out_dir / 'metrics.json', metrics, indent=2, sort_keys=True)
  if metrics['J&F'] is not None:
    logging.info('eval step %d (%d clips, %d objects, N=%d/%d, td=%g, %s%s): J&F %.2f | '
                 'J %.2f | F %.2f', step, len(writer.names), metrics['num_objects'],
                 opts.steps, opts.steps_later, opts.td, opts.decode,
                 ', GT conditioning' if opts.use_gt_cond else '', metrics['J&F'],
                 metrics['J_mean'], metrics['F_mean'])
  return metrics, writer.panels


class _ClipWriter:
  """Writes each evaluated clip in the DAVIS format (ground truth and predictions) and the
  pictures of the first `num_visualizations` clips (process 0)."""

  def __init__(self, out_dir: pathlib.Path, source, num_visualizations: int):
    self.out_dir = out_dir
    self.source = source
    self.categories = source.categories
    self.stuff = stuff_classes(self.categories)
    self.num_visualizations = num_visualizations
    self.names, self.panels, self.first_frame_objects = [], [], 0

  def add(self, ex: dict) -> None:
    """One clip of `eval_loop.sampled_examples`."""
    h, w = ex['orig_size']
    t = int(ex['num_frames'])
    seq = sequence_name(ex['id'], self.source)
    label = ex['label_orig'][:t, :h, :w]
    pred_cls, pred_ids = ex['class'][:t, :h, :w], ex['id_map'][:t, :h, :w]
    gt_davis = davis_ground_truth(label, self.stuff)
    self.first_frame_objects += int(gt_davis[0][gt_davis[0] != vos.VOID_ID].max(initial=0))
    davis_format.write_davis_groundtruth(self.out_dir / 'groundtruth', seq, gt_davis,
                                         split='val')
    davis_format.write_davis_results(self.out_dir / 'predictions', seq,
                                     davis_predictions(pred_cls, pred_ids, self.stuff))
    self.names.append(seq)
    if len(self.panels) < self.num_visualizations and 'image' in ex:
      frames = _original_frames(ex['image'][:t], ex['unpadded_size'], (h, w))
      strip = visualize.render_frame_strip(frames, label[..., 0], label[..., 1], pred_cls,
                                           pred_ids, self.categories)
      visualize.save_png(self.out_dir / 'vis' / f'{seq}.png', strip)
      visualize.save_gif(self.out_dir / 'vis' / f'{seq}.gif', [
          visualize.render_panel(frames[k], label[k, ..., 0], label[k, ..., 1], pred_cls[k],
                                 pred_ids[k], self.categories) for k in range(t)])
      self.panels.append(strip)
