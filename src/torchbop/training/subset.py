"""``seeded_subset``: the first ``n`` images of a seeded random order, the one subset rule of torchbop.

Training's ``--subset`` (:class:`~torchbop.training.data.BinaryDataModule`) draws it with the run's seed; the
experiments draw it with seed 0, so that every seed and configuration of an experiment sees the same images.

Example:
    >>> import torch
    >>> images, labels = torch.arange(10).view(10, 1), torch.arange(10)
    >>> seeded_subset((images, labels), 3, seed=0)[1]
    tensor([4, 1, 7])
    >>> seeded_subset((images, labels), None, seed=0)[1].tolist() == labels.tolist()  # None: the whole set
    True
"""

from __future__ import annotations

import torch

__all__ = ["seeded_subset"]

Split = tuple[torch.Tensor, torch.Tensor]


def seeded_subset(split: Split, n: int | None, seed: int) -> Split:
    """``(images, labels)`` cut to the first ``n`` of ``torch.randperm(len(labels))`` drawn with ``seed``.

    ``None``, or an ``n`` as large as the set, returns ``split`` itself (in its original order).
    """
    images, labels = split
    if n is None or n >= len(labels):
        return split
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return images[keep], labels[keep]
