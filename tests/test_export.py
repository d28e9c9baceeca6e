"""`--mode=export` and pix2seq_d_jax/export.py: the exported predictor computes what `Predictor`
(and `VideoPredictor.start` / `.step`) compute, bit for bit on CPU, for any batch without
re-exporting; the README's plain-jax snippet runs where this package cannot be imported; damaged,
incomplete, too-new and wrong-platform exports are clear errors."""

import json
import re
import shutil
import site
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TINY_OVERRIDES, save_workdir
from pix2seq_d_jax import config_lib
from pix2seq_d_jax import export
from pix2seq_d_jax import predict
from pix2seq_d_jax import predict_video
from pix2seq_d_jax.models import pix2seq_d

CATEGORIES = [{'id': k, 'name': f'c{k}', 'isthing': int(k <= 4)} for k in range(1, 9)]
CANVAS = (24, 40)        # not the model's 32x32: the export resizes and pads as Predictor does


@pytest.fixture(scope='module')
def workdir(tiny_config, random_variables, tmp_path_factory):
  """The tiny shapes model (random weights, 2 sampling steps) saved as step 0 of a workdir."""
  config = tiny_config('eval.steps=2')
  model = pix2seq_d.build_model(config)
  return save_workdir(tmp_path_factory.mktemp('export') / 'run', config,
                      random_variables(model, config, seed=1), CATEGORIES)


