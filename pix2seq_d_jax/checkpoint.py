"""A workdir's files: checkpoints with orbax (asynchronous saves of the whole train state plus a
JSON of metadata: step, data-iterator state; restore onto any mesh), its config.json and
categories.json, and loading a workdir for inference.

Resume order (`Trainer.restore_or_init` in pix2seq_d_jax/train.py): (1) the newest readable
checkpoint in `workdir/checkpoints` (`restore_newest_readable`: an unreadable newer one is logged
with its step and error and moved to `workdir/checkpoints_unreadable/`; when none can be read the
run stops rather than start over); else (2) `config.train.init_from`
(pix2seq_d_jax/warm_start.py); else (3) a fresh initialisation.
"""

import json
import logging
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp

from pix2seq_d_jax import sharding
from pix2seq_d_jax import state as state_lib

CONFIG_FILE = 'config.json'
CATEGORIES_FILE = 'categories.json'

# Orbax splits the write of an array replicated over several devices into one slice per replica,
# cutting each slice out with a small jitted program: on the first save of a process that is an
# XLA compile per (leaf shape, replica), hundreds for this state (7 s of a tiny model's first
# save on 8 CPU devices, more on a pod), spent inside a save that SIGTERM may have asked for
# within a short grace period. Arrays are split only when each replica's slice holds at least
# this many bytes; smaller ones are written whole by one replica.
MIN_REPLICA_SLICE_BYTES = 1 << 20
_array_handler_registered = False


def _register_array_handler() -> None:
  global _array_handler_registered
  if _array_handler_registered:
    return
  # orbax 0.12 exports no public name for the metadata store of its default ArrayHandler.
  # pylint: disable-next=g-import-not-at-top
  from orbax.checkpoint._src.metadata import array_metadata_store
  handler = ocp.type_handlers.ArrayHandler(
      array_metadata_store=array_metadata_store.Store(),
      min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)   # The override is intended; orbax warns about it.
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logger.setLevel(level)
  _array_handler_registered = True


def checkpoint_dir(workdir) -> pathlib.Path:
  return pathlib.Path(workdir) / 'checkpoints'


class WriteError(OSError):
  """The workdir cannot be written (disk full, read-only, not a directory); keeps the errno."""

  @classmethod
  def of(cls, err: Exception, message: str) -> 'WriteError':
    code = getattr(err, 'errno', None)
    return cls(code, message) if code is not None else cls(message)


def _unwritable(path, err: Exception, what: str) -> WriteError:
  return WriteError.of(err, f'{what} {path} failed ({_read_error(err)}): the disk is full or '
                       'the workdir is not writable. Free space or pass a writable --workdir, '
                       'then rerun the same command.')


def make_manager(workdir, config: ml_collections.ConfigDict,
                 read_only: bool = False) -> ocp.CheckpointManager:
  _register_array_handler()
  t = config.train
  options = ocp.CheckpointManagerOptions(
      max_to_keep=t.keep_checkpoints, keep_period=t.keep_every_steps or None,
      enable_async_checkpointing=True, create=not read_only, read_only=read_only)
  try:
    return ocp.CheckpointManager(checkpoint_dir(workdir).absolute(), options=options)
  except OSError as err:
    if read_only:
      raise
    raise _unwritable(checkpoint_dir(workdir), err, 'Creating') from err


def _save_failed(manager: ocp.CheckpointManager, err: Exception, step=None) -> WriteError:
  """The error of a checkpoint write that failed: its step, the error, the step kept."""
  if step is None:      # An asynchronous save in flight: the newest unfinished folder.
    pending = [int(p.name.split('.')[0]) for p in
               pathlib.Path(manager.directory).glob('*.orbax-checkpoint-tmp*')
               if p.name.split('.')[0].isdigit()]
    step = max(pending) if pending else '?'
  try:
    manager.reload()
    kept = manager.latest_step()
  except Exception:  # pylint: disable=broad-except  # Report the write error, not this one.
    kept = None
  kept_text = (f'The last good checkpoint, step {kept}, is kept; rerun the same command to '
               f'resume from it.' if kept is not None else 'No earlier checkpoint exists.')
  return WriteError.of(err, f'Writing the checkpoint of step {step} to {manager.directory} '
                       f'failed ({_read_error(err)}): the disk is full or the workdir is not '
                       f'writable. {kept_text} Free space or make the workdir writable first.')


def wait_until_finished(manager: ocp.CheckpointManager) -> None:
  """Waits for the save in flight; its failure (e.g. ENOSPC) becomes a WriteError."""
  try:
    manager.wait_until_finished()
  except Exception as err:  # pylint: disable=broad-except  # Any failure of the background write.
    raise _save_failed(manager, err) from err


def save(manager: ocp.CheckpointManager, state, meta: dict, force: bool = False) -> bool:
  """Starts an asynchronous save of `state` and `meta` (JSON) at `state.step`.

  Raises:
    WriteError: this save, or the previous one (still in flight until now), could not be
      written; the message names the step and the last good checkpoint, which is kept.
  """
  step = int(jax.device_get(state.step))
  wait_until_finished(manager)    # A failed earlier save is reported with its own step.
  try:
    return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta)),
                        force=force)
  except OSError as err:
    raise _save_failed(manager, err, step) from err


def restore(manager: ocp.CheckpointManager, abstract_state, shardings, step: int | None = None):
  """Restores (state, meta) onto the given shardings (any mesh or device count)."""
  step = manager.latest_step() if step is None else step
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_state, shardings)
  out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                      meta=ocp.args.JsonRestore()))
  return out['state'], out['meta']


UNREADABLE_DIR = 'checkpoints_unreadable'


class UnreadableCheckpointError(RuntimeError):
  """No checkpoint of a workdir that holds some can be read."""


