"""TransUNet mask decoder conditioned on the noise level (docs/spec.md §5.5)."""

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from pix2seq_d_jax.models import layers
from pix2seq_d_jax.models.layers import Dtype
from pix2seq_d_jax.models.transformer import DecoderLayer


class ResBlock(nn.Module):
  """skip + Conv3x3(Drop(SiLU(FiLM(GN(Conv3x3(SiLU(GN(x)))), e)))), divided by sqrt(2).

  `concat` (the up path's U-Net skip) is joined to x on the channels inside the block, so that a
  rematerialised block keeps only its two inputs, not their concatenation.
  """
  out_dim: int
  dropout: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool, concat=None):
    if concat is not None:
      x = jnp.concatenate([x, concat], axis=-1)
    skip = x
    if x.shape[-1] != self.out_dim:
      skip = layers.Conv(self.out_dim, (1, 1), kernel_init=layers.glorot_uniform, dtype=self.dtype,
                         name='skip')(x)
    h = nn.silu(layers.group_norm(x.shape[-1], self.dtype, 'norm0')(x))
    h = layers.Conv(self.out_dim, (3, 3), kernel_init=layers.glorot_uniform, dtype=self.dtype,
                    name='conv0')(h)
    h = layers.group_norm(self.out_dim, self.dtype, 'norm1')(h)
    scale, shift = jnp.split(nn.Dense(2 * self.out_dim, kernel_init=layers.glorot_uniform,
                                      dtype=self.dtype, name='film')(emb), 2, axis=-1)
    h = nn.silu(h * (1 + scale[:, None, None, :]) + shift[:, None, None, :])
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = layers.Conv(self.out_dim, (3, 3), kernel_init=layers.near_zero, dtype=self.dtype,
                    name='conv1')(h)
    # A Python float is weakly typed: the sum stays in the compute dtype (bfloat16 too).
    return (h + skip) / math.sqrt(2.0)


def _upsample_conv(conv: nn.Module, h):
  return conv(layers.nearest_upsample(h, 2))


class BottleneckTransformer(nn.Module):
  """GN -> 1x1 conv -> tokens + sin-cos codes + a noise-level token -> layers -> GN -> 1x1 conv."""
  dim: int
  num_layers: int
  head_dim: int
  mlp_dim: int
  dropout: float
  cross_attention: bool
  dtype: Dtype = jnp.float32
  attention: str = 'auto'
  remat: str | None = None

  @nn.compact
  def __call__(self, x, emb, context, train: bool):
    b, h, w, c = x.shape
    # The reference counts this norm's groups from the transformer width, not from c.
    x = layers.group_norm(c, self.dtype, 'norm_in', groups_of=self.dim)(x)
    x = layers.Conv(self.dim, (1, 1), kernel_init=layers.glorot_uniform, dtype=self.dtype,
                    name='proj_in')(x)
    x = x.reshape(b, h * w, self.dim) + layers.sincos_2d(h, w, self.dim).astype(x.dtype)
    t = nn.Dense(self.dim, kernel_init=layers.glorot_uniform, dtype=self.dtype,
                 name='time_token')(emb)
    x = jnp.concatenate([x, t[:, None, :]], axis=1)
    layer = layers.remat_block(DecoderLayer, self.remat, static_argnums=(3,))
    for i in range(self.num_layers):
      x = layer(self.dim, self.dim // self.head_dim, self.head_dim, self.mlp_dim, self.dropout,
                self.cross_attention, self.dtype, self.attention, name=f'layer{i}')(
                    x, context, train)
    x = x[:, :-1].reshape(b, h, w, self.dim)
    x = layers.group_norm(self.dim, self.dtype, 'norm_out')(x)
    return layers.Conv(self.dim, (1, 1), kernel_init=layers.glorot_uniform, dtype=self.dtype,
                       name='proj_out')(x)


