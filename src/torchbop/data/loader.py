"""A batch loader that keeps the whole dataset on the device and augments whole batches with tensor ops.

Small image datasets (CIFAR-10 is 150 MB as uint8) fit in device memory, so :class:`DeviceLoader` copies them there
once, as uint8, and yields slices of one random permutation per epoch: no worker processes, no per-image Python.
Each batch is converted to float32 and scaled to [-1, 1] (``x / 127.5 - 1``, the paper's preprocessing); with
``augment=True`` the training augmentation of Helwegen et al. follows, for the whole batch in one gather
(:func:`pad_crop_flip`):

* pad 4 pixels on every side (32x32 -> 40x40),
* take a random 32x32 crop (offsets uniform in 0..8 on each axis),
* flip horizontally with probability 0.5.

.. note:: **Pad value.** The original code (plumerai/rethinking-bnn-optimization, ``bnn_optimization/data/cifar10.py``)
   pads the uint8 image with zeros (``tf.image.resize_with_crop_or_pad``) and scales afterwards, so the border is
   black: pixel 0, that is ``-1`` after scaling. That is the default, ``pad_value=-1.0``. Variants of this pipeline
   in related Larq-based code scale first and then zero-pad the scaled image (a mid-grey border);
   ``pad_value=0.0`` gives that.

**Randomness.** Everything random (the permutation, crop offsets, flips) is drawn on the CPU from a
``torch.Generator`` seeded with ``(seed, epoch)`` only, once per epoch, then moved to the device. So an epoch's
batches are the same on every device and every run, and a resumed run reproduces them from ``state_dict()``.
Iterating draws epoch :attr:`DeviceLoader.epoch` and advances it by one; :meth:`DeviceLoader.set_epoch` chooses the
epoch the next iteration draws (as ``DistributedSampler.set_epoch`` does), so a plain ``for epoch in ...`` loop and
a trainer that sets epochs explicitly both get a fresh permutation each epoch. The epoch is drawn when the first
batch is requested, not when ``iter()`` is called.

**Distributed training.** With ``world_size > 1`` every rank draws the same permutation and keeps its own contiguous
slice of ``len(dataset) // world_size`` positions: the ranks see disjoint, equal-size shards and the last
``len(dataset) % world_size`` positions of each epoch's permutation are left out (a different few each epoch when
shuffling; always the same few without shuffling, so evaluate on a single rank when every example must count).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from torchbop.data.layout import is_channels_last

__all__ = ["DeviceLoader", "pad_crop_flip", "scale_images"]

_MASK64 = (1 << 64) - 1


def scale_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [-1, 1]: ``x / 127.5 - 1`` (0 -> -1, 255 -> 1).

    Example:
        >>> scale_images(torch.tensor([0, 51, 255], dtype=torch.uint8))
        tensor([-1.0000, -0.6000,  1.0000])
    """
    return images.float().div_(127.5).sub_(1.0)


