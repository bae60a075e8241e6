"""Theorem 1 of Helwegen et al.: with latent weights, scaling the initialization and the learning rate by the same
factor leaves the binary weights' trajectory unchanged, given a pseudo-gradient that does not depend on the weights'
magnitude (no latent clipping, an STE without saturation). With a power of two the scaling is exact in floating
point, so the trajectories must agree bit for bit."""

from __future__ import annotations

import torch
from torch import nn

from torchbop.nn import BinaryConv2d, BinaryLinear, init_binary_weights_, named_binary_parameters
from torchbop.quantizers import SteSign


def latent_bnn(clip_value: float):
    torch.manual_seed(0)
    quantizer = SteSign(clip_value=clip_value)
    return nn.Sequential(
        BinaryConv2d(1, 8, 3, padding=1, input_quantizer=None, mode="latent", weight_quantizer=quantizer),
        nn.BatchNorm2d(8),
        nn.MaxPool2d(2),
        nn.Flatten(),
        BinaryLinear(8 * 4 * 4, 10, mode="latent", weight_quantizer=quantizer),
        nn.BatchNorm1d(10),
    )


def binary_trajectory(scale: float, lr: float, clip_value: float = float("inf"), steps: int = 30):
    model = latent_bnn(clip_value)
    init_binary_weights_(model, "glorot_uniform", scale=scale, generator=torch.Generator().manual_seed(1))
    binary = [p for _, p in named_binary_parameters(model)]
    other = [p for p in model.parameters() if all(p is not b for b in binary)]
    # only the latent weights' learning rate is scaled; batch norm trains identically in both runs
    opt = torch.optim.SGD([{"params": binary, "lr": lr * scale}, {"params": other, "lr": lr}])
    gen = torch.Generator().manual_seed(2)
    trajectory = []
    for _ in range(steps):
        x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        trajectory.append(torch.cat([torch.where(p >= 0, 1, -1).flatten() for p in binary]))
    return torch.stack(trajectory)


def test_power_of_two_scaling_gives_identical_binary_trajectories():
    reference = binary_trajectory(scale=1.0, lr=0.05)
    changes = (reference[1:] != reference[:-1]).sum()
    assert changes > 0  # the weights really moved
    for scale in (2.0**-7, 2.0**5):
        scaled = binary_trajectory(scale=scale, lr=0.05)
        assert int((scaled != reference).sum()) == 0


def test_a_saturating_ste_breaks_the_invariance():
    # the control: with |x| <= 1 clipping in the STE the gradient depends on the magnitude, and the theorem's
    # assumption fails; the same comparison then finds differing weights
    reference = binary_trajectory(scale=1.0, lr=0.05, clip_value=1.0)
    scaled = binary_trajectory(scale=2.0**5, lr=0.05, clip_value=1.0)
    assert int((scaled != reference).sum()) > 0
