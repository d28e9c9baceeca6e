"""The machine's measured matmul rate, for the benchmarks' achieved-GFLOP/s figures.

  python benchmarks/matmul_probe.py [--size=2048] [--repeats=5]

`matmul_gflops()` times a jitted float32 `size x size` matmul (2 size^3 FLOPs, default
precision) on the default device, median of `repeats` calls after a compile-and-warm-up call,
and returns GFLOP/s. benchmarks/train_step.py and benchmarks/sampling.py call it in their own
process after their timed runs and report what they achieved next to it.
"""

import argparse
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
  """Median GFLOP/s of a jitted float32 size x size matmul on the default device."""
  if size < 1 or repeats < 1:
    raise ValueError(f'matmul_gflops: size={size}, repeats={repeats}; both must be >= 1.')
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (size, size), jnp.float32)
  b = jax.random.normal(kb, (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    times.append(time.perf_counter() - start)
  return 2.0 * size ** 3 / statistics.median(times) / 1e9


def rate_fields(flops: float, seconds: float, matmul_rate: float | None) -> dict:
  """`achieved_gflops` (flops / seconds) and `fraction_of_matmul_rate` (of `matmul_rate`,
  GFLOP/s); None where a figure is not a positive finite number (no probe, a FLOP estimate XLA
  did not give, a fitted step time at or below zero)."""
  good = lambda x: x is not None and math.isfinite(float(x)) and float(x) > 0
  achieved = float(flops) / float(seconds) / 1e9 if good(flops) and good(seconds) else None
  return {'achieved_gflops': round(achieved, 2) if achieved is not None else None,
          'fraction_of_matmul_rate': (round(achieved / float(matmul_rate), 4)
                                      if achieved is not None and good(matmul_rate) else None)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
  parser.add_argument('--size', type=int, default=2048)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  print(json.dumps({'device': str(jax.devices()[0].device_kind), 'size': args.size,
                    'matmul_gflops': round(matmul_gflops(args.size, args.repeats), 2)}))


if __name__ == '__main__':
  main()
