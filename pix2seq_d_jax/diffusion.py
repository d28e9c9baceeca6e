"""Continuous-time Gaussian diffusion on analog bits (docs/spec.md §2, §4).

gamma(t) is the signal variance ("alpha-bar") at time t in [0, 1]; x_t = sqrt(gamma) x0 +
sqrt(1 - gamma) eps. Schedules are chosen by name strings as in the reference:
`cosine` (default), `cosine@s,e,tau`, `sigmoid@s,e,tau`, `log@s,e,rev`, `simple_linear` (alias
`linear`).
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

Schedule = Callable[[jax.Array], jax.Array]


def _cosine_simple(t):
  return jnp.cos(((t + 0.0002) / (1 + 0.00025)) * math.pi / 2) ** 2


def _cosine(start: float, end: float, tau: float) -> Schedule:
  v_start = math.cos(start * math.pi / 2) ** (2 * tau)
  v_end = math.cos(end * math.pi / 2) ** (2 * tau)

  def gamma(t):
    # In float32 cos(pi/2) is about -4e-8; a fractional power of it would be NaN at t = 1.
    v = jnp.maximum(jnp.cos((t * (end - start) + start) * math.pi / 2), 0.0) ** (2 * tau)
    return jnp.clip((v - v_end) / (v_start - v_end), 1e-9, 1.0)
  return gamma


def _sigmoid(start: float, end: float, tau: float) -> Schedule:
  sig = lambda x: 1 / (1 + math.exp(-x))
  v_start, v_end = sig(start / tau), sig(end / tau)

  def gamma(t):
    v = jax.nn.sigmoid((t * (end - start) + start) / tau)
    return jnp.clip((v_end - v) / (v_end - v_start), 1e-9, 1.0)
  return gamma


def _log(start: float, end: float, reverse: bool) -> Schedule:
  if reverse:
    start, end = end, start
  log_start, log_end = math.log(start), math.log(end)

  def gamma(t):
    v = jnp.log(t * (end - start) + start)
    return jnp.clip((log_end - v) / (log_end - log_start), 0.0, 1.0)
  return gamma


def _linear(t):
  return jnp.clip(1.0 - t, 1e-9, 1.0)


def get_schedule(name: str) -> Schedule:
  """Returns gamma: float [...] in [0, 1] -> float [...] for a schedule name (see module doc)."""
  kind, _, args = name.partition('@')
  params = [a.strip() for a in args.split(',')] if args else []
  try:
    if kind == 'cosine':
      if not params:
        return _cosine_simple
      s, e, tau = (list(map(float, params)) + [0.0, 1.0, 1.0][len(params):])[:3]
      return _cosine(s, e, tau)
    if kind == 'sigmoid':
      s, e, tau = (list(map(float, params)) + [-3.0, 3.0, 1.0][len(params):])[:3]
      return _sigmoid(s, e, tau)
    if kind == 'log':
      s, e = float(params[0]), float(params[1])
      rev = len(params) > 2 and params[2].lower() in ('t', 'true')
      return _log(s, e, rev)
  except (ValueError, IndexError) as err:
    raise ValueError(f'Noise schedule {name!r}: cannot parse its parameters ({err}). Use e.g. '
                     "'cosine', 'cosine@0.2,1,1', 'sigmoid@-3,3,0.9', 'log@1e-4,1,false'.") from err
  if kind in ('simple_linear', 'linear'):
    return _linear
  raise ValueError(f'Unknown noise schedule {name!r}; valid: cosine, cosine@s,e,tau, '
                   'sigmoid@s,e,tau, log@s,e,rev, simple_linear (or linear).')


def sample_time(rng: jax.Array, shape: tuple[int, ...], distribution: str = 'uniform') -> jax.Array:
  """Training times t in [0, 1].

  `uniform` is the reference. `power@k` draws u^k (k > 1 favours low noise, where the noisy
  instance bits still carry the ids the model must learn to read).
  """
  u = jax.random.uniform(rng, shape)
  kind, _, arg = distribution.partition('@')
  if kind == 'uniform':
    return u
  if kind == 'power':
    return u ** float(arg)
  raise ValueError(f'Unknown time distribution {distribution!r}; valid: uniform, power@k.')


def corrupt(x0: jax.Array, gamma: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = sqrt(gamma) x0 + sqrt(1 - gamma) eps; gamma broadcasts over x0 (e.g. [B, 1, 1, 1])."""
  return jnp.sqrt(gamma) * x0 + jnp.sqrt(1.0 - gamma) * noise


