"""End to end: the default command on the tiny shapes variant keeps the contracts of
docs/contracts.md.

  python -m pix2seq_d_jax.main --config=configs/shapes.py:runlocal --workdir=DIR

runs once per module (a few training steps, one periodic and one final evaluation, two
checkpoints); the tests then check its log, every file it promises, the scorer CLI on those
files, resuming, the programmatic Predictor, `--mode=predict` and `--mode=describe`.
"""

import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from PIL import Image

from pix2seq_d_jax import config_lib
from pix2seq_d_jax.formats import coco_format

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = 'configs/shapes.py:runlocal'
PANOPTIC_KEYS = ('PQ', 'SQ', 'RQ', 'PQ_th', 'SQ_th', 'RQ_th', 'PQ_st', 'SQ_st', 'RQ_st')
# 'step 4/6 | loss 5.5446 (class 5.545 id 5.545) | lr 5.00e-05 | 0.25 steps/s, 1.0 img/s |
# ETA 0m08s'
PROGRESS = re.compile(r'step (\d+)/(\d+) \| loss (\S+) .*?\| lr (\S+) \| (\S+) steps/s, (\S+) '
                      r'img/s \| ETA (?:\d+h)?\d+m\d\ds')
# Unoptimised XLA:CPU code compiles several times faster; these tests check the loop and its
# files, and nothing they check depends on the optimisation level. The variable is replaced,
# not extended, so that a caller's fake-device flags cannot change the default command's mesh.
XLA_FLAGS = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'


def _python(module, *args):
  env = dict(os.environ, XLA_FLAGS=XLA_FLAGS,
             PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)


def _main(workdir, *flags):
  """Runs the CLI; returns (exit code, stdout + stderr)."""
  proc = _python('pix2seq_d_jax.main', f'--config={CONFIG}', f'--workdir={workdir}', *flags)
  return proc.returncode, proc.stdout + proc.stderr


def _progress(log):
  """The progress lines of a log as (step, total, loss, lr, steps/s, img/s) tuples."""
  return [(int(m[1]), int(m[2]), float(m[3]), float(m[4]), float(m[5]), float(m[6]))
          for m in PROGRESS.finditer(log)]


def _event_files(workdir):
  return sorted(p for p in pathlib.Path(workdir).iterdir()
                if p.name.startswith('events.out.tfevents'))


def _events(files):
  """The tensor summaries of the given event files.

  Returns:
    values: {tag: [(step, numpy value), ...]}; plugins: {tag: plugin name, e.g. 'images'}.
  """
  # pylint: disable=import-outside-toplevel
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  out, plugins = {}, {}
  for path in files:
    acc = event_accumulator.EventAccumulator(
        str(path), size_guidance={event_accumulator.TENSORS: 0}, purge_orphaned_data=False)
    acc.Reload()
    for tag in acc.Tags()['tensors']:
      plugins[tag] = acc.SummaryMetadata(tag).plugin_data.plugin_name
      out.setdefault(tag, []).extend(
          (e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag))
  return out, plugins


def _steps_on(every, total):
  """The steps at which a periodic action fires: multiples of `every`, and the last step."""
  return sorted(set(range(every, total + 1, every)) | {total})


def _checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / 'checkpoints').iterdir()
                if p.name.isdigit())


def _read_rgb(path):
  with Image.open(path) as im:
    assert im.mode == 'RGB', (path, im.mode)
    return np.asarray(im)


