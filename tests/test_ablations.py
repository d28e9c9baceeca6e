"""benchmarks/ablations.py: the run plan, the scheduler, one run's result and the summary."""

import importlib.util
import json
import sys
import threading
import time

import pytest

from conftest import REPO

_spec = importlib.util.spec_from_file_location('ablations', REPO / 'benchmarks' / 'ablations.py')
ablations = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablations)

CONFIG = 'configs/shapes.py'


def test_plan_shares_the_base_run_and_adds_the_steps_evaluations():
  runs = ablations.plan(CONFIG, ['b', 'p', 'loss', 'steps'], [0, 1], ('eval.steps=20',))
  train = [r for r in runs if r.eval_steps is None]
  evals = [r for r in runs if r.eval_steps is not None]
  # Per seed: base (= b 0.1 and the 20-step arm), 3 other b, 4 p (the recipe has 0.7), 2 loss.
  assert len(train) == 2 * 10 and len({(r.name, r.seed) for r in train}) == 20
  base = next(r for r in train if r.name == 'base_seed0')
  assert base.overrides == () and set(base.memberships) == {('b', 0.1), ('steps', 20)}
  assert sorted(r.eval_steps for r in evals if r.seed == 1) == [1, 5, 10]
  assert all(r.name == f'base_seed{r.seed}' for r in evals)
  l2 = next(r for r in train if ('loss', 'l2') in r.memberships and r.seed == 0)
  assert set(l2.overrides) == {'diffusion.loss=l2', 'diffusion.class_loss_weight=1.0',
                               'eval.decode=bits'}
  with pytest.raises(ValueError, match='--studies=b,depth'):
    ablations.plan(CONFIG, ['b', 'depth'], [0])


def test_the_paper_base_makes_b_p_and_softmax_one_run(tmp_path):
  # A recipe scored with a step count outside the study's: every step count is an evaluation.
  evals = [r.eval_steps for r in ablations.plan(CONFIG, ['steps'], [0], ('eval.steps=2',))]
  assert evals[0] is None and sorted(evals[1:]) == [1, 5, 10, 20]
  base = ablations.PAPER_BASE + ('dataset.num_eval=128',)
  runs = ablations.plan(CONFIG, ['b', 'p', 'loss', 'steps'], [0], base)
  train = [r for r in runs if r.eval_steps is None]
  # base (= b 0.1 = p 0.2 = softmax = 20 steps), b 0.03 / 0.3 / 1.0, p 0 / 0.4 / 0.6, l2.
  assert len(train) == 8 and all(r.base == base for r in runs)
  first = next(r for r in train if r.name == 'base_seed0')
  assert set(first.memberships) == {('b', 0.1), ('p', 0.2), ('loss', 'softmax_xent'),
                                    ('steps', 20)}
  l2 = next(r for r in train if ('loss', 'l2') in r.memberships)
  assert set(l2.overrides) == {'diffusion.loss=l2', 'eval.decode=bits'}
  cmd, _ = ablations.command(l2, CONFIG, 40, tmp_path, pin_cpu=None)
  assert cmd[-6:] == ['--config.diffusion.mask_weight_p=0.2',
                      '--config.diffusion.class_loss_weight=1.0', '--config.eval.steps=20',
                      '--config.dataset.num_eval=128', '--config.diffusion.loss=l2',
                      '--config.eval.decode=bits']
  # A result of another base, config or step count in the same folder is not taken for this one.
  path = ablations.result_file(first, tmp_path)
  path.parent.mkdir(parents=True)
  same = {'base': list(base), 'config': CONFIG, 'steps': 40, 'PQ': 1.0}
  for other in ({'base': []}, {'steps': 500}, {'config': CONFIG + ':size=32'}):
    path.write_text(json.dumps({**same, **other}))
    with pytest.raises(RuntimeError, match='give this call its own --out'):
      ablations.run_one(first, CONFIG, 40, tmp_path, None)
  path.write_text(json.dumps(same))
  assert ablations.run_one(first, CONFIG, 40, tmp_path, None) == same


def test_command_pins_one_cpu_and_evaluates_the_base_workdir(tmp_path):
  runs = ablations.plan(CONFIG, ['steps'], [3])
  ev = next(r for r in runs if r.eval_steps == 5)
  cmd, workdir = ablations.command(ev, CONFIG, 40, tmp_path, pin_cpu=1)
  assert cmd[:3] == ['taskset', '-c', '1']
  assert workdir == tmp_path / 'runs' / 'base_seed3'
  assert {'--mode=eval', '--config.eval.steps=5', '--config.seed=3',
          '--config.train.num_steps=40', '--config.cpu_devices=1'} <= set(cmd)
  cmd, _ = ablations.command(runs[0], CONFIG, 40, tmp_path, pin_cpu=None)
  assert cmd[0] == sys.executable and '--mode=eval' not in cmd


def test_evaluations_of_one_workdir_never_overlap():
  runs = ablations.plan(CONFIG, ['steps'], [0, 1])
  active, overlaps, lock = {}, [], threading.Lock()

  def fake(run, cpu):
    with lock:
      if run.eval_steps is not None and active.get(run.name):
        overlaps.append(run)
      active[run.name] = active.get(run.name, 0) + 1
    time.sleep(0.05)
    with lock:
      active[run.name] -= 1
    return {'seed': run.seed, 'cpu': cpu, 'PQ': 1.0, 'PQ_th': 1.0, 'PQ_st': 1.0}

  results = ablations.execute(runs, fake, jobs=2)
  assert not overlaps and len(results) == len(runs)


