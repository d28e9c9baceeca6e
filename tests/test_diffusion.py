"""Tests for pix2seq_d_jax.diffusion: gamma schedules, the sampler's time grid, the DDIM update
and scan, and the forward corruption (docs/spec.md §2, §4.2-§4.4)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pix2seq_d_jax import bits
from pix2seq_d_jax import diffusion


def _np_cosine_simple(t):
  return np.cos(((t + 0.0002) / (1 + 0.00025)) * math.pi / 2) ** 2


def _np_schedule(name: str, t: np.ndarray) -> np.ndarray:
  """The docs/spec.md §2 table, written out in float64 numpy."""
  t = t.astype(np.float64)
  kind, _, args = name.partition('@')
  p = args.split(',') if args else []
  if kind == 'cosine' and not p:
    return _np_cosine_simple(t)
  if kind == 'cosine':
    s, e, tau = map(float, p)
    c = lambda u: np.cos(u * math.pi / 2) ** (2 * tau)
    return np.clip((c(t * (e - s) + s) - c(e)) / (c(s) - c(e)), 1e-9, 1.0)
  if kind == 'sigmoid':
    s, e, tau = map(float, p)
    sig = lambda u: 1 / (1 + np.exp(-u))
    v = (sig(e / tau) - sig((t * (e - s) + s) / tau)) / (sig(e / tau) - sig(s / tau))
    return np.clip(v, 1e-9, 1.0)
  if kind == 'log':
    s, e = float(p[0]), float(p[1])
    if p[2].lower() in ('t', 'true'):
      s, e = e, s
    v = (np.log(e) - np.log(t * (e - s) + s)) / (np.log(e) - np.log(s))
    return np.clip(v, 0.0, 1.0)
  assert kind in ('simple_linear', 'linear')
  return np.clip(1.0 - t, 1e-9, 1.0)


SCHEDULES = ['cosine', 'cosine@0,1,1', 'cosine@0.2,1,1', 'cosine@0.1,0.9,2', 'cosine@0,1,0.5',
             'cosine@0,1,0.75', 'sigmoid@-3,3,1', 'sigmoid@0,3,0.3', 'sigmoid@-3,3,0.9',
             'log@1e-4,1,false', 'log@1e-4,1,true', 'log@0.01,1,t', 'simple_linear', 'linear']
GRID = np.linspace(0.0, 1.0, 2001, dtype=np.float32)


@pytest.mark.parametrize('name', SCHEDULES)
def test_schedule_matches_spec_formula_and_is_non_increasing(name):
  """gamma(t) equals the docs/spec.md §2 formula (float64 numpy) on a fine grid, is finite, stays in
  [0, 1] and never increases with t."""
  g = np.asarray(diffusion.get_schedule(name)(jnp.asarray(GRID)))
  assert g.dtype == np.float32 and np.all(np.isfinite(g))
  assert np.all((g >= 0) & (g <= 1))
  np.testing.assert_allclose(g, _np_schedule(name, GRID), rtol=1e-4, atol=3e-5)
  assert np.all(np.diff(g) <= 0), np.diff(g).max()


@pytest.mark.parametrize('name', [s for s in SCHEDULES if s != 'cosine'])
def test_schedule_endpoints(name):
  """gamma(0) = 1 (clean) and gamma(1) is the clip floor: 1e-9 (cosine@, sigmoid, linear) or 0
  (log; float32 cancellation in t (e - s) + s leaves up to ~2e-5 for the reversed form). The
  unclipped default cosine has its own test."""
  g0, g1 = (float(diffusion.get_schedule(name)(jnp.float32(t))) for t in (0.0, 1.0))
  assert g0 == pytest.approx(1.0, abs=1e-7)
  if name.startswith('log'):
    assert 0.0 <= g1 < 1e-4
  else:
    assert g1 == pytest.approx(1e-9, rel=1e-6)


def test_cosine_default_values():
  """The unclipped default cosine: gamma(0) ~ 1 - 9.9e-8, gamma(0.5) ~ 0.4999, gamma(1) ~ 6.2e-9."""
  gamma = diffusion.get_schedule('cosine')
  assert float(gamma(jnp.float32(0.0))) == pytest.approx(1 - 9.9e-8, abs=1e-7)
  assert float(gamma(jnp.float32(0.5))) == pytest.approx(0.4999, abs=5e-5)
  assert 6.0e-9 < float(gamma(jnp.float32(1.0))) < 6.4e-9
  assert float(diffusion.get_schedule('linear')(jnp.float32(0.25))) == pytest.approx(0.75)
  assert float(diffusion.get_schedule('sigmoid@-3,3,1')(jnp.float32(0.5))) == pytest.approx(0.5)


@pytest.mark.parametrize('name, match', [
    ('cosin', 'Unknown noise schedule'),
    ('ddpm@1,2', 'Unknown noise schedule'),
    ('sigmoid@a,3,1', 'cannot parse'),
    ('log@1e-4', 'cannot parse'),
])
def test_bad_schedule_names_raise_clear_errors(name, match):
  """A misspelt or malformed schedule name raises ValueError naming it and the valid forms."""
  with pytest.raises(ValueError, match=match) as err:
    diffusion.get_schedule(name)
  assert repr(name) in str(err.value) and 'cosine' in str(err.value)


def test_sample_time_distributions():
  """Training times: uniform on [0, 1) (mean 1/2), power@2 draws u^2 (mean 1/3); a bad name
  raises."""
  rng = jax.random.PRNGKey(0)
  u = np.asarray(diffusion.sample_time(rng, (20000,)))
  assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
  np.testing.assert_allclose(np.asarray(diffusion.sample_time(rng, (20000,), 'power@2')), u**2,
                             rtol=1e-6)
  with pytest.raises(ValueError, match='uniform'):
    diffusion.sample_time(rng, (2,), 'beta')


@pytest.mark.parametrize('td', [0, 1, 2, 0.5])
def test_time_grid_n20(td):
  """N = 20: t_i = 1 - i/20 and t'_i = max(1 - (i + 1 + td)/20, 0); the first pairs are those of
  docs/spec.md §4.2 and exactly the last floor(1 + td) steps (1 + td for integer td) have t' = 0."""
  t, t_next = (np.asarray(a) for a in diffusion.time_grid(20, td))
  i = np.arange(20)
  np.testing.assert_allclose(t, 1 - i / 20, atol=1e-7)
  np.testing.assert_allclose(t_next, np.maximum(1 - (i + 1 + td) / 20, 0), atol=1e-7)
  assert t[0] == 1.0
  first = {0: (0.95, 0.90), 1: (0.90, 0.85), 2: (0.85, 0.80), 0.5: (0.925, 0.875)}[td]
  np.testing.assert_allclose(t_next[:2], first, atol=1e-7)
  num_zero = math.floor(1 + td)
  assert np.all(t_next[-num_zero:] == 0.0) and np.all(t_next[:-num_zero] > 0)


