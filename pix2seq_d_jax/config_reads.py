"""Which config keys the package reads: exactly, by full key path, from its own source.

`load_config` rejects a config whose keys some code path of pix2seq_d_jax never reads (a typo
such as `train.num_epoch`, a key under the wrong section, a dead key), naming the key and the
nearest real one, instead of running with the setting silently ignored.

A key `a.b.leaf` is read when some expression of the package reads `leaf` from something that
stands for the config section `a.b` (`_Reader` says what does). A name or a string that merely
equals a key counts for nothing. tests/test_configs.py checks that every shipped config and
variant passes and that made-up keys fail.
"""

import ast
import difflib
import functools
import pathlib
import re

import ml_collections

PACKAGE = pathlib.Path(__file__).resolve().parent

SECTIONS = ('dataset', 'model', 'train', 'eval', 'diffusion')


class _Reader(ast.NodeVisitor):
  """Collects the config key paths one module reads.

  An expression stands for a config path when it is `config` (a parameter, or `self.config`),
  a parameter named `<section>_config` (a top-level section), a local name assigned from a
  config path (`d = config.dataset`, `d, m = config.dataset, config.model`) or from
  `load_config(...)`, a `self.<attr>` that a method of the module assigns from one, or an
  attribute / constant subscript / `.get('k')` / `getattr(x, 'k')` of such an expression. Only
  reads through such expressions count: a name or a string that merely equals a key reads
  nothing. A name rebound to something else (an assignment, a loop or comprehension variable)
  stops standing for the config.
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
  """Every config key path that some code path of pix2seq_d_jax reads (parsed once)."""
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


def unread_message(config: ml_collections.ConfigDict, where: str) -> str | None:
  """None if every key of `config` is read; else an error text naming each key and a fix."""
  unread = unread_keys(config)
  if not unread:
    return None
  known = sorted('.'.join(p) for p in package_reads())
  lines = []
  for key in unread:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    lines.append(f'  {key}' + (f' (did you mean {close[0]}?)' if close else ''))
  return (f'{where}: nothing in pix2seq_d_jax reads these config keys, so their values would be '
          'ignored:\n' + '\n'.join(lines) + '\nRename them to the key you meant or remove them.')

