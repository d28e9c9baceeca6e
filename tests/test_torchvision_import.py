"""ImageNet ResNet-50 import (torchvision / timm names, safetensors) into our C4 backbone.

tests/data/torchvision_resnet50/ holds torchvision's `resnet50` state-dict names and shapes and
its eval-mode stage-2 / stage-3 (`layer2`, `layer3`) features for fixed images, computed by
tools/make_torchvision_fixture.py on random weights that the same tool's `random_weights`
redraws here. Our backbone on the imported file must match within 1e-4 relative error, with
torchvision's max-pool padding (`ResNetC4(stem_pool='torch')`).
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
from safetensors.numpy import save_file

from pix2seq_d_jax import config_lib
from pix2seq_d_jax.convert import tf_pix2seq
from pix2seq_d_jax.convert import torchvision_resnet
from pix2seq_d_jax.models.resnet import ResNetC4

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / 'tests' / 'data' / 'torchvision_resnet50'


def _tool():
  spec = importlib.util.spec_from_file_location(
      'make_torchvision_fixture', ROOT / 'tools' / 'make_torchvision_fixture.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def weights_file(tmp_path_factory):
  meta = json.loads((DATA / 'state_dict.json').read_text())
  tool = _tool()
  path = tmp_path_factory.mktemp('tv') / 'resnet50.safetensors'
  save_file(tool.random_weights(meta['state_dict'], meta['seed']), str(path))
  return path, tool.images()


def _config(*extra):
  return config_lib.load_config(str(ROOT / 'configs' / 'coco_panoptic.py'),
                                ['model.image_size=(64, 96)', 'model.mask_size=(16, 24)',
                                 *extra])


def test_torchvision_stage3_features(weights_file, capsys):
  path, images = weights_file
  v = torchvision_resnet.load_backbone(str(path), _config(), fold_normalization=False)
  report = capsys.readouterr().out
  assert 'stage 4 (C5)' in report and 'ImageNet classifier' in report, report
  feats = np.load(DATA / 'features.npz')
  c2, c3, c4 = ResNetC4(stem_pool='torch').apply(
      {'params': v['params']['backbone'], 'batch_stats': v['batch_stats']['backbone']}, images,
      False)
  for what, ours in (('c3', c3), ('c4', c4)):
    theirs = feats[what]
    err = float(np.max(np.abs(np.asarray(ours) - theirs)) / np.max(np.abs(theirs)))
    print(f'torchvision {what}: max relative error {err:.2e}')
    assert err < 1e-4, (what, err)


def test_folded_normalisation_matches_normalised_inputs(weights_file):
  path, images = weights_file
  config = _config()
  raw = torchvision_resnet.load_backbone(str(path), config, fold_normalization=False,
                                         verbose=False)
  folded = torchvision_resnet.load_backbone(str(path), config, verbose=False)
  norm = (images - torchvision_resnet.IMAGENET_MEAN) / torchvision_resnet.IMAGENET_STD
  net = ResNetC4(depths=(1, 1, 1), stem_pool='torch')
  sub = lambda v: {'params': {k: v['params']['backbone'][k] for k in v['params']['backbone']
                              if not k.startswith('stage') or k.endswith('block1')},
                   'batch_stats': {k: v['batch_stats']['backbone'][k]
                                   for k in v['batch_stats']['backbone']
                                   if not k.startswith('stage') or k.endswith('block1')}}
  a = np.asarray(net.apply(sub(raw), norm, False)[0])
  b = np.asarray(net.apply(sub(folded), images, False)[0])
  inner = (slice(None), slice(3, -3), slice(3, -3))   # outside the border pixels the padding reaches
  np.testing.assert_allclose(b[inner], a[inner], rtol=1e-4, atol=1e-4 * np.abs(a).max())


def test_wrong_width_names_both_sides(weights_file):
  path, _ = weights_file
  with pytest.raises(tf_pix2seq.CheckpointError, match=r'bn1\.bias.*backbone/stem_bn/bias'):
    torchvision_resnet.load_backbone(str(path), _config('model.backbone.width=32'))


def test_name_table():
  assert torchvision_resnet.map_name('layer3.5.bn3.running_var') == (
      'mapped', 'batch_stats', 'stage3_block6/BatchNorm_2/var')
  assert torchvision_resnet.map_name('layer1.0.downsample.0.weight') == (
      'mapped', 'params', 'stage1_block1/proj_conv/kernel')
  assert torchvision_resnet.map_name('fc.weight')[0] == 'unused'
  assert torchvision_resnet.map_name('head.weight') is None
