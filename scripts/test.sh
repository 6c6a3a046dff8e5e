#!/usr/bin/env bash
# Install everything into ./.venv and run the test suite (the README's test command; CI runs it).
#
#   bash scripts/test.sh            # full install + tests
#   MIUE_SKIP_INSTALL=1 bash scripts/test.sh   # reuse an existing .venv, run tests only
#
# Fails if the compiled extension did not build, if the CUDA sources do not compile
# (when nvcc is present), or if no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=$(realpath -m "${MIUE_VENV:-.venv}")

if [ "${MIUE_SKIP_INSTALL:-0}" != "1" ]; then
  if [ -w /var/lib/apt/lists ] || [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
      || echo "test.sh: note: could not install dataset-fashion-mnist (tests that need it will skip)"
  fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade "setuptools>=70" wheel ninja pybind11
  "$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
  # CPU kernels always; the CUDA sources are compiled too when a toolkit is found, so a
  # compile error cannot land (they are only run on a GPU). CUDA_HOME is left as the user
  # has it: the build finds the toolkit and its runtime library as it does for users.
  export MIUE_REQUIRE_EXT=1
  if [ -z "${MIUE_BUILD_CUDA:-}" ]; then
    if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
      export MIUE_BUILD_CUDA=1
    else
      export MIUE_BUILD_CUDA=0
    fi
  fi
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  "$VENV/bin/python" -m pip install -q --no-build-isolation -e ".[test]"
fi

cd tests  # run from tests/ so that `import miue` resolves through the install, as users get it
"$VENV/bin/python" - <<'PYEOF'
import miue, sys
names = miue.available_backends()
print("miue backends:", names)
if "cpp" not in names:
    sys.exit("test.sh: the compiled extension (cpp backend) is not available")
PYEOF
# TRITON_INTERPRET: tests/conftest.py sets it where torch sees no GPU (the Triton kernels then
# run on CPU tensors); on a GPU machine the kernels are compiled, as users run them
set +e
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
