"""Programs that the scale-out tests run in fresh processes, and the way the tests start them.

A process's CPU device count is fixed when jax starts, so every check that needs several devices
or several processes runs here, in a subprocess whose XLA_FLAGS fake the devices before jax is
imported; the pytest process keeps its one device.

  python tests/multiprocess_workers.py TASK JSON_ARGS

Tasks write their results under args['out'] (pickled dicts of numpy arrays, JSON), never into a
training workdir, so that the tests can check what training itself wrote there.
  meshes:     a few train steps on each of several meshes, from the same initial state and
              batches; optionally saves a checkpoint on one mesh and restores another onto the
              meshes of this process, then takes one more step.
  train_loop: `train.train_and_evaluate` as one process of a (possibly) multi-process run (a
              SIGTERM stop included), then the global batches and the final state, gathered
              to every process.
  nan_main:   the command line (`pix2seq_d_jax.main`) with a NaN written into the images of
              every example from a given step on.
"""

import json
import logging
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import time

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path[:0] = [str(REPO), str(TESTS)]

from conftest import FAST_COMPILE, TINY_OVERRIDES  # noqa: E402  pylint: disable=g-import-not-at-top

# The tiny test model, smaller still (one decoder level), with encoder MLP kernels of
# 32 x 2048 = 2^16 elements: the only tensors big enough for the FSDP rule
# (sharding.FSDP_MIN_SIZE), so fsdp meshes have something to shard. A small synthetic data set
# of 32x32 images and a global batch of 8 (divisible by 8 devices and by 2 processes x 2).
MODEL_OVERRIDES = tuple(TINY_OVERRIDES) + (
    'model.decoder.ch_multipliers=(1,)',
    'model.decoder.num_res_blocks=(1,)',
    'model.encoder.mlp_dim=2048',
)
SCALE_OVERRIDES = MODEL_OVERRIDES + (
    'dataset.num_train=32',
    'dataset.num_eval=4',
    'dataset.synthetic_size=32',
    'dataset.max_original_size=(32, 32)',
    'train.batch_size=8',
    'train.warmup_steps=0',
    'train.learning_rate=2e-3',   # test_sharding's tolerances were measured at this rate
    'train.log_every_steps=1',
    'eval.batch_size=4',
    'eval.steps=1',
    'eval.num_visualizations=1',
)

# The encoder MLP kernels' path (their EMA and Adam moments follow the same rule).
BIG_KERNEL = "['encoder']['layer0']['mlp']['Dense_0']['kernel']"


def xla_flags(devices: int) -> str:
  """`devices` fake CPU devices, compiled with the tests' fast options (conftest.FAST_COMPILE)."""
  flags = [f'--xla_force_host_platform_device_count={devices}']
  for key, value in FAST_COMPILE.items():
    flags.append(f'--{key}={str(value).lower() if isinstance(value, bool) else value}')
  return ' '.join(flags)


def worker_env(devices: int, cache_dir=None) -> dict:
  """The environment of a worker: fake devices, the repository importable, TF quiet, and a
  compilation cache shared by the processes of one test module (the same programs are
  compiled by several of them; a cached executable is the same executable)."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = xla_flags(devices)
  env['JAX_PLATFORMS'] = 'cpu'
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO), env.get('PYTHONPATH', '')]))
  if cache_dir is not None:
    env['JAX_COMPILATION_CACHE_DIR'] = str(cache_dir)
    env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  return env


def start(task: str, args: dict, *, devices: int, cache_dir=None, log=None) -> subprocess.Popen:
  """Starts `task` in a new process with `devices` fake CPU devices; output goes to the file
  `log` (or a pipe)."""
  command = [sys.executable, str(pathlib.Path(__file__).resolve()), task, json.dumps(args)]
  env = worker_env(devices, cache_dir)
  if not log:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  with open(log, 'w') as stream:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=stream,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, log=None, timeout: float = 400) -> str:
  """Waits for a worker started with `start`; raises with its output's tail unless it exits 0."""
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
  if log:
    out = pathlib.Path(log).read_text()
  if proc.returncode != 0:
    raise AssertionError(f'worker {proc.args[2]} exited with {proc.returncode}:\n{out[-6000:]}')
  return out


