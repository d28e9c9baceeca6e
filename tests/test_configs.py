"""Every config file and variant loads, and every key it sets is read by the package.

"Read" is decided exactly, by full key path, from the package's source (pix2seq_d_jax/**/*.py)
with `ast`: a key `a.b.leaf` is read when some expression of the package reads `leaf` from
something that stands for the config section `a.b` (`_Reader` says what does). A name or a
string that merely equals a key counts for nothing, so a typo (`train.num_epoch`), a dead key
(`dataset.unused_thing`) or a made-up key whose leaf is a common word (`diffusion.steps`,
`dataset.shape`, `eval.name`, `train.seed`) fails; the last tests show it.
"""

import ast
import pathlib

import pytest

from pix2seq_d_jax import config_lib
from pix2seq_d_jax.config_reads import _Reader, unread_keys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / 'configs'


# ---------------------------------------------------------------------------------------------
# Variants of a config file, from its source.


def config_files() -> list[pathlib.Path]:
  return sorted(p for p in CONFIG_DIR.glob('*.py') if p.name not in ('common.py', '__init__.py'))


def variants(path: pathlib.Path) -> list[str]:
  """'' plus one argument per flag of `parse_arg(arg, ...)` and per value a string arg is
  compared with (`args.stage == 'low'`), e.g. ['', 'runlocal', 'stage=low', 'stage=high']."""
  tree = ast.parse(path.read_text())
  defaults = {}
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == 'parse_arg'):
      for kw in node.keywords:
        defaults[kw.arg] = ast.literal_eval(kw.value)
  values = {k: {v} for k, v in defaults.items() if isinstance(v, str)}
  for node in ast.walk(tree):
    if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute):
      name = node.left.attr
      if name in values:
        for comp in node.comparators:
          if isinstance(comp, ast.Constant) and isinstance(comp.value, str):
            values[name].add(comp.value)
  out = ['']
  out += [k for k, v in defaults.items() if isinstance(v, bool)]
  out += [f'{k}={v}' for k in values for v in sorted(values[k])]
  return out


ALL_SPECS = [f'{p.relative_to(ROOT)}' + (f':{v}' if v else '')
             for p in config_files() for v in variants(p)]


# ---------------------------------------------------------------------------------------------
# Tests.


def test_every_config_file_has_variants_and_a_documented_command():
  names = {p.name for p in config_files()}
  assert {'shapes.py', 'coco_panoptic.py', 'cityscapes_panoptic.py', 'davis_video.py'} <= names
  for path in config_files():
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and 'python -m pix2seq_d_jax.' in doc, f'{path.name}: document the command'
    assert 'runlocal' in variants(path), f'{path.name}: no :runlocal variant'
  assert 'stage=low' in variants(CONFIG_DIR / 'coco_panoptic.py')
  assert 'stage=high' in variants(CONFIG_DIR / 'coco_panoptic.py')


@pytest.mark.parametrize('spec', ALL_SPECS)
def test_config_loads_and_every_key_is_read(spec):
  config = config_lib.load_config(str(ROOT / spec))
  assert config.dataset.name and config.train.batch_size > 0
  unread = unread_keys(config)
  assert not unread, f'{spec}: nothing in pix2seq_d_jax reads {unread}; remove or fix them'


def test_paper_settings_of_the_real_data_configs():
  low = config_lib.load_config(str(CONFIG_DIR / 'coco_panoptic.py') + ':stage=low')
  assert (low.dataset.min_scale, low.dataset.max_scale, low.dataset.color_jitter) == (1, 3, 1)
  assert (low.train.batch_size, low.train.num_epochs, low.train.learning_rate) == (512, 800, 1e-4)
  assert low.dataset.max_original_size == (640, 640) and low.dataset.num_classes == 134
  high = config_lib.load_config(str(CONFIG_DIR / 'coco_panoptic.py') + ':stage=high')
  assert (high.dataset.max_scale, high.dataset.color_jitter, high.train.batch_size) == (1, 0, 16)
  city = config_lib.load_config(str(CONFIG_DIR / 'cityscapes_panoptic.py'))
  assert city.dataset.name == 'coco_panoptic_folder' and city.dataset.num_classes == 20
  assert city.model.image_size == (1024, 2048) and city.model.mask_size == (512, 1024)
  assert city.dataset.max_original_size == (1024, 2048)
  vid = config_lib.load_config(str(CONFIG_DIR / 'davis_video.py'))
  assert (vid.model.image_size, vid.model.mask_size) == ((512, 1024), (256, 512))
  assert (vid.dataset.max_instances, vid.dataset.num_frames, vid.model.num_cond_frames) == (
      16, 3, 2)
  assert (vid.dataset.frames_dropout, vid.train.ema_decay, vid.train.learning_rate) == (
      0.2, 0.99, 1e-5)
  assert (vid.train.end_lr_factor, vid.train.batch_size, vid.train.num_steps) == (1.0, 32, 50_000)
  assert vid.dataset.object_order == 'shuffle'
  # The shapes configs' departures (raster ids, a split CPU) stay out of the paper configs.
  assert low.dataset.object_order == 'random' and city.dataset.object_order == 'shuffle'
  assert low.cpu_devices == high.cpu_devices == city.cpu_devices == vid.cpu_devices == 0
  for paper in (low, high, city, vid):                 # and so do the loss settings of shapes.py
    assert (paper.diffusion.mask_weight_p, paper.diffusion.class_loss_weight) == (0.2, 1.0)


