#!/usr/bin/env bash
# Create a Cloud TPU VM (single host or pod slice), put this repository on every
# worker, install it, run the same training command on all workers, and delete
# the TPU again.  See launch/README.md and `launch/tpu_vm.sh --help`.
#
# Written for bash 3.2 as well (the default bash on macOS laptops): no
# associative arrays, no `wait -n`, no `mapfile`, and empty arrays are expanded
# as ${a[@]+"${a[@]}"} because `set -u` rejects "${a[@]}" there.
set -euo pipefail

# Functions both launch scripts share (errors, quoting, --extra, --dry-run),
# from this script's own directory.
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [OPTIONS] STEP [STEP...] [-- MAIN_ARGS...]

Steps run in the order given:
  create    gcloud compute tpus tpu-vm create (needs --name --zone --type)
  copy      put the code on every worker: git clone --repo at --ref, or, without
            --repo, copy this checkout (tracked and untracked, not ignored, files)
  install   on every worker: Python venv, requirements-lock.txt, jax[tpu]
  run       run python -m pix2seq_d_jax.main on every worker at once
            (needs --config --workdir); worker 0's output goes to the terminal,
            every worker's output to --log-dir/worker-<i>.log
  stop      send SIGTERM to the running training on every worker (it writes a
            checkpoint and exits; run again with the same --workdir to resume)
  delete    gcloud compute tpus tpu-vm delete (only ever when named)
  all       create copy install run