def _np_ddim_trajectory(x_init, x0, steps, td):
  """DDIM of docs/spec.md §4.3 with a perfect x0 estimate in float64: the input seen at every step.

  The gammas are the float32 values of the (separately tested) schedule on the docs/spec.md §4.2
  grid:
  near t = 0, 1 - gamma is ~1e-7 and float32 rounding of gamma alone moves sqrt(1 - gamma) by 10 %.
  """
  i = np.arange(steps)
  gamma = lambda t: np.asarray(diffusion.get_schedule('cosine')(jnp.asarray(t, jnp.float32)),
                               np.float64)
  g = gamma(1 - i / steps)
  g_next = gamma(np.maximum(1 - (i + 1 + td) / steps, 0))
  x = x_init.astype(np.float64)
  seen = []
  for k in range(steps):
    seen.append(x)
    eps = (x - np.sqrt(g[k]) * x0) / np.sqrt(1 - g[k])
    x = np.sqrt(g_next[k]) * x0 + np.sqrt(1 - g_next[k]) * eps
  return np.stack(seen)


@pytest.fixture(scope='module')
def ddim_with_perfect_x0(jit):
  """Jitted (x0, x_init, td, *, steps): `ddim_sample` with a denoiser that returns the true x0
  and records, in its carry, the input and the gamma of every step."""
  def fn(x0, x_init, td, *, steps):
    def denoise(x_t, gamma, carry):
      k, xs, gs = carry
      carry = (k + 1, xs.at[k].set(x_t), gs.at[k].set(gamma))
      return x0, carry, carry

    batch = x0.shape[0]
    carry = (jnp.zeros((), jnp.int32), jnp.zeros((steps,) + x0.shape),
             jnp.zeros((steps, batch)))
    return diffusion.ddim_sample(denoise, x_init, steps=steps, td=td,
                                 schedule=diffusion.get_schedule('cosine'), x0_clip=0.1,
                                 carry_init=carry)
  return jit(fn, static_argnames='steps')


