"""Embedded synthetic panoptic data: textured stuff and overlapping shapes, as images and videos.

The default configs train on these so that a model can be trained end to end in minutes on a laptop
CPU without downloading anything. The data are built to be learnable but not trivial:

- Stuff: 2-3 regions with wavy boundaries partition the background. Each region's class is told by
  its texture (fine vertical stripes = grass, wavy horizontal stripes = water, checks = tiles,
  blotches = sand); its colour is a random tint, so colour does not give the class away.
- Things: 1-4 shapes (disc, square, triangle, ring) of 25-45 % of the image side, with random
  colours independent of class, smooth shading and a dark outline, painted in random depth order so
  that they touch and occlude each other. The class is told by the shape only. An instance whose
  visible part would be small (under `MIN_AREA_FRACTION` of the image, or under
  `MIN_VISIBLE_FRACTION` of its own area) is never left as a fragment: the layout is redrawn, and as
  a last resort the instance is removed from both image and label.
- Void: 0-2 speckled clutter blobs and, in half of the images, thin dark lines on the stuff
  boundaries; both are labelled (0, 0), a few % of the pixels on average.
- Photometric noise: per-pixel Gaussian noise, random brightness and a random colour cast.

Label convention (project-wide): int32 [..., H, W, 2]; channel 0 = contiguous class index + 1 into
`SHAPES_CATEGORIES` (0 = void), channel 1 = segment id (0 = void). Every segment, stuff regions
included, gets its own id; the generator's ids are provisional and contiguous 1..n (per image, or
per clip for video); the input pipeline reorders them.

Every example is a pure function of (seed, split, index): the generator draws from
`np.random.default_rng(np.random.SeedSequence([seed, stream, split, index]))`, so examples can be
made in any order, in parallel, or again later, and 'train' and 'validation' are independent
streams. Run `python -m pix2seq_d_jax.data.synthetic` for timings and statistics as JSON.
"""

import functools
import json
import math
import operator
import time
from typing import Any, NamedTuple

import numpy as np

# COCO-style categories. Things come first, as in COCO. The colours are for visualisation only; the
# generator draws random colours.
SHAPES_CATEGORIES: list[dict[str, Any]] = [
    {'id': 1, 'name': 'disc', 'isthing': 1, 'color': [220, 20, 60]},
    {'id': 2, 'name': 'square', 'isthing': 1, 'color': [0, 130, 200]},
    {'id': 3, 'name': 'triangle', 'isthing': 1, 'color': [255, 200, 0]},
    {'id': 4, 'name': 'ring', 'isthing': 1, 'color': [145, 30, 180]},
    {'id': 5, 'name': 'sand', 'isthing': 0, 'color': [210, 180, 140]},
    {'id': 6, 'name': 'grass', 'isthing': 0, 'color': [60, 160, 60]},
    {'id': 7, 'name': 'water', 'isthing': 0, 'color': [40, 90, 200]},
    {'id': 8, 'name': 'tiles', 'isthing': 0, 'color': [150, 150, 150]},
]
NUM_CATEGORIES = len(SHAPES_CATEGORIES)
# Label-map class values (contiguous index + 1) of the thing and stuff classes.
THING_CLASSES = tuple(i + 1 for i, c in enumerate(SHAPES_CATEGORIES) if c['isthing'])
STUFF_CLASSES = tuple(i + 1 for i, c in enumerate(SHAPES_CATEGORIES) if not c['isthing'])
_CLASS_BY_NAME = {c['name']: i + 1 for i, c in enumerate(SHAPES_CATEGORIES)}

MIN_STUFF_REGIONS = 2
MAX_STUFF_REGIONS = 3
DEFAULT_MIN_THINGS = 1
DEFAULT_MAX_THINGS = 4
# Segments per image (or per clip: an object keeps one id over the clip) with the default counts.
MAX_SEGMENTS = MAX_STUFF_REGIONS + DEFAULT_MAX_THINGS
# No segment is smaller than this fraction of the image (1.5 %: 62 pixels at 64 x 64).
MIN_AREA_FRACTION = 0.015
# A still image keeps at least this fraction of each thing's in-frame area visible, so that
# occlusion never reduces an instance to an unrecognisable sliver.
MIN_VISIBLE_FRACTION = 0.4
# Thing size (bounding-circle diameter) as a fraction of the image side.
THING_SIZE_RANGE = (0.25, 0.45)
# image_id / video_id = offset of the split + index; ids stay below 2**31.
ID_SPLIT_STRIDE = 1_000_000_000

_SPLIT_CODES = {'train': 0, 'validation': 1, 'val': 1}
_STREAM_IMAGE, _STREAM_VIDEO = 0, 1
_MAX_ATTEMPTS = 16
_OUTLINE_GAIN = 0.35


def num_classes() -> int:
  """Number of label classes including void (class 0), the value configs call `num_classes`."""
  return NUM_CATEGORIES + 1


def max_segments(max_things: int = DEFAULT_MAX_THINGS) -> int:
  """Most segment ids an image (or a clip) can hold; choose K = max_instances > this value."""
  return MAX_STUFF_REGIONS + max_things


def min_segment_area(image_size: int) -> int:
  """Smallest segment area in pixels that the generator produces at this image size."""
  return int(math.ceil(MIN_AREA_FRACTION * image_size * image_size))


