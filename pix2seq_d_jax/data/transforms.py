"""Per-example preprocessing ops for tf.data (docs/spec.md §1.1–1.2, §3.9; docs/decisions.md §8-§9).

Every op takes and returns TensorFlow tensors, so the pipeline can call it eagerly or inside
`tf.data.Dataset.map` and get the same result. All randomness is stateless and driven by an explicit
`seed`: int32/int64 [2]. An op that needs several random numbers derives sub-seeds from it, so one
seed per example makes the whole augmentation reproducible and resumable.

Conventions:
  image: uint8 or float32 [H, W, 3], or [T, H, W, 3] for a video clip; float images are in [0, 1].
  label: int32 [H, W, 2] (class + 1, segment id), 0 = void, or [T, H, W, 2] for a clip.
A clip gets ONE set of random parameters for all its frames, so the frames stay aligned.
"""

from typing import Any

import tensorflow as tf

ORDERS = ('none', 'shuffle', 'random', 'raster')
PAD_IMAGE_VALUE = 0.3   # docs/decisions.md §9: images are padded with 0.3, as the reference does
PAD_LABEL_VALUE = 0     # padding is void (class 0, id 0)
MAX_IDS = 256           # docs/decisions.md §8: 8 bits per channel bound ids to < 256

# Float resizing can land a hair below an integer (e.g. 1024 / 480 * 480 = 1023.9999 in float32);
# without this tolerance an image that should exactly fit the target loses its last row.
_SIZE_TOLERANCE = 1e-3

Seed = tf.Tensor


def _as_seed(seed: Seed) -> tf.Tensor:
  """Validates a stateless seed and returns it as int64 [2].

  Stateless ops draw different streams for int32 and int64 seeds of equal value; casting makes
  the result independent of the dtype the pipeline happens to use.
  """
  seed = tf.convert_to_tensor(seed)
  if not seed.dtype.is_integer or (seed.shape.rank is not None and seed.shape.as_list() != [2]):
    raise ValueError(f'seed is {seed.dtype.name} {seed.shape}; pass an int32/int64 tensor of '
                     'shape [2] (e.g. derived from the run seed and the example index).')
  return tf.cast(seed, tf.int64)


def _split_seed(seed: Seed, num: int) -> list[tf.Tensor]:
  """Derives `num` independent stateless seeds, int64 [2] each."""
  return tf.unstack(tf.random.experimental.stateless_split(_as_seed(seed), num=num))


def _check_image(image: tf.Tensor, name: str = 'image') -> None:
  rank = image.shape.rank
  if rank not in (3, 4) or image.shape[-1] != 3:
    raise ValueError(f'{name} has shape {image.shape}; expected [H, W, 3] for an image or '
                     '[T, H, W, 3] for a video clip.')


def _check_label(label: tf.Tensor, image: tf.Tensor | None = None, name: str = 'label') -> None:
  rank = label.shape.rank
  if rank not in (3, 4) or label.shape[-1] != 2:
    raise ValueError(f'{name} has shape {label.shape}; expected [H, W, 2] (class + 1, segment id) '
                     'or [T, H, W, 2] for a video clip.')
  if image is not None and image.shape.rank != rank:
    raise ValueError(f'{name} has shape {label.shape} but image has shape {image.shape}; both '
                     'need the same leading axes ([H, W, .] or [T, H, W, .]).')


def _as_tensors(image: Any, label: Any) -> tuple[tf.Tensor, tf.Tensor]:
  """Converts and checks an (image, label) pair for the geometric ops."""
  image, label = tf.convert_to_tensor(image), tf.convert_to_tensor(label)
  _check_image(image)
  _check_label(label, image)
  return image, label


def _spatial_size(x: tf.Tensor) -> tf.Tensor:
  """int32 [2]: (height, width) of an [..., H, W, C] tensor."""
  return tf.shape(x)[-3:-1]


