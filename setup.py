"""Build script for miue.

The compiled extension ``miue._C`` holds the C++ CPU kernels (OpenMP through
``at::parallel_for``) and, when built with CUDA, the CUDA kernels.

Environment switches
--------------------
MIUE_SKIP_EXT=1       pure-Python install (reference and triton backends only).
MIUE_BUILD_CUDA=1     build the CUDA kernels (needs nvcc; set TORCH_CUDA_ARCH_LIST).
MIUE_BUILD_CUDA=0     never build the CUDA kernels.
                      Unset: build them when a CUDA toolkit is found and torch has CUDA.
MIUE_REQUIRE_EXT=1    a failed extension build fails the install (CI uses this);
                      otherwise the package installs without it and warns at import.
MIUE_DEBUG=1          -O0 -g build; MIUE_ASAN=1 adds AddressSanitizer.
"""

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.lower() not in ("0", "false", "no", "off")


def _ext_modules():
    if _flag("MIUE_SKIP_EXT"):
        print("miue: MIUE_SKIP_EXT set, building without the compiled extension", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # torch missing at build time
        print(f"miue: torch not importable ({exc}); building without the extension", file=sys.stderr)
        return [], {}

    build_cuda = _flag("MIUE_BUILD_CUDA")
    if build_cuda is None:
        build_cuda = cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    if build_cuda and cpp_extension.CUDA_HOME is None:
        raise RuntimeError("MIUE_BUILD_CUDA=1 but no CUDA toolkit found (set CUDA_HOME)")
    if build_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # Without it torch compiles for every arch it knows (slow) or queries a GPU.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        print("miue: TORCH_CUDA_ARCH_LIST not set, using '8.0;9.0'", file=sys.stderr)

    debug = bool(_flag("MIUE_DEBUG"))
    asan = bool(_flag("MIUE_ASAN"))
    cxx = ["-O0" if debug else "-O3", "-fopenmp", "-fno-fast-math"]
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    ldflags = ["-fopenmp"]
    if debug or asan:
        cxx.append("-g")
    if asan:
        cxx += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags.append("-fsanitize=address")

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    if build_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("MIUE_WITH_CUDA", "1"))
        # Headers of the CUDA runtime shipped inside the torch wheel (cu13 layout), used when
        # the system toolkit lacks some of them.
        for site in sys.path:
            cand = os.path.join(site, "nvidia", "cu13", "include")
            if os.path.isdir(cand):
                include_dirs.append(cand)
                break
        ext_cls = cpp_extension.CUDAExtension
        extra = {"cxx": cxx, "nvcc": nvcc}
    else:
        ext_cls = cpp_extension.CppExtension
        extra = {"cxx": cxx}
    print(f"miue: building miue._C ({'CPU+CUDA' if build_cuda else 'CPU only'})", file=sys.stderr)

    ext = ext_cls(
        name="miue._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=ldflags,
    )

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """Build the extension; on failure warn and keep going unless MIUE_REQUIRE_EXT=1."""

        def run(self):
            try:
                super().run()
            except Exception as exc:
                if _flag("MIUE_REQUIRE_EXT"):
                    raise
                print(
                    f"\nmiue: WARNING: building the compiled extension failed ({exc}).\n"
                    "miue: the package installs without it; the reference and triton backends "
                    "still work. Set MIUE_REQUIRE_EXT=1 to make this an error.\n",
                    file=sys.stderr,
                )

    return [ext], {"build_ext": OptionalBuildExt.with_options(use_ninja=True)}


ext_modules, cmdclass = _ext_modules()

setup(
    packages=["miue", "miue.kernels"],
    package_dir={"miue": "miue", "miue.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
