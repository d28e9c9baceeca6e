"""The sampler core shared by image and video prediction: sampling (docs/spec.md §4) and
post-processing (docs/spec.md §6).

`generate` is the part both share: from initial noise, `lax.scan` over N decoder steps (DDIM with
the asymmetric time difference td) and the decoding of the last x0 estimate into integer masks.
`sample` puts the image encoder and the initial noise in front of it; the video sampler
(pix2seq_d_jax/predict_video.py) adds the previous frames' masks. N is static (one compiled
program per N), td a runtime value. The initial noise of each example comes from a key folded
with its stable example id (docs/decisions.md §6), so a prediction does not depend on the batch it
is in.

`EvalOptions.from_config` is the one place that reads the sampler settings of `config.eval`
(steps, steps_later, td, decode, use_gt_cond), with any overrides, and checks them:
`steps` an integer >= 1; `td` a finite number >= 0. td = 0 is plain DDIM; td > 0 hands each step
a sample from a later time (the paper's asymmetric time difference); td >= steps - 1 makes the
first step jump straight to t = 0. A negative td would hand a step a sample from an earlier time
than it was told (and below -1, a time past 1, where the cosine gamma rises again), so it is
refused.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pix2seq_d_jax import bits as bits_lib
from pix2seq_d_jax import diffusion

DECODINGS = ('bits', 'argmax')


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """Static sampler settings read once from the config."""
  b: bits_lib.Scale
  schedule: str
  loss: str
  num_classes: int
  max_instances: int
  self_condition: bool

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'SampleSettings':
    d = config.diffusion
    # .get: configs saved by workdirs before instance_b existed lack it.
    return cls(b=bits_lib.scale_from_config(d.b, d.get('instance_b', 0.0)),
               schedule=d.infer_schedule, loss=d.loss, num_classes=config.dataset.num_classes,
               max_instances=config.dataset.max_instances, self_condition=d.self_condition)


def check_sampler_args(steps, td=None, *, steps_key: str = 'steps', td_key: str = 'td',
                       where: str = '') -> None:
  """Raises ValueError naming `steps_key` / `td_key` (after `where`, e.g. 'Predictor: ') unless
  steps is an integer >= 1 and td a finite number >= 0 (see the module docstring). A traced td
  (inside jit) is not checked."""
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f'{where}{steps_key}={steps!r}: the number of DDIM steps must be an '
                     f'integer >= 1 (0 steps would return all-void maps); set {steps_key} to '
                     'e.g. 20.')
  if td is None or isinstance(td, jax.core.Tracer):
    return
  value = np.asarray(td)
  if value.ndim or not np.issubdtype(value.dtype, np.number) or not np.isfinite(value) or (
      value < 0):
    raise ValueError(f'{where}{td_key}={td!r}: the time difference must be a finite number '
                     '>= 0 (0: plain DDIM, the paper uses 1.0; a negative td runs time '
                     f'backwards); set {td_key} to e.g. 1.0.')


def check_decode(decode: str, loss: str, *, key: str = 'decode', where: str = '') -> None:
  """Raises ValueError unless `decode` is one of DECODINGS that the `loss` head supports."""
  if decode not in DECODINGS:
    raise ValueError(f'{where}{key}={decode!r}; valid: {DECODINGS}.')
  if decode == 'argmax' and loss != 'softmax_xent':
    raise ValueError(f"{where}{key}='argmax' needs the softmax head "
                     "(config.diffusion.loss='softmax_xent').")


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """The sampler settings of one evaluation or prediction call (see the module docstring).

  Attributes:
    steps: DDIM steps (of frame 0 for video); steps_later: of later video frames.
    td: the time difference; decode: one of DECODINGS.
    use_gt_cond: video diagnostic, condition on the ground truth of the previous frames.
  """
  steps: int
  steps_later: int
  td: float
  decode: str
  use_gt_cond: bool

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, steps=None, steps_later=None,
                  td=None, decode=None, use_gt_cond=None, where: str = '') -> 'EvalOptions':
    """config.eval's settings, each replaced by its argument when that is not None, checked.

    Each error names the argument, or the config key its value came from, after `where`.
    """
    e = config.eval
    key = lambda arg, name: f'config.eval.{name}' if arg is None else name
    steps_v = e.steps if steps is None else steps
    td_v = e.td if td is None else td
    check_sampler_args(steps_v, td_v, steps_key=key(steps, 'steps'), td_key=key(td, 'td'),
                       where=where)
    later_v = e.get('steps_later', steps_v) if steps_later is None else steps_later
    check_sampler_args(later_v, steps_key=key(steps_later, 'steps_later'), where=where)
    decode_v = e.decode if decode is None else decode
    check_decode(decode_v, config.diffusion.loss, key=key(decode, 'decode'), where=where)
    gt = e.get('use_gt_cond', False) if use_gt_cond is None else use_gt_cond
    return cls(steps=int(steps_v), steps_later=int(later_v), td=float(td_v), decode=decode_v,
               use_gt_cond=bool(gt))


def initial_noise(rng: jax.Array, example_ids: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """x_T float32 [B, *shape]: example i's noise depends only on (rng, example_ids[i])."""
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(rng, i), shape))(example_ids)


