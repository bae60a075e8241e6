"""Sign bits in the kernel's layout: bit order, word padding, and the C pack and im2col equal to the torch ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchbop.deploy.bit_layout import im2col_rows, pack_bytes, pack_rows, pack_signs


def test_pack_bytes_bit_order():
    bits = torch.zeros(2, 16, dtype=torch.bool)
    bits[0, 0] = bits[0, 9] = bits[1, 7] = bits[1, 15] = True
    assert pack_bytes(bits).tolist() == [[1, 2], [128, 128]]
    assert pack_bytes(torch.ones(8, dtype=torch.bool)).tolist() == [255]


def test_pack_rows_pads_to_words_with_zero_bits():
    words = pack_rows(torch.ones(3, 70, dtype=torch.bool))
    assert words.shape == (3, 2) and words.dtype == torch.int64
    assert words[:, 0].tolist() == [-1] * 3 and words[:, 1].tolist() == [0b111111] * 3


def signed_input(shape, channels_last: bool, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, shape, generator=g).float()  # many exact zeros
    x[0, 0, 0, 0] = -0.0  # not negative: +1
    x[-1, -1, -1, -1] = float("nan")  # not negative: +1 (as sign gives)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("channels", [1, 5, 8, 13, 16, 64])
@pytest.mark.parametrize("pad", [(0, 0, 0, 0), (1, 1, 1, 1), (0, 2, 1, 0)])
def test_pack_signs_kernel_equals_torch(channels, pad, channels_last):
    x = signed_input((3, channels, 5, 6), channels_last)
    got, expected = pack_signs(x, pad, backend="kernel"), pack_signs(x, pad, backend="torch")
    assert got.shape == expected.shape == (3, 5 + pad[2] + pad[3], 6 + pad[0] + pad[1], (channels + 7) // 8)
    assert torch.equal(got, expected)


def test_pack_signs_values():
    x = torch.tensor([-1.0, 0.0, -0.0, 2.0, -3.0, float("nan"), 1.0, -1.0, -5.0]).view(1, 9, 1, 1)
    assert pack_signs(x, backend="kernel").flatten().tolist() == [0b10010001, 0b1]


@pytest.mark.parametrize(
    "kernel_size, stride, dilation",
    [((3, 3), (1, 1), (1, 1)), ((3, 2), (2, 1), (1, 2)), ((1, 1), (1, 1), (1, 1)), ((5, 5), (2, 2), (1, 1))],
)
@pytest.mark.parametrize("cb", [1, 3, 8])
def test_im2col_kernel_equals_torch_and_unfold(kernel_size, stride, dilation, cb):
    g = torch.Generator().manual_seed(cb)
    pixels = torch.randint(0, 256, (2, 9, 8, cb), generator=g, dtype=torch.uint8)
    got = im2col_rows(pixels, kernel_size, stride, dilation, backend="kernel")
    assert torch.equal(got, im2col_rows(pixels, kernel_size, stride, dilation, backend="torch"))
    # the specification: F.unfold of the bytes as channels, reordered to (kh, kw, byte) per row
    unfolded = F.unfold(pixels.permute(0, 3, 1, 2).float(), kernel_size, dilation=dilation, stride=stride)
    taps = kernel_size[0] * kernel_size[1]
    rows = unfolded.view(2, cb, taps, -1).permute(0, 3, 2, 1).reshape(-1, cb * taps)
    as_bytes = got.view(torch.uint8)[:, : rows.shape[1]]
    assert torch.equal(as_bytes.float(), rows)
    assert not got.view(torch.uint8)[:, rows.shape[1] :].any()  # zero bytes fill the last word
