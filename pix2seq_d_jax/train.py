"""The training loop: `train_and_evaluate(config, workdir)` and `evaluate(config, workdir)`.

Re-running with the same workdir resumes from the newest checkpoint (see checkpoint.py for the
resume order). The train step, the sampler and the state live on a ('data', 'fsdp') mesh.
`train_and_evaluate` reads top to bottom in phases: set-up (`Trainer`), the step loop, logging
(`_TrainLog`), the checkpoint cadence and the evaluation cadence.
"""

import functools
import logging
import pathlib
import signal
import time

import jax
import ml_collections
import numpy as np
from clu import metric_writers
from jax.experimental import multihost_utils

from pix2seq_d_jax import checkpoint
from pix2seq_d_jax import compile_options
from pix2seq_d_jax import data
from pix2seq_d_jax import eval_panoptic
from pix2seq_d_jax import eval_vos
from pix2seq_d_jax import sampling
from pix2seq_d_jax import sharding
from pix2seq_d_jax import state as state_lib
from pix2seq_d_jax import train_step as train_step_lib
from pix2seq_d_jax import warm_start
from pix2seq_d_jax.data import pipeline
from pix2seq_d_jax.models import pix2seq_d


def num_train_steps(config: ml_collections.ConfigDict, num_examples: int | None) -> int:
  """train.num_steps, or train.num_epochs over the train split, in steps."""
  t = config.train
  if t.num_steps > 0:
    return t.num_steps
  if not num_examples:
    raise ValueError('config.train.num_steps is -1 and the train split size is unknown: set '
                     'config.train.num_steps.')
  return max(int(round(t.num_epochs * num_examples / t.batch_size)), 1)


def num_warmup_steps(config: ml_collections.ConfigDict, num_examples: int | None) -> int:
  t = config.train
  if t.warmup_steps >= 0:
    return t.warmup_steps
  return int(round(t.warmup_epochs * (num_examples or 0) / t.batch_size))


def check_frames(config: ml_collections.ConfigDict, is_video: bool) -> None:
  """At start-up: a video data set's windows are the P = model.num_cond_frames previous frames
  plus the current one (dataset.num_frames = P + 1); image data has no previous frames (P = 0)."""
  p = config.model.num_cond_frames
  if not is_video:
    if p:
      raise ValueError(f'config.model.num_cond_frames={p} but config.dataset.name='
                       f'{config.dataset.name!r} is an image data set (no previous frames): set '
                       'config.model.num_cond_frames=0, or train on a video data set.')
    return
  n = config.dataset.num_frames
  if n - 1 != p:
    fix = (f'set config.model.num_cond_frames={n - 1} or config.dataset.num_frames={p + 1}'
           if n >= 1 else f'set config.dataset.num_frames={p + 1}')
    raise ValueError(f'config.dataset.num_frames={n} but config.model.num_cond_frames={p}: a '
                     'training window is the previous frames the model conditions on plus the '
                     f'current frame, so num_frames must be num_cond_frames + 1; {fix}.')