def _check_coco_folder(folder, categories):
  """Validates a COCO panoptic folder (panoptic.json + panoptic/*.png) field by field.

  Returns:
    {image_id: {'size': (h, w), 'file_name', 'png', 'segments': segments_info}}.
  """
  folder = pathlib.Path(folder)
  data = json.loads((folder / 'panoptic.json').read_text())
  assert {'images', 'annotations', 'categories'} <= set(data), sorted(data)
  assert data['categories'] == categories
  # The package's own reader checks the structure (unique image ids, required keys).
  coco_format.load_coco_panoptic(folder / 'panoptic.json', folder / 'panoptic')

  images = {}
  for im in data['images']:
    assert isinstance(im['id'], int) and isinstance(im['file_name'], str), im
    assert isinstance(im['height'], int) and isinstance(im['width'], int), im
    assert im['height'] > 0 and im['width'] > 0, im
    assert im['id'] not in images, f'image id {im["id"]} appears twice'
    images[im['id']] = im
  assert len(data['annotations']) == len(images)
  category_ids = {c['id'] for c in categories}
  out = {}
  for ann in data['annotations']:
    image = images[ann['image_id']]
    assert isinstance(ann['file_name'], str) and ann['file_name'].endswith('.png'), ann
    assert isinstance(ann['segments_info'], list), ann
    for s in ann['segments_info']:
      assert {'id', 'category_id', 'iscrowd', 'area', 'bbox'} <= set(s), s
      assert all(isinstance(s[k], int) for k in ('id', 'category_id', 'iscrowd', 'area')), s
      assert s['iscrowd'] in (0, 1) and s['category_id'] in category_ids, s
      assert len(s['bbox']) == 4 and all(isinstance(v, int) for v in s['bbox']), s
    seg = coco_format.read_panoptic_png(folder / 'panoptic' / ann['file_name'])
    assert seg.shape == (image['height'], image['width']), (ann['file_name'], seg.shape)
    # Every PNG id is listed and every listed id is painted; raises otherwise.
    ids, _, counts = coco_format.index_segments(
        seg, ann['segments_info'], category_ids, source=str(folder), image=ann['file_name'])
    for s, count in zip(ann['segments_info'], counts[1:]):
      assert s['area'] == count, (ann['file_name'], s)
      ys, xs = np.nonzero(seg == s['id'])
      assert s['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                           ys.max() - ys.min() + 1], (ann['file_name'], s)
    assert set(np.unique(seg)) <= set(ids.tolist())
    out[ann['image_id']] = {'size': seg.shape, 'file_name': image['file_name'],
                            'png': ann['file_name'], 'segments': ann['segments_info']}
  pngs = sorted(p.name for p in (folder / 'panoptic').iterdir())
  assert pngs == sorted(a['png'] for a in out.values()), 'PNGs without an annotation, or extra'
  return out


def _comparable(metrics):
  return {k: v for k, v in metrics.items() if k != 'eval_seconds'}


@pytest.fixture(scope='module', name='config')
def fixture_config():
  return config_lib.load_config(str(REPO / CONFIG))


@pytest.fixture(scope='module', name='categories')
def fixture_categories(config):
  """The data set's categories, from the data source itself."""
  from pix2seq_d_jax import data  # pylint: disable=import-outside-toplevel
  return data.get_source(config.dataset).categories


@pytest.fixture(scope='module', name='run')
def fixture_run(tmp_path_factory):
  """The default command, run once: its workdir, exit code, log and event files."""
  workdir = tmp_path_factory.mktemp('e2e_default') / 'run'
  returncode, log = _main(workdir)
  events = _event_files(workdir) if workdir.is_dir() else []
  return types.SimpleNamespace(workdir=workdir, returncode=returncode, log=log, events=events)


@pytest.fixture(scope='module', name='eval_dirs')
def fixture_eval_dirs(run, config):
  """{step: DIR/eval/step_N} of every evaluation the run promised; asserts they exist."""
  total = config.train.num_steps
  steps = _steps_on(config.eval.every_steps, total)
  assert len(steps) >= 2, 'the variant must have a periodic and a final evaluation'
  found = sorted(p.name for p in (run.workdir / 'eval').iterdir())
  assert found == sorted(f'step_{s}' for s in steps), run.log[-3000:]
  return {s: run.workdir / 'eval' / f'step_{s}' for s in steps}


@pytest.fixture(scope='module', name='predictor')
def fixture_predictor(run):
  from pix2seq_d_jax import predict  # pylint: disable=import-outside-toplevel
  assert run.returncode == 0, run.log[-3000:]
  return predict.Predictor.from_workdir(str(run.workdir))


def test_exits_zero_and_prints_progress_lines(run, config):
  """The run succeeds and logs step, loss, learning rate, throughput and ETA every
  log_every_steps and at the last step; throughput in img/s is steps/s times the batch size."""
  assert run.returncode == 0, run.log[-4000:]
  total, batch = config.train.num_steps, config.train.batch_size
  assert f'Training steps 0..{total} (batch {batch}, fresh start)' in run.log
  lines = _progress(run.log)
  assert [line[0] for line in lines] == _steps_on(config.train.log_every_steps, total), lines
  for step, line_total, loss, lr, rate, images in lines:
    assert line_total == total
    assert np.isfinite(loss) and loss > 0, (step, loss)
    assert 0 < lr <= config.train.learning_rate, (step, lr)
    assert rate > 0 and images == pytest.approx(rate * batch, abs=0.1), (step, rate, images)
  assert re.search(rf'step {total}/{total} .*\| ETA 0m00s', run.log)


def test_metrics_json_for_every_evaluation(eval_dirs, categories, config):
  """Each evaluation's metrics.json holds the panoptic keys as percentages, per-class entries
  for every category, and TP + FN equal to the ground-truth segments written beside it."""
  for step, out in eval_dirs.items():
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['step'] == step
    assert metrics['num_images'] == config.dataset.num_eval
    for key in PANOPTIC_KEYS:
      assert isinstance(metrics[key], float), (step, key, metrics[key])
      assert 0.0 <= metrics[key] <= 100.0, (step, key, metrics[key])
    per_class = metrics['per_class']
    assert sorted(per_class) == sorted(c['name'] for c in categories)
    gt = json.loads((out / 'groundtruth' / 'panoptic.json').read_text())
    pred = json.loads((out / 'predictions' / 'panoptic.json').read_text())
    for cat in categories:
      entry = per_class[cat['name']]
      assert entry['isthing'] == bool(cat['isthing'])
      for key in ('PQ', 'SQ', 'RQ'):
        assert isinstance(entry[key], float) and 0.0 <= entry[key] <= 100.0, (cat, entry)
      assert all(isinstance(entry[k], int) and entry[k] >= 0 for k in ('TP', 'FP', 'FN'))
      n_gt = sum(s['category_id'] == cat['id'] and not s['iscrowd']
                 for a in gt['annotations'] for s in a['segments_info'])
      n_pred = sum(s['category_id'] == cat['id']
                   for a in pred['annotations'] for s in a['segments_info'])
      assert entry['TP'] + entry['FN'] == n_gt, (step, cat['name'], entry, n_gt)
      assert entry['TP'] + entry['FP'] <= n_pred, (step, cat['name'], entry, n_pred)


def test_predictions_and_groundtruth_are_coco_panoptic(eval_dirs, categories, config):
  """predictions/ and groundtruth/ are valid COCO panoptic folders with the data set's
  categories, and every ground-truth image has a prediction of the same size and file name."""
  for out in eval_dirs.values():
    gt = _check_coco_folder(out / 'groundtruth', categories)
    pred = _check_coco_folder(out / 'predictions', categories)
    assert len(gt) == config.dataset.num_eval
    assert sum(len(g['segments']) for g in gt.values()) > 0, 'the ground truth is empty'
    assert sorted(pred) == sorted(gt)
    for image_id, g in gt.items():
      assert pred[image_id]['size'] == g['size'], image_id
      assert pred[image_id]['file_name'] == g['file_name'], image_id


def test_visualizations_are_rgb_pngs(eval_dirs, config):
  """vis/ holds eval.num_visualizations readable RGB pictures (image | truth | prediction)."""
  h, w = config.dataset.max_original_size
  for out in eval_dirs.values():
    files = sorted((out / 'vis').glob('*.png'))
    assert len(files) == config.eval.num_visualizations, files
    for path in files:
      pixels = _read_rgb(path)
      assert pixels.ndim == 3 and pixels.shape[0] >= h and pixels.shape[1] >= 3 * w
      assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8, f'{path} is nearly blank'


def test_tensorboard_events(run, eval_dirs, config):
  """The event files hold train/loss and train/lr at the logged steps with the logged values,
  eval/PQ per evaluation equal to metrics.json, and the 'eval/predictions' images equal to the
  vis/ PNGs."""
  assert run.events, f'no event files in {run.workdir}'
  events, plugins = _events(run.events)
  lines = {line[0]: line for line in _progress(run.log)}
  for tag, column, rel in (('train/loss', 2, 1e-4), ('train/lr', 3, 1e-2)):
    assert sorted(step for step, _ in events[tag]) == sorted(lines), tag
    for step, value in events[tag]:
      assert float(value) == pytest.approx(lines[step][column], rel=rel, abs=1e-4), (tag, step)
  for tag in ('train/loss_class', 'train/loss_id', 'perf/steps_per_sec'):
    assert tag in events, sorted(events)
  pq = dict(events['eval/PQ'])
  assert sorted(pq) == sorted(eval_dirs)
  for step, out in eval_dirs.items():
    assert float(pq[step]) == json.loads((out / 'metrics.json').read_text())['PQ']
  assert plugins['eval/predictions'] == 'images', plugins
  images = dict(events['eval/predictions'])
  assert sorted(images) == sorted(eval_dirs)
  for step, out in eval_dirs.items():
    width, height, *pngs = images[step]   # The image plugin's layout: w, h, then PNG bytes.
    vis = [_read_rgb(p) for p in sorted((out / 'vis').glob('*.png'))]
    assert len(pngs) == len(vis) == config.eval.num_visualizations
    for png, expected in zip(pngs, vis):
      with Image.open(io.BytesIO(png)) as im:
        pixels = np.asarray(im.convert('RGB'))
      assert pixels.shape[:2] == (int(height), int(width))
      np.testing.assert_array_equal(pixels, expected[:pixels.shape[0], :pixels.shape[1]])


def test_checkpoints_and_run_files(run, config, categories):
  """checkpoints/ holds the expected steps with their metadata; config.json is the config that
  ran and categories.json the data set's categories."""
  t = config.train
  expected = _steps_on(t.checkpoint_every_steps, t.num_steps)[-t.keep_checkpoints:]
  assert len(expected) >= 2
  assert _checkpoint_steps(run.workdir) == expected
  for step in expected:
    meta = json.loads((run.workdir / 'checkpoints' / str(step) / 'meta' / 'metadata').read_text())
    assert meta['step'] == step, meta
  saved = json.loads((run.workdir / 'config.json').read_text())
  assert saved == json.loads(config.to_json_best_effort())
  assert json.loads((run.workdir / 'categories.json').read_text()) == categories


def _score(gt, pred):
  """`python -m pix2seq_d_jax.evaluate panoptic` on two COCO panoptic folders; its JSON."""
  proc = _python('pix2seq_d_jax.evaluate', 'panoptic',
                 '--gt-json', gt / 'panoptic.json', '--gt-dir', gt / 'panoptic',
                 '--pred-json', pred / 'panoptic.json', '--pred-dir', pred / 'panoptic')
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout)


