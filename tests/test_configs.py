"""Every config file and variant loads, and every key it sets is read by the package.

"Read" is decided from the package's source (pix2seq_d_jax/**/*.py) with `ast`:
  - qualified reads: attribute chains, `x.get('k')`, `getattr(x, 'k')` and `x['k']` whose base
    resolves to a config section: `config`, a parameter named `<section>_config`, a local alias
    (`d = config.dataset`, `e = m.encoder`) or a `self.<attr>` alias that a class of the module
    sets from one of those;
  - unqualified reads: any attribute name or string constant, credited to the sections that its
    scope (the enclosing top-level function or class, or the whole module for module-level
    code) mentions by name.
A key `a.b.leaf` counts as read if `a.b.leaf` is read qualified, or `leaf` is read unqualified in
a scope that mentions `b`. A typo (`train.num_epoch`) or a dead key (`dataset.unused_thing`) is
neither; the last tests show that the check catches both.
"""

import ast
import functools
import pathlib
import re

import ml_collections
import pytest

from pix2seq_d_jax import config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / 'configs'
PACKAGE = ROOT / 'pix2seq_d_jax'


# ---------------------------------------------------------------------------------------------
# Variants of a config file, from its source.


def config_files() -> list[pathlib.Path]:
  return sorted(p for p in CONFIG_DIR.glob('*.py') if p.name not in ('common.py', '__init__.py'))


def variants(path: pathlib.Path) -> list[str]:
  """'' plus one argument per flag of `parse_arg(arg, ...)` and per value a string arg is
  compared with (`args.stage == 'low'`), e.g. ['', 'runlocal', 'stage=low', 'stage=high']."""
  tree = ast.parse(path.read_text())
  defaults = {}
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == 'parse_arg'):
      for kw in node.keywords:
        defaults[kw.arg] = ast.literal_eval(kw.value)
  values = {k: {v} for k, v in defaults.items() if isinstance(v, str)}
  for node in ast.walk(tree):
    if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute):
      name = node.left.attr
      if name in values:
        for comp in node.comparators:
          if isinstance(comp, ast.Constant) and isinstance(comp.value, str):
            values[name].add(comp.value)
  out = ['']
  out += [k for k, v in defaults.items() if isinstance(v, bool)]
  out += [f'{k}={v}' for k in values for v in sorted(values[k])]
  return out


ALL_SPECS = [f'{p.relative_to(ROOT)}' + (f':{v}' if v else '')
             for p in config_files() for v in variants(p)]


# ---------------------------------------------------------------------------------------------
# What the package reads.


class _Scope:
  def __init__(self):
    self.names: set[str] = set()      # attribute names, Name ids, string constants
    self.unqualified: set[str] = set()


