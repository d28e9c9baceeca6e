"""Tests for pix2seq_d_jax.models (docs/spec.md §5) and the training step built on them
(docs/spec.md §3):
parameter counts of the paper model, conditioning modes, dtypes, initialisation, batch
independence at inference, and the jitted train step (retracing, learning, EMA, non-finite
batches, self-conditioning)."""

import functools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pix2seq_d_jax import bits
from pix2seq_d_jax import config_lib
from pix2seq_d_jax import state as state_lib
from pix2seq_d_jax import train_step as train_lib
from pix2seq_d_jax.models import pix2seq_d

REPO = pathlib.Path(__file__).resolve().parents[1]

# A one-level decoder: the same blocks, fewer of them, so the train step compiles faster.
SMALL_DECODER = ('model.decoder.ch_multipliers=(1,)', 'model.decoder.num_res_blocks=(1,)')


@functools.cache
def _coco_counts(*overrides):
  config = config_lib.load_config(str(REPO / 'configs' / 'coco_panoptic.py'), list(overrides))
  return pix2seq_d.count_params(_param_shapes(config)['params'])


def _param_shapes(config):
  model = pix2seq_d.build_model(config)
  images, x_t, gamma, cond = pix2seq_d.init_inputs(config)
  return jax.eval_shape(lambda: model.init({'params': jax.random.PRNGKey(0)}, images, x_t, gamma,
                                           train=False, cond=cond))


# ---------------------------------------------------------------------------------------------
# The paper model's size (no weights are allocated).


def test_coco_model_has_94_5m_params_split_as_spec():
  """configs/coco_panoptic.py counts 94.5 M +- 0.1 M parameters, split as docs/spec.md §5.6 within 1
  % (backbone 8.543 M, encoder 38.355 M, fpn 4.004 M, decoder 43.590 M)."""
  counts = _coco_counts()
  assert abs(counts['total'] - 94.5e6) <= 0.1e6
  spec = {'backbone': 8.543e6, 'encoder': 38.355e6, 'fpn': 4.004e6, 'decoder': 43.590e6}
  assert set(counts) == set(spec) | {'total'}
  for name, expected in spec.items():
    assert counts[name] == pytest.approx(expected, rel=0.01), name


def test_coco_video_model_has_94_50m_params():
  """With two conditioning frames the model has 94.50 M parameters: the image model plus the
  1x1 input conv's weights for 2 x 16 more channels (32 x 128)."""
  image = _coco_counts()['total']
  video = _coco_counts('model.num_cond_frames=2')['total']
  assert video == pytest.approx(94.50e6, abs=0.01e6)
  assert video - image == 32 * 128


# ---------------------------------------------------------------------------------------------
# Conditioning modes, dtypes and batch independence on the tiny model.


@pytest.fixture(scope='module')
def forwards(tiny_config, random_variables, jit):
  """forwards(mode) -> (model, variables, jitted inference forward), built once per mode."""
  @functools.cache
  def get(mode):
    config = tiny_config(*SMALL_DECODER, f'model.conditioning={mode}')
    model = pix2seq_d.build_model(config)
    variables = random_variables(model, config, seed=1)
    fn = jit(lambda v, images, x_t, gamma: model.apply(v, images, x_t, gamma, train=False))
    return model, variables, fn
  return get


def _inputs(seed, batch=3):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(batch, 32, 32, 3)).astype(np.float32)
  x_t = rng.normal(size=(batch, 16, 16, 16)).astype(np.float32)
  gamma = rng.uniform(size=(batch,)).astype(np.float32)
  return images, x_t, gamma


