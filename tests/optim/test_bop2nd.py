"""Bop2ndOrder: the rule on a hand-computed case, eager and fused paths == reference, resume, errors."""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch

from torchbop.optim import Bop2ndOrder, _fused
from torchbop.optim.bop2nd import _fused_bop2nd, _multi_tensor_bop2nd, _single_tensor_bop2nd

bop2nd_module = importlib.import_module("torchbop.optim.bop2nd")  # the attribute torchbop.optim.bop2nd is the function


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


requires_compiler = pytest.mark.skipif(
    _fused._environment_problem("cpu") is not None, reason="torch.compile cannot build CPU kernels here"
)


def _eager(*args, **kwargs):
    return _multi_tensor_bop2nd(*args, **kwargs)


def _fused_explicit(*args, **kwargs):
    return _fused_bop2nd(*args, **kwargs, fused=True)


@pytest.fixture
def chunked(monkeypatch):
    """Make the eager path chunk even these small tensors, several chunks per tensor (the last one short)."""
    monkeypatch.setattr(bop2nd_module, "EAGER_MIN_ENTRIES", 0)
    monkeypatch.setattr(importlib.import_module("torchbop.optim.bop"), "EAGER_CHUNK", 200)


def _run(impl, dtype, tie_break, threshold=0.3, device="cpu", unbiased=False):
    shapes = [(8, 3, 3, 3), (0,), (40, 20), (5,), (1,), (30, 20)]
    gen = torch.Generator().manual_seed(1)
    ws = [binary(*s, seed=i, dtype=dtype) for i, s in enumerate(shapes)]
    ws[5] = ws[5].t().contiguous().t()  # non-contiguous, with m and v laid out alike
    ws = [w.to(device) for w in ws]
    ms = [torch.zeros_like(w) for w in ws]
    vs = [torch.zeros_like(w) for w in ws]
    counts = []
    for _ in range(7):
        gs = [torch.randn(w.shape, generator=gen, dtype=dtype).to(device) for w in ws]
        counts.append(
            [
                int(c)
                for c in impl(
                    ws,
                    gs,
                    ms,
                    vs,
                    gamma=0.1,
                    sigma=0.05,
                    threshold=threshold,
                    eps=1e-7,
                    tie_break=tie_break,
                    unbiased=unbiased,
                )
            ]
        )
    return ws + ms + vs, counts


@pytest.mark.usefixtures("chunked")
@pytest.mark.parametrize("tie_break", ["larq", "keep", "flip"])
@pytest.mark.parametrize(
    "impl,dtype",
    [
        pytest.param(_eager, torch.float64, id="eager-float64"),
        pytest.param(_eager, torch.float32, id="eager-float32"),
        # one compilation: fp64 compiles the same code again (Bop's tests cover the fp64 kernel)
        pytest.param(_fused_explicit, torch.float32, id="fused-float32", marks=requires_compiler),
    ],
)
def test_fast_paths_bit_identical_to_reference(impl, dtype, tie_break):
    ref, ref_counts = _run(_single_tensor_bop2nd, dtype, tie_break)
    out, counts = _run(impl, dtype, tie_break)
    assert counts == ref_counts and sum(map(sum, counts)) > 0
    for a, b in zip(ref, out):
        assert torch.equal(a, b)


@pytest.mark.usefixtures("chunked")
@pytest.mark.parametrize(
    "impl,dtype",
    [
        pytest.param(_eager, torch.float64, id="eager-float64"),
        pytest.param(_eager, torch.float32, id="eager-float32"),
        pytest.param(_fused_explicit, torch.float32, id="fused-float32", marks=requires_compiler),
    ],
)
def test_unbiased_fast_paths_bit_identical_to_reference(impl, dtype):
    ref, ref_counts = _run(_single_tensor_bop2nd, dtype, "larq", threshold=0.6, unbiased=True)
    out, counts = _run(impl, dtype, "larq", threshold=0.6, unbiased=True)
    assert counts == ref_counts and sum(map(sum, counts)) > 0
    for a, b in zip(ref, out):
        assert torch.equal(a, b)


