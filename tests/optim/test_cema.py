"""CEMA: the equations by hand, the authors' code flip for flip, fast path == reference, resume, composite, errors."""

from __future__ import annotations

import copy
import importlib
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from torchbop.metrics import FlipCounter
from torchbop.nn import BinaryLinear, split_binary_params
from torchbop.optim import CEMA, CompositeOptimizer
from torchbop.optim.cema import _multi_tensor_cema, _single_tensor_cema

cema_module = importlib.import_module("torchbop.optim.cema")  # the attribute torchbop.optim.cema is the function


def binary(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(dtype)


class TestEquations:
    def test_hand_computed_two_steps(self):
        w = torch.nn.Parameter(torch.tensor([1.0, 1.0, -1.0, -1.0]))
        opt = CEMA([w], gamma=0.5, alpha=0.5)
        w.grad = torch.tensor([1.0, -1.0, 1.0, 0.0])
        opt.step()  # m = [0.5, -0.5, 0.5, 0]; I = [0.25, -0.25, 0.25, 0]; w*I = [.25, -.25, -.25, 0]: flip at 0
        assert opt.state[w]["exp_avg"].tolist() == [0.5, -0.5, 0.5, 0.0]
        assert opt.state[w]["inertia"].tolist() == [0.25, -0.25, 0.25, 0.0]
        assert w.tolist() == [-1.0, 1.0, -1.0, -1.0]  # I == 0 does not flip
        assert int(opt.state[w]["flips"]) == 1
        w.grad = torch.tensor([0.0, 0.0, 0.0, -2.0])
        opt.step()  # m = [0.25, -0.25, 0.25, -1]; I = [0.25, -0.25, 0.25, -0.5]; w*I = [-.25, -.25, -.25, .5]
        assert opt.state[w]["inertia"].tolist() == [0.25, -0.25, 0.25, -0.5]
        assert w.tolist() == [-1.0, 1.0, -1.0, 1.0]
        assert int(opt.state[w]["flips"]) == 1 and int(opt.state[w]["step"]) == 2

    def test_alpha_one_is_bop_with_a_zero_threshold(self):
        from torchbop.optim import Bop

        w1, w2 = torch.nn.Parameter(binary(300)), torch.nn.Parameter(binary(300))
        opt1, opt2 = CEMA([w1], gamma=0.25, alpha=1.0), Bop([w2], gamma=0.25, threshold=0.0, tie_break="keep")
        gen = torch.Generator().manual_seed(0)
        for _ in range(10):
            g = torch.randint(-4, 5, (300,), generator=gen).float()  # dyadic: both roundings are exact
            w1.grad, w2.grad = g.clone(), g.clone()
            opt1.step()
            opt2.step()
            assert torch.equal(w1, w2)

    def test_weights_move_towards_a_target(self):
        target = binary(64, seed=1)
        w = torch.nn.Parameter(binary(64, seed=2))
        opt = CEMA([w], gamma=0.3, alpha=0.3)
        for _ in range(30):
            opt.zero_grad()
            (-(w * target).sum()).backward()
            opt.step()
        assert torch.equal(w.detach(), target)


# -- the authors' code, flip for flip ---------------------------------------------------------------------------------
def _round(q: Fraction, dtype) -> float:
    """``q`` correctly rounded to ``dtype`` (ties to even)."""
    c = dtype(float(q))  # float() rounds correctly to float64; to float32 that may round twice, so check neighbours
    if dtype is np.float64:
        return c
    near = [c, np.nextafter(c, dtype(np.inf)), np.nextafter(c, dtype(-np.inf))]
    return min(near, key=lambda x: (abs(q - Fraction(float(x))), int(np.array(x).view(np.int32)) & 1))


def fma(x, y, z):
    """Elementwise x * y + z with one rounding, exactly (what torch's ``add_(t, alpha=a)`` computes on CUDA and on
    AVX2/AVX-512 CPUs)."""
    dtype, shape = z.dtype.type, np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
    x, y, z = (np.ravel(t) for t in np.broadcast_arrays(x, y, z))
    out = [_round(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)), dtype) for a, b, c in zip(x, y, z)]
    return np.array(out, dtype=dtype).reshape(shape)


