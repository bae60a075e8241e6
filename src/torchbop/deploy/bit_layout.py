r"""Sign bits in the layout of the XNOR-popcount kernel: packing, zero padding, and the rows of a convolution.

Bit 1 means -1 and bit 0 means +1: a value ``x`` gets the bit ``x < 0``, so 0, -0.0 and NaN are +1, as
:func:`torchbop.quantizers.sign` has them. Bits go 8 to a byte, element ``8 i + j`` at bit ``j`` of byte ``i``
(least significant first), and rows are padded with zero bits to whole 64-bit words, in both operands (zero bits
agree, so they add nothing to a popcount).

A convolution's input becomes one row per output position (bit-level im2col): the packed channels of each pixel its
kernel covers, pixel after pixel in ``(kh, kw)`` order, ``ceil(C / 8)`` bytes each. Spatial padding is zero
*bytes*, which read as +1: :class:`~torchbop.deploy.packed_layers.PackedBinaryConv2d` corrects for that.

:func:`pack_signs` and :func:`im2col_rows` run in C where the kernel builds (one pass each, AVX2 ``movemask`` for
the signs), else in torch; the two are tested equal (``tests/deploy/test_bit_layout.py``).

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

from torchbop.deploy.xnor_kernel import library, resolve_backend

__all__ = ["pack_bytes", "pack_rows", "pack_signs", "im2col_rows"]


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


def pack_signs(x: Tensor, pad: tuple[int, int, int, int] = (0, 0, 0, 0), *, backend: str = "auto") -> Tensor:
    """The sign bits of float32 ``x`` ``[N, C, H, W]`` as pixels: uint8 ``[N, H + top + bottom, W + left + right,
    ceil(C / 8)]``, zero bytes in the padding ``pad = (left, right, top, bottom)``."""
    n, c, h, w = x.shape
    left, right, top, bottom = pad
    cb = (c + 7) // 8
    if resolve_backend(backend) == "torch":
        negative = (x < 0).permute(0, 2, 3, 1)
        if c % 8:
            negative = F.pad(negative, (0, -c % 8))
        return F.pad(pack_bytes(negative), (0, 0, left, right, top, bottom))
    nhwc = x.permute(0, 2, 3, 1).contiguous().float()  # no copy for channels_last float32
    hp, wp = h + top + bottom, w + left + right
    out = (torch.zeros if any(pad) else torch.empty)(n, hp, wp, cb, dtype=torch.uint8)
    library().pack_signs(nhwc.data_ptr(), out.data_ptr(), n, h, w, c, hp, wp, top, left, cb)
    return out


def im2col_rows(
    pixels: Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    *,
    backend: str = "auto",
) -> Tensor:
    """Rows of packed pixels ``[N, Hp, Wp, Cb]`` (padded already) under a convolution: int64 words
    ``[N * Ho * Wo, ceil(kh * kw * Cb / 8)]``, each row its receptive field, zero bytes to fill the last word."""
    n, hp, wp, cb = pixels.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    row_bytes = kh * kw * cb
    padded_bytes = row_bytes + (-row_bytes % 8)
    rows = (torch.zeros if padded_bytes != row_bytes else torch.empty)(n * ho * wo, padded_bytes, dtype=torch.uint8)
    if resolve_backend(backend) == "torch":
        s_n, s_h, s_w, _ = pixels.stride()
        patches = pixels.as_strided((n, ho, wo, kh, kw, cb), (s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, 1))
        rows[:, :row_bytes].unflatten(-1, (kh, kw, cb)).copy_(patches.reshape(n * ho * wo, kh, kw, cb))
    else:
        pixels = pixels.contiguous()
        library().im2col_bytes(
            pixels.data_ptr(), rows.data_ptr(), n, hp, wp, cb, ho, wo, kh, kw, sh, sw, dh, dw, padded_bytes
        )
    return rows.view(torch.int64)
