"""The paper's ablations at small scale, on the embedded synthetic data; writes JSON and a PNG.

  python benchmarks/ablations.py --out=runs/ablations [--steps=2000] [--seeds=0,1] [--jobs=2] \
      [--studies=b,p,loss,steps] [--config=configs/shapes.py:size=32,mask_stride=2] \
      [--base=KEY=VALUE,...] [--eval_images=128] [--dry_run]

Four studies, each against the paper's figures (docs/spec.md §10.1; the paper's own runs are
COCO at a cheaper setting than its final 50.3 PQ):

  b      input scale `diffusion.b` in {0.03, 0.1, 0.3, 1.0}     paper PQ 40.8 43.9 38.7 21.3
  p      size weight `diffusion.mask_weight_p` in {0, .2, .4, .6} paper PQ 40.4 43.9 43.7 41.3
  loss   softmax cross-entropy against l2 on the analog bits   paper PQ 43.9 / 41.9
  steps  sampling steps 1 / 5 / 10 / 20 of the base run         paper 5 / 10 / 20: 47.5 49.4 50.3

The base recipe is --config with the --base overrides: by default the paper's recipe (size
weight p = 0.2, class weight 1, learning rate 2e-3: PAPER_BASE) on the shapes model and data at
32 x 32 with the paper's masks of half the image side (`:size=32,mask_stride=2`: a step costs a
quarter of the 64 x 64 model's with 32 x 32 masks, so a run affords 2,000 steps; at 500 steps of
that model every arm scored PQ < 11, within the noise of one another). As in the paper, every
ablation varies one setting of one base. Every training run is the base recipe for
--steps steps (one evaluation, at the end, of the first --eval_images held-out images) with one
arm's overrides and one of --seeds (`config.seed`: weights, noise, data order); runs whose
effective overrides coincide (b = 0.1, p = 0.2 and the softmax arm are the base recipe) run once
and count for each study they belong to. The loss study compares the softmax head against l2
with per-bit decoding, which is the only decoding its plain head has. The steps study evaluates
each seed's base run again with `eval.steps` in {1, 5, 10} (`--mode=eval`; the 20-step figure
is the training run's own evaluation; a base scored with another step count gets all four as
evaluations). Each run is one `python -m pix2seq_d_jax.main` process;
--jobs of them run at a time, each pinned to its own CPU (`taskset`, when there are at least
--jobs CPUs) with `cpu_devices=1`, so a fixed budget of steps costs the same wall time in every
arm. The runs share JAX's persistent compilation cache (OUT/jax_cache): a second seed loads the
programs the first one compiled. With the defaults (4 studies, 2 seeds, 2,000 steps: 16
training runs and 6 evaluations, 2 at a time) it is meant to fit 90 minutes on a 2-core machine
(about 10.4 minutes a pair of training runs there); the JSON records the wall time of every run
and of the call.

Writes OUT/ablations.json (the base; every run: study, arm, seed, overrides, PQ, PQ_th, PQ_st,
wall time; per study and arm: mean, min and max over seeds next to the paper's figure; whether
the paper's best arm is ours too (no best arm when several tie), and the Spearman rank
correlation of our means with the paper's figures, undefined when either side is all ties) and
OUT/ablations.png (one panel per study). A failed run stops the call (after the runs in flight)
with its log's tail; runs already finished are kept (OUT/runs/NAME/ablation_result*.json) and
not repeated by a later call with the same --out, base, config and steps (others need another
--out),
so the seeds can also be run by separate calls.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import queue
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pix2seq_d_jax import config_lib  # pylint: disable=g-import-not-at-top

PAPER = {
    'b': {0.03: 40.8, 0.1: 43.9, 0.3: 38.7, 1.0: 21.3},
    'p': {0.0: 40.4, 0.2: 43.9, 0.4: 43.7, 0.6: 41.3},
    'loss': {'softmax_xent': 43.9, 'l2': 41.9},
    'steps': {1: None, 5: 47.5, 10: 49.4, 20: 50.3},
}
# The base recipe the arms vary by default: the paper's (size weight 0.2, the two softmax groups
# weighted equally) on the config's model and data, so b = 0.1, p = 0.2 and the softmax arm are
# one run; runs are scored with the paper's 20 sampling steps.
# The paper's loss settings and sampling steps, at the learning rate the shapes recipe had when
# the studies in README were recorded (configs/shapes.py now uses 3e-3 with its 16 x 16 masks).
PAPER_BASE = ('train.learning_rate=2e-3', 'diffusion.mask_weight_p=0.2',
              'diffusion.class_loss_weight=1.0', 'eval.steps=20')
STUDY_KEYS = {'b': 'diffusion.b', 'p': 'diffusion.mask_weight_p'}
LOSS_ARMS = {
    'softmax_xent': ('diffusion.class_loss_weight=1.0',),
    'l2': ('diffusion.loss=l2', 'diffusion.class_loss_weight=1.0', 'eval.decode=bits'),
}
METRICS = ('PQ', 'PQ_th', 'PQ_st')


@dataclasses.dataclass(frozen=True)
class Run:
  """One process: a training run (eval_steps None) or an evaluation of a finished one."""
  name: str
  overrides: tuple[str, ...]
  seed: int
  eval_steps: int | None = None      # evaluate the run `name` with eval.steps = this
  base: tuple[str, ...] = ()         # the overrides every run of the call has (--base)
  memberships: tuple[tuple[str, object], ...] = ()   # (study, arm) pairs it stands for


def _value(config, key: str):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def arms(studies: list[str]) -> list[tuple[str, object, tuple[str, ...]]]:
  """(study, arm, overrides) of the training studies, in the order of PAPER."""
  out = []
  for study in studies:
    if study in STUDY_KEYS:
      out += [(study, v, (f'{STUDY_KEYS[study]}={v}',)) for v in PAPER[study]]
    elif study == 'loss':
      out += [(study, arm, LOSS_ARMS[arm]) for arm in PAPER['loss']]
  return out


def plan(config_path: str, studies: list[str], seeds: list[int],
         base_overrides: tuple[str, ...] = ()) -> list[Run]:
  """The processes of a call: training runs (deduplicated), then the steps study's evaluations.

  The base recipe is the config with `base_overrides`. An arm's override equal to the base
  recipe's own value is dropped, so an arm that is the base recipe (and the steps study's base)
  shares one training run per seed."""
  unknown = [s for s in studies if s not in PAPER]
  if unknown or not studies:
    raise ValueError(f'--studies={",".join(studies)}: choose among {",".join(PAPER)}.')
  base = config_lib.load_config(config_path, list(base_overrides))
  base_overrides = tuple(base_overrides)

  def effective(overrides):
    kept = []
    for o in overrides:
      key, _, text = o.partition('=')
      if str(_value(base, key)) != str(type(_value(base, key))(text)):
        kept.append(o)
    return tuple(sorted(kept))

  members = {}
  for study, arm, overrides in arms(studies):
    members.setdefault(effective(overrides), []).append((study, arm))
  final = _value(base, 'eval.steps')
  if 'steps' in studies:      # the base run; its own evaluation is an arm if it has its steps
    members.setdefault((), [])
    if final in PAPER['steps']:
      members[()].append(('steps', final))
  runs = []
  for seed in seeds:
    for overrides, who in members.items():
      name = '_'.join(o.partition('=')[0].split('.')[-1] + o.partition('=')[2]
                      for o in overrides) or 'base'
      name += f'_seed{seed}'
      runs.append(Run(name, overrides, seed, memberships=tuple(who), base=base_overrides))
  if 'steps' in studies:
    runs += [Run(f'base_seed{seed}', (), seed, eval_steps=steps, memberships=(('steps', steps),),
                 base=base_overrides)
             for seed in seeds for steps in PAPER['steps'] if steps != final]
  return runs


def command(run: Run, config_path: str, steps: int, out: pathlib.Path, pin_cpu: int | None):
  """The command line of a run (python -m pix2seq_d_jax.main, pinned to one CPU if given)."""
  workdir = out / 'runs' / run.name
  cmd = [sys.executable, '-m', 'pix2seq_d_jax.main', f'--config={config_path}',
         f'--workdir={workdir}', f'--config.seed={run.seed}',
         f'--config.train.num_steps={steps}', f'--config.train.checkpoint_every_steps={steps}',
         f'--config.eval.every_steps={steps}', '--config.cpu_devices=1',
         *[f'--config.{o}' for o in run.base + run.overrides]]
  if run.eval_steps is not None:
    cmd += ['--mode=eval', f'--config.eval.steps={run.eval_steps}']
  if pin_cpu is not None and shutil.which('taskset'):
    cmd = ['taskset', '-c', str(pin_cpu)] + cmd
  return cmd, workdir


def result_file(run: Run, out: pathlib.Path) -> pathlib.Path:
  suffix = '' if run.eval_steps is None else f'_evalsteps{run.eval_steps}'
  return out / 'runs' / run.name / f'ablation_result{suffix}.json'


def run_env(out: pathlib.Path) -> dict:
  """The runs' environment: JAX's persistent compilation cache shared by all of them.

  Runs that differ only in the seed compile the same programs; with the cache in OUT/jax_cache
  (or the caller's JAX_COMPILATION_CACHE_DIR) the second seed loads them instead of compiling.
  """
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', str(out / 'jax_cache'))
  return env


def run_one(run: Run, config_path: str, steps: int, out: pathlib.Path, pin_cpu) -> dict:
  """Runs one process (unless its result file exists) and returns its result."""
  path = result_file(run, out)
  if path.exists():
    result = json.loads(path.read_text())
    mine = {'base': list(run.base), 'config': config_path, 'steps': steps}
    theirs = {k: result.get(k) for k in mine}
    if theirs != mine:
      raise RuntimeError(f'{path} is a run of {theirs}, not of this call\'s {mine}: give this '
                         'call its own --out.')
    return result
  cmd, workdir = command(run, config_path, steps, out, pin_cpu)
  workdir.mkdir(parents=True, exist_ok=True)
  log = workdir / ('train.log' if run.eval_steps is None else f'eval{run.eval_steps}.log')
  start = time.perf_counter()
  with open(log, 'w') as f:
    proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=False,
                          env=run_env(out))
  wall = time.perf_counter() - start
  if proc.returncode:
    tail = '\n'.join(log.read_text().splitlines()[-20:])
    raise RuntimeError(f'{run.name} (eval.steps={run.eval_steps}) failed with exit status '
                       f'{proc.returncode}; log {log}:\n{tail}')
  metrics = json.loads((workdir / 'eval' / f'step_{steps}' / 'metrics.json').read_text())
  result = {'name': run.name, 'seed': run.seed, 'base': list(run.base), 'config': config_path,
            'steps': steps,
            'overrides': list(run.overrides),
            'eval_steps': metrics['sampling_steps'],
            'wall_s': round(wall, 1), **{k: metrics[k] for k in METRICS}}
  path.write_text(json.dumps(result, indent=2))
  return result


def _ranks(values: list[float]) -> list[float]:
  """Ranks from 0, ties sharing their mean rank."""
  order = sorted(values)
  return [order.index(v) + (order.count(v) - 1) / 2 for v in values]


def _spearman(xs: list[float], ys: list[float]) -> float | None:
  """Spearman's rank correlation (Pearson's of the ranks); None below 3 arms or when either
  side is all ties."""
  if len(xs) < 3:
    return None
  rx, ry = _ranks(xs), _ranks(ys)
  mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
  sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
  sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
  return round(sxy / (sxx * syy) ** 0.5, 3) if sxx and syy else None


def _best(rows: list[dict], value) -> object:
  """The arm with the highest value; None when several share it."""
  top = max(value(r) for r in rows)
  best = [r['arm'] for r in rows if value(r) == top]
  return best[0] if len(best) == 1 else None


def summarize(runs: list[Run], results: dict) -> dict:
  """Per study and arm: PQ over seeds next to the paper; the orderings that hold."""
  table = {}
  for run in runs:
    for study, arm in run.memberships:
      table.setdefault(study, {}).setdefault(arm, []).append(results[run])
  out = {}
  for study, by_arm in table.items():
    rows = []
    for arm in PAPER[study]:
      if arm not in by_arm:
        continue
      got = by_arm[arm]
      row = {'arm': arm, 'paper_PQ': PAPER[study][arm], 'seeds': [r['seed'] for r in got]}
      for k in METRICS:
        values = [r[k] for r in got]
        row[k] = {'mean': round(sum(values) / len(values), 2), 'min': round(min(values), 2),
                  'max': round(max(values), 2)}
      rows.append(row)
    with_paper = [r for r in rows if r['paper_PQ'] is not None]
    ours_best = _best(rows, lambda r: r['PQ']['mean'])
    paper_best = _best(with_paper, lambda r: r['paper_PQ']) if with_paper else None
    out[study] = {
        'rows': rows, 'ours_best': ours_best, 'paper_best': paper_best,
        'best_agrees': ours_best is not None and ours_best == paper_best,
        'spearman_with_paper': _spearman([r['PQ']['mean'] for r in with_paper],
                                         [r['paper_PQ'] for r in with_paper]),
    }
  return out


def plot(summary: dict, path: pathlib.Path) -> None:
  """One panel per study: our PQ (mean, min-max over seeds) and the paper's."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  studies = list(summary)
  fig, axes = plt.subplots(1, len(studies), figsize=(4 * len(studies), 3.4), squeeze=False)
  for ax, study in zip(axes[0], studies):
    rows = summary[study]['rows']
    x = list(range(len(rows)))
    mean = [r['PQ']['mean'] for r in rows]
    err = [[m - r['PQ']['min'] for m, r in zip(mean, rows)],
           [r['PQ']['max'] - m for m, r in zip(mean, rows)]]
    ax.errorbar(x, mean, yerr=err, fmt='o-', capsize=3, label='ours (synthetic shapes)')
    paper = [(i, r['paper_PQ']) for i, r in enumerate(rows) if r['paper_PQ'] is not None]
    if paper:
      ax.plot(*zip(*paper), 's--', label='paper (COCO)')
    ax.set_xticks(x, [str(r['arm']) for r in rows])
    ax.set_title(study)
    ax.set_ylabel('PQ')
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def execute(runs: list[Run], run_fn, jobs: int) -> dict:
  """Runs the training runs, `jobs` at a time, then the evaluations; returns {Run: result}.

  `run_fn(run, cpu)` runs one; cpu is the CPU to pin it to (None: not pinned, when the process
  may use fewer CPUs than jobs, or runs one at a time). The evaluations of one training run run
  one after the other (they share its eval folder). A failure is raised once the runs in flight
  have finished."""
  cpus = sorted(os.sched_getaffinity(0))
  free = queue.Queue()
  for cpu in (cpus[:jobs] if len(cpus) >= jobs > 1 else [None] * jobs):
    free.put(cpu)

  def pinned(run):
    cpu = free.get()
    try:
      return run_fn(run, cpu)
    finally:
      free.put(cpu)

  results = {}
  with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    training = [r for r in runs if r.eval_steps is None]
    results.update(zip(training, pool.map(pinned, training)))
  # The evaluations of one workdir write the same eval/step_N/ folder: one after the other.
  by_workdir = {}
  for run in runs:
    if run.eval_steps is not None:
      by_workdir.setdefault(run.name, []).append(run)
  with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    for pairs in pool.map(lambda group: [(r, pinned(r)) for r in group], by_workdir.values()):
      results.update(pairs)
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
  parser.add_argument('--out', required=True, help='folder for the runs, the JSON and the PNG')
  parser.add_argument('--config', default='configs/shapes.py:size=32,mask_stride=2')
  parser.add_argument('--steps', type=int, default=2000, help='training steps of every run')
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--jobs', type=int, default=max(len(os.sched_getaffinity(0)), 1),
                      help='runs at a time, each on its own CPU')
  parser.add_argument('--studies', default='b,p,loss,steps')
  parser.add_argument('--base', default=','.join(PAPER_BASE),
                      help='comma-separated overrides of every run: the recipe the arms vary')
  parser.add_argument('--eval_images', type=int, default=128,
                      help='held-out images each run is scored on (dataset.num_eval; 0: the '
                           "config's own)")
  parser.add_argument('--dry_run', action='store_true', help='print the processes, run nothing')
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  if len(seeds) < 1 or args.steps < 1 or args.jobs < 1:
    raise SystemExit('ablations.py: --seeds needs at least one seed, --steps and --jobs >= 1.')
  if args.eval_images < 0:
    raise SystemExit('ablations.py: --eval_images must be >= 0 (0: the config\'s own).')
  out = pathlib.Path(args.out).resolve()
  base = tuple(o.strip() for o in args.base.split(',') if o.strip())
  if args.eval_images:
    base += (f'dataset.num_eval={args.eval_images}',)
  runs = plan(args.config, [s.strip() for s in args.studies.split(',') if s.strip()], seeds,
              base)
  if args.dry_run:
    for run in runs:
      print(' '.join(command(run, args.config, args.steps, out, None)[0]))
    return
  start = time.perf_counter()
  results = execute(runs, lambda run, pin: run_one(run, args.config, args.steps, out, pin),
                    args.jobs)
  summary = summarize(runs, results)
  out.mkdir(parents=True, exist_ok=True)
  plot(summary, out / 'ablations.png')
  report = {'config': args.config, 'base': list(base), 'steps': args.steps, 'seeds': seeds,
            'jobs': args.jobs,
            'total_s': round(time.perf_counter() - start, 1),
            'runs': [results[r] for r in runs], 'studies': summary}
  (out / 'ablations.json').write_text(json.dumps(report, indent=2))
  print(json.dumps(report, indent=2))


if __name__ == '__main__':
  main()
