"""Fixtures for the training tests: a tiny learnable MNIST-shaped dataset and a fast config factory."""

from __future__ import annotations

import pytest
import torch

from torchbop.training import TrainConfig


def make_synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 28, 28] noise with a bright class-dependent bar: learnable in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = (torch.rand(n, 28, 28, generator=g) * 60).to(torch.uint8)
    for c in range(10):
        images[labels == c, 2 * c + 2 : 2 * c + 6, 4:24] = 255
    return images, labels


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a busy machine (parallel test runs) oversubscribes two badly:
    each training test runs with ``torch.set_num_threads(1)``, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {"train": make_synthetic(256, seed=1), "test": make_synthetic(128, seed=2)}


@pytest.fixture
def tiny_config(tmp_path):
    """``tiny_config(**changes)``: a few-second MNIST-BNN run on CPU writing into tmp_path."""

    def make(**changes) -> TrainConfig:
        base = dict(
            name="tiny",
            epochs=2,
            batch_size=32,
            eval_batch_size=128,
            gamma=1e-2,
            threshold=1e-6,
            lr=0.01,
            accelerator="cpu",
            devices=1,
            progress_bar=False,
            log_every_n_steps=1,
            out=str(tmp_path / "run"),
        )
        return TrainConfig(**{**base, **changes})

    return make
