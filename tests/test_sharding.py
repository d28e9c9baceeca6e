"""Sharded training is the same training: the train step on meshes (8, 1), (4, 2) and (2, 4) of 8
fake CPU devices matches one device; the fsdp meshes really shard the large tensors; a checkpoint
written on one mesh restores onto another mesh and onto one device, and training goes on.

The multi-device runs happen in subprocesses (tests/multiprocess_workers.py), started together:
one with 8 fake devices runs the three meshes and saves a checkpoint on (4, 2); one with a single
device runs the reference and then restores that checkpoint. The partition-rule tests at the top
run here, on abstract meshes (no devices needed).
"""

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, NamedSharding
from jax.sharding import PartitionSpec as P

import multiprocess_workers as hm
from pix2seq_d_jax import sharding
from pix2seq_d_jax import state as state_lib

STEPS = 3
MESHES = {'4x2': (('data', 4), ('fsdp', 2)), '8x1': (('data', 8), ('fsdp', 1)),
          '2x4': (('data', 2), ('fsdp', 4))}
ONE = (('data', 1), ('fsdp', 1))

# Tolerances against the 1-device run. Every mesh computes the same float32 program, but the
# batch (and on fsdp meshes the large kernels) is split differently, so the sums over the batch
# and the gradient reductions run in another order and each differs by float32 rounding
# (~1e-7 relative). Measured after 3 AdamW steps (lr 2e-3): losses agree to ~2e-7 relative; the
# parameter updates (final - initial) agree to ~1.4e-5 in relative L2 norm. Adam divides by
# sqrt(v): where a gradient is itself rounding noise (attention key biases have an analytically
# zero gradient) the update is noise too, but below 1e-6 absolute; elsewhere a leaf's largest
# deviation is < 0.3% of its largest update. The bounds below leave a 10-70x margin, while a
# real mistake (a batch shard read twice, a missing or double gradient reduction, BatchNorm
# statistics over a part of the batch) changes the loss at 1e-3 and the updates by O(100%).
LOSS_RTOL = 1e-5          # per-step loss, loss_class, loss_id, grad_norm
UPDATE_RTOL = 1e-3        # ||update_mesh - update_1dev|| / ||update_1dev|| over all params
LEAF_FRACTION = 1e-2      # per leaf: max |x_mesh - x_1dev| <= 1e-2 max |change| + LEAF_ATOL
LEAF_ATOL = 1e-6


def _abstract(shapes):
  return {name: jax.ShapeDtypeStruct(shape, np.float32) for name, shape in shapes.items()}


def test_fsdp_rule_shards_the_largest_divisible_dim_of_large_tensors():
  """fsdp_spec: tensors under 2^16 elements and fsdp = 1 stay replicated; otherwise the largest
  dimension that fsdp divides is sharded, falling back to a smaller one, else replicated."""
  assert sharding.fsdp_spec((32, 2048), 4) == P(None, 'fsdp')
  assert sharding.fsdp_spec((2048, 32), 2) == P('fsdp', None)
  assert sharding.fsdp_spec((3, 3, 64, 2050), 4) == P(None, None, 'fsdp', None)
  assert sharding.fsdp_spec((255, 257), 2) == P()
  assert sharding.fsdp_spec((255, 256), 1) == P()
  assert sharding.fsdp_spec((64, 2047), 2) == P('fsdp', None)
  assert sharding.fsdp_spec((16, 2048), 4) == P()             # 2^15 elements: too small.


