#!/usr/bin/env bash
# Every CUDA and Triton path of miue checked in ONE run of at most 9 minutes on a lent GPU
# machine (H100/H200: Python 3.12, torch 2.11, torchvision 0.26, triton 3.6, nvcc, no network),
# in stages with a time budget each (the PLAN below; they add up to 540 s):
#
#   preflight  versions, `import miue`, the card's name, capability and free memory
#   build      the extension with its CUDA kernels for the card's arch only (sm_90), every core;
#              meanwhile the Triton kernels of the tests compile (a warm-up, results informational)
#   graphs     Triton compiled (not interpreted), CUDA-graph capture of the PGD step, craft with graphs
#   compile    torch.compile(fullgraph=True) of each op; mode="reduce-overhead"
#   craft      one small craft_fast per backend against the reference backend
#   ops        every other test of tests/test_cuda.py (the op tests against the float64 reference)
#   memcheck   compute-sanitizer memcheck (PYTORCH_NO_CUDA_MEMORY_CACHING=1) on small op cases
#   racecheck  compute-sanitizer racecheck on one supcon and one grouped-normalize case
#   bench_ops  each variant verified against the float64 reference, then timed (short)
#   bench_craft  one round of `paper` and of `fast` on 10,000 CIFAR-shaped images, with and
#              without CUDA graphs, stating whether capture worked
#   bench_compat miue.compat's drop-in updates and SupConLoss on the card, each checked against the
#              original codebase's lines (bitwise for the updates), then timed beside them
#
# A stage may run until the plan's cumulative deadline (its own budget plus what earlier stages
# left unused), never into a later stage's budget; the whole run stays under 540 s. A stage cut
# by its time-out is reported as TIMEOUT, and the summary (what passed, failed and did not run)
# is printed and written to $OUT/summary.txt whatever happens, also when the script itself is
# interrupted (TERM/INT). compute-sanitizer refusing the device ("Device not supported", as on
# gVisor machines) is reported as NOT RUN, not as passed or failed. The script never changes the
# card's settings (no nvidia-smi -pm/-lgc/-ac, no reset).
#
# Without a GPU (what CI runs) every stage that can run without a card runs, CPU-sized: preflight,
# a check of the installed extension (CI builds it in scripts/test.sh), each test stage's
# selection of test_cuda.py (collected, every test skips; a selection that selects nothing fails),
# the sanitizer stages' selections (collected only), bench_ops --smoke with verification and a
# tiny bench_craft --capture-check, bench_compat --quick --only ops. About 1-2 minutes on 2 busy cores.
#
#   OUT=/tmp/out bash benchmarks/gpu_check.sh               # run (on the GPU machine, or here)
#   OUT=/tmp/out bash benchmarks/gpu_check.sh --pack        # then only summary.txt, gpu_check.log and
#                                                           # gpu_check.tar.gz (everything) stay in $OUT
#   bash benchmarks/gpu_check.sh --dry-run                  # the plan and its budgets
#   OUT=/tmp/out bash benchmarks/gpu_check.sh --only build,ops   # some stages (the others: NOT RUN)
#   OUT=/tmp/out bash benchmarks/gpu_check.sh --summary     # the summary of a run in $OUT again
#
# Writes under $OUT (default ./gpu_out): env.txt (versions, the card), environment.json (miue.env's
# record, after the build), <stage>.log for each stage,
# warmup.log, bench_ops.{json,md}, bench_craft.{json,md}, bench_compat.json, stages.tsv, gpu_check.json,
# summary.txt, gpu_check.log (the console) and gpu_check.tar.gz (all of it). Exits 1 when a stage
# failed, timed out or was cut, else 0. Commit what it writes under benchmarks/results/<card>-<date>/.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
SELF="$ROOT/benchmarks/gpu_check.sh"
TOTAL_LIMIT=540

# ------------------------------------------------------------------------------- the plan
# name|budget seconds|extra|what it checks. Used by --dry-run and by the run. A stage's time-out
# is its budget plus time earlier stages left unused (the plan's cumulative deadline), of which
# it may take all ("all") or at most `extra` seconds (the sanitizer stages, whose run time under
# instrumentation is the least predictable, so that they cannot starve the benchmarks).
PLAN=(
  "preflight|30|all|versions, import miue, the card (name, capability, free memory), nvcc, compute-sanitizer"
  "build|110|all|pip install -e . with the CUDA kernels for the card's arch (sm_90), MAX_JOBS=nproc; Triton warm-up beside it"
  "graphs|45|all|Triton compiled not interpreted; CUDA-graph capture of the PGD step; craft_fast with cuda_graphs"
  "compile|45|all|torch.compile(fullgraph=True) of each op, per backend; mode=reduce-overhead"
  "craft|35|all|one small craft_fast per backend (triton, cpp) against the reference backend"
  "ops|70|all|every other test of test_cuda.py (op tests against the float64 reference, opcheck, ...)"
  "memcheck|50|30|compute-sanitizer memcheck, PYTORCH_NO_CUDA_MEMORY_CACHING=1: small supcon/intra/normalize/pgd cases"
  "racecheck|35|20|compute-sanitizer racecheck: one supcon and one grouped-normalize case"
  "bench_ops|35|all|bench_ops.py: fp32+bf16, each variant verified against the float64 reference, then timed"
  "bench_craft|60|all|bench_craft.py --capture-check: paper and fast, 10,000 images, CUDA graphs on/off"
  "bench_compat|25|all|bench_compat.py --only ops on the card: miue.compat's updates and SupConLoss checked against the originals, then timed"
)

