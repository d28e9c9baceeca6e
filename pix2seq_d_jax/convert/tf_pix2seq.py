"""Reader of the authors' TensorFlow checkpoints (google-research/pix2seq) for our model.

Their trainer writes object-based TF2 checkpoints (`tf.train.Checkpoint(model=..., optimizer=...,
global_step=...)`), in which a variable's name is its attribute path, e.g.
`model/encoder_ema/resnet/block_groups/0/layers/1/conv_relu_dropblock_layers/3/conv2d/kernel/
.ATTRIBUTES/VARIABLE_VALUE`. Two kinds are read:

- a Pix2Seq-D checkpoint (their `panoptic_diffusion` model, images or video): `model/encoder`
  (ResNet-C4 + transformer), `model/encoder_fuse` (feature-pyramid merge), `model/denoiser`
  (TransUNet) and their EMA copies `model/*_ema`, BatchNorm statistics included -> every
  variable of `pix2seq_d.build_model(config)` (`load`);
- a Pix2Seq detection checkpoint (e.g. Objects365 `resnetc_640x640_b256_s400k`): `model/encoder`
  only -> our `backbone` and `encoder` (`load_encoder`); the detection heads are not used.

The mapping is the table `RULES` (module path patterns, theirs -> ours) with `LEAVES` (variable
names); what is deliberately not read is the table `UNUSED`. A checkpoint variable that neither
table names, a shape that differs from ours, or a variable of ours that the checkpoint does not
fill is an error naming both sides. Keras and Flax store kernels alike ([kh, kw, in, out] convs,
[in, out] denses, [d, heads, head_dim] attention projections), so no value is transposed.

TensorFlow is imported only when a checkpoint is read.
"""

import pathlib
import re

import jax
import numpy as np

from pix2seq_d_jax.models import pix2seq_d

SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'

