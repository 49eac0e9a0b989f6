"""Which floating-point type models run in on this machine.

bf16 halves memory and is fast where the hardware computes in it natively: NVIDIA GPUs, and
CPUs with AVX-512 BF16 or AMX (x86) or the BF16 extension (Arm). Elsewhere it is emulated and
slow: on a 2-core AVX2-only AMD EPYC, vLLM decoded SmolLM2-135M best-of-8 batches at 17 tok/s
in bf16 and 63 tok/s in fp32 (``benchmarks/README.md``, "dtype"). So ``auto`` means bf16 on a
GPU or a CPU with native bf16, fp32 on any other CPU; an explicit choice always wins. Every
engine and HF model the project builds (server, eval, benchmarks, HF reward models) asks here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
ResolvedDtype = Literal["bfloat16", "float16", "float32"]

NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 (AVX-512, AMX), Arm


@dataclass(frozen=True)
class DtypeChoice:
    dtype: ResolvedDtype
    reason: str  # one line for the start-up log


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def choose_dtype(
    setting: Dtype = "auto", *, cuda: bool | None = None, flags: Iterable[str] | None = None
) -> DtypeChoice:
    """The dtype for ``setting`` on this machine (``cuda``/``flags`` are read when not given)."""
    if setting != "auto":
        return DtypeChoice(setting, f"{setting} (set explicitly)")
    gpu_bf16 = cuda
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
        gpu_bf16 = cuda and torch.cuda.is_bf16_supported()
    if cuda:
        if gpu_bf16:
            return DtypeChoice("bfloat16", "bfloat16 (GPU)")
        return DtypeChoice("float16", "float16 (GPU without bf16)")
    native = NATIVE_BF16_CPU_FLAGS & frozenset(cpu_flags() if flags is None else flags)
    if native:
        return DtypeChoice("bfloat16", f"bfloat16 (CPU with native bf16: {', '.join(sorted(native))})")
    return DtypeChoice("float32", "float32 (CPU without native bf16: no avx512_bf16/amx_bf16/bf16 flag)")


def torch_dtype(choice: DtypeChoice):  # -> torch.dtype
    import torch

    return getattr(torch, choice.dtype)
