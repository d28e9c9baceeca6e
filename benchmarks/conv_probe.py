"""Convolution timings, XLA's lowering against layers.conv_general_dilated; prints one JSON object.

  python benchmarks/conv_probe.py [--batch=8] [--repeats=9]

For the convolution shapes of the model's backbone, FPN and decoder (1x1 and 3x3, stride 1),
times the forward, the input gradient (dx) and the kernel gradient (dw) of
`lax.conv_general_dilated` and of `pix2seq_d_jax.models.layers.conv_general_dilated` (1x1 as a
matrix product; the 3x3 kernel gradient as one product of shifted copies, see its docstring),
each jitted alone: medians in ms and GFLOP/s, with the float32 matmul rate of the same process
(benchmarks/matmul_probe.py) for scale. Not run by the tests (they check the values instead:
tests/test_conv.py).
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
# (spatial side, input channels, output channels, kernel side)
SHAPES = [(16, 64, 256, 1), (16, 256, 64, 1), (8, 512, 128, 1), (4, 1024, 256, 1),
          (16, 64, 64, 3), (16, 256, 256, 3), (8, 512, 512, 3), (32, 64, 64, 3), (32, 32, 32, 3)]


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
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=9)
  args = parser.parse_args()
  impls = {'lax': jax.lax.conv_general_dilated, 'ours': layers.conv_general_dilated}
  rows = []
  for side, c_in, c_out, k in SHAPES:
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, side, side, c_in))
    w = jax.random.normal(jax.random.PRNGKey(1), (k, k, c_in, c_out)) * 0.05
    dy = jax.random.normal(jax.random.PRNGKey(2), (args.batch, side, side, c_out))
    gflop = 2 * args.batch * side * side * k * k * c_in * c_out / 1e9
    row = {'shape': f'{args.batch}x{side}x{side}x{c_in}->{c_out} k{k}', 'gflop': round(gflop, 3)}
    for name, conv in impls.items():
      fwd = lambda x, w, conv=conv: conv(x, w, (1, 1), 'SAME', dimension_numbers=DN)
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
