"""Argument checks shared by torchbop's optimizers (torch.optim conventions: ``ValueError`` naming the bad value)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch

TIE_BREAKS = ("larq", "keep", "flip")
NONFINITE_POLICIES = ("raise", "skip", "mask")


def validate_scalar(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``float(value)`` or raise ``ValueError(f"Invalid {name} value: {value}")`` with the allowed range.

    NaN is always invalid; infinity only where ``high`` is ``None``.

    Example:
        >>> validate_scalar("gamma", 0.5, low=0.0, high=1.0, low_inclusive=False)
        0.5
        >>> validate_scalar("gamma", 0.0, low=0.0, high=1.0, low_inclusive=False)
        Traceback (most recent call last):
        ...
        ValueError: Invalid gamma value: 0.0 (expected a number in (0.0, 1.0])
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Invalid {name} value: expected a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid {name} value: {value!r} (expected a real number)") from None
    lo_ok = low is None or (number >= low if low_inclusive else number > low)
    hi_ok = high is None or (number <= high if high_inclusive else number < high)
    if math.isnan(number) or not (lo_ok and hi_ok):
        left = "(-inf" if low is None else ("[" if low_inclusive else "(") + repr(float(low))
        right = "inf)" if high is None else repr(float(high)) + ("]" if high_inclusive else ")")
        raise ValueError(f"Invalid {name} value: {value} (expected a number in {left}, {right})")
    return number


def _bound(x: float) -> str:
    return repr(int(x)) if float(x).is_integer() else repr(float(x))


def validate_group_scalar(
    index: int,
    name: str,
    key: str,
    value: Any,
    *,
    low: float,
    high: float,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Check a hyperparameter read from ``param_groups[index][key]`` at step time; raise ``ValueError`` naming both.

    Unlike :func:`validate_scalar` (arguments, once), this runs at every step, so a Python number in range costs two
    comparisons and nothing else (NaN fails every comparison). A tensor hyperparameter is read with ``.item()``.

    Example:
        >>> validate_group_scalar(0, "gamma", "lr", 0.0, low=0.0, high=1.0)
        >>> validate_group_scalar(0, "gamma", "lr", float("nan"), low=0.0, high=1.0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Invalid gamma value in param group 0 ('lr'): nan (expected a number in [0, 1]); ...
    """
    number = value
    if type(value) is not float and type(value) is not int:
        if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
            number = value.item()
        elif isinstance(value, numbers.Real):
            number = float(value)
        else:  # a string, None, ...: not a number, whatever float() would make of it
            number = math.nan
    if (low <= number if low_inclusive else low < number) and (number <= high if high_inclusive else number < high):
        return
    interval = ("[" if low_inclusive else "(") + f"{_bound(low)}, {_bound(high)}" + ("]" if high_inclusive else ")")
    shown = value if isinstance(value, (numbers.Real, torch.Tensor)) else repr(value)
    raise ValueError(
        f"Invalid {name} value in param group {index} ({key!r}): {shown} (expected a number in {interval}); the step "
        f"changed nothing. Set param_groups[{index}][{key!r}] to a number in that range (a scheduler, a loaded state "
        "dict or an assignment after construction put this value there)."
    )


def validate_group_choice(index: int, key: str, value: Any, choices: tuple[str, ...]) -> None:
    """Check a string option read from ``param_groups[index][key]`` at step time (one tuple lookup when valid)."""
    if value in choices:
        return
    raise ValueError(
        f"Invalid {key} value in param group {index} ({key!r}): {value!r} (expected one of "
        f"{', '.join(map(repr, choices))}); the step changed nothing. Set param_groups[{index}][{key!r}] to one"
        " of them."
    )


def validate_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"Invalid {name} value: {value!r} (expected one of {', '.join(map(repr, choices))})")
    return value


def check_binary(param: torch.Tensor, name: Callable[[], str], error: type[Exception] = RuntimeError) -> None:
    """Raise ``error`` (``RuntimeError`` at step time) unless every entry of ``param`` is exactly -1 or +1.

    Bop flips signs; it cannot train a real-valued weight. The message names the parameter (``name()`` is only
    called on failure: finding a parameter's label scans the param groups) and says how to fix it. A tensor without
    values (size zero, or on the ``meta`` device) passes. :class:`~torchbop.optim.Bop` checks each parameter when it
    is added (``ValueError``: one read of each tensor, once) and again at its first step (``RuntimeError``: the weights
    may have been overwritten since, e.g. by ``load_state_dict``).
    """
    if param.numel() == 0 or param.is_meta:
        return
    if not bool(((param == 1) | (param == -1)).all()):
        bad = param[(param != 1) & (param != -1)].flatten()[:3].tolist()
        raise error(
            f"Bop can only train binary weights, but {name()} holds values other than -1/+1 (e.g. {bad}). "
            "Create the layer with mode='bop' (its weight is initialised to +-1), convert a real model with "
            "torchbop.binarize(model), or binarize the weights of binary layers with torchbop.nn.binarize_(model); "
            "give real-valued parameters (batch norm, biases) to another optimizer through "
            "torchbop.optim.CompositeOptimizer (torchbop.optim.bop_optimizer(model) routes them)."
        )


def param_label(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> str:
    """A human name for ``param``: the name given through ``optimizer.param_names`` if any, else its position."""
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            if p is param:
                names = group.get("param_names")
                if names:
                    return f"parameter {names[pi]!r}"
                return f"parameter {pi} of param group {gi} (shape {tuple(p.shape)})"
    return f"a parameter of shape {tuple(param.shape)}"
