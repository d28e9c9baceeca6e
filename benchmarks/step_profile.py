"""Where the train step's time goes, by part of the model; prints one JSON object.

  python benchmarks/step_profile.py [--config=configs/shapes.py] [--steps=3] [--depth=2] \
      [--top=15] [key=value ...]

Compiles the train step (the same function as training, on one device), runs it, then traces
--steps more calls with the JAX profiler (XLA:CPU's per-operation trace events switched on with
--xla_cpu_enable_xprof_traceme, set here before JAX starts). Each traced operation is matched to
its HLO instruction in the compiled program, and that instruction's source (the `op_name` JAX
records: `.../transpose(jvp(Pix2SeqD.encode))/backbone/stage3_block5/...`) names

  - the pass: `forward` or `backward` (JAX's transpose of the forward);
  - the part: the model's module path to --depth levels with block indices folded
    (`backbone/stage3_block`), or `step/<op>` for the step's own work outside the model (noise,
    loss, optimizer, EMA), or `unattributed` for copies XLA made that carry no source.

Reported per step: wall time, the summed time of all operations (over the threads that ran them;
it can exceed the wall time), each thread's busy time and the busy fraction (summed operation
time / (wall time x the CPUs this process may use); the rest is time the CPUs spent on XLA's
scheduling, on waiting, or on other processes), the number of HLO instructions of the program and of traced tasks (one instruction can
run as several tasks), the time by part and pass with its share, and the --top longest
instructions. Only for XLA's CPU backend: other backends do not emit these trace events.
"""

import argparse
import collections
import functools
import glob
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
if __name__ == '__main__':   # before JAX starts; a test importing the helpers below keeps its own
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_cpu_enable_xprof_traceme=true').strip()

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from pix2seq_d_jax import config_lib
from pix2seq_d_jax import state as state_lib
from pix2seq_d_jax import train_step as train_step_lib

# Trace events that are the runtime's or Python's own spans, not operations of the program.
_RUNTIME_EVENTS = ('ThunkExecutor', 'SlinkyThreadPool', 'PjitFunction', '$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = ', re.M)
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_MODEL_PATH = re.compile(r'\w+\.(?:encode|decode|__call__)\)*/(.*)')


def instruction_sources(hlo_text: str) -> dict:
  """{instruction name: op_name} for the instructions of the entry computation."""
  entry = hlo_text[hlo_text.index('\nENTRY'):]
  out = {}
  for line in entry.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      op = _OP_NAME.search(line)
      out[m.group(1)] = op.group(1) if op else ''
  return out


def part_of(op_name: str, depth: int) -> tuple[str, str]:
  """(pass, part) of an instruction from its op_name (see the module docstring)."""
  if not op_name:
    return 'forward', 'unattributed'
  pass_ = 'backward' if 'transpose(' in op_name else 'forward'
  m = _MODEL_PATH.search(op_name)
  if m:
    modules = [p for p in m.group(1).split('/') if p and '(' not in p][:depth]
    return pass_, re.sub(r'(\D)\d+$', r'\1', '/'.join(
        re.sub(r'(block|layer)\d+', r'\1', p) for p in modules)) or 'model'
  # Outside the model: the step's own work, named by its first operation below the jit.
  inner = [p for p in op_name.split('/')[1:] if p]
  return pass_, 'step/' + re.sub(r'\d+', 'N', inner[0] if inner else op_name)[:48]


def summarize(events: list, sources: dict, steps: int, depth: int, top: int) -> dict:
  """Per-step figures from complete ('X') trace events (durations in microseconds)."""
  by_part, threads, per_instr = collections.Counter(), collections.Counter(), collections.Counter()
  tasks = 0
  for e in events:
    name = e.get('name', '')
    if e.get('ph') != 'X' or name.startswith(_RUNTIME_EVENTS) or name not in sources:
      continue
    tasks += 1
    threads[e['tid']] += e['dur']
    per_instr[name] += e['dur']
    by_part[part_of(sources[name], depth)] += e['dur']
  total = sum(by_part.values())
  ms = lambda us: round(us / steps / 1000.0, 2)
  return {
      'op_ms_per_step': ms(total),
      'tasks_per_step': tasks // steps,
      'thread_busy_ms_per_step': sorted((ms(v) for v in threads.values()), reverse=True),
      'by_part': [{'pass': p, 'part': n, 'ms': ms(v), 'share': round(v / max(total, 1), 4)}
                  for (p, n), v in by_part.most_common()],
      'top_instructions': [{'name': k, 'ms': ms(v), 'source': sources[k][-120:]}
                           for k, v in per_instr.most_common(top)],
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
  parser.add_argument('--config', default='configs/shapes.py')
  parser.add_argument('--steps', type=int, default=3, help='traced steps')
  parser.add_argument('--depth', type=int, default=2, help='module path levels of a part')
  parser.add_argument('--top', type=int, default=15, help='longest instructions to list')
  parser.add_argument('overrides', nargs='*', help='key=value config overrides')
  args = parser.parse_args()
  if jax.devices()[0].platform != 'cpu':
    raise SystemExit('step_profile.py reads XLA:CPU trace events; run it with '
                     'JAX_PLATFORMS=cpu.')
  config = config_lib.load_config(args.config, args.overrides)
  setup = state_lib.setup(config, 1000, 0)
  state = jax.jit(setup.init)()
  m, bsz = config.model, config.train.batch_size
  rng = np.random.default_rng(0)
  batch = {'image': rng.random((bsz, *m.image_size, 3), np.float32),
           'masks': rng.integers(0, 8, (bsz, *m.mask_size, 2)).astype(np.int32)}
  if m.num_cond_frames:
    batch['cond_masks'] = rng.integers(0, 8, (bsz, m.num_cond_frames, *m.mask_size, 2)).astype(
        np.int32)
  batch = jax.device_put(batch)
  step = jax.jit(functools.partial(train_step_lib.train_step, model=setup.model, tx=setup.tx,
                                   lr_schedule=setup.lr_schedule,
                                   settings=train_step_lib.StepSettings.from_config(config)),
                 donate_argnums=0)
  compiled = step.lower(state, batch).compile()
  sources = instruction_sources(compiled.as_text())
  for _ in range(2):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      start = time.perf_counter()
      for _ in range(args.steps):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
      wall = (time.perf_counter() - start) / args.steps
    files = glob.glob(os.path.join(trace_dir, '**', '*perfetto_trace.json.gz'), recursive=True)
    if not files:
      raise SystemExit(f'step_profile.py: the profiler wrote no perfetto trace under {trace_dir}.')
    with gzip.open(files[0]) as f:
      events = json.load(f)['traceEvents']
  out = summarize(events, sources, args.steps, args.depth, args.top)
  busy = out['thread_busy_ms_per_step']
  print(json.dumps({
      'config': args.config, 'overrides': args.overrides, 'batch': bsz,
      'device': str(jax.devices()[0].device_kind), 'cpu_count': os.cpu_count(),
      'step_s': round(wall, 4), 'hlo_instructions': len(sources),
      'busy_fraction': round(sum(busy) / (wall * 1000.0 * len(os.sched_getaffinity(0))), 3),
      **out}, indent=2))


if __name__ == '__main__':
  main()
