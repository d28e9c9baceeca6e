"""Streaming video inference (docs/spec.md §7.2) and the `VideoPredictor` API.

A clip is segmented frame by frame. For frame t the image encoder runs once, then DDIM sampling
runs the decoder `steps_first` times on frame 0 and `steps_later` times on every later frame; the
decoder also reads the analog bits (docs/spec.md §1.4) of the masks of the P =
`model.num_cond_frames` previous frames: the model's own integer predictions at mask resolution
(zeros, i.e. void, before the first frame), or the ground truth in the "GT conditioning" diagnostic.
Instance ids are carried from frame to frame by the network itself (it learned to copy ids from the
condition); nothing matches ids after the fact.

The initial noise of frame t of an example comes from `fold_in(fold_in(rng, t), example_id)`, so
a clip's result does not depend on the batch it is in (docs/decisions.md §6), and frame 0 of a video
model whose condition channels are zero (an image checkpoint loaded with docs/decisions.md §7)
reproduces the image sampler called with the key `fold_in(rng, 0)`.

`sample_frame` is the whole per-frame computation; `sample_video` runs it in a `lax.scan` over
the frames (one compiled program per clip shape), and `VideoPredictor.step` jits it alone for
live streams (frame index and history are runtime values, so it compiles once).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pix2seq_d_jax import bits as bits_lib
from pix2seq_d_jax import compile_options
from pix2seq_d_jax import predict
from pix2seq_d_jax import sampling


def empty_history(batch: int, num_cond_frames: int, mask_size: tuple[int, int]) -> jax.Array:
  """The condition before the first frame: int32 zeros [batch, P, h, w, 2] (void)."""
  return jnp.zeros((batch, num_cond_frames, *mask_size, 2), jnp.int32)


def push_history(history: jax.Array, masks: jax.Array) -> jax.Array:
  """Drops the oldest frame of history [B, P, h, w, 2] and appends masks [B, h, w, 2]."""
  if history.shape[1] == 0:
    return history
  return jnp.concatenate([history[:, 1:], masks[:, None].astype(history.dtype)], axis=1)


def sample_frame(variables: dict, frame: jax.Array, history: jax.Array, frame_index: jax.Array,
                 example_ids: jax.Array, rng: jax.Array, td, *, model,
                 settings: sampling.SampleSettings, steps_first: int, steps_later: int,
                 decode: str = 'bits') -> jax.Array:
  """Generates the masks of one frame of a batch of streams.

  Args:
    variables: {'params', 'batch_stats'} of a Pix2SeqD model (EMA by default).
    frame: float32 [B, H, W, 3] in [0, 1], padded to the model's image size.
    history: int32 [B, P, h, w, 2] (class, id) masks of the P = model.num_cond_frames previous
      frames at mask resolution, oldest first; zeros before the start of a stream.
    frame_index: int32 scalar, the frame's position in its stream (a runtime value: 0 selects
      `steps_first`, anything else `steps_later`, without recompiling).
    example_ids: int32 [B] stable ids of the streams; they seed each stream's noise.
    rng: base key shared by all streams and frames.
    td: asymmetric time difference (runtime scalar).
    model: Pix2SeqD; settings: static sampler settings.
    steps_first, steps_later: DDIM steps of frame 0 and of later frames (static). When they
      differ the program holds the decoder loop twice (a `lax.cond`; only one branch runs), the
      encoder once.
    decode: 'bits' (threshold expected bits) or 'argmax' (last step's softmax argmax).

  Returns:
    int32 [B, h, w, 2] (class, id) at mask resolution; classes < num_classes, ids < K.
  """
  s = settings
  sampling.check_sampler_args(steps_first, td, steps_key='steps_first')
  sampling.check_sampler_args(steps_later, steps_key='steps_later')
  sampling.check_decode(decode, s.loss)
  enc_cat, tokens = model.apply(variables, frame, train=False, method='encode')
  cond = None
  if model.num_cond_frames:
    if history.shape[1] != model.num_cond_frames:
      raise ValueError(f'history holds {history.shape[1]} frames but the model conditions on '
                       f'model.num_cond_frames={model.num_cond_frames}: pass int32 '
                       f'[B, {model.num_cond_frames}, h, w, 2].')
    cond = bits_lib.cond_bits(history, s.b)
  frame_rng = jax.random.fold_in(rng, frame_index)
  x_init = sampling.initial_noise(frame_rng, example_ids, (*enc_cat.shape[1:3], model.num_bits))
  run = lambda steps: sampling.generate(variables, enc_cat, tokens, x_init, td, model=model,
                                        settings=s, steps=steps, decode=decode, cond=cond)
  if steps_first == steps_later:
    return run(steps_first)
  return jax.lax.cond(jnp.asarray(frame_index) == 0, lambda: run(steps_first),
                      lambda: run(steps_later))


def sample_video(variables: dict, frames: jax.Array, example_ids: jax.Array, rng: jax.Array, td,
                 *, model, settings: sampling.SampleSettings, steps_first: int, steps_later: int,
                 decode: str = 'bits', gt_cond: jax.Array | None = None) -> jax.Array:
  """Generates the masks of whole clips, streaming over their frames (`lax.scan`).

  Args:
    variables: {'params', 'batch_stats'} (EMA by default).
    frames: float32 [B, T, H, W, 3] in [0, 1], padded to the model's image size.
    example_ids: int32 [B] stable clip ids (seed each clip's noise).
    rng: base key; td: time difference (runtime scalar).
    model, settings, steps_first, steps_later, decode: as for `sample_frame`.
    gt_cond: optional int32 [B, T, h, w, 2] ground-truth masks at mask resolution: frame t is then
      conditioned on gt_cond[:, t-P:t] (zeros before the start) instead of the model's own
      predictions (the GT-conditioning diagnostic).

  Returns:
    int32 [B, T, h, w, 2] (class, id) per frame at mask resolution.
  """
  bsz, num_frames = frames.shape[:2]
  enc_shape = jax.eval_shape(lambda f: model.apply(variables, f, train=False, method='encode'),
                             frames[:, 0])[0].shape
  mask_size = tuple(enc_shape[1:3])
  if gt_cond is not None and tuple(gt_cond.shape) != (bsz, num_frames, *mask_size, 2):
    raise ValueError(f'gt_cond has shape {tuple(gt_cond.shape)}; it must be int32 '
                     f'[B, T, h, w, 2] = {(bsz, num_frames, *mask_size, 2)} (masks at the '
                     'model\'s mask resolution, see `label_to_mask_grid`).')
  step = functools.partial(sample_frame, model=model, settings=settings,
                           steps_first=steps_first, steps_later=steps_later, decode=decode)

  def body(history, xs):
    frame, t, gt = xs
    masks = step(variables, frame, history, t, example_ids, rng, td)
    return push_history(history, masks if gt is None else gt), masks

  xs = (jnp.moveaxis(frames, 1, 0), jnp.arange(num_frames, dtype=jnp.int32),
        None if gt_cond is None else jnp.moveaxis(gt_cond.astype(jnp.int32), 1, 0))
  history = empty_history(bsz, model.num_cond_frames, mask_size)
  _, masks = jax.lax.scan(body, history, xs)
  return jnp.moveaxis(masks, 0, 1)


# The post-processing rules of video frames (see `postprocess_frames`).
VIDEO_RULES = {'min_pixels': 0, 'clear_void_ids': False}


def postprocess_frames(masks: jax.Array, orig_size: jax.Array, unpadded_size: jax.Array, *,
                       image_size: tuple[int, int], out_size: tuple[int, int],
                       num_classes: int, max_instances: int) -> tuple[jax.Array, jax.Array]:
  """Mask-resolution predictions of single frames -> class and id maps at the original size.

  `sampling.postprocess` without the image-only rules: each id takes the majority class of its
  pixels (ties: the smaller class), but ids are kept as predicted whatever their class, and no id
  is dropped for its size. Video ids are what the tracking metrics score (the reference applies
  no vote to video, docs/spec.md §6, and labels DAVIS objects with class 0, §7.3, which the
  image rule would erase).
  """
  return sampling.postprocess(masks, orig_size, unpadded_size, image_size=image_size,
                              out_size=out_size, num_classes=num_classes,
                              max_instances=max_instances, **VIDEO_RULES)


def label_to_mask_grid(labels: jax.Array, orig_size: jax.Array, unpadded_size: jax.Array, *,
                       image_size: tuple[int, int], mask_size: tuple[int, int],
                       max_instances: int) -> jax.Array:
  """Ground-truth labels at the original size -> masks on the model's mask grid.

  The geometry of the evaluation preprocessing (fit into the canvas, pad bottom/right, nearest
  resize to the mask size; half-pixel centres), applied to the label as the training pipeline
  applies it; crowd pixels become void, as in training, and ids are clipped to K - 1.

  Args:
    labels: int [B, T, Hmax, Wmax, 3] (class, id, crowd), zero-padded beyond orig_size.
    orig_size, unpadded_size: int32 [B, 2].
    image_size: the model's (H, W); mask_size: (h, w); max_instances: K.

  Returns:
    int32 [B, T, h, w, 2], void (0) on the canvas padding.
  """
  h, w = mask_size
  big_h, big_w = image_size

  def one(label, orig, unpad):
    # Mask cell -> canvas pixel -> original pixel (only meaningful inside the unpadded canvas).
    yc = sampling.nearest_index(h, h, big_h)
    xc = sampling.nearest_index(w, w, big_w)
    yo = sampling.nearest_index(big_h, unpad[0], orig[0])[yc]
    xo = sampling.nearest_index(big_w, unpad[1], orig[1])[xc]
    grid = label[:, yo][:, :, xo].astype(jnp.int32)
    valid = (yc < unpad[0])[:, None] & (xc < unpad[1])[None, :]
    keep = valid[None] & (grid[..., 2] == 0)
    cls = jnp.where(keep, grid[..., 0], 0)
    ids = jnp.where(keep, jnp.minimum(grid[..., 1], max_instances - 1), 0)
    return jnp.stack([cls, ids], axis=-1)

  return jax.vmap(one)(labels, orig_size, unpadded_size)


def _preprocess_frames(frames: np.ndarray, image_size: tuple[int, int]) -> jax.Array:
  """uint8 [b, T, H0, W0, 3] -> float32 canvases [b, T, H, W, 3] (`sampling.preprocess_images`)."""
  b, t = frames.shape[:2]
  canvas = sampling.preprocess_images(
      jnp.asarray(frames.reshape(b * t, *frames.shape[2:])), image_size)
  return canvas.reshape(b, t, *canvas.shape[1:])


class VideoPredictor(predict.PredictorBase):
  """Video panoptic predictions with ids carried across frames, for use from Python.

    predictor = VideoPredictor.from_workdir('runs/moving_shapes')
    out = predictor(clips)                 # clips: uint8 [b, T, H, W, 3], whole clips
    out['class'], out['id']                # int32 [b, T, H, W]

    predictor.start(batch=1)               # a live stream: one frame at a time
    for frame in camera:                   # frame: uint8 [1, H, W, 3]
      out = predictor.step(frame)          # int32 [1, H, W] maps of this frame

  Both give the same maps for the same frames, seed and example ids. Frame 0 of a stream uses
  `steps` DDIM steps (default config.eval.steps), later frames `steps_later`
  (config.eval.steps_later). Each id takes the majority class of its pixels in a frame; ids are
  kept as predicted (see `postprocess_frames`).
  """

  def __init__(self, config, variables: dict, categories=None):
    super().__init__(config, variables, categories)
    self.mask_size = tuple(config.model.mask_size)
    self._stream = None

  def _sampler(self, kind: str, opts: sampling.EvalOptions):
    """The jitted sampler of `kind` ('clip' or 'frame'), once per static setting."""
    static = dict(model=self.model, settings=self.settings, steps_first=opts.steps,
                  steps_later=opts.steps_later, decode=opts.decode)

    def build():
      if kind == 'clip':
        return jax.jit(functools.partial(sample_video, **static),
                       compiler_options=compile_options.sampler())

      def frame_step(variables, frame, history, frame_index, example_ids, rng, td):
        # Looked up at trace time, so a test can count traces by wrapping it.
        masks = sample_frame(variables, frame, history, frame_index, example_ids, rng, td,
                             **static)
        return masks, push_history(history, masks)
      return jax.jit(frame_step, compiler_options=compile_options.sampler())
    return self._jit((kind, opts.steps, opts.steps_later, opts.decode), build)

  def __call__(self, frames, steps: int | None = None, steps_later: int | None = None,
               td: float | None = None, seed: int = 0, example_ids=None,
               decode: str | None = None) -> dict:
    """Predicts whole clips.

    Args:
      frames: uint8 [b, T, H, W, 3] (one size per call; a new (b, T) compiles once).
      steps, steps_later: DDIM steps of frame 0 and of later frames.
      td: time difference; seed: noise seed; example_ids: int [b] stable clip ids (default
        0..b-1); decode: 'bits' or 'argmax'.

    Returns:
      {'class': int32 [b, T, H, W] (category index + 1, 0 = void), 'id': int32 [b, T, H, W]}.
    """
    frames = self._check_uint8(frames, 5, 'frames', '[b, T, H, W, 3]', 'VideoPredictor')
    opts = self._options(steps=steps, steps_later=steps_later, td=td, decode=decode)
    b, t = frames.shape[:2]
    ids = np.arange(b) if example_ids is None else np.asarray(example_ids)
    masks = self._sampler('clip', opts)(
        self.variables, _preprocess_frames(frames, self.image_size), jnp.asarray(ids, jnp.int32),
        jax.random.PRNGKey(seed), jnp.float32(opts.td))
    size = frames.shape[2:4]
    cls, inst = self._postprocess(masks.reshape(b * t, *masks.shape[2:]), size, **VIDEO_RULES)
    return {'class': cls.reshape(b, t, *size), 'id': inst.reshape(b, t, *size)}

  def start(self, batch: int = 1, *, steps: int | None = None, steps_later: int | None = None,
            td: float | None = None, seed: int = 0, example_ids=None,
            decode: str | None = None) -> None:
    """Begins `batch` live streams (forgetting any previous ones); see `__call__` for the rest."""
    if batch < 1:
      raise ValueError(f'VideoPredictor.start: batch={batch}; pass the number of streams >= 1.')
    opts = self._options(steps=steps, steps_later=steps_later, td=td, decode=decode)
    ids = np.arange(batch) if example_ids is None else np.asarray(example_ids)
    if ids.shape != (batch,):
      raise ValueError(f'VideoPredictor.start: example_ids has shape {ids.shape}; pass one id '
                       f'per stream, shape ({batch},).')
    self._stream = {
        'fn': self._sampler('frame', opts),
        'history': empty_history(batch, self.model.num_cond_frames, self.mask_size),
        'index': 0, 'ids': jnp.asarray(ids, jnp.int32), 'rng': jax.random.PRNGKey(seed),
        'td': jnp.float32(opts.td), 'batch': batch}

  def step(self, frame) -> dict:
    """Predicts the next frame of the streams begun by `start`.

    Args:
      frame: uint8 [b, H, W, 3], b = the `batch` given to `start`.

    Returns:
      {'class', 'id'}: int32 [b, H, W] maps of this frame.
    """
    s = self._stream
    if s is None:
      raise RuntimeError('VideoPredictor.step: no stream; call start(batch=...) first.')
    frame = self._check_uint8(frame, 4, 'frame', '[b, H, W, 3]', 'VideoPredictor')
    if frame.shape[0] != s['batch']:
      raise ValueError(f'VideoPredictor.step: frame holds {frame.shape[0]} streams but start() '
                       f'began {s["batch"]}; call start(batch={frame.shape[0]}) to restart.')
    canvas = sampling.preprocess_images(jnp.asarray(frame), self.image_size)
    masks, s['history'] = s['fn'](self.variables, canvas, s['history'],
                                  jnp.int32(s['index']), s['ids'], s['rng'], s['td'])
    s['index'] += 1
    cls, inst = self._postprocess(masks, frame.shape[1:3], **VIDEO_RULES)
    return {'class': cls, 'id': inst}

