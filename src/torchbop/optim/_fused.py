"""The fused path's machinery: each kernel compiled once per process, and a decision, once, whether it can run.

``Bop`` and ``Bop2ndOrder`` write their whole step as one elementwise function of flattened tensors (in ``bop.py`` and
``bop2nd.py``); ``torch.compile`` turns it into a single loop that reads each input once and writes each output once.
One compiled call runs it on :data:`ARITY` tensors at once (:func:`batched`: one loop per tensor in one generated
program), so a step on BinaryNet's nine binary weights is two calls, not nine: on CPU a call costs tens of
microseconds of Python, and on CUDA each call is a launch. Four things keep that to one compilation per kernel,
device and dtype combination for the life of the process:

* shapes are dynamic (``dynamic=True``) and the kernels see 1-D tensors that alias the parameters' memory (not views
  of them, which would specialize the kernel on each parameter's number of dimensions), so a new tensor size or rank
  reuses the kernel (a tensor of fewer than two entries, which ``torch.compile`` would specialize on, takes the eager
  path instead);
* the kernel is compiled on an example whose :data:`ARITY` tensors all have different sizes (:func:`_example`), so
  that the compiler assumes no two of them equal, and every call fills the slots it does not need with two-entry
  scratch tensors of its own (:func:`_padding`): any number of tensors, in any sizes, reuses the compilation;
* every hyperparameter (gamma, the threshold and tie rule, sigma, eps) is a one-entry tensor argument, never a Python
  number, so a scheduler that changes one does not recompile;
* kernels always run under ``torch.no_grad()``, whatever the caller's grad mode. (A new thread count, set with
  ``torch.set_num_threads``, does recompile: the generated CPU code is built for one.)

Whether a kernel can be used is decided by :func:`unavailable` once per process, kernel, device type and dtypes: it
compiles the kernel on a 64Ki-entry sample and compares it, bit for bit, with the reference implementation. A
machine without a C++ compiler (CPU) or Triton (CUDA), a disabled ``torch.compile``, or a compiler whose arithmetic
differs from eager PyTorch's (fused multiply-adds, approximate division) therefore makes the optimizers fall back to
their eager path, with one warning, instead of failing or silently changing results. The sample compilation is the
one the real steps then reuse.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Hashable

import torch

from torchbop.optim import _kernel_cache

# Triton (CUDA) contracts a * b + c into fused multiply-adds, divides approximately and flushes denormals unless told
# otherwise; eager PyTorch does none of these, and the kernels must match it bit for bit. The C++ backend (CPU)
# already compiles with -ffp-contract=off and IEEE division, so these options do not change its code.
_OPTIONS = {
    "emulate_precision_casts": True,
    "eager_numerics.division_rounding": True,
    "eager_numerics.disable_ftz": True,
}

# Device types with a torch.compile backend that the fused path uses; others take the eager path without a warning.
FUSED_DEVICE_TYPES = ("cpu", "cuda")

# Size of the sample a kernel is compiled and checked on: large enough that Inductor's code generator, which picks
# its parallelization from the sizes it first sees, parallelizes the loop as it should for real tensors.
PROBE_SIZE = 1 << 16

#: Tensors per compiled call (:func:`batched`); a step with more makes several calls, the last one padded.
ARITY = 8

# A compiled call costs, on CPU, as much as a dozen eager operations (Python wrappers, even without Dynamo's guards):
# below this many entries the eager path is as fast, and the automatic choice (fused=None) leaves a tensor to it.
AUTO_MIN_ENTRIES = {"cpu": 1 << 12}

_support: dict[Hashable, str | None] = {}  # (kernel name, device type, dtypes...) -> None, or why not
_warned: set[Hashable] = set()
_runners: dict[tuple, Callable] = {}  # (kernel, threads, (device, dtype) of each argument) -> compiled callable
_scratch: dict[tuple, tuple] = {}  # (device, dtype) of a slot's tensors -> padding slots (see _padding)
_loaded: dict[tuple, tuple] = {}  # runner key -> its file's key, for kernels loaded from disk and not yet checked


@functools.cache
def batched(kernel: Callable) -> Callable:
    """``kernel`` on :data:`ARITY` tensors: ``batched(kernel)(slots, *scalars)`` computes
    ``kernel(*slot, *scalars)`` for each tuple ``slot`` of ``slots`` and returns the results stacked (a tuple of
    stacks when the kernel returns a tuple): entry ``j`` is slot ``j``'s."""

    def run(slots: tuple[tuple[torch.Tensor, ...], ...], *scalars: torch.Tensor):
        outs = [kernel(*slot, *scalars) for slot in slots]
        if isinstance(outs[0], tuple):
            return tuple(torch.stack(column) for column in zip(*outs))
        return torch.stack(outs)

    run.__name__ = run.__qualname__ = f"batched_{kernel.__name__}"
    return run


