"""What the model families (Bi-Real Net, ReActNet-A, binary ResNet-18) share: their common arguments (contract C:
``mode``, ``stem``, ``num_classes``, ``width``, ``channels_last``, plus ``scale``), their checks, and a base class
whose forward is ``head(features(x))``.

Memory format: as :class:`~torchbop.models.BinaryNet`, a model with ``channels_last=True`` puts its input in
``torch.channels_last`` and declares it in ``memory_format`` (see :mod:`torchbop.models.memory_format`). It does so
with ``x.contiguous(memory_format=torch.channels_last)``, one method call that ``torch.fx`` records, rather than
:func:`~torchbop.models.memory_format.to_channels_last`, whose branch on the input's strides a symbolic trace cannot
take; the two differ only for one-channel images, and these models take RGB.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torchbop.models.memory_format import memory_format_of
from torchbop.nn.layers import MODES

__all__ = ["STEMS", "FamilyModel", "scaled", "resolve_scale"]

#: Input stems: "imagenet" (224 x 224, 1000 classes, as published) or "cifar10" (32 x 32, 10 classes).
STEMS = ("imagenet", "cifar10")
_CLASSES = {"imagenet": 1000, "cifar10": 10}


def scaled(n: int, width: float) -> int:
    """``n * width`` rounded, at least 1."""
    return max(1, round(n * width))


def resolve_scale(scale: str | None, mode: str) -> str | None:
    """``"auto"``: ``"mean_abs"`` in latent mode (XNOR-Net's per-channel mean |W|, as Larq's magnitude-aware sign
    and ReActNet's code), ``None`` in Bop mode (where |W| = 1); any other value is passed to the binary layers."""
    if scale == "auto":
        return "mean_abs" if mode == "latent" else None
    return scale


class FamilyModel(nn.Module):
    """Base of the model families: checks the common arguments, holds ``features`` and ``head`` (set by the
    subclass), and computes ``head(features(x))``."""

    features: nn.Module
    head: nn.Module

    def __init__(self, *, mode: str, stem: str, num_classes: int | None, width: float, channels_last: bool) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"Invalid mode: {mode!r} (expected one of {MODES})")
        if stem not in STEMS:
            raise ValueError(f"Invalid stem: {stem!r} (expected one of {STEMS})")
        if num_classes is None:
            num_classes = _CLASSES[stem]
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"Invalid num_classes: {num_classes!r} (must be an int >= 1, or None for the stem's)")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
            raise ValueError(f"Invalid width: {width!r} (must be a number > 0)")
        if not isinstance(channels_last, bool):
            raise ValueError(f"Invalid channels_last: {channels_last!r} (must be true or false)")
        self.mode, self.stem, self.num_classes, self.width = mode, stem, num_classes, width
        self.channels_last = channels_last
        self.memory_format = memory_format_of(channels_last)  # what the training engine's loader produces

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``[N, 3, H, W]`` to the last feature maps (channels_last when the model is)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """Feature maps to logits ``[N, num_classes]``."""
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        return f"mode={self.mode}, stem={self.stem}, num_classes={self.num_classes}, width={self.width}" + (
            "" if self.channels_last else ", channels_last=False"
        )
