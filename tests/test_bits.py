"""Tests for pix2seq_d_jax.bits: integer maps <-> analog bits, expected bits of the softmax head
and the two decodings (docs/spec.md §1.4, §3.3, §4.5, docs/decisions.md §5, §8)."""

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax.numpy as jnp
import numpy as np
import pytest

from pix2seq_d_jax import bits


def _np_bits(values, n: int = 8) -> np.ndarray:
  """Reference bits by integer division: int [...] -> {0, 1} [..., n], least significant first."""
  values = np.asarray(values, np.int64)
  return (values[..., None] // (2 ** np.arange(n))) % 2


def _np_analog(m, b: float) -> np.ndarray:
  """Reference analog bits of a map [..., C]: channels in order, 8 bits each, {0,1} -> {-b,b}."""
  m = np.asarray(m)
  flat = _np_bits(m).reshape(*m.shape[:-1], m.shape[-1] * 8)
  return np.where(flat == 1, np.float32(b), -np.float32(b))


@pytest.fixture(scope='module')
def encode_decode(jit):
  """Jitted (m, b) -> (analog bits of m, their threshold decoding)."""
  def fn(m, b):
    x = bits.map_to_analog_bits(m, b)
    return x, bits.analog_bits_to_map(x, 2)
  return jit(fn)


def test_every_8bit_value_round_trips_in_both_channels(encode_decode):
  """All 256 values in the class channel and in the id channel encode to the reference bits
  (LSB first, class bits then id bits) and decode back unchanged."""
  v = np.arange(256)
  m = np.stack([v, 255 - v], axis=-1).astype(np.int32)                     # [256, 2]
  x, back = encode_decode(m, 0.1)
  assert x.shape == (256, 16) and x.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(x), _np_analog(m, 0.1))
  np.testing.assert_array_equal(np.asarray(back), m)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    m=hnp.arrays(np.int32,
                 hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3).map(
                     lambda s: s + (2,)),
                 elements=st.integers(0, 255)),
    b=st.sampled_from([0.03, 0.1, 0.3, 1.0]))
def test_round_trip_property_on_random_maps(encode_decode, m, b):
  """For maps of any shape [..., 2] with values in [0, 256): the analog bits equal the numpy
  reference and thresholding them at 0 gives the map back."""
  x, back = encode_decode(m, np.float32(b))
  assert x.shape == m.shape[:-1] + (16,)
  np.testing.assert_array_equal(np.asarray(x), _np_analog(m, b))
  np.testing.assert_array_equal(np.asarray(back), m)


def test_bit_order_is_lsb_first_class_then_instance():
  """Hand-written: (class 1, id 128) and (class 6, id 3) give the bit layouts of
  docs/spec.md §1.4."""
  x = np.asarray(bits.map_to_analog_bits(jnp.array([[1, 128], [6, 3]]), 1.0))
  np.testing.assert_array_equal(x[0], [1, -1, -1, -1, -1, -1, -1, -1,
                                       -1, -1, -1, -1, -1, -1, -1, 1])
  np.testing.assert_array_equal(x[1], [-1, 1, 1, -1, -1, -1, -1, -1,
                                       1, 1, -1, -1, -1, -1, -1, -1])
  np.testing.assert_array_equal(np.asarray(bits.int_to_bits(jnp.array(5), 4)), [1, 0, 1, 0])
  assert int(bits.bits_to_int(jnp.array([0, 1, 1]))) == 6
  assert int(bits.bits_to_int(jnp.array([True, False, False, False, False, False, False,
                                         True]))) == 129


def test_analog_values_are_exactly_plus_minus_b():
  """Every analog bit is exactly +b or -b (float32) for several b, with both signs present."""
  m = jnp.array([[[0, 255], [170, 85]]])
  for b in (0.03, 0.1, 1.0):
    x = np.asarray(bits.map_to_analog_bits(m, b))
    assert set(np.unique(x).tolist()) == {float(np.float32(-b)), float(np.float32(b))}


def test_expected_bits_of_one_hot_softmax_are_exactly_the_bits():
  """A softmax with one huge logit per group puts probability 1 on that value, so the expected
  analog bits equal that value's analog bits exactly, groups in order (class, id)."""
  rng = np.random.default_rng(0)
  values = rng.integers(0, 256, size=(3, 4, 2))
  logits = np.full((3, 4, 2, 256), -1e4, np.float32)
  np.put_along_axis(logits, values[..., None], 1e4, axis=-1)
  x = np.asarray(bits.expected_analog_bits(jnp.asarray(logits), 0.1))
  np.testing.assert_array_equal(x, _np_analog(values, 0.1))


