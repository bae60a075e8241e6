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


def test_default_eps_is_the_authors_literal():
    assert Bop2ndOrder([torch.nn.Parameter(torch.ones(1))]).param_groups[0]["eps"] == 1e-10


@pytest.mark.parametrize("eps,flips", [(None, True), (1e-10, True), (1e-7, False)])
def test_eps_decides_a_flip_where_sqrt_v_is_small(eps, flips):
    # gamma = sigma = 1: m = g, v = g^2, so w * m / (sqrt(v) + eps) = 1e-9 / (1e-9 + eps) for w = +1, g = 1e-9:
    # 1e-9 / 1.1e-9 = 0.909 > 0.5 with the authors' 1e-10 (a flip), 1e-9 / 1.01e-7 = 0.0099 < 0.5 with 1e-7 (none)
    w = torch.nn.Parameter(torch.tensor([1.0]))
    kwargs = {} if eps is None else {"eps": eps}
    opt = Bop2ndOrder([w], gamma=1.0, sigma=1.0, threshold=0.5, **kwargs)
    w.grad = torch.tensor([1e-9])
    opt.step()
    assert w.item() == (-1.0 if flips else 1.0)


def _stepped(**kwargs):
    a, b = torch.nn.Parameter(binary(5)), torch.nn.Parameter(binary(5, seed=1))
    opt = Bop2ndOrder([{"params": [a]}, {"params": [b]}], gamma=0.5, sigma=0.5, threshold=0.0, **kwargs)
    a.grad, b.grad = torch.ones(5), -torch.ones(5)
    opt.step()
    a.grad, b.grad = -torch.ones(5), torch.ones(5)
    return opt, [a, b]


@pytest.mark.parametrize("key,value,regex", [
    ("sigma", float("nan"), r"Invalid sigma value in param group 1 \('sigma'\): nan \(expected a number in \[0, 1\]\)"),
    ("sigma", 1.5, r"Invalid sigma value in param group 1 \('sigma'\): 1.5"),
    ("sigma", -0.1, r"Invalid sigma value in param group 1 \('sigma'\): -0.1"),
    ("eps", 0.0, r"Invalid eps value in param group 1 \('eps'\): 0.0 \(expected a number in \(0, inf\]\)"),
    ("eps", float("nan"), r"Invalid eps value in param group 1 \('eps'\): nan"),
    ("lr", float("nan"), r"Invalid gamma value in param group 1 \('lr'\): nan"),
    ("threshold", -1.0, r"Invalid threshold value in param group 1 \('threshold'\): -1.0"),
    ("nonfinite", "mask", r"Invalid nonfinite value in param group 1 \('nonfinite'\): 'mask'"),
])
def test_bad_value_set_after_construction_changes_nothing(key, value, regex):
    opt, params = _stepped()
    snapshot = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in params]
    opt.param_groups[1][key] = value
    with pytest.raises(ValueError, match=regex):
        opt.step()
    for p, (w, state) in zip(params, snapshot):
        assert torch.equal(p.detach(), w)
        for k, v in state.items():
            assert torch.equal(opt.state[p][k], v), k


def test_sigma_and_gamma_zero_are_valid_at_step_time():
    opt, params = _stepped()
    m, v = opt.state[params[0]]["exp_avg"].clone(), opt.state[params[0]]["exp_avg_sq"].clone()
    for group in opt.param_groups:
        group["lr"], group["sigma"] = 0.0, 0.0
    opt.step()
    assert torch.equal(opt.state[params[0]]["exp_avg"], m) and torch.equal(opt.state[params[0]]["exp_avg_sq"], v)


@pytest.mark.parametrize("key", ["exp_avg", "exp_avg_sq"])
def test_load_refuses_a_state_tensor_of_another_shape(key):
    w = torch.nn.Parameter(binary(6))
    opt = Bop2ndOrder([("w", w)], gamma=0.2, sigma=0.1, threshold=0.1)
    w.grad = torch.randn(6)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][0][key] = torch.zeros(2, 3)
    before = {k: v.clone() for k, v in opt.state[w].items()}
    opt.param_groups[0]["lr"] = 0.3
    with pytest.raises(ValueError, match=rf"state\['{key}'\] for parameter 'w' has shape \(2, 3\), but that "
                                         r"parameter has shape \(6,\)"):
        opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] == 0.3
    for k, v in before.items():
        assert torch.equal(opt.state[w][k], v), k
