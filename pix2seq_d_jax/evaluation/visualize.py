"""Side-by-side pictures of panoptic predictions, for eyeballing what the model does.

`render_panel` draws image | ground truth | prediction with titles and a legend:

  +-----+-----------+-----+-----------+-----+-----------+-----+
  | GAP |  'image'  | GAP | 'ground…' | GAP | 'predic…' | GAP |   TITLE_HEIGHT rows
  |     |  panel 0  |     |  panel 1  |     |  panel 2  |     |   H·scale rows
  +-----+-----------+-----+-----------+-----+-----------+-----+
  | legend: [■] person  [■] car  [■] road ...                  |
  +-----------------------------------------------------------+

Panel k starts at column GAP + k·(W·scale + GAP), row TITLE_HEIGHT. Stuff is painted in its
class colour (category 'color' when given, else a fixed palette), each thing instance in its own
shade of its class colour, void black; segment boundaries are white. Pure numpy + PIL.
"""

from __future__ import annotations

import colorsys
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pix2seq_d_jax.formats import coco_format

TITLE_HEIGHT = 20
GAP = 4
MIN_PANEL_HEIGHT = 256
BACKGROUND = (32, 32, 32)
VOID_COLOR = (0, 0, 0)
BOUNDARY_COLOR = (255, 255, 255)
TEXT_COLOR = (235, 235, 235)
SWATCH = 12
LEGEND_ROW = 18
# Largest shift of an instance's shade from its class colour, per channel.
_SHADE = 60


def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1 has only the fixed bitmap font.
    return ImageFont.load_default()


