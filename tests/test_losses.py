"""Tests for pix2seq_d_jax.losses: instance-size weights, the grouped softmax cross-entropy and
the ablation heads (docs/spec.md §3.3-§3.5)."""

import jax.numpy as jnp
import numpy as np
import pytest

from pix2seq_d_jax import bits
from pix2seq_d_jax import losses

# One 2x3 image: id 0 on 3 pixels, id 1 on 2, id 2 on 1 (K = 4; id 3 absent).
IDS = np.array([[[0, 0, 0], [1, 1, 2]]], np.int32)


def _np_weights(ids: np.ndarray, k: int, p: float) -> np.ndarray:
  """docs/spec.md §3.5 with loops: u(x) = (1 / (c_id(x) + 1))^p (0 for ids >= K when p > 0), scaled
  to mean 1 per image."""
  out = np.zeros(ids.shape)
  for i, m in enumerate(ids):
    counts = {v: int(np.sum(m == v)) for v in range(k)}
    u = np.zeros(m.shape)
    for pos, v in np.ndenumerate(m):
      if v < k:
        u[pos] = (1.0 / (counts[v] + 1)) ** p
      else:
        u[pos] = 1.0 if p == 0 else 0.0
    out[i] = u * m.size / u.sum()
  return out


def test_instance_size_weights_hand_example_p1():
  """p = 1 by hand: u = 1/4, 1/3, 1/2 for ids of 3, 2, 1 pixels; sum 23/12 over 6 pixels, so the
  weights are 18/23, 24/23 and 36/23."""
  w = np.asarray(losses.instance_size_weights(jnp.asarray(IDS), 4, 1.0))
  np.testing.assert_allclose(w, [[[18 / 23] * 3, [24 / 23, 24 / 23, 36 / 23]]], rtol=1e-6)


def test_instance_size_weights_ids_beyond_k_get_zero():
  """An id >= K gets weight 0 and does not count (p = 1: u = 1/4, 1/3, 0 -> 18/17, 24/17, 0);
  with p = 0 every pixel weighs 1, as TF's pow(0, 0) = 1."""
  ids = np.array([[[0, 0, 0], [1, 1, 5]]], np.int32)
  w = np.asarray(losses.instance_size_weights(jnp.asarray(ids), 4, 1.0))
  np.testing.assert_allclose(w, [[[18 / 17] * 3, [24 / 17, 24 / 17, 0.0]]], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(losses.instance_size_weights(jnp.asarray(ids), 4, 0.0)),
                                np.ones(ids.shape))


@pytest.mark.parametrize('p', [0.0, 0.2, 0.5, 1.0, 2.0])
def test_instance_size_weights_follow_power_law_with_mean_one(p):
  """For random id maps (including ids >= K): the weights equal the loop reference, have mean 1
  per image, and the ratio of two pixels' weights is ((c_b + 1) / (c_a + 1))^p."""
  rng = np.random.default_rng(int(10 * p))
  ids = rng.choice(np.arange(8), p=[0.4, 0.2, 0.15, 0.1, 0.05, 0.04, 0.03, 0.03],
                   size=(3, 8, 10)).astype(np.int32)
  k = 7
  w = np.asarray(losses.instance_size_weights(jnp.asarray(ids), k, p))
  assert w.shape == ids.shape and w.dtype == np.float32
  np.testing.assert_allclose(w, _np_weights(ids, k, p), rtol=1e-5)
  np.testing.assert_allclose(w.mean(axis=(1, 2)), 1.0, rtol=1e-5)
  counts = np.sum(ids[0] == 0), np.sum(ids[0] == 1)
  ratio = w[0][ids[0] == 1][0] / w[0][ids[0] == 0][0]
  assert ratio == pytest.approx(((counts[0] + 1) / (counts[1] + 1)) ** p, rel=1e-5)


