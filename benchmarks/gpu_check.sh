#!/usr/bin/env bash
# The paper model on one GPU: training throughput, MFU, peak memory and sampling latency.
# Prepared for a lent GPU machine; never called by the tests. From the repository root:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (OUT_DIR default: $OUT, else /tmp/gpu_check)
#
# Environment (all optional):
#   PYTHON=python3         the interpreter; it needs a CUDA build of jax with flax, optax,
#                          orbax-checkpoint and ml-collections.
#   PEAK_TFLOPS=989        dense bf16 peak of one GPU in TFLOP/s, for MFU (H100 / H200 SXM: 989)
#   BATCH_HIGH=8           per-GPU batch of the 1024^2 / 512^2 train step
#   BATCH_LOW=32           per-GPU batch of the :stage=low step (batch 512 over 16 devices)
#   SAMPLE_BATCH=8         batch of the sampling latency runs
#   PART_TIMEOUT=240       seconds allowed to each part
#
# Installing jax: where pip reaches a registry, `pip install "jax[cuda12]==0.10.2"` (the locked
# version) is tried when the interpreter's jax sees no GPU. A machine without network access
# needs a CUDA jax already installed; wheels of anything else missing (e.g. ml-collections)
# placed in .whl/ are installed from there first, without network.
#
# Each part prints one JSON object (also written to OUT_DIR/NAME.json); a failing part prints
# its error and the script goes on to the next.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR="${1:-${OUT:-/tmp/gpu_check}}"
PY="${PYTHON:-python3}"
PEAK="${PEAK_TFLOPS:-989}"
BATCH_HIGH="${BATCH_HIGH:-8}"
BATCH_LOW="${BATCH_LOW:-32}"
SAMPLE_BATCH="${SAMPLE_BATCH:-8}"
PART_TIMEOUT="${PART_TIMEOUT:-240}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_check_site \
    .whl/*.whl && export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  echo "jax sees no GPU; trying pip install jax[cuda12]==0.10.2" >&2
  "$PY" -m pip install -q "jax[cuda12]==0.10.2" || { echo "no CUDA jax: stop" >&2; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import json, jax, flax; print(json.dumps({'jax': jax.__version__, 'flax': flax.__version__,
  'devices': [str(d.device_kind) for d in jax.devices()]}))" 2>/dev/null \
  || "$PY" -c "import jax; print(jax.__version__, jax.devices())"

PAPER=(--config=configs/coco_panoptic.py model.dtype=bfloat16 model.attention=auto)
part() {
  local name="$1"; shift
  echo "== $name: $*" >&2
  timeout "$PART_TIMEOUT" "$PY" "$@" > "$OUT_DIR/$name.json" 2> "$OUT_DIR/$name.err"
  local rc=$?
  if [ $rc -eq 0 ]; then cat "$OUT_DIR/$name.json"; else
    echo "{\"part\": \"$name\", \"error\": $rc}"; tail -5 "$OUT_DIR/$name.err" >&2; fi
}

# Training at the paper resolution (stage high: 1024^2 images, 512^2 masks) and the
# low-resolution stage's per-device share of batch 512, both with the shipped memory settings.
part train_high benchmarks/train_step.py "${PAPER[@]}" --steps=10 --peak_tflops="$PEAK" \
  train.batch_size="$BATCH_HIGH"
part train_low benchmarks/train_step.py --config=configs/coco_panoptic.py:stage=low \
  model.dtype=bfloat16 --steps=5 --peak_tflops="$PEAK" train.batch_size="$BATCH_LOW"
# Without rematerialisation, for its cost (may run out of memory at this batch: then it says so).
part train_high_noremat benchmarks/train_step.py "${PAPER[@]}" --steps=10 \
  --peak_tflops="$PEAK" train.batch_size="$BATCH_HIGH" model.remat=none
# Sampling latency at 1 / 5 / 10 / 20 steps (img/s = batch / seconds).
part sampling benchmarks/sampling.py "${PAPER[@]}" --batch="$SAMPLE_BATCH" --steps=1,5,10,20 \
  --repeats=3
