#!/usr/bin/env bash
# Generate and submit a multi-node SLURM job that runs pix2seq_d_jax.main on
# N nodes x G GPUs, or run N processes on this machine's CPU (--local) to try
# the multi-process setup without a cluster.  See launch/README.md and
# `launch/gpu_cluster.sh --help`.
#
# One process per node, seeing all of the node's GPUs: JAX drives every local
# GPU from one process, so the data pipeline (tf.data on the host) runs once per
# node rather than once per GPU, host memory is not duplicated, and no per-task
# GPU binding has to be configured (clusters differ there).  One process per
# GPU also works with JAX but needs --ntasks-per-node=G plus a GPU binding.
#
# Written for bash 3.2 as well (macOS): no associative arrays, `wait -n` or
# `mapfile`, and empty arrays are expanded as ${a[@]+"${a[@]}"}.
set -euo pipefail

# Functions both launch scripts share (errors, quoting, --extra, --dry-run),
# from this script's own directory.
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [OPTIONS] [-- MAIN_ARGS...]

Writes a SLURM batch script that starts one process per node with srun
(JAX_COORDINATOR_ADDRESS = first node:PORT, JAX_NUM_PROCESSES = number of
nodes, JAX_PROCESS_ID = SLURM_PROCID) and submits it with sbatch.  The job
creates or updates the venv with jax[cuda12] first.  The repository, the venv
and a non-GCS --workdir must be on a filesystem all nodes share.