def generate(variables: dict, enc_cat: jax.Array, tokens: jax.Array, x_init: jax.Array, td, *,
             model, settings: SampleSettings, steps: int, decode: str = 'bits',
             cond=None) -> jax.Array:
  """The decoder loop from x_T to integer masks, given the encoder's outputs. Its callers
  (`sample`, `predict_video.sample_frame`) check steps, td and decode before the encoder runs.

  Args:
    variables: {'params', 'batch_stats'}; enc_cat, tokens: `model.apply(..., method='encode')`.
    x_init: float32 [B, h, w, 16] initial noise (`initial_noise`).
    td: asymmetric time difference (runtime scalar).
    model: Pix2SeqD; settings: static; steps: N (static).
    decode: 'bits' (threshold expected bits, the reference) or 'argmax' (argmax of the last
      step's softmaxes; softmax head only).
    cond: optional analog bits of previous frames [B, h, w, 16 P] (video).

  Returns:
    int32 [B, h, w, 2] (class + 1, instance id) at mask resolution, classes < num_classes and
    ids < max_instances.
  """
  s = settings
  limits = (s.num_classes, s.max_instances)

  def denoise(x_t, gamma, carry):
    out = model.apply(variables, x_t, gamma, enc_cat, tokens, train=False, self_cond=carry,
                      cond=cond, method='decode')
    x0 = bits_lib.x0_from_output(out, s.loss, s.b)
    aux = bits_lib.argmax_decode(out, limits) if decode == 'argmax' else jnp.zeros((), jnp.int32)
    return x0, aux, (x0 if s.self_condition else None)

  carry = jnp.zeros_like(x_init) if s.self_condition else None
  x0, aux = diffusion.ddim_sample(denoise, x_init, steps=steps, td=td,
                                  schedule=diffusion.get_schedule(s.schedule),
                                  x0_clip=bits_lib.bit_scales(
                                      s.b, x_init.shape[-1] // bits_lib.BITS_PER_CHANNEL),
                                  carry_init=carry)
  if decode == 'argmax':
    return aux
  return bits_lib.analog_bits_to_map(x0, bits_lib.MASK_CHANNELS, limits)


def sample(variables: dict, images: jax.Array, example_ids: jax.Array, rng: jax.Array, td, *,
           model, settings: SampleSettings, steps: int, decode: str = 'bits',
           cond=None) -> jax.Array:
  """Generates masks for a batch of images: the encoder once, then `generate`.

  Args:
    variables: {'params', 'batch_stats'} (EMA by default).
    images: float32 [B, H, W, 3] in [0, 1], padded to the model's image size.
    example_ids: int32 [B] stable ids (e.g. image ids) that seed each example's noise.
    rng: base key shared by all examples; td, model, settings, steps, decode, cond: as
      `generate`.

  Returns:
    int32 [B, h, w, 2] (class + 1, instance id) at mask resolution.
  """
  check_sampler_args(steps, td)      # before the encoder runs
  check_decode(decode, settings.loss)
  enc_cat, tokens = model.apply(variables, images, train=False, method='encode')
  x_init = initial_noise(rng, example_ids, (*enc_cat.shape[1:3], model.num_bits))
  return generate(variables, enc_cat, tokens, x_init, td, model=model, settings=settings,
                  steps=steps, decode=decode, cond=cond)


def nearest_index(out_len: int, valid_len: jax.Array, src_len: jax.Array) -> jax.Array:
  """Half-pixel-centre nearest source index for each of `out_len` outputs of a resize
  src_len -> valid_len (outputs past valid_len are clamped; they are masked later)."""
  pos = (jnp.arange(out_len, dtype=jnp.float32) + 0.5) * src_len / valid_len
  return jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, jnp.maximum(src_len - 1, 0))