def pad_crop_flip(
    x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, *, padding: int = 4, pad_value: float = -1.0
) -> torch.Tensor:
    """Pad, crop and flip a batch of images in one gather, each image with its own offsets and flip.

    Image ``i`` becomes ``pad(x[i])[:, r:r + H, c:c + W]`` with ``(r, c) = offsets[i]``, mirrored left-right when
    ``flips[i]``. Output shape equals input shape.

    Args:
        x: ``[B, C, H, W]`` images (any dtype), contiguous or ``torch.channels_last``; the output has the same
            memory format.
        offsets: ``[B, 2]`` integer crop offsets ``(row, col)`` into the padded image, each in ``0..2*padding``.
        flips: ``[B]`` bool, which images to mirror.
        padding: pixels added on every side before cropping.
        pad_value: the value of the added pixels.

    Example:
        >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> pad_crop_flip(x, torch.tensor([[1, 2]]), torch.tensor([False]), padding=1, pad_value=-1.0)
        tensor([[[[ 1., -1.],
                  [ 3., -1.]]]])
        >>> pad_crop_flip(x, torch.tensor([[1, 1]]), torch.tensor([True]), padding=1)
        tensor([[[[1., 0.],
                  [3., 2.]]]])
    """
    B, C, H, W = x.shape
    device = x.device
    # Output pixel (i, j) of image b reads source pixel (r_b + i - padding, c_b + j - padding), with the columns
    # reversed when b is flipped. The source gets one extra pixel per channel, at flat position H * W, holding
    # pad_value: every read that falls outside the image reads that pixel instead. One gather then does padding,
    # crop and flip for the whole batch, without a padded copy.
    src_rows = offsets[:, 0:1] - padding + torch.arange(H, device=device)  # [B, H]
    src_cols = offsets[:, 1:2] - padding + torch.arange(W, device=device)  # [B, W]
    src_cols = torch.where(flips[:, None], src_cols.flip(1), src_cols)
    pad_slot = H * W
    row_start = torch.where((src_rows >= 0) & (src_rows < H), src_rows * W, pad_slot)
    col = torch.where((src_cols >= 0) & (src_cols < W), src_cols, pad_slot)
    flat_index = (row_start[:, :, None] + col[:, None, :]).clamp_(max=pad_slot)  # [B, H, W]; >= pad_slot: padding
    if is_channels_last(x):  # the same gather over the pixels of [B, H, W, C] memory: the output stays channels_last
        nhwc = x.permute(0, 2, 3, 1).reshape(B, H * W, C)
        source = torch.cat([nhwc, x.new_full((B, 1, C), pad_value)], dim=1)
        out = source.gather(1, flat_index.reshape(B, H * W, 1).expand(B, H * W, C))
        return out.reshape(B, H, W, C).permute(0, 3, 1, 2)
    source = torch.cat([x.reshape(B, C, H * W), x.new_full((B, C, 1), pad_value)], dim=2)
    out = source.gather(2, flat_index.reshape(B, 1, H * W).expand(B, C, H * W))
    return out.reshape(B, C, H, W)