def test_shapes_size_scales_the_data_and_the_model_and_rejects_odd_sides():
  default = config_lib.load_config(str(CONFIG_DIR / 'shapes.py'))
  small = config_lib.load_config(str(CONFIG_DIR / 'shapes.py') + ':size=32')
  assert (small.model.image_size, small.model.mask_size) == ((32, 32), (8, 8))
  assert (small.dataset.synthetic_size, small.dataset.max_original_size) == (32, (32, 32))
  assert (default.model.image_size, default.model.mask_size) == ((64, 64), (16, 16))
  assert default.dataset.synthetic_size == 64
  # Masks a quarter of the image side by default, half (the paper's) with :long or :mask_stride=2.
  for arg, mask in (('long', (32, 32)), ('mask_stride=2', (32, 32)),
                    ('long,mask_stride=4', (16, 16)), ('size=32,mask_stride=2', (16, 16)),
                    ('mask_stride=1', (64, 64))):
    assert config_lib.load_config(str(CONFIG_DIR / 'shapes.py') + ':' + arg).model.mask_size == mask
  for bad in (3, 32):
    with pytest.raises(ValueError, match=f'mask_stride={bad}: .*1, 2, 4, 8 or 16'):
      config_lib.load_config(str(CONFIG_DIR / 'shapes.py') + f':mask_stride={bad}')
  # Nothing else changes.
  for key in ('model', 'dataset'):
    a, b = dict(default[key]), dict(small[key])
    assert {k for k in a if a[k] != b[k]} <= {'image_size', 'mask_size', 'synthetic_size',
                                              'max_original_size'}
  assert default.train.to_dict() == small.train.to_dict()
  assert unread_keys(small) == []
  for bad in (40, 16):
    with pytest.raises(ValueError, match=f'size={bad}: .*multiple of 16'):
      config_lib.load_config(str(CONFIG_DIR / 'shapes.py') + f':size={bad}')


@pytest.mark.parametrize('section, key', [
    ('train', 'num_epoch'), ('dataset', 'unused_thing'), ('diffusion', 'train_json'),
    # Leaves that are real keys of another section, or common words in the code.
    ('diffusion', 'steps'), ('dataset', 'shape'), ('eval', 'name'), ('train', 'seed'),
    ('model', 'batch_size'), ('model.encoder', 'dtype'), ('eval', 'config')])
def test_a_typo_or_a_dead_key_is_caught(section, key):
  spec = 'configs/coco_panoptic.py:stage=low'
  assert unread_keys(config_lib.load_config(str(ROOT / spec))) == []
  config = config_lib.load_config(str(ROOT / spec))
  node = config
  for part in section.split('.'):
    node = node[part]
  with node.unlocked():
    node[key] = 1
  assert unread_keys(config) == [f'{section}.{key}']


def _reads_of(source: str) -> set:
  reader = _Reader()
  reader.visit(ast.parse(source))
  return {'.'.join(p) for p in reader.qualified}


def test_the_reader_counts_reads_through_config_paths_only():
  reads = _reads_of('''
def f(config, x, dataset_config):
  d, m = config.dataset, config.model
  steps = x.steps + len('steps')            # a coincidental name or string: no read
  e = m.encoder
  v = d.min_scale + e.dim + dataset_config.flip_prob + config.get('seed', 0)
  d = x                                     # rebound: d no longer stands for config.dataset
  w = d.max_scale + getattr(config.train, 'batch_size') + config['eval']['steps']
  for m in x:
    m.width                                 # a loop variable shadows the alias
  return [e.shape for e in x]               # so does a comprehension variable

class C:
  def __init__(self, dataset_config):
    self.cfg = dataset_config

  def g(self):
    return self.cfg.name
''')
  assert reads - {'dataset', 'model', 'model.encoder', 'train', 'eval'} == {
      'dataset.min_scale', 'model.encoder.dim', 'dataset.flip_prob', 'seed', 'train.batch_size',
      'eval.steps', 'dataset.name'}


def test_load_config_rejects_a_key_nothing_reads(tmp_path):
  """A user's config file with a typo fails at load, naming the file, the key and the fix."""
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'common.py').write_text((CONFIG_DIR / 'common.py').read_text())
  mine = tmp_path / 'configs' / 'mine.py'
  mine.write_text('''
from configs import common


def get_config(arg=None):
  c = common.base_config()
  c.train.num_epoch = 5
  c.diffusion.steps = 10
  return c
''')
  with pytest.raises(ValueError) as err:
    config_lib.load_config(str(mine))
  text = str(err.value)
  assert str(mine) in text
  assert 'train.num_epoch (did you mean train.num_epochs?)' in text
  assert 'diffusion.steps' in text and 'Rename them' in text
  # Without the two keys the same file loads.
  mine.write_text(mine.read_text().replace('  c.train.num_epoch = 5\n', '').replace(
      '  c.diffusion.steps = 10\n', ''))
  assert config_lib.load_config(str(mine)).train.num_epochs > 0