def unfinished_saves(workdir) -> list[pathlib.Path]:
  """Orbax's temporary folders of saves that never finished (the process stopped mid-write)."""
  folder = checkpoint_dir(workdir)
  return sorted(folder.glob('*.orbax-checkpoint-tmp*')) if folder.exists() else []


def _read_error(err: Exception) -> str:
  text = str(err).strip().splitlines()
  return f'{type(err).__name__}: {text[0][:300] if text else ""}'


def restore_newest_readable(manager: ocp.CheckpointManager, abstract_state, shardings,
                            workdir=None):
  """(state, meta) of the newest checkpoint that can be read, or None when there is none.

  A newer checkpoint that fails to restore (a file truncated or missing, a save cut short) is
  logged with its step and the error. With `workdir` (training), it is then moved to
  `workdir/checkpoints_unreadable/<step>`, kept for inspection: orbax skips every save at or
  below the newest step it lists, so leaving it would silently drop the saves up to its step.

  Raises:
    UnreadableCheckpointError: the manager lists checkpoints but none can be read (the run must
      not start over a workdir that holds training).
  """
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state, meta = restore(manager, abstract_state, shardings, step)
      if not isinstance(meta, dict) or meta.get('step') != step:
        raise ValueError(f'its metadata {meta!r} does not hold step {step}')
    except Exception as err:  # pylint: disable=broad-except  # Any failure: try an older one.
      logging.warning('Checkpoint step %d in %s cannot be read (%s); trying the next older one.',
                      step, manager.directory, _read_error(err))
      failures.append((step, err))
      continue
    if failures and workdir is not None:
      _move_unreadable(manager, workdir, [s for s, _ in failures])
    if failures:
      logging.warning('Resuming from step %d, the newest readable checkpoint; unreadable: %s.',
                      step, ', '.join(f'step {s} ({_read_error(e)})' for s, e in failures))
    return state, meta
  if failures:
    raise UnreadableCheckpointError(
        f'{manager.directory} holds checkpoints at steps {[s for s, _ in failures]} but none can '
        'be read: ' + '; '.join(f'step {s}: {_read_error(e)}' for s, e in failures) +
        '. Nothing was changed. If the model config changed, train with the config of '
        f'{CONFIG_FILE} in the workdir; to start over, use a new --workdir.') from failures[0][1]
  return None


def _move_unreadable(manager: ocp.CheckpointManager, workdir, steps) -> None:
  manager.wait_until_finished()
  if jax.process_count() > 1:
    # pylint: disable-next=g-import-not-at-top
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('checkpoint: before moving unreadable steps')
  if jax.process_index() == 0:
    target_root = pathlib.Path(workdir) / UNREADABLE_DIR
    target_root.mkdir(parents=True, exist_ok=True)
    for step in steps:
      target = target_root / str(step)
      n = 1
      while target.exists():
        target = target_root / f'{step}.{n}'
        n += 1
      (checkpoint_dir(workdir) / str(step)).rename(target)
      logging.warning('Moved the unreadable checkpoint of step %d to %s.', step, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('checkpoint: after moving unreadable steps')
  manager.reload()


def save_config(workdir, config: ml_collections.ConfigDict) -> None:
  path = pathlib.Path(workdir) / CONFIG_FILE
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    tmp.write_text(config.to_json_best_effort(indent=2))
    tmp.replace(path)
  except OSError as err:
    raise _unwritable(path, err, 'Writing') from err


def save_categories(workdir, categories) -> None:
  """Writes the data set's categories (COCO-style dicts) to `workdir/categories.json`."""
  path = pathlib.Path(workdir) / CATEGORIES_FILE
  try:
    path.write_text(json.dumps(categories, indent=1))
  except OSError as err:
    raise _unwritable(path, err, 'Writing') from err


def load_categories(workdir) -> list[dict] | None:
  """The categories a workdir was trained on, or None when it holds no categories.json."""
  path = pathlib.Path(workdir) / CATEGORIES_FILE
  return json.loads(path.read_text()) if path.exists() else None


def _tuples(x):
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def load_config(workdir) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (lists come back as tuples, as configs write them)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f'{path} is missing: {workdir} is not a pix2seq_d_jax workdir (train '
                            'with python -m pix2seq_d_jax.main --workdir=... first).')
  try:
    return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))
  except (ValueError, OSError) as err:
    raise ValueError(f'{path} cannot be read ({_read_error(err)}): the workdir\'s config is '
                     'damaged; restore it from a copy (it is the config the run was started '
                     'with).') from err


def restore_step(manager, abstract, shardings, step, workdir, where: str, fix: str):
  """`restore` of one named step; an unreadable one is a ValueError naming it and the fix."""
  try:
    return restore(manager, abstract, shardings, step)
  except Exception as err:
    raise ValueError(f'{where}: checkpoint step {step} in {checkpoint_dir(workdir)} cannot be '
                     f'read ({_read_error(err)}); {fix}.') from err


def load_for_inference(workdir, step: int | None = None):
  """(config, state, meta) of a workdir's newest (or given) checkpoint on the local devices."""
  config = load_config(workdir)
  mesh = sharding.make_mesh((('data', -1), ('fsdp', 1)))
  abstract = state_lib.abstract_state(config)
  manager = make_manager(workdir, config, read_only=True)
  if manager.latest_step() is None:
    raise FileNotFoundError(f'{checkpoint_dir(workdir)} holds no checkpoint yet.')
  shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  try:
    if step is None:     # The newest readable one (an unreadable newer one is logged).
      state, meta = restore_newest_readable(manager, abstract, shardings)
    else:
      state, meta = restore_step(manager, abstract, shardings, step, workdir, f'--step={step}',
                                  'the readable steps are tried newest first without --step')
  finally:
    manager.close()
  return config, state, meta