@pytest.mark.parametrize('mode', pix2seq_d.CONDITIONINGS)
def test_every_conditioning_mode_builds_and_runs(forwards, mode):
  """Each mode gives finite logits [B, h, w, 2, 256]; cross-attention weights exist iff 'attn' is
  in the mode; the output depends on the image unless the mode is 'none'."""
  _, variables, fn = forwards(mode)
  images, x_t, gamma = _inputs(0)
  out = np.asarray(fn(variables, images, x_t, gamma))
  assert out.shape == (3, 16, 16, 2, 256) and out.dtype == np.float32
  assert np.all(np.isfinite(out))
  has_cross = 'cross_attn' in variables['params']['decoder']['middle']['layer0']
  assert has_cross == ('attn' in mode)
  other = np.asarray(fn(variables, _inputs(1)[0], x_t, gamma))
  if mode == 'none':
    np.testing.assert_array_equal(other, out)
  else:
    assert np.abs(other - out).max() > 1e-3


def test_unknown_conditioning_and_dtype_raise(tiny_config):
  """Bad model.conditioning or model.dtype values raise errors that list the valid ones."""
  with pytest.raises(ValueError, match='cat\\+attn'):
    pix2seq_d.build_model(tiny_config('model.conditioning=concat'))
  with pytest.raises(ValueError, match='bfloat16'):
    pix2seq_d.build_model(tiny_config('model.dtype=float16'))


def test_inference_output_does_not_depend_on_other_examples(forwards):
  """At inference (BatchNorm on running statistics) changing examples 1 and 2 of a batch leaves
  example 0's logits unchanged."""
  _, variables, fn = forwards('cat+attn')
  images, x_t, gamma = _inputs(0)
  out = np.asarray(fn(variables, images, x_t, gamma))
  images2, x_t2, gamma2 = _inputs(2)
  images2[0], x_t2[0], gamma2[0] = images[0], x_t[0], gamma[0]
  out2 = np.asarray(fn(variables, images2, x_t2, gamma2))
  np.testing.assert_allclose(out2[0], out[0], rtol=0, atol=1e-6)
  assert np.abs(out2[1:] - out[1:]).max() > 1e-3


