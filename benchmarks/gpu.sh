#!/usr/bin/env bash
# The GPU sections of the benchmarks, in one run, at the library's defaults (fp32 "fast" policy)
# unless a line says otherwise; PyTorch runs on the same GPU. Run from the repository root on a
# machine whose python3 has jax[cuda], flax, torch (CUDA) and transformers:
#     OUT=/tmp/gpu bash benchmarks/gpu.sh [SECTION...]    # default: all, in this order:
#     bert_forward generate train_step conformance bert_forward_bf16 conformance_bf16 sharded
# Each section has its own time limit and writes $OUT/<name>.json (stdout) and .err (stderr).
set -uo pipefail
OUT=${OUT:-/tmp/biomed-jax-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# JAX and PyTorch share the card: no up-front grab of 75 % of it by JAX.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3}

SECTIONS=${*:-bert_forward generate train_step conformance bert_forward_bf16 conformance_bf16 sharded}

section() {  # name seconds command...
  local name=$1 limit=$2
  shift 2
  [[ " $SECTIONS " == *" $name "* ]] || return 0
  echo "== $name (limit ${limit}s) $(date +%T)"
  timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.err"
  echo "rc=$? $(date +%T)"
  tail -c 1500 "$OUT/$name.json"
  echo
}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv
$PY -c "import jax, flax, torch, transformers; print(jax.__version__, flax.__version__, \
torch.__version__, transformers.__version__, jax.devices())"

section bert_forward 150 $PY benchmarks/bert_forward.py --shapes 1x128,8x128,8x512 \
  --repeats 20
section generate 200 $PY benchmarks/generate.py --cases greedy:1,greedy:4,beam5:1 --repeats 3
section train_step 190 $PY benchmarks/train_step.py --repeats 5 --no-memory
section conformance 150 $PY -m biomed_jax.cli conformance --fast --dtype float32 --quiet \
  --json "$OUT/conformance-report.json"
section bert_forward_bf16 60 $PY benchmarks/bert_forward.py --dtype bfloat16 \
  --shapes 8x512,32x512 --repeats 20 --peak-tflops 790
# bfloat16 at the fast policy: DEFAULT matmuls and cuDNN attention ("fused attention: " rows)
section conformance_bf16 150 $PY -m biomed_jax.cli conformance --fast --dtype bfloat16 --quiet \
  --only bert --only biogpt --json "$OUT/conformance-bf16-report.json"
section sharded 90 $PY benchmarks/sharded.py --gpu-only
