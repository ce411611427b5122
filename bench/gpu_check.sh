#!/usr/bin/env bash
# GPU checks in one go (< 8 minutes on one recent CUDA GPU): parity on CUDA (fp32), half-precision
# sampling sanity, the UNet step benchmark at 512x512 bf16 (eager and torch.compile) against
# diffusers, the training-iteration benchmark; then one table (bench/gpu_summary.py).
#
#   bash bench/gpu_check.sh                 # results in $OUT (device tool) or bench/results/gpu/
#   PY=.venv/bin/python bash bench/gpu_check.sh
# Each stage has its own time limit; a failed stage is reported and the others still run.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
R=${OUT:-bench/results}/gpu
mkdir -p "$R"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0
stage() {  # stage NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$R/$name.log" | grep -v -E "^Loading|it/s\]$" | tail -n 40
  local rc=${PIPESTATUS[0]}
  echo "=== $name: rc=$rc, $(( $(date +%s) - t0 )) s"
  [ "$rc" = 0 ] || status=1
}
"$PY" -c "import torch, sys; print(torch.__version__, torch.cuda.get_device_name(0)) if torch.cuda.is_available() else sys.exit('no CUDA device')" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

stage parity   90  "$PY" bench/gpu_parity.py --device cuda
stage sanity   120 "$PY" bench/gpu_sanity.py --device cuda --resolution 512 --json "$R/sanity_cuda_512.json"
stage unet_bf16 75 "$PY" bench/bench_unet.py --device cuda --dtype bf16 --resolution 512 --steps 0 --memory none \
                    --repeats 10 --warmup 2 --json "$R/unet_cuda_bf16_512.json"
stage unet_bf16_compile 150 "$PY" bench/bench_unet.py --device cuda --dtype bf16 --resolution 512 --steps 0 --memory none \
                    --repeats 10 --warmup 2 --compile --json "$R/unet_cuda_bf16_512_compile.json"
stage train    120 "$PY" bench/bench_train.py --device cuda --resolution 512 --batch 2 --repeats 5 --warmup 1 \
                    --json "$R/train_cuda_512.json"
"$PY" bench/gpu_summary.py "$R" | tee "$R/summary.txt"
exit $status
