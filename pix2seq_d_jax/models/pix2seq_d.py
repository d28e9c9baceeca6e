"""The Pix2Seq-D model: image encoder + feature merge + noise-conditioned mask decoder
(docs/spec.md §5).

Top-level parameter collections: `backbone` (ResNet C4), `encoder` (transformer on C4), `fpn`
(feature-pyramid merge) and `decoder` (TransUNet). The encoder runs once per image; the decoder
once per training step and once per sampling step.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pix2seq_d_jax import bits as bits_lib
from pix2seq_d_jax.models import layers
from pix2seq_d_jax.models.fpn import FeaturePyramidMerge
from pix2seq_d_jax.models.resnet import ResNetC4
from pix2seq_d_jax.models.transformer import ImageEncoder
from pix2seq_d_jax.models.transunet import TransUNet

CONDITIONINGS = ('cat', 'attn', 'cat+attn', 'none')
REMAT_MODES = ('none', 'blocks')
BACKBONE_NORMS = ('batch', 'frozen')


class Pix2SeqD(nn.Module):
  """Image (and video) Pix2Seq-D.

  Attributes:
    backbone, encoder, fpn, decoder: the four parts (built by `build_model`).
    conditioning: how the decoder sees the image: `cat` (feature map concatenated to x_t), `attn`
      (cross-attention to the encoder tokens), `cat+attn` (the paper), `none`.
    num_channels: integer channels of a mask (2: class, instance id).
    self_condition: the decoder also reads a previous x0 estimate (16 more input channels).
    num_cond_frames: previous frames whose masks are extra decoder inputs (video; 0 for images).
  """
  backbone: nn.Module
  encoder: nn.Module
  fpn: nn.Module
  decoder: nn.Module
  conditioning: str = 'cat+attn'
  num_channels: int = bits_lib.MASK_CHANNELS
  self_condition: bool = False
  num_cond_frames: int = 0

  @property
  def num_bits(self) -> int:
    return self.num_channels * bits_lib.BITS_PER_CHANNEL

  def encode(self, images, train: bool):
    """images float [B, H, W, 3] in [0, 1] -> (encoded_cat [B, h, w, C_fpn], tokens [B, S, D])."""
    c2, c3, c4 = self.backbone(images, train)
    tokens = self.encoder(c4, train)
    grid = tokens.reshape(c4.shape[0], c4.shape[1], c4.shape[2], tokens.shape[-1])
    encoded_cat = self.fpn([c2, c3, grid])
    if 'cat' not in self.conditioning:
      # The reference keeps the input channels and zeroes them, so checkpoints keep their shapes.
      encoded_cat = jnp.zeros_like(encoded_cat)
    return encoded_cat, tokens

  def decode(self, x_t, gamma, encoded_cat, tokens, train: bool, self_cond=None, cond=None):
    """One denoising pass.

    Args:
      x_t: float [B, h, w, 16] noisy analog bits.
      gamma: float [B] noise level gamma(t).
      encoded_cat: float [B, h, w, C_fpn] from `encode`.
      tokens: float [B, S, D] from `encode` (used with `attn` conditioning).
      train: dropout on/off.
      self_cond: float [B, h, w, 16] previous x0 estimate (required iff self_condition).
      cond: float [B, h, w, 16 P] analog bits of P previous frames (required iff num_cond_frames).

    Returns:
      logits float32 [B, h, w, G, 2^n] (or [B, h, w, 16] for a plain head).
    """
    parts = [x_t]
    if self.self_condition:
      parts.append(jnp.zeros_like(x_t) if self_cond is None else self_cond)
    parts.append(encoded_cat.astype(x_t.dtype))
    if self.num_cond_frames:
      if cond is None:
        raise ValueError('A video model needs `cond`, the previous frames\' analog bits '
                         f'[B, h, w, {self.num_bits * self.num_cond_frames}].')
      parts.append(cond)
    context = tokens if 'attn' in self.conditioning else None
    return self.decoder(jnp.concatenate(parts, axis=-1), gamma, context, train)

  def __call__(self, images, x_t, gamma, train: bool = False, cond=None):
    """Encoder and one decoder pass; used to initialise all parameters."""
    encoded_cat, tokens = self.encode(images, train)
    return self.decode(x_t, gamma, encoded_cat, tokens, train, cond=cond)


def build_model(config: ml_collections.ConfigDict) -> Pix2SeqD:
  """The only place that reads model sizes from the config (`config.model`, `config.dataset`)."""
  m = config.model
  if m.conditioning not in CONDITIONINGS:
    raise ValueError(f'config.model.conditioning={m.conditioning!r}; valid: {CONDITIONINGS}.')
  dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}.get(m.dtype)
  if dtype is None:
    raise ValueError(f"config.model.dtype={m.dtype!r}; valid: 'float32', 'bfloat16'.")
  if m.remat not in REMAT_MODES:
    raise ValueError(f'config.model.remat={m.remat!r}; valid: {REMAT_MODES} (and '
                     'config.model.remat_policy for what a rematerialised block keeps).')
  if m.remat_policy not in layers.REMAT_POLICIES:
    raise ValueError(f'config.model.remat_policy={m.remat_policy!r}; valid: '
                     f'{sorted(layers.REMAT_POLICIES)}.')
  remat = None if m.remat == 'none' else m.remat_policy
  if m.attention not in layers.ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f'config.model.attention={m.attention!r}; valid: '
                     f'{layers.ATTENTION_IMPLEMENTATIONS}.')
  if m.backbone.norm not in BACKBONE_NORMS:
    raise ValueError(f'config.model.backbone.norm={m.backbone.norm!r}; valid: {BACKBONE_NORMS}.')
  d = m.decoder
  head = config.diffusion.loss
  limits = None
  if d.head_bias == 'prior':
    limits = (config.dataset.num_classes, config.dataset.max_instances)
  elif d.head_bias != 'zero':
    raise ValueError(f"config.model.decoder.head_bias={d.head_bias!r}; valid: 'zero', 'prior'.")
  decoder = TransUNet(
      dim=d.dim, ch_multipliers=tuple(d.ch_multipliers), num_res_blocks=tuple(d.num_res_blocks),
      dropout=d.dropout, transformer_dim=d.transformer_dim, transformer_layers=d.transformer_layers,
      transformer_head_dim=d.transformer_head_dim, transformer_mlp_dim=d.transformer_mlp_dim,
      cross_attention='attn' in m.conditioning, time_scaling=d.time_scaling,
      num_groups=bits_lib.MASK_CHANNELS if head == 'softmax_xent' else 0,
      bits_per_group=bits_lib.BITS_PER_CHANNEL, plain_out_dim=bits_lib.MASK_BITS,
      head_value_limits=limits, head_impossible_bias=d.head_prior_bias, dtype=dtype,
      attention=m.attention, remat=remat)
  e = m.encoder
  return Pix2SeqD(
      backbone=ResNetC4(depths=tuple(m.backbone.depths), width=m.backbone.width, dtype=dtype,
                        remat=remat, frozen_bn=m.backbone.norm == 'frozen'),
      encoder=ImageEncoder(num_layers=e.num_layers, dim=e.dim, num_heads=e.num_heads,
                           mlp_dim=e.mlp_dim, dropout=e.dropout, drop_path=e.drop_path,
                           dtype=dtype, attention=m.attention, remat=remat),
      fpn=FeaturePyramidMerge(mask_size=tuple(m.mask_size), out_dim=m.fpn_dim, dtype=dtype,
                              remat=remat),
      decoder=decoder,
      conditioning=m.conditioning,
      self_condition=config.diffusion.self_condition,
      num_cond_frames=m.num_cond_frames)


def init_inputs(config: ml_collections.ConfigDict, batch: int = 1):
  """Dummy inputs of the right shapes for `Pix2SeqD.init` (and `jax.eval_shape`)."""
  m = config.model
  images = jnp.zeros((batch, *m.image_size, 3), jnp.float32)
  x_t = jnp.zeros((batch, *m.mask_size, bits_lib.MASK_BITS), jnp.float32)
  gamma = jnp.ones((batch,), jnp.float32)
  cond = None
  if m.num_cond_frames:
    cond = jnp.zeros((batch, *m.mask_size, bits_lib.MASK_BITS * m.num_cond_frames), jnp.float32)
  return images, x_t, gamma, cond


def random_variables(model: Pix2SeqD, config: ml_collections.ConfigDict, seed: int = 0) -> dict:
  """{'params', 'batch_stats'} of numpy random values with the shapes `model.init` gives, for
  timing and tests (kernels ~ N(0, 1/fan_in), norm scales and variances in [0.5, 1.5], biases and
  means ~ N(0, 0.1^2)); nothing is compiled, so it is quick for the paper model on a CPU too."""
  images, x_t, gamma, cond = init_inputs(config)
  shapes = jax.eval_shape(lambda: model.init({'params': jax.random.PRNGKey(0)}, images, x_t,
                                             gamma, train=False, cond=cond))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name in ('scale', 'var'):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      value = 0.1 * rng.normal(size=leaf.shape)
    return np.asarray(value, leaf.dtype)
  shapes = {k: v for k, v in shapes.items() if k in ('params', 'batch_stats')}
  return jax.tree_util.tree_map_with_path(fill, shapes)


def count_params(tree) -> dict:
  """{'total': n, '<top-level name>': n, ...} of a parameter tree."""
  size = lambda t: int(sum(np.prod(x.shape) for x in jax.tree.leaves(t)))
  out = {'total': size(tree)}
  out.update({k: size(v) for k, v in tree.items()})
  return out
