"""The train state pytree, the optimizer and the learning-rate schedule (docs/spec.md §3.6, §3.7),
and `setup`: the one place that builds a config's model, optimizer and state."""

import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from pix2seq_d_jax.models import pix2seq_d


@flax.struct.dataclass
class TrainState:
  """Everything training changes, as one pytree (checkpointed whole).

  Attributes:
    step: int32 scalar, optimizer steps taken.
    params, batch_stats: online weights and BatchNorm statistics.
    ema_params, ema_batch_stats: their exponential moving averages (docs/decisions.md §3: they start
    as a
      copy of the online ones); evaluation and prediction use these by default.
    opt_state: optax state.
    rng: uint32 [2] base key; step keys are `fold_in(rng, step)`.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  ema_params: Any
  ema_batch_stats: Any
  opt_state: Any
  rng: jax.Array

  def variables(self, use_ema: bool = True) -> dict:
    """The model variables {'params', 'batch_stats'} used for inference."""
    if use_ema:
      return {'params': self.ema_params, 'batch_stats': self.ema_batch_stats}
    return {'params': self.params, 'batch_stats': self.batch_stats}


def learning_rate_schedule(base: float, total_steps: int, warmup_steps: int,
                           end_factor: float) -> optax.Schedule:
  """Linear warm-up from 0 to `base`, then linear decay to `base * end_factor` at `total_steps`."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = base * step / max(warmup_steps, 1)
    frac = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    decay = base * (1.0 - frac * (1.0 - end_factor))
    return jnp.where(step < warmup_steps, warm, decay)
  return schedule


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                   warmup_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with decoupled weight decay on every parameter, after global-norm clipping."""
  t = config.train
  schedule = learning_rate_schedule(t.learning_rate, total_steps, warmup_steps, t.end_lr_factor)
  parts = []
  if t.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(t.grad_clip))
  parts.append(optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay))
  return optax.chain(*parts), schedule


def create_state(model, tx: optax.GradientTransformation, init_inputs, seed: int) -> TrainState:
  """Initialises a TrainState (wrap in `jax.jit` with out_shardings, or `jax.eval_shape`)."""
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  images, x_t, gamma, cond = init_inputs
  variables = model.init({'params': init_rng, 'dropout': init_rng}, images, x_t, gamma,
                         train=False, cond=cond)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    ema_params=jax.tree.map(jnp.copy, params),
                    ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
                    opt_state=tx.init(params), rng=state_rng)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a config builds: the model, the optimizer, and its state as shapes and as a function.

  Attributes:
    model: the Pix2SeqD module.
    tx, lr_schedule: from `make_optimizer`.
    init: () -> a fresh TrainState (wrap it in `jax.jit` with out_shardings to place it).
    abstract: the TrainState's shapes and dtypes (`jax.eval_shape` of init; nothing allocated).
  """
  model: nn.Module
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  init: Callable[[], TrainState]
  abstract: TrainState


def setup(config: ml_collections.ConfigDict, total_steps: int = 1,
          warmup_steps: int = 0) -> Setup:
  """The model, optimizer and state of `config` (the step counts only shape the schedule)."""
  model = pix2seq_d.build_model(config)
  tx, lr_schedule = make_optimizer(config, total_steps, warmup_steps)
  init = lambda: create_state(model, tx, pix2seq_d.init_inputs(config), config.seed)
  return Setup(model=model, tx=tx, lr_schedule=lr_schedule, init=init,
               abstract=jax.eval_shape(init))


def abstract_state(config: ml_collections.ConfigDict) -> TrainState:
  """The TrainState's shapes and dtypes for `config`, e.g. to restore a checkpoint into."""
  return setup(config).abstract
