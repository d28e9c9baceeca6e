"""Every config file and variant loads, and every key it sets is read by the package.

"Read" is decided exactly, by full key path, from the package's source (pix2seq_d_jax/**/*.py)
with `ast`: a key `a.b.leaf` is read when some expression of the package reads `leaf` from
something that stands for the config section `a.b` (`_Reader` says what does). A name or a
string that merely equals a key counts for nothing, so a typo (`train.num_epoch`), a dead key
(`dataset.unused_thing`) or a made-up key whose leaf is a common word (`diffusion.steps`,
`dataset.shape`, `eval.name`, `train.seed`) fails; the last tests show it.
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


SECTIONS = ('dataset', 'model', 'train', 'eval', 'diffusion')


class _Reader(ast.NodeVisitor):
  """Collects the config key paths one module reads.

  An expression stands for a config path when it is `config` (a parameter, or `self.config`), a
  parameter named `<section>_config`, a local alias assigned from a config path (`d =
  config.dataset`, `d, m = config.dataset, config.model`, `config = load_config(...)`), a `self.<attr>` alias a method of the
  module assigns from one, or an attribute / constant subscript / `.get('k')` / `getattr(x, 'k')`
  of such an expression. Only reads through such expressions count: a name or a string that
  merely equals a key reads nothing. A name rebound to something else stops being an alias.
  """

  def __init__(self):
    self.qualified: set[tuple[str, ...]] = set()
    self._aliases: list[dict[str, tuple[str, ...]]] = [{}]
    self._self_aliases: dict[str, tuple[str, ...]] = {}

  def _visit_scope(self, node, params=()):
    aliases = dict(self._aliases[-1])
    for p in params:
      aliases.pop(p, None)
      m = re.fullmatch(r'(\w+)_config', p)
      if m and m.group(1) in SECTIONS:
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

  def visit_FunctionDef(self, node):
    a = node.args
    params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    params += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    self._visit_scope(node, params)

  visit_AsyncFunctionDef = visit_FunctionDef

  def visit_Lambda(self, node):
    a = node.args
    self._visit_scope(node, [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs])

  def visit_ClassDef(self, node):
    self._visit_scope(node)

  def resolve(self, node) -> tuple[str, ...] | None:
    """The config path an expression stands for, or None."""
    if isinstance(node, ast.Name):
      return self._aliases[-1].get(node.id)
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

  def _bind(self, target, value):
    """Records `target = value`: an alias when value is a config path, else drops the alias."""
    if isinstance(target, (ast.Tuple, ast.List)):
      values = value.elts if isinstance(value, (ast.Tuple, ast.List)) and len(
          value.elts) == len(target.elts) else [None] * len(target.elts)
      for t, v in zip(target.elts, values):
        self._bind(t, v)
      return
    path = None if value is None else self.resolve(value)
    if (isinstance(value, ast.Call) and getattr(value.func, 'attr',
                                                getattr(value.func, 'id', None)) == 'load_config'):
      path = ()
    if isinstance(target, ast.Name):
      if path is None:
        self._aliases[-1].pop(target.id, None)
      else:
        self._aliases[-1][target.id] = path
    elif (path is not None and isinstance(target, ast.Attribute)
          and isinstance(target.value, ast.Name) and target.value.id == 'self'):
      self._self_aliases[target.attr] = path

  def visit_Assign(self, node):
    self.visit(node.value)
    for target in node.targets:
      self._bind(target, node.value)
      if not isinstance(target, ast.Name):
        self.visit(target)

  def visit_AnnAssign(self, node):
    if node.value is not None:
      self.visit(node.value)
      self._bind(node.target, node.value)

  def _rebinds(self, target):
    for n in ast.walk(target):
      if isinstance(n, ast.Name):
        self._aliases[-1].pop(n.id, None)

  def visit_For(self, node):
    self.visit(node.iter)
    self._rebinds(node.target)
    for child in node.body + node.orelse:
      self.visit(child)

  def _visit_comp(self, node):
    # The generators bind before the element is evaluated, in a scope of their own.
    self._aliases.append(dict(self._aliases[-1]))
    for gen in node.generators:
      self.visit(gen)
    for elt in ([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]):
      self.visit(elt)
    self._aliases.pop()

  visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _visit_comp

  def visit_comprehension(self, node):
    self.visit(node.iter)
    self._rebinds(node.target)
    for cond in node.ifs:
      self.visit(cond)

  def visit_withitem(self, node):
    self.visit(node.context_expr)
    if node.optional_vars is not None:
      self._rebinds(node.optional_vars)

  def visit_Attribute(self, node):
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
        for child in [func.value] + args + node.keywords:   # `.get` itself is no key
          self.visit(child)
        return
    if (isinstance(func, ast.Name) and func.id in ('getattr', 'hasattr') and len(args) >= 2
        and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str)):
      base = self.resolve(args[0])
      if base is not None:
        self.qualified.add(base + (args[1].value,))
    self.generic_visit(node)


@functools.lru_cache(maxsize=None)
def package_reads() -> frozenset:
  """Every config key path that some code path of pix2seq_d_jax reads."""
  qualified = set()
  for path in sorted(PACKAGE.rglob('*.py')):
    reader = _Reader()
    reader.visit(ast.parse(path.read_text(), filename=str(path)))
    qualified |= reader.qualified
  return frozenset(qualified)


def leaf_keys(config: ml_collections.ConfigDict, prefix=()) -> list[tuple[str, ...]]:
  out = []
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out += leaf_keys(value, prefix + (key,))
    else:
      out.append(prefix + (key,))
  return out


def unread_keys(config: ml_collections.ConfigDict) -> list[str]:
  """The keys of `config` that no code path of the package reads, by full path."""
  reads = package_reads()
  return ['.'.join(path) for path in leaf_keys(config) if path not in reads]


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


@pytest.mark.parametrize('section, key', [
    ('train', 'num_epoch'), ('dataset', 'unused_thing'), ('diffusion', 'train_json'),
    # Leaves that are real keys of another section, or common words in the code.
    ('diffusion', 'steps'), ('dataset', 'shape'), ('eval', 'name'), ('train', 'seed'),
    ('model', 'batch_size'), ('model.encoder', 'dtype'), ('eval', 'config')])
def test_a_typo_or_a_dead_key_is_caught(section, key):
  spec = 'configs/coco_panoptic.py:stage=low'
  assert unread_keys(config_lib.load_config(str(ROOT / spec))) == []
  config = config_lib.load_config(str(ROOT / spec))
  node = config
  for part in section.split('.'):
    node = node[part]
  with node.unlocked():
    node[key] = 1
  assert unread_keys(config) == [f'{section}.{key}']


def _reads_of(source: str) -> set:
  reader = _Reader()
  reader.visit(ast.parse(source))
  return {'.'.join(p) for p in reader.qualified}


def test_the_reader_counts_reads_through_config_paths_only():
  reads = _reads_of('''
def f(config, x, dataset_config):
  d, m = config.dataset, config.model
  steps = x.steps + len('steps')            # a coincidental name or string: no read
  e = m.encoder
  v = d.min_scale + e.dim + dataset_config.flip_prob + config.get('seed', 0)
  d = x                                     # rebound: d no longer stands for config.dataset
  w = d.max_scale + getattr(config.train, 'batch_size') + config['eval']['steps']
  for m in x:
    m.width                                 # a loop variable shadows the alias
  return [e.shape for e in x]               # so does a comprehension variable

class C:
  def __init__(self, dataset_config):
    self.cfg = dataset_config

  def g(self):
    return self.cfg.name
''')
  assert reads - {'dataset', 'model', 'model.encoder', 'train', 'eval'} == {
      'dataset.min_scale', 'model.encoder.dim', 'dataset.flip_prob', 'seed', 'train.batch_size',
      'eval.steps', 'dataset.name'}