def _fake_pq(run):
  """A made-up PQ that peaks at b = 0.1 and p = 0.4 and rises with the sampling steps."""
  pq = 40.0 + run.seed
  for o in run.overrides:
    key, _, value = o.partition('=')
    if key == 'diffusion.b':
      pq -= 20 * abs(float(value) - 0.1)
    if key == 'diffusion.mask_weight_p':
      pq -= 10 * abs(float(value) - 0.4)
    if key == 'diffusion.loss':
      pq -= 5
  if run.eval_steps is not None:
    pq -= 10.0 / run.eval_steps
  return pq


def test_execute_and_summarize(tmp_path):
  runs = ablations.plan(CONFIG, ['b', 'p', 'loss', 'steps'], [0, 1], ('eval.steps=20',))
  seen = []

  def fake(run, cpu):
    seen.append((run, cpu))
    pq = _fake_pq(run)
    return {'name': run.name, 'seed': run.seed, 'PQ': pq, 'PQ_th': pq - 10, 'PQ_st': pq + 10}

  results = ablations.execute(runs, fake, jobs=1)
  assert set(results) == set(runs) and len(seen) == len(runs)
  assert all(cpu is None for _, cpu in seen)
  # Each evaluation group (one workdir) runs in order; training runs all come first.
  evals = [r for r, _ in seen if r.eval_steps is not None]
  assert [r.name for r in evals] == ['base_seed0'] * 3 + ['base_seed1'] * 3
  # Every training run ran before any evaluation of one.
  kinds = [r.eval_steps is None for r, _ in seen]
  assert kinds == sorted(kinds, reverse=True)
  summary = ablations.summarize(runs, results)
  b = summary['b']
  assert [r['arm'] for r in b['rows']] == [0.03, 0.1, 0.3, 1.0]
  assert b['rows'][1]['PQ'] == {'mean': 40.5, 'min': 40.0, 'max': 41.0}
  assert b['rows'][1]['seeds'] == [0, 1]
  assert b['ours_best'] == 0.1 and b['best_agrees'] and b['spearman_with_paper'] == 1.0
  assert summary['p']['ours_best'] == 0.4 and not summary['p']['best_agrees']
  assert summary['loss']['ours_best'] == 'softmax_xent' and summary['loss']['best_agrees']
  steps = summary['steps']
  assert [r['arm'] for r in steps['rows']] == [1, 5, 10, 20]
  assert steps['rows'][-1]['PQ']['mean'] == 40.5          # the base run's own evaluation
  assert steps['ours_best'] == 20 and steps['paper_best'] == 20
  ablations.plot(summary, tmp_path / 'ablations.png')
  assert (tmp_path / 'ablations.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_run_one_reads_the_metrics_caches_and_names_a_failure(tmp_path, monkeypatch):
  run = ablations.plan(CONFIG, ['b'], [0])[0]
  calls = []

  def fake_command(run, config_path, steps, out, pin_cpu):
    workdir = out / 'runs' / run.name
    calls.append(run)
    code = ('import json, pathlib, sys; d = pathlib.Path(sys.argv[1]) / "eval" / "step_7"; '
            'd.mkdir(parents=True); (d / "metrics.json").write_text(json.dumps('
            '{"PQ": 12.5, "PQ_th": 2.5, "PQ_st": 22.5, "sampling_steps": 20})); '
            'print("cache=" + __import__("os").environ["JAX_COMPILATION_CACHE_DIR"])')
    if run.seed == 9:
      code = 'import sys; print("boom: the data set is empty"); sys.exit(3)'
    return [sys.executable, '-c', code, str(workdir)], workdir

  monkeypatch.setattr(ablations, 'command', fake_command)
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  got = ablations.run_one(run, CONFIG, 7, tmp_path, None)
  log = (tmp_path / 'runs' / run.name / 'train.log').read_text()
  assert f'cache={tmp_path / "jax_cache"}' in log      # every run shares one compilation cache
  assert (got['PQ'], got['PQ_th'], got['PQ_st'], got['eval_steps']) == (12.5, 2.5, 22.5, 20)
  assert json.loads(ablations.result_file(run, tmp_path).read_text()) == got
  assert ablations.run_one(run, CONFIG, 7, tmp_path, None) == got and len(calls) == 1
  bad = ablations.Run('bad', (), 9)
  with pytest.raises(RuntimeError, match=r'(?s)bad .*exit status 3.*boom: the data set is empty'):
    ablations.run_one(bad, CONFIG, 7, tmp_path, None)


def test_rank_correlation_and_best_arm_with_ties():
  assert ablations._spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]) == 1.0
  assert ablations._spearman([4.0, 3.0, 2.0, 1.0], [10.0, 20.0, 30.0, 40.0]) == -1.0
  assert ablations._spearman([0.0, 0.0, 0.0, 0.0], [47.5, 49.4, 50.3, 50.2]) is None
  assert ablations._spearman([1.0, 2.0], [2.0, 1.0]) is None
  assert ablations._spearman([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == 0.866
  rows = [{'arm': a, 'v': v} for a, v in (('x', 1.0), ('y', 3.0), ('z', 3.0))]
  assert ablations._best(rows, lambda r: r['v']) is None
  assert ablations._best(rows[:2], lambda r: r['v']) == 'y'
