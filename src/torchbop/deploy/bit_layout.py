r"""Sign bits in the layout of the XNOR-popcount kernel: bools packed 8 to a byte, rows padded to 64-bit words.

Bit 1 means -1 and bit 0 means +1: a value ``x`` gets the bit ``x < 0``, so 0, -0.0 and NaN are +1, as
:func:`torchbop.quantizers.sign` has them. Bits go 8 to a byte, element ``8 i + j`` at bit ``j`` of byte ``i``
(least significant first), and rows are padded with zero bits to whole 64-bit words, in both operands (zero bits
agree, so they add nothing to a popcount).

The packed engine lays pixels out the same way (:mod:`torchbop.deploy.engine_kernels`: NHWC, ``ceil(C / 8)``
bytes a pixel, bit 1 = -1), and packs and convolves them in C.

Example:
    >>> pack_bytes(torch.tensor([True, False, False, False, False, False, False, True]))
    tensor([129], dtype=torch.uint8)
    >>> pack_rows(torch.ones(2, 3, dtype=torch.bool))
    tensor([[7],
            [7]])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pack_bytes", "pack_rows"]


def pack_bytes(bits: Tensor) -> Tensor:
    """Bool ``[..., 8k]`` to uint8 ``[..., k]``, 8 bits to a byte, element ``8i + j`` at bit ``j`` (LSB first).

    Each group of 8 bools is read as one little-endian 64-bit word of 0/1 bytes, and one multiplication gathers its
    bytes' low bits into the top byte: three passes over an eighth of the elements.
    """
    if bits.shape[-1] % 8:
        raise ValueError(f"pack_bytes needs a last dimension divisible by 8, got {tuple(bits.shape)}")
    if bits.dtype != torch.bool:
        raise TypeError(f"pack_bytes needs a bool tensor, got {bits.dtype}")
    words = bits.contiguous().view(torch.uint8).view(torch.int64)  # little-endian: byte j of a word = element j
    return ((words * 0x0102040810204080) >> 56).bitwise_and_(0xFF).to(torch.uint8)


def pack_rows(bits: Tensor) -> Tensor:
    """Bool ``[M, K]`` to int64 words ``[M, ceil(K / 64)]``, padded with zero bits: the kernel's operand layout."""
    m, k = bits.shape
    padded = F.pad(bits, (0, -k % 64)) if k % 64 else bits
    return pack_bytes(padded).view(torch.int64).view(m, -1)
