#!/usr/bin/env bash
# The main job: craft MI-UE (the demo preset: ResNet-8 surrogate, 50 PGD steps per image, bf16
# where native), EM as its authors published it, EM's loss on MI-UE's schedule and random noise
# for 10,000 Fashion-MNIST images (eps = 8/255), train two victims (SGD + crop + flip, and Adam)
# on clean data and on each released set, and the SGD victim on the JPEG-10-compressed release;
# print the table and write demo_out/{report.json,figure.png,*.npz}. Installs what it needs on a
# fresh machine (Debian's dataset-fashion-mnist, a .venv with torch 2.14.1 and this package).
#
#   bash scripts/demo.sh             # the full demo (about 15 minutes on 2 CPU cores; README has the measured time)
#   bash scripts/demo.sh --preset cpu  # 200 PGD steps per image (about 4x the crafting): the lowest MI-UE measured; against EM see the declared comparison (docs/effectiveness.md)
#   bash scripts/demo.sh --quick     # a shortened configuration (3,000 images), flagged as such
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=$(realpath -m "${MIUE_VENV:-.venv}")

if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${MIUE_DATA:-}" ]; then
  echo "demo.sh: installing Debian's dataset-fashion-mnist" >&2
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import miue, sys; sys.exit('cpp' not in miue.available_backends())" 2>/dev/null; }; then
  echo "demo.sh: installing torch and miue into $VENV" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade "setuptools>=70" wheel ninja pybind11
  "$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
  # the demo runs on the CPU: build the C++ kernels only (the tests also compile the CUDA ones)
  MIUE_BUILD_CUDA=${MIUE_BUILD_CUDA:-0} MIUE_REQUIRE_EXT=1 "$VENV/bin/python" -m pip install -q --no-build-isolation -e .
fi
exec "$VENV/bin/python" -m miue demo --out-dir "${MIUE_DEMO_OUT:-demo_out}" "$@"
