"""Tests for pix2seq_d_jax.predict: post-processing (docs/spec.md §6), the sampler's determinism per
example (docs/decisions.md §6), its compiled form (one decoder in a loop, td a runtime value) and
the `Predictor` API."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import inlined_count
from pix2seq_d_jax import predict
from pix2seq_d_jax import sampling
from pix2seq_d_jax.models import pix2seq_d

_postprocess = jax.jit(sampling.postprocess, static_argnames=(
    'image_size', 'out_size', 'num_classes', 'max_instances', 'min_pixels'))


def _run_postprocess(masks, orig, unpadded, **kwargs):
  cls, ids = _postprocess(jnp.asarray(masks, jnp.int32), jnp.asarray(orig, jnp.int32),
                          jnp.asarray(unpadded, jnp.int32), **kwargs)
  return np.asarray(cls), np.asarray(ids)


# ---------------------------------------------------------------------------------------------
# Post-processing on hand-made maps.


def test_majority_vote_ties_min_pixels_and_void():
  """Per id the most frequent class wins (ties: the smaller class), ids under min_pixels become
  void, an id whose majority is class 0 loses its id, and id 0 is voted like any other id."""
  cls = [[2, 2, 3, 5, 4, 7],
         [3, 2, 5, 4, 0, 0],
         [8, 8, 1, 6, 6, 0],
         [0, 0, 3, 3, 3, 5]]
  ids = [[1, 1, 1, 2, 2, 3],     # id 1: classes 2,2,3,3,2 -> 2; id 2: 5,4,5,4 -> tie -> 4
         [1, 1, 2, 2, 4, 4],     # id 3: one pixel < 3 -> void; id 4: 0,0,6,6,0 -> 0 -> id 0
         [5, 5, 5, 4, 4, 4],     # id 5: 8,8,1 -> 8 (3 pixels: kept)
         [0, 0, 0, 0, 0, 6]]     # id 0: 0,0,3,3,3 -> 3 (id stays 0); id 6: one pixel -> void
  masks = np.stack([cls, ids], -1)[None]
  out_cls, out_ids = _run_postprocess(masks, [[4, 6]], [[4, 6]], image_size=(4, 6),
                                      out_size=(4, 6), num_classes=9, max_instances=16,
                                      min_pixels=3)
  np.testing.assert_array_equal(out_cls[0], [[2, 2, 2, 4, 4, 0],
                                             [2, 2, 4, 4, 0, 0],
                                             [8, 8, 8, 0, 0, 0],
                                             [3, 3, 3, 3, 3, 0]])
  np.testing.assert_array_equal(out_ids[0], [[1, 1, 1, 2, 2, 0],
                                             [1, 1, 2, 2, 0, 0],
                                             [5, 5, 5, 0, 0, 0],
                                             [0, 0, 0, 0, 0, 0]])


def test_resize_unpads_to_non_square_original():
  """Example 0: an 8x16 original was resized by 0.5 into the top 4x8 of an 8x8 canvas with a 4x4
  mask. Each mask pixel of the unpadded top-left 2x4 must cover a 4x4 block of the original, the
  padding rows' segment must vanish and pixels beyond orig_size are 0. Example 1 (4x4 original
  upscaled to fill the canvas) maps mask pixels 1:1."""
  m0 = np.zeros((4, 4, 2), np.int32)
  m0[:2, :, 0] = m0[:2, :, 1] = np.arange(1, 9).reshape(2, 4)
  m0[2:] = (5, 9)                                              # the padding region's segment
  m1 = np.zeros((4, 4, 2), np.int32) + (3, 2)
  out_cls, out_ids = _run_postprocess(np.stack([m0, m1]), [[8, 16], [4, 4]], [[4, 8], [8, 8]],
                                      image_size=(8, 8), out_size=(10, 20), num_classes=9,
                                      max_instances=16, min_pixels=10)
  expected = np.zeros((10, 20), np.int32)
  expected[:8, :16] = np.kron(np.arange(1, 9).reshape(2, 4), np.ones((4, 4), np.int32))
  np.testing.assert_array_equal(out_cls[0], expected)
  np.testing.assert_array_equal(out_ids[0], expected)
  expected = np.zeros((10, 20), np.int32)
  expected[:4, :4] = 3
  np.testing.assert_array_equal(out_cls[1], expected)
  np.testing.assert_array_equal(out_ids[1], np.where(expected == 3, 2, 0))


def test_nearest_resize_uses_half_pixel_centres():
  """4 -> 6 nearest with half-pixel centres reads source rows/cols [0, 1, 1, 2, 3, 3]
  (align-corners would give [0, 1, 1, 2, 2, 3], plain floor(i * 4 / 6) [0, 0, 1, 2, 2, 3])."""
  ids = np.arange(1, 17).reshape(4, 4)
  masks = np.stack([ids, ids], -1)[None]
  out_cls, out_ids = _run_postprocess(masks, [[6, 6]], [[4, 4]], image_size=(4, 4),
                                      out_size=(6, 6), num_classes=17, max_instances=17,
                                      min_pixels=0)
  idx = [0, 1, 1, 2, 3, 3]
  np.testing.assert_array_equal(out_cls[0], ids[idx][:, idx])
  np.testing.assert_array_equal(out_ids[0], ids[idx][:, idx])


def _np_nearest(src: int, dst: int) -> np.ndarray:
  return np.minimum(np.floor((np.arange(dst) + 0.5) * src / dst).astype(int), src - 1)


def _np_postprocess(m, orig, unpad, image_size, out_size, num_classes, min_pixels):
  """docs/spec.md §6 step by step: mask -> canvas, crop, -> original size, vote, min_pixels, void
  ids."""
  canvas = m[_np_nearest(m.shape[0], image_size[0])][:, _np_nearest(m.shape[1], image_size[1])]
  crop = canvas[:unpad[0], :unpad[1]]
  full = crop[_np_nearest(unpad[0], orig[0])][:, _np_nearest(unpad[1], orig[1])]
  cls, ids = full[..., 0].copy(), full[..., 1].copy()
  for i in np.unique(full[..., 1]):
    sel = full[..., 1] == i
    votes = np.bincount(full[..., 0][sel], minlength=num_classes)
    cls[sel] = 0 if sel.sum() < min_pixels else np.argmax(votes)
  ids = np.where(cls == 0, 0, ids)
  out = np.zeros((2,) + out_size, np.int32)
  out[:, :orig[0], :orig[1]] = cls, ids
  return out


def test_postprocess_matches_step_by_step_reference():
  """Random maps with few ids and non-integer resize ratios: the fused index arithmetic equals
  resizing, cropping, resizing and voting one step at a time."""
  rng = np.random.default_rng(0)
  masks = np.stack([rng.integers(0, 9, (2, 4, 6)), rng.integers(0, 5, (2, 4, 6))], -1)
  orig, unpad = [[7, 13], [9, 15]], [[6, 12], [8, 11]]
  out_cls, out_ids = _run_postprocess(masks, orig, unpad, image_size=(8, 12), out_size=(9, 15),
                                      num_classes=9, max_instances=16, min_pixels=5)
  for k in range(2):
    ref = _np_postprocess(masks[k], orig[k], unpad[k], (8, 12), (9, 15), 9, 5)
    np.testing.assert_array_equal(out_cls[k], ref[0])
    np.testing.assert_array_equal(out_ids[k], ref[1])


# ---------------------------------------------------------------------------------------------
# The sampler on a tiny random model.


@pytest.fixture(scope='module')
def tiny(tiny_config, random_variables):
  # A one-level decoder keeps tracing and compiling cheap; the sampler does not depend on depth.
  config = tiny_config('model.decoder.ch_multipliers=(1,)', 'model.decoder.num_res_blocks=(1,)')
  model = pix2seq_d.build_model(config)
  variables = random_variables(model, config, seed=0)
  # As head_bias='prior' would: values that cannot occur start unlikely, so the random model's
  # masks are varied instead of all clipped to the largest class and id.
  head = variables['params']['decoder']['head']
  bias = np.asarray(head['bias']).reshape(2, 256).copy()
  bias[0, 9:] = bias[1, 16:] = -8.0
  head['bias'] = jnp.asarray(bias.reshape(-1))
  settings = sampling.SampleSettings.from_config(config)
  return config, model, variables, settings


@pytest.fixture(scope='module')
def sampler(tiny, jit):
  """A jitted 2-step `sample` that records each trace, and a batch of 3 examples."""
  _, model, variables, settings = tiny
  traces = []

  def fn(variables, images, example_ids, rng, td):
    traces.append(images.shape)
    return sampling.sample(variables, images, example_ids, rng, td, model=model,
                           settings=settings, steps=2)
  run = jit(fn)
  images = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)
  ids = np.array([7, 3, 11], np.int32)
  return functools.partial(run, variables), traces, images, ids


def test_sample_is_independent_of_batch_size_and_order(sampler):
  """Masks of an example are the same alone, in a batch of 3 and in a permuted batch (its noise
  comes from its example id); they are int32 (class, id) at mask size with class < num_classes
  and id < K."""
  run, _, images, ids = sampler
  rng = jax.random.PRNGKey(1)
  td = jnp.float32(1.0)
  full = np.asarray(run(images, ids, rng, td))
  assert full.shape == (3, 16, 16, 2) and full.dtype == np.int32
  assert full[..., 0].max() < 9 and full[..., 1].max() < 16 and full.min() >= 0
  assert len(np.unique(full[..., 0])) > 2 and len(np.unique(full[..., 1])) > 2   # varied masks
  perm = [2, 0, 1]
  np.testing.assert_array_equal(np.asarray(run(images[perm], ids[perm], rng, td)), full[perm])
  np.testing.assert_array_equal(np.asarray(run(images[1:2], ids[1:2], rng, td)), full[1:2])


def test_changing_td_does_not_retrace(sampler):
  """td is a runtime value: after the first call, calls with other td values trace nothing, and
  td does change the result."""
  run, traces, images, ids = sampler
  rng = jax.random.PRNGKey(1)
  first = np.asarray(run(images, ids, rng, jnp.float32(0.0)))
  count = len(traces)
  outs = [np.asarray(run(images, ids, rng, jnp.float32(td))) for td in (1.0, 2.0, 0.5)]
  assert len(traces) == count
  assert not np.array_equal(first, outs[1])


def test_sample_rejects_bad_decode(tiny):
  """An unknown decode name, or argmax decoding with a non-softmax head, raises ValueError."""
  _, model, variables, settings = tiny
  args = (variables, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32),
          jax.random.PRNGKey(0), 1.0)
  with pytest.raises(ValueError, match='argmax'):
    sampling.sample(*args, model=model, settings=settings, steps=1, decode='greedy')
  l2 = dataclasses.replace(settings, loss='l2')
  with pytest.raises(ValueError, match='softmax'):
    sampling.sample(*args, model=model, settings=l2, steps=1, decode='argmax')


# ---------------------------------------------------------------------------------------------
# The compiled sampler holds the decoder once.


def _flops(lowered) -> float:
  cost = lowered.cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])


@functools.cache
def _unrolled(lower, steps):
  """`lower(steps)` with the sampler's scan fully unrolled: one decoder copy per step."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(jax.lax, 'scan', functools.partial(jax.lax.scan, unroll=True))
    return lower(steps)


