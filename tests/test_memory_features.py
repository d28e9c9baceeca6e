"""What lets the paper model fit an accelerator: memory-efficient attention, rematerialisation,
gradient accumulation, bfloat16 compute and the one-hot-free loss weights."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pix2seq_d_jax import losses
from pix2seq_d_jax import state as state_lib
from pix2seq_d_jax import train_step as train_lib
from pix2seq_d_jax.models import layers
from pix2seq_d_jax.models import pix2seq_d
from pix2seq_d_jax.models import transunet

NO_DROPOUT = ('model.encoder.dropout=0.0', 'model.encoder.drop_path=0.0',
              'model.decoder.dropout=0.0')

# ---------------------------------------------------------------------------------------------
# Attention.


def _qkv(dtype, t=77, s=130, heads=3, dim=16, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(k[0], (2, t, heads, dim)).astype(dtype)
  key = jax.random.normal(k[1], (2, s, heads, dim)).astype(dtype)
  value = jax.random.normal(k[2], (2, s, heads, dim)).astype(dtype)
  cotangent = jax.random.normal(k[3], (2, t, heads, dim)).astype(dtype)
  return q, key, value, cotangent


def _plain(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, implementation='xla')


@pytest.mark.parametrize('dtype,tol', [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize('t,s,chunk', [(77, 130, 32), (64, 64, 64), (5, 300, 512)])
def test_chunked_attention_matches_plain_forward_and_gradient(dtype, tol, t, s, chunk):
  """Online softmax over key blocks (the last one padded) = the plain S x S softmax: outputs and
  the gradients of q, k and v, in float32 (1e-5) and bfloat16 (2e-2)."""
  q, k, v, g = _qkv(dtype, t, s)
  chunked = lambda q, k, v: layers.chunked_attention(q, k, v, chunk)
  as32 = lambda x: np.asarray(x, np.float32)
  np.testing.assert_allclose(as32(chunked(q, k, v)), as32(_plain(q, k, v)), atol=tol, rtol=0)

  def grads(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * g.astype(jnp.float32))
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  for got, want in zip(grads(chunked), grads(_plain)):
    assert got.dtype == dtype
    np.testing.assert_allclose(as32(got), as32(want), atol=tol, rtol=0)


def test_chunked_attention_holds_no_score_matrix():
  """The optimised program of the chunked path's gradient has no [T, S]-sized buffer: its
  largest temporary is far below the plain path's, whose scores are T x S per head."""
  q, k, v, g = _qkv(jnp.float32, t=1024, s=1024, heads=2, dim=8)

  def temp_bytes(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v) * g)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    return compiled.memory_analysis().temp_size_in_bytes
  scores = 2 * 2 * 1024 * 1024 * 4           # B x N x T x S float32
  plain = temp_bytes(_plain)
  chunked = temp_bytes(lambda q, k, v: layers.chunked_attention(q, k, v, 128))
  assert plain >= scores
  assert chunked < scores / 2, (chunked, plain)


@pytest.mark.parametrize('backend,dtype,kv_len,head_dim,want', [
    ('gpu', jnp.bfloat16, 4097, 64, 'cudnn'),
    ('gpu', jnp.float16, 16, 64, 'cudnn'),
    ('gpu', jnp.float32, 4097, 64, 'chunked'),   # cuDNN flash needs half precision
    ('gpu', jnp.bfloat16, 4097, 160, 'chunked'),  # head_dim beyond cuDNN's limit
    ('gpu', jnp.float32, 16, 64, 'xla'),
    ('tpu', jnp.bfloat16, 4097, 64, 'tpu_flash'),
    ('tpu', jnp.float32, 16, 32, 'tpu_flash'),
    ('cpu', jnp.bfloat16, 4096, 32, 'chunked'),
    ('cpu', jnp.float32, 1023, 32, 'xla'),
    ('cpu', jnp.float32, 1024, 32, 'chunked'),
])
def test_auto_attention_picks_the_path_by_backend_dtype_and_length(backend, dtype, kv_len,
                                                                   head_dim, want):
  assert layers.resolve_attention('auto', backend, dtype, kv_len, head_dim) == want
  assert layers.resolve_attention('xla', backend, dtype, kv_len, head_dim) == 'xla'


