"""Tests of `python -m pix2seq_d_jax.evaluate` on files the tests write."""

import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

from pix2seq_d_jax import evaluate
from pix2seq_d_jax.evaluation import panoptic
from pix2seq_d_jax.formats import coco_format as cf

REPO = pathlib.Path(__file__).resolve().parents[1]
CATS = [
    {'id': 1, 'name': 'person', 'isthing': 1},
    {'id': 3, 'name': 'car', 'isthing': 1},
    {'id': 7, 'name': 'road', 'isthing': 0},
]


def run_cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.run([sys.executable, '-m', 'pix2seq_d_jax.evaluate', *map(str, args)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(name='folders')
def fixture_folders(tmp_path):
  rng = np.random.default_rng(0)
  with cf.CocoPanopticWriter(tmp_path / 'gt', CATS) as gt, \
      cf.CocoPanopticWriter(tmp_path / 'pred', CATS) as pred:
    for k in range(3):
      cls, ids = rng.integers(0, 4, (12, 16)), rng.integers(1, 4, (12, 16))
      pcls = np.where(rng.random(cls.shape) < 0.2, 3, cls)
      gt.add(k, f'img{k}.jpg', *cf.segments_from_maps(cls, ids, CATS))
      pred.add(k, f'img{k}.jpg', *cf.segments_from_maps(pcls, ids, CATS))
  return {
      'gt_json': tmp_path / 'gt/panoptic.json', 'gt_dir': tmp_path / 'gt/panoptic',
      'pred_json': tmp_path / 'pred/panoptic.json', 'pred_dir': tmp_path / 'pred/panoptic',
  }


def panoptic_args(f):
  return ['panoptic', '--gt-json', f['gt_json'], '--gt-dir', f['gt_dir'],
          '--pred-json', f['pred_json'], '--pred-dir', f['pred_dir']]


def test_panoptic_prints_one_json_object(folders):
  proc = run_cli(*panoptic_args(folders))
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1
  result = json.loads(lines[0])
  expected = panoptic.evaluate_files(folders['gt_json'], folders['gt_dir'],
                                     folders['pred_json'], folders['pred_dir'])
  assert result == expected
  assert 0 < result['PQ'] < 100
  assert set(panoptic.SUMMARY_KEYS) <= set(result)
  assert set(result['per_class']) == {'person', 'car', 'road'}


def test_missing_png_exits_2_naming_the_file(folders):
  (folders['pred_dir'] / 'img1.png').unlink()
  proc = run_cli(*panoptic_args(folders))
  assert proc.returncode == 2
  assert proc.stdout == ''
  assert 'img1.png does not exist' in proc.stderr
  assert str(folders['pred_json']) in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_corrupt_json_exits_2_naming_the_file(folders):
  folders['pred_json'].write_text('{"annotations": [}')
  proc = run_cli(*panoptic_args(folders))
  assert proc.returncode == 2
  assert f"{folders['pred_json']}: not valid JSON" in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_inconsistent_prediction_exits_2(folders):
  data = json.loads(folders['pred_json'].read_text())
  data['annotations'][0]['segments_info'][0]['category_id'] = 999
  folders['pred_json'].write_text(json.dumps(data))
  proc = run_cli(*panoptic_args(folders))
  assert proc.returncode == 2
  assert 'has category 999, which is not in categories (valid: 1, 3, 7)' in proc.stderr


def test_missing_arguments_exit_2():
  proc = run_cli('panoptic', '--gt-json', 'x.json')
  assert proc.returncode == 2
  assert '--gt-dir' in proc.stderr
  assert run_cli().returncode == 2


def test_vos_calls_evaluate_davis_folders(monkeypatch, capsys, tmp_path):
  calls = []

  def fake(gt_dir, pred_dir):
    calls.append((gt_dir, pred_dir))
    return {'J&F': 71.5, 'J_mean': np.float64(70.0), 'J_decay': float('nan'),
            'per_sequence': {'bear': np.array([1.5, 2.0])}}

  fake_vos = types.ModuleType('pix2seq_d_jax.evaluation.vos')
  fake_vos.evaluate_davis_folders = fake
  monkeypatch.setitem(sys.modules, 'pix2seq_d_jax.evaluation.vos', fake_vos)
  import pix2seq_d_jax.evaluation as evaluation_pkg
  monkeypatch.setattr(evaluation_pkg, 'vos', fake_vos, raising=False)

  assert evaluate.main(['vos', '--gt-dir', str(tmp_path / 'davis'), '--pred-dir', 'res']) == 0
  assert calls == [(str(tmp_path / 'davis'), 'res')]
  # Strict JSON: numpy values become Python values, NaN becomes null.
  assert json.loads(capsys.readouterr().out) == {'J&F': 71.5, 'J_mean': 70.0, 'J_decay': None,
                                                 'per_sequence': {'bear': [1.5, 2.0]}}

  def failing(gt_dir, pred_dir):
    raise FileNotFoundError(f'{gt_dir}: no ImageSets/2017/val.txt; pass the DAVIS root')

  fake_vos.evaluate_davis_folders = failing
  assert evaluate.main(['vos', '--gt-dir', 'root', '--pred-dir', 'res']) == 2
  err = capsys.readouterr()
  assert err.out == '' and 'root: no ImageSets/2017/val.txt' in err.err


def test_cli_does_not_import_jax_or_tensorflow(folders):
  code = ('import sys, runpy; sys.argv = ["evaluate"] + sys.argv[1:]\n'
          'try:\n  runpy.run_module("pix2seq_d_jax.evaluate", run_name="__main__")\n'
          'except SystemExit:\n  pass\n'
          'heavy = [m for m in ("jax", "tensorflow", "flax") if m in sys.modules]\n'
          'sys.stderr.write("HEAVY=" + ",".join(heavy))')
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, '-c', code, *map(str, panoptic_args(folders))],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
  assert 'HEAVY=' in proc.stderr and proc.stderr.strip().endswith('HEAVY='), proc.stderr
  assert json.loads(proc.stdout)['n'] == 3
