"""Every reference in the repository resolves: `docs/<name>.md §N` to a heading of that file, and
a path of the repository (pix2seq_d_jax/..., tests/..., configs/..., docs/...) to a file that
exists. References to documents outside the repository are gone."""

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTION = re.compile(r'docs/(\w+)\.md §(\d+(?:\.\d+)*)')
PATH = re.compile(r'(?<![\w/.-])((?:pix2seq_d_jax|tests|benchmarks|tools|configs|launch|docs|'
                  r'\.ci)/[\w/.-]*\w)')
# Lines that name the authors' files (which share some of our folder names) or a placeholder.
EXTERNAL = re.compile(r"authors'|\b[Tt]heir\b|/[Xx]\.py")
OUTSIDE = re.compile(r'\bSPEC\b(?! =)|\bDESIGN\.md|\bSTYLE\.md|\bENVIRONMENT\.md|\bDecisions? \d')


def _files() -> list[pathlib.Path]:
  """The repository's text files: tracked, plus untracked ones git does not ignore."""
  out = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
                       cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
  # This file's own examples of broken references are not references.
  return [ROOT / f for f in out if f.endswith(('.py', '.md', '.sh')) and (ROOT / f).is_file()
          and f != 'tests/test_docs.py']


def _headings() -> dict[str, set[str]]:
  return {p.stem: set(re.findall(r'^#+ §(\d+(?:\.\d+)*) ', p.read_text(), re.M))
          for p in (ROOT / 'docs').glob('*.md')}


def test_the_design_documents_exist():
  for name in ('architecture', 'spec', 'decisions', 'contracts'):
    assert (ROOT / 'docs' / f'{name}.md').is_file(), name
  heads = _headings()
  assert {'1', '3.5', '5.5.2', '7.3'} <= heads['spec']
  assert {str(n) for n in range(1, 13)} <= heads['decisions']


def test_section_references_resolve():
  heads = _headings()
  bad = []
  for path in _files():
    for n, line in enumerate(path.read_text(errors='replace').splitlines(), 1):
      for m in SECTION.finditer(line):
        if m.group(2) not in heads.get(m.group(1), ()):
          bad.append(f'{path.relative_to(ROOT)}:{n}: {m.group(0)}')
  assert not bad, 'references to sections that do not exist:\n' + '\n'.join(bad)


def test_repository_paths_exist():
  bad = []
  for path in _files():
    lines = path.read_text(errors='replace').splitlines()
    for n, line in enumerate(lines, 1):
      if EXTERNAL.search(line) or (n > 1 and EXTERNAL.search(lines[n - 2])):
        continue
      for m in PATH.finditer(line):
        target = m.group(1).rstrip('.')
        if '*' not in target and not (ROOT / target).exists():
          bad.append(f'{path.relative_to(ROOT)}:{n}: {target}')
  assert not bad, 'paths that are not in the repository:\n' + '\n'.join(bad)


def test_no_reference_to_documents_outside_the_repository():
  bad = []
  for path in _files():
    for n, line in enumerate(path.read_text(errors='replace').splitlines(), 1):
      if OUTSIDE.search(line):
        bad.append(f'{path.relative_to(ROOT)}:{n}: {line.strip()}')
  assert not bad, 'references to documents outside the repository:\n' + '\n'.join(bad)


@pytest.mark.parametrize('text, ok', [('docs/spec.md §3.5', True), ('docs/spec.md §99.1', False),
                                      ('docs/nothing.md §1', False)])
def test_the_section_check_can_fail(text, ok):
  heads = _headings()
  m = SECTION.search(text)
  assert (m.group(2) in heads.get(m.group(1), ())) == ok