def test_unknown_attention_remat_and_norm_names_raise(tiny_config):
  for key, value, valid in (('model.attention', 'flash', 'chunked'),
                            ('model.remat', 'all', 'blocks'),
                            ('model.remat_policy', 'dots', 'nothing_saveable'),
                            ('model.backbone.norm', 'group', 'frozen')):
    with pytest.raises(ValueError, match=re.escape(key) + '.*' + valid):
      pix2seq_d.build_model(tiny_config(f'{key}={value}'))


def _encode_decode(model, variables, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
  x_t = rng.normal(size=(2, 16, 16, 16)).astype(np.float32)
  gamma = np.array([0.3, 0.9], np.float32)

  def fn(v):
    enc, tokens = model.apply(v, images, train=False, method='encode')
    return enc, tokens, model.apply(v, x_t, gamma, enc, tokens, train=False, method='decode')
  return jax.jit(fn)(variables)


def test_model_gives_the_same_outputs_with_chunked_attention(tiny_config, random_variables,
                                                             monkeypatch):
  """The whole model with attention='chunked' (blocks of 16 keys, so the decoder's 65 tokens
  span five blocks) reproduces attention='xla'."""
  monkeypatch.setattr(layers, 'CHUNK_SIZE', 16)
  plain = pix2seq_d.build_model(tiny_config('model.attention=xla'))
  chunked = pix2seq_d.build_model(tiny_config('model.attention=chunked'))
  variables = random_variables(plain, tiny_config())
  for got, want in zip(_encode_decode(chunked, variables), _encode_decode(plain, variables)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Rematerialisation and gradient accumulation, through the real train step.

def _batch(batch=4, seed=0):
  rng = np.random.default_rng(seed)
  masks = np.stack([rng.integers(0, 9, (batch, 16, 16)), rng.integers(0, 6, (batch, 16, 16))],
                   -1).astype(np.int32)
  return {'image': rng.uniform(size=(batch, 32, 32, 3)).astype(np.float32), 'masks': masks}


def _one_step(config, variables, jit, batch):
  model = pix2seq_d.build_model(config)
  tx = optax.flatten(state_lib.make_optimizer(config, 1000, 0)[0])
  state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables['params'],
      batch_stats=variables['batch_stats'], ema_params=variables['params'],
      ema_batch_stats=variables['batch_stats'], opt_state=jit(tx.init)(variables['params']),
      rng=jax.random.PRNGKey(0))
  grads = {}

  def capture(updates, opt_state, params=None):   # records the gradient the optimizer sees
    grads['g'] = updates
    return tx.update(updates, opt_state, params)
  step = functools.partial(train_lib.train_step, model=model,
                           tx=optax.GradientTransformation(tx.init, capture),
                           lr_schedule=optax.constant_schedule(0.0),
                           settings=train_lib.StepSettings.from_config(config))

  def run(state, batch):
    new, metrics = step(state, batch)
    return new, metrics, grads['g']
  return jit(run)(state, batch)


def _assert_trees_close(a, b, rtol, atol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for path_x, y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    path, x = path_x
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('policy', ['nothing_saveable', 'dots_saveable'])
def test_remat_keeps_parameters_loss_and_gradients(tiny_config, random_variables, jit, policy):
  """model.remat='blocks': the same parameter and state trees (names, shapes, dtypes; so
  checkpoints are interchangeable), the same initial values, and the same loss and gradients of
  one train step (self-conditioning on, so the decoder runs twice)."""
  base = tiny_config(*NO_DROPOUT, 'diffusion.self_condition=True')
  remat = tiny_config(*NO_DROPOUT, 'diffusion.self_condition=True', 'model.remat=blocks',
                      f'model.remat_policy={policy}')
  shapes = lambda c: jax.tree.map(lambda x: (x.shape, x.dtype), state_lib.abstract_state(c))
  assert jax.tree_util.tree_flatten_with_path(shapes(base)) == \
      jax.tree_util.tree_flatten_with_path(shapes(remat))
  init = lambda c: jax.jit(lambda: pix2seq_d.build_model(c).init(
      jax.random.PRNGKey(3), *pix2seq_d.init_inputs(c)[:3], train=False))()
  _assert_trees_close(init(base), init(remat), rtol=0, atol=0)

  variables = random_variables(pix2seq_d.build_model(base), base)
  _, m0, g0 = _one_step(base, variables, jit, _batch())
  _, m1, g1 = _one_step(remat, variables, jit, _batch())
  np.testing.assert_allclose(float(m1['loss']), float(m0['loss']), rtol=1e-5)
  _assert_trees_close(g1, g0, rtol=1e-4, atol=1e-6)


def test_remat_recomputes_in_the_backward_pass(tiny_config):
  """The gradient program of a rematerialised model holds `checkpoint`/`remat` regions (one per
  block), the plain one none."""
  def count(config):
    model = pix2seq_d.build_model(config)
    images, x_t, gamma, _ = pix2seq_d.init_inputs(config, 2)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, x_t, gamma))
    loss = lambda p, bs: jnp.sum(model.apply({'params': p, 'batch_stats': bs}, images, x_t,
                                             gamma, train=True, mutable=['batch_stats'],
                                             rngs={'dropout': jax.random.PRNGKey(0)})[0])
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(variables['params'], variables['batch_stats']))
    return jaxpr.count('remat') + jaxpr.count('checkpoint[')
  assert count(tiny_config()) == 0
  # At least one region per block: 3 bottlenecks, 1 encoder layer, 6 decoder ResBlocks (two
  # levels: one down and two up blocks each) and 1 bottleneck layer.
  assert count(tiny_config('model.remat=blocks')) >= 11