def _primitive_dtypes(jaxpr, name):
  """Input dtypes of every `name` equation in a jaxpr, nested jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == name:
      found.append(tuple(v.aval.dtype for v in eqn.invars))
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          found += _primitive_dtypes(inner, name)
  return found


def test_bfloat16_compute_keeps_float32_params(tiny_config, random_variables):
  """model.dtype='bfloat16': every parameter stays float32, every convolution and matmul runs on
  bfloat16 inputs, and the logits come back as float32."""
  config = tiny_config('model.dtype=bfloat16')
  model = pix2seq_d.build_model(config)
  shapes = _param_shapes(config)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes['params'])} == {jnp.dtype('float32')}
  variables = random_variables(model, config)
  images, x_t, gamma = _inputs(0)
  fn = lambda v: model.apply(v, images, x_t, gamma, train=False)
  jaxpr = jax.make_jaxpr(fn)(variables).jaxpr
  for prim in ('conv_general_dilated', 'dot_general'):
    dtypes = _primitive_dtypes(jaxpr, prim)
    assert dtypes and all(set(d) == {jnp.dtype('bfloat16')} for d in dtypes), (prim, dtypes)
  assert jax.eval_shape(fn, variables).dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# Initialisation of the output head (a real `init`, decoder only, no bottleneck layers).

HEAD_INIT = SMALL_DECODER + ('model.decoder.transformer_layers=0',)


def _init_decoder(config, jit):
  """(initial logits [2, 16, 16, 2, 256], params) of the decoder of `config` on random inputs."""
  model = pix2seq_d.build_model(config)
  rng = np.random.default_rng(0)
  x_t = rng.normal(size=(2, 16, 16, 16)).astype(np.float32)
  enc = rng.normal(size=(2, 16, 16, 16)).astype(np.float32)
  tokens = rng.normal(size=(2, 4, 32)).astype(np.float32)
  gamma = np.array([0.2, 0.9], np.float32)
  init = jit(lambda key: model.init_with_output({'params': key}, x_t, gamma, enc, tokens,
                                                train=False, method='decode'))
  logits, variables = init(jax.random.key(0, impl='unsafe_rbg'))
  return np.asarray(logits), variables['params']


def test_initial_head_output_is_zero(tiny_config, jit):
  """With head_bias='zero' (the paper's) the near-zero head kernel and zero bias give logits ~ 0,
  so the first x0 estimate is ~ 0 (all bits equally likely)."""
  logits, params = _init_decoder(tiny_config(*HEAD_INIT, 'model.decoder.head_bias=zero'), jit)
  assert np.abs(logits).max() < 1e-3
  np.testing.assert_array_equal(np.asarray(params['decoder']['head']['bias']), 0.0)
  assert np.abs(np.asarray(bits.expected_analog_bits(jnp.asarray(logits), 0.1))).max() < 1e-4


def test_prior_head_bias_starts_impossible_values_low(tiny_config, jit):
  """head_bias='prior': logits of classes >= num_classes (9) and ids >= K (16) start at
  head_prior_bias, the possible values at ~ 0."""
  config = tiny_config(*HEAD_INIT, 'model.decoder.head_bias=prior',
                       'model.decoder.head_prior_bias=-5.0', 'dataset.max_instances=16')
  logits, _ = _init_decoder(config, jit)
  np.testing.assert_allclose(logits[..., 0, :9], 0.0, atol=1e-3)
  np.testing.assert_allclose(logits[..., 0, 9:], -5.0, atol=1e-3)
  np.testing.assert_allclose(logits[..., 1, :16], 0.0, atol=1e-3)
  np.testing.assert_allclose(logits[..., 1, 16:], -5.0, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# The train state and the jitted train step.


class _StubModel(nn.Module):
  """Smallest module with the Pix2SeqD init signature, parameters and BatchNorm statistics."""

  @nn.compact
  def __call__(self, images, x_t, gamma, train=False, cond=None):
    return nn.BatchNorm(use_running_average=not train)(nn.Dense(4)(x_t))


def test_create_state_starts_ema_as_a_copy(jit):
  """create_state: step 0, EMA params and batch statistics equal to the online ones
  (docs/decisions.md §3), optimizer state from tx.init."""
  tx = optax.adamw(1e-3)
  inputs = (jnp.zeros((1, 4, 4, 3)), jnp.ones((1, 2, 2, 16)), jnp.ones((1,)), None)
  state = jit(lambda: state_lib.create_state(_StubModel(), tx, inputs, seed=0))()
  assert int(state.step) == 0
  assert jax.tree.structure(state.ema_params) == jax.tree.structure(state.params)
  for a, b in zip(jax.tree.leaves(state.params) + jax.tree.leaves(state.batch_stats),
                  jax.tree.leaves(state.ema_params) + jax.tree.leaves(state.ema_batch_stats)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(state.params['Dense_0']['kernel'])).max() > 0
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(tx.init(state.params))


def _structured_batch(batch=4):
  """Images whose colour gives the class: left half class 1 / id 1, right half class 2 / id 2, a
  6x6 square class 3 / id 3 at a per-example position (mask 16x16, image 32x32)."""
  colours = np.array([[0, 0, 0], [0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.3, 0.9]], np.float32)
  masks = np.zeros((batch, 16, 16, 2), np.int32)
  masks[:, :, :8] = 1
  masks[:, :, 8:] = 2
  for k in range(batch):
    y, x = 2 + 2 * k, 9 - 2 * k
    masks[k, y:y + 6, x:x + 6] = 3
  images = colours[masks[..., 0]].repeat(2, axis=1).repeat(2, axis=2)
  return {'image': images, 'masks': masks}


def _make_trainer(config, variables, jit, tx=None):
  """(jitted step with a trace log, trace log, initial TrainState, d) for a config; the
  optimizer is the config's AdamW unless `tx` is given."""
  model = pix2seq_d.build_model(config)
  if tx is None:
    tx, schedule = state_lib.make_optimizer(config, total_steps=1000, warmup_steps=0)
    # The same clipped AdamW on one flat vector: per-leaf updates of ~190 small leaves would
    # triple the step's compile time on a CPU.
    tx = optax.flatten(tx)
  else:
    schedule = optax.constant_schedule(0.0)
  params, batch_stats = variables['params'], variables['batch_stats']
  state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, ema_params=params,
      ema_batch_stats=batch_stats, opt_state=jit(tx.init)(params), rng=jax.random.PRNGKey(0))
  settings = train_lib.StepSettings.from_config(config)
  traces = []

  def step(state, batch):
    traces.append(1)
    return train_lib.train_step(state, batch, model=model, tx=tx, lr_schedule=schedule,
                                settings=settings)
  return jit(step), traces, state, settings.ema_decay