def postprocess(masks: jax.Array, orig_size: jax.Array, unpadded_size: jax.Array, *,
                image_size: tuple[int, int], out_size: tuple[int, int], num_classes: int,
                max_instances: int, min_pixels: int, clear_void_ids: bool = True):
  """Mask-resolution predictions -> class and instance maps at the original image size
  (docs/spec.md §6).

  Nearest resize mask -> image size, crop the unpadded region, nearest resize to the original
  size; then per id the majority class (ties: the smallest class), ids under `min_pixels` pixels
  (counted at the original size) become void, and id := 0 wherever the class is void.

  Args:
    masks: int32 [B, h, w, 2].
    orig_size: int32 [B, 2] original (height, width) of each image.
    unpadded_size: int32 [B, 2] size of the resized image inside the model's canvas.
    image_size: the model's (H, W); out_size: static (Ho, Wo) >= every orig_size.
    min_pixels: ids with fewer pixels become void (0 disables the rule).
    clear_void_ids: set id := 0 where the voted class is void (images); video keeps the
      predicted ids, which the tracking metrics score.

  Returns:
    (class_map, id_map) int32 [B, Ho, Wo]; pixels beyond orig_size are 0.
  """
  h, w = masks.shape[1:3]
  big_h, big_w = image_size

  def one(m, orig, unpad):
    oh, ow = orig[0], orig[1]
    # Two nearest resizes as the reference: original -> canvas, canvas -> mask grid.
    yi = nearest_index(out_size[0], oh, unpad[0])
    xi = nearest_index(out_size[1], ow, unpad[1])
    ym = nearest_index(big_h, big_h, h)[yi]
    xm = nearest_index(big_w, big_w, w)[xi]
    cls = m[ym][:, xm, 0]
    ids = m[ym][:, xm, 1]
    valid = ((jnp.arange(out_size[0]) < oh)[:, None] & (jnp.arange(out_size[1]) < ow)[None, :])
    hist = jnp.zeros((max_instances * num_classes,), jnp.int32).at[
        (ids * num_classes + cls).reshape(-1)].add(valid.reshape(-1).astype(jnp.int32))
    hist = hist.reshape(max_instances, num_classes)
    voted = jnp.argmax(hist, axis=1).astype(jnp.int32)
    if min_pixels > 0:
      voted = jnp.where(hist.sum(axis=1) < min_pixels, 0, voted)
    cls = jnp.where(valid, voted[ids], 0)
    ids = jnp.where(cls == 0, 0, ids) if clear_void_ids else jnp.where(valid, ids, 0)
    return cls, ids

  return jax.vmap(one)(masks, orig_size, unpadded_size)


postprocess_jit = jax.jit(postprocess, static_argnames=(
    'image_size', 'out_size', 'num_classes', 'max_instances', 'min_pixels', 'clear_void_ids'))


def fit_size(size: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int]:
  """The largest (h, w) with the aspect of `size` inside image_size (the eval pipeline's rule)."""
  scale = min(image_size[0] / size[0], image_size[1] / size[1])
  return (min(max(int(round(size[0] * scale)), 1), image_size[0]),
          min(max(int(round(size[1] * scale)), 1), image_size[1]))


@functools.partial(jax.jit, static_argnames=('image_size',))
def preprocess_images(images: jax.Array, image_size: tuple[int, int]) -> jax.Array:
  """uint8 [B, H0, W0, 3] -> float32 [B, H, W, 3] resized to fit (bilinear, antialiased) and
  padded with 0.3 at the bottom/right, as the evaluation pipeline does."""
  nh, nw = fit_size(images.shape[1:3], image_size)
  x = images.astype(jnp.float32) / 255.0
  if (nh, nw) != tuple(images.shape[1:3]):
    x = jnp.clip(jax.image.resize(x, (x.shape[0], nh, nw, 3), 'bilinear', antialias=True), 0, 1)
  return jnp.pad(x, ((0, 0), (0, image_size[0] - nh), (0, image_size[1] - nw), (0, 0)),
                 constant_values=0.3)


def original_image(canvas: np.ndarray, unpadded, orig) -> np.ndarray:
  """The model's input canvas float [H, W, 3] -> uint8 image at the original size (nearest)."""
  crop = canvas[:unpadded[0], :unpadded[1]]
  yi = np.minimum(((np.arange(orig[0]) + 0.5) * unpadded[0] / orig[0]).astype(int),
                  unpadded[0] - 1)
  xi = np.minimum(((np.arange(orig[1]) + 0.5) * unpadded[1] / orig[1]).astype(int),
                  unpadded[1] - 1)
  return (np.clip(crop[yi][:, xi], 0, 1) * 255).round().astype(np.uint8)