@pytest.mark.parametrize('microbatches', [2, 4])
def test_microbatches_give_the_single_pass_update_without_batch_statistics(
    tiny_config, random_variables, jit, microbatches):
  """train.microbatches = M with frozen BatchNorm and no dropout: the same loss, gradient,
  parameters and EMA after one step as the whole batch in one pass."""
  base = tiny_config(*NO_DROPOUT, 'model.backbone.norm=frozen', 'train.learning_rate=0.01',
                     'diffusion.self_condition=True')
  micro = tiny_config(*NO_DROPOUT, 'model.backbone.norm=frozen', 'train.learning_rate=0.01',
                      'diffusion.self_condition=True', f'train.microbatches={microbatches}')
  variables = random_variables(pix2seq_d.build_model(base), base)
  s0, m0, g0 = _one_step(base, variables, jit, _batch())
  s1, m1, g1 = _one_step(micro, variables, jit, _batch())
  np.testing.assert_allclose(float(m1['loss']), float(m0['loss']), rtol=1e-5)
  _assert_trees_close(g1, g0, rtol=1e-4, atol=1e-7)
  # Adam's first step is ~ lr * g / (|g| + eps): where |g| is float noise around 0 (attention key
  # biases, to which softmax is invariant, and a few single weights) any difference of g flips a
  # full-size step. The update is compared where the gradient is determined (|g| > 1e-6).
  for new0, new1, g, old in zip(jax.tree.leaves(s0.params), jax.tree.leaves(s1.params),
                                jax.tree.leaves(g0), jax.tree.leaves(variables['params'])):
    determined = np.abs(np.asarray(g)) > 1e-6
    np.testing.assert_allclose(np.asarray(new1 - old)[determined],
                               np.asarray(new0 - old)[determined], rtol=0, atol=2e-6)
  _assert_trees_close(s1.batch_stats, variables['batch_stats'], rtol=1e-6, atol=0)