def read_scalars(workdir) -> dict:
  """{(tag, step): [values in file order]} from every TensorBoard events file of a workdir
  (scalars as clu writes them: float32 tensors). A record cut short by a killed writer ends
  its file."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for path in sorted(pathlib.Path(workdir).glob('events.out.tfevents.*')):
    data, i = path.read_bytes(), 0
    while i < len(data):   # TFRecords: length (8 bytes), its CRC (4), data, data CRC (4).
      if i + 12 > len(data):
        break
      (length,) = struct.unpack('<Q', data[i:i + 8])
      if i + 12 + length + 4 > len(data):
        break
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
      i += 12 + length + 4
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'scalars':
          number = np.frombuffer(value.tensor.tensor_content, np.float32)[0]
          out.setdefault((value.tag, event.step), []).append(float(number))
  return out


def load(path):
  with open(path, 'rb') as f:
    return pickle.load(f)


def _dump(obj, path) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'wb') as f:
    pickle.dump(obj, f)


# ---------------------------------------------------------------------------------------------
# Worker side. Everything below runs in the subprocess (jax is imported after XLA_FLAGS is set).


def scale_config(*overrides):
  from pix2seq_d_jax import config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.load_config(str(REPO / 'configs' / 'shapes.py'),
                                list(SCALE_OVERRIDES) + list(overrides))


def mesh_tag(mesh_config) -> str:
  return 'x'.join(str(size) for _, size in mesh_config)


def flat(tree) -> dict:
  """{keystr: numpy array} of a pytree of (fully addressable) arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def shard_shapes(tree) -> dict:
  """{keystr: shape of the array's first addressable shard}."""
  import jax  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(x.addressable_shards[0].data.shape)
          for path, x in leaves}


