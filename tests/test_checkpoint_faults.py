"""Damaged checkpoints and unwritable workdirs: the run says what is wrong and loses nothing.

Checkpoints are written by the Trainer itself (its manager and `save`) from states whose every
leaf holds the step number, so a restore shows which step it read. Each damage is one a crash or
a failing disk leaves: a file truncated or missing, a step folder without its state (a save cut
short), an orbax temporary folder of a save that never finished.
"""

import builtins
import errno
import functools
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import FAST_COMPILE
from pix2seq_d_jax import checkpoint
from pix2seq_d_jax import train
from pix2seq_d_jax import warm_start


def _filled(trainer, step):
  return jax.tree.map(lambda s: np.full(s.shape, step, s.dtype), trainer.abstract)


def _write(config, workdir, steps):
  trainer = train.Trainer(config, str(workdir))
  for step in steps:
    assert trainer.save(_filled(trainer, step))
    trainer.manager.wait_until_finished()
  trainer.manager.close()
  checkpoint.save_config(workdir, config)


def _step_of(state):
  values = {int(np.asarray(x).ravel()[0]) for x in jax.tree.leaves(state) if np.size(x)}
  assert len(values) == 1, values
  return values.pop()


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _data_files(step_dir):
  return [p for p in (step_dir / 'state' / 'd').iterdir()]


DAMAGES = {
    'truncated array metadata': lambda d: _truncate(d / 'state' / '_METADATA'),
    'missing array metadata': lambda d: (d / 'state' / '_METADATA').unlink(),
    'truncated array data': lambda d: [_truncate(p) for p in _data_files(d)],
    'missing array data': lambda d: [p.unlink() for p in _data_files(d)],
    'missing array index': lambda d: (d / 'state' / 'manifest.ocdbt').unlink(),
    'empty metadata JSON': lambda d: (d / 'meta' / 'metadata').write_bytes(b''),
    'missing metadata JSON': lambda d: (d / 'meta' / 'metadata').unlink(),
    'save cut short (no state)': lambda d: shutil.rmtree(d / 'state'),
}


@pytest.fixture(scope='module')
def written(tiny_config, tmp_path_factory):
  """A workdir with checkpoints 3 and 6, written once; tests damage copies of it."""
  workdir = tmp_path_factory.mktemp('written') / 'w'
  _write(tiny_config(), workdir, (3, 6))
  return workdir


def _copy(written, tmp_path):
  workdir = tmp_path / 'w'
  shutil.copytree(written, workdir)
  return workdir


@pytest.mark.parametrize('damage', sorted(DAMAGES))
def test_damaged_newest_checkpoint_resumes_from_the_newest_readable(tiny_config, written,
                                                                     tmp_path, caplog, damage):
  """Step 6 damaged: the restart logs step 6 and the error, resumes from step 3 with step 3's
  values and moves step 6 to checkpoints_unreadable/ (kept, not deleted)."""
  workdir = _copy(written, tmp_path)
  DAMAGES[damage](checkpoint.checkpoint_dir(workdir) / '6')
  trainer = train.Trainer(tiny_config(), str(workdir))
  with caplog.at_level(logging.WARNING):
    state, start = trainer.restore_or_init()
  assert start == 3 and _step_of(state) == 3
  assert 'Checkpoint step 6 in' in caplog.text and 'cannot be read (' in caplog.text
  assert 'Resuming from step 3, the newest readable checkpoint' in caplog.text
  assert [p.name for p in (workdir / checkpoint.UNREADABLE_DIR).iterdir()] == ['6']
  assert trainer.manager.all_steps() == [3]


def test_after_falling_back_the_next_saves_are_written(tiny_config, written, tmp_path, caplog):
  """Steps 6 and 9 both damaged: both are named, the run resumes from 3, and its saves at steps
  6 and 9 are written (orbax skips every save at or below a step it still lists, which is why
  the unreadable ones are moved); the next restart resumes from the new step 9."""
  config = tiny_config()
  workdir = _copy(written, tmp_path)
  trainer = train.Trainer(config, str(workdir))
  assert trainer.save(_filled(trainer, 9))
  trainer.manager.wait_until_finished()
  for step in (6, 9):
    _truncate(checkpoint.checkpoint_dir(workdir) / str(step) / 'state' / '_METADATA')
  trainer = train.Trainer(config, str(workdir))
  with caplog.at_level(logging.WARNING):
    state, start = trainer.restore_or_init()
  assert start == 3 and _step_of(state) == 3
  assert 'Checkpoint step 9 in' in caplog.text and 'Checkpoint step 6 in' in caplog.text
  assert sorted(p.name for p in (workdir / checkpoint.UNREADABLE_DIR).iterdir()) == ['6', '9']
  for step in (6, 9):
    assert trainer.save(_filled(trainer, step)), step
    trainer.manager.wait_until_finished()
  assert trainer.manager.all_steps() == [3, 6, 9]
  state, start = train.Trainer(config, str(workdir)).restore_or_init()
  assert start == 9 and _step_of(state) == 9


