"""Starting a run from earlier weights: `config.train.init_from` (step (2) of the resume order
in pix2seq_d_jax/checkpoint.py).

`init_from` names a workdir of ours, one of its `checkpoints/<step>` folders, or an external
source (pix2seq_d_jax/convert/pretrained.py: the authors' TF checkpoints, torchvision ResNet-50
weights). The parameter subtrees named in `config.train.init_from_prefixes` (e.g. only
'backbone') are copied, EMA weights where there are two; the rest stays as initialised. The
decoder's first conv is mapped by named input group (`decoder_input_groups`), so a checkpoint
with or without self-conditioning or previous frames loads into any other such model, new groups
starting at zero (an image checkpoint loaded into the video model, docs/decisions.md §7).
"""

import logging
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pix2seq_d_jax import bits as bits_lib
from pix2seq_d_jax import checkpoint
from pix2seq_d_jax import state as state_lib
from pix2seq_d_jax.convert import pretrained


def _resolve(init_from: str) -> tuple[pathlib.Path, int | None]:
  """A workdir, its checkpoints dir, or one step dir -> (workdir, step or None for newest)."""
  path = pathlib.Path(init_from)
  if (path / checkpoint.CONFIG_FILE).exists():
    return path, None
  if (path.parent / checkpoint.CONFIG_FILE).exists():          # workdir/checkpoints
    return path.parent, None
  if path.name.isdigit() and (path.parent.parent / checkpoint.CONFIG_FILE).exists():
    return path.parent.parent, int(path.name)
  raise FileNotFoundError(f'config.train.init_from={init_from!r}: expected a pix2seq_d_jax '
                          f'workdir (holding {checkpoint.CONFIG_FILE} and checkpoints/), or one '
                          'of its checkpoints/<step> directories.')


# The decoder's first conv: its input channels are the groups of `decoder_input_groups`.
DECODER_INPUT_KERNEL = ('decoder', 'conv_in', 'kernel')


def decoder_input_groups(config: ml_collections.ConfigDict) -> list[tuple[str, int]]:
  """(name, channels) of the decoder's input, in the order `Pix2SeqD.decode`
  (pix2seq_d_jax/models/pix2seq_d.py) concatenates them: 'x_t' (16), 'self_cond' (16, iff
  config.diffusion.self_condition), 'encoder' (config.model.fpn_dim; present, zeroed, without
  'cat' conditioning), then the P = config.model.num_cond_frames previous frames oldest first,
  named by their distance to the current frame: 'frame_t-P', ..., 'frame_t-1' (16 each)."""
  n = bits_lib.MASK_BITS
  groups = [('x_t', n)]
  if config.diffusion.self_condition:
    groups.append(('self_cond', n))
  groups.append(('encoder', config.model.fpn_dim))
  p = config.model.num_cond_frames
  groups += [(f'frame_t-{p - j}', n) for j in range(p)]
  return groups


def _map_input_groups(target, source, target_groups, source_groups, name):
  """A kernel [kh, kw, C_in, C_out] from the source's input groups to the target's: a group in
  both keeps its weights, a group new to the target starts at zero, a source-only group is
  dropped."""
  for side, kernel, groups in (('source', source, source_groups),
                               ('this model', target, target_groups)):
    if kernel.shape[2] != sum(c for _, c in groups):
      raise ValueError(f'config.train.init_from: {name} has {kernel.shape[2]} input channels in '
                       f'{side} but its config gives the groups {groups} '
                       f'({sum(c for _, c in groups)}); the checkpoint does not match its '
                       'config.json.')
  if target.shape[:2] != source.shape[:2] or target.shape[3] != source.shape[3]:
    raise ValueError(f'config.train.init_from: parameter {name} has shape {source.shape} in the '
                     f'source but {target.shape} in this model; match model.decoder.dim or drop '
                     "'decoder' from config.train.init_from_prefixes.")
  offsets, start = {}, 0
  for g, c in source_groups:
    offsets[g] = (start, c)
    start += c
  source = np.asarray(source)
  parts, new = [], []
  for g, c in target_groups:
    if g not in offsets:
      new.append(g)
      parts.append(np.zeros(source.shape[:2] + (c, source.shape[3]), source.dtype))
      continue
    s0, sc = offsets[g]
    if sc != c:
      raise ValueError(f'config.train.init_from: the {g!r} input group of {name} has {sc} '
                       f'channels in the source but {c} in this model; set model.fpn_dim={sc} '
                       "or drop 'decoder' from config.train.init_from_prefixes.")
    parts.append(source[:, :, s0:s0 + c])
  dropped = [g for g, _ in source_groups if g not in dict(target_groups)]
  if new or dropped:
    logging.warning('init_from: %s input groups %s; zero-initialised (new): %s; dropped (not in '
                    'this model): %s.', name, [g for g, _ in target_groups], new or 'none',
                    dropped or 'none')
  return jnp.asarray(np.concatenate(parts, axis=2), target.dtype)