class _Preemption:
  """Turns SIGTERM into a stop the loop polls (`should_stop(step)`), so it can checkpoint before
  exiting.

  One process: a Python handler sets a flag. Several processes: they may get the signal at
  different steps, or only some of them do, and a process-local flag would make one process save
  while the others train on (mismatched collectives: a hang until the job is killed). There jax's
  preemption service, started by `jax.distributed.initialize`, catches SIGTERM itself (a Python
  handler would replace its handler), propagates the notice and names one step at which every
  process stops: `multihost_utils.reached_preemption_sync_point`.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._multiprocess = jax.process_count() > 1
    self._warned = False

  def __enter__(self):
    if self._multiprocess:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. inside a notebook worker).
      self._previous = None
    return self

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint and exit after `step`; call it once per step, on every process."""
    if self._multiprocess:
      try:
        self.requested = multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError as e:  # jax_enable_preemption_service=False: no SIGTERM stops.
        if not self._warned:
          logging.warning('SIGTERM will not checkpoint: %s', e)
          self._warned = True
        return False
      if self.requested:
        logging.warning('Preemption notice: every process stops at step %d.', step)
    return self.requested

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint at the current step, then exiting.')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _FinishSavesOnError:
  """Lets an asynchronous checkpoint save in flight finish when an exception leaves the loop
  (divergence, unreadable input, Ctrl-C). Otherwise the process ends mid-write, orbax leaves only
  a `<step>.orbax-checkpoint-tmp` folder, and the last good checkpoint is lost."""

  def __init__(self, manager):
    self.manager = manager

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None:
      try:
        checkpoint.wait_until_finished(self.manager)
      except Exception:  # pylint: disable=broad-except  # Keep the original error.
        logging.exception('Finishing the checkpoint in flight failed.')
    return False


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class Trainer:
  """Holds what the loop and the evaluations share: model, mesh, jitted functions, writers."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.source = data.get_source(config.dataset)
    sampling.EvalOptions.from_config(config)   # bad sampler settings fail here, not at the eval
    check_frames(config, self.source.is_video)
    self.mesh = sharding.make_mesh(config.mesh)
    train_step_lib.check_microbatches(
        config, int(np.prod([self.mesh.shape[a] for a in sharding.BATCH_AXES])))
    n_train = self.source.num_examples('train')
    self.total_steps = num_train_steps(config, n_train)
    self.setup = state_lib.setup(config, self.total_steps, num_warmup_steps(config, n_train))
    self.model = self.setup.model
    self.abstract = self.setup.abstract
    self.shardings = sharding.state_shardings(self.abstract, self.mesh)
    sharding.check_sharded(self.shardings, self.abstract, self.mesh)
    self.manager = checkpoint.make_manager(self.workdir, config)
    self._eval_fn = None

  def restore_or_init(self):
    """(state, start step): newest checkpoint, else config.train.init_from, else fresh."""
    for unfinished in checkpoint.unfinished_saves(self.workdir):
      logging.warning('%s is a save that never finished (the process stopped while writing '
                      'it); it is ignored.', unfinished)
    restored = checkpoint.restore_newest_readable(self.manager, self.abstract, self.shardings,
                                                  self.workdir)
    if restored is not None:
      state, meta = restored
      logging.info('Resumed from %s at step %d.', checkpoint.checkpoint_dir(self.workdir),
                   meta['step'])
      return state, int(meta['step'])
    if (self.workdir / checkpoint.CONFIG_FILE).exists():
      logging.warning('%s holds an earlier run\'s %s but no checkpoint: starting at step 0.',
                      self.workdir, checkpoint.CONFIG_FILE)
    state = jax.jit(self.setup.init, out_shardings=self.shardings,
                    compiler_options=compile_options.run_once())()
    if self.config.train.init_from:
      state = warm_start.init_from(state, self.config, self.shardings)
    return state, 0

  def make_train_step(self):
    batch_sh = lambda nd: sharding.batch_sharding(self.mesh, nd)
    in_batch = {'image': batch_sh(4), 'masks': batch_sh(4)}
    if self.source.is_video:
      in_batch['cond_masks'] = batch_sh(5)
    step = functools.partial(train_step_lib.train_step, model=self.model, tx=self.setup.tx,
                             lr_schedule=self.setup.lr_schedule,
                             settings=train_step_lib.StepSettings.from_config(self.config))
    return jax.jit(step, in_shardings=(self.shardings, in_batch),
                   out_shardings=(self.shardings, sharding.replicated(self.mesh)),
                   donate_argnums=0)

  def abstract_batch(self) -> dict:
    """The global train batch as shapes, dtypes and shardings (`_train_batches` yields it)."""
    return train_step_lib.abstract_batch(
        self.config, lambda ndim: sharding.batch_sharding(self.mesh, ndim))

  def evaluate(self, state, step: int, writer=None, **overrides) -> dict:
    """Runs the evaluation loop of the data (images: PQ, video: J&F) on `state`; writes
    WORKDIR/eval/step_N/ and, with a writer, the scalars and pictures to TensorBoard."""
    video = self.source.is_video
    if self._eval_fn is None:     # compiled once per run, reused by every evaluation
      make = eval_vos.make_video_fn if video else eval_panoptic.make_panoptic_fn
      self._eval_fn = make(self.config, self.model)
    run = eval_vos.evaluate_video if video else eval_panoptic.evaluate_panoptic
    metrics, panels = run(self.config, state.variables(self.config.eval.use_ema), self.source,
                          self.model, self.mesh, self.workdir / 'eval' / f'step_{step}',
                          step=step, fn=self._eval_fn, **overrides)
    if writer is not None and metrics:
      _write_eval(writer, step, metrics, panels)
    return metrics

  def save(self, state, force=False):
    step = int(jax.device_get(state.step))
    return checkpoint.save(self.manager, state, {'step': step, 'data': {'next_step': step}},
                           force=force)


def _write_eval(writer, step: int, metrics: dict, panels: list) -> None:
  scalars = {f'eval/{k}': v for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and k != 'step'}
  writer.write_scalars(step, scalars)
  if panels:
    h = min(p.shape[0] for p in panels)
    w = min(p.shape[1] for p in panels)
    writer.write_images(step, {'eval/predictions': np.stack([p[:h, :w] for p in panels])})
  writer.flush()


def _write_run_files(trainer: Trainer) -> None:
  if jax.process_index() == 0:
    checkpoint.save_config(trainer.workdir, trainer.config)
    checkpoint.save_categories(trainer.workdir, trainer.source.categories)


def _check_finite(window: list, first_step: int) -> None:
  for k, m in enumerate(window):
    if m['nonfinite'] > 0:
      bad = [name for name in ('loss', 'grad_norm') if not np.isfinite(m[name])]
      raise FloatingPointError(
          f'Training diverged at step {first_step + k + 1}: {" and ".join(bad)} is not finite '
          f'({", ".join(f"{b}={m[b]}" for b in bad)}). That step was not applied; the last good '
          'checkpoint is kept. Lower config.train.learning_rate or check the input data.')


class _TrainLog:
  """The logging window: keeps the device at most one step ahead of Python, checks that the
  steps were finite, and writes the mean scalars, throughput and ETA every log_every_steps."""

  def __init__(self, writer, config: ml_collections.ConfigDict, total: int, start: int):
    self.writer = writer
    self.batch_size = config.train.batch_size
    self.total = total
    self.window, self.first_in_window, self.window_start = [], start, time.time()
    self.run_start, self.steps_timed = None, 0

  def add(self, metrics: dict) -> None:
    if self.window:
      # Keep at most one step queued behind the running one: the device stays busy, while
      # Python does not run ahead by a whole logging window (a SIGTERM then saves the step it
      # arrived at, and the throughput and ETA are measured, not dispatched, steps).
      jax.block_until_ready(self.window[-1]['loss'])
    self.window.append(metrics)

  def check_finite(self) -> None:
    """Raises FloatingPointError if a step of the window diverged (before a checkpoint)."""
    if self.window:
      _check_finite(jax.device_get(self.window), self.first_in_window)

  def flush(self, done: int) -> None:
    window = jax.device_get(self.window)
    _check_finite(window, self.first_in_window)
    now = time.time()
    if self.run_start is None:   # The first window includes compilation; time from here on.
      self.run_start = now
    else:
      self.steps_timed += len(window)
    rate = len(window) / max(now - self.window_start, 1e-9)
    avg = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
    avg.pop('nonfinite')
    scalars = {f'train/{k}': v for k, v in avg.items()}
    scalars.update({'perf/steps_per_sec': rate, 'perf/examples_per_sec': rate * self.batch_size})
    self.writer.write_scalars(done, scalars)
    steady = self.steps_timed / max(now - self.run_start, 1e-9) if self.steps_timed else rate
    parts = ' '.join(f'{k[5:]} {avg[k]:.3f}' for k in ('loss_class', 'loss_id') if k in avg)
    logging.info('step %d/%d | loss %.4f %s| lr %.2e | %.2f steps/s, %.1f img/s | ETA %s',
                 done, self.total, avg['loss'], f'({parts}) ' if parts else '', avg['lr'], rate,
                 rate * self.batch_size,
                 _format_duration((self.total - done) / max(steady, 1e-9)))
    self.window, self.window_start, self.first_in_window = [], now, done


def _train_batches(config: ml_collections.ConfigDict, trainer: Trainer, start: int):
  """The global train batches of steps start, start + 1, ... (dropped segments logged)."""
  ds = pipeline.train_dataset(config, trainer.source, start_step=start,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
  dropped_total = [0]
  for step, local in enumerate(pipeline.as_numpy(ds), start):
    pipeline.log_dropped(step, local.pop('dropped_segments'), dropped_total)
    local.pop('id')
    yield sharding.global_batch(local, trainer.mesh)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       evaluate: bool = True) -> dict:
  """Trains (resuming if possible), evaluating every eval.every_steps and at the end.

  Returns:
    The last evaluation's metrics (process 0; {} elsewhere or when evaluate=False).
  """
  # Set-up: model, mesh, state (resumed or fresh), run files, data, writer.
  t = config.train
  trainer = Trainer(config, workdir)
  if (trainer.manager.latest_step() or 0) < trainer.total_steps:
    # Generated data sets are made in the background while the initialiser and the train step
    # compile.
    trainer.source.prepare(['train', 'validation'] if evaluate else ['train'])
  main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(str(workdir), just_logging=not main,
                                                asynchronous=True)
  state, start = trainer.restore_or_init()
  _write_run_files(trainer)
  total = trainer.total_steps
  step_fn = trainer.make_train_step()
  if start < total:
    # Compiled before the first batch is asked for: the data generates meanwhile (prepare).
    step_fn = step_fn.lower(state, trainer.abstract_batch()).compile()
  if start == 0 and main:
    params = pix2seq_d.count_params(state.params)
    writer.write_hparams({'params': params['total'], **{f'params_{k}': v for k, v in
                                                        params.items() if k != 'total'}})
  batches = _train_batches(config, trainer, start)
  logging.info('Training steps %d..%d (batch %d, %s).', start, total, t.batch_size,
               'resumed' if start else 'fresh start')
  log = _TrainLog(writer, config, total, start)
  last_metrics = {}
  with _Preemption() as preemption, _FinishSavesOnError(trainer.manager):
    # The step loop.
    for step in range(start, total):
      state, metrics = step_fn(state, next(batches))
      log.add(metrics)
      done = step + 1
      last = done == total
      stop = preemption.should_stop(done)
      # Logging.
      if done % t.log_every_steps == 0 or last or stop:
        log.flush(done)
      # Checkpoint cadence (and the exit a SIGTERM asked for).
      if done % t.checkpoint_every_steps == 0 or last or stop:
        log.check_finite()
        trainer.save(state, force=stop)
      if stop:
        checkpoint.wait_until_finished(trainer.manager)
        logging.warning('Checkpoint of step %d written; exiting after SIGTERM.', done)
        writer.close()
        raise SystemExit(143)
      # Evaluation cadence.
      if evaluate and (done % config.eval.every_steps == 0 or last):
        last_metrics = trainer.evaluate(state, done, writer)
  if evaluate and start >= total:
    last_metrics = trainer.evaluate(state, total, writer)
  checkpoint.wait_until_finished(trainer.manager)
  trainer.manager.close()
  writer.close()
  return last_metrics


def evaluate(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
             **overrides) -> dict:
  """Evaluates the newest (or given) checkpoint of workdir; writes eval/step_N/."""
  trainer = Trainer(config, workdir)
  if trainer.manager.latest_step() is None:
    raise FileNotFoundError(f'{checkpoint.checkpoint_dir(workdir)} holds no checkpoint: train '
                            'first (--mode=train or train_and_eval).')
  if step is None:     # The newest readable one (an unreadable newer one is logged).
    state, meta = checkpoint.restore_newest_readable(trainer.manager, trainer.abstract,
                                                     trainer.shardings)
  else:
    state, meta = checkpoint.restore(trainer.manager, trainer.abstract, trainer.shardings, step)
  writer = metric_writers.create_default_writer(
      str(workdir), just_logging=jax.process_index() != 0)
  metrics = trainer.evaluate(state, int(meta['step']), writer, **overrides)
  writer.close()
  trainer.manager.close()
  return metrics