def specs(tree) -> dict:
  """{keystr: PartitionSpec as a list of axis names} of a pytree of jax arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): [list(e) if isinstance(e, tuple) else e
                                       for e in x.sharding.spec] for path, x in leaves}


def train_batches(config, source, start_step: int, count: int, process_index: int = 0,
                  process_count: int = 1) -> list:
  """`count` numpy batches of this process from the training pipeline, from `start_step`."""
  from pix2seq_d_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  ds = pipeline.as_numpy(pipeline.train_dataset(config, source, start_step=start_step,
                                                process_index=process_index,
                                                process_count=process_count))
  out = []
  for _ in range(count):
    batch = next(ds)
    batch.pop('dropped_segments')
    out.append(batch)
  return out


def _without_id(batch):
  return {k: v for k, v in batch.items() if k != 'id'}


def _check_sharded_raises(trainer) -> str:
  """check_sharded on the trainer's shardings with the first fsdp-sharded leaf replicated: the
  error message, or '' when it did not raise."""
  import jax  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import sharding  # pylint: disable=g-import-not-at-top
  leaves, treedef = jax.tree.flatten(trainer.shardings)
  index = next((i for i, s in enumerate(leaves) if 'fsdp' in list(s.spec)), None)
  if index is None:
    return ''
  leaves[index] = sharding.replicated(trainer.mesh)
  try:
    sharding.check_sharded(treedef.unflatten(leaves), trainer.abstract, trainer.mesh)
  except AssertionError as e:
    return str(e)
  return ''


def task_meshes(args):
  """Trains args['steps'] steps on each mesh of args['meshes'] from one initial state."""
  import jax  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import sharding  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import train  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(args['out'])
  steps = args['steps']
  batches, initial, step_fns = None, None, {}
  for mesh in args['meshes']:
    mesh = tuple(tuple(axis) for axis in mesh)
    tag = mesh_tag(mesh)
    config = scale_config(f'mesh={mesh}', f'train.num_steps={steps}')
    trainer = train.Trainer(config, out / f'run_{tag}')
    if batches is None:
      batches = train_batches(config, trainer.source, 0, steps)
    first = initial is None
    if first:
      state, _ = trainer.restore_or_init()   # Initialised on this (first) mesh.
      initial = jax.device_get(state)
    else:
      state = jax.device_put(initial, trainer.shardings)
    step_fn = step_fns[tag] = trainer.make_train_step()
    metrics = []
    for batch in batches:
      state, m = step_fn(state, sharding.global_batch(_without_id(batch), trainer.mesh))
      metrics.append(m)
    result = {'metrics': jax.device_get(metrics), 'state': flat(state), 'specs': specs(state),
              'shard_shapes': shard_shapes(state), 'mesh_shape': dict(trainer.mesh.shape),
              'check_sharded_error': _check_sharded_raises(trainer)}
    if first:
      result['initial'] = flat(initial)
    if tag == args.get('save_mesh'):
      trainer.save(state)
      trainer.manager.wait_until_finished()
      (out / f'saved_{tag}').write_text(str(trainer.workdir))
    trainer.manager.close()
    _dump(result, out / f'{tag}.pkl')
  if args.get('restore_from'):
    _restore_and_step(args, step_fns)


def _restore_and_step(args, step_fns):
  """Restores the newest checkpoint of args['restore_from'] onto each of
  args['restore_meshes'] (each also in args['meshes']) and takes one more step with the batch of
  the restored step."""
  import jax  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import sharding  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import train  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(args['out'])
  ready = pathlib.Path(args['wait_for'])
  deadline = time.time() + 400
  while not ready.exists():      # Written by the process that saves the checkpoint.
    if time.time() > deadline:
      raise TimeoutError(f'{ready} did not appear.')
    time.sleep(0.2)
  for mesh in args['restore_meshes']:
    mesh = tuple(tuple(axis) for axis in mesh)
    tag = mesh_tag(mesh)
    config = scale_config(f'mesh={mesh}', f'train.num_steps={args["steps"] + 1}')
    trainer = train.Trainer(config, args['restore_from'])
    state, start = trainer.restore_or_init()
    result = {'start': start, 'state': flat(state), 'specs': specs(state)}
    batch = train_batches(config, trainer.source, start, 1)[0]
    state, metrics = step_fns[tag](state, sharding.global_batch(_without_id(batch),
                                                                trainer.mesh))
    result.update(step_after=int(state.step), metrics=jax.device_get(metrics))
    trainer.manager.close()
    _dump(result, out / f'restored_{tag}.pkl')


class _WriteRecorder:
  """An audit hook that records files and folders this process creates or writes under a
  workdir, outside its checkpoints/ (every process writes its own checkpoint shards there)."""

  _EVENTS = ('os.mkdir', 'os.rename', 'os.remove', 'os.rmdir', 'shutil.rmtree', 'os.symlink',
             'os.truncate', 'shutil.copyfile', 'shutil.move')

  def __init__(self, workdir):
    self.root = os.path.realpath(workdir)
    self.skip = os.path.join(self.root, 'checkpoints')
    self.paths = set()

  def _record(self, path):
    if isinstance(path, bytes):
      path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
      return
    path = os.path.realpath(os.fspath(path))
    if (path == self.root or path.startswith(self.root + os.sep)) and not (
        path == self.skip or path.startswith(self.skip + os.sep)):
      self.paths.add(os.path.relpath(path, self.root))

  def __call__(self, event, args):
    if event == 'open':
      path, mode, flags = args
      writes = (any(c in mode for c in 'wax+') if isinstance(mode, str) else
                bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
      if writes:
        self._record(path)
    elif event in self._EVENTS:
      for a in args[:2]:
        self._record(a)


def task_train_loop(args):
  """train_and_evaluate as process args['process_id'] of args['num_processes']."""
  pid, count = args.get('process_id', 0), args.get('num_processes', 1)
  workdir = pathlib.Path(args['workdir'])
  out = pathlib.Path(args['out'])
  from pix2seq_d_jax import sharding  # pylint: disable=g-import-not-at-top
  if count > 1:
    sharding.initialize_distributed(f'127.0.0.1:{args["port"]}', count, pid)
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import train  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import data  # pylint: disable=g-import-not-at-top
  assert jax.process_count() == count and jax.process_index() == pid
  recorder = _WriteRecorder(workdir)
  sys.addaudithook(recorder)
  config = scale_config(f'train.num_steps={args["steps"]}',
                        f'eval.every_steps={args["steps"]}', *args.get('overrides', ()))
  try:
    train.train_and_evaluate(config, str(workdir), evaluate=args.get('evaluate', False))
    exit_code = 0
  except SystemExit as e:   # A SIGTERM stop: a checkpoint, then SystemExit(143).
    if e.code != 143:
      raise
    exit_code = e.code
  writes = sorted(recorder.paths)
  logging.info('training done; reading the batches back')

  # The batches this process read, and the global batches they make.
  mesh = sharding.make_mesh(config.mesh)
  source = data.get_source(config.dataset)
  local = train_batches(config, source, 0, args.get('check_batches', args['steps']), pid, count)
  gathered = [multihost_utils.process_allgather(sharding.global_batch(_without_id(b), mesh),
                                                tiled=True) for b in local]
  logging.info('batches gathered; restoring the final state')
  # The final state, read back from the newest checkpoint this run wrote.
  trainer = train.Trainer(config, str(workdir))
  state, step = trainer.restore_or_init()
  final = multihost_utils.process_allgather(state, tiled=True)
  trainer.manager.close()
  _dump({'pid': os.getpid(), 'exit_code': exit_code, 'writes': writes, 'local': local,
         'global': gathered,
         'state': flat(final), 'step': step, 'devices': jax.local_device_count()},
        out / f'process_{pid}.pkl')
  multihost_utils.sync_global_devices('done')


def task_nan_main(args):
  """The command line `pix2seq_d_jax.main` (args['argv']) with the images of every example at
  global position >= args['bad_step'] * batch set to NaN."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax import main  # pylint: disable=g-import-not-at-top
  from pix2seq_d_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  prepare = pipeline._prepare_train  # pylint: disable=protected-access

  def poisoned(example, position, *, config, is_video):
    out = prepare(example, position, config=config, is_video=is_video)
    bad = position >= args['bad_step'] * config.train.batch_size
    out['image'] = tf.where(bad, tf.fill(tf.shape(out['image']), float('nan')), out['image'])
    return out
  pipeline._prepare_train = poisoned  # pylint: disable=protected-access
  sys.argv = ['pix2seq_d_jax.main', *args['argv']]
  main.run()


TASKS = {'meshes': task_meshes, 'train_loop': task_train_loop, 'nan_main': task_nan_main}


if __name__ == '__main__':
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
  for noisy in ('absl', 'jax', 'orbax'):   # Keep their warnings only.
    logging.getLogger(noisy).setLevel(logging.WARNING)
  TASKS[sys.argv[1]](json.loads(sys.argv[2]))
