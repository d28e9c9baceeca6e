"""`--mode=predict`: panoptic predictions for image files, written in the COCO panoptic format.

  python -m pix2seq_d_jax.main --config=configs/shapes.py --workdir=runs/shapes --mode=predict \
      --input='photos/*.jpg'

Writes DIR/predict/panoptic.json + panoptic/*.png (segments of the workdir's categories) and
DIR/predict/vis/*.png (image | prediction).
"""

import glob
import logging
import pathlib
import zlib

import numpy as np
from PIL import Image

from pix2seq_d_jax import predict
from pix2seq_d_jax.evaluation import coco_format
from pix2seq_d_jax.evaluation import visualize


def read_rgb(path: str) -> np.ndarray:
  """uint8 [H, W, 3] of an image file (grayscale and RGBA are converted to RGB)."""
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert('RGB'))
  except OSError as err:
    raise ValueError(f'{path}: cannot read the image ({err}); re-encode it as JPEG or PNG.') from err


def run(config, workdir: str, pattern: str | None, step: int | None = None) -> dict:
  """Predicts every file matching `pattern` with the workdir's newest (or given) checkpoint."""
  del config  # The workdir's own config describes its checkpoint.
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
  with coco_format.CocoPanopticWriter(out, categories) as writer:
    for path in files:
      image = read_rgb(path)
      # The file name's CRC is a stable example id: the same file gets the same noise.
      example_id = zlib.crc32(pathlib.Path(path).name.encode()) & 0x7FFFFFFF
      pred = predictor(image[None], example_ids=[example_id])
      cls, ids = pred['class'][0], pred['id'][0]
      seg, info = coco_format.segments_from_maps(cls, ids, categories)
      name = pathlib.Path(path).stem + '.png'
      writer.add(example_id, name, seg, info)
      panel = np.concatenate([image, visualize.colorize(cls, ids, categories)], axis=1)
      visualize.save_png(out / 'vis' / name, panel)
  logging.info('Wrote predictions for %d images to %s.', len(files), out)
  return {'num_images': len(files), 'output': str(out)}
