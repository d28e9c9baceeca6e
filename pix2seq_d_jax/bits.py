"""Integer panoptic maps <-> analog bits (SPEC §1.4, §3.3, §4.5).

A panoptic map is int32 [..., C] with C channels (2 for an image: class, instance id). Each channel is
written with `bits_per_channel` (8) bits, least significant bit first, channels in order, so an image
map becomes 16 bits [class bit0..bit7, id bit0..bit7]. Analog bits map {0, 1} to {-b, +b}.
"""

import jax
import jax.numpy as jnp

BITS_PER_CHANNEL = 8


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


def map_to_analog_bits(m: jax.Array, b: float,
                       bits_per_channel: int = BITS_PER_CHANNEL) -> jax.Array:
  """Panoptic map int [..., C] in [0, 2^bits) -> analog bits float32 [..., C * bits] in {-b, +b}."""
  bits = int_to_bits(m, bits_per_channel)                       # [..., C, n]
  bits = bits.reshape(*m.shape[:-1], m.shape[-1] * bits_per_channel)
  return (2.0 * bits.astype(jnp.float32) - 1.0) * b


def analog_bits_to_map(x: jax.Array, num_channels: int,
                       max_values: tuple[int, ...] | None = None) -> jax.Array:
  """Per-bit threshold decoding (the reference decoding, SPEC §4.5).

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


def expected_analog_bits(logits: jax.Array, b: float) -> jax.Array:
  """Expected analog bits under grouped softmaxes (SPEC §3.3).

  Args:
    logits: float [..., G, 2^n]: one softmax over the 2^n values of each group of n bits.
    b: analog bit scale.

  Returns:
    float32 [..., G * n] in [-b, b]: (2 E[bit] - 1) b, groups in order, bits LSB first.
  """
  num_values = logits.shape[-1]
  n = num_values.bit_length() - 1
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  e = jnp.einsum('...gk,kn->...gn', p, bit_table(n))
  e = e.reshape(*logits.shape[:-2], logits.shape[-2] * n)
  return (2.0 * e - 1.0) * b


def argmax_decode(logits: jax.Array, max_values: tuple[int, ...] | None = None) -> jax.Array:
  """Argmax of each group's softmax: float [..., G, 2^n] -> int32 [..., G] (Decision 5)."""
  if max_values is not None:
    # Values a channel can never hold (classes >= num_classes, ids >= K) are excluded.
    limits = jnp.asarray(max_values, jnp.int32)[:, None]
    valid = jnp.arange(logits.shape[-1])[None, :] < limits
    logits = jnp.where(valid, logits, -jnp.inf)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)