def test_evaluate_cli_reproduces_metrics(eval_dirs):
  """`python -m pix2seq_d_jax.evaluate panoptic` on the written folders gives metrics.json's
  values, and scores the ground truth against itself as perfect."""
  for out in eval_dirs.values():
    scored = _score(out / 'groundtruth', out / 'predictions')
    metrics = json.loads((out / 'metrics.json').read_text())
    for key in PANOPTIC_KEYS:
      assert abs(scored[key] - metrics[key]) <= 1e-9, (out, key, scored[key], metrics[key])
    assert sorted(scored['per_class']) == sorted(metrics['per_class'])
    for name, entry in metrics['per_class'].items():
      for key in ('TP', 'FP', 'FN'):
        assert scored['per_class'][name][key] == entry[key], (out, name, key)
      for key in ('PQ', 'SQ', 'RQ'):
        assert abs(scored['per_class'][name][key] - entry[key]) <= 1e-9, (out, name, key)
  gt = eval_dirs[max(eval_dirs)] / 'groundtruth'
  perfect = _score(gt, gt)
  for key in ('PQ', 'SQ', 'RQ'):
    assert perfect[key] == pytest.approx(100.0, abs=1e-9), perfect


def test_rerun_resumes_at_final_step_and_writes_equal_evaluation(run, eval_dirs, config):
  """The same command again resumes at the final step, trains no step, saves no checkpoint,
  and writes the final evaluation again with the same metrics and predictions."""
  total = config.train.num_steps
  final = eval_dirs[total]
  before = {
      'metrics': _comparable(json.loads((final / 'metrics.json').read_text())),
      'mtime': (final / 'metrics.json').stat().st_mtime_ns,
      'json': (final / 'predictions' / 'panoptic.json').read_text(),
      'pngs': {p.name: coco_format.read_panoptic_png(p)
               for p in (final / 'predictions' / 'panoptic').iterdir()},
      'checkpoints': _checkpoint_steps(run.workdir),
  }
  returncode, log = _main(run.workdir)
  assert returncode == 0, log[-4000:]
  assert re.search(rf'Resumed from \S+ at step {total}\.', log), log[-4000:]
  assert f'Training steps {total}..{total} (batch {config.train.batch_size}, resumed)' in log
  assert not _progress(log), 'a training step ran again'
  assert re.search(rf'eval step {total} \(', log)
  new_events, _ = _events(sorted(set(_event_files(run.workdir)) - set(run.events)))
  assert not any(tag.startswith('train/') for tag in new_events), sorted(new_events)
  assert [step for step, _ in new_events['eval/PQ']] == [total]

  assert sorted(p.name for p in (run.workdir / 'eval').iterdir()) == sorted(
      p.name for p in eval_dirs.values())
  assert _checkpoint_steps(run.workdir) == before['checkpoints']
  assert (final / 'metrics.json').stat().st_mtime_ns > before['mtime'], 'not written again'
  assert _comparable(json.loads((final / 'metrics.json').read_text())) == before['metrics']
  assert (final / 'predictions' / 'panoptic.json').read_text() == before['json']
  pngs = {p.name: coco_format.read_panoptic_png(p)
          for p in (final / 'predictions' / 'panoptic').iterdir()}
  assert sorted(pngs) == sorted(before['pngs'])
  for name, seg in pngs.items():
    np.testing.assert_array_equal(seg, before['pngs'][name], err_msg=name)


