"""Partial initialisation (`warm_start.init_from`) maps the decoder's input channels by group.

The decoder reads [x_t, self-conditioning (iff diffusion.self_condition), encoder features,
previous frames t-P..t-1 (model.num_cond_frames = P)] (`Pix2SeqD.decode`). Loading a checkpoint
of any of these layouts into any other must put each group's weights on the same group, and start
the groups the source lacks at zero.
"""

import functools
import itertools

import jax
import numpy as np
import pytest

from pix2seq_d_jax import checkpoint
from pix2seq_d_jax import sharding
from pix2seq_d_jax import state as state_lib
from pix2seq_d_jax import warm_start
from pix2seq_d_jax.models import pix2seq_d

# (self_condition, num_cond_frames): every decoder input layout with up to two previous frames.
LAYOUTS = list(itertools.product((False, True), (0, 1, 2)))
PREFIXES = ('backbone', 'encoder', 'fpn', 'decoder')


def _overrides(self_condition, frames):
  return (f'diffusion.self_condition={self_condition}', f'model.num_cond_frames={frames}')


@pytest.fixture(scope='module')
def models(tiny_config, random_variables, jit):
  """layout -> (config, model, variables, jitted decode)."""
  out = {}
  for k, layout in enumerate(LAYOUTS):
    config = tiny_config(*_overrides(*layout))
    model = pix2seq_d.build_model(config)
    variables = random_variables(model, config, seed=10 + k)
    decode = jit(functools.partial(model.apply, train=False, method='decode'))
    out[layout] = (config, model, variables, decode)
  return out


def _inputs(rng, config):
  h, w = config.model.mask_size
  normal = lambda *shape: np.asarray(rng.normal(size=shape), np.float32)
  return dict(x_t=normal(2, h, w, 16), gamma=np.array([0.3, 0.7], np.float32),
              enc=normal(2, h, w, config.model.fpn_dim), tokens=normal(2, 4, 32),
              self_cond=normal(2, h, w, 16), frames={1: normal(2, h, w, 16),
                                                      2: normal(2, h, w, 16)})


def _decode(entry, x, self_cond, frame_inputs):
  """The decoder's logits given self_cond (or None) and {distance: bits} of previous frames."""
  config, _, variables, decode = entry
  p = config.model.num_cond_frames
  cond = (np.concatenate([frame_inputs[d] for d in range(p, 0, -1)], axis=-1) if p else None)
  return np.asarray(decode(variables, x['x_t'], x['gamma'], x['enc'], x['tokens'],
                           self_cond=self_cond if config.diffusion.self_condition else None,
                           cond=cond))


@pytest.mark.parametrize('source_layout,target_layout',
                         [(s, t) for s in LAYOUTS for t in LAYOUTS if s != t])
def test_decoder_input_groups_keep_their_weights(models, source_layout, target_layout):
  """Source (self_condition, P) -> target (self_condition', P'): the target's decoder, fed the
  groups both share plus random values on the groups only it has, gives the source decoder's
  logits when the source gets the shared groups and zeros on its own extra groups. So every
  shared group's weights sit on the right channels and every new group's weights are zero."""
  source, target = models[source_layout], models[target_layout]
  params = warm_start.merge_params(
      jax.device_get(target[2]['params']), jax.device_get(source[2]['params']), PREFIXES,
      input_groups=(warm_start.decoder_input_groups(target[0]),
                    warm_start.decoder_input_groups(source[0])))
  loaded = (target[0], target[1], {'params': params, 'batch_stats': source[2]['batch_stats']},
            target[3])
  x = _inputs(np.random.default_rng(0), target[0])
  zeros = np.zeros_like(x['self_cond'])
  src_sc, src_p = source_layout
  tgt_sc, tgt_p = target_layout
  # The source sees zeros on the groups the target lacks; the target sees noise on its new ones.
  src_self = x['self_cond'] if tgt_sc else zeros
  src_frames = {d: (x['frames'][d] if d <= tgt_p else zeros) for d in (1, 2)}
  want = _decode(source, x, src_self, src_frames)
  got = _decode(loaded, x, x['self_cond'], x['frames'])
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
  # Not a vacuous equality: the inputs matter to the source's logits.
  other = dict(x, x_t=x['x_t'] + 1.0, enc=x['enc'] + 1.0)
  assert np.abs(_decode(source, other, src_self, src_frames) - want).max() > 1e-3
  kernel = np.asarray(params['decoder']['conv_in']['kernel'])
  groups = warm_start.decoder_input_groups(target[0])
  start = 0
  source_names = {g for g, _ in warm_start.decoder_input_groups(source[0])}
  for name, c in groups:
    block = kernel[:, :, start:start + c]
    assert np.all(block == 0) == (name not in source_names), name
    start += c


