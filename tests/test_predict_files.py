"""`--mode=predict --input=GLOB` on broken and odd files: convertible images are converted and
predicted, unusable files are named with their reason and skipped, every usable file is still
written, and the command exits non-zero when a file was skipped."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import data_fixtures as fx
from conftest import REPO, save_workdir
from pix2seq_d_jax import predict_files
from pix2seq_d_jax.models import pix2seq_d

CATEGORIES = [{'id': k, 'name': f'c{k}', 'isthing': int(k <= 4)} for k in range(1, 9)]


@pytest.fixture(scope='module')
def workdir(tiny_config, random_variables, tmp_path_factory):
  """A workdir holding the tiny model (random weights, 2 sampling steps) as step 0."""
  config = tiny_config('eval.steps=2')
  model = pix2seq_d.build_model(config)
  return save_workdir(tmp_path_factory.mktemp('predict') / 'run', config,
                      random_variables(model, config, seed=1), CATEGORIES)


def write_inputs(folder: pathlib.Path) -> tuple[dict, dict]:
  """({stem: (h, w)} of the usable files, {file name: reason pattern} of the unusable ones)."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  rgb = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  Image.fromarray(rgb(40, 56)).save(folder / 'good.jpg', quality=95)
  Image.fromarray(rgb(30, 20)[..., 0]).save(folder / 'gray.png')
  Image.fromarray(np.concatenate([rgb(24, 36), np.full((24, 36, 1), 9, np.uint8)], -1),
                  'RGBA').save(folder / 'rgba.png')
  Image.fromarray(np.full((28, 44), 40000, np.uint16)).save(folder / 'gray16.png')
  Image.fromarray(rgb(1500, 2000)).save(folder / 'large.jpg', quality=70)
  usable = {'good': (40, 56), 'gray': (30, 20), 'rgba': (24, 36), 'gray16': (28, 44),
            'large': (1500, 2000)}
  data = (folder / 'good.jpg').read_bytes()
  (folder / 'truncated.jpg').write_bytes(data[:len(data) // 2])
  (folder / 'notes.jpg').write_text('these are notes, not an image\n' * 20)
  (folder / 'empty.png').write_bytes(b'')
  fx.write_png_header_only(folder / 'huge.png', 20000, 20000)
  unusable = {'truncated.jpg': r'(truncated|cannot decode)', 'notes.jpg': 'not an image file',
              'empty.png': 'the file is empty', 'huge.png': r'too large to decode, more than MAX_PIXELS=.*400000000 pixels'}
  return usable, unusable


def test_read_rgb_converts_like_training(tmp_path):
  """Grayscale is replicated, alpha dropped, 16-bit divided by 257 (40000 -> 156)."""
  write_inputs(tmp_path)
  gray = np.asarray(Image.open(tmp_path / 'gray.png'))
  got = predict_files.read_rgb(str(tmp_path / 'gray.png'))
  assert got.shape == (30, 20, 3) and got.dtype == np.uint8
  for c in range(3):
    np.testing.assert_array_equal(got[..., c], gray)
  rgba = np.asarray(Image.open(tmp_path / 'rgba.png'))
  np.testing.assert_array_equal(predict_files.read_rgb(str(tmp_path / 'rgba.png')), rgba[..., :3])
  sixteen = predict_files.read_rgb(str(tmp_path / 'gray16.png'))
  assert sixteen.shape == (28, 44, 3) and np.all(sixteen == round(40000 / 257))


@pytest.mark.parametrize('name', ['truncated.jpg', 'notes.jpg', 'empty.png', 'huge.png'])
def test_read_rgb_names_the_file_and_the_reason(tmp_path, name):
  _, unusable = write_inputs(tmp_path)
  path = str(tmp_path / name)
  with pytest.raises(predict_files.UnusableImage, match=unusable[name]) as info:
    predict_files.read_rgb(path)
  assert str(info.value).startswith(path + ':')


def test_truncated_png_is_unusable(tmp_path):
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / 'cut.png')
  data = (tmp_path / 'cut.png').read_bytes()
  (tmp_path / 'cut.png').write_bytes(data[:-20])
  with pytest.raises(predict_files.UnusableImage, match='cut.png: .*truncated'):
    predict_files.read_rgb(str(tmp_path / 'cut.png'))


def test_predict_writes_every_usable_file_and_lists_the_skipped(workdir, tmp_path, caplog):
  usable, unusable = write_inputs(tmp_path / 'in')
  result = predict_files.run(str(workdir), str(tmp_path / 'in' / '*'))
  assert result['num_images'] == len(usable)
  skipped = {pathlib.Path(p).name: reason for p, reason in result['skipped'].items()}
  assert sorted(skipped) == sorted(unusable)
  for name, pattern in unusable.items():
    assert str(tmp_path / 'in' / name) in skipped[name]
    assert re.search(pattern, skipped[name]), (name, skipped[name])
    assert f'Skipped: {tmp_path / "in" / name}' in caplog.text
  out = workdir / 'predict'
  written = json.loads((out / 'panoptic.json').read_text())
  sizes = {pathlib.Path(im['file_name']).stem: (im['height'], im['width'])
           for im in written['images']}
  assert sizes == usable
  for stem, (h, w) in usable.items():
    seg = np.asarray(Image.open(out / 'panoptic' / f'{stem}.png'))
    assert seg.shape == (h, w, 3)
    assert np.asarray(Image.open(out / 'vis' / f'{stem}.png')).shape[:2] == (h, 2 * w)


def test_the_command_exits_non_zero_after_writing_the_usable_files(workdir, tmp_path):
  folder = tmp_path / 'in'
  folder.mkdir()
  Image.fromarray(np.full((36, 48, 3), 128, np.uint8)).save(folder / 'fine.png')
  (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-m', 'pix2seq_d_jax.main', f'--config={REPO}/configs/shapes.py',
       f'--workdir={workdir}', '--mode=predict', f'--input={folder}/*.png',
       '--config.cpu_devices=1'], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  log = proc.stdout + proc.stderr
  assert proc.returncode == 1, log[-3000:]
  assert f'skipped 1 unusable files: {folder / "broken.png"}' in log, log[-3000:]
  written = json.loads((workdir / 'predict' / 'panoptic.json').read_text())
  assert [im['file_name'] for im in written['images']] == ['fine.png']
