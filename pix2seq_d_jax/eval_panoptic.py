"""The image evaluation loop: sample the evaluation split, write predictions and ground truth as
COCO panoptic files, score them with PQ, and write `metrics.json` and pictures
(docs/contracts.md §2).
"""

import functools
import logging
import pathlib
import time

import jax
import jax.numpy as jnp

from pix2seq_d_jax import compile_options
from pix2seq_d_jax import eval_loop
from pix2seq_d_jax import sampling
from pix2seq_d_jax.evaluation import panoptic
from pix2seq_d_jax.evaluation import visualize
from pix2seq_d_jax.formats import coco_format


def make_panoptic_fn(config, model):
  """The jitted sampler + post-processing for evaluation batches (one compile per steps/decode)."""
  settings = sampling.SampleSettings.from_config(config)
  out_size = tuple(config.dataset.max_original_size)

  @functools.partial(jax.jit, static_argnames=('steps', 'decode'),
                     compiler_options=compile_options.sampler())
  def run(variables, images, ids, orig_size, unpadded_size, rng, td, *, steps, decode):
    masks = sampling.sample(variables, images, ids, rng, td, model=model, settings=settings,
                            steps=steps, decode=decode)
    return sampling.postprocess(
        masks, orig_size, unpadded_size, image_size=tuple(config.model.image_size),
        out_size=out_size, num_classes=settings.num_classes,
        max_instances=settings.max_instances, min_pixels=config.eval.min_pixels)
  return run


def evaluate_panoptic(config, variables, source, model, mesh, out_dir, *, step: int,
                      steps: int | None = None, td: float | None = None,
                      decode: str | None = None, fn=None) -> tuple[dict, list]:
  """Samples the evaluation split and scores it with PQ.

  Writes (process 0) under out_dir: predictions/ and groundtruth/ (COCO panoptic PNG + JSON),
  vis/*.png (image | ground truth | prediction) and metrics.json.

  Args:
    config, variables, source, model, mesh: the run's config, model variables (EMA by default),
      data source, Pix2SeqD module and mesh.
    out_dir: e.g. WORKDIR/eval/step_N.
    step: the training step, recorded in the metrics.
    steps, td, decode: override config.eval.steps, .td and .decode.
    fn: the sampler, `make_panoptic_fn(config, model)` by default.

  Returns:
    (metrics, panels): the metrics dict (PQ ... in percent, per_class, plus sampling settings
    and timing) and the pictures (uint8 [H, W, 3] each, for TensorBoard); ({}, []) on processes
    other than 0.
  """
  opts = sampling.EvalOptions.from_config(config, steps=steps, td=td, decode=decode)
  fn = fn or make_panoptic_fn(config, model)
  rng = jax.random.PRNGKey(config.seed)
  sample = lambda batch: fn(variables, batch['image'], batch['id'].astype(jnp.int32),
                            batch['orig_size'], batch['unpadded_size'], rng,
                            jnp.float32(opts.td), steps=opts.steps, decode=opts.decode)
  out_dir = pathlib.Path(out_dir)
  categories = source.categories
  main = jax.process_index() == 0
  if main:
    evaluator = panoptic.PanopticEvaluator(categories)
    pred_writer = coco_format.CocoPanopticWriter(out_dir / 'predictions', categories)
    gt_writer = coco_format.CocoPanopticWriter(out_dir / 'groundtruth', categories)
  panels = []
  start = time.time()
  for ex in eval_loop.sampled_examples(config, source, mesh, sample):
    h, w = ex['orig_size']
    image_id = int(ex['id'])
    name = f'{image_id:012d}.png'
    gt = ex['label_orig'][:h, :w]
    pred_cls, pred_ids = ex['class'][:h, :w], ex['id_map'][:h, :w]
    gt_seg, gt_info = coco_format.segments_from_maps(gt[..., 0], gt[..., 1], categories,
                                                     gt[..., 2] > 0)
    pr_seg, pr_info = coco_format.segments_from_maps(pred_cls, pred_ids, categories)
    evaluator.add(gt_seg, gt_info, pr_seg, pr_info, image_id=image_id)
    gt_writer.add(image_id, name, gt_seg, gt_info)
    pred_writer.add(image_id, name, pr_seg, pr_info)
    if len(panels) < config.eval.num_visualizations and 'image' in ex:
      image = sampling.original_image(ex['image'], ex['unpadded_size'], (h, w))
      panels.append(visualize.render_panel(image, gt[..., 0], gt[..., 1], pred_cls, pred_ids,
                                           categories))
  elapsed = time.time() - start
  if not main:
    return {}, []
  pred_writer.close()
  gt_writer.close()
  metrics = evaluator.result()
  metrics.update({'step': step, 'sampling_steps': opts.steps, 'td': opts.td,
                  'decode': opts.decode, 'num_images': evaluator.num_images,
                  'eval_seconds': round(elapsed, 2)})
  (out_dir / 'vis').mkdir(parents=True, exist_ok=True)
  for k, panel in enumerate(panels):
    visualize.save_png(out_dir / 'vis' / f'{k:03d}.png', panel)
  coco_format.write_json(out_dir / 'metrics.json', metrics, indent=2, sort_keys=True)
  logging.info('eval step %d (%d images, N=%d, td=%g, %s): PQ %.2f | things %.2f | stuff %.2f',
               step, evaluator.num_images, opts.steps, opts.td, opts.decode, metrics['PQ'],
               metrics['PQ_th'], metrics['PQ_st'])
  logging.info('\n%s', panoptic.format_table(metrics))
  return metrics, panels
