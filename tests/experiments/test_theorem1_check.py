"""The experiment's exact Theorem-1 check: 0 differing binary weights when its assumptions hold, > 0 when they
are broken (latent clipping and a saturating STE), on synthetic images (no dataset needed)."""

import torch

from torchbop.experiments.arbitrary_lr import theorem1_check


def synthetic_mnist(n: int = 256):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (n,), generator=gen)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    images[torch.arange(n), 0, labels * 2 + 4, 4:24] = 255  # a class-dependent stripe: something to learn
    return images, labels


def test_power_of_two_scaling_leaves_the_binary_trajectory_unchanged():
    result = theorem1_check(synthetic_mnist(), steps=10, factor=2.0**-7, lr=0.01)
    assert result["flips_total"] > 0  # the weights did move, so agreement is not trivial
    assert result["differing_total"] == 0
    assert result["first_difference_step"] is None
    assert len(result["differing"]) == 10


def test_the_control_with_clipping_and_a_saturating_ste_finds_differences():
    result = theorem1_check(synthetic_mnist(), steps=10, factor=2.0**10, lr=0.01, ste_clip=1.0, clip_latent=True)
    assert result["differing_total"] > 0
    assert result["first_difference_step"] is not None


def test_where_the_unscaled_runs_latent_weights_ended_is_reported():
    # clipped: run A's latent weights stay within [-1, 1]; not clipped at lr 100, some grow beyond 1
    clipped = theorem1_check(synthetic_mnist(), steps=10, factor=2.0**-7, lr=100.0, ste_clip=1.0, clip_latent=True)
    free = theorem1_check(synthetic_mnist(), steps=10, factor=2.0**-7, lr=100.0)
    assert clipped["latent_abs_max"] == 1.0 and 0 < clipped["latent_at_clip"] < 1
    assert free["latent_abs_max"] > 1.0 and free["latent_at_clip"] > 0
    small = theorem1_check(synthetic_mnist(), steps=10, factor=2.0**-7, lr=0.01)
    assert small["latent_abs_max"] < 1.0 and small["latent_at_clip"] == 0