@functools.cache
def compiled(kernel: Callable) -> Callable:
    """:func:`batched` ``kernel`` compiled with dynamic shapes, one graph (``fullgraph=True``), eager PyTorch's
    numerics."""
    import torch._inductor.config

    known = torch._inductor.config.get_config_copy()  # older torch lacks some options: the probe then decides
    options = {key: value for key, value in _OPTIONS.items() if key in known}
    return torch.compile(batched(kernel), dynamic=True, fullgraph=True, options=options)


def runner(kernel: Callable, slot: tuple[torch.Tensor, ...], scalars: tuple[torch.Tensor, ...]) -> Callable:
    """The compiled :func:`batched` ``kernel`` for slots like ``slot`` and these scalars (their devices and dtypes,
    at this thread count), called as ``run(slots, *scalars)`` with :data:`ARITY` slots.

    It is compiled on :func:`_example` arguments, whose slots differ in size, never on a step's own (two equal sizes
    there would be compiled as one). Where this torch can precompile (``torch.compile(...).aot_compile``), the result
    skips Dynamo's per-call frame evaluation and guards, most of a call's cost on CPU (about 110 us down to 30 us on
    the 2-core development VM): safe because everything those guards would check is in the key here, or fixed by
    :func:`apply` (1-D dense tensors of at least two and fewer than 2**31 entries, no two sharing memory, no grad
    mode). Elsewhere it is the guarded compiled function. A precompiled kernel is kept on disk for the next process
    (:mod:`torchbop.optim._kernel_cache`), which loads it instead of compiling it again.
    """
    key = (kernel, torch.get_num_threads(), *((a.device, a.dtype) for a in (*slot, *scalars)))
    run = _runners.get(key)
    if run is None:
        stored_as = (*key, ARITY, PROBE_SIZE)
        run = _kernel_cache.load(stored_as)
        if run is None:
            run = _compile(kernel, (_example(slot), *scalars), stored_as)
        else:
            _loaded[key] = stored_as
        _runners[key] = run
    return run


def _compile(kernel: Callable, example: tuple, stored_as: tuple) -> Callable:
    """:func:`compiled` ``kernel``, precompiled on ``example`` and saved under ``stored_as`` where this torch can,
    else the guarded function, compiled on ``example``."""
    run = compiled(kernel)
    try:
        precompiled = run.aot_compile((example, {}))
    except Exception:  # older torch, or precompiling (newer and stricter) failed: the guarded function,
        with torch.no_grad():  # compiled here, on the example, so that later calls reuse that compilation
            run(*example)
        return run
    _kernel_cache.save(stored_as, precompiled)
    precompiled.disable_guard_check()
    return precompiled


def _example(slot: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], ...]:
    """:data:`ARITY` slots like ``slot`` for compiling: the tensors of slot ``j`` have ``PROBE_SIZE + 16 j`` entries,
    so that no two slots share a size (a compiler that sees two equal sizes may assume them equal forever)."""
    return tuple(
        tuple(torch.zeros(PROBE_SIZE + 16 * j, dtype=t.dtype, device=t.device) for t in slot) for j in range(ARITY)
    )


def _padding(slot: tuple[torch.Tensor, ...], count: int) -> tuple[tuple[torch.Tensor, ...], ...]:
    """``count`` slots of two-entry scratch tensors like ``slot``'s (devices, dtypes), to fill a call: the kernel
    writes into them and their results are dropped. Made once per device and dtypes; every slot its own memory."""
    key = _slot_key(slot)
    if key not in _scratch:
        _scratch[key] = tuple(
            tuple(torch.zeros(2, dtype=t.dtype, device=t.device) for t in slot) for _ in range(ARITY - 1)
        )
    return _scratch[key][:count]


def unavailable(key: tuple, probe: Callable[[], None]) -> str | None:
    """Why the fused kernel described by ``key`` cannot be used, or ``None`` when it can; decided once per process.

    ``key`` starts with the kernel's name and the device type, then whatever else selects a compilation (dtypes).
    ``probe()`` runs the kernel on a sample and raises if it fails to compile or differs from the reference.
    """
    if key in _support:
        return _support[key]
    reason = _environment_problem(key[1])
    if reason is None:
        reason = _probe(probe)
        if reason is not None and _forget_loaded():  # a kernel loaded from disk failed: compile it afresh, once
            reason = _probe(probe)
    _loaded.clear()  # those the probe ran have passed it
    _support[key] = reason
    return reason


def _probe(probe: Callable[[], None]) -> str | None:
    try:
        with torch.no_grad():
            probe()
    except Exception as exc:  # any failure to build or match means: use the eager path
        return _describe(exc)
    return None