def test_a_save_that_never_finished_is_named_and_ignored(tiny_config, written, tmp_path,
                                                         caplog):
  config = tiny_config()
  workdir = _copy(written, tmp_path)
  folder = checkpoint.checkpoint_dir(workdir)
  shutil.copytree(folder / '6', folder / '9.orbax-checkpoint-tmp-1234')
  shutil.rmtree(folder / '9.orbax-checkpoint-tmp-1234' / 'state')
  with caplog.at_level(logging.WARNING):
    state, start = train.Trainer(config, str(workdir)).restore_or_init()
  assert start == 6 and _step_of(state) == 6
  assert '9.orbax-checkpoint-tmp-1234 is a save that never finished' in caplog.text


def test_no_readable_checkpoint_is_an_error_and_changes_nothing(tiny_config, written, tmp_path):
  """Every checkpoint damaged: no fresh start over the workdir; the error lists each step and
  its reason, and nothing is moved."""
  config = tiny_config()
  workdir = _copy(written, tmp_path)
  for step in (3, 6):
    (checkpoint.checkpoint_dir(workdir) / str(step) / 'meta' / 'metadata').unlink()
  with pytest.raises(checkpoint.UnreadableCheckpointError,
                     match=r'steps \[6, 3\] but none can be read: step 6: .*metadata.*step 3: '
                           r'.*Nothing was changed.*new --workdir'):
    train.Trainer(config, str(workdir)).restore_or_init()
  assert sorted(p.name for p in checkpoint.checkpoint_dir(workdir).iterdir()) == ['3', '6']
  assert not (workdir / checkpoint.UNREADABLE_DIR).exists()


def test_inference_uses_the_newest_readable_checkpoint_and_names_a_bad_step(written, tmp_path,
                                                                            caplog):
  """load_for_inference (Predictor.from_workdir, --mode=predict): the newest readable step with
  a warning naming the damaged one (nothing moved); an explicit unreadable --step is an error."""
  workdir = _copy(written, tmp_path)
  _truncate(checkpoint.checkpoint_dir(workdir) / '6' / 'state' / '_METADATA')
  with caplog.at_level(logging.WARNING):
    _, state, meta = checkpoint.load_for_inference(workdir)
  assert meta['step'] == 3 and _step_of(state) == 3
  assert 'Checkpoint step 6 in' in caplog.text
  assert (checkpoint.checkpoint_dir(workdir) / '6').exists()
  with pytest.raises(ValueError, match=r'--step=6: checkpoint step 6 in .* cannot be read'):
    checkpoint.load_for_inference(workdir, 6)


def _init_from_target(tiny_config, source):
  config = tiny_config(f'train.init_from={source}')
  trainer = train.Trainer(config, str(source.parent / 'target'))
  fresh = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), trainer.abstract)
  return config, trainer, fresh


def test_unreadable_init_from_is_a_clear_error(tiny_config, written, tmp_path):
  source = _copy(written, tmp_path)
  _truncate(checkpoint.checkpoint_dir(source) / '6' / 'state' / '_METADATA')
  config, trainer, fresh = _init_from_target(tiny_config, source)
  with pytest.raises(ValueError, match=r"config\.train\.init_from='.*w': checkpoint step 6 "
                                       r'in .* cannot be read \(.*\); point init_from at a '
                                       r'readable checkpoint'):
    warm_start.init_from(fresh, config, trainer.shardings)


def test_init_from_without_checkpoints_or_with_a_damaged_config(tiny_config, tmp_path):
  source = tmp_path / 'source'
  checkpoint.save_config(source, tiny_config())
  config, trainer, fresh = _init_from_target(tiny_config, source)
  with pytest.raises(FileNotFoundError, match=r'init_from=.*holds no checkpoint'):
    warm_start.init_from(fresh, config, trainer.shardings)
  (source / checkpoint.CONFIG_FILE).write_text('{"model": {')
  with pytest.raises(ValueError, match=r'config\.json cannot be read \(JSONDecodeError'):
    warm_start.init_from(fresh, config, trainer.shardings)


