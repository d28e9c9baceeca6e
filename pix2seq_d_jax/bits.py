"""Integer panoptic maps <-> analog bits (docs/spec.md §1.4, §3.3, §4.5).

A panoptic map is int32 [..., C] with C channels (2 for an image: class, instance id). Each channel is
written with `bits_per_channel` (8) bits, least significant bit first, channels in order, so an image
map becomes 16 bits [class bit0..bit7, id bit0..bit7]. Analog bits map {0, 1} to {-b, +b}.
"""

import jax
import jax.numpy as jnp
import numpy as np

BITS_PER_CHANNEL = 8     # bits of each mask channel (docs/decisions.md §8)
MASK_CHANNELS = 2        # an image mask: class, instance id
MASK_BITS = MASK_CHANNELS * BITS_PER_CHANNEL   # analog bits of one mask: 16

# The decoder heads (config.diffusion.loss): grouped softmaxes, or one value per bit.
HEADS = ('softmax_xent', 'l2', 'sigmoid_xent')


def int_to_bits(x: jax.Array, num_bits: int) -> jax.Array:
  """int [...] -> int32 {0,1} [..., num_bits], least significant bit first."""
  x = jnp.asarray(x).astype(jnp.int32)
  shifts = jnp.arange(num_bits, dtype=jnp.int32)
  return (x[..., None] >> shifts) & 1


def bits_to_int(bits: jax.Array) -> jax.Array:
  """{0,1} or bool [..., n] (least significant first) -> int32 [...]."""
  n = bits.shape[-1]
  weights = (1 << jnp.arange(n, dtype=jnp.int32))
  return jnp.sum(bits.astype(jnp.int32) * weights, axis=-1)


Scale = float | tuple[float, ...]


def bit_scales(b: Scale, num_channels: int, bits_per_channel: int = BITS_PER_CHANNEL):
  """The analog scale of every bit: b itself for a float, else float32 [C * n].

  b is a float (every channel, the reference) or one scale per mask channel, e.g.
  (b_class, b_instance); channel c uses b[c % len(b)], so the stacked [class, id, class, id, ...]
  channels of previous video frames get their channel's scale.
  """
  if not isinstance(b, (tuple, list)):
    return b                    # a number (or a traced scalar) scales every bit
  per_channel = [float(b[c % len(b)]) for c in range(num_channels)]
  return jnp.asarray(np.repeat(per_channel, bits_per_channel), jnp.float32)


def scale_from_config(b: float, instance_b: float) -> Scale:
  """`config.diffusion.b` and `.instance_b` -> the Scale: b alone when instance_b is 0 (the
  reference: one scale for all bits), else (b for the class bits, instance_b for the id bits)."""
  if b <= 0 or instance_b < 0:
    raise ValueError(f'config.diffusion.b={b} and instance_b={instance_b}: the analog bit scales '
                     'must be positive (instance_b = 0 means "the same as b").')
  return float(b) if instance_b in (0, b) else (float(b), float(instance_b))


def map_to_analog_bits(m: jax.Array, b: Scale,
                       bits_per_channel: int = BITS_PER_CHANNEL) -> jax.Array:
  """Panoptic map int [..., C] in [0, 2^bits) -> analog bits float32 [..., C * bits] in {-b, +b}
  (b per channel when a tuple, see `bit_scales`)."""
  bits = int_to_bits(m, bits_per_channel)                       # [..., C, n]
  bits = bits.reshape(*m.shape[:-1], m.shape[-1] * bits_per_channel)
  return (2.0 * bits.astype(jnp.float32) - 1.0) * bit_scales(b, m.shape[-1], bits_per_channel)


def analog_bits_to_map(x: jax.Array, num_channels: int,
                       max_values: tuple[int, ...] | None = None) -> jax.Array:
  """Per-bit threshold decoding (the reference decoding, docs/spec.md §4.5).

  Args:
    x: float [..., num_channels * n] analog bits; each bit is read as `x > 0`.
    num_channels: C.
    max_values: optional per-channel exclusive upper bounds (e.g. (num_classes, K)); decoded values
      are clipped to `max_value - 1` as the reference does.

  Returns:
    int32 [..., C].
  """
  n = x.shape[-1] // num_channels
  bits = (x > 0).reshape(*x.shape[:-1], num_channels, n)
  m = bits_to_int(bits)
  if max_values is not None:
    m = jnp.minimum(m, jnp.asarray(max_values, jnp.int32) - 1)
  return m


def bit_table(bits_per_group: int) -> jax.Array:
  """float32 [2^n, n]: row k holds the bits of k, least significant first."""
  return int_to_bits(jnp.arange(2**bits_per_group), bits_per_group).astype(jnp.float32)


def expected_analog_bits(logits: jax.Array, b: Scale) -> jax.Array:
  """Expected analog bits under grouped softmaxes (docs/spec.md §3.3).

  Args:
    logits: float [..., G, 2^n]: one softmax over the 2^n values of each group of n bits.
    b: analog bit scale (per group when a tuple, see `bit_scales`).

  Returns:
    float32 [..., G * n] in [-b, b]: (2 E[bit] - 1) b, groups in order, bits LSB first.
  """
  num_values = logits.shape[-1]
  n = num_values.bit_length() - 1
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  with jax.named_scope('expected_analog_bits'):   # a float32 matmul by design (bf16 HLO test)
    e = jnp.einsum('...gk,kn->...gn', p, bit_table(n))
  e = e.reshape(*logits.shape[:-2], logits.shape[-2] * n)
  return (2.0 * e - 1.0) * bit_scales(b, logits.shape[-2], n)


def argmax_decode(logits: jax.Array, max_values: tuple[int, ...] | None = None) -> jax.Array:
  """Argmax of each group's softmax: float [..., G, 2^n] -> int32 [..., G]
  (docs/decisions.md §5)."""
  if max_values is not None:
    # Values a channel can never hold (classes >= num_classes, ids >= K) are excluded.
    limits = jnp.asarray(max_values, jnp.int32)[:, None]
    valid = jnp.arange(logits.shape[-1])[None, :] < limits
    logits = jnp.where(valid, logits, -jnp.inf)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def cond_bits(cond_masks: jax.Array, b: Scale) -> jax.Array:
  """Previous frames' masks int [B, P, h, w, 2] -> analog bits [B, h, w, 16 P] (docs/spec.md §1.4).

  Channel order: [class(t-P), id(t-P), ..., class(t-1), id(t-1)], 8 bits each.
  """
  bsz, p, h, w, c = cond_masks.shape
  m = jnp.transpose(cond_masks, (0, 2, 3, 1, 4)).reshape(bsz, h, w, p * c)
  return map_to_analog_bits(m, b)


def x0_from_output(out: jax.Array, head: str, b: Scale) -> jax.Array:
  """The decoder's x0 estimate, float32 [B, h, w, 16] in [-b, b], for any of the HEADS.

  softmax_xent: expected analog bits of the grouped softmaxes (out: logits [B, h, w, G, 2^n]);
  l2: the output itself, clipped; sigmoid_xent: (2 sigmoid(f) - 1) b. b may be per channel
  (`bit_scales`).
  """
  if head == 'softmax_xent':
    return expected_analog_bits(out, b)
  scale = bit_scales(b, out.shape[-1] // BITS_PER_CHANNEL)
  if head == 'l2':
    return jnp.clip(out, -scale, scale)
  if head == 'sigmoid_xent':
    return (2.0 * jax.nn.sigmoid(out) - 1.0) * scale
  raise ValueError(f'Unknown loss {head!r}; valid: {HEADS}.')