def test_check_sharded_raises_only_when_a_large_tensor_is_replicated():
  """check_sharded accepts the rule's own shardings on an fsdp mesh, raises naming the leaf
  when a large divisible tensor is replicated, and accepts anything when fsdp = 1."""
  mesh = AbstractMesh((2, 4), sharding.BATCH_AXES)
  state = _abstract({'big': (32, 2048), 'small': (32, 64), 'odd': (255, 257)})
  shardings = sharding.state_shardings(state, mesh)
  assert shardings['big'].spec == P(None, 'fsdp')
  assert shardings['small'].spec == P() and shardings['odd'].spec == P()
  sharding.check_sharded(shardings, state, mesh)
  bad = dict(shardings, big=NamedSharding(mesh, P()))
  with pytest.raises(AssertionError, match=r"\['big'\] \(32, 2048\) is replicated"):
    sharding.check_sharded(bad, state, mesh)
  # Sharded over both axes (a tuple entry) still counts as sharded over 'fsdp'.
  both = dict(shardings, big=NamedSharding(mesh, P(None, ('data', 'fsdp'))))
  sharding.check_sharded(both, state, mesh)
  dp = AbstractMesh((8, 1), sharding.BATCH_AXES)
  sharding.check_sharded(jax.tree.map(lambda _: NamedSharding(dp, P()), state), state, dp)


