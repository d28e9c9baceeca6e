"""`--mode=predict`: panoptic predictions for image files, written in the COCO panoptic format.

  python -m pix2seq_d_jax.main --config=configs/shapes.py --workdir=runs/shapes --mode=predict \
      --input='photos/*.jpg'

Writes DIR/predict/panoptic.json + panoptic/*.png (segments of the workdir's categories) and
DIR/predict/vis/*.png (image | prediction).

Input files: grayscale, grayscale+alpha, palette, RGBA, CMYK and 16-bit images are converted to
8-bit RGB (`read_rgb`: alpha dropped, 16-bit values divided by 257, as training does). A file that
cannot be used (empty, not an image, truncated, larger than MAX_PIXELS) is logged with its reason
and skipped; every other file is still predicted and written, and the command line exits with
status 1 at the end, naming the skipped files.
"""

import glob
import logging
import pathlib
import warnings
import zlib

import numpy as np
from PIL import Image

from pix2seq_d_jax import predict
from pix2seq_d_jax.evaluation import visualize
from pix2seq_d_jax.formats import coco_format

# PIL's own decompression-bomb limit (twice its warning threshold; PIL raises past it). An image
# this large holds gigabytes once decoded and as class and id maps at its own size.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
_SIXTEEN_BIT = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')


class UnusableImage(ValueError):
  """An input file that cannot be predicted; the message names the file, the reason, the fix."""


def _complete(data: bytes, fmt: str) -> bool:
  """A JPEG ends with its EOI marker, a PNG with its IEND chunk; a file cut short lacks them."""
  if fmt == 'JPEG':
    return b'\xff\xd9' in data[-1024:]
  if fmt == 'PNG':
    return b'IEND' in data[-64:]
  return True


def read_rgb(path: str) -> np.ndarray:
  """uint8 [H, W, 3] of an image file, converted as the module docstring says.

  Raises:
    UnusableImage: the file is empty, not an image, truncated, or too large.
  """
  fix = 're-download it or re-encode it as JPEG or PNG'
  try:
    data = pathlib.Path(path).read_bytes()
  except OSError as err:
    raise UnusableImage(f'{path}: cannot read the file ({err.strerror or err}); fix its '
                        'permissions or replace it.') from err
  if not data:
    raise UnusableImage(f'{path}: the file is empty; {fix}.')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with Image.open(path) as im:     # Over MAX_PIXELS: DecompressionBombError.
        im.load()
        fmt, mode = im.format, im.mode
        if mode in _SIXTEEN_BIT:     # 16-bit grayscale: scale to 8 bits like training.
          gray = np.clip(np.round(np.asarray(im, np.float64) / 257.0), 0, 255).astype(np.uint8)
          rgb = np.repeat(gray[..., None], 3, axis=-1)
        elif mode == 'F':
          raise UnusableImage(f'{path}: a 32-bit float image; save it as 8-bit RGB.')
        else:
          rgb = np.asarray(im.convert('RGB'))
  except Image.DecompressionBombError as err:
    raise UnusableImage(f'{path}: too large to decode, more than MAX_PIXELS={MAX_PIXELS} '
                        f'pixels ({err}); downscale the image first.') from err
  except Image.UnidentifiedImageError as err:
    raise UnusableImage(f'{path}: not an image file PIL can read; {fix}.') from err
  except (OSError, SyntaxError, ValueError) as err:
    if isinstance(err, UnusableImage):
      raise
    raise UnusableImage(f'{path}: cannot decode the image ({err}); {fix}.') from err
  if not _complete(data, fmt):
    raise UnusableImage(f'{path}: the {fmt} file is truncated (no end marker); {fix}.')
  return rgb


def run(workdir: str, pattern: str | None, step: int | None = None) -> dict:
  """Predicts every usable file matching `pattern` with the workdir's newest (or given)
  checkpoint, with the config saved in the workdir (it describes its checkpoint).

  Returns:
    {'num_images': files predicted, 'output': the folder, 'skipped': {path: reason}}.
  """
  if not pattern:
    raise ValueError('--mode=predict needs --input=GLOB (image files); for the evaluation split '
                     'with metrics use --mode=eval.')
  files = sorted(glob.glob(pattern))
  if not files:
    raise FileNotFoundError(f'--input={pattern!r} matches no file.')
  predictor = predict.Predictor.from_workdir(workdir, step)
  categories = predictor.categories
  out = pathlib.Path(workdir) / 'predict'
  (out / 'vis').mkdir(parents=True, exist_ok=True)
  skipped = {}
  with coco_format.CocoPanopticWriter(out, categories) as writer:
    for path in files:
      try:
        image = read_rgb(path)
      except UnusableImage as err:
        logging.error('Skipped: %s', err)
        skipped[path] = str(err)
        continue
      # The file name's CRC is a stable example id: the same file gets the same noise.
      example_id = zlib.crc32(pathlib.Path(path).name.encode()) & 0x7FFFFFFF
      pred = predictor(image[None], example_ids=[example_id])
      cls, ids = pred['class'][0], pred['id'][0]
      seg, info = coco_format.segments_from_maps(cls, ids, categories)
      name = pathlib.Path(path).stem + '.png'
      writer.add(example_id, name, seg, info)
      panel = np.concatenate([image, visualize.colorize(cls, ids, categories)], axis=1)
      visualize.save_png(out / 'vis' / name, panel)
  done = len(files) - len(skipped)
  logging.info('Wrote predictions for %d images to %s.', done, out)
  if skipped:
    logging.error('Skipped %d of %d files:\n%s', len(skipped), len(files),
                  '\n'.join(f'  {reason}' for reason in skipped.values()))
  return {'num_images': done, 'output': str(out), 'skipped': skipped}