class _Reader(ast.NodeVisitor):
  """Collects qualified key paths and per-scope unqualified names of one module."""

  def __init__(self, sections: set[str]):
    self.sections = sections
    self.qualified: set[tuple[str, ...]] = set()
    self.scopes: list[_Scope] = []
    self.module_scope = _Scope()
    self._scope = self.module_scope
    self._aliases: list[dict[str, tuple[str, ...]]] = [{}]
    self._self_aliases: dict[str, tuple[str, ...]] = {}

  # Scopes: a top-level function or class is one scope (with its nested definitions).
  def _visit_scope(self, node, params=()):
    top = self._scope is self.module_scope
    if top:
      self._scope = _Scope()
      self.scopes.append(self._scope)
    aliases = dict(self._aliases[-1])
    for p in params:
      m = re.fullmatch(r'(\w+)_config', p)
      if m:
        aliases[p] = (m.group(1),)
      elif p == 'config':
        aliases[p] = ()
    self._aliases.append(aliases)
    if isinstance(node, ast.ClassDef):
      # Methods may use self.<attr> aliases that __init__ sets: visit __init__ first.
      body = sorted(node.body, key=lambda n: getattr(n, 'name', '') != '__init__')
      for child in body:
        self.visit(child)
    else:
      self.generic_visit(node)
    self._aliases.pop()
    if top:
      self._scope = self.module_scope

  def visit_FunctionDef(self, node):
    a = node.args
    params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    self._visit_scope(node, params)

  visit_AsyncFunctionDef = visit_FunctionDef

  def visit_Lambda(self, node):
    self.generic_visit(node)

  def visit_ClassDef(self, node):
    self._visit_scope(node)

  def resolve(self, node) -> tuple[str, ...] | None:
    """The config path an expression stands for, or None."""
    if isinstance(node, ast.Name):
      if node.id in self._aliases[-1]:
        return self._aliases[-1][node.id]
      m = re.fullmatch(r'(\w+)_config', node.id)
      if m:
        return (m.group(1),)
      return () if node.id == 'config' else None
    if isinstance(node, ast.Attribute):
      if isinstance(node.value, ast.Name) and node.value.id == 'self':
        if node.attr in self._self_aliases:
          return self._self_aliases[node.attr]
        return () if node.attr == 'config' else None
      base = self.resolve(node.value)
      return None if base is None else base + (node.attr,)
    if isinstance(node, ast.Subscript):
      base = self.resolve(node.value)
      key = node.slice
      if base is not None and isinstance(key, ast.Constant) and isinstance(key.value, str):
        return base + (key.value,)
    return None

  def _note(self, name: str):
    self._scope.names.add(name)

  def visit_Assign(self, node):
    path = self.resolve(node.value)
    for target in node.targets:
      if path is not None and isinstance(target, ast.Name):
        self._aliases[-1][target.id] = path
      if (path is not None and isinstance(target, ast.Attribute)
          and isinstance(target.value, ast.Name) and target.value.id == 'self'):
        self._self_aliases[target.attr] = path
    self.generic_visit(node)

  def visit_Attribute(self, node):
    self._note(node.attr)
    self._scope.unqualified.add(node.attr)
    path = self.resolve(node)
    if path:
      self.qualified.add(path)
    self.generic_visit(node)

  def visit_Subscript(self, node):
    path = self.resolve(node)
    if path:
      self.qualified.add(path)
    self.generic_visit(node)

  def visit_Call(self, node):
    func = node.func
    args = node.args
    if (isinstance(func, ast.Attribute) and func.attr == 'get' and args
        and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str)):
      base = self.resolve(func.value)
      if base is not None:
        self.qualified.add(base + (args[0].value,))
    if (isinstance(func, ast.Name) and func.id in ('getattr', 'hasattr') and len(args) >= 2
        and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str)):
      base = self.resolve(args[0])
      if base is not None:
        self.qualified.add(base + (args[1].value,))
    self.generic_visit(node)

  def visit_Name(self, node):
    self._note(node.id)
    m = re.fullmatch(r'(\w+)_config', node.id)
    if m:
      self._note(m.group(1))

  def visit_Constant(self, node):
    if isinstance(node.value, str):
      self._note(node.value)
      self._scope.unqualified.add(node.value)


@functools.lru_cache(maxsize=None)
def package_reads(sections: frozenset) -> tuple[frozenset, dict]:
  """(qualified paths, {leaf: set of sections some scope reading `leaf` mentions})."""
  qualified = set()
  credited: dict[str, set[str]] = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    reader = _Reader(set(sections))
    reader.visit(ast.parse(path.read_text(), filename=str(path)))
    qualified |= reader.qualified
    module_names = set(reader.module_scope.names)
    for scope in reader.scopes:
      module_names |= scope.names
    for scope, names in [(s, s.names) for s in reader.scopes] + [(reader.module_scope,
                                                                  module_names)]:
      mentioned = {n for n in names if n in sections} | ({''} if 'config' in names else set())
      for leaf in scope.unqualified:
        credited.setdefault(leaf, set()).update(mentioned)
  return frozenset(qualified), credited


def leaf_keys(config: ml_collections.ConfigDict, prefix=()) -> list[tuple[str, ...]]:
  out = []
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out += leaf_keys(value, prefix + (key,))
    else:
      out.append(prefix + (key,))
  return out


def section_names(config: ml_collections.ConfigDict) -> frozenset:
  names = set()
  for key in config.keys():
    if isinstance(config[key], ml_collections.ConfigDict):
      names.add(key)
      names |= section_names(config[key])
  return frozenset(names)


def unread_keys(config: ml_collections.ConfigDict) -> list[str]:
  qualified, credited = package_reads(section_names(config) | {'dataset', 'model', 'train',
                                                               'eval', 'diffusion'})
  unread = []
  for path in leaf_keys(config):
    if path in qualified:
      continue
    parent = path[-2] if len(path) > 1 else ''
    if parent in credited.get(path[-1], set()):
      continue
    unread.append('.'.join(path))
  return unread


