"""Build script for miue.

The compiled extension ``miue._C`` holds the C++ CPU kernels (OpenMP through
``at::parallel_for``) and, when built with CUDA, the CUDA kernels.

What gets built
---------------
* The CUDA kernels are added when a CUDA toolkit is found (torch's ``CUDA_HOME``: the
  ``CUDA_HOME`` variable, else the folder above ``nvcc`` on the PATH), torch was built with
  CUDA, and the CUDA runtime library ``libcudart`` is found (in ``$CUDA_HOME/lib64``,
  ``$CUDA_HOME/lib``, ``$CUDA_HOME/targets/*/lib`` or where torch's own wheel keeps it,
  ``site-packages/nvidia/*/lib``). A toolkit without it is reported before compiling and the
  CPU extension is built.
* If compiling or linking the CUDA part fails, the CPU extension is built instead, with the
  reason printed; the extension is never dropped because of its CUDA part.
* What happened is written beside the extension (``miue/_build_info.json``); ``import miue``
  and ``miue info`` report it.

Environment switches
--------------------
MIUE_SKIP_EXT=1       pure-Python install (reference and triton backends only).
MIUE_BUILD_CUDA=1     the CUDA kernels are required: a toolkit problem or a failed CUDA build
                      fails the install (set TORCH_CUDA_ARCH_LIST; default '8.0;9.0').
MIUE_BUILD_CUDA=0     never build the CUDA kernels.
                      Unset: build them when a usable toolkit is found, else CPU only.
MIUE_REQUIRE_EXT=1    a failed build of the CPU extension fails the install (CI uses this);
                      otherwise the package installs without it and says why at import.
MIUE_DEBUG=1          -O0 -g build; MIUE_ASAN=1 adds AddressSanitizer.
"""

import copy
import glob
import json
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = "_build_info.json"  # read by miue/ops/_extension.py


def _flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.lower() not in ("0", "false", "no", "off")


def _say(message):
    """A notice that stands out in the build log (pip shows it with -v, or on failure)."""
    bar = "=" * 78
    print(f"\n{bar}\nmiue: {message}\n{bar}\n", file=sys.stderr, flush=True)


def find_cudart(cuda_home, site_dirs):
    """(folder, file name) of the CUDA runtime library to link, or (None, searched folders).

    Looks in the toolkit (``lib64``, ``lib``, ``targets/*/lib``), then where the torch wheel
    keeps it (``<site>/nvidia/*/lib``, e.g. ``nvidia/cu13/lib``). An unversioned
    ``libcudart.so`` is preferred; a wheel usually ships only ``libcudart.so.<major>``."""
    folders = []
    if cuda_home:
        folders += [os.path.join(cuda_home, "lib64"), os.path.join(cuda_home, "lib")]
        folders += sorted(glob.glob(os.path.join(cuda_home, "targets", "*", "lib")))
    for site in site_dirs:
        folders += sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib")))
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "libcudart.so")):
            return folder, "libcudart.so"
        versioned = sorted(glob.glob(os.path.join(folder, "libcudart.so.[0-9]*")))
        if versioned:
            return folder, os.path.basename(versioned[0])
    return None, folders


def _site_dirs(torch_module):
    """torch's own site-packages first, then the rest of sys.path."""
    dirs = [os.path.dirname(os.path.dirname(os.path.abspath(torch_module.__file__)))]
    return dirs + [p for p in sys.path if p and p not in dirs and os.path.isdir(p)]


class _Plan:
    """What the build attempts and what it reports (written to BUILD_INFO)."""

    def __init__(self):
        self.cuda = False  # the CUDA kernels are part of the current attempt
        self.cuda_required = False  # MIUE_BUILD_CUDA=1
        self.cuda_note = None  # why the CUDA kernels are not built, when they are not
        self.error = None  # why no extension was built, when none was
        self.torch = None


PLAN = _Plan()


def _compile_options():
    debug, asan = bool(_flag("MIUE_DEBUG")), bool(_flag("MIUE_ASAN"))
    cxx = ["-O0" if debug else "-O3", "-fopenmp", "-fno-fast-math"]
    ldflags = ["-fopenmp"]
    if debug or asan:
        cxx.append("-g")
    if asan:
        cxx += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags.append("-fsanitize=address")
    return cxx, ldflags


def _cpu_extension(cpp_extension):
    cxx, ldflags = _compile_options()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    return cpp_extension.CppExtension(
        name="miue._C", sources=sources, include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx}, extra_link_args=ldflags,
    )


