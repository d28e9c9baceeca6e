"""`--mode=describe`: parameter counts and FLOPs of a config, without allocating the model.

Shapes come from `jax.eval_shape`; FLOPs from XLA's cost analysis of the lowered (not compiled,
not run) programs.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections

from pix2seq_d_jax import bits as bits_lib
from pix2seq_d_jax import sampling
from pix2seq_d_jax import state as state_lib
from pix2seq_d_jax import train_step as train_step_lib
from pix2seq_d_jax.models import pix2seq_d


def _flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).cost_analysis()
  if isinstance(cost, (list, tuple)):   # Older jax returned one dict per device.
    cost = cost[0]
  return float(cost.get('flops', -1.0)) if cost else -1.0


def describe(config: ml_collections.ConfigDict) -> dict:
  """{'params': {'total', <module>...}, 'flops': {...}, 'shapes': {...}}."""
  setup = state_lib.setup(config, 1000, 0)
  model, state = setup.model, setup.abstract
  m = config.model
  bsz = config.train.batch_size
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  batch = train_step_lib.abstract_batch(config)
  step = functools.partial(train_step_lib.train_step, model=model, tx=setup.tx,
                           lr_schedule=setup.lr_schedule,
                           settings=train_step_lib.StepSettings.from_config(config))
  train_flops = _flops(step, state, batch)

  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  encode = lambda v, x: model.apply(v, x, train=False, method='encode')
  enc_flops = _flops(encode, variables, f32(1, *m.image_size, 3))
  enc_cat, tokens = jax.eval_shape(encode, variables, f32(1, *m.image_size, 3))
  n = bits_lib.MASK_BITS
  cond = f32(1, *m.mask_size, n * m.num_cond_frames) if m.num_cond_frames else None
  self_cond = f32(1, *m.mask_size, n) if config.diffusion.self_condition else None
  decode = lambda v, x, g, a, t, s, c: model.apply(v, x, g, a, t, train=False, self_cond=s,
                                                   cond=c, method='decode')
  dec_flops = _flops(decode, variables, f32(1, *m.mask_size, n), f32(1), enc_cat, tokens,
                     self_cond, cond)
  steps = sampling.EvalOptions.from_config(config).steps
  return {
      'params': pix2seq_d.count_params(state.params),
      'flops': {
          'train_step': train_flops,
          'train_step_per_example': train_flops / bsz,
          'train_batch_size': bsz,
          'encoder_per_image': enc_flops,
          'sampling_step_per_image': dec_flops,
          'sample_per_image': enc_flops + steps * dec_flops,
          'sampling_steps': steps,
      },
      'shapes': {
          'image': list(m.image_size), 'mask': list(m.mask_size),
          'encoded_cat': list(enc_cat.shape[1:]), 'encoder_tokens': list(tokens.shape[1:]),
      },
  }
