"""Readers of pretrained weights from outside this project, for `config.train.init_from`
(pix2seq_d_jax/warm_start.py) and workdir conversion (pix2seq_d_jax/convert/__main__.py).

`config.train.init_from` accepts, besides a workdir of ours:
  - a TF checkpoint of the authors (folder or prefix): a Pix2Seq-D one fills every module (EMA
    weights), a Pix2Seq detection one the backbone and the encoder (`tf_pix2seq`);
  - `torchvision:PATH` with a ResNet-50 safetensors file: the backbone (`torchvision_resnet`).
Only the modules in `config.train.init_from_prefixes` are copied; the rest stays as initialised.
"""

import pathlib

from pix2seq_d_jax.convert import tf_pix2seq
from pix2seq_d_jax.convert import torchvision_resnet

TORCHVISION = 'torchvision:'
SOURCES = ('tf', 'torchvision')


def source_of(spec: str) -> str | None:
  """'torchvision', 'tf' or None (a workdir of ours, or nothing known)."""
  if spec.startswith(TORCHVISION):
    return 'torchvision'
  p = pathlib.Path(spec)
  if any((q / 'config.json').exists() for q in (p, p.parent, p.parent.parent)):
    return None
  return 'tf' if tf_pix2seq.is_tf_checkpoint(spec) else None


def read(source: str, path: str, config):
  """(online, EMA) variables {'params', 'batch_stats'} (numpy; possibly only some modules)."""
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
