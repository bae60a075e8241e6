"""Finding the binary layers and parameters of a model, and splitting parameters between optimizers.

A binary layer is any module with ``is_binary = True`` (``BinaryConv2d``, ``BinaryLinear``, or your own) and its
binary parameter is its ``weight``. Nothing else is inferred: no name patterns, no shapes, no values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from torch import nn

from torchbop.nn.layers import MODES

__all__ = ["named_binary_layers", "named_binary_parameters", "binary_parameters", "split_binary_params"]

logger = logging.getLogger(__name__)


def _check_module(model: object, fn: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: expected nn.Module, got {type(model).__name__}")
    return model


def _is_binary_layer(module: nn.Module) -> bool:
    return getattr(module, "is_binary", False) is True


def named_binary_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, layer)`` for every binary layer of ``model`` (``model`` itself included), in module order.

    Example:
        >>> from torchbop.nn import BinaryLinear
        >>> model = nn.Sequential(nn.Linear(4, 4), BinaryLinear(4, 2))
        >>> [name for name, _ in named_binary_layers(model)]
        ['1']
    """
    _check_module(model, "named_binary_layers")
    return ((name, m) for name, m in model.named_modules() if _is_binary_layer(m))


def named_binary_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Yield ``(name, weight)`` for every binary layer of ``model``, named as in ``model.named_parameters()``.

    Every binary layer counts, whatever its mode (in ``"latent"`` mode the weight is the latent weight).

    Example:
        >>> from torchbop.nn import BinaryLinear
        >>> model = nn.Sequential(BinaryLinear(4, 4), nn.BatchNorm1d(4), BinaryLinear(4, 2))
        >>> [(name, tuple(w.shape)) for name, w in named_binary_parameters(model)]
        [('0.weight', (4, 4)), ('2.weight', (2, 4))]
    """
    _check_module(model, "named_binary_parameters")
    return ((f"{name}.weight" if name else "weight", m.weight) for name, m in named_binary_layers(model))


def binary_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Yield the ``weight`` of every binary layer of ``model``: :func:`named_binary_parameters` without the names.

    Example:
        >>> from torchbop.nn import BinaryLinear
        >>> sum(w.numel() for w in binary_parameters(nn.Sequential(BinaryLinear(4, 3), nn.Linear(3, 2))))
        12
    """
    _check_module(model, "binary_parameters")
    return (w for _, w in named_binary_parameters(model))


def split_binary_params(
    model: nn.Module, modes: Iterable[str] = ("bop",)
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split the trainable parameters of ``model`` into ``(binary, other)``.

    ``binary`` holds the ``weight`` of every binary layer whose ``mode`` is in ``modes`` (by default the ``"bop"``
    layers, whose weights Bop trains); ``other`` holds every other parameter with ``requires_grad`` (batch norm,
    biases, latent weights, float layers), for an ordinary optimizer. Each trainable parameter is in exactly one
    list, once, in ``model.parameters()`` order; frozen parameters are in neither. The counts are logged at INFO level.

    Args:
        model: the network.
        modes: the layer modes whose weights count as binary; ``("bop", "latent")`` takes every binary layer.

    Example:
        >>> from torchbop.nn import BinaryLinear
        >>> model = nn.Sequential(BinaryLinear(4, 4), nn.BatchNorm1d(4), BinaryLinear(4, 2, mode="latent"))
        >>> binary, other = split_binary_params(model)
        >>> [tuple(p.shape) for p in binary], [tuple(p.shape) for p in other]
        ([(4, 4)], [(4,), (4,), (2, 4)])
    """
    _check_module(model, "split_binary_params")
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"Invalid mode: {mode!r} (expected one of {MODES})")
    binary_ids = {id(m.weight) for _, m in named_binary_layers(model) if getattr(m, "mode", None) in modes}
    binary: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for p in model.parameters():  # deduplicates shared parameters
        if p.requires_grad:
            (binary if id(p) in binary_ids else other).append(p)
    logger.info(
        "split_binary_params: %d binary tensors with %s parameters (modes %s), %d other tensors with %s parameters",
        len(binary),
        f"{sum(p.numel() for p in binary):,}",
        "/".join(modes),
        len(other),
        f"{sum(p.numel() for p in other):,}",
    )
    return binary, other