def authors_cema_numpy(ws, ms, inertias, gs, gamma, initial_alpha, lr):
    """A NumPy transcription (not a copy) of ``CEMA_Optimizer.step`` and ``cascaded_ema`` in
    jorisquist/Understanding-WM-HP-in-BNNs, ``optimizers/cema_optimizer.py``: alpha = initial_alpha * lr (Python
    floats); for every tensor m <- m (1 - gamma) then m += gamma g (torch's add with alpha: one FMA), the same for
    the inertia with alpha and the new m; then, over all tensors, a weight flips where inertia * w > 0."""
    alpha = initial_alpha * lr
    out_m, out_i, out_w = [], [], []
    for m, inertia, g in zip(ms, inertias, gs):
        dt = m.dtype.type
        m = fma(g, dt(gamma), m * dt(1 - gamma))
        inertia = fma(m, dt(alpha), inertia * dt(1 - alpha))
        out_m.append(m)
        out_i.append(inertia)
    for w, inertia in zip(ws, out_i):
        out_w.append(np.where(inertia * w > 0, -w, w))
    return out_w, out_m, out_i


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_authors_code_flip_for_flip_under_their_alpha_schedule(dtype):
    """Recorded gradients through both, alpha decayed as the authors decay it (their ``lr`` is a factor 1 -> 0 of
    alpha under ``LambdaLR``): the same weights, m and I after every step."""
    rng = np.random.default_rng(0)
    shapes, steps, gamma, alpha = [(300,), (20, 10)], 24, 0.1, 0.3
    decay = lambda epoch: 1.0 - epoch / steps  # noqa: E731  (the authors' schedule, stepped here every step)
    ws_np = [np.where(rng.random(s) < 0.5, -1.0, 1.0).astype(dtype) for s in shapes]
    ms_np = [np.zeros(s, dtype) for s in shapes]
    is_np = [np.zeros(s, dtype) for s in shapes]
    params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in ws_np]
    opt = CEMA(params, gamma=gamma, alpha=alpha)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    total = 0
    for step in range(steps):
        gs_np = [(rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 0, s)).astype(dtype) for s in shapes]
        ws_np, ms_np, is_np = authors_cema_numpy(ws_np, ms_np, is_np, gs_np, gamma, alpha, 1.0 * decay(step))
        for p, g in zip(params, gs_np):
            p.grad = torch.from_numpy(g)
        opt.step()
        sched.step()
        for p, w, m, i in zip(params, ws_np, ms_np, is_np):
            np.testing.assert_array_equal(p.detach().numpy(), w, err_msg=f"step {step}")
            np.testing.assert_array_equal(opt.state[p]["exp_avg"].numpy(), m, err_msg=f"step {step}")
            np.testing.assert_array_equal(opt.state[p]["inertia"].numpy(), i, err_msg=f"step {step}")
            total += int(opt.state[p]["flips"])
    assert total > 100  # the comparison saw real flipping


def test_the_transcription_would_see_two_roundings():
    """The FMA matters: m (1 - gamma) + gamma g rounded twice gives another m for some of these entries."""
    rng = np.random.default_rng(1)
    m, g = rng.standard_normal(2000).astype(np.float32), rng.standard_normal(2000).astype(np.float32)
    scaled = m * np.float32(0.9)
    assert (fma(g, np.float32(0.1), scaled) != scaled + np.float32(0.1) * g).any()
    w = torch.nn.Parameter(torch.ones(2000))
    opt = CEMA([w], gamma=0.1, alpha=1.0)
    opt.state[w].update(
        step=torch.tensor(0),
        flips=torch.tensor(0),
        nonfinite_steps=torch.tensor(0),
        exp_avg=torch.from_numpy(m.copy()),
        inertia=torch.zeros(2000),
    )
    w.grad = torch.from_numpy(g)
    opt.step()
    np.testing.assert_array_equal(opt.state[w]["exp_avg"].numpy(), fma(g, np.float32(0.1), scaled))


