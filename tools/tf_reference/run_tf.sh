#!/usr/bin/env bash
# usage: run_tf.sh CFG WHAT XLA N [WARMUP]
#   CFG A|B, WHAT train|train_ema|encoder|decoder|infer, XLA 0|1, N timed calls,
#   WARMUP warm-up calls after the first (compile) call, default 1.
# Environment:
#   P2S_TF_CHECKOUT  (required) a checkout of google-research/pix2seq at commit
#                    eabd4e98f65f7627a0e727d11a4b9cbba916283d (README.md beside this script)
#   P2S_TF_PYTHON    the python of the TensorFlow 2.21 + tf-keras environment (default: python3)
#   QUIET_WAIT=S     wait up to S s for an idle machine before timing
#   AUTOGROUP_NICE=n write n to /proc/self/autogroup first (a positive n lowers this run's CPU
#                    priority against other sessions; a negative one needs root)
#   TF_ENABLE_ONEDNN_OPTS passes through unchanged (unset = TensorFlow's default).
# Prints one JSON line on stdout; diagnostics on stderr.
set -euo pipefail
H="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ $# -ge 4 ] || { sed -n 2,14p "$0"; exit 1; }
if [ -z "${P2S_TF_CHECKOUT:-}" ]; then
  echo "run_tf.sh: set P2S_TF_CHECKOUT to a checkout of google-research/pix2seq" \
       "(commit eabd4e98f65f7627a0e727d11a4b9cbba916283d)." >&2
  exit 1
fi
PY="${P2S_TF_PYTHON:-python3}"
command -v "$PY" >/dev/null || { echo "run_tf.sh: P2S_TF_PYTHON=$PY is not a program." >&2; exit 1; }
if [ -n "${AUTOGROUP_NICE:-}" ]; then echo "$AUTOGROUP_NICE" > /proc/self/autogroup; fi
export TF_USE_LEGACY_KERAS=1
export TF_CPP_MIN_LOG_LEVEL=2
exec "$PY" "$H/tf_bench.py" --checkout "$P2S_TF_CHECKOUT" --cfg "$1" --what "$2" --xla "$3" \
  --n "$4" --warmup "${5:-1}"