# test_cuda.py selections (-k): by test function name; tests/test_gpu_check.py checks the names
GRAPHS_TESTS="test_triton_compiled_not_interpreted or test_cuda_graph_capture_of_pgd_step or test_pgd_step_captured_with_a_device_step_and_host_eps or test_craft_with_cuda_graphs_matches_eager or test_craft_records_that_graphs_were_captured"
COMPILE_TESTS="test_compile_each_op or test_compile_reduce_overhead"
CRAFT_TESTS="test_craft_fast_matches_reference"
K_GRAPHS="$GRAPHS_TESTS"
K_COMPILE="$COMPILE_TESTS"
K_CRAFT="$CRAFT_TESTS"
K_OPS="not ($GRAPHS_TESTS or $COMPILE_TESTS or $CRAFT_TESTS)"
K_MEMCHECK="(test_supcon_cuda_fp32 and random-129-65-10) or (test_supcon_cuda_low_precision and 129-65-10-bfloat16) or (test_intra_and_grouped_normalize_cuda and 129-65-10) or test_out_of_range_labels_never_touch_memory_cuda or (test_pgd_cuda_bitwise and 512-uint8)"
K_RACECHECK="(test_supcon_cuda_fp32 and random-129-65-10) or (test_intra_and_grouped_normalize_cuda and 129-65-10)"
export K_GRAPHS K_COMPILE K_CRAFT K_OPS K_MEMCHECK K_RACECHECK

stage_names() { local s; for s in "${PLAN[@]}"; do echo "${s%%|*}"; done; }
stage_field() {  # stage_field NAME INDEX (1: budget, 2: extra, 3: what); GPU_CHECK_BUDGET_<name> overrides a budget (tests)
  local s over="GPU_CHECK_BUDGET_$1"
  if [ "$2" = 1 ] && [ -n "${!over:-}" ]; then echo "${!over}"; return; fi
  for s in "${PLAN[@]}"; do
    if [ "${s%%|*}" = "$1" ]; then echo "$s" | cut -d'|' -f$(($2 + 1)); return; fi
  done
}

# ------------------------------------------------------------------------------- summary
# stages.tsv: name<TAB>status<TAB>seconds<TAB>budget<TAB>note; status PASS, FAIL, TIMEOUT, CUT or NOT RUN
summary() {
  local out=$1 tsv="$1/stages.tsv" name status secs budget note line n_pass=0 n_fail=0 n_not=0 failed=""
  local used=0 total=0
  echo "============================ gpu_check summary ============================"
  [ -f "$out/mode.txt" ] && sed 's/^/  /' "$out/mode.txt"
  printf '  %-12s %-8s %9s  %s\n' stage status "s/budget" note
  for name in $(stage_names); do
    budget=$(stage_field "$name" 1)
    total=$((total + budget))
    line=$( [ -f "$tsv" ] && awk -F'\t' -v n="$name" '$1 == n' "$tsv" | tail -1)
    if [ -n "$line" ]; then
      IFS=$'\t' read -r _ status secs budget note <<<"$line"
    else
      status="NOT RUN"; secs=0; note="not reached (the run was cut before it)"
    fi
    used=$((used + secs))
    case "$status" in
      PASS) n_pass=$((n_pass + 1)) ;;
      "NOT RUN") n_not=$((n_not + 1)) ;;
      *) n_fail=$((n_fail + 1)); failed="$failed $name" ;;
    esac
    printf '  %-12s %-8s %4s/%-4s  %s\n' "$name" "$status" "$secs" "$budget" "${note:0:110}"
  done
  [ -f "$out/warmup.note" ] && echo "  (warm-up beside the build, informational: $(head -c 150 "$out/warmup.note"))"
  echo "  $n_pass passed, $n_fail failed, $n_not not run; ${used} s of the ${total} s plan; logs: $out"
  if [ "$n_fail" -gt 0 ]; then
    echo "gpu_check: FAILED:$failed"
    echo "==========================================================================="
    return 1
  fi
  echo "gpu_check: OK (no stage failed)"
  echo "==========================================================================="
  return 0
}