def _split_code(split: str) -> int:
  if split not in _SPLIT_CODES:
    raise ValueError(f'synthetic data: unknown split {split!r}; valid: {sorted(_SPLIT_CODES)}.')
  return _SPLIT_CODES[split]


def _example_rng(seed: int, split: str, index: int, stream: int) -> tuple[np.random.Generator, int]:
  """Returns the generator of one example and its stable id (split offset + index)."""
  seed, index = operator.index(seed), operator.index(index)
  if seed < 0:
    raise ValueError(f'synthetic data: seed must be >= 0, got {seed}.')
  if not 0 <= index < ID_SPLIT_STRIDE:
    raise ValueError(f'synthetic data: index must be in [0, {ID_SPLIT_STRIDE}), got {index}.')
  code = _split_code(split)
  rng = np.random.default_rng(np.random.SeedSequence([seed, stream, code, index]))
  return rng, code * ID_SPLIT_STRIDE + index


def _check_counts(image_size: int, lo: int, hi: int, what: str) -> None:
  if image_size < 16:
    raise ValueError(f'synthetic data: image_size must be >= 16, got {image_size}.')
  if not 1 <= lo <= hi:
    raise ValueError(f'synthetic data: need 1 <= min_{what} <= max_{what}, got {lo}, {hi}.')
  if MAX_STUFF_REGIONS + hi > 255:
    raise ValueError(f'synthetic data: max_{what}={hi} exceeds the 8-bit id range (<= 252).')


