"""Fixtures for the experiment tests: every experiment run once at the ``smoke`` scale (seconds each, real data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchbop.experiments import EXPERIMENTS, configure, run_experiment


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these tiny models gain nothing from more, and lose a lot when the cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _run_smoke(name: str, results_root: Path, data_dir: Path, **changes):
    return run_experiment(
        name,
        configure("smoke", name, changes),
        profile="smoke",
        results_root=results_root,
        data_dir=str(data_dir),
        jobs=1,
        threads=1,
        verbose=False,
        log=lambda message: None,
    )


@pytest.fixture(scope="session")
def run_smoke():
    """``run_smoke(name, results_root, data_dir, **changes)``: run experiment ``name`` at the smoke scale (with
    ``changes``) quietly in this process, one job; returns the manifest."""
    return _run_smoke


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A results root holding all four experiments at the smoke scale."""
    root = tmp_path_factory.mktemp("results")
    for name in EXPERIMENTS:
        manifest = _run_smoke(name, root, data_dir)
        assert manifest["failed"] == [], f"{name}: runs failed: {manifest['failed']}"
    return root