dry_run() {
  local total=0 name budget
  echo "gpu_check plan: a stage may also use time earlier stages left unused, never a later stage's budget;"
  echo "the run never exceeds the total"
  printf '  %-3s %-12s %6s  %s\n' "#" stage budget "what"
  local i=0
  for name in $(stage_names); do
    i=$((i + 1))
    budget=$(stage_field "$name" 1)
    total=$((total + budget))
    local extra
    extra=$(stage_field "$name" 2)
    [ "$extra" = all ] && extra="" || extra=" (+ at most ${extra} s of time left unused)"
    printf '  %-3s %-12s %5ss  %s\n' "$i" "$name" "$budget" "$(stage_field "$name" 3)$extra"
  done
  echo "  total: ${total} s (limit ${TOTAL_LIMIT} s = 9 minutes)"
  echo "  test_cuda.py selections (-k):"
  echo "    graphs:    $K_GRAPHS"
  echo "    compile:   $K_COMPILE"
  echo "    craft:     $K_CRAFT"
  echo "    ops:       $K_OPS"
  echo "    memcheck:  $K_MEMCHECK"
  echo "    racecheck: $K_RACECHECK"
  if [ "$total" -gt "$TOTAL_LIMIT" ]; then
    echo "gpu_check: the plan's budgets add up to ${total} s, over ${TOTAL_LIMIT} s" >&2
    return 1
  fi
  return 0
}

# ------------------------------------------------------------------------------- stage bodies
# Each runs in its own process (bash gpu_check.sh --stage NAME) under `timeout`, with its output
# in $OUT/NAME.log. Exit 0: PASS; 3: NOT RUN; anything else: FAIL. A one-line note for the
# summary goes to $OUT/NAME.note.
note() { echo "$*" > "$OUT/$STAGE.note"; }

pytest_counts() {  # the last pytest result line of a log, without decorations and time (not compute-sanitizer's)
  grep -vE '^=+ *[A-Za-z]' "$1" | grep -E '([0-9]+ (passed|failed|skipped|deselected|errors?|xfailed|xpassed))|no tests ran' | tail -1 \
    | sed -E 's/=+//g; s/ in [0-9.]+s.*$//; s/^ +//; s/ +$//'
}
count_of() { echo "$1" | grep -oE "[0-9]+ $2" | head -1 | cut -d' ' -f1; }

# run_tests K [XDIST_WORKERS]: the test_cuda.py tests that K selects
run_tests() {
  local k=$1 workers=${2:-0} extra=() rc line passed skipped failed
  if [ "$HAS_GPU" = 1 ] && [ "$workers" -gt 1 ] && "$PY" -c "import xdist" 2>/dev/null; then
    extra=(-n "$workers")
  fi
  # (tests compile tiny graphs: no pool of inductor compile workers per process)
  (cd tests && TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-1} \
     "$PY" -m pytest -q -rfEs -p no:cacheprovider "${extra[@]}" test_cuda.py -k "$k")
  rc=$?
  line=$(pytest_counts "$OUT/$STAGE.log")
  passed=$(count_of "$line" passed); skipped=$(count_of "$line" skipped); failed=$(count_of "$line" failed)
  local failing
  failing=$(grep -E '^(FAILED|ERROR) ' "$OUT/$STAGE.log" | head -3 | sed -E 's/ - .*//; s/^(FAILED|ERROR) test_cuda.py:://; s/^(FAILED|ERROR) //' | tr '\n' ' ')
  if [ "$rc" = 5 ]; then
    note "the selection ran no test (-k matched nothing: renamed tests?)"
    return 1
  fi
  if [ "$HAS_GPU" != 1 ]; then
    if [ "$rc" = 0 ] && [ "${skipped:-0}" -gt 0 ] && [ "${passed:-0}" = 0 ]; then
      note "no GPU: ${skipped} tests selected, all skipped (collection only)"
      return 0
    fi
    note "no GPU, expected every selected test to skip: ${line:-no pytest result line} (exit $rc)"
    return 1
  fi
  if [ "$rc" = 0 ] && [ "${passed:-0}" -gt 0 ]; then
    note "${line}${extra:+ (xdist -n $workers)}"
    return 0
  fi
  if [ "$rc" = 0 ]; then
    note "nothing passed: ${line}"
    return 1
  fi
  note "${line:-pytest exit $rc}${failing:+; first: $failing}"
  return "$rc"
}