# ----------------------------------------------------------------------------------------------
# Small vectorised building blocks.


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates (y, x), float32 [S, S] each, read-only (they are cached)."""
  c = np.arange(size, dtype=np.float32) + 0.5
  ys, xs = c[:, None] + np.zeros((1, size), np.float32), np.zeros((size, 1), np.float32) + c[None]
  ys.flags.writeable = False
  xs.flags.writeable = False
  return ys, xs


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  """HSV in [0, 1] (any equal shapes) -> RGB float32 [..., 3] in [0, 1]."""
  k = (np.array([5.0, 3.0, 1.0], np.float32) + 6.0 * np.asarray(h, np.float32)[..., None]) % 6.0
  w = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
  s = np.asarray(s, np.float32)[..., None]
  return np.asarray(v, np.float32)[..., None] * (1.0 - s * w)


def _erode(mask: np.ndarray, steps: int = 1) -> np.ndarray:
  """4-neighbour erosion over the last two axes; the image border does not erode."""
  out = mask.copy()
  for _ in range(steps):
    m = out.copy()
    out[..., 1:, :] &= m[..., :-1, :]
    out[..., :-1, :] &= m[..., 1:, :]
    out[..., :, 1:] &= m[..., :, :-1]
    out[..., :, :-1] &= m[..., :, 1:]
  return out


def _dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
  """4-neighbour dilation over the last two axes."""
  return ~_erode(~mask, steps)


def _region_boundary(region: np.ndarray) -> np.ndarray:
  """Pixels whose right or lower neighbour lies in another region: a 1-pixel line. [..., S, S]."""
  out = np.zeros(region.shape, bool)
  out[..., :, :-1] |= region[..., :, :-1] != region[..., :, 1:]
  out[..., :-1, :] |= region[..., :-1, :] != region[..., 1:, :]
  return out


# ----------------------------------------------------------------------------------------------
# Stuff: wavy bands of textured regions.


class _Stuff(NamedTuple):
  classes: np.ndarray      # int32 [R], label class values
  theta: float             # direction across the bands
  wave: tuple[float, float, float]  # amplitude (px), angular frequency (1/px), phase
  thresholds: np.ndarray   # float32 [R - 1], band edges of the field
  tints: np.ndarray        # float32 [R, 3] in [0, 1]
  textures: list[dict[str, Any]]
  pan: np.ndarray          # float32 [2], (dy, dx) pixels per frame


def _sample_texture(rng: np.random.Generator, name: str, size: int) -> dict[str, Any]:
  """Per-region texture parameters; periods scale with the image side."""
  px = size / 64.0
  p: dict[str, Any] = {'name': name, 'amp': rng.uniform(0.22, 0.35), 'phase': rng.uniform(0, 6.3)}
  if name == 'sand':
    p['angles'] = rng.uniform(0.0, np.pi, 3)
    p['periods'] = rng.uniform(8.0, 14.0, 3) * px
    p['phases'] = rng.uniform(0.0, 2 * np.pi, 3)
  elif name == 'grass':
    p['angle'] = rng.uniform(-0.25, 0.25)
    p['period'] = rng.uniform(3.5, 4.5) * px
  elif name == 'water':
    p['period'] = rng.uniform(6.0, 9.0) * px
    p['wave_amp'] = rng.uniform(0.8, 2.0) * px
    p['wave_period'] = rng.uniform(12.0, 20.0) * px
  elif name == 'tiles':
    p['angle'] = rng.uniform(-0.2, 0.2)
    p['period'] = rng.uniform(9.0, 13.0) * px
  else:
    raise ValueError(f'synthetic data: no texture for stuff class {name!r}.')
  return p


def _texture(p: dict[str, Any], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
  """Texture pattern in [-1, 1], float32 with the shape of ys/xs."""
  name, tau = p['name'], np.float32(2 * np.pi)
  if name == 'sand':
    # Sum of three random plane waves of long period: soft irregular blotches.
    acc = np.zeros(np.broadcast_shapes(ys.shape, xs.shape), np.float32)
    for a, per, ph in zip(p['angles'], p['periods'], p['phases']):
      u = xs * np.float32(math.cos(a)) + ys * np.float32(math.sin(a))
      acc += np.sin(u * (tau / per) + ph)
    return np.tanh(acc)
  if name == 'grass':
    # Near-vertical fine stripes (the pattern varies along x).
    a = p['angle']
    u = xs * np.float32(math.cos(a)) + ys * np.float32(math.sin(a))
    return np.tanh(3.0 * np.sin(u * (tau / p['period']) + p['phase']))
  if name == 'water':
    # Horizontal stripes with a wavy offset.
    wobble = p['wave_amp'] * np.sin(xs * (tau / p['wave_period']))
    return np.sin((ys + wobble) * (tau / p['period']) + p['phase'])
  # tiles: checks.
  a = p['angle']
  c, s = np.float32(math.cos(a)), np.float32(math.sin(a))
  w = tau / p['period']
  return np.sign(np.sin((xs * c + ys * s) * w + p['phase']) * np.sin((ys * c - xs * s) * w))


def _sample_stuff(rng: np.random.Generator, size: int, pan: bool) -> _Stuff:
  num = int(rng.integers(MIN_STUFF_REGIONS, MAX_STUFF_REGIONS + 1))
  classes = rng.choice(np.array(STUFF_CLASSES, np.int32), num, replace=False)
  theta = rng.uniform(0, 2 * np.pi)
  wave = (rng.uniform(0.03, 0.1) * size, 2 * np.pi / (rng.uniform(0.5, 1.2) * size),
          rng.uniform(0, 2 * np.pi))
  if num == 2:
    quantiles = [rng.uniform(0.3, 0.7)]
  else:
    q1 = rng.uniform(0.2, 0.4)
    quantiles = [q1, rng.uniform(q1 + 0.25, min(0.8, q1 + 0.45))]
  ys, xs = _grid(size)
  field = _stuff_field(theta, wave, size, ys, xs)
  thresholds = np.quantile(field, quantiles).astype(np.float32)
  tints = _hsv_to_rgb(rng.uniform(0, 1, num), rng.uniform(0.15, 0.7, num),
                      rng.uniform(0.35, 0.85, num))
  names = [SHAPES_CATEGORIES[c - 1]['name'] for c in classes]
  textures = [_sample_texture(rng, n, size) for n in names]
  velocity = np.zeros(2, np.float32)
  if pan and rng.uniform() < 0.5:
    a, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.8) * size / 64.0
    velocity = np.array([math.sin(a), math.cos(a)], np.float32) * speed
  return _Stuff(classes, theta, wave, thresholds, tints, textures, velocity)


def _stuff_field(theta: float, wave: tuple[float, float, float], size: int, ys: np.ndarray,
                 xs: np.ndarray) -> np.ndarray:
  """Scalar field whose level sets are the wavy region boundaries."""
  c, s = np.float32(math.cos(theta)), np.float32(math.sin(theta))
  y, x = ys - size / 2, xs - size / 2
  amp, freq, phase = wave
  return x * c + y * s + np.float32(amp) * np.sin((y * c - x * s) * np.float32(freq) + phase)


def _render_stuff(stuff: _Stuff, size: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns region index int32 [T, S, S] in [0, R) and colours float32 [T, S, S, 3]."""
  ys, xs = _grid(size)
  t = np.arange(num_frames, dtype=np.float32)[:, None, None]
  # Panning moves the content: the frame at t shows the scene shifted by pan * t.
  ys = ys[None] - stuff.pan[0] * t
  xs = xs[None] - stuff.pan[1] * t
  field = _stuff_field(stuff.theta, stuff.wave, size, ys, xs)
  region = np.zeros(field.shape, np.int32)
  for thr in stuff.thresholds:
    region += field > thr
  rgb = np.empty(field.shape + (3,), np.float32)
  for r, (tint, tex) in enumerate(zip(stuff.tints, stuff.textures)):
    m = region == r
    pattern = _texture(tex, ys, xs)[m]
    rgb[m] = tint * (1.0 + np.float32(tex['amp']) * pattern)[:, None]
  return region, rgb


# ----------------------------------------------------------------------------------------------
# Things: shapes with trajectories (one frame for still images).

_DISC, _SQUARE, _TRIANGLE, _RING = (THING_CLASSES.index(_CLASS_BY_NAME[n])
                                    for n in ('disc', 'square', 'triangle', 'ring'))


class _Things(NamedTuple):
  kinds: np.ndarray        # int32 [k], index into THING_CLASSES
  cy: np.ndarray           # float32 [k, T], centre row (px)
  cx: np.ndarray           # float32 [k, T], centre column (px)
  size: np.ndarray         # float32 [k, T], bounding-circle diameter (px)
  angle: np.ndarray        # float32 [k, T], rotation (rad)
  colours: np.ndarray      # float32 [k, 3] in [0, 1]
  shade: np.ndarray        # float32 [k, 2], shading gradient (per radius) along (y, x)


