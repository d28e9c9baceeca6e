"""Pretrained weights from outside this project: `config.train.init_from` and workdir conversion.

`config.train.init_from` accepts, besides a workdir of ours (pix2seq_d_jax/checkpoint.py):
  - a TF checkpoint of the authors (folder or prefix): a Pix2Seq-D one fills every module (EMA
    weights), a Pix2Seq detection one the backbone and the encoder (`tf_pix2seq`);
  - `torchvision:PATH` with a ResNet-50 safetensors file: the backbone (`torchvision_resnet`).
Only the modules in `config.train.init_from_prefixes` are copied; the rest stays as initialised.
"""

import json
import logging
import pathlib

import jax
import numpy as np

TORCHVISION = 'torchvision:'
SOURCES = ('tf', 'torchvision')


def source_of(spec: str) -> str | None:
  """'torchvision', 'tf' or None (a workdir of ours, or nothing known)."""
  from pix2seq_d_jax.convert import tf_pix2seq  # pylint: disable=g-import-not-at-top
  if spec.startswith(TORCHVISION):
    return 'torchvision'
  p = pathlib.Path(spec)
  if any((q / 'config.json').exists() for q in (p, p.parent, p.parent.parent)):
    return None
  return 'tf' if tf_pix2seq.is_tf_checkpoint(spec) else None


def read(source: str, path: str, config):
  """(online, EMA) variables {'params', 'batch_stats'} (numpy; possibly only some modules)."""
  from pix2seq_d_jax.convert import tf_pix2seq  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax.convert import torchvision_resnet  # pylint: disable=g-import-not-at-top
  if source == 'torchvision':
    v = torchvision_resnet.load_backbone(path[len(TORCHVISION):] if path.startswith(TORCHVISION)
                                         else path, config)
    return v, v
  if source != 'tf':
    raise ValueError(f'--from={source!r}; valid: {SOURCES}.')
  ckpt = tf_pix2seq.Checkpoint(path)
  if not ckpt.is_full_model:
    v = tf_pix2seq.load_encoder(path, config)
    return v, v
  online = tf_pix2seq.load(path, config, ema=False)
  ema = tf_pix2seq.load(path, config, ema=True) if ckpt.has_ema() else online
  print(tf_pix2seq.describe_fill(ckpt, {}, True, {}).splitlines()[0] +
        f' all modules filled ({"online and EMA" if ckpt.has_ema() else "online"} weights)')
  return online, ema


def _merge(target, source, prefixes):
  from pix2seq_d_jax import checkpoint  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=protected-access
  return checkpoint._merge_params(jax.device_get(target), source, tuple(prefixes))


def init_state(state, config, shardings):
  """`config.train.init_from` from an external source (EMA weights where there are two)."""
  spec = config.train.init_from
  _, ema = read(source_of(spec), spec, config)
  prefixes = config.train.init_from_prefixes
  params = _merge(state.params, ema['params'], prefixes)
  stats = _merge(state.batch_stats, ema['batch_stats'], prefixes)
  new = state.replace(params=params, batch_stats=stats,
                      ema_params=jax.tree.map(np.copy, params),
                      ema_batch_stats=jax.tree.map(np.copy, stats))
  logging.info('Initialised %s from %s.', ', '.join(prefixes), spec)
  return jax.device_put(new, shardings)


def write_workdir(source: str, path: str, config, workdir) -> pathlib.Path:
  """A workdir (orbax checkpoint at step 0, config.json, categories.json when the dataset's
  categories are known) holding the converted weights; modules the source lacks are freshly
  initialised. `Predictor.from_workdir`, `--mode=eval` and `--config.train.init_from` read it."""
  from pix2seq_d_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax.models import pix2seq_d  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  if checkpoint.checkpoint_dir(workdir).exists() and any(
      checkpoint.checkpoint_dir(workdir).iterdir()):
    raise FileExistsError(f'--workdir={workdir} already holds checkpoints; pass a new folder.')
  online, ema = read(source, path, config)
  model = pix2seq_d.build_model(config)
  tx, _ = state_lib.make_optimizer(config, 1, 0)
  state = jax.jit(lambda: state_lib.create_state(model, tx, pix2seq_d.init_inputs(config),
                                                 config.seed))()
  everything = tuple(state.params)
  state = state.replace(
      params=_merge(state.params, online['params'], everything),
      batch_stats=_merge(state.batch_stats, online['batch_stats'], everything),
      ema_params=_merge(state.ema_params, ema['params'], everything),
      ema_batch_stats=_merge(state.ema_batch_stats, ema['batch_stats'], everything))
  checkpoint.save_config(workdir, config)
  manager = checkpoint.make_manager(workdir, config)
  checkpoint.save(manager, state, {'step': 0, 'data': {'next_step': 0},
                                   'converted_from': f'{source}:{path}'}, force=True)
  manager.wait_until_finished()
  manager.close()
  try:
    from pix2seq_d_jax import data  # pylint: disable=g-import-not-at-top
    categories = data.get_source(config.dataset).categories
  except Exception as err:  # pylint: disable=broad-except  # Data may be absent here.
    categories = None
    print(f'categories.json not written: the dataset of the config is not readable here ({err}).')
  if categories:
    (workdir / 'categories.json').write_text(json.dumps(categories, indent=1))
  print(f'Wrote {workdir} (step 0).')
  return workdir