def test_microbatches_with_batch_norm_update_statistics_once_per_step(tiny_config,
                                                                      random_variables, jit):
  """With BatchNorm, each microbatch is normalised by its own statistics: the loss differs a
  little from the single pass, and the running statistics move by the mean of the microbatches'
  updates (one momentum step, not M)."""
  base = tiny_config(*NO_DROPOUT)
  micro = tiny_config(*NO_DROPOUT, 'train.microbatches=2')
  variables = random_variables(pix2seq_d.build_model(base), base)
  batch = _batch()
  s0, m0, _ = _one_step(base, variables, jit, batch)
  s1, m1, _ = _one_step(micro, variables, jit, batch)
  assert np.isfinite(float(m1['loss'])) and float(m1['loss']) != float(m0['loss'])

  # Running means after one step: 0.9 old + 0.1 mean over microbatches of their batch means.
  # For the stem (the first BatchNorm, fed by a linear conv of the images) that mean of means
  # is the whole batch's mean, so the stem's running mean matches the single pass.
  got = np.asarray(s1.batch_stats['backbone']['stem_bn']['mean'])
  want = np.asarray(s0.batch_stats['backbone']['stem_bn']['mean'])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  old = np.asarray(variables['batch_stats']['backbone']['stem_bn']['mean'])
  assert np.abs(got - old).max() > 1e-4


def test_microbatches_must_divide_the_batch(tiny_config, random_variables, jit):
  config = tiny_config('train.microbatches=3')
  variables = random_variables(pix2seq_d.build_model(config), config)
  with pytest.raises(ValueError, match='train.microbatches=3'):
    _one_step(config, variables, jit, _batch(4))


# ---------------------------------------------------------------------------------------------
# bfloat16 compute.

def _f32_matmuls(config):
  """(convolution / dot_general ops of the lowered bf16 train step with a float32 operand,
  the number of all such ops)."""
  model = pix2seq_d.build_model(config)
  tx, schedule = state_lib.make_optimizer(config, 1000, 0)
  abstract = state_lib.abstract_state(config)
  batch = {'image': jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
           'masks': jax.ShapeDtypeStruct((2, 16, 16, 2), jnp.int32)}
  step = functools.partial(train_lib.train_step, model=model, tx=tx, lr_schedule=schedule,
                           settings=train_lib.StepSettings.from_config(config))
  text = jax.jit(step).lower(abstract, batch).as_text(debug_info=True)
  locations = dict(re.findall(r'^(#loc\d+) = loc\((.*)\)$', text, re.M))
  offenders, total = [], 0
  for line in text.splitlines():
    op = re.search(r'stablehlo\.(convolution|dot_general)', line)
    operands = re.search(r':\s*\((.*?)\)\s*->', line)
    if not op or not operands:
      continue
    total += 1
    if 'f32' in operands.group(1):
      loc = re.search(r'loc\((#loc\d+)\)', line)
      name = locations.get(loc.group(1), '') if loc else ''
      offenders.append((op.group(1), operands.group(1), name))
  return offenders, total


# Where float32 may meet a matmul: the attention scores (their softmax is float32, so the score
# einsum's cotangent is float32) and the expected bits of the float32 logits (self-conditioning).
ALLOWED_F32 = ('BTNH,BSNH->BNTS', 'bnts,', 'expected_analog_bits')


def test_bfloat16_train_step_runs_every_convolution_and_matmul_in_bfloat16(tiny_config):
  """The lowered HLO of the bf16 train step (forward and backward, self-conditioning on): no
  convolution or dot has a float32 operand except in the attention softmax and the decoding of
  the float32 logits."""
  offenders, total = _f32_matmuls(tiny_config('model.dtype=bfloat16',
                                              'diffusion.self_condition=True'))
  assert total > 50
  bad = [o for o in offenders if not any(a in o[2] for a in ALLOWED_F32)]
  assert not bad, bad[:5]
  # And the check sees float32 where there is some: the float32 model has only such ops.
  offenders32, total32 = _f32_matmuls(tiny_config())
  assert len(offenders32) == total32


