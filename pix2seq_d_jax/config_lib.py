"""Loading Python config files (`path/to/config.py[:arg]`) and `--config.key=value` overrides."""

import ast
import importlib.util
import pathlib
import sys

import ml_collections

from pix2seq_d_jax import config_reads


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
  """Loads `configs/x.py[:arg]`, calls its `get_config(arg)`, applies overrides and locks it.

  Args:
    spec: a config file path, optionally followed by `:arg` (e.g. `configs/shapes.py:runlocal`).
    overrides: strings `key.sub=value`; values are Python literals (strings may be bare).

  Returns:
    A locked ConfigDict (unknown keys raise).

  Raises:
    ValueError: the file sets a key that nothing in the package reads (`config_reads`).
  """
  path_str, _, arg = spec.partition(':')
  path = pathlib.Path(path_str).expanduser().resolve()
  if not path.is_file():
    raise FileNotFoundError(f'--config={spec}: no file {path}. Pass a config file such as '
                            'configs/shapes.py (optionally with :arg).')
  # Config files import their shared defaults as `from configs import common`.
  root = str(path.parent.parent)
  if root not in sys.path:
    sys.path.insert(0, root)
  module_spec = importlib.util.spec_from_file_location(f'_config_{path.stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'{path}: a config file must define get_config(arg=None).')
  config = module.get_config(arg or None)
  apply_overrides(config, overrides)
  problem = config_reads.unread_message(config, f'--config={spec}')
  if problem:
    raise ValueError(problem)
  config.lock()
  return config


def _parse_value(text: str, current):
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(current, bool) and isinstance(value, str):
    value = value.lower() in ('1', 'true', 'yes')
  elif isinstance(current, float) and isinstance(value, int):
    value = float(value)
  elif isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  elif isinstance(current, tuple) and not isinstance(value, tuple):
    value = (value,)
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> None:
  """Applies `a.b.c=value` overrides; an unknown key raises with the valid keys of its parent."""
  for item in overrides:
    key, eq, text = item.partition('=')
    if not eq:
      raise ValueError(f'--config.{item}: expected --config.key=value.')
    *parents, leaf = key.split('.')
    node = config
    for i, p in enumerate(parents):
      if p not in node:
        raise KeyError(f'--config.{key}: no key {".".join(parents[:i + 1])!r}; valid: '
                       f'{sorted(node.keys())}.')
      node = node[p]
    if leaf not in node:
      raise KeyError(f'--config.{key}: no key {leaf!r} under {".".join(parents) or "config"}; '
                     f'valid: {sorted(node.keys())}.')
    value = _parse_value(text, node[leaf])
    if node[leaf] is not None and type(value) is not type(node[leaf]):
      raise TypeError(f'--config.{key}={text}: expected a {type(node[leaf]).__name__} like '
                      f'{node[leaf]!r}.')
    with node.unlocked():
      node[leaf] = value


def split_config_flags(argv):
  """Splits argv into (other args, ['key=value', ...] from `--config.key=value`)."""
  rest, overrides = [], []
  for a in argv:
    if a.startswith('--config.'):
      overrides.append(a[len('--config.'):])
    else:
      rest.append(a)
  return rest, overrides
