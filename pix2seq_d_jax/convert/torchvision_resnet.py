"""ImageNet ResNet-50 weights in safetensors format (torchvision / timm names) -> our backbone.

torchvision's and timm's `resnet50` are ResNet v1.5 (the stride of a stage's first block on its
3x3 conv, as ours) with the same state-dict names: `conv1`, `bn1`, `layer{1..4}.{block}.conv{1..3}`
/ `bn{1..3}` / `downsample.{0,1}`, `fc`. Stages 1-3 fill our C4 backbone; `layer4` (C5) and `fc`
(the classifier) are not used. Conv kernels are transposed from [out, in, kh, kw] to
[kh, kw, in, out]; BatchNorm running statistics go to `batch_stats`.

Their max-pool after the stem pads one pixel on every side; the reference's pads at the bottom and
right only (`model.backbone.stem_pool`: 'same', the paper, or 'torch' for torchvision's exact
features, tests/test_torchvision_import.py).

Read with `safetensors.numpy`: no torch at run time.
"""

import re

import numpy as np

from pix2seq_d_jax.convert import tf_pix2seq

# Their name pattern -> our path below `backbone/` ({n}: n-th group, {n+k} / {n-k}: +- k).
RULES = [
    (r'conv1\.weight', 'stem_conv/kernel'),
    (r'bn1\.(weight|bias|running_mean|running_var)', 'stem_bn/{1}'),
    (r'layer([1-3])\.(\d+)\.conv([1-3])\.weight', 'stage{1}_block{2+1}/Conv_{3-1}/kernel'),
    (r'layer([1-3])\.(\d+)\.bn([1-3])\.(weight|bias|running_mean|running_var)',
     'stage{1}_block{2+1}/BatchNorm_{3-1}/{4}'),
    (r'layer([1-3])\.(\d+)\.downsample\.0\.weight', 'stage{1}_block{2+1}/proj_conv/kernel'),
    (r'layer([1-3])\.(\d+)\.downsample\.1\.(weight|bias|running_mean|running_var)',
     'stage{1}_block{2+1}/proj_bn/{3}'),
]
UNUSED = [
    (r'layer4\..*', 'stage 4 (C5): not part of the C4 backbone'),
    (r'fc\..*', 'ImageNet classifier'),
    (r'.*num_batches_tracked', 'BatchNorm step counters'),
]
# Their BatchNorm names -> (our collection, our name).
LEAVES = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
          'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var'),
          'kernel': ('params', 'kernel')}


def _expand(template, groups):
  def sub(m):
    value = int(groups[int(m.group(1)) - 1]) if m.group(2) else groups[int(m.group(1)) - 1]
    if m.group(2):
      value += int(m.group(3)) * (1 if m.group(2) == '+' else -1)
    return str(value)
  return re.sub(r'\{(\d+)(?:([+-])(\d+))?\}', sub, template)


def map_name(name: str):
  """('unused', reason) | ('mapped', collection, our path below backbone/) | None."""
  for pattern, reason in UNUSED:
    if re.fullmatch(pattern, name):
      return ('unused', reason)
  for pattern, template in RULES:
    m = re.fullmatch(pattern, name)
    if m:
      module, leaf = _expand(template, m.groups()).rsplit('/', 1)
      collection, ours = LEAVES[leaf]
      return ('mapped', collection, f'{module}/{ours}')
  return None


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def fold_input_normalization(flat: dict) -> None:
  """Folds torchvision's input normalisation ((x - mean) / std) into the stem, in place.

  Our model feeds images in [0, 1]; the stem kernel is divided by std per input channel and the
  stem BatchNorm's running mean absorbs the constant -sum(kernel * mean / std). Exact except
  within 3 pixels of the image border (the conv's zero padding is in different units).
  """
  key = ('params', 'backbone/stem_conv/kernel')
  kernel = flat[key] / IMAGENET_STD[None, None, :, None]
  flat[key] = kernel
  shift = -np.einsum('hwio,i->o', kernel, IMAGENET_MEAN)
  flat[('batch_stats', 'backbone/stem_bn/mean')] = flat[('batch_stats',
                                                         'backbone/stem_bn/mean')] - shift


def load_backbone(path: str, config, verbose: bool = True, fold_normalization: bool = True):
  """A torchvision / timm ResNet-50 safetensors file -> {'params': {'backbone'},
  'batch_stats': {'backbone'}} (numpy float32) for `pix2seq_d.build_model(config)`.

  fold_normalization: fold ImageNet's input normalisation into the stem
  (`fold_input_normalization`), so that [0, 1] images see what torchvision's normalised inputs
  see; False keeps the weights as they are (then the backbone expects normalised images).
  """
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    tensors = load_file(path)
  except (OSError, FileNotFoundError) as err:
    raise FileNotFoundError(f'torchvision:{path}: cannot read it as safetensors ({err}); pass a '
                            "ResNet-50 .safetensors file (e.g. timm's "
                            'resnet50.tv_in1k/model.safetensors).') from err
  ours = {k: v for k, v in tf_pix2seq.abstract_variables(config).items()
          if k[1].startswith('backbone/')}
  filled, unused, unknown = {}, {}, []
  for name in sorted(tensors):
    target = map_name(name)
    if target is None:
      unknown.append(name)
      continue
    if target[0] == 'unused':
      unused[target[1]] = unused.get(target[1], 0) + 1
      continue
    key = (target[1], f'backbone/{target[2]}')
    value = np.asarray(tensors[name], np.float32)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)      # [out, in, kh, kw] -> [kh, kw, in, out]
    if key not in ours:
      raise tf_pix2seq.CheckpointError(
          f'{path}: {name} maps to our {key[0]}/{key[1]}, which the backbone of this config '
          f'(model.backbone.depths={tuple(config.model.backbone.depths)}) does not have: '
          'ResNet-50 is depths (3, 4, 6).')
    if value.shape != ours[key]:
      raise tf_pix2seq.CheckpointError(
          f'{path}: {name} has shape {list(value.shape)} (after [kh, kw, in, out] transposition) '
          f'but our {key[0]}/{key[1]} has {list(ours[key])}: set model.backbone.width=64 for '
          'ResNet-50.')
    filled[key] = value
  if unknown:
    raise tf_pix2seq.CheckpointError(
        f'{path}: {len(unknown)} tensors are not ResNet names of torchvision / timm, e.g. '
        f'{unknown[:8]}; pass a ResNet-50 state dict saved as safetensors.')
  missing = sorted(f'{c}/{p}' for c, p in ours if (c, p) not in filled)
  if missing:
    raise tf_pix2seq.CheckpointError(
        f'{path}: {len(missing)} backbone variables are filled by nothing, e.g. {missing[:8]}; '
        'the file holds fewer blocks than model.backbone.depths.')
  if fold_normalization:
    fold_input_normalization(filled)
  if verbose:
    n_stats = sum(1 for c, _ in filled if c == 'batch_stats')
    print(f'{path}: filled backbone: {len(filled) - n_stats} parameter arrays, {n_stats} '
          'BatchNorm statistics; not used: ' + ', '.join(f'{n} {r}' for r, n in unused.items()))
  return tf_pix2seq.nest(filled)
