"""Evaluation runs: sample the evaluation split, write predictions and ground truth in the standard
formats, score them, and write `metrics.json` and pictures (DESIGN.md "Contracts").

Every process runs the jitted sampler on its shard; results are gathered to process 0, which
alone writes files.
"""

import functools
import json
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from pix2seq_d_jax import predict
from pix2seq_d_jax import sharding
from pix2seq_d_jax.data import pipeline
from pix2seq_d_jax.evaluation import coco_format
from pix2seq_d_jax.evaluation import panoptic
from pix2seq_d_jax.evaluation import visualize


def make_panoptic_fn(config, model, mesh):
  """The jitted sampler + post-processing for evaluation batches (one compile per steps/decode)."""
  settings = predict.SampleSettings.from_config(config)
  out_size = tuple(config.dataset.max_original_size)

  @functools.partial(jax.jit, static_argnames=('steps', 'decode'))
  def run(variables, images, ids, orig_size, unpadded_size, rng, td, *, steps, decode):
    masks = predict.sample(variables, images, ids, rng, td, model=model, settings=settings,
                           steps=steps, decode=decode)
    return predict.postprocess(
        masks, orig_size, unpadded_size, image_size=tuple(config.model.image_size),
        out_size=out_size, num_classes=settings.num_classes,
        max_instances=settings.max_instances, min_pixels=config.eval.min_pixels)
  del mesh
  return run


def gather(x):
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def evaluate_panoptic(config, variables, source, model, mesh, out_dir, *, step: int,
                      steps: int | None = None, td: float | None = None,
                      decode: str | None = None, fn=None) -> dict:
  """Samples the evaluation split and scores it with PQ.

  Writes (process 0) under out_dir: predictions/ and groundtruth/ (COCO panoptic PNG + JSON),
  vis/*.png (image | ground truth | prediction) and metrics.json.

  Returns:
    The metrics dict (PQ ... in percent, per_class, plus sampling settings and timing).
  """
  predict.check_sampler_args(config.eval.steps if steps is None else steps,
                             config.eval.td if td is None else td,
                             steps_key='config.eval.steps' if steps is None else 'steps',
                             td_key='config.eval.td' if td is None else 'td')
  steps = config.eval.steps if steps is None else steps
  td = config.eval.td if td is None else td
  decode = config.eval.decode if decode is None else decode
  fn = fn or make_panoptic_fn(config, model, mesh)
  ds, num_batches = pipeline.eval_dataset(config, source, process_index=jax.process_index(),
                                          process_count=jax.process_count())
  out_dir = pathlib.Path(out_dir)
  main = jax.process_index() == 0
  categories = source.categories
  if main:
    evaluator = panoptic.PanopticEvaluator(categories)
    pred_writer = coco_format.CocoPanopticWriter(out_dir / 'predictions', categories)
    gt_writer = coco_format.CocoPanopticWriter(out_dir / 'groundtruth', categories)
    panels = []
  rng = jax.random.PRNGKey(config.seed)
  start = time.time()
  for local in pipeline.as_numpy(ds):
    batch = sharding.global_batch(local, mesh)
    cls, ids = fn(variables, batch['image'], batch['id'].astype(jnp.int32), batch['orig_size'],
                  batch['unpadded_size'], rng, jnp.float32(td), steps=steps, decode=decode)
    # Every process takes part in the gathers; only process 0 uses the result.
    host = {k: gather(v) for k, v in (('class', cls), ('id_map', ids),
                                       ('label', batch['label_orig']), ('id', batch['id']),
                                       ('orig_size', batch['orig_size']),
                                       ('unpadded_size', batch['unpadded_size']),
                                       ('valid', batch['valid']), ('image', batch['image']))}
    if not main:
      continue
    for j in np.flatnonzero(host['valid']):
      h, w = host['orig_size'][j]
      image_id = int(host['id'][j])
      name = f'{image_id:012d}.png'
      gt = host['label'][j, :h, :w]
      pred_cls, pred_ids = host['class'][j, :h, :w], host['id_map'][j, :h, :w]
      gt_seg, gt_info = coco_format.segments_from_maps(gt[..., 0], gt[..., 1], categories,
                                                       gt[..., 2] > 0)
      pr_seg, pr_info = coco_format.segments_from_maps(pred_cls, pred_ids, categories)
      evaluator.add(gt_seg, gt_info, pr_seg, pr_info, image_id=image_id)
      gt_writer.add(image_id, name, gt_seg, gt_info)
      pred_writer.add(image_id, name, pr_seg, pr_info)
      if len(panels) < config.eval.num_visualizations:
        image = original_image(host['image'][j], host['unpadded_size'][j], (h, w))
        panels.append(visualize.render_panel(image, gt[..., 0], gt[..., 1], pred_cls, pred_ids,
                                             categories))
  elapsed = time.time() - start
  if not main:
    return {}
  pred_writer.close()
  gt_writer.close()
  metrics = evaluator.result()
  metrics.update({'step': step, 'sampling_steps': steps, 'td': float(td), 'decode': decode,
                  'num_images': evaluator.num_images, 'eval_seconds': round(elapsed, 2)})
  (out_dir / 'vis').mkdir(parents=True, exist_ok=True)
  for k, panel in enumerate(panels):
    visualize.save_png(out_dir / 'vis' / f'{k:03d}.png', panel)
  write_json(out_dir / 'metrics.json', metrics)
  logging.info('eval step %d (%d images, N=%d, td=%g, %s): PQ %.2f | things %.2f | stuff %.2f',
               step, evaluator.num_images, steps, td, decode, metrics['PQ'], metrics['PQ_th'],
               metrics['PQ_st'])
  logging.info('\n%s', panoptic.format_table(metrics))
  metrics['_panels'] = panels
  return metrics


def original_image(canvas: np.ndarray, unpadded, orig) -> np.ndarray:
  """The model's input canvas float [H, W, 3] -> uint8 image at the original size (nearest)."""
  crop = canvas[:unpadded[0], :unpadded[1]]
  yi = np.minimum(((np.arange(orig[0]) + 0.5) * unpadded[0] / orig[0]).astype(int),
                  unpadded[0] - 1)
  xi = np.minimum(((np.arange(orig[1]) + 0.5) * unpadded[1] / orig[1]).astype(int),
                  unpadded[1] - 1)
  return (np.clip(crop[yi][:, xi], 0, 1) * 255).round().astype(np.uint8)


def write_json(path: pathlib.Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
  tmp.replace(path)
