"""The one record of where a result was measured (issue 48): ``miue info``, the demo, every
benchmark and ``benchmarks/gpu_check.sh`` write this, so that every figure names its machine the
same way. Reads only; imports triton and torchvision when they are installed."""

from __future__ import annotations

import os
import platform

__all__ = ["environment"]


def _cpu_model() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        return model


def _version(module: str):
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 (absent, or broken: the record says None)
        return None


def environment() -> dict:
    """Versions (miue, Python, torch and its CUDA build, torchvision, triton, numpy), the CPU (model,
    cores, architecture, native bf16 and why), torch's threads, the CUDA devices, miue's backends
    and the compiled extension's status."""
    import torch

    import miue
    from miue._amp import cpu_bf16_reason
    from miue.ops._extension import cpp_has_cuda, extension_status

    bf16, why = cpu_bf16_reason()
    cuda = torch.cuda.is_available()
    return {
        "miue": miue.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "torchvision": _version("torchvision"),
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "native_bf16": bf16,
        "bf16_reason": why,
        "threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else ["cpu"],
        "backends": miue.available_backends(),
        "cpp_has_cuda_kernels": cpp_has_cuda(),
        "extension": extension_status(),
    }
