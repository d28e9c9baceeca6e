"""Side-by-side timing against the authors' TensorFlow Pix2Seq-D; prints one JSON object.

  python benchmarks/side_by_side.py --tf_checkout=PATH/pix2seq --tf_python=PATH/venv/bin/python \
      [--configs=A,B] [--rounds=2] [--train_steps=N] [--encoder_n=N] [--decoder_n=N] \
      [--sampling_n=N] [--tf_train_xla=0,1] [--tf_eval_xla=1] [--our_override=key=value ...]

Runs, one process at a time and alternating between the two sides, the authors' model through
tools/tf_reference/tf_bench.py (their code imported unmodified from --tf_checkout, run by
--tf_python: an environment with TensorFlow 2.21 and tf-keras 2.21, see
tools/tf_reference/README.md) and ours through benchmarks/train_step.py and
benchmarks/sampling.py, on the same architectures with the same parameter counts:

  A  the paper model at 256^2 images / 128^2 masks, batch 2   (94,492,480 parameters)
  B  a small one at 64^2 / 32^2, batch 8                      (13,706,624 parameters)

Measurements (medians of each process's timed calls): train_step, train_first_call (theirs: the
first call of the tf.function, i.e. trace + Grappler / XLA compile + one step; ours: the lowering
and compilation of the jitted step, without running it), encoder, decoder_step (theirs: one
iteration of their DDIM loop, timed alone; ours: the slope b of sampling.py's fit
total(N) = a + b N) and sampling_20 (the whole 20-step sampler). Their train step is run with and
without XLA (--tf_train_xla) and the faster counts; their encoder, decoder step and sampler with
XLA (--tf_eval_xla). Each measurement reports, per round and as the median over rounds, theirs,
ours and the ratio theirs / ours (the speed-up: above 1 we are faster). Each round alternates
the order of the processes, every process's wall time and the CPU load of other processes while
it ran (`other_load`, in CPUs' worth per CPU) are recorded: on a shared machine, compare ratios
from one run, not figures across runs.

The parameter counts of both sides are checked against the expected ones; any difference stops
the run with an error. Not run by the tests.
"""

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
TF_BENCH = REPO / 'tools' / 'tf_reference' / 'tf_bench.py'
TF_COMMIT = 'eabd4e98f65f7627a0e727d11a4b9cbba916283d'
CONFIG = 'configs/coco_panoptic.py'

EXPECTED_PARAMS = {'A': 94_492_480, 'B': 13_706_624}
BATCH = {'A': 2, 'B': 8}
# Our equivalents of tf_bench.py's build_config(cfg) (tools/tf_reference/README.md); their code
# recomputes nothing, so neither do we here (coco_panoptic.py ships model.remat='blocks').
OVERRIDES = {
    'A': ['model.image_size=(256,256)', 'model.mask_size=(128,128)', 'train.batch_size=2',
          'train.microbatches=1', 'model.remat=none'],
    'B': ['model.image_size=(64,64)', 'model.mask_size=(32,32)', 'train.batch_size=8',
          'train.microbatches=1', 'model.remat=none', 'model.encoder.num_layers=2',
          'model.encoder.dim=128', 'model.encoder.mlp_dim=512', 'model.encoder.num_heads=4', 'model.fpn_dim=64',
          'model.decoder.dim=32', 'model.decoder.transformer_dim=128',
          'model.decoder.transformer_layers=1', 'model.decoder.transformer_head_dim=32',
          'model.decoder.transformer_mlp_dim=512'],
}
# Timed calls per process (after one first call and one warm-up call).
DEFAULT_N = {
    'A': {'train_steps': 5, 'encoder_n': 10, 'decoder_n': 10, 'sampling_n': 3},
    'B': {'train_steps': 10, 'encoder_n': 20, 'decoder_n': 20, 'sampling_n': 5},
}
DEFAULT_TF_TRAIN_XLA = {'A': '0', 'B': '0,1'}   # their XLA train step at A: a long compile
SAMPLING_STEPS = 20
MEASUREMENTS = ('train_step', 'train_first_call', 'encoder', 'decoder_step', 'sampling_20')