def merge_params(target, source, prefixes, path=(), input_groups=None):
  """Copies source leaves into target where the top-level name is in prefixes and shapes fit.

  `input_groups` = (target groups, source groups) of `decoder_input_groups`: the decoder's first
  conv kernel is mapped group by group (`_map_input_groups`); without them its shapes must match.
  """
  if isinstance(target, dict):
    out = {}
    for k, v in target.items():
      sub = path + (k,)
      if not path and k not in prefixes:
        out[k] = v
      elif k in source:
        out[k] = merge_params(v, source[k], prefixes, sub, input_groups)
      else:
        logging.warning('init_from: %s is not in the source checkpoint; kept fresh.',
                        '/'.join(sub))
        out[k] = v
    return out
  name = '/'.join(path)
  if path == DECODER_INPUT_KERNEL and input_groups is not None:
    return _map_input_groups(target, source, *input_groups, name)
  if target.shape == source.shape:
    return jnp.asarray(source, target.dtype)
  raise ValueError(f'config.train.init_from: parameter {name} has shape {source.shape} in the '
                   f'source but {target.shape} in this model; drop its top-level module from '
                   'config.train.init_from_prefixes or match the model sizes.')


def init_from(state, config: ml_collections.ConfigDict, shardings):
  """Initialises params and batch stats (online and EMA) of `state` from
  `config.train.init_from` (see the module docstring); returns it placed on `shardings`."""
  spec = config.train.init_from
  prefixes = tuple(config.train.init_from_prefixes)
  source = pretrained.source_of(spec)
  if source:
    _, ema = pretrained.read(source, spec, config)
    src_params, src_stats, groups = ema['params'], ema['batch_stats'], None
  else:
    mesh = jax.tree.leaves(shardings)[0].mesh
    src_params, src_stats, src_config = _read_workdir(spec, mesh)
    groups = (decoder_input_groups(config), decoder_input_groups(src_config))
  params = merge_params(jax.device_get(state.params), src_params, prefixes, input_groups=groups)
  stats = merge_params(jax.device_get(state.batch_stats), src_stats, prefixes)
  new = state.replace(params=params, batch_stats=stats,
                      ema_params=jax.tree.map(np.copy, params),
                      ema_batch_stats=jax.tree.map(np.copy, stats))
  logging.info('Initialised %s from %s.', ', '.join(prefixes), spec)
  return jax.device_put(new, shardings)


def _read_workdir(spec: str, mesh: jax.sharding.Mesh):
  """(EMA params, EMA batch stats, config) of a workdir's newest or named checkpoint, restored
  replicated over `mesh` and brought to the host."""
  src_workdir, step = _resolve(spec)
  src_config = checkpoint.load_config(src_workdir)
  abstract = state_lib.abstract_state(src_config)
  replicated = jax.tree.map(lambda _: jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()), abstract)
  manager = checkpoint.make_manager(src_workdir, src_config, read_only=True)
  where = f'config.train.init_from={spec!r}'
  try:
    if step is None:
      step = manager.latest_step()
      if step is None:
        raise FileNotFoundError(f'{where}: {checkpoint.checkpoint_dir(src_workdir)} holds no '
                                'checkpoint; point init_from at a workdir that has trained.')
    src_state, _ = checkpoint.restore_step(
        manager, abstract, replicated, step, src_workdir, where,
        'point init_from at a readable checkpoint, e.g. an older one as '
        '<workdir>/checkpoints/<step>')
  finally:
    manager.close()
  return (jax.device_get(src_state.ema_params), jax.device_get(src_state.ema_batch_stats),
          src_config)
