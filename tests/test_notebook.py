"""notebooks/quickstart.ipynb runs top to bottom (load a workdir, predict, show, score, export
and reload with plain jax), so it cannot rot.

The notebook trains the smoke variant when PIX2SEQ_D_WORKDIR is unset; that training costs 1.5 to
3 minutes of compilation and data set-up on a 2-core CPU, so the test hands the notebook a
workdir instead (the runlocal model with random weights, saved as a checkpoint), the path a user
with a trained run takes, and checks that the training cell calls the training API as it
exists. The kernel also compiles with conftest.FAST_COMPILE's options (XLA_FLAGS): the same
programs, compiled faster.

The kernel is this interpreter (the one running the tests, e.g. .venv/bin/python), declared in a
kernel spec of a temporary JUPYTER_PATH: a `python3` kernel installed elsewhere on the machine is
never picked. nbclient, nbformat and ipykernel are pinned in requirements.txt; when one is
missing this module fails to import, an error rather than a skip.
"""

import inspect
import json
import sys

import nbclient
import nbformat
import pytest

from conftest import FAST_COMPILE, REPO, save_workdir
from pix2seq_d_jax import config_lib
from pix2seq_d_jax import train
from pix2seq_d_jax.data import synthetic
from pix2seq_d_jax.models import pix2seq_d

NOTEBOOK = REPO / 'notebooks' / 'quickstart.ipynb'
KERNEL = 'pix2seq-d-jax-tests'


@pytest.fixture(scope='module')
def workdir(random_variables, tmp_path_factory):
  """configs/shapes.py:runlocal with random weights, saved as step 0 of a workdir."""
  config = config_lib.load_config(str(REPO / 'configs' / 'shapes.py') + ':runlocal')
  model = pix2seq_d.build_model(config)
  return save_workdir(tmp_path_factory.mktemp('notebook') / 'run', config,
                      random_variables(model, config, seed=2),
                      [dict(c) for c in synthetic.SHAPES_CATEGORIES])


def test_the_training_cell_calls_the_training_api():
  """The one cell the run below skips: it loads the smoke config and trains without evaluating,
  with the names and arguments the package has."""
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  cell = next(c.source for c in notebook.cells
              if c.cell_type == 'code' and 'train.train_and_evaluate' in c.source)
  assert "config_lib.load_config(f'{REPO}/configs/shapes.py:runlocal')" in cell
  assert 'train.train_and_evaluate(config, workdir, evaluate=False)' in cell
  inspect.signature(train.train_and_evaluate).bind('config', 'workdir', evaluate=False)
  assert config_lib.load_config(str(REPO / 'configs' / 'shapes.py') + ':runlocal')


def test_the_quickstart_notebook_runs_top_to_bottom(workdir, tmp_path, monkeypatch):
  spec = tmp_path / 'jupyter' / 'kernels' / KERNEL
  spec.mkdir(parents=True)
  (spec / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      'display_name': 'pix2seq_d_jax tests', 'language': 'python'}))
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  monkeypatch.setenv('PIX2SEQ_D_WORKDIR', str(workdir))
  monkeypatch.setenv('XLA_FLAGS', ' '.join(f'--{k}={str(v).lower()}'
                                           for k, v in FAST_COMPILE.items()))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(notebook, kernel_name=KERNEL, timeout=300,
                                   resources={'metadata': {'path': str(NOTEBOOK.parent)}})
  client.execute()          # raises CellExecutionError naming the cell and the traceback
  code = [c for c in notebook.cells if c.cell_type == 'code']
  assert all(c.execution_count for c in code)
  outputs = [o for c in code for o in c.outputs]
  assert any('image/png' in o.get('data', {}) for o in outputs), 'no picture was shown'
  text = ''.join(o.get('text', '') for o in outputs)
  assert f'Using the trained workdir {workdir}' in text
  assert 'PQ ' in text and 'the same maps as Predictor' in text