def class_colors(categories: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """Colour per contiguous class index.

  Args:
    categories: COCO category dicts; an optional 'color' [r, g, b] is used as given.

  Returns:
    uint8 [len(categories) + 1, 3]; row 0 is void (black), row c is categories[c − 1].
  """
  colors = np.zeros((len(categories) + 1, 3), np.uint8)
  colors[0] = VOID_COLOR
  for k, cat in enumerate(categories):
    if cat.get('color') is not None:
      colors[k + 1] = np.clip(np.asarray(cat['color'], np.int64)[:3], 0, 255)
    else:
      # Golden-ratio hue steps keep neighbouring class indices far apart in hue; value ≥ 0.75
      # keeps every class clear of void black.
      hue = (k * 0.618033988749895) % 1.0
      value = 0.95 if k % 2 == 0 else 0.75
      colors[k + 1] = np.round(np.array(colorsys.hsv_to_rgb(hue, 0.7, value)) * 255)
  return colors


def colorize(class_map: np.ndarray, id_map: np.ndarray,
             categories: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """Paints a (class, id) segmentation.

  Args:
    class_map: int [H, W], class index + 1 into categories, 0 = void.
    id_map: int [H, W] ≥ 0 instance ids.
    categories: COCO category dicts with 'isthing'.

  Returns:
    uint8 [H, W, 3]: void black, stuff in its class colour, thing instances in per-id shades.
  """
  class_map, id_map = _check_maps(class_map, id_map, len(categories), 'colorize')
  colors = class_colors(categories)
  out = colors[class_map].astype(np.int64)
  isthing = np.array([False] + [bool(c['isthing']) for c in categories])
  thing = isthing[class_map]
  # A multiplicative hash spreads consecutive ids over distinct shades.
  h = (id_map.astype(np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFF)
  shift = np.stack([(h >> np.uint64(s)) & np.uint64(255) for s in (0, 8, 16)], -1)
  shift = (shift.astype(np.int64) - 128) * _SHADE // 128
  out = np.where(thing[..., None], np.clip(out + shift, 24, 255), out)
  return out.astype(np.uint8)


def _check_maps(class_map, id_map, num_classes, name):
  class_map = np.asarray(class_map)
  id_map = np.asarray(id_map)
  if class_map.ndim != 2 or class_map.shape != id_map.shape:
    raise ValueError(f'{name}: class and id maps must both be [H, W] of one shape, got '
                     f'{class_map.shape} and {id_map.shape}')
  if class_map.size and (class_map.min() < 0 or class_map.max() > num_classes):
    raise ValueError(f'{name}: class values must lie in 0..{num_classes} (0 = void), got '
                     f'{class_map.min()}..{class_map.max()}; pass the matching categories')
  return class_map.astype(np.int64), id_map.astype(np.int64)


def _segment_key(class_map: np.ndarray, id_map: np.ndarray, isthing: np.ndarray) -> np.ndarray:
  # Stuff of one class is one segment (docs/decisions.md §4), so no boundaries inside it.
  return class_map * (1 << 32) + np.where(isthing[class_map], id_map, 0)


def _draw_boundaries(rgb: np.ndarray, key: np.ndarray) -> np.ndarray:
  edge = np.zeros(key.shape, bool)
  edge[:-1] |= key[:-1] != key[1:]
  edge[:, :-1] |= key[:, :-1] != key[:, 1:]
  out = rgb.copy()
  out[edge] = BOUNDARY_COLOR
  return out


def _upscale(x: np.ndarray, scale: int) -> np.ndarray:
  return x if scale == 1 else np.repeat(np.repeat(x, scale, axis=0), scale, axis=1)


def _legend(classes: Sequence[int], categories: Sequence[Mapping[str, Any]],
            colors: np.ndarray, width: int) -> Image.Image:
  font = _font()
  probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  entries = []
  for c in classes:
    name = str(categories[c - 1]['name'])
    text_w = int(math.ceil(probe.textlength(name, font=font)))
    entries.append((c, name, SWATCH + 4 + text_w + 12))
  rows, x = [[]], GAP
  for entry in entries:
    if rows[-1] and x + entry[2] > width:
      rows.append([])
      x = GAP
    rows[-1].append(entry)
    x += entry[2]
  height = GAP * 2 + LEGEND_ROW * max(1, len(rows))
  im = Image.new('RGB', (width, height), BACKGROUND)
  draw = ImageDraw.Draw(im)
  for r, row in enumerate(rows):
    x = GAP
    y = GAP + r * LEGEND_ROW
    for c, name, w in row:
      draw.rectangle([x, y + 2, x + SWATCH - 1, y + 2 + SWATCH - 1],
                     fill=tuple(int(v) for v in colors[c]))
      draw.text((x + SWATCH + 4, y + 1), name, fill=TEXT_COLOR, font=font)
      x += w
  if not entries:
    draw.text((GAP, GAP + 1), '(no classes present)', fill=TEXT_COLOR, font=font)
  return im


def render_panel(
    image: np.ndarray,
    gt_class: np.ndarray,
    gt_id: np.ndarray,
    pred_class: np.ndarray,
    pred_id: np.ndarray,
    categories: Sequence[Mapping[str, Any]],
    scale: int | None = None,
) -> np.ndarray:
  """Draws image | ground truth | prediction side by side, with titles and a legend.

  Args:
    image: uint8 [H0, W0, 3]; resized (bilinear) to [H, W] when the maps have another size.
    gt_class: int [H, W], class index + 1 into categories, 0 = void.
    gt_id: int [H, W] ≥ 0 instance ids.
    pred_class: int [H, W], like gt_class.
    pred_id: int [H, W], like gt_id.
    categories: COCO category dicts `{'id', 'name', 'isthing', 'color'?}`.
    scale: integer nearest-neighbour upscaling; default: the smallest that makes a panel at
      least MIN_PANEL_HEIGHT (256) pixels tall.

  Returns:
    uint8 [TITLE_HEIGHT + H·s + legend height, 3·W·s + 4·GAP, 3] with s = scale; the legend
    lists (swatch in the class colour + name) every class present in the GT or the prediction.
  """
  categories = coco_format.check_categories(categories)
  n = len(categories)
  gt_class, gt_id = _check_maps(gt_class, gt_id, n, 'render_panel: ground truth')
  pred_class, pred_id = _check_maps(pred_class, pred_id, n, 'render_panel: prediction')
  if gt_class.shape != pred_class.shape:
    raise ValueError(f'render_panel: ground truth is {gt_class.shape} but the prediction is '
                     f'{pred_class.shape}; resize the prediction to the ground-truth size')
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f'render_panel: image must be uint8 [H, W, 3], got {image.dtype} '
                     f'{image.shape}')
  height, width = gt_class.shape
  if image.shape[:2] != (height, width):
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
  if scale is None:
    scale = max(1, math.ceil(MIN_PANEL_HEIGHT / max(height, 1)))
  if int(scale) != scale or scale < 1:
    raise ValueError(f'render_panel: scale must be a positive integer, got {scale!r}')
  scale = int(scale)

  colors = class_colors(categories)
  isthing = np.array([False] + [bool(c['isthing']) for c in categories])
  panels = [_upscale(image, scale)]
  for cls, ids in ((gt_class, gt_id), (pred_class, pred_id)):
    rgb = _upscale(colorize(cls, ids, categories), scale)
    key = _upscale(_segment_key(cls, ids, isthing), scale)
    panels.append(_draw_boundaries(rgb, key))

  ph, pw = height * scale, width * scale
  total_w = 3 * pw + 4 * GAP
  canvas = Image.new('RGB', (total_w, TITLE_HEIGHT + ph), BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  font = _font()
  for k, (title, panel) in enumerate(zip(('image', 'ground truth', 'prediction'), panels)):
    x0 = GAP + k * (pw + GAP)
    canvas.paste(Image.fromarray(panel), (x0, TITLE_HEIGHT))
    draw.text((x0 + 2, 3), title, fill=TEXT_COLOR, font=font)
  present = sorted((set(np.unique(gt_class).tolist()) | set(np.unique(pred_class).tolist())) - {0})
  legend = _legend(present, categories, colors, total_w)
  return np.concatenate([np.asarray(canvas), np.asarray(legend)], axis=0)


def render_grid(panels: Sequence[np.ndarray]) -> np.ndarray:
  """Stacks panels vertically (GAP rows between), padding narrower ones on the right.

  Args:
    panels: uint8 [H_i, W_i, 3] arrays, e.g. from `render_panel`.

  Returns:
    uint8 [ΣH_i + GAP·(n − 1), max W_i, 3].
  """
  if not panels:
    raise ValueError('render_grid: no panels given; pass at least one uint8 [H, W, 3] array')
  width = max(p.shape[1] for p in panels)
  rows = []
  for k, p in enumerate(panels):
    p = np.asarray(p)
    if p.ndim != 3 or p.shape[-1] != 3 or p.dtype != np.uint8:
      raise ValueError(f'render_grid: panel {k} must be uint8 [H, W, 3], got {p.dtype} {p.shape}')
    if k:
      rows.append(np.full((GAP, width, 3), BACKGROUND, np.uint8))
    pad = np.full((p.shape[0], width - p.shape[1], 3), BACKGROUND, np.uint8)
    rows.append(np.concatenate([p, pad], axis=1))
  return np.concatenate(rows, axis=0)


def save_png(path: str | os.PathLike[str], array: np.ndarray) -> None:
  """Writes uint8 [H, W, 3] (or [H, W]) as a PNG, creating parent folders."""
  array = np.asarray(array)
  if array.dtype != np.uint8 or array.ndim not in (2, 3):
    raise ValueError(f'save_png: {path}: expected uint8 [H, W, 3] or [H, W], got {array.dtype} '
                     f'{array.shape}')
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, format='PNG')


# Frame strips of video clips.
STRIP_LABEL_WIDTH = 92
MIN_STRIP_FRAME_HEIGHT = 96


def render_frame_strip(
    frames: np.ndarray,
    gt_class: np.ndarray,
    gt_id: np.ndarray,
    pred_class: np.ndarray,
    pred_id: np.ndarray,
    categories: Sequence[Mapping[str, Any]],
    scale: int | None = None,
) -> np.ndarray:
  """Draws a clip as three rows (image / ground truth / prediction), one column per frame.

  Each frame's segmentations are painted as in `render_panel` (stuff in its class colour, each
  thing instance in its own shade, void black, white boundaries); an id keeps its shade in every
  frame, so a switched id shows as a change of shade along a row.

  Args:
    frames: uint8 [T, H0, W0, 3]; resized (bilinear) to [H, W] when the maps have another size.
    gt_class, gt_id: int [T, H, W] ground-truth classes (index + 1 into categories, 0 = void)
      and instance ids.
    pred_class, pred_id: int [T, H, W], the same for the prediction.
    categories: COCO category dicts `{'id', 'name', 'isthing', 'color'?}`.
    scale: integer nearest upscaling; default: the smallest that makes a frame at least
      MIN_STRIP_FRAME_HEIGHT (96) pixels tall.

  Returns:
    uint8 [TITLE_HEIGHT + 3·(H·s + GAP) + legend height, STRIP_LABEL_WIDTH + T·(W·s + GAP), 3]
    with s = scale: frame k's column starts at STRIP_LABEL_WIDTH + k·(W·s + GAP); the legend
    lists every class present in the ground truth or the prediction.
  """
  categories = coco_format.check_categories(categories)
  frames = np.asarray(frames)
  maps = [np.asarray(m) for m in (gt_class, gt_id, pred_class, pred_id)]
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f'render_frame_strip: frames must be uint8 [T, H, W, 3], got {frames.dtype} '
                     f'{frames.shape}')
  shape = maps[0].shape
  if len(shape) != 3 or shape[0] != frames.shape[0] or any(m.shape != shape for m in maps):
    raise ValueError(f'render_frame_strip: the class and id maps must all be [T, H, W] with the '
                     f'T = {frames.shape[0]} frames of `frames`, got '
                     f'{[m.shape for m in maps]}; resize the prediction to the ground-truth size')
  num_frames, height, width = shape
  if scale is None:
    scale = max(1, math.ceil(MIN_STRIP_FRAME_HEIGHT / max(height, 1)))
  if int(scale) != scale or scale < 1:
    raise ValueError(f'render_frame_strip: scale must be a positive integer, got {scale!r}')
  scale = int(scale)
  isthing = np.array([False] + [bool(c['isthing']) for c in categories])
  rows = [[], [], []]
  for t in range(num_frames):
    image = frames[t]
    if image.shape[:2] != (height, width):
      image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    rows[0].append(_upscale(image, scale))
    for r, (cls, ids) in enumerate(((maps[0][t], maps[1][t]), (maps[2][t], maps[3][t])), 1):
      cls, ids = _check_maps(cls, ids, len(categories), 'render_frame_strip')
      rgb = _upscale(colorize(cls, ids, categories), scale)
      rows[r].append(_draw_boundaries(rgb, _upscale(_segment_key(cls, ids, isthing), scale)))
  ph, pw = height * scale, width * scale
  total_w = STRIP_LABEL_WIDTH + num_frames * (pw + GAP)
  canvas = Image.new('RGB', (total_w, TITLE_HEIGHT + 3 * (ph + GAP)), BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  font = _font()
  for t in range(num_frames):
    draw.text((STRIP_LABEL_WIDTH + t * (pw + GAP) + 2, 3), f't={t}', fill=TEXT_COLOR, font=font)
  for r, title in enumerate(('image', 'ground truth', 'prediction')):
    y0 = TITLE_HEIGHT + r * (ph + GAP)
    draw.text((GAP, y0 + ph // 2 - 6), title, fill=TEXT_COLOR, font=font)
    for t, panel in enumerate(rows[r]):
      canvas.paste(Image.fromarray(panel), (STRIP_LABEL_WIDTH + t * (pw + GAP), y0))
  present = sorted((set(np.unique(maps[0]).tolist()) | set(np.unique(maps[2]).tolist())) - {0})
  legend = _legend(present, categories, class_colors(categories), total_w)
  return np.concatenate([np.asarray(canvas), np.asarray(legend)], axis=0)


def save_gif(path: str | os.PathLike[str], frames: Sequence[np.ndarray],
             duration_ms: int = 400) -> None:
  """Writes uint8 [H, W, 3] pictures (e.g. one `render_panel` per video frame) as a looping GIF,
  creating parent folders. Pictures of different sizes are padded to the largest."""
  if not frames:
    raise ValueError(f'save_gif: {path}: no frames given; pass at least one uint8 [H, W, 3]')
  arrays = [np.asarray(f) for f in frames]
  for k, f in enumerate(arrays):
    if f.dtype != np.uint8 or f.ndim != 3 or f.shape[-1] != 3:
      raise ValueError(f'save_gif: {path}: frame {k} must be uint8 [H, W, 3], got {f.dtype} '
                       f'{f.shape}')
  h = max(f.shape[0] for f in arrays)
  w = max(f.shape[1] for f in arrays)
  images = []
  for f in arrays:
    canvas = np.full((h, w, 3), BACKGROUND, np.uint8)
    canvas[:f.shape[0], :f.shape[1]] = f
    images.append(Image.fromarray(canvas))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  images[0].save(path, format='GIF', save_all=True, append_images=images[1:],
                 duration=duration_ms, loop=0)
