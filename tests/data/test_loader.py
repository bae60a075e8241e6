"""DeviceLoader: scaling, batched pad-crop-flip, seeding per epoch, resumption, DDP sharding."""

import pytest
import torch
import torch.nn.functional as F

from torchbop.data import DeviceLoader, pad_crop_flip, scale_images


def position_images(n: int) -> torch.Tensor:
    """Images whose pixels say where they come from: channel 0 = row + 1, channel 1 = column + 1, channel 2 = 255.

    Padding is pixel 0 in every channel, so any pixel of an augmented image names its source row and column.
    """
    rows = torch.arange(1, 33, dtype=torch.uint8)[:, None].expand(32, 32)
    cols = torch.arange(1, 33, dtype=torch.uint8)[None, :].expand(32, 32)
    one = torch.stack([rows, cols, torch.full((32, 32), 255, dtype=torch.uint8)])
    return one.expand(n, 3, 32, 32).clone()


def unscale(x: torch.Tensor) -> torch.Tensor:
    return torch.round((x + 1) * 127.5).to(torch.int64)


def recover_transform(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From augmented position images: row offsets, column offsets (into the 40x40 padded image) and flips."""
    pixels = unscale(x)
    centre_rows = pixels[:, 0, 16, 16]  # source row + 1 = offset + 16 - 4 + 1
    flipped = pixels[:, 1, 16, 17] < pixels[:, 1, 16, 16]  # columns run backwards
    crop_col = torch.where(flipped, 31 - 16, 16)
    centre_cols = pixels[:, 1, 16, 16]  # source col + 1 = offset + crop_col - 4 + 1
    return centre_rows - 13, centre_cols - crop_col + 3, flipped


def reference_pad_crop_flip(x, offsets, flips, padding, pad_value):
    """The obvious per-image loop, as the specification of the batched version."""
    out = []
    for image, (r, c), flip in zip(x, offsets.tolist(), flips.tolist()):
        padded = F.pad(image, (padding,) * 4, value=pad_value)
        crop = padded[:, r : r + image.shape[1], c : c + image.shape[2]]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


def epoch_batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


@pytest.fixture(scope="module")
def cifar_like():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(300)


class TestScaling:
    def test_exact_values(self):
        assert scale_images(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]
        pixels = torch.arange(256, dtype=torch.uint8)
        expected = (pixels.double() / 127.5 - 1).float()  # correctly rounded float32 of the formula
        torch.testing.assert_close(scale_images(pixels), expected, rtol=0, atol=1.2e-7)

    def test_eval_mode_is_scaling_only_in_dataset_order(self, cifar_like):
        images, labels = cifar_like
        loader = DeviceLoader(images, labels, batch_size=64, shuffle=False, augment=False)
        batches = epoch_batches(loader)
        assert torch.equal(torch.cat([x for x, _ in batches]), scale_images(images))
        assert torch.equal(torch.cat([y for _, y in batches]), labels)

    def test_types_shapes_and_range(self, cifar_like):
        images, labels = cifar_like
        for x, y in DeviceLoader(images, labels.int(), batch_size=128, augment=True):
            assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
            assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
            assert x.min() >= -1 and x.max() <= 1

    def test_mnist_gets_a_channel_dimension(self):
        images = torch.randint(0, 256, (10, 28, 28), dtype=torch.uint8)
        labels = torch.zeros(10, dtype=torch.long)
        x, _ = next(iter(DeviceLoader(images, labels, batch_size=10, shuffle=False)))
        assert torch.equal(x, scale_images(images[:, None]))
        x, _ = next(iter(DeviceLoader(images, labels, batch_size=10, augment=True)))
        assert x.shape == (10, 1, 28, 28)


class TestAugmentation:
    @pytest.mark.parametrize("pad_value", [-1.0, 0.0])
    def test_batched_equals_per_image_reference(self, pad_value):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, 3, 32, 32, generator=g)
        offsets = torch.randint(0, 9, (64, 2), generator=g)
        flips = torch.rand(64, generator=g) < 0.5
        expected = reference_pad_crop_flip(x, offsets, flips, 4, pad_value)
        assert torch.equal(pad_crop_flip(x, offsets, flips, padding=4, pad_value=pad_value), expected)

    @pytest.mark.parametrize("pad_value", [-1.0, 0.0])
    def test_border_has_pad_value_default_black(self, pad_value):
        images = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
        kwargs = {} if pad_value == -1.0 else {"pad_value": pad_value}  # -1.0 is the default
        loader = DeviceLoader(images, torch.zeros(64, dtype=torch.long), batch_size=64, augment=True, **kwargs)
        _, offsets, _ = loader.epoch_plan(0)
        ((x, _),) = list(loader)
        source_rows = offsets[:, 0, None] + torch.arange(32) - 4  # [B, 32]
        source_cols = offsets[:, 1, None] + torch.arange(32) - 4
        row_inside = (source_rows >= 0) & (source_rows < 32)
        col_inside = (source_cols >= 0) & (source_cols < 32)
        inside = row_inside[:, :, None] & col_inside[:, None, :]
        assert (~inside).any() and inside.any()
        expected = torch.where(inside, scale_images(torch.tensor(200, dtype=torch.uint8)), pad_value)
        _, _, flips = loader.epoch_plan(0)
        expected = torch.where(flips[:, None, None], expected.flip(-1), expected)  # the border flips with the image
        assert torch.equal(x, expected[:, None].expand(64, 3, 32, 32))

    def test_flip_frequency_about_half(self):
        loader = DeviceLoader(
            position_images(4000), torch.zeros(4000, dtype=torch.long), batch_size=500, augment=True, seed=0
        )
        flips = torch.cat([recover_transform(x)[2] for x, _ in loader])
        assert 0.47 < flips.float().mean() < 0.53  # 4000 draws: sd 0.008

    def test_crop_offsets_cover_0_to_8_uniformly(self):
        loader = DeviceLoader(
            position_images(4500), torch.zeros(4500, dtype=torch.long), batch_size=500, augment=True, seed=0
        )
        rows, cols = zip(*[recover_transform(x)[:2] for x, _ in loader])
        for offsets in (torch.cat(rows), torch.cat(cols)):
            counts = torch.bincount(offsets, minlength=9)
            assert len(counts) == 9  # nothing outside 0..8
            assert counts.min() > 0.8 * 500 and counts.max() < 1.2 * 500  # 500 expected each: sd ~21

    def test_content_is_the_crop_the_plan_says(self):
        images = position_images(50)
        loader = DeviceLoader(images, torch.arange(50), batch_size=50, augment=True, seed=3)
        order, offsets, flips = loader.epoch_plan(0)
        ((x, y),) = list(loader)
        assert torch.equal(y, order)
        rows, cols, flipped = recover_transform(x)
        assert torch.equal(rows, offsets[:, 0]) and torch.equal(cols, offsets[:, 1]) and torch.equal(flipped, flips)
        assert torch.equal(x, reference_pad_crop_flip(scale_images(images[order]), offsets, flips, 4, -1.0))


class TestSeeding:
    def test_same_seed_same_batches(self, cifar_like):
        a = DeviceLoader(*cifar_like, batch_size=100, augment=True, seed=5)
        b = DeviceLoader(*cifar_like, batch_size=100, augment=True, seed=5)
        for _ in range(2):
            assert same_batches(epoch_batches(a), epoch_batches(b))

    def test_different_seeds_differ(self, cifar_like):
        a = epoch_batches(DeviceLoader(*cifar_like, batch_size=100, augment=True, seed=0))
        b = epoch_batches(DeviceLoader(*cifar_like, batch_size=100, augment=True, seed=1))
        assert not torch.equal(a[0][1], b[0][1])

    def test_each_epoch_differs(self, cifar_like):
        loader = DeviceLoader(*cifar_like, batch_size=100, augment=True, seed=0)
        first, second = epoch_batches(loader), epoch_batches(loader)
        assert not torch.equal(first[0][1], second[0][1])  # a new permutation
        assert sorted(torch.cat([y for _, y in second]).tolist()) == list(range(300))  # still each image once
        # augmentation also changes: the same image gets a different crop/flip in another epoch
        loader.set_epoch(0)
        order0, offsets0, flips0 = loader.epoch_plan(0)
        order1, offsets1, flips1 = loader.epoch_plan(1)
        inverse0, inverse1 = order0.argsort(), order1.argsort()
        assert not (
            torch.equal(offsets0[inverse0], offsets1[inverse1]) and torch.equal(flips0[inverse0], flips1[inverse1])
        )

    def test_set_epoch_reproduces_an_epoch(self, cifar_like):
        loader = DeviceLoader(*cifar_like, batch_size=64, augment=True, seed=2)
        epochs = [epoch_batches(loader) for _ in range(3)]
        fresh = DeviceLoader(*cifar_like, batch_size=64, augment=True, seed=2)
        fresh.set_epoch(2)
        assert same_batches(epoch_batches(fresh), epochs[2])
        assert fresh.epoch == 3

    def test_state_dict_resumes(self, cifar_like):
        loader = DeviceLoader(*cifar_like, batch_size=64, augment=True, seed=9)
        epoch_batches(loader), epoch_batches(loader)
        state = loader.state_dict()
        assert state == {"seed": 9, "epoch": 2}
        expected = epoch_batches(loader)
        resumed = DeviceLoader(*cifar_like, batch_size=64, augment=True, seed=0)
        resumed.load_state_dict(state)
        assert same_batches(epoch_batches(resumed), expected)

    def test_epoch_is_drawn_at_the_first_batch(self, cifar_like):
        loader = DeviceLoader(*cifar_like, batch_size=64, seed=0)
        iterator = iter(loader)
        loader.set_epoch(4)  # as a trainer may do after creating the iterator
        _, y = next(iterator)
        assert torch.equal(y, loader.epoch_plan(4)[0][:64])

    def test_same_batches_with_shuffle_off_every_epoch(self, cifar_like):
        loader = DeviceLoader(*cifar_like, batch_size=64, shuffle=False)
        assert same_batches(epoch_batches(loader), epoch_batches(loader))


class TestLengthAndSharding:
    @pytest.mark.parametrize("drop_last, expected_sizes", [(False, [64] * 4 + [44]), (True, [64] * 4)])
    def test_len_and_last_batch(self, cifar_like, drop_last, expected_sizes):
        loader = DeviceLoader(*cifar_like, batch_size=64, drop_last=drop_last)
        sizes = [len(y) for _, y in loader]
        assert sizes == expected_sizes and len(loader) == len(expected_sizes)

    def test_ranks_get_disjoint_equal_slices_of_one_permutation(self, cifar_like):
        images = torch.cat([cifar_like[0], cifar_like[0][:1]])  # 301 = 3 * 100 + 1 images
        labels = torch.arange(301)
        single = DeviceLoader(images, labels, batch_size=32, augment=True, seed=4)
        full_order, full_offsets, full_flips = single.epoch_plan(1)
        seen = []
        for rank in range(3):
            loader = DeviceLoader(images, labels, batch_size=32, augment=True, seed=4, rank=rank, world_size=3)
            loader.set_epoch(1)
            ys = torch.cat([y for _, y in loader])
            assert len(ys) == loader.num_samples == 100 and len(loader) == 4
            order, offsets, flips = loader.epoch_plan(1)
            shard = slice(100 * rank, 100 * (rank + 1))
            assert torch.equal(ys, full_order[shard])  # the same permutation, sliced
            assert torch.equal(offsets, full_offsets[shard]) and torch.equal(flips, full_flips[shard])
            seen.append(set(ys.tolist()))
        assert all(a.isdisjoint(b) for i, a in enumerate(seen) for b in seen[i + 1 :])
        assert len(set.union(*seen)) == 300

    def test_ranks_reshuffle_together_each_epoch(self, cifar_like):
        loaders = [DeviceLoader(*cifar_like, batch_size=50, seed=0, rank=r, world_size=2) for r in range(2)]
        for _ in range(2):
            ys = [torch.cat([y for _, y in loader]) for loader in loaders]
            assert set(ys[0].tolist()).isdisjoint(ys[1].tolist()) and len(ys[0]) == len(ys[1]) == 150


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(images=torch.zeros(4, 3, 8, 8)), TypeError, "Expected uint8 images, got torch.float32"),
        (dict(images=torch.zeros(4, 8, dtype=torch.uint8)), ValueError, r"Invalid images shape: \[4, 8\]"),
        (dict(labels=torch.zeros(3, dtype=torch.long)), ValueError, r"Invalid labels shape: \[3\] for 4 images"),
        (dict(labels=torch.zeros(4)), TypeError, "Expected integer labels"),
        (dict(batch_size=0), ValueError, "Invalid batch_size value: 0"),
        (dict(world_size=0), ValueError, "Invalid world_size value: 0"),
        (dict(rank=2, world_size=2), ValueError, r"Invalid rank value: 2 \(world_size 2\)"),
        (dict(padding=-1), ValueError, "Invalid padding value: -1"),
    ],
)
def test_invalid_arguments(kwargs, error, message):
    args = dict(
        images=torch.zeros(4, 3, 8, 8, dtype=torch.uint8), labels=torch.zeros(4, dtype=torch.long), batch_size=2
    )
    args.update(kwargs)
    with pytest.raises(error, match=message):
        DeviceLoader(args.pop("images"), args.pop("labels"), **args)


def test_invalid_epoch_and_state():
    loader = DeviceLoader(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="Invalid epoch value: -1"):
        loader.set_epoch(-1)
    with pytest.raises(KeyError, match=r"missing \['epoch'\]"):
        loader.load_state_dict({"seed": 0})


@pytest.mark.gpu
def test_cuda_batches_equal_cpu_batches(cifar_like):
    cpu = epoch_batches(DeviceLoader(*cifar_like, batch_size=100, augment=True, seed=1))
    cuda = epoch_batches(DeviceLoader(*cifar_like, batch_size=100, augment=True, seed=1, device="cuda"))
    assert cuda[0][0].is_cuda
    assert same_batches(cpu, [(x.cpu(), y.cpu()) for x, y in cuda])


@pytest.mark.realdata
def test_real_cifar10_epoch(real_cifar10):
    images, labels = real_cifar10["test"]
    loader = DeviceLoader(images, labels, batch_size=500, augment=True, seed=0)
    ys = torch.cat([y for _, y in loader])
    assert len(loader) == 20 and torch.equal(ys.sort().values, labels.sort().values)


class TestMemoryFormat:
    """memory_format=torch.channels_last: NHWC batches with exactly the values of the NCHW ones."""

    @staticmethod
    def channels_last(x: torch.Tensor) -> bool:
        return x.stride(1) == 1 and x.permute(0, 2, 3, 1).is_contiguous()

    @pytest.mark.parametrize("augment", [False, True])
    def test_same_batches_in_channels_last(self, cifar_like, augment):
        kwargs = dict(batch_size=64, shuffle=True, augment=augment, seed=3)
        nchw = DeviceLoader(*cifar_like, **kwargs)
        nhwc = DeviceLoader(*cifar_like, **kwargs, memory_format=torch.channels_last)
        for epoch in range(2):
            a, b = epoch_batches(nchw), epoch_batches(nhwc)
            assert same_batches(a, b), epoch
            assert all(self.channels_last(x) and not x.is_contiguous() for x, _ in epoch_loader_raw(nhwc, epoch))
            assert all(x.is_contiguous() for x, _ in epoch_loader_raw(nchw, epoch))

    def test_one_channel_images_get_channels_last_strides(self):
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=g)
        nchw = DeviceLoader(images, torch.arange(40), batch_size=16, seed=1)
        nhwc = DeviceLoader(images, torch.arange(40), batch_size=16, seed=1, memory_format=torch.channels_last)
        a, b = epoch_batches(nchw), epoch_batches(nhwc)
        assert same_batches(a, b)
        assert all(self.channels_last(x) for x, _ in b) and not any(self.channels_last(x) for x, _ in a)
        assert "memory_format=channels_last" in repr(nhwc) and "memory_format" not in repr(nchw)

    @pytest.mark.parametrize("channels", [1, 3])
    def test_pad_crop_flip_keeps_channels_last(self, channels):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(6, channels, 8, 8, generator=g)
        offsets = torch.randint(0, 5, (6, 2), generator=g)
        flips = torch.rand(6, generator=g) < 0.5
        nhwc = torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
        out = pad_crop_flip(nhwc, offsets, flips, padding=2, pad_value=-1.0)
        assert self.channels_last(out)
        assert torch.equal(out, reference_pad_crop_flip(x, offsets, flips, 2, -1.0))
        assert torch.equal(out, pad_crop_flip(x, offsets, flips, padding=2, pad_value=-1.0))

    def test_invalid_memory_format(self, cifar_like):
        with pytest.raises(ValueError, match="Invalid memory_format"):
            DeviceLoader(*cifar_like, batch_size=8, memory_format=torch.preserve_format)


def epoch_loader_raw(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


# CUDA (skipped without it): every rank's shard, the pad value and MNIST-shaped images as on the CPU, bit for bit
@pytest.mark.gpu
@pytest.mark.parametrize("shape, rank, pad_value", [((3, 32, 32), 0, -1.0), ((3, 32, 32), 1, 0.0), ((28, 28), 1, -1.0)])
def test_cuda_shards_equal_cpu_shards(shape, rank, pad_value):
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (90, *shape), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (90,), generator=g)
    kwargs = dict(batch_size=16, augment=True, seed=7, rank=rank, world_size=2, pad_value=pad_value, drop_last=True)
    cpu = epoch_batches(DeviceLoader(images, labels, **kwargs))
    cuda = epoch_batches(DeviceLoader(images, labels, device="cuda", **kwargs))
    assert len(cuda) == 2 and cuda[0][0].is_cuda
    assert same_batches(cpu, [(x.cpu(), y.cpu()) for x, y in cuda])
