"""Bop: the equations on hand-computed cases, Larq's rule at its edges, fast paths == reference, resume, errors."""

from __future__ import annotations

import copy
import importlib
import math

import numpy as np
import pytest
import torch

from torchbop.optim import Bop, ThresholdScheduler, _fused
from torchbop.optim.bop import _fused_bop, _multi_tensor_bop, _single_tensor_bop

bop_module = importlib.import_module("torchbop.optim.bop")  # the attribute torchbop.optim.bop is the function


def binary(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(dtype)


def larq_bop_numpy(w, m, g, gamma, threshold):
    """Larq's Bop._resource_apply_dense, transcribed to NumPy float arithmetic (tf.sign: sign(0)=0; lq.math.sign:
    sign(0)=+1)."""
    m_t = m + gamma * (g - m)
    inner = -np.sign(w * m_t - threshold) * w
    return np.where(inner >= 0, 1.0, -1.0).astype(w.dtype), m_t


class TestEquations:
    def test_hand_computed_two_steps(self):
        w = torch.nn.Parameter(torch.tensor([1.0, 1.0, -1.0, -1.0]))
        opt = Bop([w], gamma=0.5, threshold=0.3)
        w.grad = torch.tensor([0.4, 1.0, 1.0, -1.0])
        opt.step()  # m = [0.2, 0.5, 0.5, -0.5]; w*m = [0.2, 0.5, -0.5, 0.5] -> flips at 1 and 3
        assert torch.equal(opt.state[w]["exp_avg"], torch.tensor([0.2, 0.5, 0.5, -0.5]))
        assert torch.equal(w.data, torch.tensor([1.0, -1.0, -1.0, 1.0]))
        assert int(opt.state[w]["flips"]) == 2
        w.grad = torch.tensor([1.0, 0.0, 0.0, 0.0])
        opt.step()  # m = [0.6, 0.25, 0.25, -0.25]; w*m = [0.6, -0.25, -0.25, -0.25] -> flip at 0 only
        assert torch.equal(opt.state[w]["exp_avg"], torch.tensor([0.6, 0.25, 0.25, -0.25]))
        assert torch.equal(w.data, torch.tensor([-1.0, -1.0, -1.0, 1.0]))
        assert int(opt.state[w]["flips"]) == 1
        assert int(opt.state[w]["step"]) == 2

    def test_m_starts_at_zero_or_first_gradient(self):
        for m_init, expected in [("zero", 0.25), ("grad", 1.0)]:
            w = torch.nn.Parameter(torch.ones(1))
            opt = Bop([w], gamma=0.25, threshold=10.0, m_init=m_init)
            w.grad = torch.ones(1)
            opt.step()
            assert opt.state[w]["exp_avg"].item() == expected

    @pytest.mark.parametrize("nonfinite", ["mask", "skip"])
    def test_m_from_a_first_gradient_with_nonfinite_entries(self, nonfinite):
        """m_init="grad": the non-finite entries of the first gradient start m at 0, not at inf/nan."""
        w = torch.nn.Parameter(torch.ones(4))
        opt = Bop([w], gamma=0.25, threshold=10.0, m_init="grad", nonfinite=nonfinite)
        w.grad = torch.tensor([1.0, float("nan"), float("inf"), -2.0])
        opt.step()
        m = opt.state[w]["exp_avg"]
        assert torch.isfinite(m).all() and m[1] == 0 and m[2] == 0
        w.grad = torch.ones(4)
        opt.step()
        assert torch.isfinite(opt.state[w]["exp_avg"]).all() and torch.isfinite(w).all()

    def test_weights_move_towards_a_target(self):
        target = binary(64, seed=1)
        w = torch.nn.Parameter(binary(64, seed=2))
        opt = Bop([w], gamma=0.1, threshold=1e-3)
        for _ in range(30):
            opt.zero_grad()
            (-(w * target).sum()).backward()
            opt.step()
        assert torch.equal(w.data, target)

    def test_no_flip_with_infinite_threshold(self):
        w = torch.nn.Parameter(binary(100))
        start = w.detach().clone()
        opt = Bop([w], gamma=1.0, threshold=float("inf"))
        w.grad = torch.randn(100)
        opt.step()
        assert torch.equal(w.data, start)


class TestLarqRule:
    @pytest.mark.parametrize("threshold", [0.0, 1e-8, 1e-3])
    def test_matches_larq_flip_for_flip(self, threshold):
        rng = np.random.default_rng(0)
        w_np = np.where(rng.random(500) < 0.5, -1.0, 1.0).astype(np.float32)
        m_np = np.zeros(500, np.float32)
        w = torch.nn.Parameter(torch.from_numpy(w_np.copy()))
        opt = Bop([w], gamma=np.float32(0.05).item(), threshold=threshold)
        total_flips = 0
        for _ in range(40):
            g_np = (rng.standard_normal(500) * 1e-2).astype(np.float32)
            w_np, m_np = larq_bop_numpy(w_np, m_np, g_np, np.float32(0.05), np.float32(threshold))
            w.grad = torch.from_numpy(g_np)
            opt.step()
            total_flips += int(opt.state[w]["flips"])
            np.testing.assert_array_equal(w.detach().numpy(), w_np)
            np.testing.assert_array_equal(opt.state[w]["exp_avg"].numpy(), m_np)
        assert total_flips > 100  # the comparison saw real flipping

    def test_tie_at_exactly_the_threshold(self):
        # gamma = 1 makes m = g exactly, so w * m == tau can be set up exactly
        tau = 2.0**-10
        w0 = torch.tensor([1.0, -1.0, 1.0, -1.0])
        g = torch.tensor([tau, -tau, -tau, tau])  # w*m = [tau, tau, -tau, -tau]: ties in the first two
        expected = {
            "larq": [1.0, 1.0, 1.0, -1.0],  # Larq sets +1 at the tie: -1 flips, +1 stays
            "keep": [1.0, -1.0, 1.0, -1.0],  # strict '>' never flips at the tie
            "flip": [-1.0, 1.0, 1.0, -1.0],  # eq. (6) with |m| >= tau flips at the tie
        }
        for tie_break, want in expected.items():
            w = torch.nn.Parameter(w0.clone())
            opt = Bop([w], gamma=1.0, threshold=tau, tie_break=tie_break)
            w.grad = g.clone()
            opt.step()
            assert w.data.tolist() == want, tie_break
        w_np, _ = larq_bop_numpy(w0.numpy(), np.zeros(4, np.float32), g.numpy(), 1.0, tau)
        assert w_np.tolist() == expected["larq"]

    def test_zero_threshold_and_zero_gradient(self):
        # tau = 0, m = 0: w*m == tau for every weight; Larq turns every -1 into +1
        w = torch.nn.Parameter(torch.tensor([1.0, -1.0, -1.0]))
        opt = Bop([w], gamma=0.5, threshold=0.0)
        w.grad = torch.zeros(3)
        opt.step()
        assert w.data.tolist() == [1.0, 1.0, 1.0]
        assert int(opt.state[w]["flips"]) == 2
        w_np, _ = larq_bop_numpy(
            np.array([1.0, -1.0, -1.0], np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32), 0.5, 0.0
        )
        assert w_np.tolist() == [1.0, 1.0, 1.0]


requires_compiler = pytest.mark.skipif(
    _fused._environment_problem("cpu") is not None, reason="torch.compile cannot build CPU kernels here"
)


@pytest.fixture
def chunked(monkeypatch):
    """Make the eager path chunk even these small tensors, several chunks per tensor (the last one short)."""
    monkeypatch.setattr(bop_module, "EAGER_MIN_ENTRIES", 0)
    monkeypatch.setattr(bop_module, "EAGER_CHUNK", 200)


def _eager(*args, **kwargs):
    return _multi_tensor_bop(*args, **kwargs)


def _fused_explicit(*args, **kwargs):
    return _fused_bop(*args, **kwargs, fused=True)


PATHS = [pytest.param(_eager, id="eager"), pytest.param(_fused_explicit, id="fused", marks=requires_compiler)]


def _run_impl(impl, dtype, tie_break, steps=7, threshold=5e-3, device="cpu"):
    # a zero-size and a one-entry tensor, a non-contiguous one (transposed, with its m laid out alike) and a
    # channels-last one
    shapes = [(16, 3, 3, 3), (0,), (64, 33), (7,), (1,), (300,), (40, 30), (8, 5, 3, 3)]
    gen = torch.Generator().manual_seed(3)
    ws = [binary(*s, seed=i, dtype=dtype) for i, s in enumerate(shapes)]
    ws[6] = ws[6].t().contiguous().t()
    ws[7] = ws[7].contiguous(memory_format=torch.channels_last)
    ws = [w.to(device) for w in ws]
    ms = [torch.zeros_like(w) for w in ws]
    flips = []
    for step in range(steps):
        gs = [(torch.randn(w.shape, generator=gen, dtype=dtype) * 1e-2).to(device) for w in ws]
        if step == 3:  # the 4th step has no gradient for the 3rd tensor: the functional form just skips it
            idx = [0, 1, 3, 4, 5, 6, 7]
        else:
            idx = list(range(len(shapes)))
        out = impl(
            [ws[i] for i in idx],
            [gs[i] for i in idx],
            [ms[i] for i in idx],
            gamma=0.1,
            threshold=threshold,
            tie_break=tie_break,
        )
        flips.append([int(x) for x in out[0]])
    return ws, ms, flips


def _tie_case(dtype, threshold, nonfinite):
    """gamma = 1 makes m = g exactly: entries with w * m == tau (ties), w * m = +-0, NaN/inf m, and ordinary ones."""
    gen = torch.Generator().manual_seed(7)
    n = 1000
    w = binary(n, seed=5, dtype=dtype)
    g = torch.randn(n, generator=gen, dtype=dtype) * 1e-2
    tau = torch.tensor(threshold, dtype=dtype)
    g[::5] = w[::5] * tau  # w * m == tau: a tie for either sign of w
    g[1::5] = -w[1::5] * tau  # w * m == -tau
    g[2::50], g[3::50] = 0.0, -0.0
    if nonfinite:  # in the first 400 entries only: the eager path's later chunks take its fast route
        g[4:400:50], g[5:400:50], g[6:400:50] = math.nan, math.inf, -math.inf
    return w, g, torch.zeros(n, dtype=dtype)


class TestFastPaths:
    @pytest.mark.usefixtures("chunked")
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    @pytest.mark.parametrize("tie_break", ["larq", "keep", "flip"])
    @pytest.mark.parametrize("impl", PATHS)
    def test_bit_identical_to_reference(self, impl, dtype, tie_break):
        ref_w, ref_m, ref_flips = _run_impl(_single_tensor_bop, dtype, tie_break)
        w, m, flips = _run_impl(impl, dtype, tie_break)
        assert flips == ref_flips
        assert sum(map(sum, ref_flips)) > 0
        for a, b in zip(ref_w + ref_m, w + m):
            assert torch.equal(a, b)

    @pytest.mark.usefixtures("chunked")
    @pytest.mark.parametrize("threshold", [0.0, 2.0**-10, 1.0, 2.0, math.inf])
    @pytest.mark.parametrize("tie_break", ["larq", "keep", "flip"])
    @pytest.mark.parametrize("mask_nonfinite", [False, True])
    @pytest.mark.parametrize("impl", PATHS)
    def test_exact_ties_zeros_and_nonfinite_values(self, impl, threshold, tie_break, mask_nonfinite):
        # thresholds the eager path handles with one clamp (0 < tau <= 1) and those it handles in general
        w, g, m = _tie_case(torch.float32, threshold, nonfinite=True)
        ref_w, ref_m = w.clone(), m.clone()
        kwargs = dict(gamma=1.0, threshold=threshold, tie_break=tie_break, mask_nonfinite=mask_nonfinite)
        ref_flips, ref_masked = _single_tensor_bop([ref_w], [g], [ref_m], **kwargs)
        flips, masked = impl([w], [g], [m], **kwargs)
        assert torch.equal(w, ref_w)
        assert torch.equal(m.nan_to_num(), ref_m.nan_to_num()) and torch.equal(m.isnan(), ref_m.isnan())
        assert int(flips[0]) == int(ref_flips[0])
        if mask_nonfinite:
            assert int(masked[0]) == int(ref_masked[0]) >= 24

    @pytest.mark.usefixtures("chunked")
    @pytest.mark.parametrize("impl", PATHS)
    def test_bf16_weights_and_gradients(self, impl):
        shapes = [(30, 20), (500,)]
        ws = [binary(*s, seed=i, dtype=torch.bfloat16) for i, s in enumerate(shapes)]
        gs = [(torch.randn(s) * 1e-2).to(torch.bfloat16) for s in shapes]
        results = []
        for run in (_single_tensor_bop, impl):
            w, m = [x.clone() for x in ws], [torch.zeros(s) for s in shapes]
            flips, _ = run(w, gs, m, gamma=0.3, threshold=1e-3, tie_break="larq")
            results.append((w, m, [int(f) for f in flips]))
        assert results[0][2] == results[1][2] and sum(results[0][2]) > 0
        for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
            assert torch.equal(a, b)

    def test_optimizer_flags_select_the_paths(self, monkeypatch):
        calls = []
        for name in ("_single_tensor_bop", "_multi_tensor_bop", "_fused_bop"):
            original = getattr(bop_module, name)
            monkeypatch.setattr(bop_module, name, lambda *a, _n=name, _f=original, **k: calls.append(_n) or _f(*a, **k))
        monkeypatch.setattr(_fused, "choose", lambda *a, fused, foreach: fused is not False and foreach is None)
        expected = {
            "foreach=False": "_single_tensor_bop",
            "foreach=True": "_multi_tensor_bop",
            "fused=False": "_multi_tensor_bop",
            "fused=True": "_fused_bop",
            "default": "_fused_bop",
        }
        results = []
        for label, flags in [
            ("foreach=False", dict(foreach=False)),
            ("foreach=True", dict(foreach=True)),
            ("fused=False", dict(fused=False)),
            ("fused=True", dict(fused=True)),
            ("default", {}),
        ]:
            w = torch.nn.Parameter(binary(50, seed=5))
            opt = Bop([w], gamma=0.2, threshold=1e-3, **flags)
            gen = torch.Generator().manual_seed(0)
            for _ in range(5):
                w.grad = torch.randn(50, generator=gen) * 1e-2
                calls.clear()
                opt.step()
                assert calls[0] == expected[label], label
            results.append((w.detach().clone(), opt.state[w]["exp_avg"].clone()))
        for w, m in results[1:]:
            assert torch.equal(w, results[0][0]) and torch.equal(m, results[0][1])

    @requires_compiler
    def test_fused_step_bumps_the_version_counters(self):
        # the kernel writes through aliases; autograd must still see that w (and m) changed in place
        w = torch.nn.Parameter(binary(100))
        opt = Bop([w], gamma=0.5, threshold=0.0, fused=True)
        w.grad = torch.ones(100)
        opt.step()
        before = (w._version, opt.state[w]["exp_avg"]._version)
        opt.step()
        assert w._version > before[0] and opt.state[w]["exp_avg"]._version > before[1]

    @pytest.mark.gpu
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_cuda_paths_bit_identical_to_reference(self, dtype):
        ref_w, ref_m, ref_flips = _run_impl(_single_tensor_bop, dtype, "larq", device="cuda")
        for impl in (_eager, _fused_explicit):
            w, m, flips = _run_impl(impl, dtype, "larq", device="cuda")
            assert flips == ref_flips
            for a, b in zip(ref_w + ref_m, w + m):
                assert torch.equal(a, b)


def _train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 6, generator=gen)
        y = torch.randint(0, 3, (8,), generator=gen)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


