"""benchmarks/memory_plan.py: the jaxpr liveness estimate and the per-device batch plan."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import pytest

from conftest import REPO, TINY_OVERRIDES

_spec = importlib.util.spec_from_file_location('memory_plan',
                                               REPO / 'benchmarks' / 'memory_plan.py')
memory_plan = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(memory_plan)

N = 1000   # float32 elements: 4000 bytes a value


def _peak(fn, *args, **kw):
  return memory_plan.liveness_peak(jax.make_jaxpr(fn)(*args).jaxpr, **kw)


def test_a_chain_holds_two_values_at_a_time():
  x = jnp.zeros(N)
  # sin(sin(sin(x))): each step holds its input and its output, then frees the input.
  assert _peak(lambda x: jnp.sin(jnp.sin(jnp.sin(x))), x) == 2 * 4 * N
  # Without the output (a donated state's buffers) only the first intermediate is counted.
  assert _peak(lambda x: jnp.sin(jnp.sin(x)), x, count_outputs=False) == 4 * N


def test_values_live_until_their_last_use():
  x = jnp.zeros(N)
  def f(x):
    a = jnp.sin(x)
    b = jnp.cos(x)
    c = jnp.exp(x)
    return a + b + c     # a, b and c are all live when the first sum is made
  assert _peak(f, x) == 4 * 4 * N


def test_inner_jaxprs_add_their_peak_while_they_run():
  x = jnp.zeros(N)
  inner = jax.jit(lambda x: jnp.sum(jnp.sin(jnp.sin(x))))
  # x -> (sin, sin: 2 values at once inside the jit) -> a scalar: the inner peak counts.
  assert _peak(lambda x: inner(x) + 1.0, x) >= 2 * 4 * N


def test_rematerialisation_lowers_the_estimate_of_the_train_step():
  spec = str(REPO / 'configs' / 'shapes.py')
  plain = memory_plan.activation_estimate(spec, TINY_OVERRIDES, 2)
  remat = memory_plan.activation_estimate(spec, TINY_OVERRIDES + ('model.remat=blocks',), 2)
  assert plain['settings']['remat'] == 'none' and remat['settings']['remat'] == 'blocks'
  assert 0 < remat['per_example_bytes'] < 0.7 * plain['per_example_bytes']
  # Twice the batch, about twice the activations.
  b2, b4 = (plain['by_batch'][k]['peak_bytes'] for k in ('2', '4'))
  assert 1.8 < b4 / b2 < 2.2


@pytest.mark.parametrize('batch, hbm, want', [(32, 32, 4), (32, 100, 1), (32, 2, None)])
def test_batch_plan_finds_the_fewest_microbatches_that_fit(batch, hbm, want):
  gib = memory_plan.GIB
  activations = {'fixed_bytes': 1 * gib, 'per_example_bytes': 2 * gib}
  plan = memory_plan.batch_plan(3 * gib, activations, batch, 1, hbm * gib)
  # state 3 + fixed 1 + 2 per example: 32 GiB holds 14 examples, so 4 microbatches of 8.
  assert plan['fewest_microbatches_that_fit'] == want
  assert plan['fits'] == (want == 1)
  assert plan['max_examples_per_microbatch'] == max((hbm - 4) // 2, 0)
