"""End to end: `python -m pix2seq_d_jax.main --config=configs/moving_shapes.py:runlocal` trains,
evaluates with J&F, writes DAVIS-format files and pictures, and resumes when rerun."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from pix2seq_d_jax import config_lib
from pix2seq_d_jax.evaluation import vos
from pix2seq_d_jax.formats import davis_format

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = 'configs/moving_shapes.py:runlocal'


def _main(workdir, *flags):
  # Unoptimised XLA code compiles several times faster; this smoke test checks the loop and its
  # files, not speed, and the numbers it checks hold for any optimisation level.
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''),
             XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') +
                        ' --xla_backend_optimization_level=0').strip())
  proc = subprocess.run([sys.executable, '-m', 'pix2seq_d_jax.main', f'--config={CONFIG}',
                         f'--workdir={workdir}', *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout + proc.stderr


def _check_metrics(metrics):
  for key in vos.RESULT_KEYS:
    value = metrics[key]
    assert isinstance(value, float), key
    low = -100.0 if key.endswith('decay') else 0.0
    assert low <= value <= 100.0, (key, value)
  assert metrics['J&F'] == pytest.approx((metrics['J_mean'] + metrics['F_mean']) / 2)
  assert metrics['num_objects'] >= 1


def test_runlocal_trains_evaluates_writes_davis_files_and_resumes(tmp_path):
  config = config_lib.load_config(str(REPO / CONFIG))
  steps = config.train.num_steps
  workdir = tmp_path / 'run'
  log = _main(workdir)
  assert f'Training steps 0..{steps}' in log
  out = workdir / 'eval' / f'step_{steps}'
  metrics = json.loads((out / 'metrics.json').read_text())
  _check_metrics(metrics)
  assert metrics['use_gt_cond'] is False and metrics['step'] == steps
  assert metrics['sampling_steps'] == config.eval.steps
  assert metrics['sampling_steps_later'] == config.eval.steps_later

  gt_root = out / 'groundtruth'
  names = (gt_root / 'ImageSets' / '2017' / 'val.txt').read_text().split()
  assert len(names) == config.dataset.num_eval == metrics['num_sequences']
  size = tuple(config.dataset.max_original_size)
  for seq in names:
    frames, gt = davis_format.read_davis_sequence(
        gt_root / 'Annotations_unsupervised' / '480p' / seq)
    assert len(frames) == config.dataset.eval_num_frames and gt.shape[1:] == size
    pred_frames, pred = davis_format.read_davis_sequence(out / 'predictions' / seq)
    assert pred_frames == frames and pred.shape == gt.shape and pred.max() <= 20
  # The written files score as the run reported.
  again = vos.evaluate_davis_folders(gt_root, out / 'predictions')
  assert again['J&F'] == pytest.approx(metrics['J&F'])
  vis = sorted(p.name for p in (out / 'vis').iterdir())
  assert vis == sorted(f'{n}.{ext}' for n in names[:config.eval.num_visualizations]
                       for ext in ('png', 'gif'))
  assert any(p.name.startswith('events.out.tfevents') for p in workdir.iterdir())

  # Rerun: resumes from the last checkpoint (no training left) and evaluates again, here
  # with ground-truth conditioning.
  log = _main(workdir, '--config.eval.use_gt_cond=True')
  assert f'at step {steps}' in log and 'Resumed from' in log and 'fresh start' not in log
  metrics = json.loads((out / 'metrics.json').read_text())
  _check_metrics(metrics)
  assert metrics['use_gt_cond'] is True
