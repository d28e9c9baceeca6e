"""Sampling latency against the number of DDIM steps; prints one JSON object.

  python benchmarks/sampling.py [--config=configs/shapes.py] [--batch=16] [--steps=1,5,10,20]

Times (median of --repeats runs after a warm-up) the encoder alone and the whole jitted sampler
(encoder once + lax.scan over N decoder steps + decoding) for each N, and fits total(N) = a + b N:
b is the time of one decoder step, a the fixed part. Also reports XLA's FLOP estimates of the
encoder and of one decoder pass, and the work run for each N (encoder + N decoder passes; the scan
program itself counts its body once). The programs are compiled with the package's sampler options
(pix2seq_d_jax/compile_options.py), as Predictor compiles its own. Weights are randomly
initialised: latency does not depend on their values. After the timed runs, a float32 matmul probe
in the same process (benchmarks/matmul_probe.py, --matmul_size; 0 skips it) measures the default
device's matmul rate (`matmul_gflops`); `achieved_gflops` and `fraction_of_matmul_rate` give, for
the encoder, one decoder step (the fitted b) and each N's whole sampler (`sampling_N`), XLA's FLOPs
per second and their share of that rate. `params` counts the trainable parameters.
"""

import argparse
import functools
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from benchmarks import matmul_probe
from pix2seq_d_jax import compile_options
from pix2seq_d_jax import config_lib
from pix2seq_d_jax import sampling
from pix2seq_d_jax import state as state_lib
from pix2seq_d_jax.models import pix2seq_d


def _time(fn, repeats):
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/shapes.py')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--steps', default='1,5,10,20')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--matmul_size', type=int, default=2048,
                      help='side of the square float32 matmul probe; 0 skips the probe')
  parser.add_argument('overrides', nargs='*', help='key=value config overrides')
  args = parser.parse_args()
  config = config_lib.load_config(args.config, args.overrides)
  setup = state_lib.setup(config)
  model = setup.model
  state = jax.jit(setup.init)()
  variables = state.variables()
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((args.batch, *config.model.image_size, 3), np.float32))
  ids = jnp.arange(args.batch, dtype=jnp.int32)
  key = jax.random.PRNGKey(0)
  options = compile_options.sampler()   # as Predictor and the evaluators compile theirs
  encode = jax.jit(lambda v, x: model.apply(v, x, train=False, method='encode'),
                   compiler_options=options)
  encoder_s = _time(lambda: encode(variables, images), args.repeats)
  settings = sampling.SampleSettings.from_config(config)
  # XLA's cost analysis counts a while (scan) body once, so the sampler program reports the same
  # FLOPs for every N. The work run is the encoder plus N decoder passes, counted separately.
  enc_cat, tokens = encode(variables, images)
  x_t = jnp.zeros((args.batch, *enc_cat.shape[1:3], model.num_bits), jnp.float32)
  gamma = jnp.ones((args.batch,), jnp.float32)
  decode = jax.jit(lambda v, *a: model.apply(v, *a, train=False, method='decode'),
                   compiler_options=options)
  flops = lambda lowered: (lowered.cost_analysis() or {}).get('flops', float('nan'))
  encoder_flops = flops(encode.lower(variables, images))
  decoder_flops = flops(decode.lower(variables, x_t, gamma, enc_cat, tokens))
  rows = []
  for n in [int(s) for s in args.steps.split(',')]:
    fn = jax.jit(functools.partial(sampling.sample, model=model, settings=settings, steps=n),
                 compiler_options=options)
    lowered = fn.lower(variables, images, ids, key, jnp.float32(1.0))
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    total = _time(lambda: compiled(variables, images, ids, key, jnp.float32(1.0)), args.repeats)
    rows.append({'steps': n, 'total_s': round(total, 4), 'compile_s': round(compile_s, 2),
                 'gflops_run': round((encoder_flops + n * decoder_flops) / 1e9, 3)})
  n = np.array([r['steps'] for r in rows], np.float64)
  t = np.array([r['total_s'] for r in rows], np.float64)
  slope, intercept = np.polyfit(n, t, 1) if len(rows) > 1 else (float('nan'), float('nan'))
  matmul_rate = matmul_probe.matmul_gflops(args.matmul_size) if args.matmul_size else None
  rates = {'encoder': matmul_probe.rate_fields(encoder_flops, encoder_s, matmul_rate),
           'decoder_step': matmul_probe.rate_fields(decoder_flops, float(slope), matmul_rate)}
  for r in rows:
    rates[f'sampling_{r["steps"]}'] = matmul_probe.rate_fields(r['gflops_run'] * 1e9,
                                                               r['total_s'], matmul_rate)
  print(json.dumps({
      'config': args.config, 'overrides': args.overrides, 'batch': args.batch,
      'device': str(jax.devices()[0].device_kind), 'num_devices': jax.device_count(),
      'encoder_s': round(encoder_s, 4),
      'decoder_step_s': round(float(slope), 4), 'fixed_s': round(float(intercept), 4),
      'encoder_gflops': round(encoder_flops / 1e9, 3),
      'decoder_step_gflops': round(decoder_flops / 1e9, 3),
      'per_steps': rows,
      'params': pix2seq_d.count_params(state.params)['total'],
      'matmul_gflops': None if matmul_rate is None else round(matmul_rate, 2),
      'achieved_gflops': {k: v['achieved_gflops'] for k, v in rates.items()},
      'fraction_of_matmul_rate': {k: v['fraction_of_matmul_rate'] for k, v in rates.items()},
  }, indent=2))


if __name__ == '__main__':
  main()