# Their module path (below `model/`, the `_ema` of the top part removed) -> ours (below the
# collection). `{n}` is the n-th group of the pattern, `{n+k}` that number plus k.
_BLOCK = r'encoder/resnet/block_groups/(\d+)/layers/(\d+)'
_OURS_BLOCK = 'backbone/stage{1+1}_block{2+1}'
_ENC = r'encoder/transformer_encoder/enc_layers/(\d+)'
_DEC = r'denoiser/transformer/transformer_decoder/dec_layers/(\d+)'
_RES = r'denoiser/(dn|up)_units/(\d+)/resnet_blocks/(\d+)'
RULES = [
    # ResNet-C4 (architectures/resnet.py of theirs: stem, then block groups of bottlenecks).
    (r'encoder/resnet/initial_conv_relu_max_pool/0/conv2d', 'backbone/stem_conv'),
    (r'encoder/resnet/initial_conv_relu_max_pool/2/bn', 'backbone/stem_bn'),
    (_BLOCK + r'/projection_layers/0/conv2d', _OURS_BLOCK + '/proj_conv'),
    (_BLOCK + r'/projection_layers/1/bn', _OURS_BLOCK + '/proj_bn'),
    (_BLOCK + r'/conv_relu_dropblock_layers/0/conv2d', _OURS_BLOCK + '/Conv_0'),
    (_BLOCK + r'/conv_relu_dropblock_layers/1/bn', _OURS_BLOCK + '/BatchNorm_0'),
    (_BLOCK + r'/conv_relu_dropblock_layers/3/conv2d', _OURS_BLOCK + '/Conv_1'),
    (_BLOCK + r'/conv_relu_dropblock_layers/4/bn', _OURS_BLOCK + '/BatchNorm_1'),
    (_BLOCK + r'/conv_relu_dropblock_layers/6/conv2d', _OURS_BLOCK + '/Conv_2'),
    (_BLOCK + r'/conv_relu_dropblock_layers/7/bn', _OURS_BLOCK + '/BatchNorm_2'),
    # Transformer encoder on C4.
    (r'encoder/stem_projection', 'encoder/stem'),
    (r'encoder/stem_ln', 'encoder/stem_ln'),
    (_ENC + r'/mha_ln', 'encoder/layer{1}/ln_attn'),
    (_ENC + r'/mha/_(query|key|value)_dense', 'encoder/layer{1}/attn/{2}'),
    (_ENC + r'/mha/_output_dense', 'encoder/layer{1}/attn/out'),
    (_ENC + r'/mlp/layernorms/0', 'encoder/layer{1}/ln_mlp'),
    (_ENC + r'/mlp/mlp_layers/0/dense1', 'encoder/layer{1}/mlp/Dense_0'),
    (_ENC + r'/mlp/mlp_layers/0/dense2', 'encoder/layer{1}/mlp/Dense_1'),
    (r'encoder/output_ln', 'encoder/final_ln'),
    # Feature-pyramid merge of [C2, C3, tokens]: their block i merges input i-1 into the result
    # so far (2 first), block 0 upsamples to the mask size.
    (r'encoder_fuse/upsample_blocks/2/(conv1|conv2|gn1|gn2)', 'fpn/merge0/{1}'),
    (r'encoder_fuse/upsample_blocks/1/(conv1|conv2|gn1|gn2)', 'fpn/merge1/{1}'),
    (r'encoder_fuse/upsample_blocks/0/(conv1|conv2|gn1|gn2)', 'fpn/to_mask/{1}'),
    # TransUNet denoiser.
    (r'denoiser/time_emb/dense_(0|1)', 'decoder/noise_embedding/Dense_{1}'),
    (r'denoiser/conv_in', 'decoder/conv_in'),
    (r'denoiser/group_norm_in', 'decoder/norm_in'),
    (_RES + r'/conv_(0|1)', 'decoder/{1}{2}_block{3}/conv{4}'),
    (_RES + r'/group_norm_(0|1)', 'decoder/{1}{2}_block{3}/norm{4}'),
    (_RES + r'/emb_proj', 'decoder/{1}{2}_block{3}/film'),
    (_RES + r'/shortcut_layer', 'decoder/{1}{2}_block{3}/skip'),
    (r'denoiser/dn_units/(\d+)/conv_dn', 'decoder/down{1}_downsample'),
    (r'denoiser/up_units/(\d+)/conv_up', 'decoder/up{1}_upsample'),
    (r'denoiser/transformer/trans_conv_in_norm', 'decoder/middle/norm_in'),
    (r'denoiser/transformer/trans_conv_in', 'decoder/middle/proj_in'),
    (r'denoiser/transformer/emb_proj', 'decoder/middle/time_token'),
    (r'denoiser/transformer/trans_conv_out_norm', 'decoder/middle/norm_out'),
    (r'denoiser/transformer/trans_conv_out', 'decoder/middle/proj_out'),
    (_DEC + r'/(self|cross)_ln', 'decoder/middle/layer{1}/ln_{2}'),
    (_DEC + r'/(self|cross)_mha/_(query|key|value)_dense', 'decoder/middle/layer{1}/{2}_attn/{3}'),
    (_DEC + r'/(self|cross)_mha/_output_dense', 'decoder/middle/layer{1}/{2}_attn/out'),
    (_DEC + r'/mlp/layernorms/0', 'decoder/middle/layer{1}/ln_mlp'),
    (_DEC + r'/mlp/mlp_layers/0/dense1', 'decoder/middle/layer{1}/mlp/Dense_0'),
    (_DEC + r'/mlp/mlp_layers/0/dense2', 'decoder/middle/layer{1}/mlp/Dense_1'),
    (r'denoiser/group_norm_out', 'decoder/norm_out'),
    (r'denoiser/conv_out', 'decoder/head'),
]
# Our names of parts of our modules that their names spell differently.
_OUR_NAMES = {'dn': 'down', 'conv1': 'Conv_0', 'conv2': 'Conv_1', 'gn1': 'GroupNorm_0',
              'gn2': 'GroupNorm_1'}

# Their variable name -> (our collection, our variable name).
LEAVES = {
    'kernel': ('params', 'kernel'), 'bias': ('params', 'bias'),
    'gamma': ('params', 'scale'), 'beta': ('params', 'bias'),
    'moving_mean': ('batch_stats', 'mean'), 'moving_variance': ('batch_stats', 'var'),
}

