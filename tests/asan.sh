#!/usr/bin/env bash
# Build the C++ CPU kernels with AddressSanitizer in a private copy of the tree and fuzz
# every op (random sizes, strides, dtypes, huge and negative labels): any out-of-bounds
# read or write aborts the run. Called by .ci/run after the tests.
#
#   bash tests/asan.sh [iterations]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(realpath -m "${MIUE_VENV:-.venv}")
PY="$VENV/bin/python"
[ -x "$PY" ] || PY=python3
ITER=${1:-300}
BUILD=$(mktemp -d /tmp/miue-asan.XXXXXX)
trap 'rm -rf "$BUILD"' EXIT
tar --exclude='*.so' --exclude='__pycache__' --exclude='.hypothesis' -cf - miue csrc kernels setup.py pyproject.toml README.md tests \
  | tar -xf - -C "$BUILD"
echo "asan.sh: building miue._C with -fsanitize=address in $BUILD"
(cd "$BUILD" && MIUE_ASAN=1 MIUE_BUILD_CUDA=0 MIUE_REQUIRE_EXT=1 "$PY" setup.py -q build_ext --inplace > build.log 2>&1) \
  || { tail -30 "$BUILD/build.log"; exit 1; }
# libstdc++ must be loaded with the ASan runtime (python does not link it), else ASan's
# __cxa_throw interceptor has no real function to call and C++ exceptions abort
LIBASAN="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
# libtriton's module initialisation trips ASan's exception interceptor: hide triton (the
# Triton kernels are not under test here; torch treats it as absent)
mkdir -p "$BUILD/_no_triton/triton"
echo 'raise ImportError("triton is hidden under AddressSanitizer")' > "$BUILD/_no_triton/triton/__init__.py"
for lib in $LIBASAN; do [ -e "$lib" ] || { echo "asan.sh: $lib not found"; exit 1; }; done
cd "$BUILD/tests"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
# the private copy must shadow the installed package
LD_PRELOAD="$LIBASAN" PYTHONPATH="$BUILD/_no_triton:$BUILD" "$PY" -c "import miue, sys; sys.exit(0 if miue.__file__.startswith('$BUILD') else 'asan.sh: miue resolves to ' + miue.__file__)"
echo "asan.sh: fuzzing ($ITER iterations) under AddressSanitizer"
LD_PRELOAD="$LIBASAN" PYTHONPATH="$BUILD/_no_triton:$BUILD" TRITON_INTERPRET=0 "$PY" fuzz_ops.py --iterations "$ITER"
