"""Flip metrics: Bop-reported counts equal sign comparisons; latent training with any optimizer; pi_t; epochs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchbop.metrics import FlipCounter, count_sign_flips, log_flip_ratio
from torchbop.nn import BinaryConv2d, BinaryLinear, clip_latent_weights_, split_binary_params
from torchbop.optim import Bop, CompositeOptimizer


def tiny_bnn(mode="bop"):
    torch.manual_seed(0)
    return nn.Sequential(
        BinaryConv2d(1, 4, 3, padding=1, input_quantizer=None, mode=mode),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        BinaryLinear(4 * 5 * 5, 3, mode=mode),
        nn.BatchNorm1d(3),
    )


def batches(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 5, 5, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(n)]


def step(model, opt, x, y):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_log_flip_ratio_and_count():
    assert math.isclose(float(log_flip_ratio(5, 100)), math.log(0.05 + 1e-9))
    assert math.isclose(float(log_flip_ratio(0, 100)), math.log(1e-9))
    assert int(count_sign_flips(torch.tensor([0.0, -1.0, 2.0]), torch.tensor([-0.0, 1.0, -2.0]))) == 2
    with pytest.raises(ValueError):
        log_flip_ratio(1, 0)


def test_bop_reported_counts_equal_sign_comparison():
    model = tiny_bnn()
    binary, other = split_binary_params(model)
    opt = CompositeOptimizer(Bop(binary, gamma=0.2, threshold=1e-4), torch.optim.Adam(other), model=model)
    counter = FlipCounter(model, opt)
    seen = 0
    for x, y in batches(6):
        before = {name: layer.weight.detach().clone() for name, layer in [("0", model[0]), ("3", model[3])]}
        step(model, opt, x, y)
        flips = counter.after_step()
        for name, w in before.items():
            expected = int(count_sign_flips(w, dict(model.named_children())[name].weight))
            assert int(flips[name]) == expected
            seen += expected
        assert int(counter.last_total) == sum(int(f) for f in flips.values())
        assert math.isclose(
            float(counter.last_pi_t), math.log(int(counter.last_total) / counter.total_binary_params + 1e-9)
        )
    assert seen > 0
    assert int(counter.epoch_total) == seen and counter.epoch_steps == 6
    counter.reset_epoch()
    assert int(counter.epoch_total) == 0 and counter.epoch_steps == 0


def test_stale_bop_counts_are_not_reused():
    model = tiny_bnn()
    binary, other = split_binary_params(model)
    bop = Bop(binary, gamma=0.5, threshold=0.0)
    opt = CompositeOptimizer(bop, torch.optim.Adam(other), model=model)
    counter = FlipCounter(model, opt)
    x, y = batches(1)[0]
    step(model, opt, x, y)
    counter.after_step()
    opt.zero_grad()
    opt.step()  # no gradients: Bop does nothing
    assert int(counter.after_step()["0"]) == 0


def test_latent_training_with_adam_counts_sign_changes():
    model = tiny_bnn(mode="latent")
    with torch.no_grad():
        for layer in (model[0], model[3]):
            layer.weight.mul_(1e-3)  # small latent weights so that Adam flips some signs
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    counter = FlipCounter(model)
    total = 0
    for x, y in batches(5):
        signs = [(model[0].weight < 0).clone(), (model[3].weight < 0).clone()]
        step(model, opt, x, y)
        clip_latent_weights_(model)
        flips = counter.after_step()
        expected = [int(((model[0].weight < 0) != signs[0]).sum()), int(((model[3].weight < 0) != signs[1]).sum())]
        assert [int(flips["0"]), int(flips["3"])] == expected
        total += sum(expected)
    assert total > 0
    assert set(counter.layer_pi_t()) == {"0", "3"}


def test_model_without_binary_layers():
    with pytest.raises(ValueError, match="no binary layer"):
        FlipCounter(nn.Linear(2, 2))


def test_reading_counts_never_creates_optimizer_state():
    # a plain optimizer that does not train the binary weights must not get state entries for them
    model = tiny_bnn(mode="latent")
    for layer in (model[0], model[3]):
        layer.weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    counter = FlipCounter(model, opt)
    x, y = batches(1)[0]
    step(model, opt, x, y)
    counter.after_step()
    assert model[0].weight not in opt.state
    opt.state_dict()  # would raise KeyError for a foreign state entry
