#!/usr/bin/env bash
# Install checks, CPU only (CI runs this): from a clean copy of the source,
#   1. `pip wheel --no-build-isolation .`, then that wheel into a fresh venv;
#   2. `pip install --no-build-isolation .` (not editable);
#   3. an sdist (`python -m build --sdist`): it must carry csrc/ and kernels/; installed from the
#      tarball (a build outside the checkout);
# and in each, from outside the source tree: no warning at import, `cpp` among the backends,
# miue.kernels importable, the cpp kernels agree with the reference, `miue info` says the
# extension is loaded.
#
#   bash tests/install_check.sh          # about 4 minutes on 2 cores (two torch installs, two builds)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PINS=${MIUE_TORCH_PINS:-"torch==2.14.1 torchvision==0.29.1"}
WORK=$(mktemp -d /tmp/miue-install-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export MIUE_BUILD_CUDA=0 MIUE_REQUIRE_EXT=1  # CPU only: the CUDA build is tested by scripts/test.sh
unset MIUE_SKIP_EXT CUDA_HOME

# tracked and untracked files that git does not ignore: no .venv, no build/, no in-place miue/_C*.so
mkdir "$WORK/src"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$WORK/src"

check() {  # check <python> <label>
  (cd "$WORK" && "$1" - "$2" <<'PYEOF'
import sys
import warnings

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import miue
    import miue.kernels
ours = [str(w.message) for w in caught if str(w.message).startswith("miue")]
assert not ours, ours
import torch
from miue.ops._extension import extension_status

label = sys.argv[1]
assert "site-packages" in miue.__file__, f"{label}: miue imported from {miue.__file__}, not the installation"
names = miue.available_backends()
assert "cpp" in names, f"{label}: backends {names}"
x, y = torch.randn(64, 16, dtype=torch.float64), torch.arange(64) % 4
a, b = miue.supcon_loss(x, y, backend="cpp"), miue.supcon_loss(x, y, backend="reference")
assert torch.allclose(a, b, rtol=1e-10), (a, b)
print(f"install check ({label}): miue {miue.__version__} from {miue.__file__}; backends {names}; "
      f"{miue.kernels.__name__} imports; extension {extension_status()}")
PYEOF
  )
  "$(dirname "$1")/miue" info | grep -E "^(backends|extension) "
}

echo "--- build venv: torch, build tools, then the wheel"
"$PY" -m venv "$WORK/build"
"$WORK/build/bin/pip" install -q "setuptools>=70" wheel ninja pybind11 $TORCH_PINS
(cd "$WORK/src" && "$WORK/build/bin/pip" wheel -q --no-build-isolation --no-deps -w "$WORK/dist" .)
"$WORK/build/bin/python" - "$WORK"/dist/miue-*.whl <<'PYEOF'
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
missing = [n for n in ("miue/_build_info.json", "miue/craft/engine.py", "miue/kernels/__init__.py",
                        "miue/data/folder.py", "miue/evaluation/victims.py", "miue/victims.py") if n not in names]
if not any(n.startswith("miue/_C.") and n.endswith(".so") for n in names):
    missing.append("miue/_C*.so")
assert not missing, f"the wheel lacks {missing}"
print(f"{sys.argv[1]}: {len(names)} files, with the extension")
PYEOF

echo "--- pip install . (not editable), into the build venv"
(cd "$WORK/src" && "$WORK/build/bin/pip" install -q --no-build-isolation .)
check "$WORK/build/bin/python" "pip install ."

echo "--- a source distribution: it carries csrc/ (headers and .cu files) and kernels/, and builds"
"$WORK/build/bin/pip" install -q build
(cd "$WORK/src" && "$WORK/build/bin/python" -m build --sdist --no-isolation --outdir "$WORK/sdist" . >/dev/null)
"$WORK/build/bin/python" - "$WORK"/sdist/miue-*.tar.gz "$WORK/src" <<'PYEOF'
import os
import subprocess
import sys
import tarfile

with tarfile.open(sys.argv[1]) as tar:
    names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
src = sys.argv[2]
tracked = subprocess.run(["git", "ls-files", "csrc", "kernels"], cwd=src, capture_output=True, text=True).stdout.split() \
    if os.path.isdir(os.path.join(src, ".git")) else []
want = {"LICENSE", "setup.py", "pyproject.toml", "csrc/common.h", "csrc/cuda/common.cuh", "csrc/cuda/supcon_loss.cu",
        "csrc/cpu/supcon_loss.cpp", "csrc/cpu/linf.h", "csrc/cuda/linf.cuh", "kernels/__init__.py",
        "kernels/supcon_loss.py"} | set(tracked)
for top in ("csrc", "kernels"):  # every source file of the extension and every Triton kernel module
    for root, _, files in os.walk(os.path.join(src, top)):
        want |= {os.path.relpath(os.path.join(root, f), src) for f in files if not f.endswith((".pyc", ".o", ".so"))}
missing = sorted(w for w in want if w not in names)
assert not missing, f"the sdist lacks {missing}"
assert not any(n.endswith((".so", ".o")) or n == "miue/_build_info.json" for n in names), "build outputs in the sdist"
print(f"{sys.argv[1]}: {len(names)} files, csrc/ and kernels/ complete")
PYEOF
"$WORK/build/bin/pip" uninstall -q -y miue
"$WORK/build/bin/pip" install -q --no-build-isolation "$WORK"/sdist/miue-*.tar.gz
check "$WORK/build/bin/python" "sdist"

echo "--- the wheel, into a fresh venv (the extension is built for the torch it was built with)"
"$PY" -m venv "$WORK/fresh"
"$WORK/fresh/bin/pip" install -q $TORCH_PINS "$WORK"/dist/miue-*.whl
check "$WORK/fresh/bin/python" "wheel"
echo "install checks: ok"
