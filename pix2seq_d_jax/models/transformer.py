"""Transformer layers: the image encoder on C4 (docs/spec.md §5.2) and the decoder's bottleneck
layers (docs/spec.md §5.5.4)."""

import flax.linen as nn
import jax.numpy as jnp

from pix2seq_d_jax.models import layers
from pix2seq_d_jax.models.layers import Dtype


class EncoderLayer(nn.Module):
  """Pre-LN: x += DropPath(MHA(LN(x))); x += DropPath(MLP(LN(x)))."""
  dim: int
  num_heads: int
  mlp_dim: int
  dropout: float
  drop_path: float
  dtype: Dtype = jnp.float32
  attention: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool):
    ln = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    y = layers.Attention(self.num_heads, self.dim // self.num_heads, self.dim, self.dtype,
                         self.attention, name='attn')(ln('ln_attn')(x))
    x = x + layers.DropPath(self.drop_path)(y, deterministic=not train)
    y = layers.Mlp(self.mlp_dim, self.dropout, self.dtype, name='mlp')(
        ln('ln_mlp')(x), deterministic=not train)
    return x + layers.DropPath(self.drop_path)(y, deterministic=not train)


class ImageEncoder(nn.Module):
  """C4 features [B, h, w, C] -> tokens [B, h w, dim] (docs/spec.md §5.2).

  Dropout -> Dense -> LayerNorm -> + 2-D sin-cos codes -> `num_layers` pre-LN layers -> LayerNorm.
  `attention` picks the attention path (`layers.resolve_attention`); `remat` a rematerialisation
  policy for each layer (`layers.REMAT_POLICIES`; None = store activations).
  """
  num_layers: int = 12
  dim: int = 512
  num_heads: int = 16
  mlp_dim: int = 2048
  dropout: float = 0.1
  drop_path: float = 0.1
  dtype: Dtype = jnp.float32
  attention: str = 'auto'
  remat: str | None = None

  @nn.compact
  def __call__(self, c4, train: bool):
    b, h, w, c = c4.shape
    x = c4.reshape(b, h * w, c)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    x = nn.Dense(self.dim, dtype=self.dtype, kernel_init=layers.glorot_uniform, name='stem')(x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='stem_ln')(x)
    x = x + layers.sincos_2d(h, w, self.dim).astype(x.dtype)
    layer = layers.remat_block(EncoderLayer, self.remat, static_argnums=(2,))
    for i in range(self.num_layers):
      x = layer(self.dim, self.num_heads, self.mlp_dim, self.dropout, self.drop_path,
                self.dtype, self.attention, name=f'layer{i}')(x, train)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='final_ln')(x)


class DecoderLayer(nn.Module):
  """Pre-LN: self-attention, optional cross-attention to `context`, MLP."""
  dim: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  dropout: float
  cross_attention: bool
  dtype: Dtype = jnp.float32
  attention: str = 'auto'

  @nn.compact
  def __call__(self, x, context, train: bool):
    ln = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    x = x + layers.Attention(self.num_heads, self.head_dim, self.dim, self.dtype,
                             self.attention, name='self_attn')(ln('ln_self')(x))
    if self.cross_attention:
      x = x + layers.Attention(self.num_heads, self.head_dim, self.dim, self.dtype,
                               self.attention, name='cross_attn')(ln('ln_cross')(x), context)
    return x + layers.Mlp(self.mlp_dim, self.dropout, self.dtype, name='mlp')(
        ln('ln_mlp')(x), deterministic=not train)