def test_bfloat16_activations_stay_bfloat16_from_stem_to_head(tiny_config):
  """Every module's output in a bf16 training forward pass is bfloat16, except the logits
  (float32 for the loss); this is what a float32 constant in a residual sum would break."""
  config = tiny_config('model.dtype=bfloat16')
  model = pix2seq_d.build_model(config)
  images, x_t, gamma, _ = pix2seq_d.init_inputs(config, 2)

  def forward():
    variables = model.init(jax.random.PRNGKey(0), images, x_t, gamma)
    return model.apply(variables, images, x_t, gamma, train=True, capture_intermediates=True,
                       mutable=['intermediates', 'batch_stats'],
                       rngs={'dropout': jax.random.PRNGKey(1)})[1]['intermediates']
  outputs = jax.tree_util.tree_flatten_with_path(jax.eval_shape(forward))[0]
  assert len(outputs) > 100
  not_bf16 = [jax.tree_util.keystr(p) for p, x in outputs if x.dtype != jnp.bfloat16]
  assert sorted(not_bf16) == ["['__call__'][0]", "['decoder']['__call__'][0]"], not_bf16


def test_resblock_output_keeps_the_compute_dtype():
  block = transunet.ResBlock(8, 0.0, jnp.bfloat16)
  x = jnp.zeros((1, 4, 4, 8), jnp.bfloat16)
  emb = jnp.zeros((1, 32), jnp.bfloat16)
  out = jax.eval_shape(lambda: block.init_with_output(jax.random.PRNGKey(0), x, emb, False)[0])
  assert out.dtype == jnp.bfloat16


# ---------------------------------------------------------------------------------------------
# Loss weights.

def _one_hot_weights(ids, num_ids, p):
  """The former implementation: counts from a [B, h w, K] one-hot (numpy)."""
  flat = ids.reshape(ids.shape[0], -1)
  valid = flat < num_ids
  one_hot = np.eye(num_ids, dtype=np.float64)[np.where(valid, flat, 0)] * valid[..., None]
  per_id = (1.0 / (one_hot.sum(1) + 1.0)) ** p
  u = np.take_along_axis(per_id, np.where(valid, flat, 0), axis=1) * valid
  return (u * flat.shape[1] / u.sum(1, keepdims=True)).reshape(ids.shape)


@pytest.mark.parametrize('p', [0.2, 0.7, 1.0])
def test_instance_size_weights_equal_the_one_hot_counts(p):
  rng = np.random.default_rng(int(p * 10))
  ids = rng.integers(0, 12, (3, 24, 20)).astype(np.int32)   # ids >= K = 10 get weight 0
  ids[1, :12] = 3                                            # one large segment
  got = np.asarray(jax.jit(losses.instance_size_weights, static_argnums=(1, 2))(ids, 10, p))
  np.testing.assert_allclose(got, _one_hot_weights(ids, 10, p), rtol=1e-5, atol=1e-6)


def test_instance_size_weights_build_no_one_hot():
  """The compiled weights for 512 x 512 masks and K = 101 need far less than the one-hot's
  [h w, K] floats (106 MB per example)."""
  ids = jax.ShapeDtypeStruct((1, 512, 512), jnp.int32)
  compiled = jax.jit(losses.instance_size_weights, static_argnums=(1, 2)).lower(
      ids, 101, 0.2).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < 512 * 512 * 101 * 4 / 10


def test_microbatches_are_checked_against_the_batch_devices_at_start_up(tiny_config):
  ok = tiny_config('train.batch_size=16', 'train.microbatches=4')
  train_lib.check_microbatches(ok, 4)
  with pytest.raises(ValueError, match=r'train.microbatches=4 .* 8 batch devices.*\[1, 2\]'):
    train_lib.check_microbatches(ok, 8)
  with pytest.raises(ValueError, match='train.microbatches=0'):
    train_lib.check_microbatches(tiny_config('train.microbatches=0'), 1)