def _shape_mask(kind: int, ys: np.ndarray, xs: np.ndarray, cy: np.ndarray, cx: np.ndarray,
                size: np.ndarray, angle: np.ndarray) -> np.ndarray:
  """Boolean mask of one shape; cy, cx, size, angle broadcast against ys/xs (e.g. [T, 1, 1])."""
  dy, dx = ys - cy, xs - cx
  if kind in (_DISC, _RING):
    d2 = dy * dy + dx * dx
    outer = 0.5 * size if kind == _DISC else 0.55 * size
    inside = d2 <= outer * outer
    if kind == _RING:
      inside &= d2 >= 0.25 * outer * outer
    return inside
  if kind == _SQUARE:
    c, s = np.cos(angle), np.sin(angle)
    half = 0.425 * size
    return (np.abs(dx * c + dy * s) <= half) & (np.abs(dy * c - dx * s) <= half)
  # Equilateral triangle with circumradius 0.68 * size: inside three half-planes at the inradius.
  inside = None
  for j in range(3):
    a = angle + 2.0 * np.pi * j / 3.0
    h = dx * np.cos(a) + dy * np.sin(a) <= 0.34 * size
    inside = h if inside is None else inside & h
  return inside


def _thing_masks(things: _Things, size: int) -> np.ndarray:
  """Full (unoccluded) masks, bool [k, T, S, S]."""
  ys, xs = _grid(size)
  k, num_frames = things.cy.shape
  out = np.empty((k, num_frames, size, size), bool)
  for i in range(k):
    p = [a[i][:, None, None] for a in (things.cy, things.cx, things.size, things.angle)]
    out[i] = _shape_mask(int(things.kinds[i]), ys, xs, *p)
  return out


def _pick_colours(rng: np.random.Generator, k: int, refs: np.ndarray) -> np.ndarray:
  """Saturated colours, each the farthest of 12 candidates from the tints and earlier picks."""
  out = np.empty((k, 3), np.float32)
  for i in range(k):
    cand = _hsv_to_rgb(rng.uniform(0, 1, 12), rng.uniform(0.5, 1.0, 12), rng.uniform(0.6, 1.0, 12))
    dist = np.linalg.norm(cand[:, None] - refs[None], axis=-1).min(axis=1)
    out[i] = cand[np.argmax(dist)]
    refs = np.concatenate([refs, out[i:i + 1]])
  return out


def _sample_image_things(rng: np.random.Generator, k: int, size: int,
                         tints: np.ndarray) -> _Things:
  kinds = rng.integers(0, len(THING_CLASSES), k).astype(np.int32)
  sizes = rng.uniform(*THING_SIZE_RANGE, k).astype(np.float32) * size
  centres = np.empty((k, 2), np.float32)
  for i in range(k):
    cand = rng.uniform(0.1 * size, 0.9 * size, (24, 2))
    if i == 0:
      centres[i] = cand[0]
      continue
    # Distance to earlier centres relative to the sum of radii: < 1 overlaps, 0.6 bounds it so
    # both shapes keep most of their area; pick the first candidate that satisfies it.
    d = np.linalg.norm(cand[:, None] - centres[None, :i], axis=-1)
    rel = (d / (0.5 * (sizes[i] + sizes[None, :i]))).min(axis=1)
    ok = np.flatnonzero(rel >= 0.6)
    centres[i] = cand[ok[0] if ok.size else np.argmax(rel)]
  angles = rng.uniform(0, 2 * np.pi, k).astype(np.float32)
  colours = _pick_colours(rng, k, tints)
  shade = _shading(rng, k)
  return _Things(kinds, centres[:, :1], centres[:, 1:], sizes[:, None], angles[:, None], colours,
                 shade)


def _shading(rng: np.random.Generator, k: int) -> np.ndarray:
  a, g = rng.uniform(0, 2 * np.pi, k), rng.uniform(0.1, 0.3, k)
  return (np.stack([np.sin(a), np.cos(a)], axis=1) * g[:, None]).astype(np.float32)


