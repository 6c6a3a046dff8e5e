"""Ahead-of-time compile checks of miue's GPU kernels, without a GPU (the machinery of
``benchmarks/aot_check.py``, the command that runs it and writes the report).

Triton: :func:`triton_cases` calls the launchers of ``miue.kernels`` on ``meta`` tensors
(nothing is allocated or computed) inside ``miue.kernels._config.record_launches()``, for shapes
and dtypes that reach every branch of the configuration functions (each op module's
``kernel_cases``, miue/ops/<op>.py); :func:`specialize` types each
launch's arguments as Triton's JIT does at run time; :func:`triton_jobs` keeps the distinct
launch configurations, one job per target arch; :func:`compile_one` compiles a job with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` and measures registers,
spills and shared memory, and :func:`occupancy` gives the occupancy that follows on an H100
(sm_90) or an A100 (sm_80).

CUDA C++: :func:`compile_cuda_file` compiles one ``csrc/cuda/*.cu`` with nvcc and the flags of
``setup.py`` / ``torch.utils.cpp_extension`` plus ``-Xptxas -v`` (:func:`cuda_compile_cmd`), and
:func:`check_launches` is the static check that every ``<<<...>>>`` launch is followed by
``C10_CUDA_KERNEL_LAUNCH_CHECK()``.

Nothing here is imported by ``import miue``; triton, ``miue.kernels`` and
``torch.utils.cpp_extension`` are imported inside the functions that need them. The CUDA
sources are found in the source tree this module sits in (``SOURCE_ROOT``: ``csrc/`` beside
``miue/``); a function that reads them takes the folder as an argument where it matters.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time

import torch

# the checkout this module lives in: csrc/ beside miue/ (an installed wheel holds no csrc/)
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Per-SM / per-block limits (CUDA occupancy calculator): H100 SXM (sm_90) and A100 (sm_80).
ARCHS = {
    90: dict(card="H100", regs_per_sm=65536, reg_unit=256, max_warps=64, max_blocks=32,
             smem_per_sm=228 * 1024, smem_per_block=227 * 1024, smem_reserved=1024),
    80: dict(card="A100", regs_per_sm=65536, reg_unit=256, max_warps=64, max_blocks=32,
             smem_per_sm=164 * 1024, smem_per_block=163 * 1024, smem_reserved=1024),
}
SM80_SMEM_LIMIT = ARCHS[80]["smem_per_block"]
CUDA_HOT_FILES = ("supcon_loss.cu", "pgd_linf_step.cu", "project_linf.cu", "grouped_normalize.cu")


def occupancy(regs: int, smem: int, threads: int, cc: int) -> dict:
    """Resident blocks per SM and the fraction of the SM's warps they fill."""
    a = ARCHS[cc]
    warps = -(-threads // 32)
    regs_per_warp = -(-max(regs, 1) * 32 // a["reg_unit"]) * a["reg_unit"]
    by_regs = (a["regs_per_sm"] // regs_per_warp) // warps
    by_smem = a["smem_per_sm"] // (smem + a["smem_reserved"])
    by_warps = a["max_warps"] // warps
    blocks = min(by_regs, by_smem, by_warps, a["max_blocks"])
    limiter = min((by_regs, "registers"), (by_smem, "shared memory"), (by_warps, "warps"), (a["max_blocks"], "blocks"))[1]
    return dict(blocks_per_sm=blocks, occupancy=round(blocks * warps / a["max_warps"], 4), limited_by=limiter)


# --------------------------------------------------------------------------- tools


def _triton_tool(name: str) -> str:
    """Path of a CUDA tool (ptxas, cuobjdump): the one Triton ships, else the one on PATH."""
    import triton

    try:
        path = getattr(triton.knobs.nvidia, name).path  # triton >= 3.4
        if path and os.path.exists(path):
            return path
    except Exception:  # noqa: BLE001 - older layouts
        pass
    cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if os.path.exists(cand):
        return cand
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"miue.aot: {name} not found (neither in the triton wheel nor on PATH)")


_RES_RE = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def cubin_resources(cubin: bytes, cuobjdump: str) -> dict[str, dict]:
    """Registers, stack, static shared memory and local memory per function of a cubin
    (``cuobjdump --dump-resource-usage``)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    return {m.group(1): dict(regs=int(m.group(2)), stack=int(m.group(3)), static_smem=int(m.group(4)),
                             local=int(m.group(5))) for m in _RES_RE.finditer(out)}


_PTXAS_FN = re.compile(r"Compiling entry function '(\S+)' for '(sm_\w+)'")
_PTXAS_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")


def parse_ptxas_log(log: str) -> list[dict]:
    """One record per entry function of a ``ptxas -v`` log (nvcc -Xptxas -v, or ptxas itself)."""
    out, cur = [], None
    for line in log.splitlines():
        m = _PTXAS_FN.search(line)
        if m:
            cur = dict(function=m.group(1), sm=m.group(2), stack=0, spill_stores=0, spill_loads=0, regs=None, static_smem=0)
            out.append(cur)
            continue
        if cur is None:
            continue
        m = _PTXAS_PROPS.search(line)
        if m:
            cur.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            continue
        m = _PTXAS_USED.search(line)
        if m and cur["regs"] is None:
            cur.update(regs=int(m.group(1)), static_smem=int(m.group(3) or 0))
    return out


# --------------------------------------------------------------------------- Triton: what the launchers launch

FEATURE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # of the loss ops; the PGD ops add float64
# The shapes come from the op modules (``kernel_cases`` and the ``KERNEL_*`` shapes of
# miue/ops/<op>.py): shapes that reach every branch of the configuration functions (checked by
# tests/test_gpu_tiles.py::test_aot_shapes_cover_every_gpu_config).
TRITON_OPS = ("supcon_loss", "grouped_normalize", "intra_class_cosine_loss", "pgd_linf_step", "project_linf")


def _interleave(a: list, b: list) -> list:
    """a[0], b[0], a[1], b[1], ...: two ops' cases in the order the check has always recorded them."""
    if len(a) != len(b):
        raise ValueError(f"cannot interleave {len(a)} and {len(b)} cases")
    return [c for pair in zip(a, b) for c in pair]


def triton_cases():
    """[(case name, [recorded launches])]: the launchers of ``miue.kernels`` run on meta tensors,
    on the cases each op module's ``kernel_cases`` gives."""
    import importlib

    from miue import kernels
    from miue.kernels import _config

    op = {name: importlib.import_module(f"miue.ops.{name}") for name in TRITON_OPS}
    calls = []
    for dt in FEATURE_DTYPES:
        calls += op["supcon_loss"].kernel_cases(kernels, dt)
        calls += _interleave(op["grouped_normalize"].kernel_cases(kernels, dt),
                             op["intra_class_cosine_loss"].kernel_cases(kernels, dt))
    for dt in FEATURE_DTYPES + (torch.float64,):
        calls += _interleave(op["pgd_linf_step"].kernel_cases(kernels, dt),
                             op["project_linf"].kernel_cases(kernels, dt))
    # the engine's mixed case: fp32 delta, bf16 gradient (autocast), uint8 clean
    calls += op["pgd_linf_step"].kernel_cases(kernels, torch.float32, grad_dtype=torch.bfloat16)

    cases = []
    for name, fn in calls:
        with _config.record_launches() as launches:
            fn()
        cases.append((name, list(launches)))
    return cases


_TY = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
       torch.uint8: "u8", torch.int8: "i8", torch.int32: "i32", torch.int64: "i64", torch.bool: "i1"}


def specialize(kernel, args: tuple, meta: dict):
    """(signature, constexprs, attrs, options) for a launch, as Triton's JIT specialises it:
    pointers typed by dtype and assumed 16-byte aligned (fresh allocations are), ints typed
    i32/i64 with a divisibility hint when a multiple of 16 and folded when equal to 1, floats
    fp32."""
    import inspect

    fn = getattr(kernel, "fn", kernel)
    names = list(inspect.signature(fn).parameters)
    if hasattr(kernel, "params"):  # a JITFunction
        is_cx = [p.is_constexpr for p in kernel.params]
    else:  # the interpreter's function (tests): read the annotations
        is_cx = ["constexpr" in str(p.annotation) for p in inspect.signature(fn).parameters.values()]
    sig, constexprs, attrs = {}, {}, {}
    args = list(args)
    pos = 0
    for i, (name, cx) in enumerate(zip(names, is_cx)):
        if cx:
            if name not in meta:
                raise KeyError(f"{fn.__name__}: constexpr {name} missing from the launch configuration")
            sig[name] = "constexpr"
            constexprs[name] = meta[name]
            continue
        a = args[pos]
        pos += 1
        if isinstance(a, torch.Tensor):
            sig[name] = "*" + _TY[a.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(a, bool):
            sig[name] = "i1"
        elif isinstance(a, int):
            if a == 1:
                sig[name] = "constexpr"
                constexprs[name] = 1
                continue
            sig[name] = "i32" if -(2**31) <= a < 2**31 else ("i64" if a < 2**63 else "u64")
            if a % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(a, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: cannot type argument {name}={a!r}")
    if pos != len(args):
        raise TypeError(f"{kernel.__name__}: {len(args)} runtime arguments for {pos} parameters")
    options = {k: meta[k] for k in ("num_warps", "num_stages") if k in meta}
    return sig, constexprs, attrs, options


def _ast_source(fn, sig, constexprs, attrs):
    import inspect

    from triton.compiler.compiler import ASTSource

    params = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" in params:  # triton >= 3.2 (3.6, 3.8): names or index tuples as keys
        return ASTSource(fn, sig, constexprs=constexprs, attrs=attrs)
    if "constants" in params:  # older spelling
        return ASTSource(fn, sig, constants=constexprs, attrs=attrs)
    return ASTSource(fn, sig, constexprs, attrs)


def compile_one(job: dict) -> dict:
    """Runs in a worker: compile one launch configuration for one arch and measure it."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget

    res = dict(job)
    res.pop("module")
    t0 = time.time()
    try:
        fn = getattr(importlib.import_module(job["module"]), job["kernel"])
        sig = dict(job["signature"])
        attrs = {tuple(k): v for k, v in job["attrs"]}
        src = _ast_source(fn, sig, dict(job["constexprs"]), attrs)
        k = triton.compile(src, target=GPUTarget("cuda", job["cc"], 32), options=dict(job["options"]))
        ptx, cubin = k.asm["ptx"], k.asm["cubin"]
        md = k.metadata
        dyn_smem = int(md.shared if hasattr(md, "shared") else md["shared"])
        num_warps = int(md.num_warps if hasattr(md, "num_warps") else md["num_warps"])
        resources = cubin_resources(cubin, _triton_tool("cuobjdump"))
        r = resources.get(job["kernel"]) or next(iter(resources.values()))
        target = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
        with tempfile.TemporaryDirectory() as tmp:
            p = os.path.join(tmp, "k.ptx")
            with open(p, "w") as f:
                f.write(ptx)
            cmd = [_triton_tool("ptxas"), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={target}", p, "-o",
                   os.path.join(tmp, "k.cubin")]
            log = subprocess.run(cmd, capture_output=True, text=True)
            if log.returncode != 0:  # an older ptxas without --regAllocOptLevel
                cmd.remove("--regAllocOptLevel=2")
                log = subprocess.run(cmd, capture_output=True, text=True, check=True)
        pv = parse_ptxas_log(log.stderr + log.stdout)
        pv = pv[0] if pv else {}
        smem = dyn_smem + r["static_smem"]
        res.update(ok=True, sm=target, regs=r["regs"], local_bytes=r["local"], stack=r["stack"],
                   spill_stores=pv.get("spill_stores", 0), spill_loads=pv.get("spill_loads", 0),
                   ptxas_regs=pv.get("regs"), shared_dynamic=dyn_smem, shared_static=r["static_smem"], shared=smem,
                   num_warps=num_warps, **occupancy(r["regs"], smem, num_warps * 32, job["cc"]))
    except Exception as exc:  # noqa: BLE001 - reported as a failure of this configuration
        res.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[-2000:]}")
    res["seconds"] = round(time.time() - t0, 2)
    return res


def triton_jobs(archs):
    """One job per distinct launch configuration of :func:`triton_cases` and per arch in
    ``archs`` (compute capabilities such as 90, 80): the input of :func:`compile_one`."""
    from miue.kernels import _config

    jobs, seen = [], {}
    for case, launches in triton_cases():
        for kernel, grid, args, meta in launches:
            for g, limit in zip(grid, (2**31 - 1, 65535, 65535)):
                if not (1 <= g <= limit):
                    raise ValueError(f"{case}: {kernel.__name__} grid {grid} out of bounds")
            sig, constexprs, attrs, options = specialize(kernel, args, meta)
            key = (kernel.__name__, tuple(sig.items()), tuple(sorted(constexprs.items())),
                   tuple(sorted((k, str(v)) for k, v in attrs.items())), tuple(sorted(options.items())))
            if key in seen:
                seen[key]["cases"].append(case)
                continue
            base = dict(kernel=kernel.__name__, module=kernel.fn.__module__, signature=list(sig.items()),
                        constexprs=list(constexprs.items()), attrs=[(list(k), v) for k, v in attrs.items()],
                        options=list(options.items()), hot=kernel.__name__ in _config.HOT_KERNELS, cases=[case])
            seen[key] = base
    for base in seen.values():
        for cc in archs:
            jobs.append(dict(base, cc=cc))
    return jobs


# --------------------------------------------------------------------------- CUDA C++


def _demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return out.splitlines()
    except Exception:  # noqa: BLE001
        return list(names)


def _short_cuda_name(demangled: str) -> str:
    # "void miue::cuda::(anonymous namespace)::pgd_kernel<float, ..., true>(float*, ...)" -> "pgd_kernel<float, ..., true>"
    s = re.sub(r"^void\s+", "", demangled).replace("(anonymous namespace)::", "").replace("miue::cuda::", "")
    depth = 0
    for i, ch in enumerate(s):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            return s[:i]
    return s


def cuda_compile_cmd(src: str, archs, out: str, root: str = SOURCE_ROOT) -> list[str]:
    """The nvcc command that compiles ``src`` to a fatbin for ``archs`` with the extension's
    flags (``root``: the source tree whose ``csrc/`` holds the headers)."""
    from torch.utils import cpp_extension as ce

    site = os.path.dirname(os.path.dirname(torch.__file__))
    incs = [os.path.join(root, "csrc")]
    try:
        incs += ce.include_paths(device_type="cuda")
    except TypeError:  # older torch
        incs += ce.include_paths(cuda=True)
    incs.append(os.path.join(cuda_home(), "include"))
    cu13 = os.path.join(site, "nvidia", "cu13", "include")
    if os.path.isdir(cu13):
        incs.append(cu13)
    import sysconfig

    incs.append(sysconfig.get_paths()["include"])
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [os.path.join(cuda_home(), "bin", "nvcc"), "-fatbin", "-o", out, src]
    cmd += [f"-I{p}" for p in incs]
    cmd += ["-DMIUE_WITH_CUDA=1", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *ce.COMMON_NVCC_FLAGS, "-O3", "-lineinfo", "--expt-relaxed-constexpr",
            "-std=c++20", "-Xptxas", "-v"]
    for cc in archs:
        cmd += ["-gencode", f"arch=compute_{cc},code=sm_{cc}"]
    return cmd


def cuda_home() -> str:
    """$CUDA_HOME, $CUDA_PATH, or the folder above the nvcc on PATH ("" without one)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home:
        nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
        home = os.path.dirname(os.path.dirname(nvcc)) if nvcc else ""
    return home


def compile_cuda_file(args) -> dict:
    """Runs in a worker: ``args`` is (source file, archs) or (source file, archs, root). Compiles
    the file and reports every kernel instance's ``ptxas -v`` record (file named relative to root)."""
    src, archs, *rest = args
    root = rest[0] if rest else SOURCE_ROOT
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = cuda_compile_cmd(src, archs, os.path.join(tmp, "k.fatbin"), root)
        p = subprocess.run(cmd, capture_output=True, text=True)
    log = p.stderr + p.stdout
    recs = parse_ptxas_log(log) if p.returncode == 0 else []
    names = _demangle([r["function"] for r in recs])
    for r, n in zip(recs, names):
        r["kernel"] = _short_cuda_name(n)
    return dict(file=os.path.relpath(src, root), ok=p.returncode == 0, seconds=round(time.time() - t0, 1),
                error=None if p.returncode == 0 else log[-3000:], functions=recs)


_LAUNCH_RE = re.compile(r"<<<[^;]*?>>>\s*\((?:[^;]|\n)*?\);", re.S)


def check_launches(paths, root: str = SOURCE_ROOT) -> list[str]:
    """Every <<<...>>> launch must be followed by C10_CUDA_KERNEL_LAUNCH_CHECK() as the next
    statement (comments between them are allowed). One problem per launch that is not,
    ``"file:line: ..."`` with the file relative to ``root``; [] when every launch is checked."""
    problems = []
    for path in paths:
        with open(path) as f:
            text = f.read()
        for m in _LAUNCH_RE.finditer(text):
            rest = text[m.end():]
            nxt = re.match(r"\s*(?://[^\n]*\n\s*)*([^;]*;)", rest)
            if not nxt or "C10_CUDA_KERNEL_LAUNCH_CHECK()" not in nxt.group(1):
                line = text[: m.start()].count("\n") + 1
                problems.append(f"{os.path.relpath(path, root)}:{line}: launch not followed by C10_CUDA_KERNEL_LAUNCH_CHECK()")
    return problems
