"""Interrupted training resumes exactly, and divergence stops it cleanly.

Every run is the command line `python -m pix2seq_d_jax.main --config=configs/shapes.py:runlocal
--mode=train` in a subprocess with 2 fake CPU devices on an fsdp mesh (1, 2), so the checkpoints
hold sharded tensors. One run goes uninterrupted to step 16; another is killed with SIGKILL once
its checkpoint 3 exists, restarted and stopped with SIGTERM, then restarted again to finish. The
two must end bitwise equal and have logged bitwise equal train metrics.
"""

import pathlib
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

import multiprocess_workers as hm
from pix2seq_d_jax import checkpoint

STEPS = 16
EVERY = 3
DEVICES = 2
# runlocal with the tests' tiny model (it compiles and steps several times faster; its encoder
# MLP kernels are the tensors the fsdp axis shards).
FLAGS = ('--config=configs/shapes.py:runlocal', '--mode=train',
         *(f'--config.{o}' for o in hm.MODEL_OVERRIDES),
         f'--config.train.num_steps={STEPS}', f'--config.train.checkpoint_every_steps={EVERY}',
         '--config.train.log_every_steps=1', '--config.train.keep_checkpoints=20',
         "--config.mesh=(('data', 1), ('fsdp', 2))")


class Run:
  """A `pix2seq_d_jax.main` process whose output lines are collected as they come."""

  def __init__(self, workdir, cache, *flags):
    self.workdir = pathlib.Path(workdir)
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'pix2seq_d_jax.main', *FLAGS, f'--workdir={workdir}', *flags],
        cwd=hm.REPO, env=hm.worker_env(DEVICES, cache), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    self.lines = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append(line)

  @property
  def log(self) -> str:
    return ''.join(self.lines)

  def wait_until(self, condition, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while not condition():
      if self.proc.poll() is not None:
        self._reader.join(5)
        raise AssertionError(f'the run exited ({self.proc.returncode}) before {what}:\n'
                             f'{self.log[-4000:]}')
      if time.time() > deadline:
        self.proc.kill()
        raise AssertionError(f'timed out waiting for {what}:\n{self.log[-4000:]}')
      time.sleep(0.02)

  def wait(self, timeout: float = 300) -> int:
    try:
      self.proc.wait(timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      raise
    self._reader.join(10)
    return self.proc.returncode


def saved_steps(workdir) -> list[int]:
  """Steps of the finished checkpoints (orbax renames a step's temporary folder when done)."""
  folder = checkpoint.checkpoint_dir(workdir)
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if (
      folder.exists()) else []


def state_leaves(workdir, step):
  _, state, meta = checkpoint.load_for_inference(workdir, step)
  assert meta['step'] == step
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The uninterrupted run, the interrupted one (killed, preempted, finished) and the NaN run.

  The uninterrupted run and the first interrupted one start together; the NaN run starts when
  the first has compiled (the processes share a compilation cache), beside the restarts.
  """
  root = tmp_path_factory.mktemp('resume')
  cache = root / 'compile_cache'
  ref = Run(root / 'uninterrupted', cache)
  broken = Run(root / 'interrupted', cache)
  workdir = broken.workdir
  ref.wait_until(lambda: f'step 1/{STEPS}' in ref.log, 'the first step')
  nan_workdir = root / 'nan'
  nan_log = root / 'nan.log'
  nan = hm.start('nan_main', dict(bad_step=4, argv=[*FLAGS, f'--workdir={nan_workdir}']),
                 devices=DEVICES, cache_dir=cache, log=nan_log)
  # SIGKILL once checkpoint 3 is on disk: nothing gets a chance to clean up.
  broken.wait_until(lambda: EVERY in saved_steps(workdir), f'checkpoint {EVERY}')
  broken.proc.send_signal(signal.SIGKILL)
  killed_rc = broken.wait()
  after_kill = saved_steps(workdir)

  # Restart; SIGTERM once it has trained two steps past the checkpoint it resumed from.
  resumed = Run(workdir, cache)
  target = f'step {after_kill[-1] + 2}/{STEPS}'
  resumed.wait_until(lambda: target in resumed.log, f'"{target}" in the log')
  resumed.proc.send_signal(signal.SIGTERM)
  term_rc = resumed.wait()
  after_term = saved_steps(workdir)

  final = Run(workdir, cache)
  assert final.wait() == 0, final.log[-4000:]
  assert ref.wait() == 0, ref.log[-4000:]
  nan.wait(timeout=300)
  return dict(ref=ref, killed_rc=killed_rc, after_kill=after_kill, resumed=resumed,
              term_rc=term_rc, after_term=after_term, final=final,
              nan=dict(rc=nan.returncode, log=nan_log.read_text(), workdir=nan_workdir))


def test_sigkill_then_restart_reaches_the_same_state_bitwise(runs):
  """Killed (SIGKILL) after checkpoint 3 and restarted with the same command, the run resumes
  from its newest checkpoint and ends at step 16 with params, EMA, BatchNorm statistics, Adam
  moments and rng bitwise equal to an uninterrupted run's."""
  assert runs['killed_rc'] == -signal.SIGKILL
  assert EVERY in runs['after_kill'] and runs['after_kill'][-1] < STEPS
  assert 'Resumed from' in runs['resumed'].log
  assert f'at step {runs["after_kill"][-1]}.' in runs['resumed'].log
  ref = state_leaves(runs['ref'].workdir, STEPS)
  got = state_leaves(runs['final'].workdir, STEPS)
  assert ref.keys() == got.keys()
  for key, value in ref.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  assert int(ref['.step']) == STEPS


def test_resumed_runs_log_the_same_train_metrics(runs):
  """Every train/* scalar that the interrupted runs logged (steps run twice after the SIGKILL
  included) is bitwise the uninterrupted run's value at that step, and all 16 steps are
  logged."""
  ref = hm.read_scalars(runs['ref'].workdir)
  got = hm.read_scalars(runs['final'].workdir)
  keys = [k for k in ref if k[0].startswith('train/')]
  assert {step for _, step in keys} == set(range(1, STEPS + 1))
  assert {k for k in got if k[0].startswith('train/')} == set(keys)
  for key in keys:
    assert len(ref[key]) == 1
    assert all(v == ref[key][0] for v in got[key]), (key, ref[key], got[key])
  assert got[('train/loss', STEPS)] == ref[('train/loss', STEPS)]


def test_sigterm_saves_the_current_step_and_exits_143(runs):
  """SIGTERM during training: the run writes a checkpoint at the step it reached (not a
  multiple of checkpoint_every_steps in general), says so, and exits with 143; the next run
  resumes from exactly that step."""
  assert runs['term_rc'] == 143, runs['resumed'].log[-3000:]
  log = runs['resumed'].log
  stop = runs['after_term'][-1]
  assert runs['after_kill'][-1] + 2 <= stop < STEPS
  assert f'Checkpoint of step {stop} written; exiting after SIGTERM' in log
  assert f'at step {stop}.' in runs['final'].log
  assert f'Training steps {stop}..{STEPS} (batch 4, resumed)' in runs['final'].log


def test_nan_in_the_data_stops_training_and_keeps_the_last_good_checkpoint(runs):
  """A NaN in every image from the 5th step on (written into the pipeline's output): the run
  fails with FloatingPointError naming step 5 and the loss, logs no metric for step 5, and the
  newest checkpoint on disk is step 3 (finished, though it was still being written
  asynchronously when training stopped), whose params and EMA are finite."""
  rc, out, workdir = runs['nan']['rc'], runs['nan']['log'], runs['nan']['workdir']
  assert rc not in (0, None), out[-3000:]
  assert 'FloatingPointError: Training diverged at step 5: loss' in out, out[-3000:]
  assert saved_steps(workdir) == [EVERY]
  state = state_leaves(workdir, EVERY)
  assert int(state['.step']) == EVERY
  for key, value in state.items():
    if key.startswith(('.params', '.ema_params')):
      assert np.isfinite(value).all(), key
  logged = hm.read_scalars(workdir)
  assert ('train/loss', 4) in logged and ('train/loss', 5) not in logged
  assert not any(p.name.startswith('5') for p in checkpoint.checkpoint_dir(workdir).iterdir())