def _cuda_extension(cpp_extension, torch):
    """The CPU sources plus csrc/cuda/*.cu, linked against the libcudart found (see module doc)."""
    cpu = _cpu_extension(cpp_extension)
    cxx, ldflags = _compile_options()
    folder, name = find_cudart(cpp_extension.CUDA_HOME, _site_dirs(torch))
    include_dirs = list(cpu.include_dirs)
    # headers of the CUDA runtime shipped inside the torch wheel (cu13 layout), used when the
    # system toolkit lacks some of them
    for site in _site_dirs(torch):
        cand = os.path.join(site, "nvidia", "cu13", "include")
        if os.path.isdir(cand):
            include_dirs.append(cand)
            break
    ext = cpp_extension.CUDAExtension(
        name="miue._C",
        sources=cpu.sources + sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))),
        include_dirs=include_dirs,
        define_macros=[("MIUE_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]},
        extra_link_args=ldflags,
    )
    # CUDAExtension links `-lcudart` from $CUDA_HOME/lib64 (or lib); point it at the library found
    ext.library_dirs.insert(0, folder)
    if name != "libcudart.so":  # only libcudart.so.<major>: `-lcudart` cannot find it, name the file
        ext.libraries = [lib for lib in ext.libraries if lib != "cudart"]
        ext.extra_link_args = [f"-l:{name}"] + ext.extra_link_args
    return ext


def _ext_modules():
    if _flag("MIUE_SKIP_EXT"):
        _say("MIUE_SKIP_EXT set: building without the compiled extension")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # torch missing at build time
        _say(f"torch is not importable ({exc}); building without the compiled extension "
             "(install torch first and use `pip install --no-build-isolation`)")
        return [], {}
    PLAN.torch = torch.__version__

    wanted = _flag("MIUE_BUILD_CUDA")
    PLAN.cuda_required = bool(wanted)
    cuda_home = cpp_extension.CUDA_HOME
    if wanted is False:
        PLAN.cuda_note = "MIUE_BUILD_CUDA=0"
    elif cuda_home is None:
        PLAN.cuda_note = "no CUDA toolkit found (no nvcc on the PATH, CUDA_HOME unset)"
    elif torch.version.cuda is None:
        PLAN.cuda_note = f"torch {torch.__version__} was built without CUDA"
    elif find_cudart(cuda_home, _site_dirs(torch))[0] is None:
        searched = find_cudart(cuda_home, _site_dirs(torch))[1]
        PLAN.cuda_note = (f"the CUDA toolkit at {cuda_home} has no runtime library libcudart "
                          f"(searched {', '.join(searched) or 'nothing'}; set CUDA_HOME to a complete toolkit)")
    else:
        PLAN.cuda = True
    if PLAN.cuda_required and not PLAN.cuda:
        raise RuntimeError(f"miue: MIUE_BUILD_CUDA=1 but the CUDA kernels cannot be built: {PLAN.cuda_note}")
    if PLAN.cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            # Without it torch compiles for every arch it knows (slow) or queries a GPU.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
            print("miue: TORCH_CUDA_ARCH_LIST not set, using '8.0;9.0'", file=sys.stderr)
        ext = _cuda_extension(cpp_extension, torch)
        print(f"miue: building miue._C with the CUDA kernels (toolkit {cuda_home}, "
              f"libcudart from {ext.library_dirs[0]})", file=sys.stderr)
    else:
        ext = _cpu_extension(cpp_extension)
        if wanted is None and cuda_home is not None:  # a toolkit is there but unusable: say so
            _say(f"building the CPU extension only: {PLAN.cuda_note}")
        else:
            print(f"miue: building miue._C (CPU only: {PLAN.cuda_note})", file=sys.stderr)
    cpu_fallback = _cpu_extension(cpp_extension)

    class BuildExt(cpp_extension.BuildExtension):
        """Build the extension; a failed CUDA build falls back to the CPU extension, a failed
        CPU build warns (or fails with MIUE_REQUIRE_EXT=1). Writes BUILD_INFO either way."""

        def run(self):
            # setuptools clears these while building and does not restore them on failure
            self._inplace, compiler = self.inplace, self.compiler
            try:
                super().run()
            except Exception as exc:
                if not PLAN.cuda or PLAN.cuda_required:
                    self._no_extension(exc)
                    return
                PLAN.cuda = False
                PLAN.cuda_note = f"the CUDA build failed ({type(exc).__name__}: {_first_line(exc)})"
                _say(f"{PLAN.cuda_note}; building the CPU extension instead "
                     "(run pip with -v for the compiler output)")
                for ext in self.extensions:  # the same Extension object, CPU sources and flags only
                    ext.__dict__.update(copy.deepcopy({k: v for k, v in vars(cpu_fallback).items()
                                                       if not k.startswith("_")}))
                self.build_temp = self.build_temp.rstrip(os.sep) + "-cpu"
                self.inplace, self.compiler = self._inplace, compiler
                try:
                    super().run()
                except Exception as exc2:
                    self._no_extension(exc2)
                    return
            self._write_info()

        def _no_extension(self, exc):
            self.inplace = self._inplace
            PLAN.error = f"{type(exc).__name__}: {_first_line(exc)}"
            if _flag("MIUE_REQUIRE_EXT") or PLAN.cuda_required:
                raise exc
            _say(f"WARNING: building the compiled extension failed ({PLAN.error}).\n"
                 "miue: the package installs without it; the reference and triton backends still work.\n"
                 "miue: set MIUE_REQUIRE_EXT=1 to make this an error; run pip with -v for the compiler output.")
            self._write_info()

        def _write_info(self):
            info = {"torch": PLAN.torch, "built": PLAN.error is None, "cuda_kernels": PLAN.error is None and PLAN.cuda,
                    "cuda_note": None if PLAN.cuda else PLAN.cuda_note, "error": PLAN.error}
            folders = [os.path.join(self.build_lib, "miue")]
            if self._inplace:  # editable installs: beside the copy in the source tree
                folders.append(self.get_finalized_command("build_py").get_package_dir("miue"))
            for folder in folders:
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, BUILD_INFO), "w") as fh:
                    json.dump(info, fh, indent=1)

    return [ext], {"build_ext": BuildExt.with_options(use_ninja=True)}


def _first_line(exc, limit=300):
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else "no message"


if __name__ == "__main__":  # setuptools' build backend runs this file as __main__
    ext_modules, cmdclass = _ext_modules()
    setup(
        packages=["miue", "miue.ops", "miue.craft", "miue.compat", "miue.data", "miue.evaluation", "miue.kernels"],
        package_dir={"miue": "miue", "miue.kernels": "kernels"},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        zip_safe=False,
    )