class TransUNet(nn.Module):
  """Decoder input [B, h, w, C_in] + gamma [B] (+ context [B, S, D]) -> logits.

  Attributes:
    dim, ch_multipliers, num_res_blocks: the U-Net widths (level i has dim * mult[i] channels).
    dropout: dropout inside residual blocks and the bottleneck MLPs (the reference's `udrop`).
    transformer_*: the bottleneck transformer (dim, layers, per-head dim, MLP width).
    cross_attention: attend to the encoder tokens in the bottleneck (`attn` conditioning).
    time_scaling: the noise-level embedding reads gamma * time_scaling (docs/decisions.md §2).
    num_groups, bits_per_group: G softmax groups of 2^n logits (the paper); num_groups = 0 gives a
      plain head with `plain_out_dim` outputs (the l2 / sigmoid ablations).
    head_value_limits: optional per-group count of values that can occur (num_classes, K); the
      head's biases of the other values start at `head_impossible_bias` (0 = the reference).
    attention: the bottleneck's attention path (`layers.resolve_attention`).
    remat: rematerialisation policy of each residual block and bottleneck layer
      (`layers.REMAT_POLICIES`); None stores all activations.
  """
  dim: int = 128
  ch_multipliers: Sequence[int] = (1, 1, 2, 2)
  num_res_blocks: Sequence[int] = (1, 1, 1, 1)
  dropout: float = 0.0
  transformer_dim: int = 512
  transformer_layers: int = 6
  transformer_head_dim: int = 64
  transformer_mlp_dim: int = 2048
  cross_attention: bool = True
  time_scaling: float = 1000.0
  num_groups: int = 2
  bits_per_group: int = 8
  plain_out_dim: int = 16
  head_value_limits: Sequence[int] | None = None
  head_impossible_bias: float = 0.0
  dtype: Dtype = jnp.float32
  attention: str = 'auto'
  remat: str | None = None

  def _head_bias_init(self, key, shape, dtype=jnp.float32):
    del key
    num_values = 2**self.bits_per_group
    bias = np.zeros((self.num_groups, num_values), np.float32)
    if self.head_value_limits is not None:
      for g, limit in enumerate(self.head_value_limits):
        bias[g, limit:] = self.head_impossible_bias
    return jnp.asarray(bias.reshape(shape), dtype)

  @nn.compact
  def __call__(self, x, gamma, context, train: bool):
    if len(self.num_res_blocks) != len(self.ch_multipliers):
      raise ValueError(f'TransUNet: num_res_blocks {tuple(self.num_res_blocks)} and ch_multipliers '
                       f'{tuple(self.ch_multipliers)} need the same length (one entry per level).')
    block = layers.remat_block(ResBlock, self.remat, static_argnums=(3,))
    emb = layers.ScalarEmbedding(self.dim, 4 * self.dim, self.time_scaling, self.dtype,
                                 name='noise_embedding')(gamma)
    # The input conv is as wide as the first level (dim * ch_multipliers[0]), as the reference.
    width_in = self.dim * self.ch_multipliers[0]
    h = layers.Conv(width_in, (1, 1), kernel_init=layers.glorot_uniform, dtype=self.dtype,
                    name='conv_in')(x.astype(self.dtype))
    h = layers.group_norm(width_in, self.dtype, 'norm_in')(h)
    skips = [h]
    last = len(self.ch_multipliers) - 1
    for level, mult in enumerate(self.ch_multipliers):
      for i in range(self.num_res_blocks[level]):
        h = block(self.dim * mult, self.dropout, self.dtype, name=f'down{level}_block{i}')(
            h, emb, train)
        skips.append(h)
      if level < last:
        h = layers.Conv(h.shape[-1], (3, 3), (2, 2), padding='SAME',
                        kernel_init=layers.glorot_uniform, dtype=self.dtype,
                        name=f'down{level}_downsample')(h)
        skips.append(h)
    h = BottleneckTransformer(self.transformer_dim, self.transformer_layers,
                              self.transformer_head_dim, self.transformer_mlp_dim, self.dropout,
                              self.cross_attention, self.dtype, self.attention, self.remat,
                              name='middle')(
                                  h, emb, context, train)
    for level in reversed(range(len(self.ch_multipliers))):
      for i in range(self.num_res_blocks[level] + 1):
        h = block(self.dim * self.ch_multipliers[level], self.dropout, self.dtype,
                  name=f'up{level}_block{i}')(h, emb, train, skips.pop())
      if level > 0:
        conv = layers.Conv(h.shape[-1], (3, 3), kernel_init=layers.glorot_uniform, dtype=self.dtype,
                           name=f'up{level}_upsample')
        h = layers.remat_call(_upsample_conv, self.remat)(conv, h)
    h = nn.silu(layers.group_norm(h.shape[-1], self.dtype, 'norm_out', groups_of=self.dim)(h))
    if self.num_groups == 0:
      return layers.Conv(self.plain_out_dim, (1, 1), kernel_init=layers.near_zero, dtype=self.dtype,
                         name='head')(h).astype(jnp.float32)
    num_values = 2**self.bits_per_group
    logits = layers.Conv(self.num_groups * num_values, (1, 1), kernel_init=layers.near_zero,
                         bias_init=self._head_bias_init, dtype=self.dtype, name='head')(h)
    return logits.reshape(*logits.shape[:-1], self.num_groups, num_values).astype(jnp.float32)
