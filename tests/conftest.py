"""Shared fixtures for the core tests: a tiny model config, cheap random weights and a jit that
compiles quickly.

On a CPU the tests' time goes to XLA compilation. Random initialisers cost seconds of it, so
tests that only need *some* weights of the right shapes take them from `random_variables`
(numpy-filled, nothing compiled); tests about initialisation itself call `model.init`.
"""

import functools
import json
import os
import pathlib
import re
import tempfile

import jax
import numpy as np
import pytest

from pix2seq_d_jax import config_lib
from pix2seq_d_jax.models import pix2seq_d

REPO = pathlib.Path(__file__).resolve().parents[1]


def pytest_configure(config):
  """One persistent compilation cache for the whole test run, in-process and in the processes
  the tests start (they inherit JAX_COMPILATION_CACHE_DIR): many tests compile the same programs
  (the runlocal train step, the tiny model's sampler), and a cached executable is the one XLA
  compiled. A cache the caller named is kept; else a fresh folder, so no run reads another's."""
  del config
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='pix2seq_d_jax_cache_')
  jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])


def pytest_xdist_auto_num_workers(config):
  """`-n auto` (README's test command): one pytest-xdist worker per core this process may use,
  at most 4. Most tests spend their time in single-threaded XLA compilation, so two workers on two
  cores nearly halve the run; beyond 4, the tests that start two-process runs and fake 8-device
  meshes would crowd each other. The workers share the compilation cache above."""
  del config
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return max(1, min(cores or 1, 4))

# The shapes model scaled down further: 32x32 images, 16x16 masks, one layer per transformer.
TINY_OVERRIDES = (
    'dataset.num_classes=9',
    'model.image_size=(32, 32)',
    'model.mask_size=(16, 16)',
    'model.backbone.depths=(1, 1, 1)',
    'model.backbone.width=8',
    'model.encoder.num_layers=1',
    'model.encoder.dim=32',
    'model.encoder.num_heads=2',
    'model.encoder.mlp_dim=64',
    'model.fpn_dim=16',
    'model.decoder.dim=16',
    'model.decoder.ch_multipliers=(1, 2)',
    'model.decoder.num_res_blocks=(1, 1)',
    'model.decoder.transformer_dim=32',
    'model.decoder.transformer_layers=1',
    'model.decoder.transformer_head_dim=16',
    'model.decoder.transformer_mlp_dim=64',
)


# XLA:CPU options that cut the compile time of the tests' programs 3-4x (measured on the
# train step): no LLVM optimisation, the older per-fusion emitters, no emitter verification.
# The programs are the same; they only run slower, which does not matter at these sizes.
FAST_COMPILE = {
    'xla_backend_optimization_level': 0,
    'xla_cpu_use_fusion_emitters': False,
    'xla_cpu_emitter_verification_level': 0,
}


@pytest.fixture(scope='session')
def jit():
  """`jax.jit` that compiles with FAST_COMPILE."""
  return functools.partial(jax.jit, compiler_options=FAST_COMPILE)


@pytest.fixture(scope='session')
def tiny_config():
  """Factory: `tiny_config(*overrides)` -> a locked ConfigDict of the tiny shapes model."""
  def make(*overrides):
    return config_lib.load_config(str(REPO / 'configs' / 'shapes.py'),
                                  list(TINY_OVERRIDES) + list(overrides))
  return make


@pytest.fixture(scope='session')
def random_variables():
  """Factory: `random_variables(model, config, seed)` -> {'params', 'batch_stats'} of random
  values with the shapes `model.init` gives (`pix2seq_d.random_variables`, as jax arrays)."""
  def make(model, config, seed=0):
    return jax.tree.map(jax.numpy.asarray, pix2seq_d.random_variables(model, config, seed))
  return make


def save_workdir(path: pathlib.Path, config, variables: dict, categories: list[dict]):
  """Writes a workdir that `Predictor.from_workdir` reads: `variables` as both the weights and
  the EMA weights of step 0 (the optimizer state zeros), config.json and categories.json."""
  # Imported here, not at the top: tests/multiprocess_workers.py imports this module in its worker
  # processes before jax.distributed starts; with orbax loaded that early, the SIGTERM to one of two
  # processes no longer stopped both (test_multihost.py failed: both ran to the end).
  from pix2seq_d_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  abstract = state_lib.abstract_state(config)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  state = zeros.replace(params=variables['params'], batch_stats=variables['batch_stats'],
                        ema_params=variables['params'],
                        ema_batch_stats=variables['batch_stats'])
  manager = checkpoint.make_manager(path, config)
  checkpoint.save(manager, state, {'step': 0})
  manager.wait_until_finished()
  manager.close()
  checkpoint.save_config(path, config)
  (path / 'categories.json').write_text(json.dumps(categories))
  return path


def inlined_count(mlir: str, op: str) -> int:
  """Occurrences of `op` in @main of a lowered program's text with every function call expanded
  at its call site. A call inside a while body or a cond branch is one site: the loop holds its
  body once, whatever the trip count."""
  bodies = {}
  for chunk in re.split(r'\n(?=\s*func\.func )', mlir):
    m = re.search(r'func\.func (?:public |private )?@([\w$.-]+)\(', chunk)
    if m:
      bodies[m.group(1)] = chunk

  @functools.cache
  def count(name):
    body = bodies[name]
    return body.count(op) + sum(count(c) for c in re.findall(r'call @([\w$.-]+)\(', body))
  return count('main')