@pytest.mark.parametrize('steps', [1, 2, 5, 20])
@pytest.mark.parametrize('td', [0, 1, 2, 0.5])
def test_ddim_sample_with_perfect_x0(ddim_with_perfect_x0, steps, td):
  """A denoiser that always returns the true x0: `ddim_sample` returns x0 exactly (the last x0
  prediction, not the last sample), and the inputs and gammas the denoiser saw at every step
  follow the DDIM recursion of docs/spec.md §4.3 on the cosine grid."""
  rng = np.random.default_rng(steps * 10 + int(2 * td))
  x0 = np.asarray(bits.map_to_analog_bits(rng.integers(0, 256, (2, 3, 3, 2)), 0.1))
  x_init = rng.normal(size=x0.shape).astype(np.float32)
  out, (count, xs, gs) = ddim_with_perfect_x0(x0, x_init, jnp.float32(td), steps=steps)
  np.testing.assert_array_equal(np.asarray(out), x0)
  assert int(count) == steps
  g = _np_cosine_simple(1 - np.arange(steps) / steps)
  np.testing.assert_allclose(np.asarray(gs), np.repeat(g[:, None], 2, 1), rtol=1e-5, atol=1e-7)
  seen = _np_ddim_trajectory(x_init, x0, steps, td)
  np.testing.assert_allclose(np.asarray(xs), seen, rtol=1e-4, atol=1e-5)


def test_ddim_step_matches_formula():
  """`ddim_step` = sqrt(g') x0 + sqrt(1 - g') (x_t - sqrt(g) x0) / sqrt(1 - g), with x0 clipped
  to [-b, b] first when x0_clip = b; g' = g returns x_t and g' = 1 returns x0."""
  rng = np.random.default_rng(3)
  x_t = rng.normal(size=(2, 4, 4, 16))
  x0 = rng.uniform(-0.3, 0.3, size=x_t.shape)
  g, g_next = 0.3, 0.6

  def ref(x0c):
    eps = (x_t - np.sqrt(g) * x0c) / np.sqrt(1 - g)
    return np.sqrt(g_next) * x0c + np.sqrt(1 - g_next) * eps

  f32 = lambda a: jnp.asarray(a, jnp.float32)
  out = diffusion.ddim_step(f32(x_t), f32(x0), f32(g), f32(g_next), None)
  np.testing.assert_allclose(np.asarray(out), ref(x0), rtol=1e-5, atol=1e-6)
  out = diffusion.ddim_step(f32(x_t), f32(x0), f32(g), f32(g_next), 0.1)
  np.testing.assert_allclose(np.asarray(out), ref(np.clip(x0, -0.1, 0.1)), rtol=1e-5, atol=1e-6)
  same = diffusion.ddim_step(f32(x_t), f32(x0), f32(g), f32(g), None)
  np.testing.assert_allclose(np.asarray(same), x_t, rtol=1e-5, atol=1e-6)
  clean = diffusion.ddim_step(f32(x_t), f32(x0), f32(g), f32(1.0), 0.1)
  np.testing.assert_allclose(np.asarray(clean), np.clip(x0, -0.1, 0.1), atol=1e-7)


def test_corrupt_exact_and_statistics():
  """x_t = sqrt(g) x0 + sqrt(1 - g) eps exactly for given noise; with Gaussian noise, per example
  the residual x_t - sqrt(g) x0 has mean 0 and variance 1 - g, and x_t regresses on x0 with
  slope sqrt(g)."""
  rng = np.random.default_rng(4)
  x0 = rng.choice(np.float32([-1.0, 1.0]), size=(4, 32, 32, 16))
  gamma = np.array([0.05, 0.3, 0.7, 0.99], np.float32).reshape(4, 1, 1, 1)
  noise = rng.normal(size=x0.shape).astype(np.float32)
  x_t = np.asarray(diffusion.corrupt(jnp.asarray(x0), jnp.asarray(gamma), jnp.asarray(noise)))
  np.testing.assert_allclose(x_t, np.sqrt(gamma) * x0 + np.sqrt(1 - gamma) * noise,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(diffusion.corrupt(x0, 1.0, noise)), x0)
  np.testing.assert_array_equal(np.asarray(diffusion.corrupt(x0, 0.0, noise)), noise)
  n = x0[0].size
  for k, g in enumerate(gamma.ravel()):
    resid = (x_t[k] - np.sqrt(g) * x0[k]).ravel()
    assert abs(resid.mean()) < 5 * np.sqrt((1 - g) / n)
    assert resid.var() == pytest.approx(1 - g, rel=0.04)
    slope = np.mean(x_t[k] * x0[k]) / np.mean(x0[k] ** 2)
    assert slope == pytest.approx(np.sqrt(g), abs=float(5 * np.sqrt((1 - g) / n) + 1e-3))
