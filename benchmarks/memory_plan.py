"""Per-device memory of the train state on large meshes, from shapes and the partition rules;
prints one JSON object.

  python benchmarks/memory_plan.py [--config=configs/coco_panoptic.py] [--activations]
      [--batch_per_device=1]

The state (params, BatchNorm statistics, their EMA, AdamW moments, step, rng) comes from
`jax.eval_shape` of the real initialisation, its shardings from `sharding.state_shardings` on a
`jax.sharding.AbstractMesh` of the target's size (no devices needed), and the bytes per device
from each leaf's shard shape. Nothing is allocated.

Targets (one JAX device per chip or GPU):
  tpu_v4_32:  a TPU v4-32 slice is 16 v4 chips (32 TensorCores; each chip is one megacore JAX
              device), 32 GiB HBM per chip, 4 hosts x 4 chips.
  h100_x8:    one host with 8 NVIDIA H100 80 GB.

--activations also estimates the activations of the train step (one device, the config's
model.dtype, model.attention, model.remat and train.microbatches = 1, batch --batch_per_device
and twice that) from its jaxpr, without compiling: `liveness_peak` runs the program in the order
JAX emits it and tracks the bytes of every value from the equation that makes it to its last use.
The difference between the two batches gives the bytes per example, the rest the fixed workspace
(gradients and optimizer temporaries). With it, each plan gives the per-device total at the
config's batch (global batch / devices, run in train.microbatches sequential parts): the state +
the fixed workspace + per-example activations x examples per microbatch, whether that fits the
device, and the fewest microbatches that would.

It is an estimate for an accelerator, from the program rather than from one backend's compiler:
XLA fuses elementwise chains (so it needs less than this), TPU pads minor dimensions to 128, and
the all-gathered parameter buffers of an fsdp mesh are not included. --xla_cpu adds XLA:CPU's
temporary allocation of the compiled step (`compiled.memory_analysis()`) as a cross-check; it
agrees with the estimate without rematerialisation, but the CPU pipeline removes the optimisation
barriers that keep recomputation apart, so it cannot show what model.remat saves (and it takes
minutes to compile at 1024x1024). The 'auto' attention resolves for the CPU here (chunked for
long sequences); on a GPU or TPU it takes the fused kernels, which hold no score matrix either.
"""

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from jax.extend import core as jcore
from jax.sharding import AbstractMesh

from pix2seq_d_jax import config_lib
from pix2seq_d_jax import sharding
from pix2seq_d_jax import state as state_lib

GIB = 2**30
TARGETS = {
    'tpu_v4_32': {'devices': 16, 'hbm_bytes': 32 * GIB,
                  'meshes': ((('data', 16), ('fsdp', 1)), (('data', 4), ('fsdp', 4)),
                             (('data', 1), ('fsdp', 16)))},
    'h100_x8': {'devices': 8, 'hbm_bytes': 80 * 10**9,
                'meshes': ((('data', 8), ('fsdp', 1)), (('data', 1), ('fsdp', 8)))},
}
GROUPS = ('params', 'batch_stats', 'ema_params', 'ema_batch_stats', 'opt_state', 'step', 'rng')


def _nbytes(shape, dtype) -> int:
  # PRNG key dtypes have an itemsize but are no NumPy dtype.
  itemsize = dtype.itemsize if hasattr(dtype, 'itemsize') else np.dtype(dtype).itemsize
  return int(np.prod(shape, dtype=np.int64)) * itemsize


def state_plan(abstract, mesh_config) -> dict:
  """Bytes per device of each part of the state on an abstract mesh of `mesh_config`."""
  sizes = tuple(size for _, size in mesh_config)
  mesh = AbstractMesh(sizes, tuple(name for name, _ in mesh_config))
  shardings = sharding.state_shardings(abstract, mesh)
  sharding.check_sharded(shardings, abstract, mesh)
  per_group = {}
  sharded_leaves = total_leaves = 0
  largest_replicated = (0, '')
  for group in GROUPS:
    leaves = jax.tree_util.tree_flatten_with_path(getattr(abstract, group))[0]
    group_shardings = jax.tree.leaves(getattr(shardings, group))
    device_bytes = full_bytes = 0
    for (path, x), s in zip(leaves, group_shardings):
      shard = _nbytes(s.shard_shape(x.shape), x.dtype)
      full = _nbytes(x.shape, x.dtype)
      device_bytes += shard
      full_bytes += full
      total_leaves += 1
      if shard < full:
        sharded_leaves += 1
      elif group == 'params' and full > largest_replicated[0]:
        largest_replicated = (full, jax.tree_util.keystr(path) + f' {tuple(x.shape)}')
    per_group[group] = {'per_device_bytes': device_bytes, 'unsharded_bytes': full_bytes}
  total = sum(g['per_device_bytes'] for g in per_group.values())
  return {'mesh': dict(mesh_config), 'per_device_bytes': total,
          'per_device_gib': round(total / GIB, 3),
          'parts_per_device_mib': {k: round(v['per_device_bytes'] / 2**20, 1)
                                   for k, v in per_group.items()},
          'sharded_leaves': sharded_leaves, 'leaves': total_leaves,
          'largest_replicated_param': {'name': largest_replicated[1],
                                       'mib': round(largest_replicated[0] / 2**20, 2)}}


