"""Building blocks shared by the encoder and the decoder (docs/spec.md §5)."""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pix2seq_d_jax import compile_options

Dtype = Any

# Initialisers of the reference (docs/spec.md §5.5.6).
glorot_uniform = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
near_zero = nn.initializers.variance_scaling(1e-10, 'fan_avg', 'uniform')


def sinusoidal_code(positions: jax.Array, dim: int) -> jax.Array:
  """1-D code: float [...] -> float32 [..., dim] = [sin(p w_k)..., cos(p w_k)...], w_k = 1e4^(-2k/d)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * 2.0 * jnp.arange(half, dtype=jnp.float32) / dim)
  angles = positions.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def sincos_2d(rows: int, cols: int, dim: int) -> jax.Array:
  """Fixed 2-D position codes float32 [rows * cols, dim] (docs/spec.md §5.3).

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


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, with the two cases XLA's CPU backend runs slowly rewritten.

  A 1x1 convolution is the same sum over input channels written as `dot_general`; a 2-D kxk
  convolution (any stride) keeps XLA's forward and input gradient and computes its kernel
  gradient as one matrix product (`_conv2d_bwd`). On XLA:CPU both gradients ran at a third to a
  half of the forward's rate before (benchmarks/conv_probe.py); every backend runs products
  well. Both kernel gradients are `weight_gradient`, which cuts a long contraction into parts
  on a CPU. Other convolutions (dilation, groups, other layouts) go to `lax.conv_general_dilated`
  unchanged. Takes what `flax.linen.Conv` passes (its `conv_general_dilated` attribute).
  """
  ones = (1,) * (lhs.ndim - 2)
  dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  channels_last = (dn.lhs_spec == dn.out_spec == (0, lhs.ndim - 1, *range(1, lhs.ndim - 1))
                   and dn.rhs_spec == (rhs.ndim - 1, rhs.ndim - 2, *range(rhs.ndim - 2)))
  plain = (channels_last and feature_group_count == 1 and batch_group_count == 1
           and tuple(lhs_dilation or ones) == ones and tuple(rhs_dilation or ones) == ones)
  pads = padding
  if plain and isinstance(padding, str):
    pads = jax.lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], window_strides, padding)
  if plain and rhs.shape[:-2] == ones:
    return _pointwise(lhs, rhs, window_strides, pads, precision, preferred_element_type)
  if (plain and lhs.ndim == 4 and precision is None and preferred_element_type is None
      and all(p >= 0 for pair in pads for p in pair)):
    return _conv2d(lhs, rhs, tuple(window_strides), tuple(map(tuple, pads)))
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)


def _pointwise(x, w, strides, pads, precision, preferred_element_type):
  """A channels-last 1x1 convolution as pad, strided slice and one product over channels."""
  if any(tuple(p) != (0, 0) for p in pads):
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads),
                                                (0, 0, 0)])
  x = x[(slice(None), *(slice(None, None, s) for s in strides), slice(None))]
  w = w.reshape(w.shape[-2:])
  if precision is None and preferred_element_type is None:
    return _channel_product(x, w)
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())),
                             precision=precision, preferred_element_type=preferred_element_type)


@jax.custom_vjp
def _channel_product(x, w):
  """x [..., C] times w [C, D]; its weight gradient is `weight_gradient` (parts on a CPU)."""
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _channel_product_fwd(x, w):
  return _channel_product(x, w), (x, w)


def _channel_product_bwd(residuals, dy):
  x, w = residuals
  dx = jax.lax.dot_general(dy, w, (((dy.ndim - 1,), (1,)), ((), ()))).astype(x.dtype)
  return dx, weight_gradient(x, dy).astype(w.dtype)


_channel_product.defvjp(_channel_product_fwd, _channel_product_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x, w, strides, padding):
  """NHWC x HWIO convolution whose kernel gradient is one matrix product."""
  return jax.lax.conv_general_dilated(x, w, strides, padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _conv2d_fwd(x, w, strides, padding):
  return _conv2d(x, w, strides, padding), (x, w)


def _conv2d_bwd(strides, padding, residuals, dy):
  """dx as XLA transposes the convolution; dw[i, j] = sum over n, h, w of
  x_pad[n, s h + i, s w + j] dy[n, h, w] (s: the stride of each axis).

  XLA writes dw as a convolution whose window is the whole image and whose contraction is the
  batch, which its CPU backend runs at a third to a half of the forward's rate. Here it is one
  matrix product over rows, [s kw C, N R W] x [N R W, ceil(kh / s) D]. The padded input's rows
  are split by phase (row = s q + p, p < s) and its kw strided column windows are taken; the
  s kw pieces, each R rows of q, are stacked on the channel axis. Kernel row i = s o + p then
  reads phase p at row offset o, so dy is stacked ceil(kh / s) times, shifted down by o rows and
  padded to R. The product holds every (p, o) pair and dw keeps the kh with s o + p < kh (at
  stride 1 all of them; a 3x3 kernel at stride 2 computes 4 rows of 3, a 7x7 8 of 7). Both
  operands keep n, h, w as their leading axes, so neither is copied again for the product
  (slicing a shifted row window out of the stacked input for each kernel row instead copied it
  kh times: 120 of the 467 ms of operations in a one-device shapes train step).
  """
  x, w = residuals
  kh, kw, c, d = w.shape
  sh, sw = strides
  _, conv_t = jax.vjp(lambda x_: _conv2d.fun(x_, w, strides, padding), x)
  dx, = conv_t(dy)
  out_h, out_w = dy.shape[1:3]
  offsets = -(-kh // sh)                               # row offsets o per phase
  rows = out_h + offsets - 1                           # rows R of each phase
  (top, _), cols_pad = padding
  bottom = sh * rows - top - x.shape[1]                # to exactly s R rows: zeros, or cropped
  xp = jnp.pad(x, ((0, 0), (top, max(bottom, 0)), cols_pad, (0, 0)))[:, :sh * rows]
  span = sw * (out_w - 1) + 1
  cols = jnp.concatenate([xp[:, p::sh, j:j + span:sw] for p in range(sh) for j in range(kw)],
                         axis=-1)                      # [N, R, W, (p, j, c)]
  # [N, R, W, (o, d)], stacked on a new axis and reshaped: a concatenation on the channel axis
  # copied at half the rate on XLA:CPU (35 against 20 ms for 4 shifts of 2 x 128^2 x 64)
  dy_rows = jnp.stack(
      [jnp.pad(dy, ((0, 0), (o, rows - out_h - o), (0, 0), (0, 0))) for o in range(offsets)],
      axis=-2).reshape(dy.shape[0], rows, out_w, offsets * d)
  dw = weight_gradient(cols, dy_rows).reshape(sh, kw, c, offsets, d)
  dw = jnp.stack([dw[i % sh, :, :, i // sh] for i in range(kh)])
  return dx, dw.astype(w.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)

# The fewest rows of a weight gradient's contraction worth a part of its own (see below).
MIN_SPLIT_ROWS = 4096


def weight_gradient(a: jax.Array, b: jax.Array) -> jax.Array:
  """sum over the leading axes of a[..., k] b[..., e]: [K, E] in float32.

  A weight gradient contracts the many rows of activations (batch x positions) into a small
  [K, E] result. XLA:CPU's matrix products divide the work among threads by blocks of the
  result only, so a result of a few blocks ran on one core: the product of a stem kernel
  gradient, 42 x 256 over 33,536 rows, took 32 ms alone on a 2-core machine, 7.5 ms in two
  halves (benchmarks/conv_probe.py --large times whole gradients against XLA's). On
  the CPU backend the rows are therefore cut into G equal parts, G the largest power of two up
  to the process's cores that leaves each part at least MIN_SPLIT_ROWS rows and divides the
  row count; the G partial products run as one batched product and are summed. Other backends
  split products themselves: G = 1 there.
  """
  k, e = a.shape[-1], b.shape[-1]
  rows = math.prod(a.shape[:-1])
  parts = _row_parts(rows) if compile_options.on_cpu() else 1
  if parts == 1:
    return jnp.einsum('mk,me->ke', a.reshape(rows, k), b.reshape(rows, e),
                      preferred_element_type=jnp.float32)
  a, b = a.reshape(parts, rows // parts, k), b.reshape(parts, rows // parts, e)
  return jnp.sum(jnp.einsum('gmk,gme->gke', a, b, preferred_element_type=jnp.float32), axis=0)


def _row_parts(rows: int) -> int:
  parts = 1
  while (2 * parts <= compile_options.usable_cores() and rows % (2 * parts) == 0
         and rows // (2 * parts) >= MIN_SPLIT_ROWS):
    parts *= 2
  return parts


# flax.linen.Conv with the convolution above; parameters, names and results as nn.Conv's.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


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


ATTENTION_IMPLEMENTATIONS = ('auto', 'xla', 'chunked', 'cudnn', 'tpu_flash')
# 'auto' switches to the chunked (memory-efficient) path from this many keys on when no fused
# kernel applies: below it the S x S scores are small and the plain path is faster.
CHUNKED_MIN_KEYS = 1024
CHUNK_SIZE = 512                     # keys per block of the chunked path
TPU_BLOCK = 128                      # the TPU flash kernel's sequence tile


def resolve_attention(implementation: str, backend: str, dtype, kv_len: int,
                      head_dim: int) -> str:
  """The concrete attention path for `implementation` ('auto' or one of the explicit names).

  'auto': cuDNN flash attention on GPU for bfloat16 / float16 inputs (head_dim <= 128 and a
  multiple of 8, cuDNN's limits), the Pallas flash kernel on TPU, otherwise the chunked path
  once there are at least CHUNKED_MIN_KEYS keys, and the plain XLA path below that.
  """
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f'config.model.attention={implementation!r}; valid: '
                     f'{ATTENTION_IMPLEMENTATIONS}.')
  if implementation != 'auto':
    return implementation
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if backend == 'gpu' and half and head_dim <= 128 and head_dim % 8 == 0:
    return 'cudnn'
  if backend == 'tpu':
    return 'tpu_flash'
  return 'chunked' if kv_len >= CHUNKED_MIN_KEYS else 'xla'


def dot_product_attention(q, k, v, implementation: str = 'auto', chunk_size: int | None = None):
  """Softmax(q k^T / sqrt(H)) v over [B, T, N, H] queries and [B, S, N, H] keys and values.

  Scores and the softmax are float32 for every input dtype; the output has q's dtype.
  `chunk_size`: keys per block of the chunked path (None = CHUNK_SIZE).
  """
  impl = resolve_attention(implementation, jax.default_backend(), q.dtype, k.shape[1],
                           q.shape[-1])
  if impl == 'xla':
    return jax.nn.dot_product_attention(q, k, v, implementation='xla')
  if impl == 'cudnn':
    return jax.nn.dot_product_attention(q, k, v, implementation='cudnn')
  if impl == 'tpu_flash':
    return _tpu_flash_attention(q, k, v)
  return chunked_attention(q, k, v, chunk_size or CHUNK_SIZE)


def _tpu_flash_attention(q, k, v):
  """The Pallas TPU flash kernel; sequences padded to its tile, padding masked by segment ids."""
  from jax.experimental.pallas.ops.tpu import flash_attention as tpu_fa  # TPU only: lazy
  b, t, _, h = q.shape
  s = k.shape[1]
  pad_t, pad_s = -t % TPU_BLOCK, -s % TPU_BLOCK
  tr = lambda x, pad: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  segments = tpu_fa.SegmentIds(
      q=jnp.broadcast_to((jnp.arange(t + pad_t) < t).astype(jnp.int32), (b, t + pad_t)),
      kv=jnp.broadcast_to((jnp.arange(s + pad_s) < s).astype(jnp.int32), (b, s + pad_s)))
  out = tpu_fa.flash_attention(tr(q, pad_t), tr(k, pad_s), tr(v, pad_s),
                               segment_ids=segments, sm_scale=1.0 / math.sqrt(h))
  return out.transpose(0, 2, 1, 3)[:, :t]


def _key_blocks(x, chunk_size):
  """[B, S, N, H] -> ([nb, B, chunk, N, H] zero-padded, valid [nb, chunk])."""
  b, s, n, h = x.shape
  nb = -(-s // chunk_size)
  x = jnp.pad(x, ((0, 0), (0, nb * chunk_size - s), (0, 0), (0, 0)))
  valid = (jnp.arange(nb * chunk_size) < s).reshape(nb, chunk_size)
  return x.reshape(b, nb, chunk_size, n, h).swapaxes(0, 1), valid


def _block_scores(q, kj, validj, scale):
  s = jnp.einsum('btnh,bsnh->bnts', q, kj, preferred_element_type=jnp.float32) * scale
  return jnp.where(validj, s, -jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def chunked_attention(q, k, v, chunk_size: int = CHUNK_SIZE):
  """Attention with an online softmax over blocks of `chunk_size` keys (flash attention in JAX).

  No [T, S] score matrix is ever live, only [T, chunk_size] per head, forward and backward: the
  backward pass recomputes each block's scores from q, k and the saved log-sum-exp.
  """
  return _chunked_forward(q, k, v, chunk_size)[0]


def _chunked_forward(q, k, v, chunk_size):
  b, t, n, h = q.shape
  scale = 1.0 / math.sqrt(h)
  kb, valid = _key_blocks(k, chunk_size)
  vb, _ = _key_blocks(v, chunk_size)

  def body(carry, xs):
    acc, m, l = carry                                              # [B,T,N,H], [B,N,T], [B,N,T]
    kj, vj, validj = xs
    s = _block_scores(q, kj, validj, scale)                         # [B, N, T, chunk]
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    p = jnp.exp(s - m_new[..., None])
    corr = jnp.exp(m - m_new)
    l = l * corr + jnp.sum(p, axis=-1)
    pv = jnp.einsum('bnts,bsnh->btnh', p.astype(v.dtype), vj, preferred_element_type=jnp.float32)
    acc = acc * jnp.swapaxes(corr, 1, 2)[..., None] + pv
    return (acc, m_new, l), None

  init = (jnp.zeros((b, t, n, h), jnp.float32), jnp.full((b, n, t), -jnp.inf, jnp.float32),
          jnp.zeros((b, n, t), jnp.float32))
  (acc, m, l), _ = jax.lax.scan(body, init, (kb, vb, valid))
  out = (acc / jnp.swapaxes(l, 1, 2)[..., None]).astype(q.dtype)
  return out, (q, k, v, out, m + jnp.log(l))


def _chunked_fwd(q, k, v, chunk_size):
  return _chunked_forward(q, k, v, chunk_size)


def _chunked_bwd(chunk_size, residuals, d_out):
  q, k, v, out, lse = residuals
  s_len, h = k.shape[1], q.shape[-1]
  scale = 1.0 / math.sqrt(h)
  kb, valid = _key_blocks(k, chunk_size)
  vb, _ = _key_blocks(v, chunk_size)
  d_out32 = d_out.astype(jnp.float32)
  delta = jnp.swapaxes(jnp.sum(d_out32 * out.astype(jnp.float32), axis=-1), 1, 2)  # [B, N, T]

  def body(dq, xs):
    kj, vj, validj = xs
    p = jnp.exp(_block_scores(q, kj, validj, scale) - lse[..., None])  # [B, N, T, chunk]
    dv = jnp.einsum('bnts,btnh->bsnh', p.astype(d_out.dtype), d_out,
                    preferred_element_type=jnp.float32)
    dp = jnp.einsum('btnh,bsnh->bnts', d_out, vj, preferred_element_type=jnp.float32)
    ds = p * (dp - delta[..., None]) * scale
    dq = dq + jnp.einsum('bnts,bsnh->btnh', ds.astype(k.dtype), kj,
                         preferred_element_type=jnp.float32)
    dk = jnp.einsum('bnts,btnh->bsnh', ds.astype(q.dtype), q, preferred_element_type=jnp.float32)
    return dq, (dk, dv)

  dq, (dk, dv) = jax.lax.scan(body, jnp.zeros(q.shape, jnp.float32), (kb, vb, valid))
  unblock = lambda x: jnp.swapaxes(x, 0, 1).reshape(k.shape[0], -1, *k.shape[2:])[:, :s_len]
  return dq.astype(q.dtype), unblock(dk).astype(k.dtype), unblock(dv).astype(v.dtype)


chunked_attention.defvjp(_chunked_fwd, _chunked_bwd)


class Attention(nn.Module):
  """Multi-head attention with separate q/k/v projections and biases (Keras MHA layout).

  Attributes:
    implementation: see `resolve_attention` ('auto', 'xla', 'chunked', 'cudnn', 'tpu_flash').
  """
  num_heads: int
  head_dim: int
  out_dim: int
  dtype: Dtype = jnp.float32
  implementation: str = 'auto'

  @nn.compact
  def __call__(self, x, context=None):
    context = x if context is None else context
    dense = lambda name: nn.DenseGeneral((self.num_heads, self.head_dim), dtype=self.dtype,
                                         kernel_init=glorot_uniform, name=name)
    q, k, v = dense('query')(x), dense('key')(context), dense('value')(context)
    y = dot_product_attention(q, k, v, self.implementation)
    return nn.DenseGeneral(self.out_dim, axis=(-2, -1), dtype=self.dtype,
                           kernel_init=glorot_uniform, name='out')(y)


REMAT_POLICIES = {
    'nothing_saveable': jax.checkpoint_policies.nothing_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_block(module_cls, policy: str | None, static_argnums=()):
  """`module_cls` wrapped with `nn.remat` under the named policy, or itself for policy None.

  The wrapper keeps the module's name and parameters, so parameter trees (and checkpoints) are
  the same with and without rematerialisation. `static_argnums` count `self` as 0.
  """
  if policy is None:
    return module_cls
  return nn.remat(module_cls, policy=_remat_policy(policy), static_argnums=static_argnums)


def _remat_policy(name: str):
  if name not in REMAT_POLICIES:
    raise ValueError(f'config.model.remat_policy={name!r}; valid: {sorted(REMAT_POLICIES)}.')
  return REMAT_POLICIES[name]


def remat_call(fn, policy: str | None):
  """`fn(module, *args)` rematerialised under the named policy (itself for None).

  For a step that is not a module of its own (e.g. upsample then convolve): `module` keeps its
  name and parameters where its parent defined it.
  """
  if policy is None:
    return fn
  return nn.remat(fn, policy=_remat_policy(policy))


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
  """Embeds a per-example scalar (here the noise level gamma) as in docs/spec.md §5.5.2.

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