def test_state_shardings_of_the_train_state_on_an_abstract_mesh(tiny_config):
  """The whole TrainState on an abstract (2, 4) mesh: exactly the leaves of >= 2^16 elements
  are sharded (params, EMA and both Adam moments of each), and check_sharded passes."""
  config = tiny_config('model.encoder.mlp_dim=2048')
  abstract = state_lib.abstract_state(config)
  mesh = AbstractMesh((2, 4), sharding.BATCH_AXES)
  shardings = sharding.state_shardings(abstract, mesh)
  sharding.check_sharded(shardings, abstract, mesh)
  flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
  sharded = [jax.tree_util.keystr(p) for (p, x), s in zip(flat, jax.tree.leaves(shardings))
             if 'fsdp' in list(s.spec)]
  big = [jax.tree_util.keystr(p) for p, x in flat if np.prod(x.shape) >= sharding.FSDP_MIN_SIZE]
  assert sharded == big and len(big) == 8, sharded    # 2 kernels x (params, ema, mu, nu)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Results of the two worker processes: {'4x2' | '8x1' | '2x4' | '1x1' | 'restored_8x1' |
  'restored_2x4' | 'restored_1x1': dict}."""
  root = tmp_path_factory.mktemp('meshes')
  cache = root / 'compile_cache'
  out8, out1 = root / 'devices8', root / 'devices1'
  ckpt = dict(restore_from=str(out8 / 'run_4x2'), wait_for=str(out8 / 'saved_4x2'))
  p8 = hm.start('meshes', dict(out=str(out8), meshes=list(MESHES.values()), steps=STEPS,
                               save_mesh='4x2', restore_meshes=[MESHES['8x1'], MESHES['2x4']],
                               **ckpt), devices=8, cache_dir=cache, log=root / 'log8')
  p1 = hm.start('meshes', dict(out=str(out1), meshes=[ONE], steps=STEPS, restore_meshes=[ONE],
                               **ckpt), devices=1, cache_dir=cache, log=root / 'log1')
  try:
    hm.finish(p8, log=root / 'log8')
  except AssertionError:
    p1.kill()         # It would wait for the checkpoint p8 did not write.
    raise
  hm.finish(p1, log=root / 'log1')
  results = {tag: hm.load(out8 / f'{tag}.pkl') for tag in MESHES}
  results['1x1'] = hm.load(out1 / '1x1.pkl')
  for tag in ('8x1', '2x4'):
    results[f'restored_{tag}'] = hm.load(out8 / f'restored_{tag}.pkl')
  results['restored_1x1'] = hm.load(out1 / 'restored_1x1.pkl')
  return results


@pytest.mark.parametrize('tag', list(MESHES))
def test_mesh_matches_one_device(runs, tag):
  """After 3 steps on the same batches from the same initial state, every step's loss and
  gradient norm, the parameter updates as a whole, and every leaf of the state (params, EMA,
  BatchNorm statistics, Adam moments, step, rng) on the mesh equal the 1-device run within the
  tolerances above."""
  ref, got = runs['1x1'], runs[tag]
  assert got['mesh_shape'] == dict(zip(('data', 'fsdp'), (s for _, s in MESHES[tag])))
  for k, (m_ref, m) in enumerate(zip(ref['metrics'], got['metrics'])):
    assert m['nonfinite'] == 0 and m_ref['nonfinite'] == 0
    for key in ('loss', 'loss_class', 'loss_id', 'grad_norm'):
      np.testing.assert_allclose(m[key], m_ref[key], rtol=LOSS_RTOL, err_msg=f'step {k} {key}')
  assert ref['state'].keys() == got['state'].keys()
  initial = ref['initial']
  num = den = 0.0
  for key, value in ref['state'].items():
    if value.dtype.kind != 'f':                       # step, rng, optimizer counts: exact
      np.testing.assert_array_equal(got['state'][key], value, err_msg=key)
      continue
    change = np.abs(value - initial[key]).max()
    np.testing.assert_allclose(got['state'][key], value, rtol=0,
                               atol=LEAF_FRACTION * change + LEAF_ATOL, err_msg=key)
    if key.startswith('.params'):
      num += np.sum((got['state'][key] - value).astype(np.float64) ** 2)
      den += np.sum((value - initial[key]).astype(np.float64) ** 2)
  assert int(got['state']['.step']) == STEPS
  assert den > 0 and np.sqrt(num / den) < UPDATE_RTOL, np.sqrt(num / den)


def test_initialisation_on_a_sharded_mesh_equals_one_device(runs):
  """The state initialised by the jitted init with (4, 2) output shardings (8 devices) is
  bitwise the one initialised on one device: random initialisers do not depend on the
  sharding."""
  ref, got = runs['1x1']['initial'], runs['4x2']['initial']
  assert ref.keys() == got.keys()
  for key, value in ref.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_fsdp_meshes_shard_params_ema_and_optimizer_state(runs):
  """On (4, 2) and (2, 4) the encoder MLP kernels (2^16 elements) and their EMA and Adam
  moments come out of the train step sharded over 'fsdp' (each device holds 1/fsdp of the
  kernel), everything else is replicated; on (8, 1) everything is replicated. With one such
  leaf replicated, check_sharded raises naming it."""
  for tag in ('4x2', '2x4'):
    fsdp = runs[tag]['mesh_shape']['fsdp']
    specs, shapes = runs[tag]['specs'], runs[tag]['shard_shapes']
    sharded = sorted(k for k, spec in specs.items() if 'fsdp' in spec)
    expected = sorted(prefix + hm.BIG_KERNEL.replace('Dense_0', dense) for dense in
                      ('Dense_0', 'Dense_1') for prefix in
                      ('.params', '.ema_params', '.opt_state[1][0].mu', '.opt_state[1][0].nu'))
    assert sharded == expected, (tag, sharded)
    for key in sharded:
      full = runs[tag]['state'][key].shape
      assert np.prod(shapes[key]) * fsdp == np.prod(full), (tag, key, shapes[key], full)
    assert all(all(e is None for e in spec) for k, spec in specs.items() if k not in sharded)
    assert 'is replicated on an fsdp=' in runs[tag]['check_sharded_error'], tag
  assert all(all(e is None for e in s) for s in runs['8x1']['specs'].values())
  assert runs['8x1']['check_sharded_error'] == ''


@pytest.mark.parametrize('tag', ['8x1', '2x4', '1x1'])
def test_checkpoint_from_4x2_restores_on_other_meshes_and_trains_on(runs, tag):
  """The checkpoint saved on (4, 2) after 3 steps restores onto (8, 1), (2, 4) and 1 device
  bit for bit, with the target mesh's shardings; one more step there gives a finite loss, step
  4, and the same loss on every target (to the equivalence tolerance)."""
  saved, restored = runs['4x2'], runs[f'restored_{tag}']
  assert restored['start'] == STEPS
  assert saved['state'].keys() == restored['state'].keys()
  for key, value in saved['state'].items():
    np.testing.assert_array_equal(restored['state'][key], value, err_msg=key)
  fsdp_leaves = [k for k, spec in restored['specs'].items() if 'fsdp' in spec]
  assert bool(fsdp_leaves) == (tag == '2x4')
  assert restored['step_after'] == STEPS + 1
  m = restored['metrics']
  assert m['nonfinite'] == 0 and np.isfinite(m['loss'])
  np.testing.assert_allclose(m['loss'], runs['restored_1x1']['metrics']['loss'],
                             rtol=LOSS_RTOL)
