"""Two processes train as one: `train_and_evaluate` in two local processes joined by
`jax.distributed.initialize` on 127.0.0.1 (2 fake CPU devices each, gloo collectives) matches one
process with 4 devices, each process reads its own part of every batch, only process 0 writes
files into the workdir, and a SIGTERM to one process stops both at the same step.

Both runs use the mesh (('data', 1), ('fsdp', 4)), so the large kernels are sharded across the
two processes and both write checkpoint shards. All three processes start together. The
one-process run trains 8 steps with a checkpoint after each. The two-process run evaluates after
step 2, and process 1 alone gets a SIGTERM once it has logged step 2: both processes must write
the checkpoint of one agreed step and leave with 143; that checkpoint is compared with the
one-process checkpoint of the same step.
"""

import os
import signal
import socket
import time

import jax
import numpy as np
import pytest

import multiprocess_workers as hm
from pix2seq_d_jax import checkpoint

STEPS = 8
CHECKED_BATCHES = 3
MESH = "mesh=(('data', 1), ('fsdp', 4))"
# Same program, same devices per mesh position; only the all-reduce implementation differs
# (gloo between processes, in-process otherwise), so sums may be reduced in another order (see
# test_sharding.py for how that shows after a few AdamW steps). Measured: losses equal to
# ~1e-7 relative, state leaves to < 3e-6 absolute (Adam moments and biases whose gradient is
# rounding noise); one AdamW step moves a weight by up to lr = 2e-3, which is what a wrong batch
# shard or a missing reduction would change.
LOSS_RTOL = 1e-5
STATE_ATOL = 3e-5        # 1.5% of one step's largest update, 10x the measured deviation


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('multihost')
  cache = root / 'compile_cache'
  port = _free_port()
  procs = []
  for pid in range(2):
    args = dict(workdir=str(root / 'two'), out=str(root / 'out_two'), steps=STEPS,
                num_processes=2, process_id=pid, port=port, evaluate=True,
                check_batches=CHECKED_BATCHES, overrides=[MESH, 'eval.every_steps=2'])
    procs.append(hm.start('train_loop', args, devices=2, cache_dir=cache,
                          log=root / f'log_two_{pid}'))
  args = dict(workdir=str(root / 'one'), out=str(root / 'out_one'), steps=STEPS,
              check_batches=CHECKED_BATCHES,
              overrides=[MESH, 'train.checkpoint_every_steps=1', f'train.keep_checkpoints={STEPS}'])
  procs.append(hm.start('train_loop', args, devices=4, cache_dir=cache, log=root / 'log_one'))
  # Preempt process 1 only, once it has logged step 2.
  log1 = root / 'log_two_1'
  deadline = time.time() + 400
  while (f'step 2/{STEPS}' not in log1.read_text() and procs[1].poll() is None
         and time.time() < deadline):
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  for proc, log in zip(procs, ('log_two_0', 'log_two_1', 'log_one')):
    hm.finish(proc, log=root / log, timeout=500)
  return {'root': root, 'two': [hm.load(root / 'out_two' / f'process_{p}.pkl') for p in (0, 1)],
          'one': hm.load(root / 'out_one' / 'process_0.pkl'),
          'logs': [(root / f'log_two_{p}').read_text() for p in (0, 1)]}


def test_sigterm_to_one_process_stops_both_at_the_same_step(runs):
  """Process 1 alone got the SIGTERM, yet both processes announce the same stop step (after
  the signal, before the end), write its checkpoint and leave the loop with 143."""
  stops = []
  for p in (0, 1):
    assert runs['two'][p]['exit_code'] == 143
    line = next(l for l in runs['logs'][p].splitlines() if 'every process stops at step' in l)
    stops.append(int(line.rsplit(' ', 1)[1].rstrip('.')))
    assert f'Checkpoint of step {stops[-1]} written; exiting after SIGTERM' in runs['logs'][p]
    assert runs['two'][p]['step'] == stops[-1]
  assert stops[0] == stops[1] and 2 < stops[0] < STEPS, stops


def test_two_processes_match_one_process_with_four_devices(runs):
  """At the step where the two-process run stopped, its state (params, EMA, BatchNorm
  statistics, Adam moments, step, rng; gathered by both processes) equals the one-process
  run's checkpoint of that step, and every train metric logged up to it is the same."""
  one, two = runs['one'], runs['two'][0]
  assert two['devices'] == 2 and one['devices'] == 4
  stop = two['step']
  for key, value in two['state'].items():
    np.testing.assert_array_equal(runs['two'][1]['state'][key], value, err_msg=key)
  _, state, meta = checkpoint.load_for_inference(runs['root'] / 'one', stop)
  assert meta['step'] == stop
  ref = {jax.tree_util.keystr(p): np.asarray(x) for p, x in
         jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]}
  assert ref.keys() == two['state'].keys()
  for key, value in ref.items():
    np.testing.assert_allclose(two['state'][key], value, rtol=0, atol=STATE_ATOL, err_msg=key)
  scalars_one = hm.read_scalars(runs['root'] / 'one')
  scalars_two = hm.read_scalars(runs['root'] / 'two')
  train_keys = sorted(k for k in scalars_two if k[0].startswith('train/'))
  assert {step for _, step in train_keys} == set(range(1, stop + 1))
  for key in train_keys:
    np.testing.assert_allclose(scalars_two[key], scalars_one[key], rtol=LOSS_RTOL, err_msg=key)


def test_each_process_reads_its_half_of_the_global_batch(runs):
  """Process p's pipeline batch is rows [4p, 4p + 4) of the global batch; the global arrays
  built from the two halves (gathered back) equal the one-process global batch of every step."""
  one = runs['one']['local']
  halves = [runs['two'][p]['local'] for p in (0, 1)]
  for step in range(CHECKED_BATCHES):
    assert not np.array_equal(halves[0][step]['id'], halves[1][step]['id'])
    for key in ('image', 'masks', 'id'):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), one[step][key])
    for p in (0, 1):
      for key in ('image', 'masks'):
        np.testing.assert_array_equal(runs['two'][p]['global'][step][key], one[step][key])


def test_only_process_0_writes_into_the_workdir(runs):
  """Outside checkpoints/ (where every process writes its own shards), process 1 creates or
  writes nothing; process 0 wrote the config, the categories and the evaluation of step 2; the
  TensorBoard events file is process 0's."""
  p0, p1 = runs['two']
  assert p1['writes'] == [], p1['writes']
  assert {'config.json', 'categories.json'} <= set(p0['writes'])
  assert os.path.join('eval', 'step_2', 'metrics.json') in p0['writes']
  workdir = runs['root'] / 'two'
  events = sorted(p.name for p in workdir.glob('events.out.tfevents.*'))
  assert len(events) == 1 and f'.{p0["pid"]}.' in events[0], (events, p0['pid'], p1['pid'])
  assert {p.name for p in workdir.iterdir()} == {
      'checkpoints', 'config.json', 'categories.json', 'eval', events[0]}
  assert (workdir / 'checkpoints' / str(p0['step'])).is_dir()
