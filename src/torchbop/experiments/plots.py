"""Figures, drawn from stored records only (never trains): :func:`save_figure` gives an experiment's ``plot`` a
figure and writes it as a PNG; the helpers are what the experiments' figures share.

Matplotlib is used through its object API with the Agg canvas (``Figure`` + ``FigureCanvasAgg``): no pyplot, no global
backend switch, so importing this module changes nothing for the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["COLORS", "save_figure", "scale_note", "mean_curve"]

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#e377c2"]


def save_figure(
    draw: Callable[[Figure, list, dict, Any], None],
    records: list[dict[str, Any]],
    summary: dict[str, Any],
    config: Any,
    path: Path,
) -> Path:
    """``draw(fig, records, summary, config)`` on an 11 x 4.2 inch figure (``draw`` may resize it), saved to
    ``path`` (PNG); returns the path."""
    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    draw(fig, records, summary, config)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def scale_note(config: Any) -> str:
    """The scale settings a figure's title states: ``epochs 2, seeds 3, subset 6000, ...`` (those the config has)."""
    keys = ("epochs", "retrain_epochs", "seeds", "width", "subset", "test_subset")
    values = {k: getattr(config, k) for k in keys if hasattr(config, k)}
    return ", ".join(f"{k} {'all' if v is None else v}" for k, v in values.items())


def mean_curve(curves: list[list[float]]) -> torch.Tensor:
    """The pointwise mean of curves (float64), cut to the shortest."""
    n = min(len(c) for c in curves)
    return torch.tensor([c[:n] for c in curves], dtype=torch.float64).mean(dim=0)