stage_preflight() {
  local smi_gpu=0
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    if git rev-parse HEAD >/dev/null 2>&1; then
      echo "git: $(git rev-parse HEAD)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    else
      echo "git: no repository here (a copy of the working tree)"
    fi
    echo "host: $(uname -srm); cores: $(nproc)"
    echo "python: $PY"
    if command -v nvidia-smi >/dev/null 2>&1; then
      nvidia-smi -L 2>&1 | head -4
      nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,compute_cap --format=csv 2>&1 | head -3
      nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && smi_gpu=1
    else
      echo "nvidia-smi: not found"
    fi
    if command -v nvcc >/dev/null 2>&1; then echo "nvcc: $(nvcc --version | grep -i release)"; else echo "nvcc: not found"; fi
    local cs
    cs=$(find_sanitizer)
    if [ -n "$cs" ]; then echo "compute-sanitizer: $cs ($("$cs" --version 2>&1 | grep -i version | head -1))"; else echo "compute-sanitizer: not found"; fi
    echo "ninja: $(PATH="$(dirname "$PY"):$PATH" command -v ninja || echo 'not found')"
  } > "$OUT/env.txt" 2>&1
  cat "$OUT/env.txt"
  SMI_GPU=$smi_gpu "$PY" - <<'PYEOF' 2>&1 | tee -a "$OUT/env.txt"
import os, platform, sys
problems, notes = [], []
print("python", platform.python_version())
try:
    import torch
except Exception as exc:
    print("torch: import failed:", exc)
    sys.exit(1)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
versions = {"python": platform.python_version(), "torch": torch.__version__}
for mod in ("torchvision", "triton", "numpy"):
    try:
        versions[mod] = __import__(mod).__version__
    except Exception as exc:  # noqa: BLE001
        versions[mod] = None
        problems.append(f"{mod} does not import ({type(exc).__name__}: {exc})")
    print(mod, versions[mod])
expected = {"python": "3.12", "torch": "2.11", "torchvision": "0.26", "triton": "3.6"}
other = [f"{k} {versions.get(k)} (lent machines: {v})" for k, v in expected.items()
         if not str(versions.get(k) or "").startswith(v)]
if other:
    notes.append("not the lent machines' versions: " + ", ".join(other))
card = "no GPU"
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info(0)
    cap = torch.cuda.get_device_capability(0)
    card = f"{p.name}, sm_{cap[0]}{cap[1]}, {p.multi_processor_count} SMs, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free"
    print("card:", card, "| devices:", torch.cuda.device_count())
    if free < 8 * 2**30:
        problems.append(f"only {free / 2**30:.1f} GiB free on the card")
elif os.environ.get("SMI_GPU") == "1":
    problems.append("nvidia-smi lists a GPU but torch.cuda.is_available() is False")
try:  # from the source tree (the working directory): on a fresh machine the build installs it next
    import warnings
    with warnings.catch_warnings():  # (no extension yet on a fresh machine: said below, in one line)
        warnings.simplefilter("ignore")
        import miue
        from miue.ops._extension import build_info, extension_status
        backends = miue.available_backends()
    print("miue", miue.__version__, "imports, from", os.path.dirname(miue.__file__))
    print("miue backends now:", backends, "| extension:", extension_status()[:160])
    print("miue build info:", build_info())
except Exception as exc:  # noqa: BLE001
    problems.append(f"import miue failed ({type(exc).__name__}: {exc})")
line = (f"card: {card} | python {versions['python']}, torch {versions['torch']} (CUDA {torch.version.cuda}), "
        f"torchvision {versions.get('torchvision')}, triton {versions.get('triton')}")
print("summary:", line)
for n in notes:
    print("note:", n)
for p in problems:
    print("PROBLEM:", p)
with open(os.path.join(os.environ["OUT"], "preflight.note"), "w") as fh:
    fh.write(("; ".join(problems) if problems else "; ".join(notes) if notes else "versions and card as expected") + "\n")
with open(os.path.join(os.environ["OUT"], "mode.txt"), "a") as fh:
    fh.write(line + "\n")
sys.exit(1 if problems else 0)
PYEOF
}

find_sanitizer() {
  local c
  for c in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
           "${CUDA_HOME:-/usr/local/cuda}/compute-sanitizer/compute-sanitizer"; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return; fi
  done
}

check_extension() {  # the installed extension: loads, and (on a GPU) carries CUDA kernels; both backends run on CUDA
  (cd tests && "$PY" - <<'PYEOF')
import os, sys
import torch
import miue
from miue.ops._backend import backend_supports
from miue.ops._extension import build_info, cpp_has_cuda, extension_status
gpu = os.environ.get("HAS_GPU") == "1"
print("backends:", miue.available_backends(), "| extension:", extension_status(), "| build info:", build_info())
problems = []
if not backend_supports("cpp", torch.device("cpu")):
    problems.append("the extension (cpp backend) does not load")
if gpu:
    dev = torch.device("cuda")
    if not cpp_has_cuda():
        problems.append("the extension has no CUDA kernels")
    for b in ("cpp", "triton"):
        if not backend_supports(b, dev):
            problems.append(f"backend {b} does not run on CUDA tensors")
import json
from miue.env import environment  # the one environment record (miue info, the demo, the benchmarks)
with open(os.path.join(os.environ["OUT"], "environment.json"), "w") as fh:
    json.dump(environment(), fh, indent=1)
msg = "; ".join(problems) or ("cpp CPU+CUDA kernels and triton on CUDA" if gpu else
                              f"no GPU: not rebuilt (CI builds it in scripts/test.sh); extension: {extension_status()}")
with open(os.path.join(os.environ["OUT"], "build.note"), "w") as fh:
    fh.write(msg + "\n")
print(msg)
sys.exit(1 if problems else 0)
PYEOF
}

