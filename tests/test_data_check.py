"""`python -m pix2seq_d_jax.data.check`: summaries of good data, every problem of bad data."""

import json
import os
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import data_fixtures as fx  # noqa: E402
from pix2seq_d_jax.data import check  # noqa: E402

ROOT = fx.ROOT
COCO = 'configs/coco_panoptic.py:runlocal'


def coco_args(train, val=None, *extra):
  args = [f'--config={ROOT / COCO}', '--config.dataset.name=coco_panoptic_folder',
          '--config.dataset.num_classes=5', *[f'--config.{o}' for o in train.overrides('train')]]
  if val is not None:
    args += [f'--config.{o}' for o in val.overrides('eval')]
  else:
    args += ['--split=train']
  return args + list(extra)


def run_main(capsys, args) -> tuple[int, dict, str]:
  code = check.main(args)
  out = capsys.readouterr()
  return code, json.loads(out.out), out.err


def test_good_folder_summary(tmp_path, capsys):
  train = fx.write_coco_folder(tmp_path, 'train', num_images=4, size=(24, 32), num_rects=2)
  val = fx.write_coco_folder(tmp_path, 'val', num_images=3, size=(24, 32), first_image_id=50,
                             vary_size=True)
  code, report, err = run_main(capsys, coco_args(train, val))
  assert code == 0 and report['ok'] and not report['errors'] and err == ''
  t, v = report['splits']['train'], report['splits']['validation']
  assert t['images'] == t['images_checked'] == 4 and v['images'] == 3
  assert t['segments'] == 4 * 4 and t['segments_per_image']['p50'] == 4.0
  assert t['classes_present'] == 4 and t['classes_absent'] == []
  assert t['crowd_segment_share'] == 0.0
  assert v['largest_original_size'] == [24 + 8, 32]          # vary_size: (h + 4k, w - 2k)
  assert 0 < t['void_pixel_share'] < 0.2                      # the bottom void strip
  # Crowds count, and --max_images limits the pixel checks.
  crowd = fx.write_coco_folder(tmp_path / 'c', 'train', num_images=2, size=(24, 32), num_rects=3)
  code, report, _ = run_main(capsys, coco_args(crowd, None, '--max_images=1'))
  assert code == 0 and report['splits']['train']['images_checked'] == 1
  assert report['splits']['train']['crowd_segment_share'] == 0.2      # 1 of 5 segments
  assert report['splits']['train']['crowd_pixel_share'] > 0


def test_bad_folder_reports_every_problem_and_fails(tmp_path, capsys):
  f = fx.write_coco_folder(tmp_path, 'train', num_images=6, size=(24, 32), num_rects=2)
  names = [f'{i:012d}' for i in f.image_ids]
  (f.image_dir / f'{names[0]}.jpg').write_bytes(b'garbage')
  (f.panoptic_dir / f'{names[1]}.png').unlink()
  Image.fromarray(np.zeros((24, 32), np.uint8)).save(f.panoptic_dir / f'{names[2]}.png')
  data = fx.read_json(f.json)
  data['annotations'][3]['segments_info'][0]['category_id'] = 77
  data['annotations'][4]['segments_info'].pop()
  data['annotations'][5]['segments_info'].append({'id': 99, 'category_id': 1, 'iscrowd': 0})
  fx.write_json(f.json, data)
  code, report, err = run_main(capsys, coco_args(f, None, '--config.dataset.max_instances=3'))
  assert code == 1 and not report['ok']
  expected = {'unreadable': names[0], 'missing_file': names[1], 'panoptic_png': names[2],
              'unknown_category': 'category_id 77', 'id_not_in_json': names[4],
              'id_not_in_png': '99'}
  for kind, text in expected.items():
    assert report['error_counts'].get(kind) == 1, (kind, report['error_counts'])
    assert any(text in line for line in report['errors']), (kind, report['errors'])
  # The 4 images without JSON-level errors have more segments than K - 1 = 2: a warning
  # (training makes the smallest void).
  assert report['warning_counts']['too_many_segments'] == 4
  assert 'dataset.max_instances' in report['warnings'][0]
  assert '6 error(s)' in err and names[1] in err
  # --limit bounds the messages per kind and counts the rest.
  code, report, _ = run_main(capsys, coco_args(f, None, '--config.dataset.max_instances=3',
                                               '--limit=2'))
  assert report['warning_counts']['too_many_segments'] == 4
  assert sum('segments, more than' in w for w in report['warnings']) == 2
  assert '... and 2 more too_many_segments problems' in report['warnings']


def test_eval_images_larger_than_max_original_size(tmp_path, capsys):
  train = fx.write_coco_folder(tmp_path, 'train', num_images=1, size=(24, 32))
  val = fx.write_coco_folder(tmp_path, 'val', num_images=2, size=(40, 32), first_image_id=9)
  code, report, _ = run_main(capsys, coco_args(
      train, val, '--config.dataset.max_original_size=(32, 32)'))
  assert code == 1 and report['error_counts'] == {'max_original_size': 1}
  assert '--config.dataset.max_original_size="(40, 32)"' in report['errors'][0]


def test_davis_folder(tmp_path, capsys):
  root = fx.write_davis_folder(tmp_path, {
      'train': [fx.DavisVideo('bear', 4), fx.DavisVideo('car', 2)],
      'val': [fx.DavisVideo('cows', 5, 3, void_square=True)]})
  args = [f'--config={ROOT}/configs/davis_video.py:runlocal', f'--config.dataset.root={root}']
  code, report, _ = run_main(capsys, args)
  assert code == 0, report['errors']
  assert report['warning_counts'] == {'short_video': 1}      # 'car' has 2 < 3 frames
  t, v = report['splits']['train'], report['splits']['validation']
  assert (t['videos'], t['frames'], t['examples']) == (2, 6, 2)
  assert v['objects_per_video']['max'] == 3 and v['void_pixel_share'] > 0
  assert v['largest_original_size'] == [24, 40]
  # Break it: a colour (RGB) annotation and a frame without annotation.
  ann = root / 'Annotations_unsupervised' / '480p'
  Image.fromarray(np.zeros((24, 40, 3), np.uint8)).save(ann / 'bear' / '00001.png')
  (ann / 'cows' / '00004.png').unlink()
  code, report, _ = run_main(capsys, args)
  assert code == 1
  assert report['error_counts'] == {'annotation_mode': 1, 'missing_file': 1}
  assert any("'RGB' PNG" in e and 'write_palette_png' in e for e in report['errors'])


def test_command_line_exit_status_and_json(tmp_path):
  f = fx.write_coco_folder(tmp_path, 'train', num_images=2, size=(24, 32))
  (f.panoptic_dir / f'{f.image_ids[0]:012d}.png').unlink()
  result = subprocess.run([sys.executable, '-m', 'pix2seq_d_jax.data.check', *coco_args(f)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  report = json.loads(result.stdout)
  assert report['error_counts'] == {'missing_file': 1}
  assert 'does not exist' in result.stderr



def test_bad_arguments_exit_with_status_2(capsys):
  assert check.main([f'--config={ROOT / COCO}', '--config.dataset.no_such_key=1']) == 2
  assert 'no_such_key' in capsys.readouterr().err
  assert check.main([f'--config={ROOT / COCO}', '--split=nope']) == 2