# Checkpoint entries that are read by nothing, with the reason.
UNUSED = [
    (r'_CHECKPOINTABLE_OBJECT_GRAPH', 'checkpoint object graph'),
    (r'(global_step|save_counter)(/.*)?', 'step counters'),
    (r'optimizer/.*', 'optimizer state'),
    (r'.*/\.OPTIMIZER_SLOT/.*', 'optimizer slots'),
    (r'model/(proj|proj_ln|proj_mlp|decoder)/.*', 'Pix2Seq detection heads'),
]

# Their top-level parts of `model/` and our modules they fill.
PARTS = {'encoder': ('backbone', 'encoder'), 'encoder_fuse': ('fpn',), 'denoiser': ('decoder',)}


class CheckpointError(ValueError):
  """A checkpoint that does not fit the config's model, or is not one of theirs."""


def _expand(template: str, groups) -> str:
  def sub(m):
    value = groups[int(m.group(1)) - 1]
    value = str(int(value) + int(m.group(2))) if m.group(2) else value
    return _OUR_NAMES.get(value, value)
  return re.sub(r'\{(\d+)(?:\+(\d+))?\}', sub, template)


def map_name(name: str):
  """One checkpoint entry -> ('unused', reason) | ('mapped', ema, collection, our path) | None."""
  for pattern, reason in UNUSED:
    if re.fullmatch(pattern, name):
      return ('unused', reason)
  base = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
  if not base.startswith('model/') or base.count('/') < 3:
    return None
  part, rest = base[len('model/'):].split('/', 1)
  ema = part.endswith('_ema')
  module, leaf = rest.rsplit('/', 1)
  module = f'{part[:-4] if ema else part}/{module}'
  if leaf not in LEAVES:
    return None
  for pattern, template in RULES:
    m = re.fullmatch(pattern, module)
    if m:
      collection, our_leaf = LEAVES[leaf]
      return ('mapped', ema, collection, f'{_expand(template, m.groups())}/{our_leaf}')
  return None


def is_tf_checkpoint(path: str) -> bool:
  """Whether `path` looks like a TF checkpoint (a prefix with `.index`, or a folder of them)."""
  p = pathlib.Path(path)
  if str(path).startswith('gs://'):
    return True
  if p.is_dir():
    return (p / 'checkpoint').is_file() or any(p.glob('*.index'))
  return p.with_name(p.name + '.index').is_file() or (p.suffix == '.index' and p.is_file())


