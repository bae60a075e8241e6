"""class_balanced_split: balanced, disjoint, complete, seeded, random (not "the last 10%")."""

import pytest
import torch

from torchbop.data import class_balanced_split


@pytest.fixture
def labels():
    """Unequal classes (10, 20, ..., 100 examples), shuffled."""
    counts = torch.arange(1, 11) * 10
    labels = torch.repeat_interleave(torch.arange(10), counts)
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_each_class_gives_its_rounded_share(labels, fraction):
    _, val_idx = class_balanced_split(labels, fraction, seed=0)
    per_class = torch.bincount(labels[val_idx], minlength=10).tolist()
    counts = torch.bincount(labels).tolist()
    assert per_class == [int(fraction * c + 0.5) for c in counts]  # 0.25 * 10 = 2.5 -> 3: half rounds up


def test_disjoint_sorted_and_complete(labels):
    train_idx, val_idx = class_balanced_split(labels, 0.2, seed=3)
    assert train_idx.dtype == val_idx.dtype == torch.int64
    assert torch.equal(train_idx, train_idx.sort().values) and torch.equal(val_idx, val_idx.sort().values)
    assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(len(labels)))


def test_same_seed_same_split(labels):
    a = class_balanced_split(labels, 0.1, seed=7)
    b = class_balanced_split(labels, 0.1, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_different_seeds_differ(labels):
    _, a = class_balanced_split(labels, 0.1, seed=0)
    _, b = class_balanced_split(labels, 0.1, seed=1)
    assert not torch.equal(a, b)


def test_not_the_tail_of_the_set():
    labels = torch.arange(1000) % 10  # in file order
    _, val_idx = class_balanced_split(labels, 0.1, seed=0)
    assert not torch.equal(val_idx, torch.arange(900, 1000))
    assert val_idx.min() < 100 and val_idx.max() >= 900  # spread over the whole set


def test_zero_fraction_is_the_original_protocol(labels):
    train_idx, val_idx = class_balanced_split(labels, 0.0, seed=0)
    assert val_idx.numel() == 0 and torch.equal(train_idx, torch.arange(len(labels)))


def test_accepts_a_list():
    train_idx, val_idx = class_balanced_split([0, 0, 1, 1], 0.5, seed=0)
    assert len(train_idx) == len(val_idx) == 2


@pytest.mark.parametrize(
    "labels, fraction, message",
    [
        (torch.zeros(4, dtype=torch.long), 1.0, "Invalid val_fraction value: 1.0"),
        (torch.zeros(4, dtype=torch.long), -0.1, "Invalid val_fraction value: -0.1"),
        (torch.zeros(2, 2, dtype=torch.long), 0.1, r"expected a 1-D tensor, got shape \[2, 2\]"),
        (torch.zeros(4), 0.1, "expected an integer dtype, got torch.float32"),
    ],
)
def test_invalid_arguments(labels, fraction, message):
    with pytest.raises(ValueError, match=message):
        class_balanced_split(labels, fraction, seed=0)


@pytest.mark.realdata
def test_cifar10_reproduction_protocol(real_cifar10):
    _, labels = real_cifar10["train"]
    train_idx, val_idx = class_balanced_split(labels, 0.1, seed=0)
    assert len(train_idx) == 45_000 and len(val_idx) == 5_000
    assert torch.bincount(labels[val_idx]).tolist() == [500] * 10
    assert torch.bincount(labels[train_idx]).tolist() == [4_500] * 10