@pytest.fixture(scope='module')
def lowerings(tiny):
  """Lowered (not compiled) programs for a batch of 2: `lower(N)` makes `sample` with N steps;
  'looped' holds N = 1, 5, 20; 'forward' is one encoder + decoder pass, 'decoder' one decoder
  pass."""
  _, model, variables, settings = tiny
  images, x_t, gamma = jnp.zeros((2, 32, 32, 3)), jnp.zeros((2, 16, 16, 16)), jnp.ones((2,))

  def lower(steps):
    fn = functools.partial(sampling.sample, model=model, settings=settings, steps=steps)
    return jax.jit(fn).lower(variables, images, jnp.arange(2), jax.random.PRNGKey(0),
                             jnp.float32(1.0))
  forward = jax.jit(lambda v, i, x, g: model.apply(v, i, x, g, train=False))
  decoder = jax.jit(lambda v, x, g, e, t: model.apply(v, x, g, e, t, train=False,
                                                      method='decode'))
  return {'lower': lower, 'looped': {n: lower(n) for n in (1, 5, 20)},
          'forward': forward.lower(variables, images, x_t, gamma),
          'decoder': decoder.lower(variables, x_t, gamma, jnp.zeros((2, 16, 16, 16)),
                                   jnp.zeros((2, 4, 32)))}


