"""Bop2ndOrder: the rule on a hand-computed case, foreach == reference, resume, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from torchbop.optim import Bop2ndOrder
from torchbop.optim.bop2nd import _multi_tensor_bop2nd, _single_tensor_bop2nd


def binary(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(dtype)


def test_hand_computed_step():
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0, -1.0]))
    opt = Bop2ndOrder([w], gamma=0.5, sigma=0.5, threshold=0.5, eps=1e-12)
    w.grad = torch.tensor([2.0, 0.5, 2.0])
    opt.step()
    # m = [1, 0.25, 1]; v = [2, 0.125, 2]; w*m/sqrt(v) = [0.707, 0.707, -0.707] -> the first two flip
    assert torch.allclose(opt.state[w]["exp_avg"], torch.tensor([1.0, 0.25, 1.0]))
    assert torch.allclose(opt.state[w]["exp_avg_sq"], torch.tensor([2.0, 0.125, 2.0]))
    assert w.data.tolist() == [-1.0, -1.0, -1.0]
    assert int(opt.state[w]["flips"]) == 2


def test_normalization_makes_the_threshold_scale_free():
    flips = []
    for scale in (1e-3, 1e3):
        w = torch.nn.Parameter(binary(200))
        opt = Bop2ndOrder([w], gamma=0.1, sigma=0.1, threshold=0.05)
        gen = torch.Generator().manual_seed(0)
        for _ in range(5):
            w.grad = torch.randn(200, generator=gen) * scale
            opt.step()
        flips.append(w.detach().clone())
    assert torch.equal(flips[0], flips[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tie_break", ["larq", "keep", "flip"])
def test_foreach_bit_identical_to_reference(dtype, tie_break):
    shapes = [(8, 3, 3, 3), (0,), (40, 20), (5,)]
    results = []
    for impl in (_single_tensor_bop2nd, _multi_tensor_bop2nd):
        gen = torch.Generator().manual_seed(1)
        ws = [binary(*s, seed=i, dtype=dtype) for i, s in enumerate(shapes)]
        ms = [torch.zeros(s, dtype=dtype) for s in shapes]
        vs = [torch.zeros(s, dtype=dtype) for s in shapes]
        counts = []
        for _ in range(7):
            gs = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
            counts.append([int(c) for c in impl(ws, gs, ms, vs, gamma=0.1, sigma=0.05, threshold=0.3, eps=1e-7,
                                                 tie_break=tie_break)])
        results.append((ws, ms, vs, counts))
    (ref_w, ref_m, ref_v, ref_c), (w, m, v, c) = results
    assert c == ref_c and sum(map(sum, c)) > 0
    for a, b in zip(ref_w + ref_m + ref_v, w + m + v):
        assert torch.equal(a, b)


def test_state_dict_resume():
    def run(opt, w, seed, steps=4):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            w.grad = torch.randn(30, generator=gen)
            opt.step()

    w = torch.nn.Parameter(binary(30))
    opt = Bop2ndOrder([w], gamma=0.2, sigma=0.1, threshold=0.1)
    run(opt, w, 0)
    saved = copy.deepcopy((w.data, opt.state_dict()))
    run(opt, w, 1)
    w2 = torch.nn.Parameter(saved[0].clone())
    opt2 = Bop2ndOrder([w2])
    opt2.load_state_dict(saved[1])
    assert opt2.param_groups[0]["sigma"] == 0.1
    run(opt2, w2, 1)
    assert torch.equal(w2.data, w.data)
    assert torch.equal(opt2.state[w2]["exp_avg_sq"], opt.state[w]["exp_avg_sq"])


@pytest.mark.parametrize("kwargs,regex", [
    (dict(sigma=0.0), "Invalid sigma value"), (dict(sigma=2.0), "Invalid sigma value"),
    (dict(eps=0.0), "Invalid eps value"), (dict(gamma=0.0), "Invalid gamma value"),
    (dict(threshold=-1.0), "Invalid threshold value"),
])
def test_invalid_arguments(kwargs, regex):
    with pytest.raises(ValueError, match=regex):
        Bop2ndOrder([torch.nn.Parameter(torch.ones(2))], **kwargs)