# ---------------------------------------------------------------------------------------------
# A full disk or an unwritable workdir.


def _no_space_for(monkeypatch, marker):
  """Every file opened for writing whose path contains `marker` fails with ENOSPC (orbax writes
  its metadata files with Python's open, in its background thread)."""
  real_open = builtins.open

  def full_disk_open(file, mode='r', *args, **kwargs):
    if marker in str(file) and any(c in mode for c in 'wax+'):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
    return real_open(file, mode, *args, **kwargs)
  monkeypatch.setattr(builtins, 'open', full_disk_open)


def test_disk_full_during_a_save_is_named_and_keeps_the_last_good_checkpoint(
    tiny_config, written, tmp_path, monkeypatch):
  """The asynchronous save of step 9 fails with ENOSPC: the next save reports step 9, the
  error and the kept step 6; step 6 still restores and the half-written step 9 is ignored."""
  config = tiny_config()
  workdir = _copy(written, tmp_path)
  trainer = train.Trainer(config, str(workdir))
  _no_space_for(monkeypatch, '9.orbax-checkpoint-tmp')
  trainer.save(_filled(trainer, 9))
  with pytest.raises(checkpoint.WriteError,
                     match=r'Writing the checkpoint of step 9 to .*checkpoints failed '
                           r'\(OSError: \[Errno 28\] No space left on device.*The last good '
                           r'checkpoint, step 6, is kept; rerun the same command') as info:
    trainer.save(_filled(trainer, 12))
  assert info.value.errno == errno.ENOSPC
  monkeypatch.undo()
  assert sorted(p.name for p in checkpoint.checkpoint_dir(workdir).iterdir()
                if p.name.isdigit()) == ['3', '6']
  state, start = train.Trainer(config, str(workdir)).restore_or_init()
  assert start == 6 and _step_of(state) == 6


def test_disk_full_at_the_last_wait_is_named(tiny_config, written, tmp_path, monkeypatch):
  config = tiny_config()
  workdir = _copy(written, tmp_path)
  trainer = train.Trainer(config, str(workdir))
  _no_space_for(monkeypatch, '9.orbax-checkpoint-tmp')
  trainer.save(_filled(trainer, 9))
  with pytest.raises(checkpoint.WriteError, match=r'step 9 .*Errno 28.*step 6, is kept'):
    checkpoint.wait_until_finished(trainer.manager)


def test_unwritable_workdir_fails_at_start_up_naming_it(tiny_config, tmp_path):
  """A workdir that cannot be created (its parent is a file): an error naming the path before
  anything runs; a config.json that cannot be written likewise."""
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(checkpoint.WriteError, match=r'Creating .*a_file/w/checkpoints failed '
                                                  r'\(.*Error.*not writable'):
    train.Trainer(tiny_config(), str(blocker / 'w'))
  with pytest.raises(checkpoint.WriteError, match=r'Writing .*a_file/w/config\.json failed'):
    checkpoint.save_config(blocker / 'w', tiny_config())


def test_training_with_a_full_disk_stops_with_the_error_and_keeps_step_3(tiny_config, tmp_path,
                                                                         monkeypatch):
  """train_and_evaluate, 9 steps, a checkpoint every 3; the disk fills while step 6 is saved:
  the run stops with a WriteError naming step 6 and the kept step 3 (not a traceback from
  orbax's thread, not a silent run without checkpoints); a rerun resumes from step 3."""
  config = tiny_config('train.num_steps=9', 'train.checkpoint_every_steps=3',
                       'train.log_every_steps=3', 'dataset.num_train=16', 'train.batch_size=2',
                       'model.decoder.ch_multipliers=(1,)', 'model.decoder.num_res_blocks=(1,)')
  workdir = tmp_path / 'w'
  # The train step and the initialisation compiled without LLVM optimisation (3-4x faster).
  monkeypatch.setattr(jax, 'jit', functools.partial(jax.jit, compiler_options=FAST_COMPILE))
  _no_space_for(monkeypatch, '6.orbax-checkpoint-tmp')
  with pytest.raises(checkpoint.WriteError, match=r'step 6 .*No space left.*step 3, is kept'):
    train.train_and_evaluate(config, str(workdir), evaluate=False)
  monkeypatch.undo()
  trainer = train.Trainer(config, str(workdir))
  assert trainer.manager.all_steps() == [3]
  state, start = trainer.restore_or_init()
  assert start == 3 and int(np.asarray(state.step)) == 3
