"""Seeded, class-balanced train/validation split.

The two CIFAR-10 protocols of the reproduction both go through here or around it:

* original (Helwegen et al.): train on all 50,000 images, report on the test set; no split is made
  (``val_fraction=0`` returns every index as training);
* reproduction (Vaessen et al.): 45,000 / 5,000. The report took the *last* 10% of the training set; here the
  5,000 are drawn at random per class (500 of each), so the validation set does not depend on file order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["class_balanced_split"]


def class_balanced_split(
    labels: torch.Tensor | Sequence[int], val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into training and validation sets with the same class proportions.

    Each class ``c`` with ``n_c`` examples gives ``floor(val_fraction * n_c + 0.5)`` of them (rounded half up),
    drawn uniformly at random, to validation; the rest go to training. The draw depends only on ``labels``,
    ``val_fraction`` and ``seed`` (its own ``torch.Generator``, classes visited in increasing order).

    Args:
        labels: 1-D integer class labels.
        val_fraction: in ``[0, 1)``; ``0`` puts everything in training.
        seed: the seed of the draw.

    Returns:
        ``(train_idx, val_idx)``: disjoint int64 index tensors, each sorted, together covering ``range(len(labels))``.

    Example:
        >>> labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
        >>> train_idx, val_idx = class_balanced_split(labels, 0.5, seed=0)
        >>> len(train_idx), len(val_idx), labels[val_idx].bincount().tolist()
        (5, 5, [2, 3])
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1:
        raise ValueError(f"Invalid labels: expected a 1-D tensor, got shape {list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"Invalid labels: expected an integer dtype, got {labels.dtype}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"Invalid val_fraction value: {val_fraction} (expected 0 <= val_fraction < 1)")

    labels = labels.cpu()
    generator = torch.Generator().manual_seed(seed)
    val_parts = []
    for cls in torch.unique(labels).tolist():  # sorted
        members = torch.nonzero(labels == cls).flatten()
        n_val = math.floor(val_fraction * len(members) + 0.5)
        chosen = torch.randperm(len(members), generator=generator)[:n_val]
        val_parts.append(members[chosen])
    val_idx = torch.sort(torch.cat(val_parts)).values if val_parts else torch.empty(0, dtype=torch.int64)
    in_val = torch.zeros(len(labels), dtype=torch.bool)
    in_val[val_idx] = True
    train_idx = torch.nonzero(~in_val).flatten()
    return train_idx, val_idx
