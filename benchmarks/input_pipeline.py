"""Input-pipeline throughput: training images per second per CPU core, printed as one JSON object.

  python benchmarks/input_pipeline.py [--images=64] [--batch=16] [--batches=12] [--stage=low]

Generates a COCO-panoptic folder of `--images` JPEG images of 640×480 (with their panoptic PNGs)
in a temporary folder, then times `pipeline.train_dataset` with configs/coco_panoptic.py (the
folder source): file reads, JPEG + PNG decode, segment-table lookup, id ordering (K = 101,
'random'), scale jitter, crop, flip, colour jitter, padding to the 1024² canvas and the label's
resize to the 512² mask. `--stage=low` uses the low-resolution stage's augmentation (scale jitter
[1, 3], colour jitter 1.0); `--stage=high` none. The first `--warmup` batches (graph building,
autotuning) are not timed.

`images_per_s_per_core` is images per CPU-second of the process (user + system time of all its
threads): on an idle machine it equals the wall-clock img/s divided by the cores
(`images_per_s_per_core_wall`), and unlike that figure it does not drop when other jobs share
the cores. `h100_cores_needed` answers: how many such cores keep one H100 fed at the paper's
training size (1024² image, 512² mask, ResNet-50 model)? It assumes the GPU trains
`--gpu_images_per_s` images per second, default 40: `--mode=describe` counts 9.8 TFLOP per
example per training step, and an H100 at 40 % of its 989 TFLOP/s dense bf16 peak does about
396 TFLOP/s. Pass a measured rate to re-derive it.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))

import tensorflow as tf  # noqa: E402

import data_fixtures  # noqa: E402  (tests/data_fixtures.py)
from pix2seq_d_jax import compile_options  # noqa: E402
from pix2seq_d_jax import config_lib  # noqa: E402
from pix2seq_d_jax import data  # noqa: E402
from pix2seq_d_jax.data import pipeline  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--images', type=int, default=64)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--batches', type=int, default=12, help='timed batches')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--stage', default='low', choices=('low', 'high'))
  parser.add_argument('--gpu_images_per_s', type=float, default=40.0)
  args = parser.parse_args()
  tf.config.set_visible_devices([], 'GPU')

  with tempfile.TemporaryDirectory() as tmp:
    folder = data_fixtures.write_coco_folder(tmp, 'train', num_images=args.images,
                                             size=(480, 640), num_rects=6, seed=1)
    overrides = folder.overrides('train') + [
        'dataset.name=coco_panoptic_folder', 'dataset.num_classes=5',
        f'train.batch_size={args.batch}']
    config = config_lib.load_config(f'{ROOT}/configs/coco_panoptic.py:stage={args.stage}',
                                    overrides)
    source = data.get_source(config.dataset)
    ds = pipeline.train_dataset(config, source)
    batches = iter(ds)
    for _ in range(args.warmup):
      next(batches)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(args.batches):
      batch = next(batches)
    # Materialise the last batch so asynchronous work is counted.
    _ = batch['image'].numpy()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - start_cpu

  images = args.batches * args.batch
  per_s = images / elapsed
  cores = compile_options.usable_cores()
  # Per core from the CPU time the process used: robust when other jobs share the machine
  # (wall-clock img/s divided by the cores is the same figure on an idle machine).
  per_core = images / cpu
  print(json.dumps({
      'benchmark': 'input_pipeline',
      'stage': args.stage,
      'image_size': list(config.model.image_size),
      'mask_size': list(config.model.mask_size),
      'source_image_size': [480, 640],
      'scale_jitter': [config.dataset.min_scale, config.dataset.max_scale],
      'color_jitter': config.dataset.color_jitter,
      'images': images,
      'seconds': round(elapsed, 3),
      'images_per_s': round(per_s, 2),
      'cores_used': cores,
      'cpu_seconds': round(cpu, 3),
      'images_per_s_per_core': round(per_core, 2),
      'images_per_s_per_core_wall': round(per_s / cores, 2),
      'assumed_h100_images_per_s': args.gpu_images_per_s,
      'h100_cores_needed': round(args.gpu_images_per_s / per_core, 1),
      'tensorflow': tf.__version__,
  }, indent=1))


if __name__ == '__main__':
  main()
