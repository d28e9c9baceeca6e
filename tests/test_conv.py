"""layers.Conv (1x1 as a product, kxk with a product-based kernel gradient) equals nn.Conv."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pix2seq_d_jax import compile_options
from pix2seq_d_jax.models import layers

CASES = [
    dict(kernel_size=(1, 1)),
    dict(kernel_size=(1, 1), use_bias=False),
    dict(kernel_size=(1, 1), strides=(2, 2)),
    dict(kernel_size=(1, 1), strides=(2, 2), padding=((0, 0), (0, 0))),
    dict(kernel_size=(1, 1), padding=((1, 0), (2, 1))),
    dict(kernel_size=(3, 3)),
    dict(kernel_size=(3, 3), padding='VALID'),
    dict(kernel_size=(3, 3), padding=((2, 0), (1, 1))),
    dict(kernel_size=(5, 3)),
    dict(kernel_size=(3, 3), strides=(2, 2)),
    dict(kernel_size=(3, 3), strides=(2, 2), padding='VALID'),
    dict(kernel_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1))),   # the backbone's
    dict(kernel_size=(7, 7), strides=(2, 2), padding=((3, 3), (3, 3))),   # the stem's
    dict(kernel_size=(5, 3), strides=(3, 2), padding=((0, 2), (1, 0))),
    dict(kernel_size=(2, 2), strides=(2, 1)),
    dict(kernel_size=(3, 3), strides=(4, 4)),            # stride above the kernel side
    dict(kernel_size=(3, 3), kernel_dilation=(2, 2)),    # lax's path
    dict(kernel_size=(3, 3), feature_group_count=2),     # lax's path
]


@pytest.mark.parametrize('case', CASES, ids=lambda c: ','.join(f'{k}={v}' for k, v in c.items()))
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_conv_matches_flax(case, dtype):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 7, 6), dtype)
  ref, ours = nn.Conv(8, dtype=dtype, **case), layers.Conv(8, dtype=dtype, **case)
  params = ref.init(jax.random.PRNGKey(1), x)
  ours_params = ours.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == jax.tree.map(
      lambda a: (a.shape, a.dtype), ours_params)
  tol = 1e-5 if dtype == jnp.float32 else 3e-2
  y_ref, y = ref.apply(params, x), ours.apply(params, x)
  assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
  np.testing.assert_allclose(np.float32(y), np.float32(y_ref), rtol=tol, atol=tol)
  probe = jax.random.normal(jax.random.PRNGKey(2), y_ref.shape, jnp.float32)

  def loss(module, p, x):
    return jnp.sum(module.apply(p, x).astype(jnp.float32) * probe)
  g_ref = jax.grad(lambda p, x: loss(ref, p, x), (0, 1))(params, x)
  g = jax.grad(lambda p, x: loss(ours, p, x), (0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    assert a.dtype == b.dtype
    scale = float(jnp.max(jnp.abs(b.astype(jnp.float32)))) or 1.0
    np.testing.assert_allclose(np.float32(a) / scale, np.float32(b) / scale, rtol=0, atol=tol)


def test_conv_takes_the_product_paths():
  """The 1x1 convolution lowers to a dot and the kxk kernel gradient to dots, not convolutions."""
  x = jnp.ones((2, 8, 8, 4))
  pointwise = layers.Conv(5, (1, 1))
  p = pointwise.init(jax.random.PRNGKey(0), x)
  text = jax.jit(jax.grad(lambda p: jnp.sum(pointwise.apply(p, x)))).lower(p).as_text()
  assert 'convolution' not in text and 'dot_general' in text
  square = layers.Conv(5, (3, 3))
  p = square.init(jax.random.PRNGKey(0), x)
  kernel_grad = jax.jit(jax.grad(lambda p: jnp.sum(square.apply(p, x) ** 2))).lower(p).as_text()
  assert kernel_grad.count('stablehlo.convolution') == 1   # the forward only; dw is one dot
  assert kernel_grad.count('dot_general') == 1
  strided = layers.Conv(5, (3, 3), strides=(2, 2))
  p = strided.init(jax.random.PRNGKey(0), x)
  kernel_grad = jax.jit(jax.grad(lambda p: jnp.sum(strided.apply(p, x) ** 2))).lower(p).as_text()
  assert kernel_grad.count('stablehlo.convolution') == 1
  assert kernel_grad.count('dot_general') == 1


SPLIT_CASES = [
    dict(kernel_size=(1, 1)),
    dict(kernel_size=(1, 1), strides=(2, 2)),
    dict(kernel_size=(3, 3)),
    dict(kernel_size=(3, 3), strides=(2, 2)),
    dict(kernel_size=(7, 7), strides=(2, 2), padding=((3, 3), (3, 3))),
]


@pytest.mark.parametrize('case', SPLIT_CASES,
                         ids=lambda c: ','.join(f'{k}={v}' for k, v in c.items()))
def test_split_kernel_gradient_matches_flax(case, monkeypatch):
  """With the contraction rows cut into parts (forced here on tiny inputs), the same gradient."""
  monkeypatch.setattr(layers, 'MIN_SPLIT_ROWS', 4)
  monkeypatch.setattr(compile_options, 'usable_cores', lambda: 4)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 12, 6))
  ref, ours = nn.Conv(8, **case), layers.Conv(8, **case)
  params = ref.init(jax.random.PRNGKey(1), x)
  probe = jax.random.normal(jax.random.PRNGKey(2), ref.apply(params, x).shape)
  g_ref = jax.grad(lambda p: jnp.sum(ref.apply(p, x) * probe))(params)['params']['kernel']
  lowered = jax.jit(jax.grad(lambda p: jnp.sum(ours.apply(p, x) * probe))).lower(params)
  assert 'batching_dims = [0] x [0]' in lowered.as_text()    # the parts as one batched product
  g = lowered.compile()(params)['params']['kernel']
  scale = float(jnp.max(jnp.abs(g_ref)))
  np.testing.assert_allclose(np.float32(g) / scale, np.float32(g_ref) / scale, rtol=0, atol=1e-5)


def test_weight_gradient_parts():
  """Rows are cut into the largest power of two of parts up to the cores that divides them
  and leaves each part MIN_SPLIT_ROWS rows; the result is the full contraction either way."""
  rows = layers.MIN_SPLIT_ROWS
  cores = compile_options.usable_cores()
  assert layers._row_parts(rows) == 1                       # one part's worth
  assert layers._row_parts(rows * 2 + 1) == 1               # odd: no equal halves
  expected = 1
  while expected * 2 <= min(cores, 8):
    expected *= 2
  assert layers._row_parts(rows * 8) == expected
  a = jax.random.normal(jax.random.PRNGKey(0), (2, rows, 5))
  b = jax.random.normal(jax.random.PRNGKey(1), (2, rows, 3))
  np.testing.assert_allclose(layers.weight_gradient(a, b), jnp.einsum('nmk,nme->ke', a, b),
                             rtol=1e-4, atol=1e-3)
  if cores >= 2:
    text = jax.jit(layers.weight_gradient).lower(a, b).as_text()
    assert 'batching_dims = [0] x [0]' in text and 'reduce' in text   # parts, summed
