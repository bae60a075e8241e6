"""Fixtures for the data tests: a network guard, writers of synthetic files, and the real datasets, loaded once."""

import gzip
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch

from torchbop.data import DatasetNotFoundError, load_cifar10, load_mnist


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Data tests never touch the network: any URL but file:// fails loudly."""
    real_urlopen = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        full_url = url.full_url if isinstance(url, urllib.request.Request) else url
        if urllib.parse.urlparse(full_url).scheme != "file":
            raise AssertionError(f"a data test tried to reach the network: {full_url}")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


def idx_bytes(array: torch.Tensor) -> bytes:
    """An uncompressed IDX file holding a uint8 tensor."""
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(s.to_bytes(4, "big") for s in array.shape)
    return header + bytes(array.flatten().tolist())


@pytest.fixture
def write_idx():
    """``write_idx(path, tensor, gz=True)``: write a tensor as an IDX file (gzipped unless ``gz=False``)."""

    def write(path: Path, array: torch.Tensor, gz: bool = True) -> Path:
        data = idx_bytes(array)
        path.write_bytes(gzip.compress(data) if gz else data)
        return path

    return write


def _load_or_skip(loader, data_required: bool, *args, **kwargs):
    try:
        return loader(*args, **kwargs)
    except DatasetNotFoundError as e:
        if data_required:
            pytest.fail(f"real dataset required but missing: {e}", pytrace=False)
        pytest.skip(f"real dataset missing: {e}")


@pytest.fixture(scope="session")
def real_mnist(data_dir: Path, data_required: bool):
    """``{"mnist"|"fashion-mnist": {"train"|"test": (images, labels)}}`` from the real files."""
    return {
        variant: {
            split: _load_or_skip(load_mnist, data_required, data_dir, split == "train", variant)
            for split in ("train", "test")
        }
        for variant in ("mnist", "fashion-mnist")
    }


@pytest.fixture(scope="session")
def real_cifar10(data_dir: Path, data_required: bool):
    """``{"train"|"test": (images, labels)}`` from the real CIFAR-10 batches."""
    return {
        split: _load_or_skip(load_cifar10, data_required, data_dir, split == "train") for split in ("train", "test")
    }


@pytest.fixture
def make_idx():
    """``make_idx(tensor) -> bytes``: the uncompressed IDX encoding of a uint8 tensor."""
    return idx_bytes