def _fail(message):
  raise SystemExit(f'side_by_side.py: {message}')


def _xla_list(text, flag):
  values = [v.strip() for v in text.split(',') if v.strip()]
  if not values or any(v not in ('0', '1') for v in values):
    _fail(f'{flag}={text!r}: give 0 (no XLA), 1 (XLA) or 0,1 (both; the faster counts).')
  return [int(v) for v in dict.fromkeys(values)]


def _check_tf(args):
  checkout = pathlib.Path(args.tf_checkout).expanduser().resolve()
  if not (checkout / 'models' / 'panoptic_diffusion.py').is_file():
    _fail(f'--tf_checkout={args.tf_checkout}: no models/panoptic_diffusion.py there. Pass the '
          f'root of a checkout of google-research/pix2seq at commit {TF_COMMIT} '
          '(tools/tf_reference/README.md: Set-up).')
  python = pathlib.Path(args.tf_python).expanduser()
  if not (python.is_file() and os.access(python, os.X_OK)):
    _fail(f'--tf_python={args.tf_python}: not an executable file. Pass the python of the '
          'environment with TensorFlow 2.21 and tf-keras 2.21 (tools/tf_reference/README.md).')
  probe = ('import importlib.metadata as m, json\n'
           'v = {}\n'
           'for d in ("tensorflow", "tensorflow-cpu", "tf-keras", "ml-collections"):\n'
           '  try: v[d] = m.version(d)\n'
           '  except m.PackageNotFoundError: pass\n'
           'print(json.dumps(v))')
  out = subprocess.run([str(python), '-c', probe], capture_output=True, text=True, check=False)
  try:
    versions = json.loads(out.stdout)
  except json.JSONDecodeError:
    _fail(f'--tf_python={args.tf_python}: could not run it ({out.stderr.strip()[-300:]}).')
  if not ({'tensorflow', 'tensorflow-cpu'} & set(versions)) or 'tf-keras' not in versions:
    _fail(f'--tf_python={args.tf_python}: its environment lacks TensorFlow or tf-keras '
          f'(found {versions}); install them as tools/tf_reference/README.md says.')
  commit = subprocess.run(['git', '-C', str(checkout), 'rev-parse', 'HEAD'], capture_output=True,
                          text=True, check=False).stdout.strip() or None
  return checkout, str(python), versions, commit


def _machine():
  model, flags = None, set()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == 'model name' and model is None:
          model = value.strip()
        elif key.strip() == 'flags' and not flags:
          flags = set(value.split())
  except OSError:
    pass
  return {'cpu_model': model or platform.processor() or None, 'cores': os.cpu_count(),
          'cores_available': len(os.sched_getaffinity(0)),
          'cpu_flags': sorted(f for f in flags if f.startswith(('avx', 'amx', 'fma'))),
          'platform': platform.platform()}


def _our_tree():
  """Our commit and the tracked files with uncommitted changes (they are what ran)."""
  git = lambda *a: subprocess.run(['git', '-C', str(REPO), *a], capture_output=True, text=True,
                                  check=False).stdout
  return {'commit': git('rev-parse', 'HEAD').strip() or None,
          'modified_files': [line[3:]
                             for line in git('status', '--porcelain', '-uno').splitlines()]}


def _busy_cpu_s():
  with open('/proc/stat') as f:
    v = [int(x) for x in f.readline().split()[1:]]
  # user nice system idle iowait irq softirq steal ...
  return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / os.sysconf(
      'SC_CLK_TCK')