Options (flag, then the environment variable giving its default):
  --name NAME        TPU_NAME         TPU VM / pod slice name (required)
  --zone ZONE        TPU_ZONE         e.g. us-central2-b (required)
  --type TYPE        TPU_TYPE         accelerator type, e.g. v4-8, v4-32, v5litepod-16
  --version RUNTIME  TPU_VERSION      TPU software version; default from --type:
                                      v2/v3/v4 tpu-ubuntu2204-base, v5e
                                      v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
                                      v6e v2-alpha-tpuv6e
  --spot             TPU_SPOT=1       create a Spot TPU (can be preempted)
  --preemptible      TPU_PREEMPTIBLE=1  create a preemptible TPU (older API)
  --repo URL         PIX2SEQ_REPO     git URL to clone on the workers; empty: copy
                                      this checkout instead
  --ref REF          PIX2SEQ_REF      branch, tag or commit to check out (default main)
  --config CFG       PIX2SEQ_CONFIG   e.g. configs/coco_panoptic.py or configs/X.py:arg
  --workdir DIR      PIX2SEQ_WORKDIR  checkpoints and summaries, gs://bucket/path
  --extra ARGS       PIX2SEQ_EXTRA    extra arguments for main, split like a shell
                                      would split them (quotes and backslashes are
                                      honoured; \$ and \` are kept literally, nothing
                                      is expanded or run); may be repeated
  --remote-dir DIR   TPU_REMOTE_DIR   code directory on the workers, relative to
                                      the home directory (default pix2seq_d_jax)
  --python PY        TPU_PYTHON       interpreter for the venv (default python3.11;
                                      installed from the deadsnakes PPA if missing)
  --log-dir DIR      TPU_LOG_DIR      local directory for the worker logs
                                      (default REPO/runs/tpu/NAME-YYYYmmdd-HHMMSS)
  --dry-run                           print every command (prefixed with '+ ')
                                      instead of running it; never calls gcloud
  -h, --help                          show this help

Arguments after -- are passed to main unchanged, one argument each.
gcloud's own settings apply (e.g. CLOUDSDK_CORE_PROJECT for the project).

Examples:
  $PROG --name p2s --zone us-central2-b --type v4-32 \\
      --config configs/coco_panoptic.py --workdir gs://my-bucket/p2s/run1 all
  $PROG --name p2s --zone us-central2-b stop
  $PROG --name p2s --zone us-central2-b delete
EOF
}

# Join script lines into one line ("; " between them, " " after a trailing
# "&"), so that every printed command stays on one line.
join_lines() {
  local out='' l
  for l in "$@"; do
    case $out in
      '') out=$l ;;
      *[!\&]\& | \&) out+=" $l" ;;
      *) out+="; $l" ;;
    esac
  done
  printf '%s' "$out"
}

# ---------------------------------------------------------------- arguments --
NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
TYPE=${TPU_TYPE:-}
VERSION=${TPU_VERSION:-}
SPOT=${TPU_SPOT:-0}
PREEMPTIBLE=${TPU_PREEMPTIBLE:-0}
REPO_URL=${PIX2SEQ_REPO:-}
REF=${PIX2SEQ_REF:-main}
CONFIG=${PIX2SEQ_CONFIG:-}
WORKDIR=${PIX2SEQ_WORKDIR:-}
REMOTE_DIR=${TPU_REMOTE_DIR:-pix2seq_d_jax}
PYTHON=${TPU_PYTHON:-python3.11}
LOG_DIR=${TPU_LOG_DIR:-}
STEPS=()
if [ -n "${PIX2SEQ_EXTRA:-}" ]; then split_words "$PIX2SEQ_EXTRA"; fi

# Both "--flag value" and "--flag=value" are accepted.
while [ "$#" -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --preemptible) PREEMPTIBLE=1 ;;
    --*=*)
      # Re-dispatch --flag=value as --flag value.
      flag=${1%%=*} value=${1#*=}
      shift
      set -- "$flag" "$value" "$@"
      continue ;;
    --name) need_value "$@"; NAME=$2; shift ;;
    --zone) need_value "$@"; ZONE=$2; shift ;;
    --type) need_value "$@"; TYPE=$2; shift ;;
    --version) need_value "$@"; VERSION=$2; shift ;;
    --repo) need_value "$@"; REPO_URL=$2; shift ;;
    --ref) need_value "$@"; REF=$2; shift ;;
    --config) need_value "$@"; CONFIG=$2; shift ;;
    --workdir) need_value "$@"; WORKDIR=$2; shift ;;
    --extra) need_value "$@"; split_words "$2"; shift ;;
    --remote-dir) need_value "$@"; REMOTE_DIR=$2; shift ;;
    --python) need_value "$@"; PYTHON=$2; shift ;;
    --log-dir) need_value "$@"; LOG_DIR=$2; shift ;;
    --) shift; EXTRA_ARGS+=("$@"); break ;;
    -*) die_usage "unknown option: $1" ;;
    create | copy | install | run | stop | delete) STEPS+=("$1") ;;
    all) STEPS+=(create copy install run) ;;
    *) die_usage "unknown step: $1" ;;
  esac
  shift
done

[ "${#STEPS[@]}" -gt 0 ] || die_usage "no step given (create, copy, install, run, stop, delete or all)"

has_step() {
  local s
  for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}

# Check everything before the first command so that `all` never creates a TPU
# and then stops for a missing --config.
[ -n "$NAME" ] || die_usage "--name (or TPU_NAME) is required"
[ -n "$ZONE" ] || die_usage "--zone (or TPU_ZONE) is required"
if has_step create; then
  [ -n "$TYPE" ] || die_usage "create needs --type (or TPU_TYPE), e.g. v4-32"
  if [ -z "$VERSION" ]; then
    case $TYPE in
      v6e-*) VERSION=v2-alpha-tpuv6e ;;
      v5p-*) VERSION=v2-alpha-tpuv5 ;;
      v5litepod-* | v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
      v2-* | v3-* | v4-*) VERSION=tpu-ubuntu2204-base ;;
      *) die_usage "no default --version for --type $TYPE; give --version" ;;
    esac
  fi
  if [ "$SPOT" = 1 ] && [ "$PREEMPTIBLE" = 1 ]; then
    die_usage "--spot and --preemptible exclude each other"
  fi
fi
if has_step run; then
  [ -n "$CONFIG" ] || die_usage "run needs --config (or PIX2SEQ_CONFIG)"
  [ -n "$WORKDIR" ] || die_usage "run needs --workdir (or PIX2SEQ_WORKDIR)"
  case $WORKDIR in
    gs://*) ;;
    *) printf '%s: warning: --workdir %s is not on GCS; every worker writes its own local copy, and it is lost when the TPU is deleted\n' "$PROG" "$WORKDIR" >&2 ;;
  esac
fi
case $REMOTE_DIR in
  '' | /* | *..*) die_usage "--remote-dir must be a relative path below the home directory" ;;
esac

GCLOUD_TPU=(gcloud compute tpus tpu-vm)
ZONE_FLAG=("--zone=$ZONE")
# Code directory on the workers, as it is written in the worker scripts.
RDIR="\"\$HOME\"/$(shq "$REMOTE_DIR")"
# Worker-side log and pid files, used by `run` and `stop`.
RLOG='"$HOME"/pix2seq_d_jax_logs/run.log'
RPID='"$HOME"/pix2seq_d_jax_logs/run.pid'
SRC_TMP=''
# apt-get on the workers: unattended upgrades hold the dpkg lock for a while
# after a VM boots, and nothing may stop to ask questions (no terminal).
APT='sudo env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a apt-get -o DPkg::Lock::Timeout=600'

# ------------------------------------------------------- running commands --
# Run a one-line bash script on every worker.  `bash -c` so the script does not
# depend on the user's login shell, which sshd hands the --command string to.
ssh_all() {
  run_cmd "${GCLOUD_TPU[@]}" ssh "$NAME" "${ZONE_FLAG[@]}" --worker=all \
    "--command=bash -c $(shq "$1")"
}

cleanup() {
  if [ -n "$SRC_TMP" ]; then rm -rf "$SRC_TMP"; fi
}
trap cleanup EXIT

# ------------------------------------------------------------------- steps --
step_create() {
  local describe=("${GCLOUD_TPU[@]}" describe "$NAME" "${ZONE_FLAG[@]}" '--format=value(state)')
  # An existing TPU is reused, so rerunning `all` resumes instead of failing.
  if [ "$DRY_RUN" = 1 ]; then
    printf '+ %s  # create is skipped if the TPU exists\n' "$(shjoin "${describe[@]}")"
  else
    local state
    if state=$("${describe[@]}" 2>/dev/null); then
      case $state in
        PREEMPTED | TERMINATED)
          die "TPU $NAME is $state; delete it and create it again: $PROG --name $NAME --zone $ZONE ... delete all" ;;
      esac
      printf '%s: TPU %s exists (%s); not creating it\n' "$PROG" "$NAME" "$state" >&2
      return 0
    fi
  fi
  local args=("${GCLOUD_TPU[@]}" create "$NAME" "${ZONE_FLAG[@]}"
    "--accelerator-type=$TYPE" "--version=$VERSION")
  if [ "$SPOT" = 1 ]; then args+=(--spot); fi
  if [ "$PREEMPTIBLE" = 1 ]; then args+=(--preemptible); fi
  run_cmd "${args[@]}"
}

step_copy() {
  if [ -n "$REPO_URL" ]; then
    # Fetch the ref itself (branch, tag or commit) and check out FETCH_HEAD
    # detached: a rerun moves an existing clone to the ref's current commit and
    # keeps the (untracked) venv.
    ssh_all "$(join_lines 'set -euo pipefail' \
      "command -v git >/dev/null || { $APT update -q && $APT install -y -q git; }" \
      "[ -d $RDIR/.git ] || git clone --quiet --no-checkout $(shq "$REPO_URL") $RDIR" \
      "git -C $RDIR fetch --quiet origin $(shq "$REF")" \
      "git -C $RDIR checkout --quiet --force --detach FETCH_HEAD" \
      "git -C $RDIR log -1 --format='%H %s'")"
    return 0
  fi
  # Copy this checkout as a tarball of the files git counts as part of the tree
  # (tracked and untracked, not ignored ones such as .venv or runs/).
  local tarball
  if [ "$DRY_RUN" = 1 ]; then
    tarball='${TMPDIR:-/tmp}/pix2seq_d_jax.XXXXXX/src.tar.gz'
    printf '+ git -C %s ls-files -z --cached --others --exclude-standard | tar -czf %s -C %s --null -T -\n' \
      "$(shq "$REPO_ROOT")" "$tarball" "$(shq "$REPO_ROOT")"
  else
    git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1 ||
      die "$REPO_ROOT is not a git checkout; use --repo URL to clone instead"
    SRC_TMP=$(mktemp -d "${TMPDIR:-/tmp}/pix2seq_d_jax.XXXXXX")
    tarball=$SRC_TMP/src.tar.gz
    # Tracked files deleted in the working tree would make tar fail.
    local f list=$SRC_TMP/files
    : >"$list"
    while IFS= read -r -d '' f; do
      if [ -e "$REPO_ROOT/$f" ]; then printf '%s\0' "$f" >>"$list"; fi
    done < <(git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard)
    printf '+ tar -czf %s -C %s --null -T <(git ls-files)\n' "$(shq "$tarball")" "$(shq "$REPO_ROOT")" >&2
    tar -czf "$tarball" -C "$REPO_ROOT" --null -T "$list"
  fi
  run_cmd "${GCLOUD_TPU[@]}" scp "$tarball" "$NAME:pix2seq_d_jax-src.tar.gz" "${ZONE_FLAG[@]}" --worker=all
  ssh_all "$(join_lines 'set -euo pipefail' \
    "mkdir -p $RDIR" \
    "tar -xzf \"\$HOME\"/pix2seq_d_jax-src.tar.gz -C $RDIR" \
    "rm -f \"\$HOME\"/pix2seq_d_jax-src.tar.gz")"
}

step_install() {
  local py apt=$APT
  py=$(shq "$PYTHON")
  # Ubuntu 22.04 (all TPU runtimes) ships Python 3.10; the package needs 3.11+.
  # The jax[tpu] version is read on the worker from the lock file copied there,
  # so code and TPU runtime never disagree.
  ssh_all "$(join_lines 'set -euo pipefail' \
    "cd $RDIR" \
    "if ! command -v $py >/dev/null; then $apt update -q && $apt install -y -q software-properties-common && sudo add-apt-repository -y ppa:deadsnakes/ppa && $apt install -y -q $py $py-venv; fi" \
    "[ -x .venv/bin/python ] || $py -m venv .venv" \
    '.venv/bin/pip install -q --upgrade pip' \
    '.venv/bin/pip install -q -r requirements-lock.txt -e .' \
    'jax_version=$(sed -n "s/^jax==//p" requirements-lock.txt)' \
    '.venv/bin/pip install -q "jax[tpu]==$jax_version" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html' \
    ".venv/bin/python -c 'import jax; print(jax.__version__, jax.local_device_count(), \"local of\", jax.device_count(), \"TPU devices\")'")"
}

# The script every worker runs for `run`.  Each worker
# - refuses to start a second training next to a running one (the TPU chips can
#   only be held by one process);
# - appends its output to a log file on the worker, which survives a lost
#   connection (tee -p keeps writing the file after the ssh pipe breaks, so a
#   dropped laptop connection does not stop training);
# - prefixes each line it prints with its worker number (WORKER_ID in the
#   VM's tpu-env metadata, else the -w-N end of TPU VM host names), so that the one
#   gcloud --worker=all stream can be split into one local file per worker;
# - records the training process id (the subshell's pid, kept by exec) for
#   `stop`, and forwards SIGTERM/SIGINT/SIGHUP to training, which writes a
#   checkpoint and exits;
# - removes that record only once training has exited AND its log writers
#   (tee, sed) have written its last lines: a stop that waits for the record to
#   go (Ctrl-C during `run`) then knows the checkpoint message is in run.log.
run_script() {
  local main
  main_command .venv/bin/python
  main=$(shjoin "${MAIN[@]}")
  join_lines 'set -uo pipefail' \
    "cd $RDIR || exit 1" \
    'mkdir -p "$HOME"/pix2seq_d_jax_logs' \
    "if [ -f $RPID ] && kill -0 \"\$(cat $RPID)\" 2>/dev/null; then echo \"training is already running (pid \$(cat $RPID)); stop it first\" >&2; exit 1; fi" \
    "worker=\$(curl -sf --max-time 10 -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/tpu-env | sed -n \"s/^WORKER_ID: *'*\\([0-9][0-9]*\\).*/\\1/p\")" \
    'if [ -z "$worker" ]; then h=$(hostname); case $h in *-w-[0-9]*) worker=${h##*-w-} ;; *) worker=0 ;; esac; fi' \
    'export PYTHONUNBUFFERED=1' \
    "{ ( echo \$BASHPID > $RPID; exec $main ) 2>&1 < /dev/null | tee -p -a $RLOG | sed -u \"s/^/[worker \$worker] /\"; exit \"\${PIPESTATUS[0]}\"; } &" \
    'pid=$!' \
    "trap 'kill -TERM \"\$(cat $RPID 2>/dev/null)\" 2>/dev/null' TERM INT HUP" \
    'while :; do wait $pid; rc=$?; kill -0 $pid 2>/dev/null || break; done' \
    "rm -f $RPID" \
    'exit $rc'
}

step_run() {
  local logdir=$LOG_DIR script
  # Under runs/, which git ignores, so that `copy` does not ship old logs.
  [ -n "$logdir" ] || logdir=$REPO_ROOT/runs/tpu/$NAME-$(date +%Y%m%d-%H%M%S)
  script=$(run_script)
  run_cmd mkdir -p "$logdir"
  if [ "$DRY_RUN" = 1 ]; then
    ssh_all "$script"
    printf '# output split into %s/worker-<i>.log; worker 0 also to the terminal\n' "$(shq "$logdir")"
    return 0
  fi
  printf '%s: worker logs in %s/worker-<i>.log\n' "$PROG" "$logdir" >&2
  # Ctrl-C here stops training on every worker (it checkpoints first); a lost
  # connection does not.
  trap 'trap - INT TERM; printf "\n%s: stopping training on all workers\n" "$PROG" >&2; step_stop wait; exit 130' INT TERM
  # Lines without a worker prefix (gcloud and ssh messages) go to gcloud.log and
  # the terminal.
  local rc=0 awk=(awk)
  # mawk (Ubuntu's awk) reads a pipe in large blocks unless told otherwise,
  # which would hold the logs back.
  case $(awk -W version 2>&1 </dev/null) in *mawk*) awk=(awk -W interactive) ;; esac
  ssh_all "$script" 2>&1 | "${awk[@]}" -v dir="$logdir" '
    match($0, /^\[worker [0-9]+\] /) {
      w = substr($0, 9, RLENGTH - 10)
      line = substr($0, RLENGTH + 1)
      f = dir "/worker-" w ".log"
      print line >> f
      fflush(f)
      if (w == "0") { print line; fflush() }
      next
    }
    { f = dir "/gcloud.log"; print >> f; fflush(f); print; fflush() }' || rc=$?
  trap - INT TERM
  # 143: training got SIGTERM (stop, or a maintenance event) and checkpointed.
  if [ "$rc" = 143 ]; then
    printf '%s: training stopped after SIGTERM with a checkpoint; run the same command to resume\n' "$PROG" >&2
  fi
  return "$rc"
}

# `step_stop wait` (Ctrl-C during run) also waits, up to STOP_WAIT_S seconds,
# until each worker's training has checkpointed and exited (its run.pid record
# is removed only then), so the script does not return while checkpoints are
# still being written (e.g. before a `delete` of the VM).
STOP_WAIT_S=${STOP_WAIT_S:-600}
step_stop() {
  local wait_cmd=''
  if [ "${1:-}" = wait ]; then
    wait_cmd="; n=0; while [ -f $RPID ] && [ \$n -lt $((STOP_WAIT_S * 5)) ]; do sleep 0.2; n=\$((n + 1)); done; if [ -f $RPID ]; then echo \"training still running after ${STOP_WAIT_S}s\"; else echo training stopped; fi"
  fi
  ssh_all "if [ -f $RPID ] && kill -TERM \"\$(cat $RPID)\" 2>/dev/null; then echo sent SIGTERM to training$wait_cmd; else echo no training running; fi"
}

step_delete() {
  run_cmd "${GCLOUD_TPU[@]}" delete "$NAME" "${ZONE_FLAG[@]}" --quiet
}

for step in "${STEPS[@]}"; do
  "step_$step"
done