def _step_and_inputs(config_spec: str, overrides, b: int):
  """The 1-device train step of the config at batch b (microbatches 1), with abstract inputs."""
  import functools  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(config_spec, list(overrides) + [f'train.batch_size={b}',
                                                                  'train.microbatches=1'])
  setup = state_lib.setup(config, 1000, 0)
  model, tx, schedule, abstract = setup.model, setup.tx, setup.lr_schedule, setup.abstract
  m = config.model
  batch_shapes = {'image': jax.ShapeDtypeStruct((b, *m.image_size, 3), np.float32),
                  'masks': jax.ShapeDtypeStruct((b, *m.mask_size, 2), np.int32)}
  if m.num_cond_frames:
    batch_shapes['cond_masks'] = jax.ShapeDtypeStruct(
        (b, m.num_cond_frames, *m.mask_size, 2), np.int32)
  step = functools.partial(train_step_lib.train_step, model=model, tx=tx, lr_schedule=schedule,
                           settings=train_step_lib.StepSettings.from_config(config))
  return step, abstract, batch_shapes, config


def _inner_jaxprs(eqn):
  for value in eqn.params.values():
    for item in (value if isinstance(value, (list, tuple)) else [value]):
      if isinstance(item, jcore.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jcore.Jaxpr):
        yield item


def liveness_peak(jaxpr, count_outputs: bool = True) -> int:
  """Peak bytes of the values a jaxpr defines while it runs in program order.

  Each value lives from the equation that makes it to its last use (jaxpr outputs to the end);
  an equation with inner jaxprs (jit, remat, scan bodies, custom derivatives) adds the peak of
  the largest one while it runs. The jaxpr's inputs are not counted, nor, with count_outputs
  False, its outputs (the donated state of a train step takes its inputs' buffers). Nothing is
  fused, so this over-counts elementwise chains that XLA would fuse; the order is the one JAX
  emits, which keeps rematerialised recomputation next to its use in the backward pass.
  """
  last_use = {}
  for i, eqn in enumerate(jaxpr.eqns):
    for v in eqn.invars:
      if isinstance(v, jcore.Var):
        last_use[v] = i
  outputs = {v for v in jaxpr.outvars if isinstance(v, jcore.Var)}

  def size(v) -> int:
    aval = v.aval
    if not hasattr(aval, 'shape') or (v in outputs and not count_outputs):
      return 0
    return _nbytes(aval.shape, aval.dtype)

  live, peak, alive = 0, 0, {}
  for i, eqn in enumerate(jaxpr.eqns):
    inner = max([liveness_peak(j) for j in _inner_jaxprs(eqn)] or [0])
    made = [v for v in eqn.outvars if not isinstance(v, jcore.DropVar)
            and (v in last_use or v in outputs)]
    peak = max(peak, live + max(inner, sum(size(v) for v in made)))
    for v in made:
      alive[v] = size(v)
      live += alive[v]
    for v in eqn.invars:
      if isinstance(v, jcore.Var) and last_use.get(v) == i and v in alive and v not in outputs:
        live -= alive.pop(v)
    peak = max(peak, live)
  return peak