def _assert_aligned(image: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
  """Returns `label`, failing at run time if its frames or pixels do not match `image`'s."""
  static_ok = all(a is None or b is None or a == b
                  for a, b in zip(image.shape[:-1], label.shape[:-1]))
  if not static_ok:
    raise ValueError(f'image {image.shape} and label {label.shape} differ in size; the label '
                     'map must cover exactly the image pixels (and frames).')
  check = tf.debugging.assert_equal(
      tf.shape(image)[:-1], tf.shape(label)[:-1],
      message='image and label differ in size; the label map must cover exactly the image '
              'pixels (and frames)')
  with tf.control_dependencies([check]):
    return tf.identity(label)


def _to_float(image: tf.Tensor) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [0, 1]; float input is returned as float32 unchanged."""
  image = tf.convert_to_tensor(image)
  if image.dtype == tf.uint8:
    return tf.image.convert_image_dtype(image, tf.float32)
  if not image.dtype.is_floating:
    raise TypeError(f'image has dtype {image.dtype.name}; pass uint8 in [0, 255] or float in '
                    '[0, 1].')
  return tf.cast(image, tf.float32)


def _resize(image: tf.Tensor | None, label: tf.Tensor | None,
            size: tf.Tensor) -> tuple[tf.Tensor | None, tf.Tensor | None]:
  """Image: bilinear with antialias (float32); label: half-pixel-centre nearest (never mixed)."""
  if image is not None:
    image = tf.image.resize(_to_float(image), size, method='bilinear', antialias=True)
    # The antialiasing kernel can overshoot [0, 1] by an ulp; keep the documented range exact.
    image = tf.clip_by_value(image, 0.0, 1.0)
  if label is not None:
    # Nearest ignores `antialias`, so label values are copied, never interpolated.
    label = tf.image.resize(label, size, method='nearest')
  return image, label


# ---------------------------------------------------------------------------------------------
# Segment ids (docs/spec.md §1.2).


def order_ids(label: tf.Tensor, *, order: str, max_instances: int,
              seed: Seed) -> tuple[tf.Tensor, tf.Tensor]:
  """Re-assigns segment ids; drops the smallest segments when there are too many.

  Segments are identified by their id alone (channel 1) over the whole example, so a clip gets one
  assignment for all frames. Input ids are arbitrary non-negative ints (gaps allowed); they are
  first compacted to 1..n by rank (void 0 stays 0). If n > K - 1 (policy `smallest_to_void`) the
  n - (K - 1) segments with the fewest pixels (ties: the smaller original id first) become void,
  class and id both 0. Then:
    'none':    the surviving segments keep their original ids, which must be < K (else an
               InvalidArgumentError when the op runs).
    'shuffle': ids become a random permutation of 1..n' (n' = surviving segments).
    'random':  ids become n' distinct values of a random permutation of 1..K-1 (spread over the
               whole range, as the reference does for COCO).
    'raster':  ids become 1..n' in ascending original id order here; the pipeline renumbers them
               after the geometric augmentation with `raster_ids` (not a paper setting).

  Args:
    label: int [H, W, 2] or [T, H, W, 2] (class + 1, segment id), 0 = void; ids >= 0.
    order: one of 'none', 'shuffle', 'random', 'raster'.
    max_instances: K, 2..256; output ids are in 0..K-1.
    seed: int32/int64 [2].

  Returns:
    label: int32, same shape; class channel unchanged except for dropped segments.
    num_dropped: int32 scalar, how many segments were made void (the pipeline counts and logs it).
  """
  if order not in ORDERS:
    raise ValueError(f'order_ids: order={order!r} is not known; valid: {list(ORDERS)}.')
  if not 2 <= max_instances <= MAX_IDS:
    raise ValueError(f'order_ids: max_instances={max_instances} must be in 2..{MAX_IDS} (ids '
                     'are written with 8 bits; K counts the void id 0).')
  label = tf.convert_to_tensor(label)
  _check_label(label)
  label = tf.cast(label, tf.int32)
  static_shape = label.shape
  classes, ids = label[..., 0], label[..., 1]

  uniq, idx, counts = tf.unique_with_counts(tf.reshape(ids, [-1]))
  check = tf.debugging.assert_non_negative(
      uniq, message='order_ids: label has negative segment ids; ids must be >= 0 (0 = void)')
  with tf.control_dependencies([check]):
    uniq = tf.identity(uniq)
  is_void = tf.equal(uniq, 0)
  num_segments = tf.size(uniq) - tf.reduce_sum(tf.cast(is_void, tf.int32))

  # Position of each distinct id in ascending id order; void (0) comes first when present.
  by_id = tf.argsort(uniq, stable=True)
  id_rank = tf.math.invert_permutation(by_id)

  # Rank by size (fewest pixels first, ties by id); void can never be dropped.
  size_key = tf.where(is_void, tf.int32.max, counts)
  by_size = tf.argsort(tf.gather(size_key, by_id), stable=True)
  size_rank = tf.gather(tf.math.invert_permutation(by_size), id_rank)
  num_dropped = tf.maximum(num_segments - (max_instances - 1), 0)
  keep = tf.logical_and(tf.logical_not(is_void), size_rank >= num_dropped)
  dropped = tf.logical_and(tf.logical_not(is_void), tf.logical_not(keep))

  # Compact surviving ids to 1..n' in ascending id order; 0 for void and dropped.
  keep_by_id = tf.cast(tf.gather(keep, by_id), tf.int32)
  compact = tf.gather(tf.cumsum(keep_by_id) * keep_by_id, id_rank)
  num_kept = num_segments - num_dropped

  if order == 'none':
    new_value = tf.where(keep, uniq, 0)
    check = tf.debugging.assert_less(
        new_value, max_instances,
        message=f'order_ids: with order=\'none\' segment ids must already be < max_instances='
                f'{max_instances}; use order=\'shuffle\' or \'random\' to compact them')
    with tf.control_dependencies([check]):
      new_value = tf.identity(new_value)
  elif order == 'raster':
    new_value = compact
  else:
    n = num_kept if order == 'shuffle' else max_instances - 1
    perm = tf.random.experimental.stateless_shuffle(tf.range(1, n + 1, dtype=tf.int32),
                                                    _as_seed(seed))
    # A leading 0 maps void and dropped segments (compact id 0) to 0 with no out-of-range gather.
    new_value = tf.gather(tf.concat([[0], perm], axis=0), compact)

  new_ids = tf.reshape(tf.gather(new_value, idx), tf.shape(ids))
  # Only an overflowing example needs the (full-size) class update.
  new_classes = tf.cond(
      num_dropped > 0,
      lambda: tf.where(tf.reshape(tf.gather(dropped, idx), tf.shape(ids)), 0, classes),
      lambda: tf.identity(classes))
  out = tf.stack([new_classes, new_ids], axis=-1)
  out.set_shape(static_shape)
  return out, tf.cast(num_dropped, tf.int32)


def raster_ids(masks: tf.Tensor) -> tf.Tensor:
  """Renumbers segment ids 1..n in the raster order of each segment's first pixel.

  A canonical order (not the paper's: its ids are random, docs/spec.md §1.2) that makes a pixel's id
  a function of the image: the segment met first scanning rows top to bottom, each left to right,
  gets id 1, the next 2, and so on. Over a clip [T, h, w, 2] the scan runs frame after frame, so
  the ids stay consistent through time. Void (id 0) stays 0. Applied to training masks after the
  crop and flip (the order depends on where segments land).

  Args:
    masks: int32 [.., h, w, 2] (class + 1, id), ids already in 0..K-1.

  Returns:
    int32, same shape; the class channel unchanged.
  """
  masks = tf.convert_to_tensor(masks)
  ids = masks[..., 1]
  # tf.unique lists values in order of first occurrence: the raster order of the flat scan.
  uniq, idx = tf.unique(tf.reshape(ids, [-1]))
  is_void = tf.cast(tf.equal(uniq, 0), tf.int32)
  # Rank among non-void segments, 1-based; void keeps 0.
  rank = (tf.cumsum(1 - is_void)) * (1 - is_void)
  new_ids = tf.reshape(tf.gather(rank, idx), tf.shape(ids))
  out = tf.stack([masks[..., 0], tf.cast(new_ids, masks.dtype)], axis=-1)
  out.set_shape(masks.shape)
  return out


# ---------------------------------------------------------------------------------------------
# Train-time geometry and colour (docs/spec.md §3.9).


def scale_jitter(image: tf.Tensor, label: tf.Tensor, *, output_size: tuple[int, int],
                 min_scale: float, max_scale: float,
                 seed: Seed) -> tuple[tf.Tensor, tf.Tensor]:
  """Resizes so that the image fits s x output_size, s ~ U(min_scale, max_scale).

  scale = min(H·s / H0, W·s / W0); both tensors are resized to floor(scale · (H0, W0)).

  Args:
    image: [H0, W0, 3] or [T, H0, W0, 3], uint8 or float in [0, 1].
    label: int32 [H0, W0, 2] or [T, H0, W0, 2].
    output_size: (H, W), the training image size.
    min_scale: lower bound of s (> 0).
    max_scale: upper bound of s (>= min_scale).
    seed: int32/int64 [2].

  Returns:
    image: float32 [.., h, w, 3] in [0, 1] (bilinear, antialiased).
    label: int32 [.., h, w, 2] (nearest).
  """
  image, label = _as_tensors(image, label)
  if not 0 < min_scale <= max_scale:
    raise ValueError(f'scale_jitter: need 0 < min_scale <= max_scale, got min_scale={min_scale}, '
                     f'max_scale={max_scale}.')
  size = _jitter_size(_spatial_size(image), output_size, min_scale, max_scale, seed)
  return _resize(image, label, size)


def _jitter_size(in_size: tf.Tensor, output_size: tuple[int, int], min_scale: float,
                 max_scale: float, seed: Seed) -> tf.Tensor:
  """int32 [2]: the scale-jittered size floor(scale · (H0, W0)) of `scale_jitter`."""
  s = tf.random.stateless_uniform([], _as_seed(seed), minval=min_scale, maxval=max_scale)
  in_size = tf.cast(in_size, tf.float32)
  target = tf.constant(output_size, tf.float32) * s
  scale = tf.reduce_min(target / in_size)
  return tf.maximum(tf.cast(tf.floor(in_size * scale + _SIZE_TOLERANCE), tf.int32), 1)


def fixed_size_crop(image: tf.Tensor, label: tf.Tensor, *, output_size: tuple[int, int],
                    seed: Seed) -> tuple[tf.Tensor, tf.Tensor]:
  """Crops at most output_size at a random offset.

  offset = floor(u · max(0, size - output_size)) with ONE u ~ U(0, 1) for both axes (as the
  reference does); the crop is min(output_size, size - offset), so smaller inputs stay whole.

  Args:
    image: [.., h, w, 3] any dtype.
    label: [.., h, w, 2] int32, same leading axes.
    output_size: (H, W).
    seed: int32/int64 [2].

  Returns:
    image, label: [.., min(h, H), min(w, W), C], same dtypes.
  """
  image, label = _as_tensors(image, label)
  offset, crop = _crop_window(_spatial_size(image), output_size, seed)
  y0, x0 = offset[0], offset[1]
  y1, x1 = y0 + crop[0], x0 + crop[1]
  return image[..., y0:y1, x0:x1, :], label[..., y0:y1, x0:x1, :]


def _crop_window(size: tf.Tensor, output_size: tuple[int, int],
                 seed: Seed) -> tuple[tf.Tensor, tf.Tensor]:
  """(offset, crop), int32 [2] each: the window `fixed_size_crop` cuts from a `size` input."""
  target = tf.constant(output_size, tf.int32)
  max_offset = tf.cast(tf.maximum(size - target, 0), tf.float32)
  u = tf.random.stateless_uniform([], _as_seed(seed))
  offset = tf.cast(tf.floor(max_offset * u), tf.int32)
  return offset, tf.minimum(target, size - offset)


def random_horizontal_flip(image: tf.Tensor, label: tf.Tensor, *, prob: float,
                           seed: Seed) -> tuple[tf.Tensor, tf.Tensor]:
  """Flips image and label left-right together with probability `prob`.

  Args:
    image: [.., h, w, 3]; label: [.., h, w, 2].
    prob: flip probability in [0, 1].
    seed: int32/int64 [2].

  Returns:
    image, label with the same shapes and dtypes.
  """
  image, label = _as_tensors(image, label)
  flip = tf.random.stateless_uniform([], _as_seed(seed)) < prob
  image_out, label_out = tf.cond(
      flip,
      lambda: (tf.reverse(image, axis=[-2]), tf.reverse(label, axis=[-2])),
      lambda: (tf.identity(image), tf.identity(label)))
  image_out.set_shape(image.shape)
  label_out.set_shape(label.shape)
  return image_out, label_out


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  gray = tf.image.rgb_to_grayscale(image)
  return tf.concat([gray, gray, gray], axis=-1)


def color_jitter(image: tf.Tensor, *, strength: float, seed: Seed) -> tf.Tensor:
  """SimCLR-v2 colour jitter (the reference's `random_color_jitter`, impl 'simclrv2').

  With probability 0.8: brightness (multiplicative, factor ~ U(max(0, 1 - 0.8s), 1 + 0.8s)),
  contrast and saturation (factor ~ U(max(0, 1 - 0.8s), 1 + 0.8s)) and hue (delta ~ U(-0.2s, 0.2s))
  in a random order, clipping to [0, 1] after each; then, with probability 0.2, grayscale. A clip
  gets the same factors and order for all frames (contrast uses each frame's own mean).
  The `max(0, .)` only matters for s > 1.25, where the reference would fail.

  Args:
    image: float [H, W, 3] or [T, H, W, 3] in [0, 1].
    strength: s >= 0; 0 returns the image unchanged.
    seed: int32/int64 [2].

  Returns:
    float32, same shape, in [0, 1].
  """
  if strength < 0:
    raise ValueError(f'color_jitter: strength={strength} must be >= 0 (0 disables it).')
  image = tf.convert_to_tensor(image)
  _check_image(image)
  if not image.dtype.is_floating:
    raise TypeError(f'color_jitter: image has dtype {image.dtype.name}; convert it to float in '
                    '[0, 1] first.')
  image = tf.cast(image, tf.float32)
  if strength == 0:
    return image
  (apply_seed, gray_seed, order_seed, b_seed, c_seed, s_seed,
   h_seed) = _split_seed(seed, 7)
  lower = max(0.0, 1.0 - 0.8 * strength)
  upper = 1.0 + 0.8 * strength
  brightness = tf.random.stateless_uniform([], b_seed, lower, upper)
  contrast = tf.random.stateless_uniform([], c_seed, lower, upper)
  saturation = tf.random.stateless_uniform([], s_seed, lower, upper)
  hue = tf.random.stateless_uniform([], h_seed, -0.2 * strength, 0.2 * strength)
  ops = (
      lambda x: x * brightness,
      lambda x: tf.image.adjust_contrast(x, contrast),
      lambda x: tf.image.adjust_saturation(x, saturation),
      lambda x: tf.image.adjust_hue(x, hue),
  )

  def jitter(x: tf.Tensor) -> tf.Tensor:
    order = tf.random.experimental.stateless_shuffle(tf.range(4, dtype=tf.int32), order_seed)
    for i in range(4):
      branches = [lambda op=op, x=x: tf.clip_by_value(op(x), 0.0, 1.0) for op in ops]
      x = tf.switch_case(order[i], branches)
      x.set_shape(image.shape)
    return x

  apply = tf.random.stateless_uniform([], apply_seed) < 0.8
  image_out = tf.cond(apply, lambda: jitter(image), lambda: tf.identity(image))
  to_gray = tf.random.stateless_uniform([], gray_seed) < 0.2
  image_out = tf.cond(to_gray, lambda: _grayscale(image_out), lambda: tf.identity(image_out))
  image_out = tf.clip_by_value(image_out, 0.0, 1.0)
  image_out.set_shape(image.shape)
  return image_out


def pad_to_size(image: tf.Tensor, label: tf.Tensor | None, *, output_size: tuple[int, int],
                image_value: float = PAD_IMAGE_VALUE,
                label_value: int = PAD_LABEL_VALUE) -> tuple[tf.Tensor, tf.Tensor | None]:
  """Pads bottom/right to exactly output_size.

  Args:
    image: [.., h, w, 3] with h <= H, w <= W.
    label: [.., h, w, 2] int32 or None.
    output_size: (H, W).
    image_value: image padding value (0.3, docs/decisions.md §9).
    label_value: label padding value (0 = void).

  Returns:
    image [.., H, W, 3] and label [.., H, W, 2] (or None), same dtypes.
  """
  image = tf.convert_to_tensor(image)
  if label is not None:
    label = tf.convert_to_tensor(label)
  height, width = output_size
  size = _spatial_size(image)
  check = tf.debugging.assert_less_equal(
      size, tf.constant(output_size, tf.int32),
      message=f'pad_to_size: image is larger than output_size={tuple(output_size)}; crop or '
              'resize it first')
  with tf.control_dependencies([check]):
    pad_h, pad_w = height - size[0], width - size[1]

  def pad(x: tf.Tensor, value: Any) -> tf.Tensor:
    lead = [[0, 0]] * (x.shape.rank - 3)
    out = tf.pad(x, lead + [[0, pad_h], [0, pad_w], [0, 0]], constant_values=value)
    out.set_shape(x.shape[:-3].concatenate([height, width, x.shape[-1]]))
    return out

  image = pad(image, tf.cast(image_value, image.dtype))
  if label is not None:
    label = pad(label, tf.cast(label_value, label.dtype))
  return image, label


def resize_label(label: tf.Tensor, mask_size: tuple[int, int]) -> tf.Tensor:
  """Nearest-neighbour (half-pixel centres) resize of a label map to the mask resolution.

  Args:
    label: int32 [.., h, w, 2].
    mask_size: (h', w').

  Returns:
    int32 [.., h', w', 2]; every value is copied from the input, never interpolated.
  """
  label = tf.convert_to_tensor(label)
  out = tf.image.resize(label, mask_size, method='nearest')
  out.set_shape(label.shape[:-3].concatenate(list(mask_size) + [label.shape[-1]]))
  return out


# ---------------------------------------------------------------------------------------------
# Whole-example transforms.


def _pop_image_label(example: dict[str, Any], fn: str,
                     label_required: bool) -> tuple[dict[str, Any], tf.Tensor, tf.Tensor | None]:
  rest = dict(example)
  if 'image' not in rest or (label_required and 'label' not in rest):
    raise KeyError(f'{fn}: example has keys {sorted(rest)}; it needs \'image\' (uint8 '
                   f'[.., H, W, 3]){" and" if label_required else " and optionally"} \'label\' '
                   '(int32 [.., H, W, 2]).')
  image = tf.convert_to_tensor(rest.pop('image'))
  _check_image(image, f'{fn}: example["image"]')
  label = rest.pop('label', None)
  if label is not None:
    label = tf.cast(tf.convert_to_tensor(label), tf.int32)
    _check_label(label, image, f'{fn}: example["label"]')
    label = _assert_aligned(image, label)
  return rest, image, label


def _window_resize(image: tf.Tensor, size: tf.Tensor, offset: tf.Tensor, crop: tf.Tensor,
                   flip: tf.Tensor, color_jitter_strength: float, color_seed: Seed) -> tf.Tensor:
  """flip(crop(resize(image, size), offset, crop)) that reads only the source pixels it needs.

  The source window under the crop (plus the kernel's reach) is converted to float,
  colour-jittered and resized straight to the crop with the sample positions of
  `tf.image.resize(..., antialias=True)`: upsampling (the usual zoom-in jitter) is bilinear
  interpolation, done by `crop_and_resize` on the edge-padded window, which also flips for free;
  downsampling uses the antialiasing triangle kernel (`ScaleAndTranslate`). Equal to resizing
  the whole image and cropping, to float rounding.

  Args:
    image: uint8/float [H0, W0, 3] or [T, H0, W0, 3].
    size: int32 [2], the scale-jittered size.
    offset, crop: int32 [2], the crop window in the resized image.
    flip: bool scalar, mirror the crop left-right.
    color_jitter_strength, color_seed: `color_jitter`'s arguments.

  Returns:
    float32 [.., crop_h, crop_w, 3] in [0, 1].
  """
  in_size = _spatial_size(image)
  scale = tf.cast(size, tf.float32) / tf.cast(in_size, tf.float32)
  # A sample reads source pixels within max(1, 1/scale) of its position (triangle kernel).
  reach = tf.maximum(1.0, 1.0 / scale)
  offset_f, crop_f = tf.cast(offset, tf.float32), tf.cast(crop, tf.float32)
  first = (offset_f + 0.5) / scale - 0.5          # source position of the crop's first sample
  last = first + (crop_f - 1.0) / scale
  lo = tf.clip_by_value(tf.cast(tf.floor(first - reach), tf.int32) - 1, 0, in_size - 1)
  hi = tf.clip_by_value(tf.cast(tf.math.ceil(last + reach), tf.int32) + 2, lo + 1, in_size)
  window = _to_float(image[..., lo[0]:hi[0], lo[1]:hi[1], :])
  window = color_jitter(window, strength=color_jitter_strength, seed=color_seed)
  is_video = window.shape.rank == 4
  batched = window if is_video else window[None]
  frames = tf.shape(batched)[0]
  lo_f = tf.cast(lo, tf.float32)

  def upsample():
    # Edge replication reproduces resize's clamping at the image border; +1 for the pad.
    padded = tf.pad(batched, [[0, 0], [1, 1], [1, 1], [0, 0]], mode='SYMMETRIC')
    extent = tf.cast(tf.shape(padded)[1:3], tf.float32) - 1.0
    start = (first - lo_f + 1.0) / extent
    end = (last - lo_f + 1.0) / extent
    x0, x1 = tf.cond(flip, lambda: (end[1], start[1]), lambda: (start[1], end[1]))
    box = tf.stack([start[0], x0, end[0], x1])
    return tf.image.crop_and_resize(padded, tf.tile(box[None], [frames, 1]),
                                    tf.range(frames), crop, method='bilinear')

  def downsample():
    out = tf.raw_ops.ScaleAndTranslate(
        images=batched, size=crop, scale=scale, translation=lo_f * scale - offset_f,
        kernel_type='triangle', antialias=True)
    return tf.cond(flip, lambda: tf.reverse(out, axis=[2]), lambda: tf.identity(out))

  out = tf.cond(tf.reduce_all(size >= in_size), upsample, downsample)
  out = tf.clip_by_value(out, 0.0, 1.0)
  return out if is_video else out[0]


def _nearest_index(out_len: int, canvas_len: int, in_len: tf.Tensor, size_len: tf.Tensor,
                   offset: tf.Tensor, crop: tf.Tensor,
                   flip: tf.Tensor | bool) -> tuple[tf.Tensor, tf.Tensor]:
  """Source index of each mask row (or column) through resize, crop, flip, pad and resize.

  Reproduces `tf.image.resize(method='nearest')` (half-pixel centres, float32 arithmetic)
  twice: canvas -> mask, then the scale jitter's source -> resized.

  Returns:
    (int32 [out_len] source indices, bool [out_len] False where the canvas is padding).
  """
  def nearest(i, in_n, out_n):
    scale = tf.cast(in_n, tf.float32) / tf.cast(out_n, tf.float32)
    j = tf.cast(tf.floor((tf.cast(i, tf.float32) + 0.5) * scale), tf.int32)
    return tf.clip_by_value(j, 0, in_n - 1)

  canvas = nearest(tf.range(out_len), canvas_len, out_len)
  valid = canvas < crop
  before_flip = tf.where(flip, crop - 1 - canvas, canvas)
  source = nearest(offset + before_flip, in_len, size_len)
  return tf.where(valid, source, 0), valid


def train_transform(example: dict[str, Any], *, image_size: tuple[int, int],
                    mask_size: tuple[int, int], min_scale: float, max_scale: float,
                    color_jitter_strength: float, flip_prob: float,
                    seed: Seed) -> dict[str, Any]:
  """The training augmentation of docs/spec.md §3.9: jitter, crop, flip, colour, pad, label → mask
  size.

  The same geometry and random draws as scale_jitter → fixed_size_crop → random_horizontal_flip
  → pad_to_size → resize_label, computed in one pass: only the source pixels under the crop
  window are converted to float, colour-jittered and resized (straight to the crop), and the
  mask is gathered from the source label at mask resolution (identical masks; images equal to
  float rounding). Colour jitter therefore acts on source pixels before the resize rather than
  after it: per-pixel colour operations and the resize commute up to interpolation, and the
  window holds about 1/s² of the pixels of a zoomed crop.

  Args:
    example: {'image': uint8/float [H0, W0, 3] or [T, H0, W0, 3], 'label': int32 [.., H0, W0, 2],
      any other keys}. Ids should already be ordered (`order_ids`).
    image_size: (H, W).
    mask_size: (h, w).
    min_scale, max_scale: scale-jitter range (COCO low-res: 1, 3; high-res: 1, 1).
    color_jitter_strength: 0 disables colour jitter.
    flip_prob: horizontal flip probability.
    seed: int32/int64 [2], one per example.

  Returns:
    {'image': float32 [.., H, W, 3] in [0, 1], padded with 0.3,
     'masks': int32 [.., h, w, 2] (class + 1, id), padding void} plus the other keys unchanged.
  """
  rest, image, label = _pop_image_label(example, 'train_transform', label_required=True)
  if not 0 < min_scale <= max_scale:
    raise ValueError(f'train_transform: need 0 < min_scale <= max_scale, got min_scale='
                     f'{min_scale}, max_scale={max_scale}.')
  jitter_seed, crop_seed, flip_seed, color_seed = _split_seed(seed, 4)
  in_size = _spatial_size(image)
  size = _jitter_size(in_size, image_size, min_scale, max_scale, jitter_seed)
  offset, crop = _crop_window(size, image_size, crop_seed)
  flip = tf.random.stateless_uniform([], _as_seed(flip_seed)) < flip_prob

  crop_image = _window_resize(image, size, offset, crop, flip, color_jitter_strength, color_seed)
  rest['image'], _ = pad_to_size(crop_image, None, output_size=image_size)

  rows, valid_rows = _nearest_index(mask_size[0], image_size[0], in_size[0], size[0], offset[0],
                                    crop[0], False)
  cols, valid_cols = _nearest_index(mask_size[1], image_size[1], in_size[1], size[1], offset[1],
                                    crop[1], flip)
  masks = tf.gather(tf.gather(label, rows, axis=-3), cols, axis=-2)
  valid = tf.logical_and(valid_rows[:, None], valid_cols[None, :])
  masks = tf.where(valid[..., None], masks, PAD_LABEL_VALUE)
  masks.set_shape(label.shape[:-3].concatenate(list(mask_size) + [label.shape[-1]]))
  rest['masks'] = masks
  return rest


def fit_size(size: tf.Tensor, output_size: tuple[int, int]) -> tf.Tensor:
  """int32 [2]: the largest (h, w) with the aspect of `size` that fits in output_size.

  Same rounding as `tf.image.resize(..., preserve_aspect_ratio=True)` (the reference's eval resize).
  """
  size = tf.cast(size, tf.float32)
  scale = tf.reduce_min(tf.constant(output_size, tf.float32) / size)
  fitted = tf.cast(tf.round(size * scale), tf.int32)
  return tf.clip_by_value(fitted, 1, tf.constant(output_size, tf.int32))


def eval_transform(example: dict[str, Any], *, image_size: tuple[int, int],
                   mask_size: tuple[int, int]) -> dict[str, Any]:
  """The evaluation preprocessing of docs/spec.md §3.9: fit inside image_size keeping aspect, then
  pad.

  The original label is not copied here; the pipeline passes it through (e.g. as 'label_orig')
  when metrics need the full-resolution ground truth.

  Args:
    example: {'image': uint8/float [H0, W0, 3] or [T, H0, W0, 3], optional 'label': int32
      [.., H0, W0, 2], any other keys}.
    image_size: (H, W).
    mask_size: (h, w).

  Returns:
    {'image': float32 [.., H, W, 3] in [0, 1], padded with 0.3,
     'masks': int32 [.., h, w, 2] (only when 'label' was given),
     'orig_size': int32 [2] (H0, W0),
     'unpadded_size': int32 [2], the resized image's (h', w') inside the canvas}
    plus the other keys unchanged.
  """
  rest, image, label = _pop_image_label(example, 'eval_transform', label_required=False)
  orig_size = _spatial_size(image)
  size = fit_size(orig_size, image_size)
  image, label = _resize(image, label, size)
  image, label = pad_to_size(image, label, output_size=image_size)
  rest['image'] = image
  if label is not None:
    rest['masks'] = resize_label(label, mask_size)
  rest['orig_size'] = orig_size
  rest['unpadded_size'] = size
  return rest
