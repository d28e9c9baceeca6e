"""Prediction latency a user can reproduce: pure compute and end to end; prints one JSON object.

  python benchmarks/predict_latency.py [--config=configs/shapes.py] [--canvas=full,256]
      [--batch=1,8] [--steps=1,2,5,10,20] [--repeats=5] [--workdir=runs/shapes] [key=value ...]

For each canvas (`full`: the config's model.image_size; N or HxW: the model at that input size,
its mask size scaled alike), batch size and number of DDIM steps:

- `compute_s`: `Predictor.__call__` on uint8 images already in memory (resize onto the canvas,
  the jitted sampler, post-processing, maps back on the host), median of --repeats calls after a
  warm-up call that compiles. What `--mode=export`'s program computes.
- `end_to_end_s`: decode `batch` image files (JPEG, at the canvas size) with `predict_files.
  read_rgb`, predict them as one batch, and write what `--mode=predict` writes (COCO panoptic PNG
  per image and the JSON, `vis/` pictures), median of --repeats after a warm-up; per image too.

The weights are random (latency does not depend on their values) unless --workdir names a
trained run, whose config and EMA weights are then used; with --workdir the JSON also holds
`pq`: PQ / PQ_th / PQ_st of the evaluation split at each step count, by the evaluation loop of
`--mode=eval` (pix2seq_d_jax/eval_panoptic.py) written into a temporary folder, not the workdir.
`device` names the JAX device and the host CPU.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

from pix2seq_d_jax import config_lib
from pix2seq_d_jax import data
from pix2seq_d_jax import eval_panoptic
from pix2seq_d_jax import predict
from pix2seq_d_jax import predict_files
from pix2seq_d_jax import sharding
from pix2seq_d_jax.evaluation import visualize
from pix2seq_d_jax.formats import coco_format
from pix2seq_d_jax.models import pix2seq_d


def _ints(text: str) -> list[int]:
  return [int(s) for s in text.split(',') if s]


def _canvas(text: str, image_size) -> tuple[int, int] | None:
  """'full' -> None (the config's size); '256' -> (256, 256); '192x256' -> (192, 256)."""
  if text == 'full':
    return None
  parts = [int(p) for p in text.lower().split('x')]
  return (parts[0], parts[-1])


def _cpu_name() -> str:
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _median(fn, repeats: int) -> float:
  fn()                                   # warm-up: compiles
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _end_to_end(predictor, files: list[pathlib.Path], out: pathlib.Path, steps: int) -> None:
  """--mode=predict's work for one batch of files: decode, predict, write PNG + JSON + vis."""
  images = np.stack([predict_files.read_rgb(str(f)) for f in files])
  pred = predictor(images, steps=steps, example_ids=np.arange(len(files)))
  categories = predictor.categories
  (out / 'vis').mkdir(parents=True, exist_ok=True)
  with coco_format.CocoPanopticWriter(out, categories) as writer:
    for k, f in enumerate(files):
      cls, ids = pred['class'][k], pred['id'][k]
      seg, info = coco_format.segments_from_maps(cls, ids, categories)
      writer.add(k, f.stem + '.png', seg, info)
      panel = np.concatenate([images[k], visualize.colorize(cls, ids, categories)], axis=1)
      visualize.save_png(out / 'vis' / (f.stem + '.png'), panel)


def _pq(config, predictor, steps_list: list[int]) -> dict:
  """{steps: {PQ, PQ_th, PQ_st}} of the evaluation split (`eval_panoptic.evaluate_panoptic`)."""
  source = data.get_source(config.dataset)
  mesh = sharding.make_mesh(config.mesh)
  fn = eval_panoptic.make_panoptic_fn(config, predictor.model)
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    for n in steps_list:
      metrics, _ = eval_panoptic.evaluate_panoptic(
          config, predictor.variables, source, predictor.model, mesh, pathlib.Path(tmp) / str(n),
          step=0, steps=n, fn=fn)
      out[str(n)] = {k: round(metrics[k], 2) for k in ('PQ', 'PQ_th', 'PQ_st')}
      out[str(n)]['num_images'] = metrics['num_images']
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/shapes.py')
  parser.add_argument('--canvas', default='full',
                      help="comma-separated: 'full' (the config's image size), N or HxW")
  parser.add_argument('--batch', default='1,8',
                      help='comma-separated; empty: no timing (with --workdir: PQ only)')
  parser.add_argument('--steps', default='1,2,5,10,20')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--no_end_to_end', action='store_true', help='time compute only')
  parser.add_argument('--workdir', default=None,
                      help='a trained run: its config and EMA weights, and PQ per step count')
  parser.add_argument('overrides', nargs='*', help='key=value config overrides')
  args = parser.parse_args()
  base = config_lib.load_config(args.config, args.overrides)
  trained = predict.Predictor.from_workdir(args.workdir) if args.workdir else None
  if trained is not None:
    base = trained.config
  steps_list, batches = _ints(args.steps), _ints(args.batch)
  rows = []
  for canvas_text in args.canvas.split(','):
    size = _canvas(canvas_text, base.model.image_size)
    if size is None:
      config = base
    else:
      scale = size[0] / base.model.image_size[0]
      mask = tuple(max(1, round(m * scale)) for m in base.model.mask_size)
      config = config_lib.load_config(args.config, list(args.overrides) + [
          f'model.image_size=({size[0]}, {size[1]})', f'model.mask_size=({mask[0]}, {mask[1]})'])
    if trained is not None and size is None:
      predictor = trained
    else:
      model = pix2seq_d.build_model(config)
      predictor = predict.Predictor(config, pix2seq_d.random_variables(model, config), trained and
                                    trained.categories)
      if predictor.categories is None:
        predictor.categories = [{'id': k, 'name': f'class{k}', 'isthing': 1}
                                for k in range(1, config.dataset.num_classes)]
    image_size = tuple(config.model.image_size)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
      tmp = pathlib.Path(tmp)
      for b in batches:
        images = rng.integers(0, 256, (b, *image_size, 3), dtype=np.uint8)
        files = []
        for k in range(b):
          files.append(tmp / f'in_{b}_{k}.jpg')
          Image.fromarray(images[k]).save(files[-1], quality=90)
        for n in steps_list:
          row = {'canvas': list(image_size), 'mask_size': list(config.model.mask_size),
                 'batch': b, 'steps': n}
          row['compute_s'] = round(_median(lambda: predictor(images, steps=n), args.repeats), 4)
          if not args.no_end_to_end:
            e2e = _median(lambda: _end_to_end(predictor, files, tmp / 'out', n), args.repeats)
            row['end_to_end_s'] = round(e2e, 4)
            row['end_to_end_per_image_s'] = round(e2e / b, 4)
          rows.append(row)
          print(json.dumps(row), file=sys.stderr, flush=True)
  result = {'config': args.config, 'overrides': args.overrides,
            'weights': 'workdir ' + args.workdir if args.workdir else 'random',
            'device': f'{jax.devices()[0].device_kind} ({jax.default_backend()}); host CPU '
                      f'{_cpu_name()}, {os.cpu_count()} cores',
            'jax': jax.__version__, 'repeats': args.repeats, 'rows': rows}
  if trained is not None:
    result['pq'] = _pq(trained.config, trained, steps_list)
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
