"""The XNOR-popcount product: the engine's C library equals the pure-torch reference."""

from __future__ import annotations

import pytest
import torch

from torchbop.deploy.bit_layout import pack_rows
from torchbop.deploy.xnor_kernel import binary_dot, kernel_available, resolve_backend, xor_popcount


def random_words(rows: int, words: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**63), 2**63 - 1, (rows, words), generator=g, dtype=torch.int64)


def test_torch_reference_counts_differing_bits():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 150, generator=g) < 0.5, torch.rand(4, 150, generator=g) < 0.5
    expected = (a[:, None, :] != b[None, :, :]).sum(-1).int()
    assert torch.equal(xor_popcount(pack_rows(a), pack_rows(b), backend="torch"), expected)


@pytest.mark.parametrize("threads", [1, 2, 3])
# rows as pixels of a 1 x 1 convolution: whole-word pixels (direct rows), partial last panels (n % 16), partial row
# tiles (m % 4, m % 6), long rows (the AVX2 counters' widening every 63 bytes)
@pytest.mark.parametrize(
    "m, n, k",
    [
        (1, 1, 1),
        (3, 7, 2),
        (4, 2, 1),
        (17, 5, 3),
        (64, 33, 5),
        (5, 130, 2),
        (8, 4, 4),
        (9, 5, 18),
        (6, 3, 131),
        (4, 2, 260),
    ],
)
def test_kernel_equals_torch(m, n, k, threads):
    assert kernel_available()
    a, b = random_words(m, k, seed=m * 100 + n), random_words(n, k, seed=k)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = xor_popcount(a, b, backend="kernel")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, xor_popcount(a, b, backend="torch"))


def test_empty_and_bad_operands():
    assert xor_popcount(random_words(0, 2, 0), random_words(3, 2, 1), backend="kernel").shape == (0, 3)
    with pytest.raises(ValueError, match="int64"):
        xor_popcount(torch.zeros(2, 2, dtype=torch.int32), torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="Invalid backend"):
        resolve_backend("cuda")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m, n, period", [(12, 5, 3), (9, 130, 1), (1, 3, 1), (40, 6, 8)])
def test_binary_dot_kernel_equals_torch(m, n, period, threads):
    a, b = random_words(m, 3, seed=m), random_words(n, 3, seed=n)
    base = torch.randint(-50, 200, (period, n), generator=torch.Generator().manual_seed(period)).float()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = binary_dot(a, b, base, backend="kernel")
    finally:
        torch.set_num_threads(before)
    expected = base.repeat(m // period, 1) - 2 * xor_popcount(a, b, backend="torch").float()
    assert torch.equal(got, expected) and torch.equal(binary_dot(a, b, base, backend="torch"), expected)
    with pytest.raises(ValueError, match="base"):
        binary_dot(a, b, base[:, :1], backend="kernel")


@pytest.mark.parametrize("m, n, k", [(2048, 256, 18), (8, 16384, 64), (1003, 131, 67)])
def test_threads_split_large_products(m, n, k):
    """Threads start from 2M word pairs on (rows, or columns too for few rows); the split changes nothing."""
    a, b = random_words(m, k, seed=1), random_words(n, k, seed=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = xor_popcount(a, b, backend="kernel")
        torch.set_num_threads(3)
        assert torch.equal(xor_popcount(a, b, backend="kernel"), one)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[:5, :7], xor_popcount(a[:5], b[:7], backend="torch"))


def test_kernels_are_cached_only_in_a_private_folder(tmp_path, monkeypatch):
    import os
    import tempfile

    from torchbop.deploy import engine_kernels

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    private = engine_kernels._cache_folder()
    assert private.parent == tmp_path and not private.stat().st_mode & 0o077
    assert engine_kernels._cache_folder() == private
    os.chmod(private, 0o777)  # writable by others: a planted library could be loaded from it
    other = engine_kernels._cache_folder()
    assert other != private and not other.stat().st_mode & 0o077