@pytest.fixture(scope='module')
def trainer(tiny_config, random_variables, jit):
  config = tiny_config(*SMALL_DECODER, 'train.learning_rate=0.01')
  variables = random_variables(pix2seq_d.build_model(config), config, seed=2)
  return _make_trainer(config, variables, jit)


def _leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_train_step_learns_without_retracing(trainer):
  """30 jitted steps on one fixed batch trace the step once (the returned state has the input's
  types) and the loss falls well below its starting value."""
  step, traces, state, _ = trainer
  batch = _structured_batch()
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
    assert float(metrics['nonfinite']) == 0.0
  assert len(traces) == 1
  assert int(state.step) == 30
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses


def test_ema_moves_toward_params_by_one_minus_decay(trainer):
  """From EMA = params, one step gives EMA' = d EMA + (1 - d) params' for parameters and
  BatchNorm statistics, i.e. the EMA moves (1 - d) of the way to the new weights."""
  step, _, state, d = trainer
  new, _ = step(state, _structured_batch())
  pairs = [(state.ema_params, new.params, new.ema_params),
           (state.ema_batch_stats, new.batch_stats, new.ema_batch_stats)]
  moved = 0
  for old_tree, online_tree, ema_tree in pairs:
    for old, online, ema in zip(jax.tree.leaves(old_tree), jax.tree.leaves(online_tree),
                                jax.tree.leaves(ema_tree)):
      old, online = np.asarray(old, np.float64), np.asarray(online, np.float64)
      np.testing.assert_allclose(np.asarray(ema), d * old + (1 - d) * online, rtol=1e-5,
                                 atol=1e-7)
      moved += int(not np.array_equal(old, online))
  assert moved > 10
  assert not _leaves_equal(new.batch_stats, state.batch_stats)


def test_nonfinite_batch_leaves_weights_unchanged(trainer):
  """A batch with a NaN image reports nonfinite = 1 and returns the same params, EMA, BatchNorm
  statistics and optimizer state."""
  step, _, state, _ = trainer
  batch = _structured_batch()
  batch['image'][1] = np.nan
  new, metrics = step(state, batch)
  assert float(metrics['nonfinite']) == 1.0
  for name in ('params', 'batch_stats', 'ema_params', 'ema_batch_stats', 'opt_state'):
    assert _leaves_equal(getattr(new, name), getattr(state, name)), name


def test_train_step_with_self_conditioning(tiny_config, random_variables, jit):
  """diffusion.self_condition=True: the decoder reads 16 more input channels and the step runs
  with a finite loss that changes the weights. (Plain SGD and no encoder layers keep this second
  train-step program small; the optimizer is tested above.)"""
  config = tiny_config(*SMALL_DECODER, 'diffusion.self_condition=True',
                       'model.encoder.num_layers=0')
  variables = random_variables(pix2seq_d.build_model(config), config, seed=3)
  # x_t (16) + the previous x0 estimate (16) + encoded_cat (fpn_dim 16).
  assert variables['params']['decoder']['conv_in']['kernel'].shape[2] == 48
  step, traces, state, _ = _make_trainer(config, variables, jit, tx=optax.sgd(0.01))
  batch = _structured_batch()
  new, metrics = step(state, batch)
  new, metrics = step(new, batch)
  assert len(traces) == 1
  assert float(metrics['nonfinite']) == 0.0 and np.isfinite(float(metrics['loss']))
  assert not _leaves_equal(new.params, state.params)