def test_more_steps_continue_from_last_checkpoint(run, config, tmp_path):
  """A larger --config.train.num_steps on a finished workdir resumes at its last checkpoint
  and trains only the new steps, checkpointing and evaluating at the new end."""
  assert run.returncode == 0, run.log[-3000:]
  t = config.train
  last, more = t.num_steps, t.num_steps + t.checkpoint_every_steps
  workdir = tmp_path / 'longer'
  shutil.copytree(run.workdir, workdir)
  old_events = set(_event_files(workdir))
  returncode, log = _main(workdir, f'--config.train.num_steps={more}')
  assert returncode == 0, log[-4000:]
  assert re.search(rf'Resumed from \S+ at step {last}\.', log), log[-4000:]
  assert f'Training steps {last}..{more}' in log and 'fresh start' not in log
  logged = [line[0] for line in _progress(log)]
  assert logged == [s for s in _steps_on(t.log_every_steps, more) if s > last], logged
  new_events, _ = _events(sorted(set(_event_files(workdir)) - old_events))
  assert sorted(step for step, _ in new_events['train/loss']) == logged
  assert _checkpoint_steps(workdir) == _steps_on(t.checkpoint_every_steps,
                                                 more)[-t.keep_checkpoints:]
  meta = json.loads((workdir / 'checkpoints' / str(more) / 'meta' / 'metadata').read_text())
  assert meta['step'] == more
  metrics = json.loads((workdir / 'eval' / f'step_{more}' / 'metrics.json').read_text())
  assert metrics['step'] == more