@pytest.fixture(scope='module')
def export_dir(workdir):
  """The command line's export of `workdir` for every default platform, at CANVAS."""
  out = workdir.parent / 'exported'
  result = subprocess.run(
      [sys.executable, '-m', 'pix2seq_d_jax.main', f'--config={REPO}/configs/shapes.py',
       f'--workdir={workdir}', '--mode=export', f'--export_dir={out}',
       f'--export_canvas={CANVAS[0]},{CANVAS[1]}', '--export_seed=3'],
      capture_output=True, text=True, cwd=REPO, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return out


@pytest.fixture(scope='module')
def reference(workdir):
  """`reference(images)`: Predictor's maps with the export's seed, remembered per input (each
  batch size compiles the sampler once; the tests share batch sizes to compile fewer)."""
  predictor = predict.Predictor.from_workdir(workdir)
  done = {}

  def run(images):
    key = images.tobytes()
    if key not in done:
      done[key] = predictor(images, seed=3)
    return done[key]
  return run


def _images(b: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (b, *CANVAS, 3), dtype=np.uint8)


def test_the_export_writes_the_program_and_its_signature(export_dir):
  assert sorted(p.name for p in export_dir.iterdir()) == [export.EXPORTED_FILE,
                                                          export.SIGNATURE_FILE]
  sig = json.loads((export_dir / export.SIGNATURE_FILE).read_text())
  assert sig['kind'] == 'image' and sig['format'] == export.FORMAT
  assert sig['inputs'] == [{'name': 'images', 'dtype': 'uint8', 'shape': ['b', *CANVAS, 3]}]
  assert sig['outputs'] == [{'name': n, 'dtype': 'int32', 'shape': ['b', *CANVAS]}
                            for n in ('class', 'id')]
  assert sig['platforms'] == ['cpu', 'cuda', 'tpu'] and sig['platforms_not_lowered'] == {}
  assert (sig['steps'], sig['td'], sig['decode'], sig['seed']) == (2, 1.0, 'argmax', 3)
  assert (sig['image_size'], sig['mask_size'], sig['canvas']) == ([32, 32], [16, 16],
                                                                   list(CANVAS))
  assert sig['attention'] == 'xla' and sig['checkpoint_step'] == 0 and sig['use_ema']
  assert sig['categories'] == CATEGORIES
  assert isinstance(sig['calling_convention_version'], int)
  assert sig['jax_version'] == __import__('jax').__version__


def test_the_export_equals_predictor_for_two_batch_sizes(export_dir, reference):
  loaded = export.load(export_dir)
  assert loaded.exported.in_avals[0].shape[0] != 1       # one program, a symbolic batch
  for b, seed in ((1, 0), (2, 5)):
    images = _images(b, seed)
    got = loaded(images)
    want = reference(images)
    assert got['class'].dtype == np.int32 and got['class'].shape == (b, *CANVAS)
    assert np.array_equal(got['class'], want['class'])
    assert np.array_equal(got['id'], want['id'])
    assert len(np.unique(want['class'])) > 1             # not trivially equal (all void)
  with pytest.raises(ValueError, match=r'images must be uint8 \[.b., 24, 40, 3\].*'
                                       '--export_canvas'):
    loaded(np.zeros((1, 32, 32, 3), np.uint8))


def _readme_snippet() -> str:
  """The README's plain-jax snippet: the python block of the Serving section that deserialises."""
  text = (REPO / 'README.md').read_text()
  section = text.split('\n## Serving', 1)[1].split('\n## ', 1)[0]
  blocks = re.findall(r'```python\n(.*?)```', section, re.S)
  snippet = [b for b in blocks if 'jax.export.deserialize' in b]
  assert len(snippet) == 1, 'README.md "## Serving" needs one python block that deserialises'
  return snippet[0]


def test_the_readme_snippet_runs_with_plain_jax(export_dir, reference, tmp_path):
  """In a process started without site processing (so the editable install's import hook is
  not installed) and with only the interpreter's site-packages on its path, the package cannot
  be imported; the snippet still runs, and its maps equal Predictor's."""
  shutil.copytree(export_dir, tmp_path / 'export')
  images = _images(2, 5)
  np.save(tmp_path / 'images.npy', images)
  prelude = (f'import sys\nsys.path = [p for p in sys.path if p] + {site.getsitepackages()!r}\n'
             'try:\n  import pix2seq_d_jax\nexcept ImportError:\n  pass\nelse:\n'
             '  raise SystemExit("pix2seq_d_jax is importable")\n')
  after = ('\nzeros = {k: np.asarray(v) for k, v in out.items()}\n'
           'mine = {k: np.asarray(v) for k, v in exported.call(np.load("images.npy")).items()}\n'
           'np.savez("out.npz", zc=zeros["class"], zi=zeros["id"], c=mine["class"], '
           'i=mine["id"], names=np.array(names))\n')
  result = subprocess.run([sys.executable, '-S', '-c', prelude + _readme_snippet() + after],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-3000:]
  out = np.load(tmp_path / 'out.npz')
  zeros = reference(np.zeros((2, *CANVAS, 3), np.uint8))
  mine = reference(images)
  assert np.array_equal(out['zc'], zeros['class']) and np.array_equal(out['zi'], zeros['id'])
  assert np.array_equal(out['c'], mine['class']) and np.array_equal(out['i'], mine['id'])
  assert list(out['names']) == ['void'] + [c['name'] for c in CATEGORIES]


def test_a_missing_or_damaged_file_is_a_clear_error(export_dir, tmp_path):
  broken = tmp_path / 'broken'
  shutil.copytree(export_dir, broken)
  program = broken / export.EXPORTED_FILE
  data = program.read_bytes()
  program.write_bytes(data[:len(data) // 3])
  with pytest.raises(ValueError, match=r'predictor\.jax_exported cannot be deserialised.*'
                                       r'damaged or truncated.*--mode=export'):
    export.load(broken)
  program.write_bytes(b'\x00' * 64)
  with pytest.raises(ValueError, match='cannot be deserialised'):
    export.load(broken)
  program.unlink()
  with pytest.raises(FileNotFoundError, match=r'predictor\.jax_exported is missing.*'
                                              'copy the whole folder'):
    export.load(broken)
  program.write_bytes(data)
  (broken / export.SIGNATURE_FILE).write_text('{"format": ')
  with pytest.raises(ValueError, match=r'signature\.json cannot be read.*--mode=export'):
    export.load(broken)


@pytest.mark.parametrize('field, value, message', [
    ('jax_version', '99.0.0', r'exported with jax 99\.0\.0, newer than the installed'),
    ('calling_convention_version', 999, r'calling_convention_version=999 is outside'),
    ('serialization_version', 10 ** 6, r'serialization_version=1000000 is newer'),
])
def test_a_version_the_installed_jax_cannot_read_is_a_clear_error(export_dir, tmp_path, field,
                                                                   value, message):
  shutil.copytree(export_dir, tmp_path / 'e')
  path = tmp_path / 'e' / export.SIGNATURE_FILE
  sig = json.loads(path.read_text())
  sig[field] = value
  path.write_text(json.dumps(sig))
  with pytest.raises(ValueError, match=message + r'.*Install jax==.*or re-export'):
    export.load(tmp_path / 'e')


def test_a_platform_not_in_the_export_is_a_clear_error(export_dir):
  with pytest.raises(ValueError, match=r'exported for cpu,cuda,tpu, not for rocm.*'
                                       '--export_platforms=cpu,cuda,tpu,rocm'):
    export.load(export_dir, platform='rocm')


def test_bad_export_flags_name_the_flag():
  with pytest.raises(ValueError, match=r'--export_platforms=.cpu,gpu.*unknown \[.gpu.\]'):
    export.parse_platforms('cpu,gpu')
  with pytest.raises(ValueError, match=r'--export_canvas=.32.: pass the input height and width'):
    export.parse_canvas('32', (32, 32))
  assert export.parse_canvas(None, (64, 48)) == (64, 48)


def test_the_video_step_export_equals_video_predictor(random_variables, tmp_path):
  """Three frames of two streams: the exported step, fed its own state, gives VideoPredictor's
  maps and history (frame 0 with eval.steps, later frames with eval.steps_later)."""
  config = config_lib.load_config(str(REPO / 'configs' / 'moving_shapes.py'),
                                  list(TINY_OVERRIDES) + ['eval.steps=2', 'eval.steps_later=1'])
  model = pix2seq_d.build_model(config)
  variables = random_variables(model, config, seed=3)
  exported, sig = export.export_predictor(config, variables, CATEGORIES, seed=1,
                                          platforms='cpu')
  export.write(tmp_path, exported, sig)
  loaded = export.load(tmp_path)
  assert sig['kind'] == 'video_step' and (sig['steps'], sig['steps_later']) == (2, 1)
  assert [s['name'] for s in sig['inputs']] == ['frame', 'history', 'frame_index']
  assert sig['inputs'][1]['shape'] == ['b', 2, 16, 16, 2]
  reference = predict_video.VideoPredictor(config, variables, CATEGORIES)
  reference.start(batch=2, seed=1)
  frames = np.random.default_rng(7).integers(0, 256, (3, 2, 32, 32, 3), dtype=np.uint8)
  history = np.zeros((2, 2, 16, 16, 2), np.int32)
  index = np.int32(0)
  for t, frame in enumerate(frames):
    got = loaded(frame, history, index)
    want = reference.step(frame)
    assert np.array_equal(got['class'], want['class']), t
    assert np.array_equal(got['id'], want['id']), t
    assert np.array_equal(got['history'], np.asarray(reference._stream['history'])), t
    assert int(got['frame_index']) == t + 1
    history, index = got['history'], got['frame_index']
  assert np.any(history != 0)
