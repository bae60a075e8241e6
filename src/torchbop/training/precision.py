"""``precision: auto``: bf16-mixed where the device computes in bf16 natively, fp32 everywhere else.

A run's ``precision`` is ``"32"``, ``"bf16-mixed"`` (autocast to bf16 in the forward pass; parameters, gradients and
the optimizers' state stay float32) or ``"auto"``, which :func:`resolve_precision` turns into one of the two when the
run starts; the run records the resolved value, so a resumed run keeps it on any machine. Native bf16
(:func:`native_bf16`, cached per device type): on CUDA ``torch.cuda.is_bf16_supported(including_emulation=False)``
(compute capability 8.0 and later); on the CPU the AVX512-BF16 or AMX instructions (the ``flags`` of
``/proc/cpuinfo``; torch's public ``get_cpu_capability()`` says which kernels ATen dispatches to, not whether bf16 is
native, and without it oneDNN emulates bf16, slower than fp32; where there is no ``/proc/cpuinfo``, fp32); fp32 on MPS
and anything else.

Example:
    >>> resolve_precision("32", "cpu"), resolve_precision("bf16-mixed", "cpu")
    ('32', 'bf16-mixed')
    >>> resolve_precision("auto", "cpu") in ("32", "bf16-mixed")
    True
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["native_bf16", "resolve_precision", "device_type", "describe_resolution"]

#: The precisions a run can be resolved to.
RESOLVED = ("32", "bf16-mixed")


def device_type(accelerator: str) -> str:
    """The torch device type Lightning will train on for ``accelerator`` (``"auto"``: CUDA, else MPS, else CPU)."""
    name = str(accelerator).lower()
    if name in ("gpu", "cuda"):
        return "cuda"
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    return name


def _cuda_native_bf16() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no including_emulation argument
        return torch.cuda.get_device_capability() >= (8, 0)


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def _cpu_native_bf16() -> bool:
    return bool(_cpuinfo_flags() & {"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=None)
def native_bf16(device: str) -> bool:
    """Whether ``device`` (a torch device type: ``"cpu"``, ``"cuda"``, ...) computes in bf16 natively; cached."""
    if device == "cuda":
        return _cuda_native_bf16()
    if device == "cpu":
        return _cpu_native_bf16()
    return False


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``"32"`` or ``"bf16-mixed"``: ``precision`` itself, or for ``"auto"`` the choice :func:`native_bf16` makes.

    Args:
        precision: ``"auto"``, ``"32"`` or ``"bf16-mixed"``.
        accelerator: the run's accelerator (``"auto"``, ``"cpu"``, ``"gpu"``, ``"cuda"``, ``"mps"``) or device type.
    """
    if precision != "auto":
        if precision not in RESOLVED:
            raise ValueError(f"Invalid precision value: {precision!r} (expected one of 'auto', '32', 'bf16-mixed')")
        return precision
    return "bf16-mixed" if native_bf16(device_type(accelerator)) else "32"


def describe_resolution(precision: str, accelerator: str = "auto") -> str:
    """One line saying what ``precision`` resolves to on this machine and why."""
    resolved = resolve_precision(precision, accelerator)
    if precision != "auto":
        return f"precision {resolved}"
    device = device_type(accelerator)
    why = "native bf16" if resolved == "bf16-mixed" else "no native bf16"
    return f"precision auto -> {resolved} ({why} on {device})"
