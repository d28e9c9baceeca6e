"""python -m pix2seq_d_jax.convert --from=tf|torchvision --checkpoint=PATH --config=configs/X.py
[--config.key=value ...] --workdir=DIR

Writes a workdir holding the converted weights (`write_workdir`; the readers are in
pix2seq_d_jax/convert/pretrained.py).
--from=tf: a checkpoint folder or prefix of the authors (Pix2Seq-D: every module; Pix2Seq
detection: backbone + encoder). --from=torchvision: a ResNet-50 .safetensors file (backbone).
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position  # after the TF log level is set
import jax

from pix2seq_d_jax import checkpoint
from pix2seq_d_jax import config_lib
from pix2seq_d_jax import data
from pix2seq_d_jax import state as state_lib
from pix2seq_d_jax import warm_start
from pix2seq_d_jax.convert import pretrained
# pylint: enable=g-import-not-at-top,wrong-import-position


def write_workdir(source: str, path: str, config, workdir) -> pathlib.Path:
  """A workdir (orbax checkpoint at step 0, config.json, categories.json when the dataset's
  categories are known) holding the converted weights; modules the source lacks are freshly
  initialised. `Predictor.from_workdir`, `--mode=eval` and `--config.train.init_from` read it."""
  workdir = pathlib.Path(workdir)
  if checkpoint.checkpoint_dir(workdir).exists() and any(
      checkpoint.checkpoint_dir(workdir).iterdir()):
    raise FileExistsError(f'--workdir={workdir} already holds checkpoints; pass a new folder.')
  online, ema = pretrained.read(source, path, config)
  state = jax.jit(state_lib.setup(config).init)()
  everything = tuple(state.params)
  merge = lambda ours, theirs: warm_start.merge_params(jax.device_get(ours), theirs, everything)
  state = state.replace(
      params=merge(state.params, online['params']),
      batch_stats=merge(state.batch_stats, online['batch_stats']),
      ema_params=merge(state.ema_params, ema['params']),
      ema_batch_stats=merge(state.ema_batch_stats, ema['batch_stats']))
  checkpoint.save_config(workdir, config)
  manager = checkpoint.make_manager(workdir, config)
  checkpoint.save(manager, state, {'step': 0, 'data': {'next_step': 0},
                                   'converted_from': f'{source}:{path}'}, force=True)
  manager.wait_until_finished()
  manager.close()
  try:
    categories = data.get_source(config.dataset).categories
  except Exception as err:  # pylint: disable=broad-except  # Data may be absent here.
    categories = None
    print(f'categories.json not written: the dataset of the config is not readable here ({err}).')
  if categories:
    checkpoint.save_categories(workdir, categories)
  print(f'Wrote {workdir} (step 0).')
  return workdir


def main(argv=None):
  argv, overrides = config_lib.split_config_flags(list(sys.argv[1:] if argv is None else argv))
  parser = argparse.ArgumentParser(prog='python -m pix2seq_d_jax.convert',
                                   description=__doc__.split('\n\n', 1)[1])
  parser.add_argument('--from', dest='source', required=True, choices=pretrained.SOURCES)
  parser.add_argument('--checkpoint', required=True)
  parser.add_argument('--config', required=True, help='configs/X.py[:arg] of the same model')
  parser.add_argument('--workdir', required=True)
  args = parser.parse_args(argv)
  config = config_lib.load_config(args.config, overrides)
  write_workdir(args.source, args.checkpoint, config, args.workdir)


if __name__ == '__main__':
  main()