stage_build() {
  if [ "$HAS_GPU" != 1 ]; then
    check_extension
    return $?
  fi
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  export PATH="$(dirname "$PY"):$PATH"  # ninja and friends beside the interpreter
  if [ -z "${CUDA_HOME:-}" ]; then  # the toolkit: /usr/local/cuda, else the folder above nvcc (links resolved)
    if [ -x /usr/local/cuda/bin/nvcc ]; then CUDA_HOME=/usr/local/cuda
    elif command -v nvcc >/dev/null 2>&1; then CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    else CUDA_HOME=/usr/local/cuda; fi
  fi
  export CUDA_HOME
  # an interpreter whose site-packages cannot be written (a read-only image): install into an
  # overlay venv that sees its packages; the later stages use that venv's python ($OUT/python.txt)
  if [ -n "${GPU_CHECK_OVERLAY:-}" ] || [ "$("$PY" -c 'import os, sysconfig
print(int(os.access(sysconfig.get_paths()["purelib"], os.W_OK)))' 2>/dev/null)" != 1 ]; then
    local venv=${GPU_CHECK_OVERLAY:-/tmp/miue-gpu-check-venv} site
    echo "--- $PY cannot install into its site-packages: an overlay venv at $venv that sees its packages"
    rm -rf "$venv"
    if ! "$PY" -m venv --without-pip "$venv"; then note "cannot create an overlay venv at $venv"; return 1; fi
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PY" -c 'import site; print("\n".join(site.getsitepackages()))' > "$site/zz_gpu_check_base.pth"
    PY="$venv/bin/python"
    echo "$PY" > "$OUT/python.txt"
    "$PY" -c "import torch, pip, setuptools; print('overlay sees torch', torch.__version__)" || { note "the overlay venv does not see torch/pip/setuptools"; return 1; }
  fi
  local pip=("$PY" -m pip install --no-build-isolation --no-deps --no-index)
  # 1. a pure-Python editable install (seconds), so that the Triton warm-up can import miue while
  #    the extension compiles; the warm-up never loads the extension (MIUE_SKIP_EXT=1)
  echo "--- pure-Python editable install (for the warm-up)"
  WARM=""
  if MIUE_SKIP_EXT=1 "${pip[@]}" -e . > "$OUT/build-pure.log" 2>&1; then
    echo "--- Triton warm-up in the background, its own process group (log: warmup.log)"
    local workers=1
    "$PY" -c "import xdist" 2>/dev/null && workers=6
    local wargs=()
    [ "$workers" -gt 1 ] && wargs=(-n "$workers")
    (cd tests && MIUE_SKIP_EXT=1 TORCHINDUCTOR_COMPILE_THREADS=1 exec setsid timeout -k 2 "${STAGE_LEFT:-100}" \
       "$PY" -m pytest -q -p no:cacheprovider "${wargs[@]}" test_cuda.py -k "triton and not test_compile_") \
       > "$OUT/warmup.log" 2>&1 &
    WARM=$!
    trap 'if [ -n "$WARM" ]; then kill -TERM -- -"$WARM" 2>/dev/null; fi' EXIT
    trap 'exit 143' TERM INT
  else
    echo "(the pure-Python install failed: no warm-up; see build-pure.log)"
  fi
  cat "$OUT/build-pure.log" >> "$OUT/build.log" 2>/dev/null; rm -f "$OUT/build-pure.log"
  # 2. the extension with its CUDA kernels, for this card's arch only
  echo "--- build: TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$(nproc) CUDA_HOME=$CUDA_HOME"
  local t=$(date +%s)
  MIUE_BUILD_CUDA=1 MIUE_REQUIRE_EXT=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS=$(nproc) "${pip[@]}" -v -e . >> "$OUT/build.log" 2>&1
  local rc=$?
  echo "build exit $rc after $(( $(date +%s) - t )) s (compiler output: build.log)"
  if [ -n "$WARM" ]; then
    kill -TERM -- -"$WARM" 2>/dev/null
    wait "$WARM" 2>/dev/null
    local wl
    wl=$(pytest_counts "$OUT/warmup.log")
    echo "${wl:-no result before the build ended} (beside the build, stopped at its end)" > "$OUT/warmup.note"
    echo "warm-up: $(cat "$OUT/warmup.note")"
    WARM=""
  fi
  if [ "$rc" != 0 ]; then
    tail -25 "$OUT/build.log"
    note "pip install -e . failed (exit $rc): see build.log"
    return 1
  fi
  check_extension
}

stage_graphs() { run_tests "$K_GRAPHS" 0; }
stage_compile() { run_tests "$K_COMPILE" 4; }
stage_craft() { run_tests "$K_CRAFT" 0; }
stage_ops() { run_tests "$K_OPS" 8; }

# sanitize TOOL K ARGS...: compute-sanitizer over the test_cuda.py tests K selects
sanitize() {
  local tool=$1 k=$2; shift 2
  if [ "$HAS_GPU" != 1 ]; then
    # no card: only check that the selection selects tests (collected; every test skips)
    (cd tests && "$PY" -m pytest -q -p no:cacheprovider --collect-only test_cuda.py -k "$k")
    local n
    n=$(grep -cE '::test_' "$OUT/$STAGE.log")
    if [ "${n:-0}" -gt 0 ]; then note "no GPU: not run (its selection collects $n tests)"; return 3; fi
    note "its selection collects no test (-k matched nothing: renamed tests?)"
    return 1
  fi
  local cs
  cs=$(find_sanitizer)
  if [ -z "$cs" ]; then note "compute-sanitizer not found"; return 3; fi
  # (--launch-timeout: python, torch and pytest start before the first CUDA call; the default 10 s is short)
  (cd tests && "$cs" --tool "$tool" --error-exitcode 99 --launch-timeout 60 "$@" \
     "$PY" -m pytest -q -rfEs -p no:cacheprovider test_cuda.py -k "$k")
  local rc=$?
  local log="$OUT/$STAGE.log"
  if grep -qiE 'device not supported|not supported on this device' "$log"; then
    note "compute-sanitizer refused the device: $(grep -iE -m1 'not supported' "$log" | sed 's/^=* *//' | head -c 90)"
    return 3
  fi
  local tests sanit
  tests=$(pytest_counts "$log")
  sanit=$(grep -E '(ERROR|RACECHECK) SUMMARY' "$log" | tail -1 | sed 's/^=* *//')
  if [ "$rc" = 99 ]; then
    local where
    where=$(grep -oE '(in|at) [A-Za-z_][A-Za-z0-9_:<>]*kernel[A-Za-z0-9_<>]*' "$log" | sort | uniq -c | sort -rn | head -3 | awk '{print $3}' | tr '\n' ' ')
    note "${sanit:-errors found} ${where:+in: $where}| tests: ${tests}"
    return 1
  fi
  if [ "$rc" = 0 ] && [ "$(count_of "$tests" passed)" != "" ]; then
    note "${sanit:-no report} | tests: ${tests}"
    return 0
  fi
  note "exit $rc | ${sanit:-no sanitizer report} | tests: ${tests:-none}"
  return 1
}

# (--report-api-errors no: a failed API call that torch expects, such as a not-ready query, is no memory error)
stage_memcheck() { PYTORCH_NO_CUDA_MEMORY_CACHING=1 sanitize memcheck "$K_MEMCHECK" --report-api-errors no --print-limit 20; }
stage_racecheck() {
  local mc
  mc=$(awk -F'\t' '$1 == "memcheck" {print $5}' "$OUT/stages.tsv" 2>/dev/null | tail -1)
  if [[ "$mc" == *"refused the device"* ]]; then
    note "not run: memcheck: $mc"
    return 3
  fi
  sanitize racecheck "$K_RACECHECK" --racecheck-report all --report-api-errors no --print-limit 20
}

stage_bench_ops() {
  local args
  if [ "$HAS_GPU" = 1 ]; then
    args=(--dtypes float32,bfloat16 --variants official,eager,triton,cpp --rep 30)
  else
    args=(--smoke --min-time 0.02 --variants official,eager,cpp)
  fi
  (cd tests && "$PY" ../benchmarks/bench_ops.py "${args[@]}" --json "$OUT/bench_ops.json" --md "$OUT/bench_ops.md")
  local rc=$?
  local v
  v=$(grep -E '^# verification:' "$OUT/$STAGE.log" | tail -1 | sed 's/^# verification: //')
  if [ "$rc" = 0 ]; then note "verified: ${v:-?}"; return 0; fi
  note "exit $rc; ${v:-no verification line}; $(grep -cE '^#   ' "$OUT/$STAGE.log") errors (see bench_ops.log)"
  return 1
}

stage_bench_craft() {
  local args
  if [ "$HAS_GPU" = 1 ]; then
    args=(--capture-check --n 10000)
  else
    args=(--capture-check --n 256 --arch cnn-small --pgd-steps 2 --no-compile)
  fi
  (cd tests && "$PY" ../benchmarks/bench_craft.py "${args[@]}" --json "$OUT/bench_craft.json" --md "$OUT/bench_craft.md")
  local rc=$?
  local c
  c=$(grep -E '^# capture:' "$OUT/$STAGE.log" | tail -1 | sed 's/^# capture: //')
  if [ "$rc" = 0 ]; then note "capture: ${c:-?}"; return 0; fi
  local p
  p=$(grep -E '^# PROBLEMS:' "$OUT/$STAGE.log" | tail -1 | sed 's/^# PROBLEMS: //')
  note "exit $rc; ${p:-${c:-cut before the summary: see bench_craft.json for the runs that finished}}"
  return 1
}

stage_bench_compat() {
  local args
  if [ "$HAS_GPU" = 1 ]; then
    args=(--only ops --device cuda --no-compile)
  else
    args=(--quick --only ops)
  fi
  (cd tests && "$PY" ../benchmarks/bench_compat.py "${args[@]}" --json "$OUT/bench_compat.json")
  local rc=$?
  local v
  v=$(grep -E '^# verification:' "$OUT/$STAGE.log" | tail -1 | sed 's/^# verification: //')
  note "${v:-exit $rc before its verification line}"
  return $rc
}

# ------------------------------------------------------------------------------- arguments
MODE=run
ONLY=""
PACK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) MODE=dry ;;
    --summary) MODE=summary ;;
    --pack) PACK=1 ;;
    --only) ONLY=",$2,"; shift ;;
    --only=*) ONLY=",${1#--only=},"; ;;
    --stage) MODE=stage; STAGE=$2; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