def _children_cpu_s():
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def _run(job, timeout, log_dir):
  """Runs one process; returns its JSON result, wall time and the other processes' CPU load."""
  label = job['label']
  print(f'# {label}: {" ".join(job["cmd"])}', file=sys.stderr, flush=True)
  t0, busy0, child0 = time.perf_counter(), _busy_cpu_s(), _children_cpu_s()
  try:
    proc = subprocess.run(job['cmd'], cwd=REPO, env=job['env'], capture_output=True, text=True,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    _fail(f'{label} ran past --timeout={timeout} s: {" ".join(job["cmd"])}')
  wall = time.perf_counter() - t0
  other = (_busy_cpu_s() - busy0) - (_children_cpu_s() - child0)
  other_load = max(other, 0.0) / max(wall * (os.cpu_count() or 1), 1e-9)
  if log_dir:
    (log_dir / f'{label}.stderr').write_text(proc.stderr)
    (log_dir / f'{label}.stdout').write_text(proc.stdout)
  tail = '\n'.join(proc.stderr.strip().splitlines()[-15:])
  if proc.returncode:
    _fail(f'{label} failed (exit status {proc.returncode}): {" ".join(job["cmd"])}\n{tail}')
  text = proc.stdout
  start = text.rfind('\n{') + 1 if job['side'] == 'theirs' else text.find('{')
  try:
    result, _ = json.JSONDecoder().raw_decode(text[start:]) if start >= 0 else (None, 0)
  except json.JSONDecodeError:
    result = None
  if not isinstance(result, dict):
    _fail(f'{label}: no JSON object on its stdout: {" ".join(job["cmd"])}\n'
          f'stdout: {text[-500:]}\nstderr: {tail}')
  print(f'#   {wall:.1f} s, other-process load {other_load:.2f}', file=sys.stderr, flush=True)
  return result, round(wall, 1), round(other_load, 3)


def _jobs(cfg, rnd, args, checkout, tf_python):
  """The processes of one round of one config, in the order they run."""
  n = {k: getattr(args, k) or DEFAULT_N[cfg][k] for k in DEFAULT_N[cfg]}
  tf_env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  tf_env.update(TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='2', P2S_TF_CHECKOUT=str(checkout))
  our_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  overrides = OVERRIDES[cfg] + list(args.our_override or [])

  def tf_job(what, xla, count):
    return {'side': 'theirs', 'what': what, 'xla': xla, 'env': tf_env,
            'label': f'{cfg}_round{rnd}_theirs_{what}_xla{xla}',
            'cmd': [tf_python, str(TF_BENCH), '--checkout', str(checkout), '--cfg', cfg,
                    '--what', what, '--xla', str(xla), '--n', str(count), '--warmup', '1']}

  def our_job(what, cmd):
    return {'side': 'ours', 'what': what, 'xla': None, 'env': our_env,
            'label': f'{cfg}_round{rnd}_ours_{what}',
            'cmd': [sys.executable, str(REPO / 'benchmarks' / cmd[0]), f'--config={CONFIG}',
                    *cmd[1:], *overrides]}

  train = [tf_job('train', x, n['train_steps'])
           for x in _xla_list(args.tf_train_xla or DEFAULT_TF_TRAIN_XLA[cfg], '--tf_train_xla')]
  train.insert(1, our_job('train_step', ['train_step.py', f'--steps={n["train_steps"]}']))
  evals = []
  for x in _xla_list(args.tf_eval_xla, '--tf_eval_xla'):
    evals += [tf_job('encoder', x, n['encoder_n']), tf_job('decoder', x, n['decoder_n']),
              tf_job('infer', x, n['sampling_n'])]
  evals.insert(len(evals) // 2, our_job(
      'sampling', ['sampling.py', f'--batch={BATCH[cfg]}', f'--steps={args.our_sampling_steps}',
                   f'--repeats={n["sampling_n"]}']))
  jobs = train + evals
  return jobs[::-1] if rnd % 2 else jobs     # odd rounds run in the reverse order


def _check_params(cfg, label, result):
  got = result.get('params')
  if got != EXPECTED_PARAMS[cfg]:
    _fail(f'PARAMETER COUNTS DIFFER at config {cfg}: {label} has {got!r} trainable parameters, '
          f'expected {EXPECTED_PARAMS[cfg]:,} (both sides must build the same architecture; '
          f'check the overrides in OVERRIDES[{cfg!r}], --our_override and the --tf_checkout '
          f'commit, {TF_COMMIT}).')
  return got