def test_compiled_sampler_holds_the_decoder_once(lowerings):
  """For N = 1, 5, 20 the program has a while loop and exactly the convolutions of one encoder +
  one decoder pass; the same count on an unrolled scan (N = 5) grows by 4 decoders, so the count
  would catch a decoder outside the loop or a copy per step."""
  one_pass = inlined_count(lowerings['forward'].as_text(), 'stablehlo.convolution')
  decoder = inlined_count(lowerings['decoder'].as_text(), 'stablehlo.convolution')
  assert 0 < decoder < one_pass
  for n, low in lowerings['looped'].items():
    text = low.as_text()
    assert 'stablehlo.while' in text, n
    assert inlined_count(text, 'stablehlo.convolution') == one_pass, n
  unrolled = _unrolled(lowerings['lower'], 5).as_text()
  assert inlined_count(unrolled, 'stablehlo.convolution') == one_pass + 4 * decoder


def test_sampler_work_grows_linearly_with_steps(lowerings):
  """XLA's cost analysis counts a while body once, so the looped program's flops are the same
  for N = 1, 5, 20 (and, for N = 1, the work actually run). The work run for N steps is measured
  on the same program with the scan unrolled: flops(N) = a + b N within 1 % (fitted on N = 3, 5,
  checked at N = 1), with b one decoder pass plus the small DDIM arithmetic and a the encoder."""
  looped = [_flops(lowerings['looped'][n]) for n in (1, 5, 20)]
  assert max(looped) == pytest.approx(min(looped), rel=1e-3)
  f3, f5 = (_flops(_unrolled(lowerings['lower'], n)) for n in (3, 5))
  b = (f5 - f3) / 2
  a = f3 - 3 * b
  assert looped[0] == pytest.approx(a + b, rel=0.01)
  decoder = _flops(lowerings['decoder'])
  assert decoder <= b <= 1.2 * decoder
  assert 0 < a < 0.5 * b


# ---------------------------------------------------------------------------------------------
# Predictor.


def test_predictor_returns_maps_at_the_input_size(tiny, jit):
  """uint8 images of a non-square size give int32 class and id maps of that size, classes
  < num_classes, ids < K and id 0 wherever the class is void; float images are refused."""
  config, _, variables, _ = tiny
  predictor = predict.Predictor(config, variables)
  images = np.random.default_rng(1).integers(0, 256, (2, 20, 28, 3)).astype(np.uint8)
  with pytest.MonkeyPatch.context() as mp:
    # The Predictor jits internally; give that jit the tests' fast compile options.
    mp.setattr(jax, 'jit', jit)
    out = predictor(images, steps=2, td=1.0)
  for key in ('class', 'id'):
    assert out[key].shape == (2, 20, 28) and out[key].dtype == np.int32
  assert out['class'].min() >= 0 and out['class'].max() < 9
  assert out['id'].min() >= 0 and out['id'].max() < 16
  assert np.all(out['id'][out['class'] == 0] == 0)
  with pytest.raises(ValueError, match='uint8'):
    predictor(images.astype(np.float32) / 255)