def _forget_loaded() -> bool:
    """Drop the kernels loaded from disk and not yet checked, from this process and from the disk; whether there
    were any. (A stale or damaged file must not send every later process to the eager path.)"""
    for key, stored_as in _loaded.items():
        _runners.pop(key, None)
        _kernel_cache.remove(stored_as)
    found = bool(_loaded)
    _loaded.clear()
    return found


def _describe(exc: BaseException) -> str:
    """The innermost cause of a compilation failure, as ``Type: first line`` (Inductor wraps the real error)."""
    while (inner := getattr(exc, "inner_exception", None) or exc.__cause__) is not None and inner is not exc:
        exc = inner
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def is_compiling() -> bool:
    """Whether this runs inside a region ``torch.compile`` is tracing (``torch.compiler.is_compiling``, torch 2.3+)."""
    check = getattr(torch.compiler, "is_compiling", None)
    return bool(check()) if check is not None else False


def _increment_version(tensors: list[torch.Tensor]) -> None:
    increment = getattr(torch.autograd.graph, "increment_version", None)
    if increment is not None:
        increment(tensors)
    else:  # torch before 2.3: the private function it wraps
        for t in tensors:
            torch._C._increment_version(t)


def _environment_problem(device_type: str) -> str | None:
    """What rules out compiling for ``device_type`` before any attempt: cheap checks, each with a clear reason."""
    if device_type not in FUSED_DEVICE_TYPES:
        return f"no fused kernel for {device_type} tensors"
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if getattr(torch._dynamo.config, "disable", False):
        return "torch.compile is disabled (TORCHDYNAMO_DISABLE)"
    if device_type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:  # another torch layout: let the compilation itself tell
            return None
        try:
            get_cpp_compiler()
        except Exception as exc:
            return f"no working C++ compiler for torch.compile ({type(exc).__name__}; set $CXX or install g++)"
    elif device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton is not installed"
    return None


def choose(
    optimizer: str,
    kernel: str,
    keys: set[tuple],
    probe: Callable[..., None],
    *,
    fused: bool | None,
    foreach: bool | None,
) -> bool:
    """Whether a step takes the fused path: ``fused=True`` always (or ``RuntimeError`` with the reason),
    ``fused=False`` or an explicit ``foreach`` never, ``None`` wherever the kernel works for every
    ``key = (device type, dtypes...)`` of the step (else one warning per process, and the eager path).

    Inside a compiled region (``torch.compile`` of a whole training step) the automatic choice is the eager path,
    whose plain operations that compiler fuses with the rest.
    """
    if fused is False or (fused is None and foreach is not None) or not keys:
        return False
    if fused is None and is_compiling():
        return False
    for key in keys:
        reason = unavailable((kernel, *key), functools.partial(probe, *key))
        if reason is not None:
            if fused:
                require(optimizer, key[0], reason)
            warn_once(optimizer, key[0], reason)
            return False
    return True


def worth_compiling(param: torch.Tensor, fused: bool | None) -> bool:
    """Whether ``param`` goes to the kernel: any tensor it can take when ``fused=True``, a large enough one when
    the choice is automatic (:data:`AUTO_MIN_ENTRIES`)."""
    return param.numel() >= (2 if fused else AUTO_MIN_ENTRIES.get(param.device.type, 2))


def apply(
    kernel: Callable,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    *states: list[torch.Tensor],
    hyperparameters: Callable[[torch.dtype], tuple],
    fused: bool | None = True,
) -> tuple[list, list[int]]:
    """Run the compiled ``kernel`` on each parameter: ``kernel(w, g, *states, *hyperparameters(dtype))`` on 1-D
    aliases, the hyperparameters as one-entry tensors of the states' dtype, :data:`ARITY` parameters of the same
    devices and dtypes per call. Returns the kernel's outputs (``None`` where it did not run) and the indices of the
    parameters left to the eager path: those the kernel cannot take (:func:`flat_views`) and, when ``fused`` is
    ``None`` (automatic), those too small to be worth a call (:func:`worth_compiling`) unless a call made for larger
    ones has a padding slot free for them."""
    outputs: list = [None] * len(params)
    rest = []
    batches: dict[tuple, list[tuple[int, tuple[torch.Tensor, ...]]]] = {}  # devices and dtypes -> (index, slot)
    small = []  # automatic choice: too small to be worth a call of their own, but free to fill a padding slot
    with torch.no_grad():  # the grad mode is part of what a compiled kernel is specialized on
        for i, tensors in enumerate(zip(params, grads, *states)):
            if not worth_compiling(tensors[0], fused):
                small.append(i)
            elif (flat := flat_views(*tensors)) is None:
                rest.append(i)
            else:
                batches.setdefault(_slot_key(flat), []).append((i, flat))
        for i in small:  # flattened only when a call has a slot free for them (same devices and dtypes)
            tensors = (params[i], grads[i], *(s[i] for s in states))
            members = batches.get(_slot_key(tensors))
            flat = flat_views(*tensors) if members is not None and len(members) % ARITY else None
            if flat is None:
                rest.append(i)
            else:
                members.append((i, flat))
        rest.sort()
        for key, members in batches.items():
            scalars = _scalars(hyperparameters(key[2][1]), *key[2])  # key[2]: the first state's device and dtype
            for start in range(0, len(members), ARITY):
                chunk = members[start : start + ARITY]
                slots = tuple(slot for _, slot in chunk)
                slots += _padding(slots[0], ARITY - len(slots))
                result = runner(kernel, slots[0], scalars)(slots, *scalars)
                for j, (i, _) in enumerate(chunk):
                    outputs[i] = tuple(r[j] for r in result) if isinstance(result, tuple) else result[j]
                    _increment_version([params[i], *(s[i] for s in states)])  # the kernel wrote through aliases
    return outputs, rest


