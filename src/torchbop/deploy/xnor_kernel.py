r"""The XNOR-popcount matrix product of packed bits, on the packed engine's C library, and its pure-torch twin.

For rows of packed sign bits (bit 1 = -1, bit 0 = +1, 64 to a word), ``xor_popcount(a, b)[i, j]`` counts the bits
where row ``i`` of ``a`` and row ``j`` of ``b`` differ. Over ``K`` real bit positions, the dot product of the two
+-1 vectors is then ``K - 2 * xor_popcount``: agreements count +1, disagreements -1. Extra zero bits appended to both
operands (to fill a word) agree and cost nothing.

Two implementations, equal bit for bit (``tests/deploy/test_xnor_kernel.py``):

- ``"kernel"``: the packed engine's C library (:mod:`torchbop.deploy.engine_kernels`; its fastest path on this CPU:
  AVX-512 VPOPCNTDQ, AVX2 or portable C), the rows of ``a`` as the pixels of a 1 x 1 convolution whose filters are
  the rows of ``b``, on ``torch.get_num_threads()`` threads;
- ``"torch"``: unpack to {0, 1} floats and ``a @ (1 - b).T + (1 - a) @ b.T``; exact, as float32 sums of 0/1 terms
  are exact below 2**24. The reference the kernel is tested against.

:func:`kernel_available` says whether the C library builds here (a C compiler on the ``PATH`` as ``cc``/``gcc``).

Example:
    >>> from torchbop.deploy.bit_layout import pack_rows
    >>> a = pack_rows(torch.tensor([[True, False, True]]))  # (-1, +1, -1)
    >>> b = pack_rows(torch.tensor([[True, True, False], [False, True, False]]))
    >>> xor_popcount(a, b, backend="torch")
    tensor([[2, 3]], dtype=torch.int32)
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchbop.deploy import engine_kernels

__all__ = ["xor_popcount", "binary_dot", "kernel_available", "resolve_backend", "BACKENDS"]

#: ``"kernel"`` (the C library), ``"torch"`` (pure torch) and ``"auto"`` (the kernel where it builds, else torch).
BACKENDS = ("auto", "kernel", "torch")


def kernel_available() -> bool:
    """True when the engine's C library is built (or builds now) and loads."""
    return engine_kernels.engine_available()


def resolve_backend(backend: str) -> str:
    """``"kernel"`` or ``"torch"`` for a value of :data:`BACKENDS`; ``"kernel"`` that cannot build raises."""
    if backend not in BACKENDS:
        raise ValueError(f"Invalid backend: {backend!r} (expected one of {BACKENDS})")
    if backend == "auto":
        return "kernel" if kernel_available() else "torch"
    if backend == "kernel" and not kernel_available():
        try:
            engine_kernels.resolve_engine("kernel")
        except ValueError as error:
            raise RuntimeError(str(error)) from None
    return backend


def _check_operands(a: Tensor, b: Tensor) -> None:
    if a.dtype != torch.int64 or b.dtype != torch.int64 or a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"xor_popcount needs int64 [M, K] and [N, K], got {a.dtype} {tuple(a.shape)} and {b.dtype} {tuple(b.shape)}"
        )


def _minus_twice_counts(a: Tensor, b: Tensor) -> Tensor:
    """``-2 * xor_popcount(a, b)`` in float32 ``[M, N]`` from the engine: ``a``'s rows are the pixels ``[M, 1, 1,
    8 K]`` of a 1 x 1 convolution with the filters ``b`` and a base of 0 (exact: integers far below 2**24)."""
    if a.device.type != "cpu" or b.device.type != "cpu":
        raise ValueError("the XNOR-popcount kernel runs on CPU tensors only; use backend='torch' on other devices")
    (m, words), n = a.shape, b.shape[0]
    if not (m and n and words):
        return torch.zeros(m, n)
    pixels = a.contiguous().view(torch.uint8).view(m, 1, 1, 8 * words)
    return engine_kernels.binary_conv(
        pixels,
        b.contiguous(),
        torch.zeros(1, n, dtype=torch.int32),
        kernel_size=(1, 1),
        stride=(1, 1),
        dilation=(1, 1),
        pad=(0, 0, 0, 0),
        path=engine_kernels.resolve_engine("kernel"),
        threads=max(1, torch.get_num_threads()),
    )


def xor_popcount(a: Tensor, b: Tensor, backend: str = "auto") -> Tensor:
    """``out[i, j] = popcount(a[i] ^ b[j])`` summed over the words: int32 ``[M, N]`` from int64 ``[M, K]``, ``[N, K]``.

    Args:
        a: packed rows (:func:`pack_rows`), int64.
        b: packed rows of the other operand, int64, same number of words.
        backend: ``"kernel"``, ``"torch"`` or ``"auto"`` (see the module docstring).
    """
    _check_operands(a, b)
    if resolve_backend(backend) == "torch":
        return _xor_popcount_torch(a, b)
    return (_minus_twice_counts(a, b) * -0.5).to(torch.int32)


def binary_dot(a: Tensor, b: Tensor, base: Tensor, backend: str = "auto") -> Tensor:
    """``base[i % P, j] - 2 * xor_popcount(a, b)[i, j]`` in float32 ``[M, N]``, for ``base`` float32 ``[P, N]``.

    With ``base`` = the number of real bit positions ``K`` this is the +-1 dot product of the rows; a ``base`` that
    varies with ``i % P`` adds a per-position term (a convolution's border, ``P`` = output positions per image). The
    kernel path adds ``base`` to ``-2 * counts`` (the same float32 operation, so the two paths agree bit for bit).
    """
    _check_operands(a, b)
    if base.dtype != torch.float32 or base.dim() != 2 or base.shape[1] != b.shape[0] or a.shape[0] % base.shape[0]:
        raise ValueError(
            f"binary_dot needs a float32 base [P, {b.shape[0]}] with P dividing {a.shape[0]}, got "
            f"{base.dtype} {tuple(base.shape)}"
        )
    if resolve_backend(backend) == "torch":
        counts = _xor_popcount_torch(a, b).float()
        return base.repeat(a.shape[0] // base.shape[0], 1) - 2 * counts
    period = base.shape[0]
    twice = _minus_twice_counts(a, b).view(a.shape[0] // period, period, b.shape[0])
    return (twice + base).view(a.shape[0], b.shape[0])


def _unpack(words: Tensor) -> Tensor:
    """int64 ``[M, K]`` words to float {0, 1} ``[M, 64 K]``, bit ``j`` of byte ``i`` at column ``8 i + j``."""
    shifts = torch.arange(8, dtype=torch.uint8)
    bytes_ = words.contiguous().view(torch.uint8).view(words.shape[0], -1)
    return ((bytes_.unsqueeze(-1) >> shifts) & 1).reshape(words.shape[0], -1).float()


def _xor_popcount_torch(a: Tensor, b: Tensor) -> Tensor:
    fa, fb = _unpack(a), _unpack(b)
    differ = fa @ (1 - fb).T + (1 - fa) @ fb.T  # 0/1 terms: exact in float32 below 2**24 bits per row
    return differ.to(torch.int32)
