"""Training-step throughput and memory; prints one JSON object.

  python benchmarks/train_step.py [--config=configs/shapes.py] [--steps=20] [key=value ...]
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/train_step.py mesh=...

Runs the jitted, sharded train step on random data of the config's shapes (the same function
and shardings as training) and reports compile time, the median step time, examples per second,
XLA's FLOP estimate (per step and per device), model FLOP utilisation against --peak_tflops when
given (model FLOPs: a rematerialised step's recomputation is not counted), and per-device memory
(live state buffers after the steps; the compiled program's arguments, temporaries and peak).
After the timed steps, a float32 matmul probe in the same process (benchmarks/matmul_probe.py,
--matmul_size; 0 skips it) measures the default device's matmul rate (`matmul_gflops`);
`achieved_gflops` is XLA's FLOPs of the step (recomputation included) per second, and
`fraction_of_matmul_rate` compares the two: the whole step's rate on CPU (every XLA CPU device
shares the one host), one device's share on an accelerator. `params` counts the trainable
parameters.
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
import numpy as np

from benchmarks import matmul_probe
from pix2seq_d_jax import config_lib
from pix2seq_d_jax import sharding
from pix2seq_d_jax import state as state_lib
from pix2seq_d_jax import train_step as train_step_lib
from pix2seq_d_jax.models import pix2seq_d


def _bytes_per_device(tree) -> dict:
  per = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      per[str(shard.device)] = per.get(str(shard.device), 0) + shard.data.nbytes
  return per


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/shapes.py')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help='peak FLOP/s of one device in TFLOP/s, for MFU')
  parser.add_argument('--matmul_size', type=int, default=2048,
                      help='side of the square float32 matmul probe; 0 skips the probe')
  parser.add_argument('overrides', nargs='*', help='key=value config overrides')
  args = parser.parse_args()
  config = config_lib.load_config(args.config, args.overrides)
  mesh = sharding.make_mesh(config.mesh)
  setup = state_lib.setup(config, 1000, 0)
  model, tx, schedule, abstract = setup.model, setup.tx, setup.lr_schedule, setup.abstract
  shardings = sharding.state_shardings(abstract, mesh)
  sharding.check_sharded(shardings, abstract, mesh)
  state = jax.jit(setup.init, out_shardings=shardings)()
  bsz = config.train.batch_size
  m = config.model
  rng = np.random.default_rng(0)
  local = {'image': rng.random((bsz, *m.image_size, 3), np.float32),
           'masks': rng.integers(0, 8, (bsz, *m.mask_size, 2)).astype(np.int32)}
  if m.num_cond_frames:
    local['cond_masks'] = rng.integers(0, 8, (bsz, m.num_cond_frames, *m.mask_size, 2)).astype(
        np.int32)
  batch = sharding.global_batch(local, mesh)
  step = jax.jit(functools.partial(train_step_lib.train_step, model=model, tx=tx,
                                   lr_schedule=schedule,
                                   settings=train_step_lib.StepSettings.from_config(config)),
                 in_shardings=(shardings, {k: sharding.batch_sharding(mesh, v.ndim)
                                           for k, v in local.items()}),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  memory = compiled.memory_analysis()
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  # XLA's cost and memory analyses of a program partitioned over several devices describe the
  # program of one device (a data-parallel matmul on 8 devices reports 1/8 of its FLOPs), so
  # the step's total is the per-device figure times the device count.
  flops_per_device = float(cost.get('flops', float('nan')))
  flops = flops_per_device * jax.device_count()
  # MFU counts the model's FLOPs, not the recomputation of a rematerialised step: those come
  # from the same step without remat, lowered (not compiled: the whole, unpartitioned program,
  # hence the division by the device count) for its cost analysis.
  model_flops_per_device = flops_per_device
  if config.model.remat != 'none':
    plain = config_lib.load_config(args.config, list(args.overrides) + ['model.remat=none'])
    plain_step = jax.jit(functools.partial(
        train_step_lib.train_step, model=pix2seq_d.build_model(plain), tx=tx,
        lr_schedule=schedule, settings=train_step_lib.StepSettings.from_config(plain)),
        in_shardings=(shardings, {k: sharding.batch_sharding(mesh, v.ndim)
                                  for k, v in local.items()}))
    plain_cost = plain_step.lower(state, batch).cost_analysis() or {}
    if isinstance(plain_cost, (list, tuple)):
      plain_cost = plain_cost[0]
    model_flops_per_device = float(plain_cost.get('flops', float('nan'))) / jax.device_count()
  state_bytes = _bytes_per_device(state)
  matmul_rate = matmul_probe.matmul_gflops(args.matmul_size) if args.matmul_size else None
  achieved = matmul_probe.rate_fields(flops, step_s, matmul_rate)
  if jax.devices()[0].platform != 'cpu':   # an accelerator's probe ran on one of its devices
    achieved['fraction_of_matmul_rate'] = matmul_probe.rate_fields(
        flops_per_device, step_s, matmul_rate)['fraction_of_matmul_rate']
  mem = {k: getattr(memory, f'{k}_size_in_bytes', None)
         for k in ('argument', 'output', 'alias', 'temp')}
  out = {
      'config': args.config, 'overrides': args.overrides, 'batch': bsz,
      'device': str(jax.devices()[0].device_kind), 'num_devices': jax.device_count(),
      'mesh': dict(mesh.shape), 'compile_s': round(compile_s, 2),
      'step_s': round(step_s, 4), 'examples_per_s': round(bsz / step_s, 2),
      'gflops_per_step': round(flops / 1e9, 2),
      'gflops_per_step_per_device': round(flops_per_device / 1e9, 2),
      'achieved_tflops_per_device': round(flops_per_device / step_s / 1e12, 4),
      'model_gflops_per_step': round(model_flops_per_device * jax.device_count() / 1e9, 2),
      'state_bytes_per_device': state_bytes,
      'state_bytes_max_per_device': max(state_bytes.values()),
      'argument_bytes_per_device': mem['argument'],
      'temp_bytes_per_device': mem['temp'],
      # Arguments (state + batch) + outputs + temporaries, less the donated state the outputs
      # reuse: the compiled step's peak on one device.
      'peak_bytes_per_device': (None if None in mem.values() else
                                mem['argument'] + mem['output'] - mem['alias'] + mem['temp']),
      'loss': float(metrics['loss']),
      'params': pix2seq_d.count_params(state.params)['total'],
      'matmul_gflops': None if matmul_rate is None else round(matmul_rate, 2),
      **achieved,
  }
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:            # GPU / TPU allocators report their high-water mark
    out['device_peak_bytes_in_use'] = int(stats['peak_bytes_in_use'])
  if args.peak_tflops:
    out['mfu'] = round(model_flops_per_device / step_s / (args.peak_tflops * 1e12), 4)
  print(json.dumps(out, indent=2))


if __name__ == '__main__':
  main()