# -- the fast path against the reference -------------------------------------------------------------------------------
@pytest.fixture
def chunked(monkeypatch):
    """Make the eager path chunk even these small tensors, several chunks per tensor (the last one short)."""
    monkeypatch.setattr(cema_module, "EAGER_MIN_ENTRIES", 0)
    monkeypatch.setattr(importlib.import_module("torchbop.optim.bop"), "EAGER_CHUNK", 200)


def _run(impl, dtype, steps=7):
    shapes = [(8, 3, 3, 3), (0,), (40, 20), (5,), (1,), (30, 20)]
    gen = torch.Generator().manual_seed(1)
    ws = [binary(*s, seed=i, dtype=dtype) for i, s in enumerate(shapes)]
    ws[5] = ws[5].t().contiguous().t()  # non-contiguous, with m and I laid out alike
    ms = [torch.zeros_like(w) for w in ws]
    inertias = [torch.zeros_like(w) for w in ws]
    counts = []
    for _ in range(steps):
        gs = [torch.randn(w.shape, generator=gen, dtype=dtype) * 0.1 for w in ws]
        counts.append([int(c) for c in impl(ws, gs, ms, inertias, gamma=0.3, alpha=0.2)])
    return ws + ms + inertias, counts


@pytest.mark.usefixtures("chunked")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_path_bit_identical_to_reference(dtype):
    ref, ref_counts = _run(_single_tensor_cema, dtype)
    out, counts = _run(_multi_tensor_cema, dtype)
    assert counts == ref_counts and sum(map(sum, counts)) > 0
    for a, b in zip(ref, out):
        assert torch.equal(a, b)


def _train(opt, params, seed, steps=7):
    gen = torch.Generator().manual_seed(seed)
    for i in range(steps):
        for p in params:
            p.grad = None if i == 3 else torch.randn(p.shape, generator=gen, dtype=p.dtype)  # step 3: no gradient
        opt.step()


@pytest.mark.usefixtures("chunked")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_optimizer_flags_give_the_same_trajectory(dtype):
    runs = []
    for foreach in (False, None, True):
        params = [torch.nn.Parameter(binary(*s, seed=i, dtype=dtype)) for i, s in enumerate([(50, 9), (0,), (7,)])]
        opt = CEMA(params, gamma=0.2, alpha=0.4, foreach=foreach)
        _train(opt, params, seed=0)
        runs.append([t.clone() for p in params for t in (p.detach(), *opt.state[p].values())])
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run))


def test_state_dict_round_trip_resumes_exactly():
    def make(seed=0):
        params = [torch.nn.Parameter(binary(40, seed=seed)), torch.nn.Parameter(binary(3, 5, seed=seed + 1))]
        return params, CEMA(params, gamma=0.2, alpha=0.3)

    params, opt = make()
    _train(opt, params, seed=0)
    saved = copy.deepcopy(([p.detach().clone() for p in params], opt.state_dict()))
    _train(opt, params, seed=1)
    params2, opt2 = make(seed=5)
    with torch.no_grad():
        for p, w in zip(params2, saved[0]):
            p.copy_(w)
    opt2.load_state_dict(saved[1])
    _train(opt2, params2, seed=1)
    for p, q in zip(params, params2):
        assert torch.equal(p, q)
        for key in ("exp_avg", "inertia", "step", "flips"):
            assert torch.equal(opt.state[p][key], opt2.state[q][key]), key


def test_a_state_dict_without_the_newer_group_keys_loads():
    w = torch.nn.Parameter(binary(4))
    opt = CEMA([w], gamma=0.2, alpha=0.3)
    saved = opt.state_dict()
    for key in ("nonfinite", "foreach"):
        del saved["param_groups"][0][key]
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["nonfinite"] == "raise" and opt.param_groups[0]["foreach"] is None