OUT=${OUT:-$ROOT/gpu_out}
case "$OUT" in /*) ;; *) OUT="$ROOT/$OUT" ;; esac
export OUT

if [ "$MODE" = dry ]; then dry_run; exit $?; fi
if [ "$MODE" = summary ]; then summary "$OUT"; exit $?; fi
if [ "$MODE" = stage ]; then
  export STAGE
  fake="GPU_CHECK_FAKE_$STAGE"  # tests/test_gpu_check.py: a shell command instead of the stage's body
  if [ -n "${!fake:-}" ]; then eval "${!fake}"; exit $?; fi
  "stage_$STAGE"
  exit $?
fi

# ------------------------------------------------------------------------------- the run
mkdir -p "$OUT" || exit 2
rm -f "$OUT"/*.note "$OUT/stages.tsv" "$OUT/mode.txt" "$OUT/summary.txt" "$OUT/gpu_check.tar.gz" "$OUT/python.txt"
LOG="$OUT/gpu_check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s)

# the interpreter: $PYTHON; else python3 on a GPU machine (the lent ones hold torch there), else
# this checkout's .venv when there is one
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then PY=python3
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
PY=$(command -v "$PY" || echo "$PY")
case "$PY" in /*) ;; *) PY="$ROOT/$PY" ;; esac
# a GPU: what torch says (tests/conftest.py decides TRITON_INTERPRET the same way); the arch to build
read -r HAS_GPU ARCH < <("$PY" -c "import torch
ok = torch.cuda.is_available()
print(int(ok), '%d.%d' % torch.cuda.get_device_capability(0) if ok else '-')" 2>/dev/null || echo "0 -")
HAS_GPU=${HAS_GPU:-0}
[ "$HAS_GPU" = 1 ] || ARCH=-
export PY HAS_GPU ARCH PYTHONUNBUFFERED=1
# Time-outs are the card's plan on a GPU. Without one (the CI rehearsal on 2 busy CPU cores) they
# are SLACK times the plan: the rehearsal checks that every stage runs, not the card's timing
# (importing torch, torchvision, triton and miue alone took 22 s of preflight's 30 s there).
SLACK=${GPU_CHECK_SLACK:-$([ "$HAS_GPU" = 1 ] && echo 1 || echo 3)}
if [ "$HAS_GPU" = 1 ]; then
  unset TRITON_INTERPRET MIUE_TRITON_TILES  # the Triton kernels must compile for the card
  echo "mode: GPU (arch ${ARCH}: building for TORCH_CUDA_ARCH_LIST=${ARCH}); python $PY" > "$OUT/mode.txt"
else
  echo "mode: no GPU (rehearsal: nothing on a card is checked); python $PY" > "$OUT/mode.txt"
fi
echo "gpu_check: $(cat "$OUT/mode.txt"); out $OUT; plan ${TOTAL_LIMIT} s$([ "$SLACK" = 1 ] || echo " (time-outs × $SLACK without a GPU)")"

CHILD=""
CURRENT=""
CURRENT_START=0
SUMMARY_DONE=0

record() {  # record NAME STATUS SECONDS NOTE
  local budget
  budget=$(stage_field "$1" 1)
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$budget" "$(printf '%s' "$4" | tr '\t\n' '  ' | sed 's/ *$//')" >> "$OUT/stages.tsv"
}

finish() {
  [ "$SUMMARY_DONE" = 1 ] && return
  SUMMARY_DONE=1
  summary "$OUT" > "$OUT/summary.txt"
  local rc=$?
  if [ -n "$PY" ] && [ -f "$OUT/stages.tsv" ]; then  # the same as JSON, with the versions and the card
    "$PY" - "$OUT" <<'PYEOF' 2>/dev/null
import json, os, sys
out = sys.argv[1]
rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(out, "stages.tsv")) if l.strip()]
env = open(os.path.join(out, "env.txt")).read() if os.path.exists(os.path.join(out, "env.txt")) else ""
mode = open(os.path.join(out, "mode.txt")).read() if os.path.exists(os.path.join(out, "mode.txt")) else ""
json.dump({"mode": mode.strip().splitlines(), "env": env.splitlines(),
           "stages": [dict(zip(("stage", "status", "seconds", "budget", "note"), r)) for r in rows]},
          open(os.path.join(out, "gpu_check.json"), "w"), indent=1)
PYEOF
  fi
  cat "$OUT/summary.txt"
  (cd "$OUT" && tar czf gpu_check.tar.gz --exclude=gpu_check.tar.gz -- * 2>/dev/null)
  if [ "$PACK" = 1 ]; then
    (cd "$OUT" && find . -maxdepth 1 -type f ! -name summary.txt ! -name gpu_check.log ! -name gpu_check.tar.gz -delete)
  fi
  return $rc
}

on_signal() {
  if [ -n "$CHILD" ]; then
    kill -TERM "$CHILD" 2>/dev/null
    wait "$CHILD" 2>/dev/null
    record "$CURRENT" CUT $(( $(date +%s) - CURRENT_START )) "the run was interrupted during this stage"
    CHILD=""
  fi
  echo "gpu_check: interrupted"
  finish
  exit 1
}
trap on_signal TERM INT HUP
trap 'finish; exit 1' EXIT  # an unexpected exit (the normal end removes this trap)

deadline=0
for name in $(stage_names); do
  budget=$(stage_field "$name" 1)
  deadline=$((deadline + budget * SLACK))
  if [ -n "$ONLY" ] && [[ "$ONLY" != *",$name,"* ]]; then
    record "$name" "NOT RUN" 0 "not selected (--only)"
    continue
  fi
  now=$(date +%s)
  left=$((T0 + deadline - now))
  extra=$(stage_field "$name" 2)
  if [ "$extra" != all ] && [ "$left" -gt $(((budget + extra) * SLACK)) ]; then left=$(((budget + extra) * SLACK)); fi
  if [ "$left" -lt 5 ]; then
    record "$name" "NOT RUN" 0 "no time left in the plan"
    echo "=== [$((now - T0))s] $name: NOT RUN (no time left)"
    continue
  fi
  echo "=== [$((now - T0))s] $name (budget ${budget} s, time-out ${left} s): $(stage_field "$name" 3)"
  rm -f "$OUT/$name.note"
  CURRENT=$name
  CURRENT_START=$now
  STAGE_LEFT=$left timeout -k 5 "$left" bash "$SELF" --stage "$name" > "$OUT/$name.log" 2>&1 &
  CHILD=$!
  wait "$CHILD"
  rc=$?
  CHILD=""
  secs=$(( $(date +%s) - now ))
  if [ -s "$OUT/python.txt" ] && [ "$(cat "$OUT/python.txt")" != "$PY" ]; then  # the build's overlay venv
    PY=$(cat "$OUT/python.txt"); export PY
    echo "python for the next stages: $PY (an overlay venv)" | tee -a "$OUT/mode.txt"
  fi
  stage_note=$(head -c 300 "$OUT/$name.note" 2>/dev/null | head -1)
  if [ "$rc" = 0 ]; then status=PASS
  elif [ "$rc" = 3 ]; then status="NOT RUN"
  elif { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && [ "$secs" -ge $((left - 1)) ]; then
    status=TIMEOUT
    last=$(grep -v '^\s*$' "$OUT/$name.log" | tail -1 | cut -c1-120)
    stage_note="cut after ${secs} s${stage_note:+; $stage_note}${last:+; last output: $last}"
  else status=FAIL; fi
  [ "$status" = FAIL ] && [ -z "$stage_note" ] && stage_note="exit $rc"
  record "$name" "$status" "$secs" "$stage_note"
  rm -f "$OUT/$name.note"
  echo "    -> $status in ${secs} s${stage_note:+: $stage_note}"
  if [ "$status" = FAIL ] || [ "$status" = TIMEOUT ]; then
    tail -12 "$OUT/$name.log" | cut -c1-200 | sed 's/^/    | /'
  fi
done
CURRENT=""
finish
rc=$?
trap - EXIT
exit $rc
