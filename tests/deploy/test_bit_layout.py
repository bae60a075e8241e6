"""Sign bits in the kernel's layout: bit order, word padding, and the engine's C pack equal to the torch one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchbop.deploy.bit_layout import pack_bytes, pack_rows
from torchbop.deploy.engine_kernels import available_paths, pack_signs_nhwc


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


def torch_signs(x: torch.Tensor) -> torch.Tensor:
    """The specification: bit ``x < 0`` per channel, NHWC, channels padded to whole bytes."""
    negative = (x < 0).permute(0, 2, 3, 1)
    return pack_bytes(F.pad(negative, (0, -x.shape[1] % 8)))


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("channels", [1, 5, 8, 13, 16, 64])
def test_engine_pack_signs_equals_torch(channels, channels_last):
    x = signed_input((3, channels, 5, 6), channels_last)
    for path in available_paths():
        got = pack_signs_nhwc(x, path)
        assert got.shape == (3, 5, 6, (channels + 7) // 8)
        assert torch.equal(got, torch_signs(x)), path


def test_engine_pack_signs_values():
    x = torch.tensor([-1.0, 0.0, -0.0, 2.0, -3.0, float("nan"), 1.0, -1.0, -5.0]).view(1, 9, 1, 1)
    for path in available_paths():
        assert pack_signs_nhwc(x, path).flatten().tolist() == [0b10010001, 0b1], path
