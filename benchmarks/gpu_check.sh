#!/usr/bin/env bash
# One prepared run on the GPU machine (torch 2.11, triton 3.6, nvcc 13, no network):
# builds the CUDA extension, runs the CUDA tests, runs the benchmarks, and writes logs and
# JSON under $OUT (at most 8 files: env.txt, build.log, test_cuda.log, sanitizer.log,
# bench_ops.{json,md}, bench_craft.{json,md} and gpu_check.log is 9: build.log is folded
# into gpu_check.log's tail when space is short). Budget: under 8 minutes in all.
#
#   OUT=/tmp/out bash benchmarks/gpu_check.sh        # on the GPU machine
#   OUT=/tmp/out bash benchmarks/gpu_check.sh        # here (no GPU): skips the build, runs quick CPU versions
#
# Commit what it writes under benchmarks/results/<card>-<date>/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && ! command -v nvidia-smi >/dev/null 2>&1 && PY=.venv/bin/python
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
stage() { echo "=== [$(( $(date +%s) - t0 ))s] $*" | tee -a "$LOG"; }

HAS_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then HAS_GPU=1; fi

stage "environment"
{
  date -u
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo '?')"
  [ "$HAS_GPU" = 1 ] && nvidia-smi
  command -v nvcc >/dev/null && nvcc --version | tail -2
  $PY -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  $PY -c "import triton; print('triton', triton.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >> "$LOG"

if [ "$HAS_GPU" = 1 ]; then
  stage "build (CUDA, sm_90)"
  export MIUE_BUILD_CUDA=1 MIUE_REQUIRE_EXT=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
  export MAX_JOBS=${MAX_JOBS:-16}
  timeout 300 $PY -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1
  echo "build exit: $?" | tee -a "$LOG"
  tail -5 "$OUT/build.log" >> "$LOG"
fi

stage "backends"
(cd tests && $PY -c "import miue, torch; print('backends', miue.available_backends()); from miue._backend import cpp_has_cuda; print('cpp has CUDA kernels:', cpp_has_cuda())") 2>&1 | tee -a "$LOG"

if [ "$HAS_GPU" = 1 ]; then
  stage "CUDA tests"
  (cd tests && timeout 240 $PY -m pytest -q -rs -p no:cacheprovider test_cuda.py) > "$OUT/test_cuda.log" 2>&1
  echo "test_cuda exit: $?" | tee -a "$LOG"
  tail -15 "$OUT/test_cuda.log" >> "$LOG"
  stage "compute-sanitizer (memcheck) over the CUDA op tests"
  if command -v compute-sanitizer >/dev/null 2>&1; then
    (cd tests && timeout 150 compute-sanitizer --tool memcheck --error-exitcode 99 $PY -m pytest -q -x -p no:cacheprovider \
      test_cuda.py -k "fp32 and (129 or 512-512) or out_of_range or bitwise and 512") > "$OUT/sanitizer.log" 2>&1
    echo "compute-sanitizer exit: $? (99 = memory errors found)" | tee -a "$LOG"
    tail -5 "$OUT/sanitizer.log" >> "$LOG"
  fi
  stage "bench_ops"
  timeout 200 $PY benchmarks/bench_ops.py --dtypes float32,bfloat16 --json "$OUT/bench_ops.json" --md "$OUT/bench_ops.md" 2>&1 | tee -a "$LOG"
  stage "bench_craft"
  timeout 240 $PY benchmarks/bench_craft.py --n 10000 --json "$OUT/bench_craft.json" --md "$OUT/bench_craft.md" 2>&1 | tee -a "$LOG"
else
  stage "no GPU: quick CPU run of the benchmark (debugging this script)"
  timeout 600 $PY benchmarks/bench_ops.py --quick --min-time 0.3 --json "$OUT/bench_ops.json" --md "$OUT/bench_ops.md" 2>&1 | tee -a "$LOG"
fi
stage "done"
ls -la "$OUT" | tee -a "$LOG"