def activation_estimate(config_spec: str, overrides, batch: int, xla_cpu: bool = False) -> dict:
  """Activation bytes of the 1-device train step at batch `batch` and `2 * batch`: the liveness
  peak of its jaxpr (`liveness_peak`) and, with xla_cpu, XLA:CPU's temporary allocation."""
  out, cpu = {}, {}
  for b in (batch, 2 * batch):
    step, abstract, batch_shapes, config = _step_and_inputs(config_spec, overrides, b)
    start = time.perf_counter()
    jaxpr = jax.make_jaxpr(step)(abstract, batch_shapes)
    out[b] = {'peak_bytes': liveness_peak(jaxpr.jaxpr, count_outputs=False),
              'trace_s': round(time.perf_counter() - start, 1)}
    if xla_cpu:
      start = time.perf_counter()
      compiled = jax.jit(step, donate_argnums=0).lower(abstract, batch_shapes).compile()
      memory = compiled.memory_analysis()
      cpu[b] = {'temp_bytes': int(memory.temp_size_in_bytes),
                'compile_s': round(time.perf_counter() - start, 1)}
  per_example = (out[2 * batch]['peak_bytes'] - out[batch]['peak_bytes']) / batch
  m = config.model
  result = {
      'what': 'liveness peak of the train step\'s jaxpr in program order (values from the '
              'equation that makes them to their last use; no fusion), per example and fixed; '
              'see the module docstring',
      'settings': {'dtype': m.dtype, 'attention': m.attention, 'remat': m.remat,
                   'remat_policy': m.remat_policy, 'image_size': list(m.image_size),
                   'mask_size': list(m.mask_size)},
      'by_batch': {str(k): v for k, v in out.items()},
      'per_example_bytes': int(per_example),
      'fixed_bytes': int(max(out[batch]['peak_bytes'] - batch * per_example, 0)),
      'per_example_gib': round(per_example / GIB, 2)}
  if xla_cpu:
    cpu_example = (cpu[2 * batch]['temp_bytes'] - cpu[batch]['temp_bytes']) / batch
    result['xla_cpu'] = {
        'what': 'XLA:CPU temp allocation (compiled.memory_analysis()); the CPU pipeline drops '
                'the optimisation barriers that keep rematerialised recomputation apart, so it '
                'does not show what model.remat saves on an accelerator',
        'by_batch': {str(k): v for k, v in cpu.items()},
        'per_example_gib': round(cpu_example / GIB, 2)}
  return result


def batch_plan(state_bytes: int, activations: dict, batch_per_device: float, microbatches: int,
               hbm_bytes: int) -> dict:
  """Per-device bytes at `batch_per_device` examples in `microbatches` parts, and the fewest
  microbatches (dividing the per-device batch) that fit `hbm_bytes`."""
  def total(m):
    per_micro = batch_per_device / m
    return state_bytes + activations['fixed_bytes'] + activations['per_example_bytes'] * per_micro
  need = None
  b = int(batch_per_device)
  if b >= 1 and b == batch_per_device:
    need = next((m for m in range(1, b + 1) if b % m == 0 and total(m) <= hbm_bytes), None)
  free = hbm_bytes - state_bytes - activations['fixed_bytes']
  return {'batch_per_device': batch_per_device, 'microbatches': microbatches,
          'examples_per_microbatch': batch_per_device / microbatches,
          'total_gib': round(total(microbatches) / GIB, 2),
          'fits': bool(total(microbatches) <= hbm_bytes),
          'fewest_microbatches_that_fit': need,
          'max_examples_per_microbatch': max(int(free // activations['per_example_bytes']), 0)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/coco_panoptic.py')
  parser.add_argument('--activations', action='store_true',
                      help='also estimate the activations from the train step\'s jaxpr')
  parser.add_argument('--xla_cpu', action='store_true',
                      help='with --activations: also compile the step for XLA:CPU\'s figure '
                           '(minutes at 1024x1024)')
  parser.add_argument('--batch_per_device', type=int, default=1)
  parser.add_argument('overrides', nargs='*', help='key=value config overrides')
  args = parser.parse_args()
  config = config_lib.load_config(args.config, args.overrides)
  abstract = state_lib.abstract_state(config)
  params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract.params)))
  out = {'config': args.config, 'overrides': args.overrides, 'params': params,
         'state_bytes_unsharded': int(sum(_nbytes(x.shape, x.dtype)
                                          for x in jax.tree.leaves(abstract))),
         'fsdp_min_size': sharding.FSDP_MIN_SIZE, 'targets': {}}
  activations = None
  if args.activations:
    activations = activation_estimate(args.config, args.overrides, args.batch_per_device,
                                      args.xla_cpu)
    out['activations'] = activations
  else:
    out['activations'] = 'not computed (pass --activations)'
  for name, target in TARGETS.items():
    plans = []
    for mesh_config in target['meshes']:
      plan = state_plan(abstract, mesh_config)
      plan['fraction_of_hbm'] = round(plan['per_device_bytes'] / target['hbm_bytes'], 4)
      if activations is not None:
        b = args.batch_per_device
        temp = activations['by_batch'][str(b)]['peak_bytes']
        plan[f'state_plus_activations_gib_at_batch_{b}_per_device'] = round(
            (plan['per_device_bytes'] + temp) / GIB, 3)
        plan['config_batch'] = batch_plan(
            plan['per_device_bytes'], activations, config.train.batch_size / target['devices'],
            config.train.microbatches, target['hbm_bytes'])
      plans.append(plan)
    out['targets'][name] = {
        'devices': target['devices'], 'hbm_gib_per_device': round(target['hbm_bytes'] / GIB, 1),
        # The config's global batch per device (coco_panoptic.py: 16 at stage=high, the
        # default; 512 at :stage=low).
        'config_batch_per_device': config.train.batch_size / target['devices'],
        'plans': plans}
  print(json.dumps(out, indent=2))


if __name__ == '__main__':
  main()
