r"""Bop for any model in one call: route the binary weights to Bop and everything else to a torch optimizer.

A binarized network trains two kinds of parameters: the +-1 weights of its ``"bop"``-mode binary layers, which Bop
flips (Helwegen et al., arXiv:1906.02107), and every other trainable parameter (batch-norm shifts, biases, weight
scales, real first and last layers), which an ordinary optimizer updates (Adam in the paper). :func:`bop_optimizer`
splits ``model``'s parameters as :func:`torchbop.nn.split_binary_params` does (a binary layer is a module with
``is_binary = True``; its ``weight`` is binary when its ``mode`` is ``"bop"``; the rule is restated here because
``optim`` sits below ``nn`` in the import floors), builds both optimizers over *named*
parameters (so every error names the parameter) and joins them in one
:class:`~torchbop.optim.CompositeOptimizer`, which checks that each trainable parameter is trained exactly once.
Larq's ``CaseOptimizer`` does the same routing by predicate (larq/larq ``larq/optimizers.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from torchbop.optim.bop import Bop
from torchbop.optim.composite import CompositeOptimizer

__all__ = ["bop_optimizer"]


def _check_kwargs(name: str, kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"bop_optimizer: {name} must be a dict of keyword arguments, got {type(kwargs).__name__}")
    if "params" in kwargs:
        raise ValueError(f"bop_optimizer: {name} must not hold 'params'; bop_optimizer finds them in the model")
    return dict(kwargs)


def _split(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]], list[str]]:
    """``(binary, other, latent_layers)``: named trainable parameters, each once, in ``named_parameters`` order."""
    layers = [(name, m) for name, m in model.named_modules() if getattr(m, "is_binary", False) is True]
    binary_ids = {id(m.weight) for _, m in layers if getattr(m, "mode", None) == "bop"}
    binary, other = [], []
    for name, p in model.named_parameters():  # deduplicates shared parameters
        if p.requires_grad:
            (binary if id(p) in binary_ids else other).append((name, p))
    return binary, other, [name for name, m in layers if getattr(m, "mode", None) != "bop"]


def bop_optimizer(
    model: nn.Module,
    binary: type[Bop] = Bop,
    other: type[torch.optim.Optimizer] | None = torch.optim.Adam,
    *,
    binary_kwargs: Mapping[str, Any] | None = None,
    other_kwargs: Mapping[str, Any] | None = None,
) -> CompositeOptimizer:
    r"""One optimizer for ``model``: ``binary`` for its Bop-mode binary weights, ``other`` for the rest.

    The binary weights are the ``weight`` of every binary layer with ``mode="bop"`` (as
    :func:`torchbop.nn.split_binary_params` finds them); the rest is every other parameter with ``requires_grad``
    (frozen parameters are left out). When there is no other parameter, the composite holds ``binary`` alone and
    ``other`` is not built.

    Args:
        model: a binarized network (convert a real one with :func:`torchbop.binarize`).
        binary: :class:`~torchbop.optim.Bop`, :class:`~torchbop.optim.Bop2ndOrder` or another ``Bop`` subclass.
        other: a ``torch.optim.Optimizer`` subclass for the other parameters (default ``torch.optim.Adam``), or
            ``None`` when the model has nothing else to train.
        binary_kwargs: keyword arguments of ``binary`` (``gamma``, ``threshold``, ...).
        other_kwargs: keyword arguments of ``other`` (``lr``, ...).

    Returns:
        A :class:`~torchbop.optim.CompositeOptimizer`: ``optimizers[0]`` is the Bop, ``optimizers[1]`` (if any) the
        other optimizer; a scheduler on it schedules Bop's gamma (its ``lr``) and the other learning rate.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``binary`` is not a ``Bop`` class, ``other`` is not an
            ``Optimizer`` class, or a kwargs argument is not a dict.
        ValueError: ``model`` has no Bop-mode binary layer (binarize it first with ``torchbop.binarize``); ``other``
            is ``None`` while the model has other trainable parameters; a binary weight that is not exactly +-1
            (named, raised by Bop); a hyperparameter the optimizers refuse.

    Example:
        >>> import torchbop
        >>> real = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
        ...                      nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
        >>> model = torchbop.binarize(real)  # the middle convolution becomes a BinaryConv2d with +-1 weights
        >>> opt = bop_optimizer(model, binary_kwargs=dict(gamma=1e-3), other_kwargs=dict(lr=0.01))
        >>> [type(o).__name__ for o in opt.optimizers], [g["lr"] for g in opt.param_groups]
        (['Bop', 'Adam'], [0.001, 0.01])
        >>> opt.optimizers[0].param_groups[0]["param_names"]
        ['2.weight']
        >>> bop_optimizer(real)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: bop_optimizer: Sequential has no binary layer in mode 'bop' ... with torchbop.binarize(model) ...
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"bop_optimizer: model must be an nn.Module, got {type(model).__name__}")
    if not (isinstance(binary, type) and issubclass(binary, Bop)):
        raise TypeError(
            f"bop_optimizer: binary must be the class Bop or Bop2ndOrder (a subclass of torchbop.optim.Bop), got "
            f"{binary!r}; pass its arguments through binary_kwargs"
        )
    if other is not None and not (isinstance(other, type) and issubclass(other, torch.optim.Optimizer)):
        raise TypeError(
            f"bop_optimizer: other must be a torch.optim.Optimizer class such as torch.optim.Adam, or None, got "
            f"{other!r}; pass its arguments through other_kwargs"
        )
    bkw, okw = _check_kwargs("binary_kwargs", binary_kwargs), _check_kwargs("other_kwargs", other_kwargs)
    binary_params, other_params, latent = _split(model)
    if not binary_params:
        found = (
            f"its binary layers ({', '.join(map(repr, latent))}) are in mode 'latent', whose real weights an "
            "ordinary optimizer trains"
            if latent
            else "it has no binary layer"
        )
        raise ValueError(
            f"bop_optimizer: {type(model).__name__} has no binary layer in mode 'bop' for {binary.__name__} to train "
            f"({found}); binarize it first with torchbop.binarize(model) (mode='bop', the default)."
        )
    optimizers: list[torch.optim.Optimizer] = [binary(binary_params, **bkw)]
    if other_params:
        if other is None:
            listed = ", ".join(repr(name) for name, _ in other_params[:5])
            raise ValueError(
                f"bop_optimizer: other=None, but {type(model).__name__} has {len(other_params)} other trainable "
                f"parameter(s) ({listed}{', ...' if len(other_params) > 5 else ''}); pass an optimizer class such as "
                "torch.optim.Adam, or freeze them with requires_grad_(False)."
            )
        optimizers.append(other(other_params, **okw))
    return CompositeOptimizer(*optimizers, model=model)