def _reflect(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """Folds unbounded positions into [lo, hi]: constant velocity with elastic bounces."""
  span = hi - lo
  z = np.mod(p - lo, 2.0 * span)
  return lo + np.where(z > span, 2.0 * span - z, z)


def _sample_video_things(rng: np.random.Generator, k: int, size: int, num_frames: int,
                         tints: np.ndarray) -> _Things:
  kinds = rng.integers(0, len(THING_CLASSES), k).astype(np.int32)
  t = np.arange(num_frames, dtype=np.float32)
  cy, cx = np.empty((k, num_frames), np.float32), np.empty((k, num_frames), np.float32)
  for i in range(k):
    if rng.uniform() < 0.4:
      # Crosses an image border at time t_cross, moving inwards (enters) or outwards (leaves).
      side = rng.integers(0, 4)
      along = rng.uniform(0.2, 0.8) * size
      inward = rng.uniform(-0.6, 0.6) + (0.0, np.pi, 0.5 * np.pi, 1.5 * np.pi)[side]
      if rng.uniform() < 0.5:
        inward += np.pi
      speed = rng.uniform(0.04, 0.08) * size
      t_cross = rng.uniform(-0.5, num_frames - 0.5)
      start = ((along, 0.0), (along, size), (0.0, along), (size, along))[side]
      cx[i] = start[1] + math.cos(inward) * speed * (t - t_cross)
      cy[i] = start[0] + math.sin(inward) * speed * (t - t_cross)
    else:
      a, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.015, 0.06) * size
      y0, x0 = rng.uniform(0.15 * size, 0.85 * size, 2)
      cy[i] = _reflect(y0 + math.sin(a) * speed * t, 0.1 * size, 0.9 * size)
      cx[i] = _reflect(x0 + math.cos(a) * speed * t, 0.1 * size, 0.9 * size)
  size0 = rng.uniform(*THING_SIZE_RANGE, k)[:, None] * size
  growth = rng.uniform(-0.025, 0.025, k)[:, None]
  sizes = np.clip(size0 * np.exp(growth * t), 0.15 * size, 0.55 * size).astype(np.float32)
  angles = (rng.uniform(0, 2 * np.pi, k)[:, None] + rng.uniform(-0.12, 0.12, k)[:, None] * t)
  colours = _pick_colours(rng, k, tints)
  return _Things(kinds, cy, cx, sizes, angles.astype(np.float32), colours, _shading(rng, k))


# ----------------------------------------------------------------------------------------------
# Void clutter and composition.


def _sample_clutter(rng: np.random.Generator, size: int, num_frames: int,
                    pan: np.ndarray) -> np.ndarray:
  """0-2 irregular blobs (unions of small discs) moving with the background, bool [T, S, S]."""
  ys, xs = _grid(size)
  t = np.arange(num_frames, dtype=np.float32)[:, None, None]
  out = np.zeros((num_frames, size, size), bool)
  for _ in range(int(rng.choice(3, p=[0.4, 0.4, 0.2]))):
    centre = rng.uniform(0.08 * size, 0.92 * size, 2)
    for _ in range(int(rng.integers(2, 4))):
      r = rng.uniform(0.035, 0.06) * size
      cy, cx = centre + rng.normal(0.0, 0.6 * r, 2)
      out |= (ys - cy - pan[0] * t) ** 2 + (xs - cx - pan[1] * t) ** 2 <= r * r
  return out