def test_groups_follow_the_decoder_input_order(tiny_config):
  """The documented channel layout, written out: x_t, self-cond, encoder, frames oldest first."""
  config = tiny_config(*_overrides(True, 2))
  assert warm_start.decoder_input_groups(config) == [
      ('x_t', 16), ('self_cond', 16), ('encoder', 16), ('frame_t-2', 16), ('frame_t-1', 16)]
  assert warm_start.decoder_input_groups(tiny_config()) == [('x_t', 16), ('encoder', 16)]


def _save_workdir(config, variables, workdir):
  abstract = state_lib.abstract_state(config)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  state = zeros.replace(params=variables['params'], batch_stats=variables['batch_stats'],
                        ema_params=variables['params'],
                        ema_batch_stats=variables['batch_stats'])
  manager = checkpoint.make_manager(workdir, config)
  checkpoint.save(manager, state, {'step': 0})
  manager.wait_until_finished()
  manager.close()
  checkpoint.save_config(workdir, config)


def test_init_from_a_workdir_without_self_conditioning(models, tiny_config, tmp_path):
  """Through a saved workdir: a checkpoint without self-conditioning and with one previous
  frame, loaded into a model with self-conditioning and two frames. Channels 0:16 (x_t) and
  32:48 (encoder) and 64:80 (frame t-1) hold the source's 0:16, 16:32 and 32:48; the
  self-conditioning (16:32) and frame t-2 (48:64) channels are zero."""
  src_config, _, src_vars, _ = models[(False, 1)]
  _save_workdir(src_config, src_vars, tmp_path / 'src')
  config = tiny_config(*_overrides(True, 2), f'train.init_from={tmp_path / "src"}')
  mesh = sharding.make_mesh(config.mesh)
  abstract = state_lib.abstract_state(config)
  fresh = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), abstract)
  state = warm_start.init_from(fresh, config, sharding.state_shardings(abstract, mesh))
  src = np.asarray(src_vars['params']['decoder']['conv_in']['kernel'])
  for params in (state.params, state.ema_params):
    got = np.asarray(params['decoder']['conv_in']['kernel'])
    assert got.shape[2] == 80 and src.shape[2] == 48
    np.testing.assert_array_equal(got[:, :, 0:16], src[:, :, 0:16])
    np.testing.assert_array_equal(got[:, :, 32:48], src[:, :, 16:32])
    np.testing.assert_array_equal(got[:, :, 64:80], src[:, :, 32:48])
    assert np.all(got[:, :, 16:32] == 0) and np.all(got[:, :, 48:64] == 0)


def test_a_different_encoder_width_is_an_error_naming_the_key(models, tiny_config):
  """The encoder group cannot be mapped across model.fpn_dim: the error names the key."""
  src_config, _, src_vars, _ = models[(False, 0)]
  config = tiny_config('model.fpn_dim=8')
  target = {'decoder': {'conv_in': {'kernel': np.zeros((1, 1, 24, 16), np.float32)}}}
  source = {'decoder': {'conv_in': {'kernel': np.asarray(
      src_vars['params']['decoder']['conv_in']['kernel'])}}}
  with pytest.raises(ValueError, match=r"'encoder' input group .* set model.fpn_dim=16"):
    warm_start.merge_params(target, source, ('decoder',), input_groups=(
        warm_start.decoder_input_groups(config), warm_start.decoder_input_groups(src_config)))
