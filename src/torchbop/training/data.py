"""``BinaryDataModule``: the datasets of torchbop.data behind Lightning's DataModule interface.

* ``prepare_data`` (rank 0 only) downloads missing files, and only when ``config.download`` is true;
  ``__init__`` touches no file.
* ``setup`` loads the uint8 tensors and applies the protocol:

  - ``"original"``: train on the whole training set, validate on the test set (what the paper's code did);
  - ``"reproduction"``: a seeded class-balanced ``val_fraction`` of the training set is held out for validation
    (the reproducibility report's 45k/5k split on CIFAR-10); the test set is used only by ``trainer.test``.

  ``subset`` then keeps a seeded random ``subset`` of the training images (a scale option for quick runs).
* The loaders are :class:`torchbop.data.DeviceLoader`: the whole split lives on the training device and batches are
  sliced (and augmented) there, in the memory format the model computes in (``memory_format``: NCHW, or
  channels_last for the shipped convolution models). The training loader's shuffle order and augmentation are a function of
  ``(seed, epoch)``. It is wrapped in :class:`ResumableLoader`, which takes the epoch from the fit loop's counter and
  saves ``(epoch, batches consumed)`` in checkpoints, so a resumed run sees exactly the batches the uninterrupted run would
  have seen, even mid-epoch. Under DDP each rank reads its own shard of every epoch's permutation; validation and
  test are not sharded (each rank evaluates the whole split, so the numbers are exact and identical on every rank).

Tests and experiments can pass the tensors directly (``data={"train": (x, y), "test": (x, y)}``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from torchbop.data import DeviceLoader, class_balanced_split, load_cifar10, load_mnist
from torchbop.errors import UserError
from torchbop.training.config import TrainConfig

__all__ = ["BinaryDataModule", "ResumableLoader", "load_split"]

Split = tuple[torch.Tensor, torch.Tensor]


def load_split(config: TrainConfig, train: bool, download: bool = False) -> Split:
    """``(uint8 images [N, C, H, W], int64 labels [N])`` of the config's dataset from disk."""
    if config.dataset == "cifar10":
        return load_cifar10(config.data_dir, train=train, download=download)
    return load_mnist(config.data_dir, train=train, variant=config.dataset, download=download)


class BinaryDataModule(L.LightningDataModule):
    """Train/validation/test loaders for ``config`` (see the module docstring for the protocols).

    Args:
        config: the run's configuration (dataset, data_dir, protocol, subset, batch sizes, augment, seed).
        data: optional in-memory ``{"train": (images, labels), "test": (images, labels)}`` used instead of files.
        memory_format: the layout of every batch, ``torch.contiguous_format`` (NCHW) or ``torch.channels_last``
            (the engine passes the model's :func:`~torchbop.models.memory_format.input_memory_format`); the values
            are the same in both.
    """

    def __init__(self, config: TrainConfig, data: dict[str, Split] | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        super().__init__()
        self.config = config
        self._data = data
        self.memory_format = memory_format
        self.train_set: Split | None = None
        self.val_set: Split | None = None
        self.test_set: Split | None = None
        self._prepared = False

    def prepare_data(self) -> None:
        if self._data is None and self.config.download and not self._prepared:
            load_split(self.config, train=True, download=True)
            load_split(self.config, train=False, download=True)
        self._prepared = True

    def check_batches(self, world_size: int = 1) -> None:
        """Refuse a training set that cannot fill one batch per process (the last partial batch is dropped, so such
        a run would train 0 steps). Call after :meth:`setup`."""
        assert self.train_set is not None, "call setup() first"
        images, batch = len(self.train_set[1]), self.config.batch_size
        if images // world_size < batch:
            per_rank = f" ({images // world_size} per process on {world_size} processes)" if world_size > 1 else ""
            raise UserError(
                f"The training set has {images} images{per_rank}, fewer than one batch of batch_size={batch}: the "
                f"run would train 0 steps. Lower --batch-size to at most {max(images // world_size, 1)} or train "
                "on more images (--subset)."
            )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        cfg = self.config
        if self._data is not None:
            train, test = self._data["train"], self._data["test"]
        else:
            train, test = load_split(cfg, train=True), load_split(cfg, train=False)
        train, test = _with_channels(train), _with_channels(test)
        if cfg.protocol == "reproduction":
            train_idx, val_idx = class_balanced_split(train[1], val_fraction=cfg.val_fraction, seed=cfg.seed)
            val = (train[0][val_idx], train[1][val_idx])
            train = (train[0][train_idx], train[1][train_idx])
        else:
            val = test
        if cfg.subset is not None and cfg.subset < len(train[1]):
            keep = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.subset]
            train = (train[0][keep], train[1][keep])
        self.train_set, self.val_set, self.test_set = train, val, test

    # ------------------------------------------------------------------------------------------------------------
    def _loader(self, split: Split, *, train: bool) -> Any:
        cfg = self.config
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        kwargs: dict[str, Any] = {}
        if train and trainer is not None and trainer.world_size > 1:
            kwargs = {"rank": trainer.global_rank, "world_size": trainer.world_size}
        return DeviceLoader(
            split[0], split[1], cfg.batch_size if train else cfg.eval_batch_size,
            shuffle=train, augment=cfg.augment and train, seed=cfg.seed, device=device, drop_last=train,
            memory_format=self.memory_format, **kwargs,
        )

    def train_dataloader(self):
        trainer = self.trainer
        return ResumableLoader(
            self._loader(self.train_set, train=True),
            epoch=lambda: trainer.fit_loop.epoch_progress.current.processed,
            consumed=lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed,
            epoch_length=lambda: trainer.num_training_batches,
        )

    def val_dataloader(self):
        return self._loader(self.val_set, train=False)

    def test_dataloader(self):
        return self._loader(self.test_set, train=False)

    def describe(self) -> str:
        """One line: sizes of the three splits and the protocol."""
        n = [0 if s is None else len(s[1]) for s in (self.train_set, self.val_set, self.test_set)]
        where = "test set" if self.config.protocol == "original" else f"held-out {self.config.val_fraction:.0%}"
        return (f"{self.config.dataset}: train {n[0]}, validation {n[1]} ({where}), test {n[2]}; "
                f"protocol {self.config.protocol}")


