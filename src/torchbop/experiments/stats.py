r"""Numerics for the figures and the report: the Gaussian smoother of the report's curves.

:func:`gaussian_filter1d` smooths a curve with a normalized Gaussian kernel, truncated at 4 standard deviations, and
reflects the curve at its ends (``a b c | c b a``), the conventions of ``scipy.ndimage.gaussian_filter1d`` with its
defaults (``mode="reflect"``, ``truncate=4.0``), which the report used with ``sigma=100`` steps.

Example:
    >>> import torch
    >>> gaussian_filter1d(torch.tensor([0.0, 0.0, 3.0, 0.0, 0.0]), 0.0)
    tensor([0., 0., 3., 0., 0.], dtype=torch.float64)
    >>> [round(v, 4) for v in gaussian_filter1d(torch.ones(7), 2.0).tolist()]  # constants stay constant
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["gaussian_kernel", "gaussian_filter1d"]


def gaussian_kernel(std: float, truncate: float = 4.0) -> torch.Tensor:
    """Weights ``exp(-x^2 / (2 std^2))`` for ``x = -r..r``, ``r = int(truncate * std + 0.5)``, summing to 1."""
    if not (std >= 0 and math.isfinite(std)):
        raise ValueError(f"Invalid std value: {std} (expected a finite number >= 0)")
    radius = int(truncate * std + 0.5)
    if radius == 0:
        return torch.ones(1, dtype=torch.float64)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (x / std) ** 2)
    return weights / weights.sum()


def gaussian_filter1d(values: Sequence[float] | torch.Tensor, std: float, truncate: float = 4.0) -> torch.Tensor:
    """Smooth a 1-D curve with a Gaussian of standard deviation ``std`` samples (float64 result, same length).

    Ends are extended by reflection (``d c b a | a b c d | d c b a``), repeated as often as the kernel needs.
    """
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    kernel = gaussian_kernel(std, truncate)
    radius = (len(kernel) - 1) // 2
    if radius == 0 or len(x) == 0:
        return x.clone()
    # indices of the reflected extension: period 2n, i -> i for 0 <= i < n, i -> 2n - 1 - i for n <= i < 2n
    n = len(x)
    index = torch.arange(-radius, n + radius) % (2 * n)
    index = torch.where(index < n, index, 2 * n - 1 - index)
    padded = x[index]
    return torch.nn.functional.conv1d(padded.view(1, 1, -1), kernel.flip(0).view(1, 1, -1)).flatten()
