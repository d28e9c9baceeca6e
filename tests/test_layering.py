"""The package's imports follow the layering of docs/architecture.md.

Every import of a pix2seq_d_jax module is read from the source (at the top of a file and inside
functions alike). The tests fail on an import cycle, on an import against the direction of the
layers, on the specific crossings the layering exists to prevent (serving -> training, scorers
-> models, data -> evaluation, formats -> anything), and on a function-level import of the
package that does not say why it is lazy.
"""

import ast
import collections
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'pix2seq_d_jax'

# Bottom to top. A module may import modules of its own group or of a lower layer; groups of
# one layer do not import each other. Keep in step with docs/architecture.md.
LAYERS = (
    {'formats': ['formats'], 'bits': ['bits'], 'diffusion': ['diffusion'],
     'config': ['config_lib', 'config_reads'], 'sharding': ['sharding'],
     'compile_options': ['compile_options']},
    {'losses': ['losses'], 'models': ['models'], 'data': ['data'], 'scorers': ['evaluation']},
    {'state': ['state']},
    {'checkpoint': ['checkpoint'],
     'convert': ['convert', 'convert.tf_pix2seq', 'convert.torchvision_resnet',
                 'convert.pretrained']},
    {'sampling': ['sampling']},
    {'serving': ['predict', 'predict_video', 'export']},
    {'train_step': ['train_step'], 'warm_start': ['warm_start'],
     'eval_loops': ['eval_loop', 'eval_panoptic', 'eval_vos']},
    {'train': ['train']},
    {'cli': ['main', 'evaluate', 'describe', 'predict_files', 'convert.__main__']},
)
TRAINING = ('train', 'train_step', 'warm_start', 'eval_loop', 'eval_panoptic', 'eval_vos')
SERVING = ('sampling', 'predict', 'predict_video', 'export')


def _modules() -> dict[str, pathlib.Path]:
  """'data.folder' -> its file, 'data' -> data/__init__.py, '' -> the package's __init__."""
  out = {}
  for path in PACKAGE.rglob('*.py'):
    parts = path.relative_to(PACKAGE).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    out['.'.join(parts)] = path
  return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
  """'pix2seq_d_jax.data.folder.X' -> 'data.folder' (the longest module prefix); None outside."""
  if name != 'pix2seq_d_jax' and not name.startswith('pix2seq_d_jax.'):
    return None
  parts = name.split('.')[1:]
  while parts and '.'.join(parts) not in MODULES:
    parts.pop()
  return '.'.join(parts)


def _imports(module: str):
  """(target module, line, at top level, source text of the line and the one above) of each
  package import."""
  path = MODULES[module]
  source = path.read_text()
  lines = source.splitlines()
  tree = ast.parse(source)
  top = {id(node) for node in tree.body}
  is_pkg = path.name == '__init__.py'
  here = ['pix2seq_d_jax'] + ([p for p in module.split('.') if p])
  if not is_pkg:
    here = here[:-1]
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(here[:len(here) - node.level + 1] + ([base] if base else []))
      names = [f'{base}.{a.name}' for a in node.names] or [base]
    for name in names:
      target = _resolve(name)
      if target is not None and target != module:
        yield (target, node.lineno, id(node) in top,
               '\n'.join(lines[max(node.lineno - 2, 0):node.lineno]))


def _graph() -> dict[str, set[str]]:
  return {m: {t for t, *_ in _imports(m)} for m in MODULES}


def _group_of(module: str) -> tuple[int, str]:
  """(layer index, group name); a module belongs to the group of its longest listed prefix."""
  best = None
  for index, layer in enumerate(LAYERS):
    for group, prefixes in layer.items():
      for prefix in prefixes:
        if module == prefix or module.startswith(prefix + '.'):
          if best is None or len(prefix) > best[0]:
            best = (len(prefix), index, group)
  if best is None:
    raise AssertionError(f'pix2seq_d_jax.{module} is in no layer of tests/test_layering.py; '
                         'add it to LAYERS and to docs/architecture.md.')
  return best[1], best[2]


def _closure(start: str, graph) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for t in graph[todo.pop()]:
      if t not in seen:
        seen.add(t)
        todo.append(t)
  return seen


def test_every_module_is_in_a_layer():
  for module in MODULES:
    if module:                 # the package's own __init__ imports nothing
      _group_of(module)


def test_no_import_cycle():
  graph = _graph()
  state = collections.defaultdict(int)    # 0 new, 1 on the stack, 2 done
  stack = []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for t in sorted(graph[m]):
      if state[t] == 1:
        cycle = stack[stack.index(t):] + [t]
        pytest.fail('import cycle: ' + ' -> '.join(cycle))
      if state[t] == 0:
        visit(t)
    stack.pop()
    state[m] = 2

  for m in sorted(graph):
    if state[m] == 0:
      visit(m)


def test_imports_follow_the_layers():
  bad = []
  for module in MODULES:
    if not module:
      continue
    layer, group = _group_of(module)
    for target, line, _, _ in _imports(module):
      if not target:
        continue
      t_layer, t_group = _group_of(target)
      if t_group != group and t_layer >= layer:
        bad.append(f'pix2seq_d_jax/{MODULES[module].relative_to(PACKAGE)}:{line} '
                   f'({group}, layer {layer}) imports {target} ({t_group}, layer {t_layer})')
  assert not bad, 'imports against the layering:\n' + '\n'.join(bad)


@pytest.mark.parametrize('sources, forbidden, what', [
    (SERVING, TRAINING, 'serving imports training code'),
    (('evaluation',), ('models', 'sampling', 'predict'), 'a scorer imports a model'),
    (('data',), ('evaluation', 'models', 'sampling'), 'data imports evaluation or models'),
    (('formats',), tuple(m for m in MODULES if m and not m.startswith('formats')),
     'a file format imports the package'),
])
def test_what_each_part_may_reach(sources, forbidden, what):
  """Transitively: the closure of each source module holds none of the forbidden ones."""
  graph = _graph()
  under = lambda m, names: any(m == n or m.startswith(n + '.') for n in names)
  bad = {}
  for module in MODULES:
    if under(module, sources):
      reached = sorted(t for t in _closure(module, graph) if under(t, forbidden))
      if reached:
        bad[module] = reached
  assert not bad, f'{what}: {bad}'


def test_function_level_package_imports_say_why():
  """A package import inside a function says why it is lazy (`# lazy: ...` on its line or the
  line above), e.g. to keep a command line's start fast or to set XLA flags before JAX starts."""
  bad = []
  for module in MODULES:
    for target, line, top_level, text in _imports(module):
      if not top_level and '# lazy:' not in text:
        bad.append(f'pix2seq_d_jax/{MODULES[module].relative_to(PACKAGE)}:{line}: '
                   f'{text.splitlines()[-1].strip()}')
  assert not bad, ('function-level imports without a "# lazy: <reason>" comment:\n' +
                   '\n'.join(bad))


def test_the_checker_sees_lazy_imports_and_cycles(tmp_path, monkeypatch):
  """The graph includes imports inside functions: a lazy import that closes a cycle is found."""
  fake = {'a': tmp_path / 'a.py', 'b': tmp_path / 'b.py'}
  fake['a'].write_text('from pix2seq_d_jax import b\n')
  fake['b'].write_text('def f():\n  from pix2seq_d_jax import a  # lazy: test\n')
  monkeypatch.setattr(__import__(__name__), 'MODULES', fake)
  graph = _graph()
  assert graph == {'a': {'b'}, 'b': {'a'}}
  with pytest.raises(pytest.fail.Exception, match='import cycle: a -> b -> a'):
    test_no_import_cycle()
