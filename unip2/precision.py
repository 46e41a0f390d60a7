"""Numeric precision of a step: bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere.

    precision = resolve_precision("auto", device)   # "bf16" on CUDA with bf16, on CPUs with AVX512-BF16 or AMX
    with autocast(precision, device):
        loss = ...

Autocast runs the matmuls and convolutions in bf16 while the master weights, the optimizer and its moments stay
fp32. The model keeps its numerically delicate parts in fp32 under autocast too: cosine scores and
temperatures (``CosineScorer``), softmax and the losses, box math and matching, the MoE's routing.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp32")
# CPU flags of native bf16 arithmetic (Linux /proc/cpuinfo names): AVX512-BF16 (AMD Zen 4+, Intel Cooper Lake+),
# AMX-BF16 (Intel Sapphire Rapids+).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 flags this CPU reports (empty where none, or where /proc/cpuinfo is not there)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (so autocast to bf16 speeds the step up)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(cpu_bf16_flags())
    return False


def resolve_precision(precision: str, device: torch.device, field: str = "train.precision") -> str:
    """``auto`` → bf16 where ``device`` has it natively, else fp32; an explicit bf16 where it has not is refused
    (emulated bf16 is slower than fp32), naming ``field``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{field}: unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return "fp32"
    native = bf16_native(device)
    if precision == "bf16" and not native:
        raise ValueError(f"{field}: bf16 asked, but {describe(device)} has no native bf16 (CUDA with bf16, or a "
                         f"CPU with {' or '.join(CPU_BF16_FLAGS)}); use fp32 or auto")
    return "bf16" if native else "fp32"


def describe(device: torch.device) -> str:
    """A few words on ``device``'s bf16 support, for the run's console line."""
    if device.type == "cuda":
        return f"CUDA device {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        return f"this CPU ({', '.join(flags) if flags else 'no native bf16'})"
    return f"device {device}"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision: bf16 autocast on ``device``'s type, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
