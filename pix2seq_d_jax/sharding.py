"""Device mesh, partition rules and multi-host helpers.

The mesh has axes ('data', 'fsdp') sized by `config.mesh` (-1 = the remaining devices). Batches
are split over both axes. Parameters, their EMA and the optimizer state are sharded over 'fsdp'
along their largest dimension that divides evenly, when they hold at least
`FSDP_MIN_SIZE` elements; smaller ones are replicated. With fsdp = 1 everything is replicated
(plain data parallelism).
"""

import importlib.util
import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')
FSDP_MIN_SIZE = 2**16


def make_mesh(mesh_config, devices=None) -> Mesh:
  """A Mesh from `config.mesh`, e.g. (('data', -1), ('fsdp', 1))."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  names = tuple(name for name, _ in mesh_config)
  if names != BATCH_AXES:
    raise ValueError(f'config.mesh axes are {names}; expected {BATCH_AXES}, e.g. '
                     "(('data', -1), ('fsdp', 1)).")
  sizes = [int(size) for _, size in mesh_config]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh={mesh_config}: at most one axis may be -1.')
  known = int(np.prod([s for s in sizes if s != -1]))
  if devices.size % known:
    raise ValueError(f'config.mesh={mesh_config} does not divide the {devices.size} devices.')
  sizes = [devices.size // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != devices.size:
    raise ValueError(f'config.mesh={mesh_config} uses {int(np.prod(sizes))} devices; there are '
                     f'{devices.size}. Use -1 for one axis to take the rest.')
  # Explicit Mesh(...) keeps the classic (auto) sharding mode; `jax.make_mesh` defaults to
  # explicit axes in this jax version.
  return Mesh(devices.reshape(sizes), names)


def fsdp_spec(shape, fsdp_size: int, min_size: int = FSDP_MIN_SIZE) -> P:
  """PartitionSpec sharding the largest evenly divisible dimension over 'fsdp'."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in np.argsort(shape)[::-1]:
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = 'fsdp'
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh):
  """NamedShardings for every leaf of a (possibly abstract) train state."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp)), abstract_state)


def _axis_names(spec: P) -> set:
  """Mesh axis names a PartitionSpec uses. (A PartitionSpec is a pytree leaf, not a tuple, in
  this jax version: `jax.tree.leaves(spec)` is `[spec]`, so look inside its entries.)"""
  names = set()
  for entry in spec:
    names.update(entry if isinstance(entry, tuple) else (entry,))
  names.discard(None)
  return names


def check_sharded(shardings, abstract_state, mesh: Mesh, min_size: int = FSDP_MIN_SIZE) -> None:
  """Raises if fsdp > 1 and a large tensor with an evenly divisible dimension is replicated."""
  fsdp = mesh.shape['fsdp']
  if fsdp == 1:
    return
  flat = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  shard_leaves = jax.tree.leaves(shardings)
  for (path, x), s in zip(flat, shard_leaves):
    big = int(np.prod(x.shape, dtype=np.int64)) >= min_size
    if big and any(d % fsdp == 0 for d in x.shape) and 'fsdp' not in _axis_names(s.spec):
      raise AssertionError(f'{jax.tree_util.keystr(path)} {x.shape} is replicated on an '
                           f'fsdp={fsdp} mesh; the partition rules should shard it.')


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict, mesh: Mesh) -> dict:
  """This process's numpy batch -> global jax arrays sharded over the batch axes."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), v)
          for k, v in local.items()}


def gather_to_host(x) -> np.ndarray:
  """A global array -> numpy on every process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def initialize_distributed(coordinator_address: str = '', num_processes: int = 0,
                           process_id: int = -1) -> None:
  """Calls `jax.distributed.initialize` when this is one of several processes.

  Explicit coordinates come from the arguments or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID. Otherwise Cloud TPU VMs (libtpu installed) and multi-task SLURM jobs are set
  up by jax from the VM metadata or SLURM_* variables. A plain single process does nothing.
  """
  address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  count = num_processes or int(os.environ.get('JAX_NUM_PROCESSES', '0') or 0)
  pid = process_id if process_id >= 0 else int(os.environ.get('JAX_PROCESS_ID', '-1') or -1)
  if address:
    if count <= 0 or pid < 0:
      raise ValueError('Multi-process run: with a coordinator address, also give the process '
                       'count and this process id (--num_processes/--process_id or '
                       'JAX_NUM_PROCESSES/JAX_PROCESS_ID).')
    jax.distributed.initialize(coordinator_address=address, num_processes=count,
                               process_id=pid)
  elif importlib.util.find_spec('libtpu') is not None:
    # A Cloud TPU VM (single host or pod slice): jax reads the topology from the VM metadata.
    jax.distributed.initialize()
  elif int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.distributed.initialize()   # jax reads SLURM_* itself.
  else:
    return
  logging.info('process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