Options (flag, then the environment variable giving its default):
  --nodes N          PIX2SEQ_NODES          number of nodes (required)
  --gpus-per-node G  PIX2SEQ_GPUS_PER_NODE  GPUs per node, e.g. 8 (required)
  --config CFG       PIX2SEQ_CONFIG   e.g. configs/coco_panoptic.py or configs/X.py:arg,
                                      relative to the repository root (required)
  --workdir DIR      PIX2SEQ_WORKDIR  checkpoints and summaries: a shared path or
                                      gs://...; a relative path is made absolute
                                      here (required)
  --extra ARGS       PIX2SEQ_EXTRA    extra arguments for main, split like a shell
                                      would split them (quotes and backslashes are
                                      honoured; \$ and \` are kept literally, nothing
                                      is expanded or run); may be repeated
  --partition P                       sbatch --partition (else sbatch's defaults,
  --account A                         sbatch --account    e.g. SBATCH_PARTITION,
  --time T                            sbatch --time       SBATCH_ACCOUNT, SBATCH_TIMELIMIT)
  --cpus-per-task C                   sbatch --cpus-per-task (CPUs for the one
                                      process per node, which also runs tf.data)
  --job-name NAME                     default pix2seq_d
  --sbatch-arg ARG                    one more #SBATCH line, e.g. --sbatch-arg=--qos=high;
                                      may be repeated
  --requeue                           let SLURM requeue the job after preemption
                                      or node failure; it resumes from --workdir
  --signal-seconds S                  SIGTERM this long before the time limit so
                                      training can checkpoint (default 120)
  --venv DIR         PIX2SEQ_VENV     venv to create/use (default REPO/.venv)
  --python PY        PIX2SEQ_PYTHON   interpreter that creates the venv (default python3)
  --skip-install                      use the venv as it is
  --port PORT        PIX2SEQ_PORT     coordinator port on the first node (default 12355)
  --mem-fraction F                    XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.90)
  --log-dir DIR                       batch scripts and job output
                                      (default REPO/runs/slurm)
  --local N                           no SLURM: run N processes on this machine,
                                      CPU devices only, with the venv as it is;
                                      process 0's output to the terminal, all to
                                      --log-dir/local-<time>/process-<i>.log
  --local-devices D                   CPU devices per process with --local (default 1)
  --dry-run                           print the batch script and the commands
                                      (prefixed with '+ ') instead of running them;
                                      never calls sbatch
  -h, --help                          show this help

Arguments after -- are passed to main unchanged, one argument each.

Examples:
  $PROG --nodes 2 --gpus-per-node 8 --partition h100 --time 2-00:00:00 \\
      --config configs/coco_panoptic.py --workdir /shared/p2s/run1 --requeue
  $PROG --local 2 --config configs/shapes.py --workdir /tmp/p2s_local --dry-run
EOF
}

# ---------------------------------------------------------------- arguments --
NODES=${PIX2SEQ_NODES:-}
GPUS=${PIX2SEQ_GPUS_PER_NODE:-}
CONFIG=${PIX2SEQ_CONFIG:-}
WORKDIR=${PIX2SEQ_WORKDIR:-}
VENV=${PIX2SEQ_VENV:-$REPO_ROOT/.venv}
PYTHON=${PIX2SEQ_PYTHON:-python3}
PORT=${PIX2SEQ_PORT:-12355}
PARTITION=''
ACCOUNT=''
TIME=''
CPUS=''
JOB_NAME=pix2seq_d
REQUEUE=0
SIGNAL_SECONDS=120
SKIP_INSTALL=0
MEM_FRACTION=0.90
LOG_DIR=$REPO_ROOT/runs/slurm
LOCAL=''
LOCAL_DEVICES=1
SBATCH_ARGS=()
if [ -n "${PIX2SEQ_EXTRA:-}" ]; then split_words "$PIX2SEQ_EXTRA"; fi

# Both "--flag value" and "--flag=value" are accepted.
while [ "$#" -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --requeue) REQUEUE=1 ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --*=*)
      # Re-dispatch --flag=value as --flag value.
      flag=${1%%=*} value=${1#*=}
      shift
      set -- "$flag" "$value" "$@"
      continue ;;
    --nodes) need_value "$@"; NODES=$2; shift ;;
    --gpus-per-node) need_value "$@"; GPUS=$2; shift ;;
    --config) need_value "$@"; CONFIG=$2; shift ;;
    --workdir) need_value "$@"; WORKDIR=$2; shift ;;
    --extra) need_value "$@"; split_words "$2"; shift ;;
    --partition) need_value "$@"; PARTITION=$2; shift ;;
    --account) need_value "$@"; ACCOUNT=$2; shift ;;
    --time) need_value "$@"; TIME=$2; shift ;;
    --cpus-per-task) need_value "$@"; CPUS=$2; shift ;;
    --job-name) need_value "$@"; JOB_NAME=$2; shift ;;
    --sbatch-arg) need_value "$@"; SBATCH_ARGS+=("$2"); shift ;;
    --signal-seconds) need_value "$@"; SIGNAL_SECONDS=$2; shift ;;
    --venv) need_value "$@"; VENV=$2; shift ;;
    --python) need_value "$@"; PYTHON=$2; shift ;;
    --port) need_value "$@"; PORT=$2; shift ;;
    --mem-fraction) need_value "$@"; MEM_FRACTION=$2; shift ;;
    --log-dir) need_value "$@"; LOG_DIR=$2; shift ;;
    --local) need_value "$@"; LOCAL=$2; shift ;;
    --local-devices) need_value "$@"; LOCAL_DEVICES=$2; shift ;;
    --) shift; EXTRA_ARGS+=("$@"); break ;;
    *) die_usage "unknown argument: $1" ;;
  esac
  shift
done

is_count() {
  case $1 in '' | *[!0-9]* | 0*) return 1 ;; esac
}

# Relative paths are taken relative to where the script is started, and made
# absolute because the job runs in the repository root on other machines.
absolute() {
  case $1 in
    /* | *://*) printf '%s' "$1" ;;
    *) printf '%s/%s' "$PWD" "$1" ;;
  esac
}

[ -n "$CONFIG" ] || die_usage "--config (or PIX2SEQ_CONFIG) is required"
[ -n "$WORKDIR" ] || die_usage "--workdir (or PIX2SEQ_WORKDIR) is required"
is_count "$PORT" || die_usage "--port must be a number"
WORKDIR=$(absolute "$WORKDIR")
VENV=$(absolute "$VENV")
LOG_DIR=$(absolute "$LOG_DIR")
if [ -n "$LOCAL" ]; then
  is_count "$LOCAL" || die_usage "--local needs a process count >= 1"
  is_count "$LOCAL_DEVICES" || die_usage "--local-devices needs a count >= 1"
else
  [ -n "$NODES" ] || die_usage "--nodes (or PIX2SEQ_NODES) is required"
  [ -n "$GPUS" ] || die_usage "--gpus-per-node (or PIX2SEQ_GPUS_PER_NODE) is required"
  is_count "$NODES" || die_usage "--nodes must be a number >= 1"
  is_count "$GPUS" || die_usage "--gpus-per-node must be a number >= 1"
  is_count "$SIGNAL_SECONDS" || die_usage "--signal-seconds must be a number >= 1"
  [[ $MEM_FRACTION =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die_usage "--mem-fraction must be in (0, 1], e.g. 0.9"
  # #SBATCH lines are not read by a shell, so their values cannot be quoted.
  for v in "$JOB_NAME" "$PARTITION" "$ACCOUNT" "$TIME" "$CPUS" "$LOG_DIR" \
    ${SBATCH_ARGS[@]+"${SBATCH_ARGS[@]}"}; do
    case $v in *[[:space:]]*) die_usage "sbatch values cannot contain whitespace: '$v'" ;; esac
  done
fi

main_command "$VENV/bin/python"

# ------------------------------------------------------------------- SLURM --
batch_script() {
  cat <<EOF
#!/bin/bash
# pix2seq_d_jax: $NODES node(s) x $GPUS GPU(s), one process per node.
# Written by launch/gpu_cluster.sh; submit with sbatch.
#SBATCH --job-name=$JOB_NAME
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS
EOF
  if [ -n "$CPUS" ]; then echo "#SBATCH --cpus-per-task=$CPUS"; fi
  if [ -n "$PARTITION" ]; then echo "#SBATCH --partition=$PARTITION"; fi
  if [ -n "$ACCOUNT" ]; then echo "#SBATCH --account=$ACCOUNT"; fi
  if [ -n "$TIME" ]; then echo "#SBATCH --time=$TIME"; fi
  if [ "$REQUEUE" = 1 ]; then echo "#SBATCH --requeue"; fi
  local a
  for a in ${SBATCH_ARGS[@]+"${SBATCH_ARGS[@]}"}; do echo "#SBATCH $a"; done
  cat <<EOF
#SBATCH --output=$LOG_DIR/%x-%j.out
# A requeued job appends to its output instead of overwriting it.
#SBATCH --open-mode=append
# SIGTERM to the training processes before the time limit: they checkpoint.
#SBATCH --signal=TERM@$SIGNAL_SECONDS
set -euo pipefail
cd $(shq "$REPO_ROOT")
venv=$(shq "$VENV")
EOF
  if [ "$SKIP_INSTALL" = 0 ]; then
    cat <<EOF

# Create or update the venv (on the first node only; the venv is shared).  The
# stamp file names the lock file's hash, so a changed lock file reinstalls.
stamp="\$venv/.installed-cuda12-\$(sha256sum requirements-lock.txt | cut -c1-16)"
if [ ! -e "\$stamp" ]; then
  [ -x "\$venv/bin/python" ] || $(shq "$PYTHON") -m venv "\$venv"
  "\$venv/bin/pip" install -q --upgrade pip
  "\$venv/bin/pip" install -q -r requirements-lock.txt -e .
  jax_version=\$(sed -n 's/^jax==//p' requirements-lock.txt)
  "\$venv/bin/pip" install -q "jax[cuda12]==\$jax_version"
  touch "\$stamp"
fi
EOF
  fi
  cat <<EOF

# Every process finds the coordinator (process 0, on the first node) here.
# Without pipefail here: head exits after one line, and scontrol writing more
# (a long node list) would otherwise fail the job with SIGPIPE.
head_node=\$(set +o pipefail; scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n1)
[ -n "\$head_node" ] || { echo "no nodes in SLURM_JOB_NODELIST='\$SLURM_JOB_NODELIST'" >&2; exit 1; }
export JAX_COORDINATOR_ADDRESS="\$head_node:$PORT"
export JAX_NUM_PROCESSES="\$SLURM_NTASKS"
# Proxies (often set on clusters) must not intercept the coordinator's gRPC.
export no_proxy="\${no_proxy:+\$no_proxy,}\$head_node" NO_PROXY="\${NO_PROXY:+\$NO_PROXY,}\$head_node"
# JAX preallocates this share of each GPU; the rest is for NCCL and cuDNN.
export XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION
# TensorFlow runs tf.data on the host only (tensorflow-cpu, and the program
# hides the GPUs from it); should a GPU build be installed, it must not grab
# GPU memory when it starts.  CUDA_VISIBLE_DEVICES stays as SLURM sets it,
# since JAX needs the GPUs.
export TF_FORCE_GPU_ALLOW_GROWTH=true
export PYTHONUNBUFFERED=1
echo "coordinator \$JAX_COORDINATOR_ADDRESS, \$JAX_NUM_PROCESSES processes, nodes: \$SLURM_JOB_NODELIST"

# One task per node; each sets its process id from SLURM_PROCID.  If one
# process fails, SLURM ends the others instead of leaving them waiting.
rc=0
srun --ntasks-per-node=1 --kill-on-bad-exit=1 --label \\
  bash -c 'export JAX_PROCESS_ID="\$SLURM_PROCID"; exec "\$@"' pix2seq_d_jax \\
  $(shjoin "${MAIN[@]}") || rc=\$?
EOF
  if [ "$REQUEUE" = 1 ]; then
    cat <<EOF
# 143: training got SIGTERM (--signal, before the time limit) and wrote a
# checkpoint.  Requeue, and the next run resumes from the workdir.
if [ "\$rc" = 143 ]; then
  echo "stopped after SIGTERM with a checkpoint; requeueing job \$SLURM_JOB_ID"
  scontrol requeue "\$SLURM_JOB_ID"
fi
EOF
  fi
  echo 'exit "$rc"'
}

submit() {
  local script stamp file
  script=$(batch_script)
  stamp=$(date +%Y%m%d-%H%M%S)
  file=$LOG_DIR/$JOB_NAME-$stamp.sbatch
  # SLURM does not create the directory of --output.
  run_cmd mkdir -p "$LOG_DIR"
  if [ "$DRY_RUN" = 1 ]; then
    printf '%s\n' "$script"
    printf '# end of %s\n' "$(shq "$file")"
  else
    printf '%s\n' "$script" >"$file"
  fi
  run_cmd sbatch "$file"
}

# ------------------------------------------------------------------- local --
LOCAL_PIDS=()

# Send SIGTERM to every local process still running (they checkpoint and exit).
stop_local() {
  local p
  for p in ${LOCAL_PIDS[@]+"${LOCAL_PIDS[@]}"}; do
    if [ "$p" != 'done' ]; then kill -TERM "$p" 2>/dev/null || true; fi
  done
}

run_local() {
  local dir i rc=0 p
  dir=$LOG_DIR/local-$(date +%Y%m%d-%H%M%S)
  run_cmd mkdir -p "$dir"
  for ((i = 0; i < LOCAL; i++)); do
    # JAX_PLATFORMS=cpu and no CUDA devices: the processes must not compete
    # for a GPU this machine may have.
    local cmd=(env JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=
      "JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT" "JAX_NUM_PROCESSES=$LOCAL" "JAX_PROCESS_ID=$i"
      "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$LOCAL_DEVICES"
      PYTHONUNBUFFERED=1 "${MAIN[@]}")
    if [ "$DRY_RUN" = 1 ]; then
      printf '+ %s > %s 2>&1 &\n' "$(shjoin "${cmd[@]}")" "$(shq "$dir/process-$i.log")"
    else
      if [ "$i" = 0 ]; then
        # Process 0 also to the terminal; $! stays the training process.
        (cd "$REPO_ROOT" && exec "${cmd[@]}") > >(tee "$dir/process-$i.log") 2>&1 &
      else
        (cd "$REPO_ROOT" && exec "${cmd[@]}") >"$dir/process-$i.log" 2>&1 &
      fi
      LOCAL_PIDS+=("$!")
    fi
  done
  if [ "$DRY_RUN" = 1 ]; then
    printf '# process 0 output also to the terminal; on a failure the others get SIGTERM\n'
    return 0
  fi
  printf '%s: %s processes, logs in %s\n' "$PROG" "$LOCAL" "$dir" >&2
  trap 'stop_local' INT TERM
  # Poll rather than `wait -n` (not in bash 3.2); the first failure stops the
  # other processes, which would otherwise wait for the failed one forever.
  local left=$LOCAL prc
  while [ "$left" -gt 0 ]; do
    for ((i = 0; i < LOCAL; i++)); do
      p=${LOCAL_PIDS[i]}
      if [ "$p" = 'done' ] || kill -0 "$p" 2>/dev/null; then continue; fi
      prc=0
      wait "$p" || prc=$?
      LOCAL_PIDS[i]='done'
      left=$((left - 1))
      if [ "$prc" != 0 ] && [ "$rc" = 0 ]; then
        rc=$prc
        printf '%s: process %s exited with status %s; stopping the others\n' "$PROG" "$i" "$prc" >&2
        stop_local
      fi
    done
    if [ "$left" -gt 0 ]; then sleep 0.2; fi
  done
  # Let tee write process 0's last lines (bash 3.2 cannot wait for it).
  sleep 0.2
  trap - INT TERM
  return "$rc"
}

if [ -n "$LOCAL" ]; then
  run_local
else
  submit
fi
