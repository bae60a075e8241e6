"""The fused kernels, once compiled, kept on disk for the next process.

Precompiling a kernel (``torch.compile(...).aot_compile``, see :func:`torchbop.optim._fused.runner`) bypasses
torch's own caches on purpose, so without this every new process (a ``torchbop train`` run, each experiment worker,
each DDP rank) would trace and generate the kernel again: 4-8 s of startup on the 2-core development VM. Loading the
saved kernel instead takes about 1 s.

A kernel is stored under ``$TORCHINDUCTOR_CACHE_DIR/torchbop`` (Inductor's own cache folder, by default
``/tmp/torchinductor_$USER``), in a file named by a hash of everything that could change the generated code: the
torch build and Python version, the machine's architecture and vector instruction set (or the GPU), the source of
``torchbop.optim``, the kernel, its arguments' devices and dtypes, the thread count, and Inductor's configuration.
Files are written atomically, so processes that compile at the same time only waste work. A file that cannot be
read is removed and the kernel compiled again. A loaded kernel is still checked, bit for bit, against the reference
implementation before its first use (:func:`torchbop.optim._fused.unavailable`), as a freshly compiled one is; one
that fails that check is removed too, and the kernel compiled afresh and checked again.

Setting ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1`` (Inductor's switch for all its caches) turns this off too.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import platform
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch


def directory() -> Path:
    """Where the kernels are kept: the ``torchbop`` folder of Inductor's cache directory."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:  # another torch layout
        return Path(tempfile.gettempdir()) / "torchbop_kernels"
    return Path(cache_dir()) / "torchbop"


def enabled() -> bool:
    """Off where Inductor's caches are (``TORCHINDUCTOR_FORCE_DISABLE_CACHES``) or the API to save is missing."""
    import torch._inductor.config

    return not torch._inductor.config.force_disable_caches and hasattr(torch.compiler, "load_compiled_function")


def load(key: tuple) -> Callable | None:
    """The kernel saved under ``key``, its guard checks off, or ``None``."""
    if not enabled():
        return None
    path = _path(key)
    try:
        data = path.read_bytes()
    except OSError:  # none saved yet, or no folder to read from
        return None
    try:
        run = torch.compiler.load_compiled_function(io.BytesIO(data))
        run.disable_guard_check()
    except Exception:  # unreadable (truncated, another torch's format): remove it; the caller compiles again
        remove(key)
        return None
    return run


def remove(key: tuple) -> None:
    """Forget the kernel saved under ``key`` (one that failed to load, or failed its check after loading)."""
    with contextlib.suppress(OSError):
        _path(key).unlink()


def save(key: tuple, run: Callable) -> None:
    """Keep the precompiled ``run`` under ``key``; a failure to write only costs the next process a compilation."""
    if not enabled():
        return
    try:
        path = _path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        run.save_compiled_function(str(path))  # atomic: a temporary file, then a rename
    except Exception:
        pass


def _path(key: tuple) -> Path:
    return directory() / f"{_digest(key)}.kernel"


def _digest(key: tuple) -> str:
    """A hash of ``key`` (kernel, thread count, devices and dtypes, and the call's layout) and of the environment
    that shapes the generated code."""
    import torch._inductor.config

    kernel, *rest = key
    devices = {value for part in rest if isinstance(part, tuple) for value in part if isinstance(value, torch.device)}
    parts = [
        f"{kernel.__module__}.{kernel.__qualname__}",
        repr(rest),
        torch.__version__,
        str(torch.version.git_version),
        sys.version,
        platform.machine(),
        torch._inductor.config.get_hash().hex(),
        _source_digest(),
        *sorted(_device_signature(device) for device in devices),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _source_digest() -> str:
    """A hash of every source file of ``torchbop.optim``: the kernels and what they call."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _device_signature(device: torch.device) -> str:
    """What of ``device`` the generated code depends on: the vector instruction set of a CPU, the model of a GPU."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name, capability = torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index)
        return f"cuda {name} {capability} {torch.version.cuda}"
    if device.type == "cpu":
        try:
            from torch._inductor.cpu_vec_isa import pick_vec_isa
        except ImportError:
            return "cpu"
        return f"cpu {pick_vec_isa()}"
    return str(device)