def test_expected_bits_match_brute_force_expectation():
  """For random logits, (2 E[bit_j] - 1) b equals a float64 brute force over all 256 values of
  each group: E[bit_j] = sum_k softmax(z)_k * ((k >> j) & 1)."""
  rng = np.random.default_rng(1)
  logits = (3.0 * rng.normal(size=(2, 3, 2, 256))).astype(np.float32)
  b = 0.1
  z = logits.astype(np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  expected = np.zeros((2, 3, 2, 8))
  for k in range(256):
    for j in range(8):
      if (k >> j) & 1:
        expected[..., j] += p[..., k]
  expected = ((2 * expected - 1) * b).reshape(2, 3, 16)
  x = np.asarray(bits.expected_analog_bits(jnp.asarray(logits), b))
  assert x.shape == (2, 3, 16) and x.dtype == np.float32
  np.testing.assert_allclose(x, expected, atol=2e-7)


def test_threshold_decoding_reads_each_bit_as_positive():
  """Per-bit decoding: bit = x > 0 (0 counts as 0); 165 = 0b10100101 from hand-set signs, and
  max_values clips to max - 1 only the values at or above the bound."""
  def analog(cls_bits, id_bits):
    return jnp.asarray(np.array(cls_bits + id_bits, np.float32))
  # class bits LSB first 1,0,1,0,0,1,0,1 = 165; id bits 0,1,0,0,0,0,0,0 = 2, with exact zeros
  # and tiny values to check the strict threshold.
  x = analog([0.2, -0.1, 1e-6, 0.0, -1e-6, 0.05, 0.0, 0.1], [0.0, 0.3, -0.3, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(np.asarray(bits.analog_bits_to_map(x, 2)), [165, 2])
  clipped = bits.analog_bits_to_map(jnp.stack([x, -x]), 2, max_values=(9, 16))
  # -x flips every non-zero bit (zeros stay 0): class 0b00010010 = 18 -> 8, id 0b100 = 4.
  np.testing.assert_array_equal(np.asarray(clipped), [[8, 2], [8, 4]])
  small = bits.map_to_analog_bits(jnp.array([[3, 20]]), 0.1)
  np.testing.assert_array_equal(np.asarray(bits.analog_bits_to_map(small, 2, (9, 16))), [[3, 15]])


def test_argmax_decoding_per_group_and_excluding_impossible_values():
  """Argmax decoding picks each group's largest logit; with max_values the impossible values
  (class >= num_classes, id >= K) are excluded, so the best *possible* value wins (not a
  clipped impossible one)."""
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(4, 5, 2, 256)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(bits.argmax_decode(jnp.asarray(logits))),
                                np.argmax(logits, axis=-1))
  z = np.zeros((2, 256), np.float32)
  z[0, 200], z[0, 3] = 10.0, 5.0     # class: best overall 200 (impossible), best possible 3
  z[1, 20], z[1, 7] = 10.0, 5.0      # id: best overall 20 (impossible for K = 16), best 7
  np.testing.assert_array_equal(np.asarray(bits.argmax_decode(jnp.asarray(z))), [200, 20])
  np.testing.assert_array_equal(np.asarray(bits.argmax_decode(jnp.asarray(z), (9, 16))), [3, 7])
  limited = bits.argmax_decode(jnp.asarray(logits), (9, 16))
  np.testing.assert_array_equal(np.asarray(limited[..., 0]), np.argmax(logits[..., 0, :9], -1))
  np.testing.assert_array_equal(np.asarray(limited[..., 1]), np.argmax(logits[..., 1, :16], -1))


def test_per_channel_scales_apply_to_class_and_id_bits_and_repeat_over_frames():
  """b = (b_class, b_instance) scales the class bits by b_class and the id bits by b_instance; the
  stacked [class, id, class, id] channels of two video frames repeat the pair."""
  m = np.array([[[5, 200]], [[0, 1]]], np.int32)                      # [2, 1, 2]
  got = np.asarray(bits.map_to_analog_bits(jnp.asarray(m), (0.1, 0.5)))
  want = np.concatenate([_np_analog(m[..., :1], 0.1), _np_analog(m[..., 1:], 0.5)], axis=-1)
  np.testing.assert_array_equal(got, want)
  two_frames = np.concatenate([m, m[::-1]], axis=-1)                  # [2, 1, 4]
  got = np.asarray(bits.map_to_analog_bits(jnp.asarray(two_frames), (0.1, 0.5)))
  np.testing.assert_array_equal(np.abs(got[..., :8]), np.float32(0.1))
  np.testing.assert_array_equal(np.abs(got[..., 8:16]), np.float32(0.5))
  np.testing.assert_array_equal(np.abs(got[..., 16:24]), np.float32(0.1))
  np.testing.assert_array_equal(np.abs(got[..., 24:]), np.float32(0.5))
  # A scalar and an equal pair give identical values.
  np.testing.assert_array_equal(np.asarray(bits.map_to_analog_bits(jnp.asarray(m), 0.3)),
                                np.asarray(bits.map_to_analog_bits(jnp.asarray(m), (0.3, 0.3))))


def test_expected_bits_of_one_hot_with_per_channel_scales():
  values = np.array([9, 77])
  logits = np.full((2, 256), -1e9, np.float32)
  logits[np.arange(2), values] = 0.0
  got = np.asarray(bits.expected_analog_bits(jnp.asarray(logits), (0.1, 0.5)))
  np.testing.assert_allclose(got, _np_analog_pair(values), atol=1e-7)


def _np_analog_pair(values):
  return np.concatenate([_np_analog(values[:1], 0.1), _np_analog(values[1:], 0.5)])


def test_scale_from_config():
  assert bits.scale_from_config(0.1, 0.0) == 0.1          # the reference: one scale
  assert bits.scale_from_config(0.1, 0.1) == 0.1
  assert bits.scale_from_config(0.1, 0.5) == (0.1, 0.5)
  with pytest.raises(ValueError, match='instance_b'):
    bits.scale_from_config(0.1, -1.0)