def _ratio(theirs, ours):
  if theirs is None or ours is None or not ours > 0:
    return None
  return round(theirs / ours, 3)


def _round_figures(results):
  """Per-measurement figures of one round from its processes' JSON results."""
  tf = {}
  for (side, what, xla), r in results.items():
    if side == 'theirs':
      tf.setdefault(what, {})[xla] = r
  train, sampling = results[('ours', 'train_step', None)], results[('ours', 'sampling', None)]
  rows = {r['steps']: r for r in sampling['per_steps']}
  rates = lambda key: {'ours_achieved_gflops': sampling['achieved_gflops'].get(key),
                       'ours_fraction_of_matmul_rate':
                           sampling['fraction_of_matmul_rate'].get(key)}
  ours = {
      'train_step': (train['step_s'], {'ours_achieved_gflops': train['achieved_gflops'],
                                       'ours_fraction_of_matmul_rate':
                                           train['fraction_of_matmul_rate']}),
      'train_first_call': (train['compile_s'], {}),
      'encoder': (sampling['encoder_s'], rates('encoder')),
      'decoder_step': (sampling['decoder_step_s'], rates('decoder_step')),
      'sampling_20': (rows[SAMPLING_STEPS]['total_s'], rates(f'sampling_{SAMPLING_STEPS}')),
  }
  theirs_of = {'train_step': ('train', 'median_s'), 'train_first_call': ('train', 'first_call_s'),
               'encoder': ('encoder', 'median_s'), 'decoder_step': ('decoder', 'median_s'),
               'sampling_20': ('infer', 'median_s')}
  figures = {}
  for name in MEASUREMENTS:
    what, key = theirs_of[name]
    by_xla = {f'xla{x}': r[key] for x, r in sorted(tf.get(what, {}).items())}
    theirs = min(by_xla.values()) if by_xla else None
    ours_s, extra = ours[name]
    figures[name] = {'theirs_s': theirs, 'ours_s': ours_s, 'ratio': _ratio(theirs, ours_s),
                     'theirs_by_xla': by_xla, **extra}
  figures['matmul_gflops'] = {'train_step': train['matmul_gflops'],
                              'sampling': sampling['matmul_gflops']}
  return figures