# ---------------------------------------------------------------------------------------------
# Tests.


def test_every_config_file_has_variants_and_a_documented_command():
  names = {p.name for p in config_files()}
  assert {'shapes.py', 'coco_panoptic.py', 'cityscapes_panoptic.py', 'davis_video.py'} <= names
  for path in config_files():
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and 'python -m pix2seq_d_jax.' in doc, f'{path.name}: document the command'
    assert 'runlocal' in variants(path), f'{path.name}: no :runlocal variant'
  assert 'stage=low' in variants(CONFIG_DIR / 'coco_panoptic.py')
  assert 'stage=high' in variants(CONFIG_DIR / 'coco_panoptic.py')


@pytest.mark.parametrize('spec', ALL_SPECS)
def test_config_loads_and_every_key_is_read(spec):
  config = config_lib.load_config(str(ROOT / spec))
  assert config.dataset.name and config.train.batch_size > 0
  unread = unread_keys(config)
  assert not unread, f'{spec}: nothing in pix2seq_d_jax reads {unread}; remove or fix them'


def test_paper_settings_of_the_real_data_configs():
  low = config_lib.load_config(str(CONFIG_DIR / 'coco_panoptic.py') + ':stage=low')
  assert (low.dataset.min_scale, low.dataset.max_scale, low.dataset.color_jitter) == (1, 3, 1)
  assert (low.train.batch_size, low.train.num_epochs, low.train.learning_rate) == (512, 800, 1e-4)
  assert low.dataset.max_original_size == (640, 640) and low.dataset.num_classes == 134
  high = config_lib.load_config(str(CONFIG_DIR / 'coco_panoptic.py') + ':stage=high')
  assert (high.dataset.max_scale, high.dataset.color_jitter, high.train.batch_size) == (1, 0, 16)
  city = config_lib.load_config(str(CONFIG_DIR / 'cityscapes_panoptic.py'))
  assert city.dataset.name == 'coco_panoptic_folder' and city.dataset.num_classes == 20
  assert city.model.image_size == (1024, 2048) and city.model.mask_size == (512, 1024)
  assert city.dataset.max_original_size == (1024, 2048)
  vid = config_lib.load_config(str(CONFIG_DIR / 'davis_video.py'))
  assert (vid.model.image_size, vid.model.mask_size) == ((512, 1024), (256, 512))
  assert (vid.dataset.max_instances, vid.dataset.num_frames, vid.model.num_cond_frames) == (
      16, 3, 2)
  assert (vid.dataset.frames_dropout, vid.train.ema_decay, vid.train.learning_rate) == (
      0.2, 0.99, 1e-5)
  assert (vid.train.end_lr_factor, vid.train.batch_size, vid.train.num_steps) == (1.0, 32, 50_000)
  assert vid.dataset.object_order == 'shuffle'
  # The shapes configs' departures (raster ids, a split CPU) stay out of the paper configs.
  assert low.dataset.object_order == 'random' and city.dataset.object_order == 'shuffle'
  assert low.cpu_devices == high.cpu_devices == city.cpu_devices == vid.cpu_devices == 0
  for paper in (low, high, city, vid):                 # and so do the loss settings of shapes.py
    assert (paper.diffusion.mask_weight_p, paper.diffusion.class_loss_weight) == (0.2, 1.0)


def _with_extra(spec: str, section: str, key: str, value) -> ml_collections.ConfigDict:
  config = config_lib.load_config(str(ROOT / spec))
  with config.unlocked():
    config[section][key] = value
  return config


def test_a_typo_or_a_dead_key_is_caught():
  spec = 'configs/coco_panoptic.py:stage=low'
  assert unread_keys(config_lib.load_config(str(ROOT / spec))) == []
  assert unread_keys(_with_extra(spec, 'train', 'num_epoch', 15.0)) == ['train.num_epoch']
  assert unread_keys(_with_extra(spec, 'dataset', 'unused_thing', 1)) == ['dataset.unused_thing']
  # A real key name under the wrong section is caught too when no scope of that section uses it.
  assert unread_keys(_with_extra(spec, 'diffusion', 'train_json', '')) == ['diffusion.train_json']
