"""The samplers' XLA:CPU options (pix2seq_d_jax/compile_options.py): what they change in the
compiled program, that every sampler of the package is compiled with them, and the fallback
when XLA does not know them."""

import logging
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import REPO, TINY_OVERRIDES
from pix2seq_d_jax import compile_options
from pix2seq_d_jax import config_lib
from pix2seq_d_jax import eval_panoptic
from pix2seq_d_jax import eval_vos
from pix2seq_d_jax import export
from pix2seq_d_jax import predict
from pix2seq_d_jax import predict_video
from pix2seq_d_jax import sampling
from pix2seq_d_jax.models import pix2seq_d


def _ynn_convolutions(hlo_text: str) -> int:
  """Convolutions inside the computations that `__ynn_fusion` instructions call."""
  called = set(re.findall(r'calls=(%[\w.\-]+)[^\n]*"kind":"__ynn_fusion"', hlo_text))
  count, current = 0, None
  for line in hlo_text.splitlines():
    head = re.match(r'^(ENTRY )?(%[\w.\-]+) \(', line)
    if head:
      current = head.group(2)
    elif current in called and ' convolution(' in line:
      count += 1
  return count


def _decoder_block(x, w):
  """A 3x3 convolution and SiLU at one of config B's decoder shapes (benchmarks/side_by_side.py)."""
  y = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jax.nn.silu(y)


def test_sampler_options_keep_convolutions_on_xlas_own_kernels():
  """XLA:CPU's default sends this convolution to YNNPACK (one thread); the sampler options keep
  it on XLA's convolution, with the same values up to float32 rounding."""
  assert jax.default_backend() == 'cpu'
  options = compile_options.sampler()
  assert options == {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((8, 32, 32, 96)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 96, 32)) * 0.05, jnp.float32)
  default = jax.jit(_decoder_block).lower(x, w).compile()
  ours = jax.jit(_decoder_block, compiler_options=options).lower(x, w).compile()
  assert _ynn_convolutions(default.as_text()) == 1
  assert _ynn_convolutions(ours.as_text()) == 0
  assert ' convolution(' in ours.as_text()
  np.testing.assert_allclose(np.asarray(ours(x, w)), np.asarray(default(x, w)),
                             rtol=1e-5, atol=1e-5)


def test_every_sampler_of_the_package_compiles_with_the_sampler_options(tiny_config, monkeypatch):
  """Predictor, VideoPredictor (clip and frame), both evaluators and a loaded export build their
  programs with `compile_options.sampler()`."""
  built = []
  real_jit = jax.jit

  def recording_jit(*args, **kwargs):
    built.append(kwargs.get('compiler_options'))
    return real_jit(*args, **kwargs)

  monkeypatch.setattr(jax, 'jit', recording_jit)
  image = tiny_config()
  video = config_lib.load_config(str(REPO / 'configs' / 'moving_shapes.py'), list(TINY_OVERRIDES))
  model, video_model = pix2seq_d.build_model(image), pix2seq_d.build_model(video)
  opts = sampling.EvalOptions(steps=2, steps_later=1, td=1.0, decode='argmax',
                              use_gt_cond=False)
  builders = {
      'Predictor': lambda: predict.Predictor(image, {})._sample_fn(2, 'argmax'),
      'VideoPredictor clip': lambda: predict_video.VideoPredictor(video, {})._sampler('clip', opts),
      'VideoPredictor frame': lambda: predict_video.VideoPredictor(video, {})._sampler('frame',
                                                                                        opts),
      'evaluate_panoptic': lambda: eval_panoptic.make_panoptic_fn(image, model),
      'evaluate_video': lambda: eval_vos.make_video_fn(video, video_model),
      'export.load': lambda: export.ExportedPredictor(types.SimpleNamespace(call=jnp.sin), {},
                                                      None)._call,
  }
  for name, build in builders.items():
    built.clear()
    build()
    assert built == [compile_options.sampler()], name


def test_an_option_xla_does_not_know_falls_back_to_its_defaults(monkeypatch, caplog):
  monkeypatch.setattr(compile_options, '_SAMPLER_CPU', {'xla_cpu_no_such_option': True})
  compile_options.sampler.cache_clear()
  try:
    with caplog.at_level(logging.WARNING):
      assert compile_options.sampler() is None
  finally:
    compile_options.sampler.cache_clear()
  assert 'xla_cpu_no_such_option' in caplog.text and 'defaults' in caplog.text


@pytest.mark.parametrize('fn', [compile_options.run_once, compile_options.sampler])
def test_other_backends_keep_their_defaults(fn, monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  if hasattr(fn, 'cache_clear'):
    fn.cache_clear()
  try:
    assert fn() is None
  finally:
    if hasattr(fn, 'cache_clear'):
      fn.cache_clear()
