"""Convolution timings, XLA's lowering against layers.conv_general_dilated; prints one JSON object.

  python benchmarks/conv_probe.py [--batch=8] [--repeats=9] [--large]

For the convolution shapes of the model's backbone, FPN and decoder (1x1, 3x3 and the 7x7
stem; strides 1 and 2), times the forward, the input gradient (dx) and the kernel gradient (dw)
of `lax.conv_general_dilated` and of `pix2seq_d_jax.models.layers.conv_general_dilated` (1x1 as
a matrix product; the kxk kernel gradient as one product of shifted copies, both cut into parts
on a CPU: see `layers.weight_gradient`), with --large the shapes of the paper model at 256^2
images and 128^2 masks at batch 2 instead; each jitted alone: medians in ms and GFLOP/s, with
the float32 matmul rate of the same process (benchmarks/matmul_probe.py) for scale. Not run by
the tests (they check the values instead: tests/test_conv.py).
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # pylint: disable=g-import-not-at-top

from benchmarks import matmul_probe
from pix2seq_d_jax.models import layers

DN = ('NHWC', 'HWIO', 'NHWC')
# (input side, input channels, output channels, kernel side, stride)
SHAPES = [(16, 64, 256, 1, 1), (16, 256, 64, 1, 1), (8, 512, 128, 1, 1), (4, 1024, 256, 1, 1),
          (16, 64, 64, 3, 1), (16, 256, 256, 3, 1), (8, 512, 512, 3, 1), (32, 64, 64, 3, 1),
          (32, 32, 32, 3, 1), (64, 3, 64, 7, 2), (32, 64, 64, 3, 2), (16, 128, 128, 3, 2),
          (16, 256, 512, 1, 2)]
# The paper model at 256^2 / 128^2 (--large, batch 2): stem, stage 1-2, the decoder's top level.
LARGE = [(256, 3, 64, 7, 2), (64, 64, 256, 1, 1), (64, 128, 128, 3, 2), (32, 128, 128, 3, 1),
         (128, 128, 128, 3, 1), (128, 256, 128, 3, 1), (128, 128, 512, 1, 1)]


def _median_s(fn, args, repeats):
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=None, help='8 (2 with --large)')
  parser.add_argument('--repeats', type=int, default=9)
  parser.add_argument('--large', action='store_true', help="the paper model's shapes")
  args = parser.parse_args()
  shapes = LARGE if args.large else SHAPES
  args.batch = args.batch or (2 if args.large else 8)
  impls = {'lax': jax.lax.conv_general_dilated, 'ours': layers.conv_general_dilated}
  rows = []
  for side, c_in, c_out, k, stride in shapes:
    out = -(-side // stride)
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, side, side, c_in))
    w = jax.random.normal(jax.random.PRNGKey(1), (k, k, c_in, c_out)) * 0.05
    dy = jax.random.normal(jax.random.PRNGKey(2), (args.batch, out, out, c_out))
    gflop = 2 * args.batch * out * out * k * k * c_in * c_out / 1e9
    row = {'shape': f'{args.batch}x{side}x{side}x{c_in}->{c_out} k{k} s{stride}',
           'gflop': round(gflop, 3)}
    for name, conv in impls.items():
      fwd = lambda x, w, conv=conv, s=stride: conv(x, w, (s, s), 'SAME', dimension_numbers=DN)
      parts = {'fwd': (fwd, (x, w)),
               'dx': (lambda dy, w, fwd=fwd: jax.vjp(lambda x_: fwd(x_, w), x)[1](dy)[0], (dy, w)),
               'dw': (lambda dy, x, fwd=fwd: jax.vjp(lambda w_: fwd(x, w_), w)[1](dy)[0], (dy, x))}
      for part, (fn, fn_args) in parts.items():
        seconds = _median_s(fn, fn_args, args.repeats)
        row[f'{name}_{part}_ms'] = round(seconds * 1e3, 2)
        row[f'{name}_{part}_gflops'] = round(gflop / seconds, 1)
    row['dw_speedup'] = round(row['lax_dw_ms'] / row['ours_dw_ms'], 2)
    row['fwd_speedup'] = round(row['lax_fwd_ms'] / row['ours_fwd_ms'], 2)
    rows.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
  print(json.dumps({'device': str(jax.devices()[0].device_kind), 'jax': jax.__version__,
                    'batch': args.batch, 'matmul_gflops': matmul_probe.matmul_gflops(2048),
                    'shapes': rows}, indent=1))


if __name__ == '__main__':
  main()