@pytest.mark.usefixtures("chunked")
@pytest.mark.parametrize("threshold", [0.0, 2.0])  # the eager path's general flip test (no clamp)
def test_eager_path_at_other_thresholds(threshold):
    ref, ref_counts = _run(_single_tensor_bop2nd, torch.float32, "larq", threshold=threshold)
    out, counts = _run(_eager, torch.float32, "larq", threshold=threshold)
    assert counts == ref_counts
    for a, b in zip(ref, out):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_paths_bit_identical_to_reference(dtype):
    ref, ref_counts = _run(_single_tensor_bop2nd, dtype, "larq", device="cuda")
    for impl in (_eager, _fused_explicit):
        out, counts = _run(impl, dtype, "larq", device="cuda")
        assert counts == ref_counts
        for a, b in zip(ref, out):
            assert torch.equal(a, b)


def test_flags_reach_the_functional(monkeypatch):
    seen = []
    original = bop2nd_module.bop2nd
    monkeypatch.setattr(
        bop2nd_module, "bop2nd", lambda *a, **k: seen.append((k["foreach"], k["fused"])) or original(*a, **k)
    )
    for flags in (dict(fused=False), dict(foreach=False), dict()):
        w = torch.nn.Parameter(binary(10))
        opt = Bop2ndOrder([w], **flags)
        w.grad = torch.randn(10)
        opt.step()
    assert seen == [(None, False), (False, None), (None, None)]


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


@pytest.mark.parametrize(
    "kwargs,regex",
    [
        (dict(sigma=0.0), "Invalid sigma value"),
        (dict(sigma=2.0), "Invalid sigma value"),
        (dict(eps=0.0), "Invalid eps value"),
        (dict(gamma=0.0), "Invalid gamma value"),
        (dict(threshold=-1.0), "Invalid threshold value"),
    ],
)
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


@pytest.mark.parametrize(
    "key,value,regex",
    [
        (
            "sigma",
            float("nan"),
            r"Invalid sigma value in param group 1 \('sigma'\): nan \(expected a number in \[0, 1\]\)",
        ),
        ("sigma", 1.5, r"Invalid sigma value in param group 1 \('sigma'\): 1.5"),
        ("sigma", -0.1, r"Invalid sigma value in param group 1 \('sigma'\): -0.1"),
        ("eps", 0.0, r"Invalid eps value in param group 1 \('eps'\): 0.0 \(expected a number in \(0, inf\]\)"),
        ("eps", float("nan"), r"Invalid eps value in param group 1 \('eps'\): nan"),
        ("lr", float("nan"), r"Invalid gamma value in param group 1 \('lr'\): nan"),
        ("threshold", -1.0, r"Invalid threshold value in param group 1 \('threshold'\): -1.0"),
        ("nonfinite", "mask", r"Invalid nonfinite value in param group 1 \('nonfinite'\): 'mask'"),
    ],
)
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
    with pytest.raises(
        ValueError,
        match=rf"state\['{key}'\] for parameter 'w' has shape \(2, 3\), but that "
        r"parameter has shape \(6,\)",
    ):
        opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] == 0.3
    for k, v in before.items():
        assert torch.equal(opt.state[w][k], v), k


# -- the authors' rule, flip for flip ---------------------------------------------------------------------------------
def authors_bop2nd_numpy(w, m, v, g, gamma, sigma, threshold, unbiased):
    """A NumPy transcription (not a copy) of ``_resource_apply_dense`` of ``Bop2ndOrder`` and ``Bop2ndOrder_unbiased``
    in CuauSuarez/Bop2ndOrder, ``bnn_optimization/optimizers.py`` at commit b2f8b185 (TensorFlow float32 arithmetic;
    Larq's ``lq.math.sign`` takes sign(0) = +1, ``tf.sign`` sign(0) = 0):

        m_t = m + gamma (g - m);  v_t = v + sigma (g^2 - v)
        s   = w (m_t / (sqrt(v_t) + 1e-10))                      (biased)
        s   = w ((m_t / gamma) / (sqrt(v_t / sigma) + 1e-10))    (unbiased)
        w   = lq_sign(-tf_sign(s - threshold) w)
    """
    eps = np.float32(1e-10)
    m_t = m + gamma * (g - m)
    v_t = v + sigma * (np.square(g) - v)
    if unbiased:
        s = w * ((m_t / gamma) / (np.sqrt(v_t / sigma) + eps))
    else:
        s = w * (m_t / (np.sqrt(v_t) + eps))
    inner = -np.sign(s - threshold) * w
    return np.where(inner >= 0, np.float32(1), np.float32(-1)), m_t, v_t