def _np_log_softmax(z):
  z = z.astype(np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def test_softmax_xent_matches_numpy_reference_with_weights():
  """Loss = mean over (b, x, g) of w(x) * -log softmax(z)[y], per group = mean over (b, x); both
  against float64 numpy."""
  rng = np.random.default_rng(0)
  logits = (2 * rng.normal(size=(2, 3, 4, 2, 256))).astype(np.float32)
  masks = np.stack([rng.integers(0, 9, (2, 3, 4)), rng.integers(0, 256, (2, 3, 4))], -1)
  weights = rng.uniform(0, 2, (2, 3, 4)).astype(np.float32)
  ce = -np.take_along_axis(_np_log_softmax(logits), masks[..., None], -1)[..., 0]
  weighted = ce * weights[..., None]
  total, per_group = losses.softmax_xent_loss(jnp.asarray(logits), jnp.asarray(masks),
                                              jnp.asarray(weights))
  assert float(total) == pytest.approx(weighted.mean(), rel=1e-5)
  np.testing.assert_allclose(np.asarray(per_group), weighted.mean(axis=(0, 1, 2)), rtol=1e-5)


def test_diffusion_loss_names_the_groups():
  """Group 0 is the class, group 1 the id: a perfect class head and a uniform id head give
  loss_class ~ 0, loss_id = ln 256 and the total their mean."""
  rng = np.random.default_rng(1)
  masks = np.stack([rng.integers(0, 9, (2, 4, 4)), rng.integers(0, 16, (2, 4, 4))], -1)
  logits = np.zeros((2, 4, 4, 2, 256), np.float32)
  np.put_along_axis(logits[..., 0, :], masks[..., :1], 50.0, axis=-1)
  x0 = bits.map_to_analog_bits(jnp.asarray(masks), 0.1)
  total, parts = losses.diffusion_loss(jnp.asarray(logits), jnp.asarray(masks), x0,
                                       jnp.ones((2, 4, 4)), 'softmax_xent', 0.1)
  assert float(parts['loss_class']) < 1e-6
  assert float(parts['loss_id']) == pytest.approx(np.log(256), rel=1e-6)
  assert float(total) == pytest.approx(np.log(256) / 2, rel=1e-6)


def test_class_loss_weight_is_a_weighted_mean_of_the_groups():
  """class_weight w gives (w * CE_class + CE_id) / (w + 1); the per-group parts are unweighted."""
  rng = np.random.default_rng(2)
  logits = (2 * rng.normal(size=(2, 3, 4, 2, 256))).astype(np.float32)
  masks = np.stack([rng.integers(0, 9, (2, 3, 4)), rng.integers(0, 256, (2, 3, 4))], -1)
  weights = rng.uniform(0, 2, (2, 3, 4)).astype(np.float32)
  ce = -np.take_along_axis(_np_log_softmax(logits), masks[..., None], -1)[..., 0]
  per_group = (ce * weights[..., None]).mean(axis=(0, 1, 2))
  args = (jnp.asarray(logits), jnp.asarray(masks), jnp.asarray(weights))
  total, parts = losses.softmax_xent_loss(*args, class_weight=3.0)
  assert float(total) == pytest.approx((3 * per_group[0] + per_group[1]) / 4, rel=1e-5)
  np.testing.assert_allclose(np.asarray(parts), per_group, rtol=1e-5)
  x0 = bits.map_to_analog_bits(jnp.asarray(masks), 0.1)
  via, _ = losses.diffusion_loss(args[0], args[1], x0, args[2], 'softmax_xent', 0.1, 3.0)
  assert float(via) == pytest.approx(float(total), rel=1e-6)
  with pytest.raises(ValueError, match='class_loss_weight'):
    losses.diffusion_loss(x0, args[1], x0, args[2], 'l2', 0.1, 3.0)


def test_ablation_losses_and_x0_estimates():
  """l2: mean w (x0 - f)^2; sigmoid: mean -log(sigmoid(f x0 / b) + 1e-8) w; their x0 estimates
  are clip(f, -b, b) and (2 sigmoid(f) - 1) b; the softmax head's is the expected bits; an
  unknown loss name raises."""
  rng = np.random.default_rng(2)
  b = 0.1
  masks = rng.integers(0, 16, (2, 3, 3, 2))
  x0 = np.asarray(bits.map_to_analog_bits(jnp.asarray(masks), b))
  f = rng.normal(size=x0.shape).astype(np.float32)
  w = rng.uniform(0, 2, (2, 3, 3)).astype(np.float32)
  args = (jnp.asarray(f), jnp.asarray(masks), jnp.asarray(x0), jnp.asarray(w))
  l2, _ = losses.diffusion_loss(*args, 'l2', b)
  assert float(l2) == pytest.approx(np.mean(w[..., None] * (x0 - f) ** 2), rel=1e-5)
  sig, _ = losses.diffusion_loss(*args, 'sigmoid_xent', b)
  ref = np.mean(-np.log(1 / (1 + np.exp(-f.astype(np.float64) * x0 / b)) + 1e-8) * w[..., None])
  assert float(sig) == pytest.approx(ref, rel=1e-5)
  np.testing.assert_allclose(np.asarray(bits.x0_from_output(jnp.asarray(f), 'l2', b)),
                             np.clip(f, -b, b))
  np.testing.assert_allclose(np.asarray(bits.x0_from_output(jnp.asarray(f), 'sigmoid_xent', b)),
                             (2 / (1 + np.exp(-f.astype(np.float64))) - 1) * b, rtol=1e-5,
                             atol=1e-7)
  logits = np.full((2, 3, 3, 2, 256), -1e4, np.float32)
  np.put_along_axis(logits, masks[..., None], 1e4, axis=-1)
  np.testing.assert_array_equal(
      np.asarray(bits.x0_from_output(jnp.asarray(logits), 'softmax_xent', b)), x0)
  with pytest.raises(ValueError, match='softmax_xent'):
    losses.diffusion_loss(*args, 'hinge', b)
  with pytest.raises(ValueError, match='softmax_xent'):
    bits.x0_from_output(jnp.asarray(f), 'hinge', b)