def test_predictor_from_workdir(predictor, categories, config):
  """Predictor.from_workdir maps uint8 images of any size to class and id maps of that size,
  with classes that index the categories and id 0 wherever the class is void."""
  assert predictor.categories == categories
  rng = np.random.default_rng(0)
  for size in ((40, 56), (80, 48)):
    images = rng.integers(0, 256, (3, *size, 3), dtype=np.uint8)
    images[1] = 90      # A flat grey image.
    out = predictor(images, steps=config.eval.steps, td=config.eval.td)
    for key in ('class', 'id'):
      assert out[key].shape == (3, *size) and out[key].dtype == np.int32, (key, out[key].shape)
    assert out['class'].min() >= 0 and out['class'].max() <= len(categories)
    assert out['id'].min() >= 0 and out['id'].max() < config.dataset.max_instances
    assert not out['id'][out['class'] == 0].any(), 'instance ids on void pixels'
    again = predictor(images, steps=config.eval.steps, td=config.eval.td)
    np.testing.assert_array_equal(again['class'], out['class'])
    np.testing.assert_array_equal(again['id'], out['id'])


def test_predict_mode_writes_consistent_coco_panoptic(run, categories, tmp_path):
  """--mode=predict --input=GLOB writes predict/panoptic.json and PNGs that agree with each
  other, one per input file at the file's size, plus a picture per file."""
  assert run.returncode == 0, run.log[-3000:]
  rng = np.random.default_rng(1)
  sizes = {'rgb_square': (64, 64), 'rgb_wide': (48, 72), 'gray_small': (30, 40)}
  for name, (h, w) in sizes.items():
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    (image.convert('L') if name.startswith('gray') else image).save(tmp_path / f'{name}.png')
  (tmp_path / 'notes.txt').write_text('not matched by the glob')
  returncode, log = _main(run.workdir, '--mode=predict', f'--input={tmp_path}/*.png')
  assert returncode == 0, log[-4000:]
  out = run.workdir / 'predict'
  written = _check_coco_folder(out, categories)
  assert sorted(pathlib.Path(w['file_name']).stem for w in written.values()) == sorted(sizes)
  for w in written.values():
    assert w['size'] == sizes[pathlib.Path(w['file_name']).stem], w
  vis = sorted((out / 'vis').glob('*.png'))
  assert sorted(p.stem for p in vis) == sorted(sizes)
  for path in vis:
    assert _read_rgb(path).shape[0] == sizes[path.stem][0]


def test_describe_counts_params_and_flops(predictor):
  """--mode=describe prints one JSON object whose params.total is the sum of the per-module
  counts, each equal to the trained checkpoint's, and positive FLOPs for training and sampling."""
  proc = _python('pix2seq_d_jax.main', f'--config={CONFIG}', '--mode=describe')
  assert proc.returncode == 0, proc.stderr[-4000:]
  described = json.loads(proc.stdout)
  params = described['params']
  modules = {k: v for k, v in params.items() if k != 'total'}
  assert modules and all(isinstance(v, int) and v > 0 for v in modules.values()), params
  assert params['total'] == sum(modules.values())
  trained = predictor.variables['params']
  assert sorted(modules) == sorted(trained)
  for name, count in modules.items():
    assert count == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trained[name])), name
  flops = described['flops']
  for key in ('train_step', 'encoder_per_image', 'sampling_step_per_image', 'sample_per_image'):
    assert flops[key] > 0, (key, flops[key])
  # A training example runs the encoder and decoder forward and backward; a sampling step
  # only the decoder forward.
  assert flops['train_step_per_example'] > flops['sampling_step_per_image']
  assert flops['sample_per_image'] > flops['encoder_per_image']
