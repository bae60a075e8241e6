"""Shared test fixtures: where the real datasets are, and whether their absence is a skip or a failure.

Real-data tests (``@pytest.mark.realdata``) read the data root the library itself resolves (``$TORCHBOP_DATA``, else
``~/.cache/torchbop``). On a laptop without the files they skip; with ``TORCHBOP_REQUIRE_DATA=1`` or ``CI`` set (as
``.ci/run`` does) a missing dataset fails the run instead. Tests marked ``gpu`` skip when CUDA is unavailable.
"""

import os
from pathlib import Path

import pytest
import torch

from torchbop.data.paths import resolve_data_dir


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def data_required() -> bool:
    """True when missing real data must fail the run (``TORCHBOP_REQUIRE_DATA=1`` or ``CI`` set)."""
    return _truthy(os.environ.get("TORCHBOP_REQUIRE_DATA")) or _truthy(os.environ.get("CI"))


@pytest.fixture(scope="session")
def data_dir(data_required: bool) -> Path:
    """The real data root; skips (or, when data is required, fails) if it does not exist."""
    root = resolve_data_dir()
    if not root.is_dir():
        message = f"real datasets not found: {root} does not exist (set $TORCHBOP_DATA)"
        if data_required:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
