"""Building blocks shared by the encoder and the decoder (SPEC §5)."""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Initialisers of the reference (SPEC §5.5.6).
glorot_uniform = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
near_zero = nn.initializers.variance_scaling(1e-10, 'fan_avg', 'uniform')


def sinusoidal_code(positions: jax.Array, dim: int) -> jax.Array:
  """1-D code: float [...] -> float32 [..., dim] = [sin(p w_k)..., cos(p w_k)...], w_k = 1e4^(-2k/d)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * 2.0 * jnp.arange(half, dtype=jnp.float32) / dim)
  angles = positions.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def sincos_2d(rows: int, cols: int, dim: int) -> jax.Array:
  """Fixed 2-D position codes float32 [rows * cols, dim] (SPEC §5.3).

  The first dim/2 channels encode the row, the last dim/2 the column, with coordinates normalised
  to [0, 2 pi]. A grid with one row or column gets a 1-D code over all positions.
  """
  if rows == 1 or cols == 1:
    n = rows * cols
    return sinusoidal_code(jnp.arange(n) * 2 * math.pi / max(n - 1, 1), dim)
  y = jnp.arange(rows) * 2 * math.pi / (rows - 1)
  x = jnp.arange(cols) * 2 * math.pi / (cols - 1)
  code_y = jnp.broadcast_to(sinusoidal_code(y, dim // 2)[:, None, :], (rows, cols, dim // 2))
  code_x = jnp.broadcast_to(sinusoidal_code(x, dim // 2)[None, :, :], (rows, cols, dim // 2))
  return jnp.concatenate([code_y, code_x], axis=-1).reshape(rows * cols, dim)


def group_norm(channels: int, dtype: Dtype, name: str | None = None,
               groups_of: int | None = None) -> nn.GroupNorm:
  """GroupNorm with min(C/4, 32) groups and epsilon 1e-5 (the reference; Flax's default is 1e-6).

  `groups_of`: count the groups from this width instead of C, where the reference does (the
  decoder's bottleneck input and output norms; parity with its checkpoints,
  tests/test_tf_parity.py). For widths where that count does not divide C (e.g. 144), the
  largest divisor below it is used.
  """
  groups = max(min((channels if groups_of is None else groups_of) // 4, 32), 1)
  while channels % groups:
    groups -= 1
  return nn.GroupNorm(num_groups=groups, epsilon=1e-5, dtype=dtype, name=name)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


class Attention(nn.Module):
  """Multi-head attention with separate q/k/v projections and biases (Keras MHA layout).

  The product runs through `jax.nn.dot_product_attention`, which picks fused kernels (cuDNN flash
  attention on GPU) where the backend has them.
  """
  num_heads: int
  head_dim: int
  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None):
    context = x if context is None else context
    dense = lambda name: nn.DenseGeneral((self.num_heads, self.head_dim), dtype=self.dtype,
                                         kernel_init=glorot_uniform, name=name)
    q, k, v = dense('query')(x), dense('key')(context), dense('value')(context)
    y = jax.nn.dot_product_attention(q, k, v)
    return nn.DenseGeneral(self.out_dim, axis=(-2, -1), dtype=self.dtype,
                           kernel_init=glorot_uniform, name='out')(y)


class Mlp(nn.Module):
  """Dense -> exact GELU -> dropout -> Dense."""
  hidden_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool):
    d = x.shape[-1]
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=glorot_uniform)(x)
    x = nn.gelu(x, approximate=False)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    return nn.Dense(d, dtype=self.dtype, kernel_init=glorot_uniform)(x)


class ScalarEmbedding(nn.Module):
  """Embeds a per-example scalar (here the noise level gamma) as in SPEC §5.5.2.

  e = SiLU(Dense(SiLU(Dense(PE(scalar * scaling, dim))))), both denses of width `out_dim`.
  """
  dim: int
  out_dim: int
  scaling: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, s):
    e = sinusoidal_code(s * self.scaling, self.dim)
    e = nn.silu(nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=glorot_uniform)(e))
    return nn.silu(nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=glorot_uniform)(e))


def nearest_upsample(x: jax.Array, factor: int) -> jax.Array:
  """[B, h, w, C] -> [B, h f, w f, C] by repetition."""
  if factor == 1:
    return x
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)
