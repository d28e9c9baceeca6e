"""Command line: python -m pix2seq_d_jax.main --config=configs/X.py[:arg] --workdir=DIR
[--mode=MODE] [--config.key=value ...].

Modes: train_and_eval (default), train, eval, predict, export, describe.
"""

import json
import os
import sys

# TF only feeds data on the host; keep its logs quiet (must be set before TF is imported).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from pix2seq_d_jax import config_lib

MODES = ('train_and_eval', 'train', 'eval', 'predict', 'export', 'describe')

flags.DEFINE_string('config', None, 'Config file, optionally with :arg, e.g. configs/shapes.py.')
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and predictions.')
flags.DEFINE_enum('mode', 'train_and_eval', MODES, 'What to do.')
flags.DEFINE_integer('step', None,
                     'eval/predict/export: checkpoint step (default: the newest).')
flags.DEFINE_string('input', None, 'predict: a glob of image files (default: the eval split).')
flags.DEFINE_string('export_dir', None, 'export: the folder for predictor.jax_exported and '
                    'signature.json (required).')
flags.DEFINE_string('export_canvas', None,
                    'export: H,W of the input images (default: the model\'s image size).')
flags.DEFINE_integer('export_steps', None, 'export: DDIM steps (default: config.eval.steps).')
flags.DEFINE_integer('export_steps_later', None,
                     'export, video: steps of later frames (default: config.eval.steps_later).')
flags.DEFINE_float('export_td', None, 'export: time difference (default: config.eval.td).')
flags.DEFINE_string('export_decode', None,
                    'export: bits or argmax (default: config.eval.decode).')
flags.DEFINE_integer('export_seed', 0, 'export: the noise seed (Predictor\'s seed).')
flags.DEFINE_string('export_platforms', 'cpu,cuda,tpu',
                    'export: comma-separated platforms to lower for (cpu, cuda, rocm, tpu).')
flags.DEFINE_bool('export_ema', True, 'export: the EMA weights (--noexport_ema: the raw ones).')
flags.DEFINE_string('coordinator_address', '', 'Multi-process: host:port of process 0.')
flags.DEFINE_integer('num_processes', 0, 'Multi-process: number of processes.')
flags.DEFINE_integer('process_id', -1, 'Multi-process: this process\'s index.')
FLAGS = flags.FLAGS

_OVERRIDES = []


class _QuietLibraries:
  """Drops the INFO chatter of orbax and the TensorBoard writer; their warnings still show."""

  def filter(self, record):
    noisy = ('orbax' in record.pathname or 'metric_writers' in record.pathname
             or 'xla_bridge' in record.pathname)
    return record.levelno >= 30 or not noisy


def _hide_accelerators_from_tensorflow():
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
  except (ImportError, RuntimeError, ValueError):
    pass


def split_cpu(count: int, environ=os.environ) -> None:
  """Asks XLA for `count` CPU devices (config key `cpu_devices`); 0 or 1 leaves it alone.

  XLA's CPU backend runs the many small operations of a small model on one thread each; with the
  host split into devices, the data-parallel shares of a batch run side by side (the shapes default
  trains about 30 % faster on two cores). Must run before JAX creates its CPU client. A flag the
  user already set in XLA_FLAGS wins.
  """
  if count < 0:
    raise ValueError(f'config.cpu_devices={count}: use 0 (XLA default) or a device count >= 1.')
  flags_now = environ.get('XLA_FLAGS', '')
  if count <= 1 or 'xla_force_host_platform_device_count' in flags_now:
    return
  environ['XLA_FLAGS'] = (flags_now + f' --xla_force_host_platform_device_count={count}').strip()


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.config:
    raise app.UsageError('--config is required, e.g. --config=configs/shapes.py')
  config = config_lib.load_config(FLAGS.config, _OVERRIDES)
  if FLAGS.mode == 'describe':
    # lazy: the CLI's flags and config errors come before JAX and TensorFlow load.
    from pix2seq_d_jax import describe  # pylint: disable=g-import-not-at-top
    print(json.dumps(describe.describe(config), indent=2))
    return
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required for --mode=' + FLAGS.mode)
  split_cpu(config.get('cpu_devices', 0))
  if FLAGS.mode != 'export':     # export reads no data: spare the seconds of importing TF
    _hide_accelerators_from_tensorflow()
  # lazy: after split_cpu has set XLA_FLAGS (JAX reads them when it starts).
  from pix2seq_d_jax import sharding  # pylint: disable=g-import-not-at-top
  sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  if FLAGS.mode == 'export':
    if not FLAGS.export_dir:
      raise app.UsageError('--mode=export needs --export_dir=DIR (the folder to write).')
    # lazy: as sharding above; serving code only, no training modules.
    from pix2seq_d_jax import export  # pylint: disable=g-import-not-at-top
    signature = export.export_workdir(
        FLAGS.workdir, FLAGS.export_dir, FLAGS.step, use_ema=FLAGS.export_ema,
        canvas=FLAGS.export_canvas, steps=FLAGS.export_steps,
        steps_later=FLAGS.export_steps_later, td=FLAGS.export_td, decode=FLAGS.export_decode,
        seed=FLAGS.export_seed, platforms=FLAGS.export_platforms)
    print(json.dumps({k: v for k, v in signature.items() if k != 'categories'}))
    return
  # lazy: as sharding above.
  from pix2seq_d_jax import train  # pylint: disable=g-import-not-at-top
  if FLAGS.mode in ('train_and_eval', 'train'):
    metrics = train.train_and_evaluate(config, FLAGS.workdir,
                                       evaluate=FLAGS.mode == 'train_and_eval')
  elif FLAGS.mode == 'eval':
    metrics = train.evaluate(config, FLAGS.workdir, FLAGS.step)
  else:
    # lazy: as sharding above.
    from pix2seq_d_jax import predict_files  # pylint: disable=g-import-not-at-top
    metrics = predict_files.run(FLAGS.workdir, FLAGS.input, FLAGS.step)
  if metrics:
    summary = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    logging.info('Result: %s', json.dumps(summary))
  if metrics and metrics.get('skipped'):
    # Every usable file was predicted; the exit status says that some were not.
    logging.error('--mode=predict skipped %d unusable files: %s', len(metrics['skipped']),
                  ', '.join(metrics['skipped']))
    raise SystemExit(1)


def run():
  global _OVERRIDES
  argv, _OVERRIDES = config_lib.split_config_flags(sys.argv)
  app.run(main, argv=argv)


if __name__ == '__main__':
  run()