def _slot_key(slot: tuple[torch.Tensor, ...]) -> tuple:
    return tuple((t.device, t.dtype) for t in slot)


def _scalars(values: tuple, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """``values`` as one-entry tensors; the same tensors again for the same values (a step makes none, unless a
    schedule changed something). Shape ``(1,)``, not 0-dim: Dynamo treats a 0-dim float64 CPU tensor as a Python
    number, which precompiling (:func:`runner`) does not support."""
    if any(isinstance(v, torch.Tensor) for v in values):
        return tuple(torch.as_tensor(v, dtype=dtype, device=device).reshape(1).clone() for v in values)
    return _cached_scalars(values, device, dtype)


@functools.lru_cache(maxsize=64)
def _cached_scalars(values: tuple, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor([v], dtype=dtype, device=device) for v in values)


def warn_once(optimizer: str, device_type: str, reason: str) -> None:
    """The one warning per process, optimizer and device type that the automatic choice fell back to eager."""
    if device_type not in FUSED_DEVICE_TYPES or (optimizer, device_type) in _warned:
        return
    _warned.add((optimizer, device_type))
    warnings.warn(
        f"{optimizer} cannot use its fused kernel on {device_type} ({reason}); it uses the eager path instead, which "
        f"gives bit-identical results but is slower. Pass fused=False to choose the eager path explicitly.",
        stacklevel=2,
    )


def require(optimizer: str, device_type: str, reason: str | None) -> None:
    """``fused=True`` was asked for explicitly: refuse it, with the reason, where the kernel cannot be used."""
    if reason is not None:
        raise RuntimeError(
            f"{optimizer}(fused=True) cannot use its fused kernel on {device_type}: {reason}. Leave fused unset to "
            "fall back to the eager path automatically, or pass fused=False."
        )


def flat_views(
    w: torch.Tensor, grad: torch.Tensor, *states: torch.Tensor, alias: bool = True
) -> tuple[torch.Tensor, ...] | None:
    """1-D views of ``w``, ``grad`` and ``states``, entry for entry, or ``None`` where the kernels cannot take them.

    ``w`` and its state tensors must share one dense layout (contiguous, channels-last or any other permutation of
    the dimensions); a gradient of another layout is copied into that order. Refused: fewer than two entries (a size
    of 0 or 1 would be compiled as a constant), 2**31 entries or more (flip counts are summed in int32), overlapping
    or gappy layouts, state tensors laid out otherwise than the weights. With ``alias`` (for compiled kernels) the
    results are not views but aliases (see :func:`_alias`).
    """
    if not 2 <= w.numel() < 2**31 or grad.shape != w.shape:
        return None
    if w.is_contiguous() and all(s.is_contiguous() for s in states):
        tensors = (w, grad if grad.is_contiguous() else grad.contiguous(), *states)
        return tuple(_alias(t) for t in tensors) if alias else tuple(t.view(-1) for t in tensors)
    order = sorted(range(w.dim()), key=lambda d: -w.stride(d))
    permuted = w.permute(order)
    if not permuted.is_contiguous() or any(s.shape != w.shape or s.stride() != w.stride() for s in states):
        return None
    tensors = (permuted, grad.permute(order).contiguous(), *(s.permute(order) for s in states))
    return tuple(_alias(t) for t in tensors) if alias else tuple(t.view(-1) for t in tensors)


def _alias(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor over the memory of ``t`` (contiguous) that is not a view of it.

    A compiled kernel that writes into a view is specialized on the view's base (its number of dimensions, among
    others), so a 4-D convolution weight and a 2-D linear weight would each get their own compilation; and on the
    tensor's type and ``requires_grad``, which differ between a parameter and a state tensor. Writes through it do
    not bump ``t``'s version counter: :func:`apply` does.
    """
    flat = torch.empty(0, dtype=t.dtype, device=t.device)
    return flat.set_(t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))
