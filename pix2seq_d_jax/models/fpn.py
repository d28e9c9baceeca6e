"""Feature-pyramid merge of the encoder outputs to mask resolution (docs/spec.md §5.4)."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from pix2seq_d_jax.models import layers
from pix2seq_d_jax.models.layers import Dtype


class UpsampleBlock(nn.Module):
  """a = SiLU(GN(Conv1x1(x_lr))); y = SiLU(GN(Conv3x3(x_hr + NearestUp(a))))."""
  dim_out: int
  factor: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_lr, x_hr=None):
    c_hr = self.dim_out if x_hr is None else x_hr.shape[-1]
    a = layers.Conv(c_hr, (1, 1), kernel_init=layers.glorot_uniform, dtype=self.dtype)(x_lr)
    a = nn.silu(layers.group_norm(c_hr, self.dtype)(a))
    a = layers.nearest_upsample(a, self.factor)
    if x_hr is not None:
      a = a + x_hr
    y = layers.Conv(self.dim_out, (3, 3), kernel_init=layers.glorot_uniform, dtype=self.dtype)(a)
    return nn.silu(layers.group_norm(self.dim_out, self.dtype)(y))


class FeaturePyramidMerge(nn.Module):
  """Merges [C2, C3, T] (high to low resolution) top-down into `encoded_cat` at mask size.

  A higher-resolution input larger than the mask is skipped; a final block without skip input
  upsamples to the mask size with `out_dim` channels (omitted when already at mask size).
  """
  mask_size: tuple[int, int]
  out_dim: int = 256
  dtype: Dtype = jnp.float32
  remat: str | None = None      # rematerialisation policy of each block (None = none)

  @nn.compact
  def __call__(self, features: Sequence):
    block = layers.remat_block(UpsampleBlock, self.remat)
    x = features[-1]
    for i, x_hr in enumerate(reversed(features[:-1])):
      if x_hr.shape[1] > self.mask_size[0] or x_hr.shape[2] > self.mask_size[1]:
        continue
      x = block(x_hr.shape[-1], _factor(x_hr.shape[1:3], x.shape[1:3]), self.dtype,
                name=f'merge{i}')(x, x_hr)
    factor = _factor(self.mask_size, x.shape[1:3])
    if factor > 1:
      x = block(self.out_dim, factor, self.dtype, name='to_mask')(x)
    return x


def _factor(hi, lo) -> int:
  fh, fw = hi[0] // lo[0], hi[1] // lo[1]
  if fh != fw or fh * lo[0] != hi[0] or fw * lo[1] != hi[1]:
    raise ValueError(f'Feature pyramid: cannot upsample {tuple(lo)} to {tuple(hi)} by one integer '
                     'factor. Choose image_size and mask_size so that mask_size * 16 / image_size '
                     'is a power of two and the image size is divisible by 16.')
  return fh