class ResumableLoader:
    """A training loader that knows which epoch it is drawing and can resume mid-epoch (Lightning's ``Stateful``).

    Each iteration draws epoch ``epoch()`` (``loader.set_epoch``) when its first batch is requested, so Lightning's
    probing ``iter()`` calls cost nothing. ``state_dict()`` records the epoch under way and how many of its batches the
    training loop has consumed (``consumed()``); after ``load_state_dict`` the iteration of that same epoch skips
    those batches. (Lightning hands the state back only when a checkpoint was written mid-epoch; at an epoch
    boundary the restored loop counters alone select the next epoch.)

    Args:
        loader: an iterable with ``set_epoch(epoch)`` and ``__len__`` (a DeviceLoader).
        epoch: returns the epoch the next iteration belongs to; ``None`` counts iterations from 0.
        consumed: returns how many batches of the current epoch the training loop has processed.
        epoch_length: returns how many batches make an epoch (``len(loader)`` unless limited).
    """

    def __init__(self, loader: Any, epoch: Any | None = None, consumed: Any | None = None,
                 epoch_length: Any | None = None) -> None:
        self.loader = loader
        self._epoch_fn = epoch
        self._consumed = consumed if consumed is not None else (lambda: 0)
        self._epoch_length = epoch_length if epoch_length is not None else (lambda: len(loader))
        self.epoch = -1  # the epoch being iterated
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return self._iterate()

    def _iterate(self):
        epoch = self._epoch_fn() if self._epoch_fn is not None else self.epoch + 1
        skip = 0
        if self._resume is not None and self._resume[0] == epoch:
            skip = self._resume[1]
        self._resume = None
        self.epoch = epoch
        self.loader.set_epoch(epoch)
        batches = iter(self.loader)
        for _ in range(skip):  # replays the skipped batches' draws exactly
            next(batches)
        yield from batches

    def state_dict(self) -> dict[str, int | bool]:
        consumed = int(self._consumed())
        return {"epoch": self.epoch, "consumed": consumed, "finished": consumed >= self._epoch_length()}

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        self._resume = None if state["finished"] else (int(state["epoch"]), int(state["consumed"]))


def _with_channels(split: Split) -> Split:
    images, labels = split
    if images.dim() == 3:  # MNIST [N, 28, 28] -> [N, 1, 28, 28]
        images = images.unsqueeze(1)
    return images, labels
