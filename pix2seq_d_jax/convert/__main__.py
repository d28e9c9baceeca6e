"""python -m pix2seq_d_jax.convert --from=tf|torchvision --checkpoint=PATH --config=configs/X.py
[--config.key=value ...] --workdir=DIR

Writes a workdir holding the converted weights (pix2seq_d_jax/convert/pretrained.py).
--from=tf: a checkpoint folder or prefix of the authors (Pix2Seq-D: every module; Pix2Seq
detection: backbone + encoder). --from=torchvision: a ResNet-50 .safetensors file (backbone).
"""

import argparse
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def main(argv=None):
  from pix2seq_d_jax import config_lib  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax.convert import pretrained  # pylint: disable=g-import-not-at-top
  argv, overrides = config_lib.split_config_flags(list(sys.argv[1:] if argv is None else argv))
  parser = argparse.ArgumentParser(prog='python -m pix2seq_d_jax.convert',
                                   description=__doc__.split('\n\n', 1)[1])
  parser.add_argument('--from', dest='source', required=True, choices=pretrained.SOURCES)
  parser.add_argument('--checkpoint', required=True)
  parser.add_argument('--config', required=True, help='configs/X.py[:arg] of the same model')
  parser.add_argument('--workdir', required=True)
  args = parser.parse_args(argv)
  config = config_lib.load_config(args.config, overrides)
  pretrained.write_workdir(args.source, args.checkpoint, config, args.workdir)


if __name__ == '__main__':
  main()
