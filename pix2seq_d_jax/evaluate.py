"""Scores predictions stored in the standard formats; prints one JSON object to stdout.

  python -m pix2seq_d_jax.evaluate panoptic --gt-json F --gt-dir D --pred-json F --pred-dir D
  python -m pix2seq_d_jax.evaluate vos --gt-dir DAVIS_ROOT --pred-dir RESULTS

`panoptic` reads COCO panoptic folders (JSON + RGB PNGs) and prints PQ, SQ, RQ (all, things,
stuff; percent), the category counts and per-class values. `vos` follows the DAVIS 2017
unsupervised protocol and prints J&F and its parts (percent). Input errors go to stderr as one
line naming the file and the fix, with exit status 2. Imports stay light (numpy, PIL): no JAX or
TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

EXIT_INPUT_ERROR = 2


def _jsonable(value: Any) -> Any:
  """Makes metric dicts printable as strict JSON (numpy values → Python, NaN → null)."""
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if hasattr(value, 'tolist'):  # numpy scalars and arrays, without importing numpy here
    return _jsonable(value.tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _panoptic(args: argparse.Namespace) -> dict[str, Any]:
  # lazy: --help and argument errors come without loading numpy and PIL.
  from pix2seq_d_jax.evaluation import panoptic  # pylint: disable=import-outside-toplevel
  return panoptic.evaluate_files(args.gt_json, args.gt_dir, args.pred_json, args.pred_dir)


def _vos(args: argparse.Namespace) -> dict[str, Any]:
  # lazy: as in _panoptic.
  from pix2seq_d_jax.evaluation import vos  # pylint: disable=import-outside-toplevel
  return vos.evaluate_davis_folders(args.gt_dir, args.pred_dir)


def build_parser() -> argparse.ArgumentParser:
  """The argument parser with the `panoptic` and `vos` subcommands."""
  parser = argparse.ArgumentParser(
      prog='python -m pix2seq_d_jax.evaluate',
      description='Score predictions in the standard formats; prints one JSON object.')
  sub = parser.add_subparsers(dest='command', required=True, metavar='{panoptic,vos}')

  pan = sub.add_parser('panoptic', help='PQ/SQ/RQ of COCO panoptic predictions',
                       description='PQ/SQ/RQ (COCO panopticapi rules) of a COCO panoptic '
                       'prediction folder against ground truth in the same format.')
  pan.add_argument('--gt-json', required=True, help='ground-truth panoptic JSON')
  pan.add_argument('--gt-dir', required=True, help='folder of the ground-truth PNGs')
  pan.add_argument('--pred-json', required=True, help='prediction panoptic JSON')
  pan.add_argument('--pred-dir', required=True, help='folder of the predicted PNGs')
  pan.set_defaults(func=_panoptic)

  vos = sub.add_parser('vos', help='J&F of DAVIS 2017 unsupervised results',
                       description='J&F (DAVIS 2017 unsupervised protocol) of a results folder '
                       '(SEQ/00000.png palette PNGs of instance ids).')
  vos.add_argument('--gt-dir', required=True,
                   help='DAVIS root with Annotations_unsupervised/480p (or Annotations/480p) and '
                   'ImageSets/2017/val.txt')
  vos.add_argument('--pred-dir', required=True, help='results folder, one sub-folder per sequence')
  vos.set_defaults(func=_vos)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI; returns the exit status (0, or 2 for input errors)."""
  args = build_parser().parse_args(argv)
  try:
    result = args.func(args)
  except (ValueError, OSError) as e:
    # Expected input problems (bad JSON, missing PNGs, inconsistent segments): the message
    # already names the file and the fix, so a traceback would only bury it.
    print(f'error: {e}', file=sys.stderr)
    return EXIT_INPUT_ERROR
  json.dump(_jsonable(result), sys.stdout, allow_nan=False)
  sys.stdout.write('\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