def time_grid(steps: int, td: float | jax.Array) -> tuple[jax.Array, jax.Array]:
  """The sampler's time pairs (docs/spec.md §4.2).

  Returns:
    (t, t_next), float32 [steps] each: t_i = 1 - i/N is the time the network is told;
    t'_i = max(1 - (i + 1 + td)/N, 0) is the time of the sample handed to the next step.
  """
  i = jnp.arange(steps, dtype=jnp.float32)
  t = 1.0 - i / steps
  t_next = jnp.maximum(1.0 - (i + 1.0 + td) / steps, 0.0)
  return t, t_next


def ddim_step(x_t: jax.Array, x0_pred: jax.Array, gamma_now: jax.Array, gamma_next: jax.Array,
              x0_clip: float | None) -> jax.Array:
  """One deterministic DDIM update in the x0 parameterisation (docs/spec.md §4.3).

  eps_hat = (x_t - sqrt(g) x0_hat) / sqrt(1 - g); x_next = sqrt(g') x0_hat + sqrt(1 - g') eps_hat.
  """
  if x0_clip is not None:
    x0_pred = jnp.clip(x0_pred, -x0_clip, x0_clip)
  eps = (x_t - jnp.sqrt(gamma_now) * x0_pred) / jnp.sqrt(1.0 - gamma_now)
  return jnp.sqrt(gamma_next) * x0_pred + jnp.sqrt(1.0 - gamma_next) * eps


def ddim_sample(denoise: Callable, x_init: jax.Array, *, steps: int, td: float | jax.Array,
                schedule: Schedule, x0_clip: float | None, carry_init=None):
  """Runs `steps` DDIM steps with `lax.scan` and returns the last x0 prediction (docs/spec.md §4.4).

  Args:
    denoise: (x_t [B, ...], gamma [B], carry) -> (x0_pred [B, ...], aux, carry). `carry` threads
      state between steps (e.g. the previous x0 estimate for self-conditioning); `aux` of the last
      step is returned.
    x_init: x_T, float [B, ...] (standard normal).
    steps: N, static (one compiled program per N).
    td: asymmetric time difference; a runtime value, so changing it does not recompile.
    schedule: gamma(t).
    x0_clip: clip bound for x0_pred (b), or None.
    carry_init: initial carry.

  Returns:
    (x0_pred of the last step, aux of the last step).
  """
  t_now, t_next = time_grid(steps, td)
  batch = x_init.shape[0]

  def body(state, ts):
    x_t, _, _, carry = state
    gamma_now = schedule(ts[0])
    gamma_next = schedule(ts[1])
    x0_pred, aux, carry = denoise(x_t, jnp.full((batch,), gamma_now), carry)
    x_next = ddim_step(x_t, x0_pred, gamma_now, gamma_next, x0_clip)
    return (x_next, x0_pred, aux, carry), None

  # Zero-filled placeholders with the shapes of one step's outputs (traced, never computed) keep
  # the decoder inside the scan body only: one copy in the compiled program for any N.
  out_shape = jax.eval_shape(denoise, x_init, jnp.zeros((batch,), jnp.float32), carry_init)
  x0_zero, aux_zero, _ = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)
  (_, x0_pred, aux, _), _ = jax.lax.scan(body, (x_init, x0_zero, aux_zero, carry_init),
                                         (t_now, t_next))
  return x0_pred, aux