class TestStateDict:
    def test_resume_mid_training_gives_the_same_trajectory(self):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3, bias=False)
        with torch.no_grad():
            model.weight.copy_(binary(3, 6))
        opt = Bop(model.parameters(), gamma=0.05, threshold=1e-4)
        _train(model, opt, 5, seed=1)
        saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
        uninterrupted = _train(model, opt, 5, seed=2)

        resumed_model = torch.nn.Linear(6, 3, bias=False)
        resumed_model.load_state_dict(saved_model)
        resumed_opt = Bop(resumed_model.parameters(), gamma=0.5, threshold=0.5)  # overwritten by the state dict
        resumed_opt.load_state_dict(saved_opt)
        resumed = _train(resumed_model, resumed_opt, 5, seed=2)
        assert resumed == uninterrupted
        assert torch.equal(resumed_model.weight, model.weight)
        p, q = resumed_model.weight, model.weight
        assert torch.equal(resumed_opt.state[p]["exp_avg"], opt.state[q]["exp_avg"])
        assert resumed_opt.param_groups[0]["lr"] == 0.05


class TestSchedules:
    def test_step_lr_decays_gamma_every_100_epochs(self):
        w = torch.nn.Parameter(torch.ones(3))
        opt = Bop([w], gamma=1e-4)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.1)
        seen = {}
        for epoch in range(250):
            seen[epoch] = opt.param_groups[0]["lr"]
            w.grad = torch.zeros(3)
            opt.step()
            sched.step()
        assert math.isclose(seen[99], 1e-4) and math.isclose(seen[100], 1e-5) and math.isclose(seen[200], 1e-6)

    def test_threshold_scheduler_and_its_state(self):
        w = torch.nn.Parameter(torch.ones(3))
        opt = Bop([w], threshold=1e-6)
        sched = ThresholdScheduler(opt, lambda epoch: 10.0 ** (epoch // 2))
        for _ in range(4):
            sched.step()
        assert math.isclose(opt.param_groups[0]["threshold"], 1e-4)
        state = sched.state_dict()
        opt2 = Bop([torch.nn.Parameter(torch.ones(3))], threshold=1e-6)
        sched2 = ThresholdScheduler(opt2, lambda epoch: 10.0 ** (epoch // 2))
        sched2.load_state_dict(state)
        sched2.step()
        sched.step()
        assert sched2.get_last_threshold() == sched.get_last_threshold()

    def test_gamma_group_key_alias(self):
        w = torch.nn.Parameter(torch.ones(2))
        opt = Bop([{"params": [w], "gamma": 0.25}])
        assert opt.param_groups[0]["lr"] == 0.25
        with pytest.raises(ValueError, match="not both"):
            Bop([{"params": [w], "gamma": 0.25, "lr": 0.1}])


BAD_ARGS = [
    (dict(gamma=0.0), ValueError, r"Invalid gamma value: 0.0"),
    (dict(gamma=1.5), ValueError, r"Invalid gamma value: 1.5"),
    (dict(gamma=-1e-4), ValueError, r"Invalid gamma value"),
    (dict(gamma=float("nan")), ValueError, r"Invalid gamma value: nan"),
    (dict(threshold=-1e-8), ValueError, r"Invalid threshold value"),
    (dict(threshold=float("nan")), ValueError, r"Invalid threshold value: nan"),
    (dict(tie_break="random"), ValueError, r"Invalid tie_break value"),
    (dict(m_init="ones"), ValueError, r"Invalid m_init value"),
    (dict(nonfinite="ignore"), ValueError, r"Invalid nonfinite value"),
    (dict(foreach=True, fused=True), RuntimeError, r"cannot be `True` together"),
]


class TestErrors:
    @pytest.mark.parametrize("kwargs,error,regex", BAD_ARGS)
    def test_invalid_arguments(self, kwargs, error, regex):
        with pytest.raises(error, match=regex):
            Bop([torch.nn.Parameter(torch.ones(2))], **kwargs)

    def test_non_binary_weight_is_named_and_nothing_changes(self):
        # overwritten after construction (e.g. by load_state_dict): refused at the first step
        layer = torch.nn.Linear(3, 2, bias=False)
        real = layer.weight.detach().clone()
        with torch.no_grad():
            layer.weight.copy_(binary(2, 3))
        opt = Bop(layer.named_parameters())
        with torch.no_grad():
            layer.weight.copy_(real)
        layer.weight.grad = torch.ones(2, 3)
        with pytest.raises(RuntimeError, match=r"'weight'.*binarize_"):
            opt.step()
        assert torch.equal(layer.weight, real)

    def test_non_binary_weight_is_refused_at_construction_naming_it(self):
        layer = torch.nn.Linear(3, 2, bias=False)
        with pytest.raises(ValueError, match=r"parameter 'weight' holds values other than -1/\+1.*torchbop\.binarize"):
            Bop(layer.named_parameters())
        with pytest.raises(ValueError, match=r"parameter 1 of param group 0 \(shape \(2, 3\)\)"):
            Bop([torch.nn.Parameter(torch.ones(4)), layer.weight])
        opt = Bop([("w", torch.nn.Parameter(torch.ones(2)))])
        with pytest.raises(ValueError, match=r"parameter 'extra'"):
            opt.add_param_group({"params": [layer.weight], "param_names": ["extra"]})
        assert len(opt.param_groups) == 1  # the refused group is not kept
        Bop([torch.nn.Parameter(torch.empty(0)), torch.nn.Parameter(torch.empty(3, device="meta"))])  # no values

    @pytest.mark.parametrize("params", [[], iter([]), (p for p in ())])
    def test_empty_parameter_list_is_refused(self, params):
        with pytest.raises(ValueError, match=r"Bop got an empty parameter list.*torchbop\.binarize"):
            Bop(params)

    def test_sparse_gradient(self):
        w = torch.nn.Parameter(torch.ones(4))
        opt = Bop([w])
        w.grad = torch.ones(4).to_sparse()
        with pytest.raises(RuntimeError, match="sparse"):
            opt.step()

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    def test_nonfinite_gradient_raises_before_any_change(self, bad):
        a, b = torch.nn.Parameter(binary(5)), torch.nn.Parameter(binary(5, seed=1))
        opt = Bop([("a", a), ("b", b)], gamma=0.5, threshold=0.0)
        a.grad, b.grad = torch.ones(5), torch.ones(5)
        opt.step()
        snapshot = copy.deepcopy((a.data, b.data, opt.state_dict()))
        a.grad, b.grad = torch.ones(5), torch.tensor([1.0, bad, 1.0, 1.0, 1.0])
        with pytest.raises(RuntimeError, match=r"non-finite gradient.*'b'"):
            opt.step()
        assert torch.equal(a.data, snapshot[0]) and torch.equal(b.data, snapshot[1])
        after = opt.state_dict()["state"]
        for i in (0, 1):
            assert torch.equal(after[i]["exp_avg"], snapshot[2]["state"][i]["exp_avg"])

    def test_nonfinite_gradient_skip_policy(self):
        a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
        opt = Bop([a, b], gamma=0.5, threshold=0.1, nonfinite="skip")
        a.grad, b.grad = torch.ones(3), torch.tensor([1.0, float("nan"), 1.0])
        opt.step()
        assert a.data.tolist() == [-1.0, -1.0, -1.0]  # m = 0.5 > 0.1: flipped
        assert b.data.tolist() == [1.0, 1.0, 1.0]
        assert torch.equal(opt.state[b]["exp_avg"], torch.zeros(3))
        assert int(opt.state[b]["nonfinite_steps"]) == 1 and int(opt.state[b]["flips"]) == 0

    def test_huge_but_finite_gradient_is_not_mistaken_for_inf(self):
        w = torch.nn.Parameter(torch.ones(4))
        opt = Bop([w], gamma=1e-30, threshold=0.0)
        w.grad = torch.full((4,), 3e38)  # the sum overflows; the entries are finite
        opt.step()
        assert torch.isfinite(opt.state[w]["exp_avg"]).all()

    def test_closure_is_evaluated_once(self):
        w = torch.nn.Parameter(torch.ones(2))
        opt = Bop([w])
        calls = []

        def closure():
            calls.append(1)
            opt.zero_grad()
            loss = (w * 2).sum()
            loss.backward()
            return loss

        assert opt.step(closure).item() == 4.0
        assert calls == [1]


class TestDtypes:
    def test_bf16_weights_keep_fp32_state_through_a_state_dict(self):
        w = torch.nn.Parameter(binary(20, dtype=torch.bfloat16))
        opt = Bop([w], gamma=0.1, threshold=1e-3)
        w.grad = torch.randn(20).to(torch.bfloat16)
        opt.step()
        assert opt.state[w]["exp_avg"].dtype == torch.float32
        assert w.dtype == torch.bfloat16 and set(w.detach().float().unique().tolist()) <= {-1.0, 1.0}
        saved = copy.deepcopy(opt.state_dict())
        w2 = torch.nn.Parameter(w.detach().clone())
        opt2 = Bop([w2])
        opt2.load_state_dict(saved)
        assert opt2.state[w2]["exp_avg"].dtype == torch.float32
        assert torch.equal(opt2.state[w2]["exp_avg"], opt.state[w]["exp_avg"])
        assert opt2.state[w2]["flips"].dtype == torch.int64
        assert opt2.state[w2]["nonfinite_steps"].dtype == torch.int64


class TestMaskPolicy:
    @pytest.mark.parametrize("flags", [dict(foreach=False), dict(foreach=True), dict(fused=True)])
    def test_masked_entries_keep_m_and_w_and_are_counted(self, flags):
        w = torch.nn.Parameter(torch.tensor([1.0, 1.0, -1.0, -1.0]))
        opt = Bop([w], gamma=0.5, threshold=0.1, nonfinite="mask", **flags)
        w.grad = torch.tensor([1.0, float("nan"), float("-inf"), -1.0])
        opt.step()
        assert w.data.tolist() == [-1.0, 1.0, -1.0, 1.0]  # entries 0 and 3 flip, the non-finite ones do not
        assert opt.state[w]["exp_avg"].tolist() == [0.5, 0.0, 0.0, -0.5]
        assert int(opt.state[w]["nonfinite_entries"]) == 2
        assert int(opt.state[w]["flips"]) == 2

    def test_paths_agree_with_nonfinite_entries(self):
        results = []
        for flags in [dict(foreach=False), dict(foreach=True), dict(fused=True)]:
            w = torch.nn.Parameter(binary(200, seed=3))
            opt = Bop([w], gamma=0.3, threshold=1e-3, nonfinite="mask", **flags)
            gen = torch.Generator().manual_seed(4)
            for _ in range(5):
                g = torch.randn(200, generator=gen) * 1e-2
                g[torch.randint(0, 200, (10,), generator=gen)] = float("nan")
                w.grad = g
                opt.step()
            results.append(
                (w.detach().clone(), opt.state[w]["exp_avg"].clone(), int(opt.state[w]["nonfinite_entries"]))
            )
        for w, m, n in results[1:]:
            assert torch.equal(w, results[0][0]) and torch.equal(m, results[0][1]) and n == results[0][2]
        assert torch.isfinite(results[0][1]).all()


def state_snapshot(opt, params):
    """Every weight and every state entry (m, step, flips and the non-finite counters), cloned."""
    return [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in params]


def assert_unchanged(opt, params, snapshot):
    for p, (w, state) in zip(params, snapshot):
        assert torch.equal(p.detach(), w)
        assert opt.state[p].keys() == state.keys()
        for key, value in state.items():
            assert opt.state[p][key].dtype == value.dtype and torch.equal(opt.state[p][key], value), key


def two_group_bop(**kwargs):
    """Two groups, one step taken (so that every state entry exists and the next step would change them)."""
    a, b = torch.nn.Parameter(binary(6)), torch.nn.Parameter(binary(6, seed=1))
    opt = Bop([{"params": [a]}, {"params": [b]}], gamma=0.5, threshold=0.0, **kwargs)
    a.grad, b.grad = torch.ones(6), -torch.ones(6)
    opt.step()
    a.grad, b.grad = -torch.ones(6), torch.ones(6)  # the next step would flip every weight
    return opt, [a, b]


BAD_GROUP_VALUES = [
    ("lr", float("nan"), r"Invalid gamma value in param group 1 \('lr'\): nan \(expected a number in \[0, 1\]\)"),
    ("lr", 1.5, r"Invalid gamma value in param group 1 \('lr'\): 1.5 \(expected a number in \[0, 1\]\)"),
    ("lr", -1e-4, r"Invalid gamma value in param group 1 \('lr'\): -0.0001"),
    (
        "threshold",
        -1e-8,
        r"Invalid threshold value in param group 1 \('threshold'\): -1e-08 \(expected a number in "
        r"\[0, inf\]\)",
    ),
    ("threshold", float("nan"), r"Invalid threshold value in param group 1 \('threshold'\): nan"),
    ("lr", "0.1", r"Invalid gamma value in param group 1 \('lr'\): '0.1'"),
    ("lr", None, r"Invalid gamma value in param group 1 \('lr'\): None"),
    ("tie_break", "random", r"Invalid tie_break value in param group 1 \('tie_break'\): 'random'"),
    ("nonfinite", "ignore", r"Invalid nonfinite value in param group 1 \('nonfinite'\): 'ignore'"),
]


class TestStepTimeChecks:
    @pytest.mark.parametrize("key,value,regex", BAD_GROUP_VALUES)
    def test_bad_value_set_after_construction_is_refused_and_changes_nothing(self, key, value, regex):
        opt, params = two_group_bop()
        snapshot = state_snapshot(opt, params)
        opt.param_groups[1][key] = value  # group 0 is valid: it must not step either
        with pytest.raises(ValueError, match=regex) as info:
            opt.step()
        assert "changed nothing" in str(info.value) and "param_groups[1]" in str(info.value)
        assert_unchanged(opt, params, snapshot)
        with pytest.raises(ValueError, match=regex):
            opt.check_step()
        assert_unchanged(opt, params, snapshot)

    def test_message_of_the_issue(self):
        w = torch.nn.Parameter(torch.ones(3))
        opt = Bop([w])
        opt.param_groups[0]["lr"] = float("nan")
        w.grad = torch.ones(3)
        with pytest.raises(ValueError) as info:
            opt.step()
        assert str(info.value).startswith(
            "Invalid gamma value in param group 0 ('lr'): nan (expected a number in [0, 1])"
        )
        assert len(opt.state) == 0  # a refused first step creates no state either

    def test_a_nan_gamma_never_reaches_m(self):
        # before the check, lr = nan turned m into NaN, and every later step kept it so
        w = torch.nn.Parameter(torch.ones(3))
        opt = Bop([w], gamma=0.5)
        w.grad = torch.ones(3)
        opt.step()
        opt.param_groups[0]["lr"] = float("nan")
        with pytest.raises(ValueError):
            opt.step()
        opt.param_groups[0]["lr"] = 0.5
        opt.step()
        assert opt.state[w]["exp_avg"].tolist() == [0.75, 0.75, 0.75]

    @pytest.mark.parametrize("flags", [dict(foreach=False), dict(foreach=True)])
    def test_gamma_decayed_to_zero_by_a_schedule_is_valid(self, flags):
        w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
        opt = Bop([w], gamma=0.5, threshold=0.1, **flags)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: max(0.0, 1.0 - epoch))
        w.grad = torch.tensor([-1.0, -1.0])
        opt.step()  # m = [-0.5, -0.5]; w*m = [-0.5, 0.5]: the second weight flips
        sched.step()
        assert opt.param_groups[0]["lr"] == 0.0
        w.grad = torch.tensor([5.0, 5.0])
        opt.step()  # gamma = 0: m stays, and so do the weights (w*m = [-0.5, -0.5])
        assert opt.state[w]["exp_avg"].tolist() == [-0.5, -0.5]
        assert w.data.tolist() == [1.0, 1.0] and int(opt.state[w]["step"]) == 2

    def test_hyperparameter_check_reads_no_tensor(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        class RecordOps(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.ops = []

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                self.ops.append(func)
                return func(*args, **(kwargs or {}))

        opt, _ = two_group_bop()
        with RecordOps() as recorder:
            opt._check_hyperparameters()
        assert recorder.ops == []

    def test_nonfinite_gradient_in_a_later_group_leaves_earlier_groups_untouched(self):
        opt, params = two_group_bop()
        snapshot = state_snapshot(opt, params)
        params[1].grad = torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0, 1.0])
        with pytest.raises(RuntimeError, match="non-finite gradient"):
            opt.step()
        assert_unchanged(opt, params, snapshot)

    def test_check_step_then_step_reads_the_gradients_once(self, monkeypatch):
        bop_module = importlib.import_module("torchbop.optim.bop")  # the attribute torchbop.optim.bop is the function
        calls = []
        original = bop_module._nonfinite_entries
        monkeypatch.setattr(bop_module, "_nonfinite_entries", lambda *a: calls.append(1) or original(*a))
        opt, params = two_group_bop()
        calls.clear()
        opt.check_step()
        opt.step()
        assert len(calls) == 2  # one read per group: in check_step, not again in step
        opt.step()
        assert len(calls) == 4  # no check_step before: the step reads them itself

    def test_step_checks_again_gradients_changed_after_check_step(self):
        opt, params = two_group_bop()
        snapshot = state_snapshot(opt, params)
        opt.check_step()
        params[1].grad[2] = float("inf")  # in place: the version counter tells the step
        with pytest.raises(RuntimeError, match="non-finite gradient"):
            opt.step()
        params[1].grad[2] = 1.0
        opt.check_step()
        params[0].grad = torch.full((6,), float("nan"))  # a new tensor
        with pytest.raises(RuntimeError, match="non-finite gradient"):
            opt.step()
        assert_unchanged(opt, params, snapshot)


class TestLoadStateDictShapes:
    def test_state_of_another_shape_is_refused_at_load_and_nothing_changes(self):
        src = torch.nn.Linear(3, 4, bias=False)
        with torch.no_grad():
            src.weight.copy_(binary(4, 3))
        saved_opt = Bop(src.named_parameters(), gamma=0.1)
        src.weight.grad = torch.randn(4, 3)
        saved_opt.step()
        saved = copy.deepcopy(saved_opt.state_dict())

        dst = torch.nn.Linear(6, 2, bias=False)  # same number of weights, another shape
        with torch.no_grad():
            dst.weight.copy_(binary(2, 6, seed=1))
        opt = Bop(dst.named_parameters(), gamma=0.3)
        dst.weight.grad = torch.randn(2, 6)
        opt.step()
        snapshot = state_snapshot(opt, [dst.weight])
        with pytest.raises(
            ValueError,
            match=r"state\['exp_avg'\] for parameter 'weight' has shape \(4, 3\), but "
            r"that parameter has shape \(2, 6\).*Nothing was loaded",
        ):
            opt.load_state_dict(saved)
        assert_unchanged(opt, [dst.weight], snapshot)
        assert opt.param_groups[0]["lr"] == 0.3

    def test_same_shapes_still_load(self):
        w = torch.nn.Parameter(binary(5))
        opt = Bop([w], gamma=0.2)
        w.grad = torch.randn(5)
        opt.step()
        opt2 = Bop([torch.nn.Parameter(w.detach().clone())])
        opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
        assert torch.equal(opt2.state[opt2.param_groups[0]["params"][0]]["exp_avg"], opt.state[w]["exp_avg"])