def _epoch_seed(seed: int, epoch: int) -> int:
    """Mix ``(seed, epoch)`` into one 64-bit seed (SplitMix64 finaliser): nearby pairs give unrelated streams."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class DeviceLoader:
    """Iterate over ``(images, labels)`` in batches, the dataset held on ``device``, augmentation done per batch.

    Args:
        images: uint8 ``[N, C, H, W]``, or ``[N, H, W]`` (MNIST; a channel dimension is added).
        labels: integer ``[N]``.
        batch_size: images per batch.
        shuffle: a new random order every epoch; otherwise dataset order.
        augment: pad-crop-flip each batch (see the module docstring); leave off for evaluation.
        seed: seeds every epoch's draw together with the epoch number.
        device: where the dataset lives and batches are made.
        drop_last: drop the last batch of an epoch when it is smaller than ``batch_size``.
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: number of processes sharing each epoch (1 without distributed training).
        padding: pixels of padding before the random crop.
        pad_value: value of the padding in the scaled [-1, 1] space (default ``-1.0``: a black border, as in the
            original code).
        memory_format: ``torch.contiguous_format`` (default: NCHW batches) or ``torch.channels_last`` (batches
            whose memory is NHWC, what convolution models built in channels_last run fastest on). The dataset is
            then stored NHWC and every batch is sliced, scaled and augmented in that layout, without a conversion:
            the values are identical in both formats, only the strides differ.

    Yields:
        ``(x, y)``: float32 ``[B, C, H, W]`` in [-1, 1] (in ``memory_format``) and int64 ``[B]``, both on
        ``device``.

    Example:
        >>> images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
        >>> loader = DeviceLoader(images, torch.arange(10), batch_size=4, augment=True, seed=0)
        >>> len(loader), [tuple(x.shape) for x, _ in loader]
        (3, [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)])
        >>> loader.state_dict()  # one epoch drawn; the next iteration draws epoch 1
        {'seed': 0, 'epoch': 1}
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        augment: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        padding: int = 4,
        pad_value: float = -1.0,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        if images.dtype != torch.uint8:
            raise TypeError(f"Expected uint8 images, got {images.dtype}")
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4:
            raise ValueError(f"Invalid images shape: {list(images.shape)}; expected [N, C, H, W] or [N, H, W]")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"Invalid labels shape: {list(labels.shape)} for {images.shape[0]} images")
        if labels.dtype.is_floating_point or labels.dtype.is_complex:
            raise TypeError(f"Expected integer labels, got {labels.dtype}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Invalid batch_size value: {batch_size}")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"Invalid world_size value: {world_size}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"Invalid rank value: {rank} (world_size {world_size})")
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"Invalid padding value: {padding}")
        if memory_format not in (torch.contiguous_format, torch.channels_last):
            raise ValueError(
                f"Invalid memory_format value: {memory_format} (expected torch.contiguous_format or "
                "torch.channels_last)"
            )

        self.device = torch.device(device)
        self.memory_format = memory_format
        self.images = images.to(self.device).contiguous(memory_format=memory_format)
        # channels_last: batches are sliced from the [N, H, W, C] view of that memory (contiguous, no copy)
        self._nhwc = self.images.permute(0, 2, 3, 1).contiguous() if memory_format == torch.channels_last else None
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.padding = padding
        self.pad_value = pad_value
        self.epoch = 0

    # -- size ------------------------------------------------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        """Examples this rank sees per epoch: ``len(dataset) // world_size``."""
        return self.images.shape[0] // self.world_size

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    # -- epochs and resumption ---------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration draw epoch ``epoch`` (its permutation and augmentation)."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"Invalid epoch value: {epoch}")
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """``{"seed", "epoch"}``: ``epoch`` is the epoch the next iteration will draw."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``seed`` and ``epoch`` from :meth:`state_dict`."""
        missing = {"seed", "epoch"} - set(state_dict)
        if missing:
            raise KeyError(f"DeviceLoader state_dict is missing {sorted(missing)}")
        self.seed = int(state_dict["seed"])
        self.set_epoch(int(state_dict["epoch"]))

    # -- iteration ---------------------------------------------------------------------------------------------------

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """This rank's draw for ``epoch``: dataset indices in order, crop offsets ``[n, 2]`` and flips ``[n]``.

        Offsets and flips are ``None`` without augmentation. Everything is drawn on the CPU from a generator seeded
        by ``(seed, epoch)``, then moved to the device.
        """
        n_total = self.images.shape[0]
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        order = torch.randperm(n_total, generator=generator) if self.shuffle else torch.arange(n_total)
        offsets = flips = None
        if self.augment:
            offsets = torch.randint(0, 2 * self.padding + 1, (n_total, 2), generator=generator)
            flips = torch.rand(n_total, generator=generator) < 0.5
        shard = slice(self.rank * self.num_samples, (self.rank + 1) * self.num_samples)
        order = order[shard].to(self.device)
        if self.augment:
            offsets, flips = offsets[shard].to(self.device), flips[shard].to(self.device)
        return order, offsets, flips

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch = epoch + 1
        order, offsets, flips = self.epoch_plan(epoch)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            if self._nhwc is not None:  # [B, H, W, C] memory seen as [B, C, H, W]: channels_last strides
                x = scale_images(self._nhwc.index_select(0, index)).permute(0, 3, 1, 2)
            else:
                x = scale_images(self.images.index_select(0, index))  # index_select: ~5x faster than [] on CPU
            if self.augment:
                assert offsets is not None and flips is not None
                end = start + len(index)
                x = pad_crop_flip(
                    x, offsets[start:end], flips[start:end], padding=self.padding, pad_value=self.pad_value
                )
            yield x, self.labels.index_select(0, index)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.images.shape[0]}, shape={list(self.images.shape[1:])}, "
            f"batch_size={self.batch_size}, shuffle={self.shuffle}, augment={self.augment}, seed={self.seed}, "
            f"epoch={self.epoch}, device={self.device}, drop_last={self.drop_last}, "
            f"rank={self.rank}/{self.world_size}"
            + (", memory_format=channels_last" if self.memory_format == torch.channels_last else "")
            + ")"
        )
