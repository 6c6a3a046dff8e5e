"""Installation (issue 15): what setup.py links against, and what a user sees without the
compiled extension. The real installs (a wheel into a fresh venv, `pip install .`) are
checked by tests/install_check.sh, which CI runs."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys

import pytest
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


@pytest.fixture(scope="module")
def setup_py():
    """setup.py's functions (its setup() call runs only as __main__)."""
    return runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="miue_setup_under_test")


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()
    return path


def test_cudart_from_the_torch_wheel_when_the_toolkit_has_none(tmp_path, setup_py):
    # the machine: nvcc in /usr/local/bin, so CUDA_HOME=/usr/local, whose lib/ has no libcudart
    home = tmp_path / "usr_local"
    (home / "lib").mkdir(parents=True)
    site = tmp_path / "site"
    _touch(str(site / "nvidia" / "cu13" / "lib" / "libcudart.so.13"))
    folder, name = setup_py["find_cudart"](str(home), [str(site)])
    assert (folder, name) == (str(site / "nvidia" / "cu13" / "lib"), "libcudart.so.13")


def test_cudart_of_the_toolkit_first(tmp_path, setup_py):
    home, site = tmp_path / "cuda", tmp_path / "site"
    _touch(str(home / "targets" / "x86_64-linux" / "lib" / "libcudart.so"))
    _touch(str(site / "nvidia" / "cu13" / "lib" / "libcudart.so.13"))
    assert setup_py["find_cudart"](str(home), [str(site)]) == (str(home / "targets" / "x86_64-linux" / "lib"),
                                                                "libcudart.so")
    _touch(str(home / "lib64" / "libcudart.so"))
    assert setup_py["find_cudart"](str(home), [str(site)]) == (str(home / "lib64"), "libcudart.so")


def test_no_cudart_anywhere_lists_where_it_looked(tmp_path, setup_py):
    home = tmp_path / "cuda"
    (home / "lib64").mkdir(parents=True)
    _touch(str(home / "lib64" / "libcudart_static.a"))  # not a shared runtime
    folder, searched = setup_py["find_cudart"](str(home), [str(tmp_path / "site")])
    assert folder is None and str(home / "lib64") in searched


def test_cuda_extension_links_the_versioned_wheel_runtime(tmp_path, setup_py, monkeypatch):
    """With only libcudart.so.<major> (the torch wheel), `-lcudart` would fail at the link: the
    extension names the file instead, from the folder it was found in."""
    from torch.utils import cpp_extension

    monkeypatch.chdir(ROOT)  # pip runs setup.py in the source tree; source paths are relative to it
    site = tmp_path / "site"
    lib = site / "nvidia" / "cu13" / "lib"
    _touch(str(lib / "libcudart.so.13"))
    (tmp_path / "usr_local" / "lib").mkdir(parents=True)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path / "usr_local"))
    monkeypatch.setitem(setup_py["_site_dirs"].__globals__, "_site_dirs", lambda torch_module: [str(site)])
    ext = setup_py["_cuda_extension"](cpp_extension, torch)
    assert ext.library_dirs[0] == str(lib)
    assert "cudart" not in ext.libraries and "-l:libcudart.so.13" in ext.extra_link_args
    assert any(s.endswith(".cu") for s in ext.sources) and ("MIUE_WITH_CUDA", "1") in ext.define_macros
    # with an unversioned library the usual -lcudart stays
    _touch(str(lib / "libcudart.so"))
    ext = setup_py["_cuda_extension"](cpp_extension, torch)
    assert "cudart" in ext.libraries and not any(a.startswith("-l:") for a in ext.extra_link_args)


def test_cpu_extension_has_no_cuda(setup_py, monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.chdir(ROOT)
    ext = setup_py["_cpu_extension"](cpp_extension)
    assert ext.sources and not any(s.endswith(".cu") for s in ext.sources)
    assert "cudart" not in ext.libraries and not ext.define_macros


# --------------------------------------------------------------------------- without the extension

_HIDE_EXTENSION = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "miue._C":
            raise ModuleNotFoundError("No module named 'miue._C'", name="miue._C")
sys.meta_path.insert(0, Hide())
"""


def _import_without_extension(tmp_path, build_info=None):
    """Run ``import miue`` in a subprocess that cannot find miue._C; (stderr lines, info dict)."""
    code = _HIDE_EXTENSION + f"""
import importlib.util, json, warnings
warnings.simplefilter("default")
if len(sys.argv) > 1:  # miue.ops._extension, loaded before miue, reading another build record
    spec = importlib.util.spec_from_file_location("miue.ops._extension", {os.path.join(ROOT, "miue", "ops", "_extension.py")!r})
    E = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(E)
    E.BUILD_INFO = sys.argv[1]
    sys.modules["miue.ops._extension"] = E
import miue
import miue.ops  # a second import path through _backend: still one warning
from miue.cli import main
print(json.dumps({{"backends": miue.available_backends()}}))
main(["info", "--json"])
"""
    args = [sys.executable, "-c", code]
    if build_info is not None:
        path = tmp_path / "info.json"
        path.write_text(json.dumps(build_info))
        args.append(str(path))
    env = {k: v for k, v in os.environ.items() if k not in ("MIUE_SKIP_EXT", "PYTHONWARNINGS")}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    backends = json.loads(out[0])["backends"]
    info = json.loads("\n".join(out[1:]))
    ours = [line for line in proc.stderr.splitlines() if "miue" in line and "compiled extension" in line]
    return ours, backends, info


def test_import_without_extension_says_why_once_in_one_line(tmp_path):
    lines, backends, info = _import_without_extension(tmp_path)
    assert len(lines) == 1, lines
    line = lines[0]
    assert "it was not built" in line
    assert f"Build it with: pip install --no-build-isolation -e {os.path.dirname(os.path.dirname(__import__('miue').__file__))}" in line
    assert "cpp" not in backends and "reference" in backends
    assert info["extension"] in line  # `miue info` shows the same
    assert "cpp" not in info["backends"]


def test_import_after_a_failed_build_gives_the_build_error(tmp_path):
    err = "RuntimeError: Error compiling objects for extension"
    lines, _, info = _import_without_extension(tmp_path, {"built": False, "error": err})
    assert len(lines) == 1 and f"its build failed ({err})" in lines[0]
    assert f"its build failed ({err})" in info["extension"]


def test_loaded_extension_status():
    import miue
    from miue.ops._extension import extension_status

    if "cpp" not in miue.available_backends():
        pytest.skip("the compiled extension is not built here")
    assert extension_status().startswith("loaded: C++ CPU kernels")