# -- beside Adam, metrics, schedules -----------------------------------------------------------------------------------
def test_composite_with_adam_trains_and_flip_counter_reads_its_flips():
    torch.manual_seed(0)
    model = nn.Sequential(BinaryLinear(6, 8, input_quantizer=None), nn.BatchNorm1d(8), BinaryLinear(8, 3))
    binary_params, other = split_binary_params(model)
    flipper = CEMA(binary_params, gamma=0.5, alpha=0.5)
    opt = CompositeOptimizer(flipper, torch.optim.Adam(other, lr=0.01), model=model)
    counter = FlipCounter(model, opt)
    assert all(counter._bop_owned.values())  # the counts come from CEMA's state, not from a second pass
    gen = torch.Generator().manual_seed(0)
    total = 0
    for _ in range(5):
        before = [p.detach().clone() for p in binary_params]
        x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        flips = counter.after_step()
        changed = [int((b != p).sum()) for b, p in zip(before, binary_params)]
        assert [int(flips[name]) for name in flips] == changed
        total += sum(changed)
    assert total > 0
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.01]
    assert all(((p == 1) | (p == -1)).all() for p in binary_params)


def test_lambda_lr_schedules_alpha_and_leaves_gamma():
    opt = CEMA([torch.nn.Parameter(torch.ones(2))], gamma=0.1, alpha=0.4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1 - e / 4)
    for _ in range(2):
        opt.step()  # no gradient: changes nothing
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.4 * 0.5 and opt.param_groups[0]["gamma"] == 0.1


# -- errors -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,error,regex",
    [
        (dict(gamma=0.0, alpha=0.1), ValueError, r"Invalid gamma value: 0.0 \(expected a number in \(0.0, 1.0\]\)"),
        (dict(gamma=1.5, alpha=0.1), ValueError, r"Invalid gamma value: 1.5"),
        (dict(gamma=0.1, alpha=0.0), ValueError, r"Invalid alpha value: 0.0"),
        (dict(gamma=0.1, alpha=math.nan), ValueError, r"Invalid alpha value: nan"),
        (dict(gamma=0.1, alpha=0.1, nonfinite="mask"), ValueError, r"Invalid nonfinite value: 'mask'"),
    ],
)
def test_invalid_arguments(kwargs, error, regex):
    with pytest.raises(error, match=regex):
        CEMA([torch.nn.Parameter(torch.ones(2))], **kwargs)


def test_group_alpha_alias_and_its_conflict():
    w1, w2 = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = CEMA([{"params": [w1]}, {"params": [w2], "alpha": 0.05}], gamma=0.1, alpha=0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.05]
    with pytest.raises(ValueError, match="`alpha` or `lr`"):
        CEMA([{"params": [w1], "alpha": 0.1, "lr": 0.1}], gamma=0.1, alpha=0.2)


def test_non_binary_weight_is_refused_and_nothing_changes():
    w = torch.nn.Parameter(torch.tensor([1.0, 0.5, -1.0]))
    opt = CEMA([("w", w)], gamma=0.5, alpha=0.5)
    w.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match=r"parameter 'w' holds values other than -1/\+1"):
        opt.step()
    assert w.tolist() == [1.0, 0.5, -1.0] and len(opt.state[w]) == 0


@pytest.mark.parametrize(
    "key,value,regex",
    [
        ("lr", 1.5, r"Invalid alpha value in param group 0 \('lr'\): 1.5"),
        ("gamma", math.nan, r"Invalid gamma value in param group 0 \('gamma'\): nan"),
    ],
)
def test_bad_value_set_after_construction_changes_nothing(key, value, regex):
    w = torch.nn.Parameter(binary(6))
    opt = CEMA([w], gamma=0.5, alpha=0.5)
    w.grad = torch.randn(6)
    opt.step()
    before = (w.detach().clone(), {k: v.clone() for k, v in opt.state[w].items()})
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=regex):
        opt.step()
    assert torch.equal(w.detach(), before[0])
    assert all(torch.equal(opt.state[w][k], v) for k, v in before[1].items())


def test_nonfinite_gradient_raises_or_skips():
    w = torch.nn.Parameter(binary(4))
    start = w.detach().clone()
    w.grad = torch.tensor([1.0, math.inf, 0.0, 0.0])
    with pytest.raises(RuntimeError, match="non-finite gradient"):
        CEMA([w], gamma=0.5, alpha=0.5).step()
    opt = CEMA([w], gamma=0.5, alpha=0.5, nonfinite="skip")
    opt.step()
    assert torch.equal(w.detach(), start) and int(opt.state[w]["nonfinite_steps"]) == 1
    assert not opt.state[w]["inertia"].any()
