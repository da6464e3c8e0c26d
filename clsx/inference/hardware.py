"""What this machine computes with: cores, vector extensions, native low-precision dtypes."""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

# CPU flags under which bf16 matmuls run natively (AMX tiles or AVX-512 BF16 dot products);
# without them torch emulates bf16, which is slower than fp32.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def physical_cores() -> int:
    """Intra-op threads default: one per physical core (hyper-threads only add contention)."""
    import psutil

    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


@cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    model = next((line.split(":", 1)[1].strip() for line in lines
                  if line.startswith("model name")), platform.processor() or platform.machine())
    flags = next((frozenset(line.split(":", 1)[1].split()) for line in lines
                  if line.startswith("flags")), frozenset())
    return model, flags


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is unavailable)."""
    return _cpuinfo()[1]


def machine_description() -> str:
    """CPU model, core count and the vector extensions that decide CPU speed here (int8 and
    bf16 dot products included)."""
    model, flags = _cpuinfo()
    vector = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                          "amx_bf16", "amx_int8") if f in flags]
    return f"{model}, {os.cpu_count()} cores, {'/'.join(vector) or 'no AVX2'}"


# The flags a report names: what the CPU kernels of torch and ONNX Runtime can use (wide
# vectors, fused multiply-add, int8 dot products, bf16 dot products and AMX tiles).
REPORTED_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                  "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve")


def machine_facts() -> dict[str, str]:
    """The machine as a report shows it: CPU model, cores, the vector flags that decide CPU
    speed, and the CUDA GPUs torch sees ("none" without; torch is imported here, so call it
    from commands that have loaded it anyway)."""
    import psutil

    model, flags = _cpuinfo()
    return {
        "CPU": model,
        "cores": f"{physical_cores()} physical, {psutil.cpu_count() or os.cpu_count()} logical",
        "CPU flags": " ".join(f for f in REPORTED_FLAGS if f in flags) or "none of "
                     + " ".join(REPORTED_FLAGS),
        "GPU": gpu_description() or "none",
    }


def gpu_description() -> str | None:
    """Each CUDA device torch sees, with its memory; None where there is none."""
    import torch

    if not torch.cuda.is_available():
        return None
    devices = (torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count()))
    return ", ".join(f"{d.name} ({d.total_memory / 2**30:.0f} GiB)" for d in devices)


def native_low_precision(device: str) -> tuple[str, ...]:
    """The dtypes below fp32 that ``device`` (``cpu`` or ``cuda``) computes natively.

    Only these can beat fp32, so only these are worth measuring for ``--backend auto``.
    """
    if device == "cuda":
        import torch

        return ("bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp16",)
    return ("bf16",) if any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS) else ()