def _median(values):
  values = [v for v in values if v is not None]
  return round(statistics.median(values), 4) if values else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tf_checkout', required=True,
                      help=f'checkout of google-research/pix2seq at commit {TF_COMMIT}')
  parser.add_argument('--tf_python', required=True,
                      help='python of the TensorFlow 2.21 + tf-keras 2.21 environment')
  parser.add_argument('--configs', default='A,B', help='A, B or A,B')
  parser.add_argument('--rounds', type=int, default=2)
  for key, what in (('train_steps', 'timed train steps'), ('encoder_n', 'timed encoder calls'),
                    ('decoder_n', 'timed decoder steps (theirs)'),
                    ('sampling_n', 'timed sampler calls (ours: also the encoder calls)')):
    parser.add_argument(f'--{key}', type=int, default=0,
                        help=f'{what} per process; 0: per config, ' +
                        ', '.join(f'{c} {DEFAULT_N[c][key]}' for c in DEFAULT_N))
  parser.add_argument('--tf_train_xla', default='',
                      help="their train step without (0) / with (1) XLA; default: A '0', B '0,1'")
  parser.add_argument('--tf_eval_xla', default='1',
                      help='their encoder, decoder step and sampler without (0) / with (1) XLA')
  parser.add_argument('--our_sampling_steps', default='1,10,20',
                      help='sampling.py --steps: the N of the fit total(N) = a + b N')
  parser.add_argument('--our_override', action='append', metavar='KEY=VALUE',
                      help='extra config override for our two benchmarks (repeatable)')
  parser.add_argument('--timeout', type=float, default=3600, help='seconds per process')
  parser.add_argument('--log_dir', default='', help='write each process\'s stdout / stderr here')
  parser.add_argument('--dry_run', action='store_true', help='print the processes, run nothing')
  args = parser.parse_args()
  configs = [c.strip() for c in args.configs.split(',') if c.strip()]
  if not configs or any(c not in EXPECTED_PARAMS for c in configs):
    _fail(f'--configs={args.configs!r}: give A, B or A,B.')
  if args.rounds < 1:
    _fail(f'--rounds={args.rounds}: must be at least 1.')
  steps = [int(s) for s in args.our_sampling_steps.split(',') if s.strip()]
  if SAMPLING_STEPS not in steps or len(set(steps)) < 2:
    _fail(f'--our_sampling_steps={args.our_sampling_steps}: needs {SAMPLING_STEPS} and at least '
          'one other N (the fit of the decoder step).')
  checkout, tf_python, tf_versions, tf_commit = _check_tf(args)
  if tf_commit and tf_commit != TF_COMMIT:
    print(f'# WARNING: --tf_checkout is at commit {tf_commit}, not {TF_COMMIT}', file=sys.stderr)
  if args.dry_run:
    print(json.dumps({c: [[j['label'], ' '.join(j['cmd'])] for r in range(args.rounds)
                          for j in _jobs(c, r, args, checkout, tf_python)] for c in configs},
                     indent=2))
    return
  log_dir = pathlib.Path(args.log_dir) if args.log_dir else None
  if log_dir:
    log_dir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  out = {
      'command': ' '.join([pathlib.Path(sys.argv[0]).name] + sys.argv[1:]),
      'machine': _machine(),
      'versions': {'python': platform.python_version(),
                   **{d: importlib.metadata.version(d) for d in ('jax', 'jaxlib', 'flax')},
                   **{f'theirs_{d}': v for d, v in tf_versions.items()}},
      'ours': _our_tree(),
      'tf_checkout': str(checkout), 'tf_commit': tf_commit or f'{TF_COMMIT} (expected)',
      'configs': {},
  }
  for cfg in configs:
    rounds, processes, params, onednn = [], [], {}, set()
    for rnd in range(args.rounds):
      results = {}
      for job in _jobs(cfg, rnd, args, checkout, tf_python):
        result, wall, load = _run(job, args.timeout, log_dir)
        params[job['side']] = _check_params(cfg, job['label'], result)
        if job['side'] == 'theirs':
          onednn.add(result.get('onednn'))
        results[(job['side'], job['what'], job['xla'])] = result
        processes.append({'round': rnd, 'label': job['label'], 'wall_s': wall,
                          'other_load': load})
      rounds.append(_round_figures(results))
    summary = {}
    for name in MEASUREMENTS:
      per = [r[name] for r in rounds]
      summary[name] = {'theirs_median_s': _median([p['theirs_s'] for p in per]),
                       'ours_median_s': _median([p['ours_s'] for p in per]),
                       'ratio_median': _median([p['ratio'] for p in per]),
                       'rounds': per}
    out['configs'][cfg] = {
        'params': {'theirs': params['theirs'], 'ours': params['ours'],
                   'expected': EXPECTED_PARAMS[cfg]},
        'batch': BATCH[cfg], 'our_config': CONFIG,
        'our_overrides': OVERRIDES[cfg] + list(args.our_override or []),
        'theirs_onednn': sorted(onednn, key=str),
        'measurements': summary,
        'matmul_gflops': [r['matmul_gflops'] for r in rounds],
        'processes': processes,
    }
  loads = [p['other_load'] for c in out['configs'].values() for p in c['processes']]
  out['other_load_median'] = _median(loads)
  out['total_s'] = round(time.perf_counter() - start, 1)
  out['notes'] = ('ratio = theirs / ours per round (above 1: ours is faster); *_median over '
                  'rounds. theirs_s takes the faster of theirs_by_xla (for train_first_call too, '
                  'whichever XLA setting gave the faster step). train_first_call: theirs '
                  'the first call (trace + compile + one step), ours the compile alone. '
                  'decoder_step: ours the fitted slope of sampling.py. other_load: CPU load of '
                  'other processes while each process ran (0 = an idle machine).')
  print(json.dumps(out, indent=2))


if __name__ == '__main__':
  main()
