"""The `Predictor` API: panoptic predictions for uint8 images, for use from Python.

The sampler itself lives in pix2seq_d_jax/sampling.py; `PredictorBase` is what the image and
the video predictor (pix2seq_d_jax/predict_video.py) share: loading a workdir, the sampler
settings of a call, a cache of jitted samplers, and post-processing at the input size. Nothing
here imports training code.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pix2seq_d_jax import checkpoint
from pix2seq_d_jax import compile_options
from pix2seq_d_jax import sampling
from pix2seq_d_jax.models import pix2seq_d


class PredictorBase:
  """A model with its variables and categories, and the jitted samplers built for it."""

  def __init__(self, config: ml_collections.ConfigDict, variables: dict, categories=None):
    self.config = config
    self.variables = variables
    self.categories = categories
    self.model = pix2seq_d.build_model(config)
    self.settings = sampling.SampleSettings.from_config(config)
    self.image_size = tuple(config.model.image_size)
    self._fns = {}

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None, use_ema: bool = True):
    """Loads the config saved in `workdir` and the newest (or given) checkpoint."""
    config, state, _ = checkpoint.load_for_inference(workdir, step)
    return cls(config, state.variables(use_ema), checkpoint.load_categories(workdir))

  def _options(self, **overrides) -> sampling.EvalOptions:
    """config.eval's sampler settings with this call's arguments (None: the config's)."""
    return sampling.EvalOptions.from_config(self.config, where=f'{type(self).__name__}: ',
                                            **overrides)

  def _jit(self, key, build):
    """The jitted function `build()` returns, built once per `key` (static settings)."""
    if key not in self._fns:
      self._fns[key] = build()
    return self._fns[key]

  def _postprocess(self, masks: jax.Array, size, **rules):
    """Mask-resolution predictions int32 [b, h, w, 2] -> (class, id) int32 [b, *size]
    (`sampling.postprocess`; `rules`: min_pixels, clear_void_ids)."""
    b = masks.shape[0]
    unpad = sampling.fit_size(size, self.image_size)
    cls, ids = sampling.postprocess_jit(
        masks, jnp.tile(jnp.asarray(size, jnp.int32), (b, 1)),
        jnp.tile(jnp.asarray(unpad, jnp.int32), (b, 1)), image_size=self.image_size,
        out_size=tuple(size), num_classes=self.settings.num_classes,
        max_instances=self.settings.max_instances, **rules)
    return np.asarray(cls), np.asarray(ids)

  @staticmethod
  def _check_uint8(x, ndim: int, what: str, shape_text: str, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim or x.shape[-1] != 3 or x.dtype != np.uint8:
      raise ValueError(f'{where}: {what} must be uint8 {shape_text}, got {x.dtype} {x.shape}. '
                       'Stack same-size RGB images; convert floats in [0, 1] with '
                       '(x * 255).astype(np.uint8).')
    return x


class Predictor(PredictorBase):
  """Panoptic predictions for uint8 images, for use from Python.

    predictor = Predictor.from_workdir('runs/shapes')
    out = predictor(images, steps=20, td=1.0)   # images: uint8 [b, H, W, 3]
    out['class'], out['id']                      # int32 [b, H, W]; class = category index + 1
    predictor.categories                          # COCO-style category dicts (index = class - 1)
  """

  def _sample_fn(self, steps: int, decode: str):
    """The expensive part, jitted once per (steps, decode) and canvas batch shape."""
    return self._jit((steps, decode), lambda: jax.jit(functools.partial(
        sampling.sample, model=self.model, settings=self.settings, steps=steps, decode=decode),
        compiler_options=compile_options.sampler()))

  def __call__(self, images, steps: int | None = None, td: float | None = None, seed: int = 0,
               example_ids=None, decode: str | None = None) -> dict:
    """Predicts class and instance maps.

    Args:
      images: uint8 [b, H, W, 3] (one size per call; a new size compiles once).
      steps: DDIM steps (default config.eval.steps); td: time difference (config.eval.td).
      seed: noise seed; example_ids: int [b] stable ids (default 0..b-1).
      decode: 'bits' or 'argmax' (default config.eval.decode).

    Returns:
      {'class': int32 [b, H, W] (category index + 1, 0 = void), 'id': int32 [b, H, W]}.
    """
    images = self._check_uint8(images, 4, 'images', '[b, H, W, 3]', 'Predictor')
    opts = self._options(steps=steps, td=td, decode=decode)
    if example_ids is None:
      example_ids = np.arange(images.shape[0])
    # Resizing and post-processing compile per input size (cheap); the sampler only per
    # canvas batch shape, so images of new sizes do not recompile the model.
    canvas = sampling.preprocess_images(jnp.asarray(images), self.image_size)
    masks = self._sample_fn(opts.steps, opts.decode)(
        self.variables, canvas, jnp.asarray(example_ids, jnp.int32), jax.random.PRNGKey(seed),
        jnp.float32(opts.td))
    cls, ids = self._postprocess(masks, images.shape[1:3],
                                 min_pixels=self.config.eval.min_pixels)
    return {'class': cls, 'id': ids}