@pytest.mark.parametrize("unbiased,threshold", [(False, 0.05), (True, 0.2), (True, 0.7), (True, 0.0)])
def test_matches_the_authors_code_flip_for_flip(unbiased, threshold):
    """Recorded gradients of several scales through both: identical weights, m and v after every step.

    The thresholds keep the signal off exact ties: torch's float32 ``sqrt`` on CPU is not always correctly rounded
    (one ulp off IEEE, as NumPy and CUDA compute it, for about a fifth of inputs here), so at ``w * signal == tau``
    to the last bit (the unbiased signal is exactly +-1 at the first step) the two may part.
    """
    rng = np.random.default_rng(0)
    n, f32 = 600, np.float32
    gamma, sigma = f32(0.05), f32(0.02)  # the authors cast their hyperparameters to the variable's dtype
    w_np = np.where(rng.random(n) < 0.5, f32(-1), f32(1))
    m_np, v_np = np.zeros(n, f32), np.zeros(n, f32)
    w = torch.nn.Parameter(torch.from_numpy(w_np.copy()))
    opt = Bop2ndOrder([w], gamma=gamma.item(), sigma=sigma.item(), threshold=threshold, unbiased=unbiased)
    total = 0
    for step in range(30):
        scale = 10.0 ** rng.uniform(-4, 0, n)
        g_np = (rng.standard_normal(n) * scale).astype(f32)
        w_np, m_np, v_np = authors_bop2nd_numpy(w_np, m_np, v_np, g_np, gamma, sigma, f32(threshold), unbiased)
        w.grad = torch.from_numpy(g_np)
        opt.step()
        total += int(opt.state[w]["flips"])
        np.testing.assert_array_equal(w.detach().numpy(), w_np, err_msg=f"step {step}")
        np.testing.assert_array_equal(opt.state[w]["exp_avg"].numpy(), m_np)
        np.testing.assert_array_equal(opt.state[w]["exp_avg_sq"].numpy(), v_np)
    assert total > 50  # the comparison saw real flipping


def test_unbiased_flips_otherwise_than_biased():
    # gamma = 0.5, sigma = 0.5, g = 1: m = v = 0.5; biased w*m/sqrt(v) = 0.71, unbiased (0.5/0.5)/sqrt(1) = 1.0
    results = {}
    for unbiased in (False, True):
        w = torch.nn.Parameter(torch.tensor([1.0]))
        opt = Bop2ndOrder([w], gamma=0.5, sigma=0.5, threshold=0.8, unbiased=unbiased)
        w.grad = torch.tensor([1.0])
        opt.step()
        results[unbiased] = w.item()
    assert results == {False: 1.0, True: -1.0}


def test_unbiased_is_keyword_only_and_off_by_default():
    w = torch.nn.Parameter(torch.ones(2))
    assert Bop2ndOrder([w]).param_groups[0]["unbiased"] is False
    with pytest.raises(TypeError):
        Bop2ndOrder([w], 1e-6, 1e-2, 1e-6, 1e-10, True)  # type: ignore[misc]
    with pytest.raises(TypeError, match="Invalid unbiased value: 'yes'"):
        Bop2ndOrder([w], unbiased="yes")  # type: ignore[arg-type]
    opt = Bop2ndOrder([w], unbiased=True)
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "unbiased": False})
    assert [g["unbiased"] for g in opt.param_groups] == [True, False]


def test_a_state_dict_saved_before_the_option_loads_as_biased():
    w = torch.nn.Parameter(binary(8))
    opt = Bop2ndOrder([w], gamma=0.2, sigma=0.1, threshold=0.1)
    w.grad = torch.randn(8)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    del saved["param_groups"][0]["unbiased"]
    opt2 = Bop2ndOrder([torch.nn.Parameter(w.detach().clone())])
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["unbiased"] is False
    assert torch.equal(opt2.state[opt2.param_groups[0]["params"][0]]["exp_avg_sq"], opt.state[w]["exp_avg_sq"])


@pytest.mark.parametrize("key", ["lr", "sigma"])
def test_unbiased_refuses_a_zero_rate_at_step_time_and_changes_nothing(key):
    opt, params = _stepped(unbiased=True)
    snapshot = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in params]
    opt.param_groups[1][key] = 0.0
    name = "gamma" if key == "lr" else "sigma"
    with pytest.raises(
        ValueError,
        match=rf"Invalid {name} value in param group 1 \('{key}'\): 0.0 \(expected a "
        r"number in \(0, 1\]\)",
    ):
        opt.step()
    for p, (w, state) in zip(params, snapshot):
        assert torch.equal(p.detach(), w)
        for k, v in state.items():
            assert torch.equal(opt.state[p][k], v), k