def resolve(path: str) -> str:
  """A checkpoint folder (its newest checkpoint), prefix or `.index` file -> the prefix."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = str(path)
  if path.endswith('.index'):
    path = path[:-len('.index')]
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      indexes = sorted(tf.io.gfile.glob(path.rstrip('/') + '/*.index'))
      if len(indexes) != 1:
        raise FileNotFoundError(
            f'{path}: a folder without a `checkpoint` file and with {len(indexes)} *.index '
            'files; pass one checkpoint prefix, e.g. DIR/ckpt-400000.')
      latest = indexes[0][:-len('.index')]
    return latest
  if not tf.io.gfile.exists(path + '.index'):
    raise FileNotFoundError(f'{path}: no TF checkpoint there (neither {path}.index nor a folder '
                            'with a `checkpoint` file). Pass the folder the authors publish '
                            '(e.g. a local copy of gs://pix2seq/obj365_pretrain/'
                            'resnetc_640x640_b256_s400k) or a prefix like DIR/ckpt-400000.')
  return path


class Checkpoint:
  """The entries of a TF checkpoint and their mapping to our variables."""

  def __init__(self, path: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.prefix = resolve(path)
    self.reader = tf.train.load_checkpoint(self.prefix)
    self.shapes = self.reader.get_variable_to_shape_map()
    self.mapped, self.unused, self.unknown = {}, {}, []
    for name in sorted(self.shapes):
      target = map_name(name)
      if target is None:
        self.unknown.append(name)
      elif target[0] == 'unused':
        self.unused[name] = target[1]
      else:
        self.mapped[name] = target[1:]
    if self.unknown:
      shown = '\n  '.join(self.unknown[:12])
      raise CheckpointError(
          f'{self.prefix}: {len(self.unknown)} checkpoint variables match no rule of '
          f'pix2seq_d_jax/convert/tf_pix2seq.py (RULES / UNUSED), e.g.\n  {shown}\nOnly the '
          "authors' ResNet-C4 ('resnet-c') encoder with sin-cos position codes and no class "
          'token, their feature-pyramid merge and TransUNet denoiser have a counterpart here; a '
          'ViT or ResNet-C5 encoder checkpoint does not fit this model.')
    self.parts = sorted({name[len('model/'):].split('/', 1)[0] for name in self.mapped})

  @property
  def is_full_model(self) -> bool:
    return 'denoiser' in self.parts or 'denoiser_ema' in self.parts

  def has_ema(self) -> bool:
    return any(p.endswith('_ema') for p in self.parts)

  def arrays(self, ema: bool) -> dict:
    """{(collection, our path): float32 array} from the online (ema=False) or EMA variables."""
    out = {}
    for name, (is_ema, collection, path) in self.mapped.items():
      if is_ema == ema:
        key = (collection, path)
        if key in out:
          raise CheckpointError(f'{self.prefix}: two variables map to our {collection}/{path}; '
                                'the table in pix2seq_d_jax/convert/tf_pix2seq.py is ambiguous.')
        out[key] = (name, np.asarray(self.reader.get_tensor(name), np.float32))
    return out


def abstract_variables(config) -> dict:
  """{(collection, path): shape} of every variable of `pix2seq_d.build_model(config)`."""
  model = pix2seq_d.build_model(config)
  images, x_t, gamma, cond = pix2seq_d.init_inputs(config)
  shapes = jax.eval_shape(lambda: model.init({'params': jax.random.PRNGKey(0)}, images, x_t,
                                             gamma, train=False, cond=cond))
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    keys = [p.key for p in path]
    flat[(keys[0], '/'.join(keys[1:]))] = tuple(leaf.shape)
  return flat


def _fill(ckpt: Checkpoint, ours: dict, ema: bool, modules, config_name: str) -> dict:
  """Checks names and shapes; returns {(collection, path): array} for our `modules`."""
  got = ckpt.arrays(ema)
  filled = {}
  for key, (name, value) in got.items():
    if key[1].split('/')[0] not in modules:
      continue
    if key not in ours:
      raise CheckpointError(
          f'{ckpt.prefix}: checkpoint variable {name} {list(value.shape)} maps to our '
          f'{key[0]}/{key[1]}, which the model of {config_name} does not have: the config does '
          'not describe the checkpoint (compare backbone.depths, encoder.num_layers, '
          'decoder.ch_multipliers / num_res_blocks / transformer_layers, conditioning).')
    if tuple(value.shape) != ours[key]:
      raise CheckpointError(
          f'{ckpt.prefix}: checkpoint variable {name} has shape {list(value.shape)} but our '
          f'{key[0]}/{key[1]} has {list(ours[key])} in the model of {config_name}: set the '
          'config sizes (model.backbone.width, model.encoder.dim / mlp_dim / num_heads, '
          'model.fpn_dim, model.decoder.dim / transformer_dim, model.num_cond_frames) to the '
          "checkpoint's.")
    filled[key] = value
  missing = sorted(f'{c}/{p}' for (c, p) in ours if p.split('/')[0] in modules
                   and (c, p) not in filled)
  if missing:
    shown = '\n  '.join(missing[:12])
    raise CheckpointError(
        f'{ckpt.prefix} ({"EMA" if ema else "online"} weights): {len(missing)} variables of our '
        f'model ({config_name}) are filled by nothing in the checkpoint, e.g.\n  {shown}\n'
        'The config has more layers or blocks than the checkpoint (compare backbone.depths, '
        'encoder.num_layers, decoder.num_res_blocks, decoder.transformer_layers, conditioning).')
  return filled


def nest(flat: dict) -> dict:
  out = {'params': {}, 'batch_stats': {}}
  for (collection, path), value in flat.items():
    node = out[collection]
    *parents, leaf = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def _config_name(config) -> str:
  return f"config (model.image_size={tuple(config.model.image_size)})"


def load(checkpoint_path: str, config, ema: bool = True) -> dict:
  """A Pix2Seq-D checkpoint of theirs -> {'params', 'batch_stats'} for build_model(config).

  Args:
    checkpoint_path: a checkpoint folder (newest checkpoint), prefix (DIR/ckpt-N) or .index file.
    config: our config describing the same architecture.
    ema: the EMA weights (their evaluation default) or the online ones.

  Returns:
    numpy float32 trees ready for `model.apply(variables, images, train=False, method='encode')`.
  """
  ckpt = Checkpoint(checkpoint_path)
  if not ckpt.is_full_model:
    raise CheckpointError(
        f'{ckpt.prefix} holds no Pix2Seq-D denoiser (model/denoiser): a detection checkpoint '
        'fills only the backbone and the encoder. Use tf_pix2seq.load_encoder, or '
        f'--config.train.init_from={checkpoint_path} to fine-tune from it.')
  if ema and not ckpt.has_ema():
    raise CheckpointError(f'{ckpt.prefix} has no EMA copies (model/*_ema): load it with '
                          'ema=False (the online weights).')
  ours = abstract_variables(config)
  modules = {m for part in PARTS.values() for m in part}
  return nest(_fill(ckpt, ours, ema, modules, _config_name(config)))


def load_encoder(checkpoint_path: str, config, ema: bool | None = None, verbose: bool = True):
  """The image encoder (`backbone` + `encoder`) of any checkpoint of theirs.

  Args:
    checkpoint_path: as for `load`; typically a Pix2Seq detection checkpoint.
    config: our config; its backbone and encoder sizes must be the checkpoint's.
    ema: EMA or online weights; None = EMA when the checkpoint has them (Pix2Seq-D), else online.
    verbose: print what was filled and what was left unused.

  Returns:
    {'params': {'backbone', 'encoder'}, 'batch_stats': {'backbone'}} (numpy float32).
  """
  ckpt = Checkpoint(checkpoint_path)
  ema = ckpt.has_ema() if ema is None else ema
  ours = abstract_variables(config)
  modules = set(PARTS['encoder'])
  filled = _fill(ckpt, ours, ema, modules, _config_name(config))
  if verbose:
    print(describe_fill(ckpt, filled, ema, ours))
  return nest(filled)


def describe_fill(ckpt: Checkpoint, filled: dict, ema: bool, ours: dict) -> str:
  """A short report: what was filled from where, what was not read."""
  lines = [f'{ckpt.prefix} ({"EMA" if ema else "online"} weights):']
  by_module = {}
  for collection, path in filled:
    by_module.setdefault(path.split('/')[0], []).append(collection)
  for module, cols in sorted(by_module.items()):
    n_params = cols.count('params')
    lines.append(f'  filled {module}: {n_params} parameter arrays, '
                 f'{len(cols) - n_params} BatchNorm statistics')
  rest = sorted({p.split('/')[0] for _, p in ours} - set(by_module))
  if rest:
    lines.append(f'  left as initialised: {", ".join(rest)}')
  reasons = {}
  for reason in ckpt.unused.values():
    reasons[reason] = reasons.get(reason, 0) + 1
  other = sum(1 for _, (e, _, _) in ckpt.mapped.items() if e != ema)
  if other:
    reasons[f'{"online" if ema else "EMA"} copies'] = other
  not_needed = sum(1 for _, (e, _, p) in ckpt.mapped.items()
                   if e == ema and ('params', p) not in filled and ('batch_stats', p) not in filled)
  if not_needed:
    reasons['parts not requested'] = not_needed
  lines.append('  not used: ' + ', '.join(f'{n} {r}' for r, n in sorted(reasons.items())))
  return '\n'.join(lines)