def _compose(region: np.ndarray, stuff_classes: np.ndarray, lines: np.ndarray,
             masks: np.ndarray, present: np.ndarray, thing_classes: np.ndarray,
             clutter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Paints labels back to front. Ids: stuff region r -> r + 1, thing i -> R + 1 + i.

  Returns class and id maps, int32 [T, S, S] each.
  """
  cls = stuff_classes[region]
  ids = region + 1
  cls[lines] = 0
  ids[lines] = 0
  first_thing = len(stuff_classes) + 1
  for i in range(masks.shape[0]):
    m = masks[i] & present[i][:, None, None]
    cls[m] = thing_classes[i]
    ids[m] = first_thing + i
  cls[clutter] = 0
  ids[clutter] = 0
  return cls, ids


def _areas(ids: np.ndarray, num_ids: int) -> np.ndarray:
  """Pixel count of each id in each frame, int64 [T, num_ids + 1] (column 0 = void)."""
  num_frames = ids.shape[0]
  offset = (np.arange(num_frames) * (num_ids + 1))[:, None, None]
  return np.bincount((ids + offset).ravel(), minlength=num_frames * (num_ids + 1)).reshape(
      num_frames, num_ids + 1)


def _void_small_stuff(cls: np.ndarray, ids: np.ndarray, areas: np.ndarray, num_stuff: int,
                      min_area: int) -> None:
  """Last resort, in place: a stuff region left with fewer than min_area pixels becomes void."""
  small = (areas[:, 1:num_stuff + 1] > 0) & (areas[:, 1:num_stuff + 1] < min_area)
  for t, r in zip(*np.nonzero(small)):
    m = ids[t] == r + 1
    cls[t][m] = 0
    ids[t][m] = 0


def _render(rng: np.random.Generator, stuff_rgb: np.ndarray, lines: np.ndarray, things: _Things,
            masks: np.ndarray, present: np.ndarray, clutter: np.ndarray,
            flicker: float) -> np.ndarray:
  """Paints the image(s) in the same order as `_compose`; returns uint8 [T, S, S, 3].

  `stuff_rgb` (float32 [T, S, S, 3]) is painted over in place.
  """
  num_frames, size = stuff_rgb.shape[:2]
  rgb = stuff_rgb
  n = int(lines.sum())
  rgb[lines] = rng.uniform(0.02, 0.15, (n, 1)).astype(np.float32)
  ys, xs = _grid(size)
  outline_steps = max(1, round(size / 64))
  for i in range(masks.shape[0]):
    m = masks[i] & present[i][:, None, None]
    if not m.any():
      continue
    radius = 0.5 * things.size[i][:, None, None]
    # Smooth linear shading across the shape, plus a dark outline on the shape's own border so
    # that touching instances of similar colour stay separable.
    shade = 1.0 + (things.shade[i, 0] * (ys - things.cy[i][:, None, None]) +
                   things.shade[i, 1] * (xs - things.cx[i][:, None, None])) / radius
    gain = np.where(_erode(masks[i], outline_steps), shade, _OUTLINE_GAIN * shade)
    rgb[m] = things.colours[i] * gain[m][:, None]
  n = int(clutter.sum())
  rgb[clutter] = rng.uniform(0.1, 0.9, (n, 3)).astype(np.float32)
  # Photometric noise: a colour cast, brightness (with per-frame flicker for video), pixel noise.
  gains = rng.uniform(0.92, 1.08, 3) * rng.uniform(0.8, 1.2)
  frame_gain = rng.uniform(1.0 - flicker, 1.0 + flicker, num_frames)
  rgb *= (frame_gain[:, None] * gains[None]).astype(np.float32)[:, None, None, :]
  sigma = np.float32(rng.uniform(0.01, 0.04))
  rgb += sigma * rng.standard_normal(rgb.shape, dtype=np.float32)
  return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _contiguous_ids(ids: np.ndarray, num_ids: int) -> np.ndarray:
  """Renumbers the ids that occur to 1..n in their original order; 0 stays 0."""
  used = np.zeros(num_ids + 1, bool)
  used[np.unique(ids)] = True
  used[0] = False
  lut = np.zeros(num_ids + 1, np.int32)
  lut[used] = np.arange(1, int(used.sum()) + 1, dtype=np.int32)
  return lut[ids]


def _generate(rng: np.random.Generator, image_size: int, num_frames: int, min_things: int,
              max_things: int, video: bool) -> tuple[np.ndarray, np.ndarray]:
  """Draws one image (T = 1) or clip; returns uint8 [T, S, S, 3] and int32 [T, S, S, 2]."""
  size = image_size
  min_area = min_segment_area(size)
  stuff = _sample_stuff(rng, size, pan=video)
  region, stuff_rgb = _render_stuff(stuff, size, num_frames)
  lines = np.zeros(region.shape, bool)
  if rng.uniform() < 0.5:
    lines = _dilate(_region_boundary(region), max(1, round(size / 64)) - 1)
  num_stuff = len(stuff.classes)
  k = int(rng.integers(min_things, max_things + 1))
  thing_classes = np.array(THING_CLASSES, np.int32)
  # Rejection sampling of the layout keeps the drawn number of things (k) unbiased while
  # guaranteeing the minimum visible areas; the fallback after the last attempt removes objects.
  for _ in range(_MAX_ATTEMPTS):
    if video:
      things = _sample_video_things(rng, k, size, num_frames, stuff.tints)
    else:
      things = _sample_image_things(rng, k, size, stuff.tints)
    clutter = _sample_clutter(rng, size, num_frames, stuff.pan)
    masks = _thing_masks(things, size)
    present = np.ones((k, num_frames), bool)
    classes = thing_classes[things.kinds]
    cls, ids = _compose(region, stuff.classes, lines, masks, present, classes, clutter)
    areas = _areas(ids, num_stuff + k)
    visible = areas[:, num_stuff + 1:].T
    if video:
      # An object too small in a frame (entering, leaving, hidden) is not drawn there at all.
      present = visible >= min_area
      cls, ids = _compose(region, stuff.classes, lines, masks, present, classes, clutter)
      areas = _areas(ids, num_stuff + k)
      things_ok = bool(present.any(axis=1).all())
    else:
      full = masks.sum(axis=(2, 3))
      present = visible >= np.maximum(min_area, MIN_VISIBLE_FRACTION * full)
      things_ok = bool(present.all())
    stuff_area = areas[:, 1:num_stuff + 1]
    stuff_ok = bool(((stuff_area == 0) | (stuff_area >= min_area)).all())
    if things_ok and stuff_ok:
      break
  else:
    if not things_ok:
      cls, ids = _compose(region, stuff.classes, lines, masks, present, classes, clutter)
      areas = _areas(ids, num_stuff + k)
    _void_small_stuff(cls, ids, areas, num_stuff, min_area)
  image = _render(rng, stuff_rgb, lines, things, masks, present, clutter,
                  flicker=0.03 if video else 0.0)
  ids = _contiguous_ids(ids, num_stuff + k)
  return image, np.stack([cls, ids], axis=-1).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Public API.


def generate_panoptic_example(seed: int, split: str, index: int, image_size: int = 64, *,
                              min_things: int = DEFAULT_MIN_THINGS,
                              max_things: int = DEFAULT_MAX_THINGS) -> dict[str, Any]:
  """Generates one synthetic panoptic image, deterministically from (seed, split, index).

  Args:
    seed: data seed, >= 0.
    split: 'train' or 'validation' ('val' is an alias); the splits are independent streams.
    index: example index in [0, ID_SPLIT_STRIDE).
    image_size: S, the image side in pixels (>= 16); shapes and textures scale with it.
    min_things: fewest thing instances drawn (>= 1).
    max_things: most thing instances drawn.

  Returns:
    'image': uint8 [S, S, 3].
    'label': int32 [S, S, 2]; channel 0 = class (contiguous index + 1 into SHAPES_CATEGORIES,
      0 = void), channel 1 = segment id, contiguous 1..n (0 = void).
    'image_id': int, split offset + index, unique across splits.
  """
  _check_counts(image_size, min_things, max_things, 'things')
  rng, image_id = _example_rng(seed, split, index, _STREAM_IMAGE)
  image, label = _generate(rng, image_size, 1, min_things, max_things, video=False)
  return {'image': image[0], 'label': label[0], 'image_id': image_id}


def generate_panoptic_split(seed: int, split: str, num_examples: int, image_size: int = 64, *,
                            min_things: int = DEFAULT_MIN_THINGS,
                            max_things: int = DEFAULT_MAX_THINGS) -> dict[str, np.ndarray]:
  """Generates examples 0..num_examples-1 of a split as stacked arrays.

  Args:
    seed, split, image_size, min_things, max_things: as for `generate_panoptic_example`.
    num_examples: N >= 0.

  Returns:
    'image': uint8 [N, S, S, 3]; 'label': int32 [N, S, S, 2]; 'image_id': int64 [N].
  """
  images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
  labels = np.empty((num_examples, image_size, image_size, 2), np.int32)
  ids = np.empty((num_examples,), np.int64)
  for i in range(num_examples):
    ex = generate_panoptic_example(seed, split, i, image_size, min_things=min_things,
                                   max_things=max_things)
    images[i], labels[i], ids[i] = ex['image'], ex['label'], ex['image_id']
  return {'image': images, 'label': labels, 'image_id': ids}


def generate_video_example(seed: int, split: str, index: int, num_frames: int,
                           image_size: int = 64, *, min_objects: int = DEFAULT_MIN_THINGS,
                           max_objects: int = DEFAULT_MAX_THINGS) -> dict[str, Any]:
  """Generates one synthetic panoptic clip, deterministically from (seed, split, index).

  Objects (thing classes) move at constant velocity, bouncing off an inner box, or cross an image
  border (enter or leave); they grow or shrink slightly and rotate, and occlude each other in a
  fixed depth order. The textured stuff background is static or pans slowly. In a frame where an
  object would show fewer than `min_segment_area` pixels it is not drawn at all, so an absent object
  has no pixels there. Drawn streams differ from the image streams with the same arguments.

  Args:
    seed: data seed, >= 0.
    split: 'train' or 'validation' ('val' is an alias).
    index: clip index in [0, ID_SPLIT_STRIDE).
    num_frames: T >= 1.
    image_size: S, the frame side in pixels (>= 16).
    min_objects: fewest objects drawn (>= 1); each appears in at least one frame.
    max_objects: most objects drawn.

  Returns:
    'frames': uint8 [T, S, S, 3].
    'label': int32 [T, S, S, 2], as for images; an object or stuff region keeps its id in every
      frame, and ids are contiguous 1..n over the clip (a given frame may lack some).
    'video_id': int, split offset + index.
  """
  _check_counts(image_size, min_objects, max_objects, 'objects')
  if operator.index(num_frames) < 1:
    raise ValueError(f'synthetic data: num_frames must be >= 1, got {num_frames}.')
  rng, video_id = _example_rng(seed, split, index, _STREAM_VIDEO)
  frames, label = _generate(rng, image_size, int(num_frames), min_objects, max_objects, video=True)
  return {'frames': frames, 'label': label, 'video_id': video_id}


def generate_video_split(seed: int, split: str, num_videos: int, num_frames: int,
                         image_size: int = 64, *, min_objects: int = DEFAULT_MIN_THINGS,
                         max_objects: int = DEFAULT_MAX_THINGS) -> dict[str, np.ndarray]:
  """Generates clips 0..num_videos-1 of a split as stacked arrays.

  Args:
    seed, split, num_frames, image_size, min_objects, max_objects: as for
      `generate_video_example`.
    num_videos: N >= 0.

  Returns:
    'frames': uint8 [N, T, S, S, 3]; 'label': int32 [N, T, S, S, 2]; 'video_id': int64 [N].
  """
  shape = (num_videos, num_frames, image_size, image_size)
  frames = np.empty(shape + (3,), np.uint8)
  labels = np.empty(shape + (2,), np.int32)
  ids = np.empty((num_videos,), np.int64)
  for i in range(num_videos):
    ex = generate_video_example(seed, split, i, num_frames, image_size, min_objects=min_objects,
                                max_objects=max_objects)
    frames[i], labels[i], ids[i] = ex['frames'], ex['label'], ex['video_id']
  return {'frames': frames, 'label': labels, 'video_id': ids}


# ----------------------------------------------------------------------------------------------
# Statistics.


def _touching(ids: np.ndarray, is_thing: np.ndarray) -> np.ndarray:
  """Whether two different thing segments are 4-adjacent, bool [N] for ids int [N, S, S]."""
  def pairs(a, b, ta, tb):
    return (ta & tb & (a != b)).any(axis=(1, 2))
  return (pairs(ids[:, :, :-1], ids[:, :, 1:], is_thing[:, :, :-1], is_thing[:, :, 1:]) |
          pairs(ids[:, :-1], ids[:, 1:], is_thing[:, :-1], is_thing[:, 1:]))


def describe_split(data: dict[str, np.ndarray]) -> dict[str, Any]:
  """Summary statistics of a generated split (images or clips), as JSON-friendly values.

  Args:
    data: the output of `generate_panoptic_split` or `generate_video_split` (uses 'label':
      int32 [N, S, S, 2] or [N, T, S, S, 2]).

  Returns:
    A dict: counts of things and segments per image (a clip counts as T images), segment area
    percentiles as fractions of the image (things and stuff apart), the void share, and the
    fractions of images with void, with touching (4-adjacent, so also overlapping) things, with
    two instances of one thing class, and with each class; for clips also the fraction of objects
    absent from some frames, the fraction of clips where an object enters or leaves (absent in
    one frame, on the image border in the next or previous one) and the mean per-frame centroid
    step in pixels.
  """
  label = np.asarray(data['label'])
  video = label.ndim == 5
  clips = label if video else label[:, None]
  n, num_frames, size = clips.shape[:3]
  frames = clips.reshape(n * num_frames, size, size, 2)
  cls, ids = frames[..., 0], frames[..., 1]
  is_thing = np.isin(cls, THING_CLASSES)
  things_per_image, segments_per_image, repeat = [], [], []
  thing_areas, stuff_areas = [], []
  class_images = {c['name']: 0 for c in SHAPES_CATEGORIES}
  for f in range(frames.shape[0]):
    seg_ids, first, counts = np.unique(ids[f].ravel(), return_index=True, return_counts=True)
    seg_cls = cls[f].ravel()[first]
    keep = seg_ids > 0
    seg_cls, counts = seg_cls[keep], counts[keep]
    things = np.isin(seg_cls, THING_CLASSES)
    things_per_image.append(int(things.sum()))
    segments_per_image.append(int(keep.sum()))
    repeat.append(bool(np.bincount(seg_cls[things], minlength=1).max(initial=0) >= 2))
    thing_areas.extend(counts[things].tolist())
    stuff_areas.extend(counts[~things].tolist())
    for c in set(seg_cls.tolist()):
      class_images[SHAPES_CATEGORIES[c - 1]['name']] += 1
  pixels = float(size * size)

  def pct(values):
    q = np.percentile(np.asarray(values, np.float64) / pixels, [1, 5, 50, 95, 99]).round(4)
    return dict(zip(('p1', 'p5', 'p50', 'p95', 'p99'), q.tolist()))

  num_images = frames.shape[0]
  out: dict[str, Any] = {
      'num_images': num_images,
      'image_size': size,
      'things_per_image_mean': float(np.mean(things_per_image)),
      'things_per_image_hist': np.bincount(things_per_image).tolist(),
      'segments_per_image_max': int(max(segments_per_image)),
      'thing_area_fraction': pct(thing_areas),
      'stuff_area_fraction': pct(stuff_areas),
      'min_segment_pixels': int(min(thing_areas + stuff_areas)),
      'void_fraction_mean': float((ids == 0).mean()),
      'images_with_void': float((ids == 0).any(axis=(1, 2)).mean()),
      'images_with_touching_things': float(_touching(ids, is_thing).mean()),
      'images_with_repeated_thing_class': float(np.mean(repeat)),
      'images_with_class': {k: v / num_images for k, v in class_images.items()},
  }
  if video:
    absent, events, moves = [], [], []
    ys, xs = _grid(size)
    for clip in clips:
      cid = clip[..., 1]
      clip_event = False
      for obj in np.unique(cid[np.isin(clip[..., 0], THING_CLASSES)]):
        m = cid == obj
        area = m.sum(axis=(1, 2))
        on = area > 0
        absent.append(bool((~on).any()))
        # Enter / leave: absent in one frame, present at the image border in the next / previous.
        border = (m[:, 0].any(axis=1) | m[:, -1].any(axis=1) | m[:, :, 0].any(axis=1) |
                  m[:, :, -1].any(axis=1))
        clip_event |= bool((~on[:-1] & border[1:]).any() | (border[:-1] & ~on[1:]).any())
        if on.sum() >= 2:
          cy = (m * ys).sum(axis=(1, 2))[on] / area[on]
          cx = (m * xs).sum(axis=(1, 2))[on] / area[on]
          moves.append(float(np.hypot(np.diff(cy), np.diff(cx)).mean()))
      events.append(clip_event)
    out.update({
        'num_clips': n,
        'num_frames': num_frames,
        'objects_per_clip_mean': len(absent) / n,
        'objects_absent_in_some_frames': float(np.mean(absent)),
        'clips_with_enter_or_leave': float(np.mean(events)),
        'centroid_step_px_mean': float(np.mean(moves)) if moves else 0.0,
    })
  return out


def _main() -> None:
  """Prints generation speed and statistics as JSON (a benchmark, not a test)."""
  report: dict[str, Any] = {}
  for size in (64, 128):
    generate_panoptic_example(0, 'train', 0, size)
    start = time.perf_counter()
    data = generate_panoptic_split(0, 'train', 1000, size)
    report[f'image_ms_per_example_{size}'] = round(1e3 * (time.perf_counter() - start) / 1000, 3)
    if size == 64:
      report['image_stats_64'] = describe_split(data)
  start = time.perf_counter()
  clips = generate_video_split(0, 'train', 200, 8, 64)
  report['video_ms_per_clip_8x64'] = round(1e3 * (time.perf_counter() - start) / 200, 3)
  report['video_stats_8x64'] = describe_split(clips)
  print(json.dumps(report, indent=1))


if __name__ == '__main__':
  _main()
