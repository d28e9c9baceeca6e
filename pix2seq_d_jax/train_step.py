"""The jitted training step (docs/spec.md §3): corrupt analog bits, denoise, weighted softmax CE,
AdamW, EMA."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from pix2seq_d_jax import bits as bits_lib
from pix2seq_d_jax import diffusion
from pix2seq_d_jax import losses
from pix2seq_d_jax.state import TrainState



def abstract_batch(config: ml_collections.ConfigDict, sharding_for=None) -> dict:
  """The global train batch as jax.ShapeDtypeStructs: 'image' float32 [B, H, W, 3], 'masks'
  int32 [B, h, w, 2], video adds 'cond_masks' int32 [B, P, h, w, 2]. `sharding_for(ndim)` gives
  each its sharding (None: none)."""
  m, b = config.model, config.train.batch_size
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(
      shape, dtype, sharding=sharding_for(len(shape)) if sharding_for else None)
  batch = {'image': spec((b, *m.image_size, 3), jnp.float32),
           'masks': spec((b, *m.mask_size, 2), jnp.int32)}
  if m.num_cond_frames:
    batch['cond_masks'] = spec((b, m.num_cond_frames, *m.mask_size, 2), jnp.int32)
  return batch

@dataclasses.dataclass(frozen=True)
class StepSettings:
  """What the train step needs from the config, read once (`from_config`)."""
  b: bits_lib.Scale
  schedule: str
  time_distribution: str
  loss: str
  mask_weight_p: float
  class_loss_weight: float
  max_instances: int
  self_condition: bool
  self_condition_rate: float
  ema_decay: float
  frames_dropout: float
  microbatches: int = 1

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'StepSettings':
    d = config.diffusion
    return cls(b=bits_lib.scale_from_config(d.b, d.get('instance_b', 0.0)),
               schedule=d.train_schedule, time_distribution=d.time_distribution,
               loss=d.loss, mask_weight_p=d.mask_weight_p,
               class_loss_weight=d.class_loss_weight,
               max_instances=config.dataset.max_instances, self_condition=d.self_condition,
               self_condition_rate=d.self_condition_rate, ema_decay=config.train.ema_decay,
               frames_dropout=config.dataset.get('frames_dropout', 0.0),
               microbatches=config.train.microbatches)


def check_microbatches(config: ml_collections.ConfigDict, batch_devices: int) -> None:
  """train.microbatches must split the global batch into equal parts that each still cover
  every device the batch is sharded over; checked at start-up."""
  m, b = config.train.microbatches, config.train.batch_size
  if m < 1 or b % (m * batch_devices):
    raise ValueError(
        f'train.microbatches={m} with train.batch_size={b} on {batch_devices} batch devices: '
        f'each microbatch (batch_size / microbatches) must be a multiple of the device count. '
        f'Choose microbatches among '
        f'{[d for d in range(1, b + 1) if b % (d * batch_devices) == 0]}.')


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               lr_schedule: optax.Schedule, settings: StepSettings):
  """One optimizer step.

  Args:
    state: the TrainState.
    batch: 'image' float32 [B, H, W, 3] in [0, 1]; 'masks' int32 [B, h, w, 2] (class + 1,
      instance id; 0 = void); video adds 'cond_masks' int32 [B, P, h, w, 2] (previous frames).
    model: a Pix2SeqD module; tx / lr_schedule: from `state.make_optimizer`; settings: static.

  Returns:
    (new state, metrics dict of float32 scalars: loss, per-part losses, grad_norm, lr, nonfinite).
    A step whose loss or gradient is not finite leaves the weights unchanged and reports
    nonfinite = 1; the training loop stops on it.

  With `settings.microbatches` = M > 1 the batch runs as M sequential microbatches of B / M
  examples (examples m, m + M, m + 2M, ... form microbatch m, so each stays spread over the data
  devices) and the update uses the mean of their gradients: only one microbatch's activations
  are live at a time. Times, noise and the self-conditioning draw are made for the whole batch
  first, so they do not depend on M. BatchNorm normalises each microbatch by its own statistics
  (as each device's share would with M times the devices) and the running statistics move by
  the mean of the M updates, once per step. Without BatchNorm statistics in training
  (`model.backbone.norm='frozen'`) and without dropout the update equals the single-pass one.
  """
  s = settings
  rng = jax.random.fold_in(state.rng, state.step)
  r_time, r_noise, r_enc, r_dec, r_sc, r_frames = jax.random.split(rng, 6)
  r_first, r_use = jax.random.split(r_sc)
  masks = batch['masks']
  bsz = masks.shape[0]

  x0 = bits_lib.map_to_analog_bits(masks, s.b)
  t = diffusion.sample_time(r_time, (bsz,), s.time_distribution)
  gamma = diffusion.get_schedule(s.schedule)(t)
  inputs = {
      'images': batch['image'], 'masks': masks, 'x0': x0, 'gamma': gamma,
      'x_t': diffusion.corrupt(x0, gamma[:, None, None, None],
                               jax.random.normal(r_noise, x0.shape)),
      'weights': losses.instance_size_weights(masks[..., 1], s.max_instances, s.mask_weight_p)}
  if 'cond_masks' in batch:
    keep = jax.random.bernoulli(r_frames, 1.0 - s.frames_dropout, batch['cond_masks'].shape[:2])
    inputs['cond'] = bits_lib.cond_bits(
        jnp.where(keep[:, :, None, None, None], batch['cond_masks'], 0), s.b)
  if s.self_condition:
    inputs['use_self_cond'] = jax.random.bernoulli(r_use, s.self_condition_rate, (bsz,))

  def loss_fn(params, mb, keys):
    k_enc, k_dec, k_first = keys
    (enc_cat, tokens), updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, mb['images'], train=True,
        method='encode', mutable=['batch_stats'], rngs={'dropout': k_enc})
    decode = lambda self_cond, key: model.apply(
        {'params': params}, mb['x_t'], mb['gamma'], enc_cat, tokens, train=True,
        self_cond=self_cond, cond=mb.get('cond'), method='decode', rngs={'dropout': key})
    self_cond = None
    if s.self_condition:
      # docs/spec.md §3.2: a first pass without an estimate gives one (no gradient) for a share of
      # the batch; the rest sees zeros, as at the first sampling step.
      estimate = jax.lax.stop_gradient(
          bits_lib.x0_from_output(decode(jnp.zeros_like(mb['x_t']), k_first), s.loss, s.b))
      self_cond = jnp.where(mb['use_self_cond'][:, None, None, None], estimate, 0.0)
    out = decode(self_cond, k_dec)
    loss, parts = losses.diffusion_loss(out, mb['masks'], mb['x0'], mb['weights'], s.loss, s.b,
                                        s.class_loss_weight)
    return loss, (parts, updates['batch_stats'])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  keys = (r_enc, r_dec, r_first)
  if s.microbatches == 1:
    (loss, (parts, batch_stats)), grads = grad_fn(state.params, inputs, keys)
  else:
    m = s.microbatches
    if bsz % m:
      raise ValueError(f'train.microbatches={m} does not divide the batch of {bsz}; choose a '
                       'divisor of train.batch_size (per data device).')
    split = lambda x: x.reshape(bsz // m, m, *x.shape[1:]).swapaxes(0, 1)

    def body(total, xs):
      i, mb = xs
      out = grad_fn(state.params, mb, tuple(jax.random.fold_in(k, i) for k in keys))
      return jax.tree.map(jnp.add, total, out), None

    first = jax.tree.map(lambda x: x[0], jax.tree.map(split, inputs))
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                         jax.eval_shape(grad_fn, state.params, first, keys))
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(m), jax.tree.map(split, inputs)))
    (loss, (parts, batch_stats)), grads = jax.tree.map(lambda x: x / m, total)

  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  d = s.ema_decay
  ema = lambda e, x: d * e + (1.0 - d) * x
  new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                      ema_params=jax.tree.map(ema, state.ema_params, params),
                      ema_batch_stats=jax.tree.map(ema, state.ema_batch_stats, batch_stats),
                      opt_state=opt_state)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # Keep the last good weights if this step blew up (the loop raises on `nonfinite`).
  new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state.replace(step=new.step))
  metrics = {'loss': loss, 'grad_norm': grad_norm, 'lr': lr_schedule(state.step),
             'nonfinite': 1.0 - finite.astype(jnp.float32), **parts}
  return new, metrics
