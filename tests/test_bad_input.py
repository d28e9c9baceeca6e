"""Bad input files: what the check tool reports and what training does, case by case.

Each case breaks one file of a fresh two-image COCO-panoptic folder, then asserts the check
tool's verdict (error or warning, naming the file) and training's behaviour (an error that names
the file and the fix, or the documented conversion).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

import data_fixtures as fx  # noqa: E402
from pix2seq_d_jax import config_lib  # noqa: E402
from pix2seq_d_jax import data  # noqa: E402
from pix2seq_d_jax.data import check  # noqa: E402
from pix2seq_d_jax.data import folder  # noqa: E402
from pix2seq_d_jax.data import pipeline  # noqa: E402
from pix2seq_d_jax.formats import coco_format  # noqa: E402

ROOT = fx.ROOT
SIZE = (24, 32)


def make(tmp_path, image_format='jpg'):
  f = fx.write_coco_folder(tmp_path, 'train', num_images=2, size=SIZE, num_rects=2,
                           image_format=image_format)
  config = config_lib.load_config(
      str(ROOT / 'configs' / 'coco_panoptic.py') + ':runlocal',
      ['dataset.name=coco_panoptic_folder', 'dataset.num_classes=5', *f.overrides('train')])
  return f, config


def image_path(f, k=0):
  return f.image_dir / next(p.name for p in sorted(f.image_dir.iterdir())
                            if p.stem == f'{f.image_ids[k]:012d}')


def png_path(f, k=0):
  return f.panoptic_dir / f'{f.image_ids[k]:012d}.png'


def run_check(config):
  return check.check_config(config, ['train'], workers=2)


def assert_reported(report, kind, text, error=True):
  counts = report['error_counts' if error else 'warning_counts']
  lines = report['errors' if error else 'warnings']
  assert counts.get(kind, 0) >= 1, (kind, report)
  assert any(text in line for line in lines), (text, lines)


def load_example(config, k=0):
  source = data.get_source(config.dataset)
  return source.example_fn('train')(tf.constant(k, tf.int64))


def train_error(config, k=0) -> str:
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    load_example(config, k)
  return e.value.message


# ---------------------------------------------------------------------------------------------
# Unreadable files.


def test_garbage_image(tmp_path):
  f, config = make(tmp_path)
  path = image_path(f)
  path.write_bytes(b'this is not an image at all' * 10)
  assert_reported(run_check(config), 'unreadable', str(path))
  message = train_error(config)
  assert str(path) in message and 'is not a JPEG, PNG, GIF or BMP' in message


def test_truncated_jpeg_fails_with_the_file_name_also_through_the_pipeline(tmp_path):
  f, config = make(tmp_path)
  path = image_path(f, 1)
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  assert_reported(run_check(config), 'unreadable', str(path))
  message = train_error(config, 1)
  assert str(path) in message and 'truncated' in message and 're-download' in message
  with config.unlocked():
    config.train.batch_size = 2
  source = data.get_source(config.dataset)
  with pytest.raises(pipeline.InputError, match='truncated') as e:
    next(pipeline.as_numpy(pipeline.train_dataset(config, source)))
  assert str(path) in str(e.value) and 'pix2seq_d_jax.data.check' in str(e.value)


def test_truncated_panoptic_png(tmp_path):
  f, config = make(tmp_path)
  path = png_path(f)
  path.write_bytes(path.read_bytes()[:-20])
  assert_reported(run_check(config), 'unreadable', str(path))
  message = train_error(config)
  assert str(path) in message and 'truncated' in message


def test_missing_image_and_png_fail_when_the_source_is_built(tmp_path):
  f, config = make(tmp_path)
  image_path(f).unlink()
  png_path(f, 1).unlink()
  report = run_check(config)
  assert report['error_counts']['missing_file'] == 2
  with pytest.raises(folder.DataError) as e:
    data.get_source(config.dataset).num_examples('train')
  message = str(e.value)
  assert str(png_path(f, 1)) in message and 'does not exist' in message
  assert f'{f.image_ids[0]:012d}.jpg' in message and 'fix the image folder key' in message


# ---------------------------------------------------------------------------------------------
# Documented conversions of images.


def _rewrite_image(f, array):
  path = image_path(f)
  new = path.with_suffix('.png')
  Image.fromarray(array).save(new)
  if new != path:
    path.unlink()
    json_data = fx.read_json(f.json)
    for im in json_data['images']:
      if im['file_name'] == path.name:
        im['file_name'] = new.name
    fx.write_json(f.json, json_data)
  return new


def test_grayscale_image_is_replicated_to_rgb(tmp_path):
  f, config = make(tmp_path)
  gray = np.tile(np.arange(SIZE[1], dtype=np.uint8) * 7, (SIZE[0], 1))
  path = _rewrite_image(f, gray)
  assert_reported(run_check(config), 'image_conversion', 'grayscale', error=False)
  image = load_example(config)['image'].numpy()
  assert image.shape == SIZE + (3,)
  for c in range(3):
    np.testing.assert_array_equal(image[..., c], gray)
  assert path.exists()


def test_rgba_image_loses_its_alpha(tmp_path):
  f, config = make(tmp_path)
  rgba = np.zeros(SIZE + (4,), np.uint8)
  rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 7
  _rewrite_image(f, rgba)
  assert_reported(run_check(config), 'image_conversion', 'RGBA', error=False)
  image = load_example(config)['image'].numpy()
  assert image.shape == SIZE + (3,) and image[0, 0].tolist() == [200, 100, 50]


def test_16bit_image_is_scaled_to_8_bits(tmp_path):
  f, config = make(tmp_path)
  path = _rewrite_image(f, np.zeros(SIZE, np.uint8))
  path.write_bytes(tf.io.encode_png(tf.fill(SIZE + (1,), tf.constant(40000, tf.uint16))).numpy())
  assert_reported(run_check(config), 'image_conversion', '16-bit', error=False)
  image = load_example(config)['image'].numpy()
  assert image.shape == SIZE + (3,)
  assert abs(int(image[0, 0, 0]) - 40000 // 257) <= 1


# ---------------------------------------------------------------------------------------------
# Panoptic PNGs that are not 8-bit RGB.


def test_16bit_panoptic_png_is_an_error(tmp_path):
  f, config = make(tmp_path)
  path = png_path(f)
  rgb = np.asarray(Image.open(path)).astype(np.uint16) * 257
  path.write_bytes(tf.io.encode_png(tf.constant(rgb)).numpy())
  assert_reported(run_check(config), 'panoptic_png', '16-bit')
  message = train_error(config)
  assert str(path) in message and '8-bit RGB' in message


def test_grayscale_panoptic_png_is_an_error(tmp_path):
  f, config = make(tmp_path)
  path = png_path(f)
  Image.fromarray(np.asarray(Image.open(path))[..., 0]).save(path)
  assert_reported(run_check(config), 'panoptic_png', 'grayscale')
  message = train_error(config)
  assert str(path) in message and 'grayscale' in message and 'id2rgb' in message


def test_image_and_png_of_different_sizes(tmp_path):
  f, config = make(tmp_path)
  path = png_path(f)
  Image.fromarray(np.asarray(Image.open(path))[:-3]).save(path)
  assert_reported(run_check(config), 'size_mismatch', str(path))
  message = train_error(config)
  assert str(path) in message and str(image_path(f)) in message and 'size' in message


# ---------------------------------------------------------------------------------------------
# JSON and PNG disagree.


def test_png_id_missing_from_json_is_void_in_training(tmp_path):
  f, config = make(tmp_path)
  data_json = fx.read_json(f.json)
  rect = f.rects[f.image_ids[0]][0]
  data_json['annotations'][0]['segments_info'] = [
      s for s in data_json['annotations'][0]['segments_info'] if s['id'] != rect.segment_id]
  fx.write_json(f.json, data_json)
  assert_reported(run_check(config), 'id_not_in_json', str(rect.segment_id))
  label = load_example(config)['label'].numpy()
  y, x = (rect.y0 + rect.y1) // 2, (rect.x0 + rect.x1) // 2
  assert label[y, x].tolist() == [0, 0, 0]
  assert label[1, -1, 0] == fx.SKY


def test_json_id_missing_from_png_is_reported(tmp_path):
  f, config = make(tmp_path)
  data_json = fx.read_json(f.json)
  data_json['annotations'][1]['segments_info'].append(
      {'id': 4242, 'category_id': 3, 'iscrowd': 0, 'area': 10, 'bbox': [0, 0, 1, 1]})
  fx.write_json(f.json, data_json)
  report = run_check(config)
  assert_reported(report, 'id_not_in_png', '4242')
  assert 'drop them from segments_info' in ' '.join(report['errors'])
  assert load_example(config, 1)['label'].numpy()[..., 1].max() <= 4


def test_unknown_category_fails_with_the_valid_ids(tmp_path):
  f, config = make(tmp_path)
  data_json = fx.read_json(f.json)
  data_json['annotations'][0]['segments_info'][0]['category_id'] = 999
  fx.write_json(f.json, data_json)
  assert_reported(run_check(config), 'unknown_category', 'category_id 999')
  with pytest.raises(folder.DataError) as e:
    data.get_source(config.dataset).num_examples('train')
  assert str(f.json) in str(e.value) and 'valid: 1, 3, 7, 23' in str(e.value)


def test_empty_image_trains_as_void(tmp_path):
  f, config = make(tmp_path)
  data_json = fx.read_json(f.json)
  data_json['annotations'][0]['segments_info'] = []
  fx.write_json(f.json, data_json)
  Image.fromarray(np.zeros(SIZE + (3,), np.uint8)).save(png_path(f))
  assert_reported(run_check(config), 'empty_image', str(f.image_ids[0]), error=False)
  label = load_example(config)['label'].numpy()
  assert label.shape == SIZE + (3,) and not label.any()


def test_categories_must_match_num_classes(tmp_path):
  f, config = make(tmp_path)
  with config.unlocked():
    config.dataset.num_classes = 134
  report = run_check(config)
  assert_reported(report, 'config', '--config.dataset.num_classes=5')
  with pytest.raises(ValueError, match=r'set --config.dataset.num_classes=5'):
    data.get_source(config.dataset).categories  # pylint: disable=expression-not-assigned


def test_not_json_is_an_error_naming_the_file(tmp_path):
  f, config = make(tmp_path)
  f.json.write_text('{"images": [')
  assert_reported(run_check(config), 'json', 'not valid JSON')
  with pytest.raises(coco_format.PanopticFormatError, match='not valid JSON'):
    data.get_source(config.dataset).num_examples('train')


# ---------------------------------------------------------------------------------------------
# Empty and oversized image files (tests/test_predict_files.py: the same files for --mode=predict).


def test_empty_image_file_is_named_by_the_check_and_by_training(tmp_path):
  f, config = make(tmp_path)
  path = image_path(f)
  path.write_bytes(b'')
  assert_reported(run_check(config), 'unreadable', f'{path}: the image file is empty')
  message = train_error(config)
  assert str(path) in message and 'is empty' in message


def test_oversized_image_is_named_by_the_check(tmp_path):
  """An image past PIL's decompression-bomb limit (its header says 20000 x 20000): the check
  reports the file and its size instead of crashing."""
  f, config = make(tmp_path)
  path = image_path(f)
  png = path.with_suffix('.png')
  fx.write_png_header_only(png, 20000, 20000)
  if png != path:
    path.unlink()
    json_data = fx.read_json(f.json)
    for im in json_data['images']:
      if im['file_name'] == path.name:
        im['file_name'] = png.name
    fx.write_json(f.json, json_data)
  assert_reported(run_check(config), 'too_large', f'{png}: Image size (400000000 pixels)')
