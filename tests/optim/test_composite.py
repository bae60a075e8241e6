"""CompositeOptimizer: routing errors, one step for all children, schedulers, its state dict in torch's format
(torch.distributed.checkpoint included), the earlier format still loading, and exact resume."""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest
import torch
from torch import nn

from torchbop.nn import BinaryLinear, split_binary_params
from torchbop.optim import CEMA, Bop, Bop2ndOrder, CompositeOptimizer

DATA = Path(__file__).resolve().parent / "data"


def small_bnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        BinaryLinear(6, 8, input_quantizer=None), nn.BatchNorm1d(8), BinaryLinear(8, 3), nn.BatchNorm1d(3)
    )


def make_optimizer(model):
    binary, other = split_binary_params(model)
    return CompositeOptimizer(Bop(binary, gamma=0.05, threshold=1e-4), torch.optim.Adam(other, lr=0.01), model=model)


def train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        losses.append(opt.step(closure).item())
    return losses


class TestRouting:
    def test_param_claimed_twice_is_named(self):
        model = small_bnn()
        with pytest.raises(ValueError, match=r"'0.weight' is claimed by optimizers\[0\] \(Bop\) and optimizers\[1\]"):
            CompositeOptimizer(Bop([model[0].weight]), torch.optim.Adam(model.parameters()), model=model)

    def test_unclaimed_trainable_param_is_named(self):
        model = small_bnn()
        binary, other = split_binary_params(model)
        with pytest.raises(ValueError, match=r"'3.bias' of the model is trainable but no optimizer claims it"):
            CompositeOptimizer(Bop(binary), torch.optim.Adam(other[:-1]), model=model)

    def test_frozen_param_may_stay_unclaimed(self):
        """A frozen parameter needs no optimizer: accepted, left unchanged by training, the others trained."""
        model = small_bnn()
        binary, other = split_binary_params(model)
        model[3].bias.requires_grad_(False)
        opt = CompositeOptimizer(
            Bop(binary, gamma=0.05, threshold=1e-4),
            torch.optim.Adam([p for p in other if p.requires_grad], lr=0.01),
            model=model,
        )
        claimed = {id(p) for group in opt.param_groups for p in group["params"]}
        assert id(model[3].bias) not in claimed and len(claimed) == len(binary) + len(other) - 1
        before = copy.deepcopy(model.state_dict())
        train(model, opt, steps=3, seed=0)
        after = model.state_dict()
        assert torch.equal(after["3.bias"], before["3.bias"])
        assert not torch.equal(after["1.bias"], before["1.bias"])  # Adam moved the trainable shift

    def test_sub_optimizer_without_parameters(self):
        model = small_bnn()
        binary, _ = split_binary_params(model)
        empty = torch.optim.SGD([{"params": []}], lr=0.1)
        with pytest.raises(ValueError, match=r"optimizers\[1\] \(SGD\) has no parameters"):
            CompositeOptimizer(Bop(binary), empty)

    def test_type_errors(self):
        with pytest.raises(TypeError, match=r"optimizers\[0\], got str"):
            CompositeOptimizer("adam")
        with pytest.raises(ValueError, match="at least one"):
            CompositeOptimizer()

    def test_groups_are_the_childrens_dicts(self):
        model = small_bnn()
        opt = make_optimizer(model)
        assert opt.param_groups[0] is opt.optimizers[0].param_groups[0]
        assert [g["lr"] for g in opt.param_groups] == [0.05, 0.01]
        assert isinstance(opt, torch.optim.Optimizer)
        with pytest.raises(RuntimeError, match="children"):
            opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))]})


class TestTraining:
    def test_one_step_steps_every_child_and_closure_runs_once(self):
        model = small_bnn()
        opt = make_optimizer(model)
        w0, b0 = model[0].weight.detach().clone(), model[1].bias.detach().clone()
        calls = []

        def closure():
            calls.append(1)
            opt.zero_grad()
            loss = model(torch.randn(16, 6)).square().mean()
            loss.backward()
            return loss

        opt.step(closure)
        assert calls == [1]
        assert not torch.equal(model[1].bias, b0)  # Adam moved batch norm
        assert "exp_avg" in opt.state[model[0].weight] and "flips" in opt.state[model[0].weight]
        assert set(model[0].weight.unique().tolist()) <= {-1.0, 1.0}
        assert w0.shape == model[0].weight.shape
        opt.zero_grad()
        assert all(p.grad is None for p in model.parameters())

    def test_lambda_lr_with_one_lambda_per_group_decays_gamma_only(self):
        model = small_bnn()
        opt = make_optimizer(model)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda e: 0.1 ** (e // 2), lambda e: 1.0])
        for _ in range(4):
            train(model, opt, 1, seed=0)
            sched.step()
        assert opt.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 0.01)
        assert opt.optimizers[1].param_groups[0]["lr"] == pytest.approx(0.01)
        restored = make_optimizer(small_bnn())
        sched2 = torch.optim.lr_scheduler.LambdaLR(restored, [lambda e: 0.1 ** (e // 2), lambda e: 1.0])
        sched2.load_state_dict(sched.state_dict())
        assert sched2.last_epoch == 4

    def test_state_view_routes_writes_to_the_owner(self):
        model = small_bnn()
        opt = make_optimizer(model)
        train(model, opt, 1, seed=0)
        w = model[0].weight
        opt.state[w] = {k: v.clone() for k, v in opt.state[w].items()}  # what Lightning does to move state
        assert opt.optimizers[0].state[w]["exp_avg"] is opt.state[w]["exp_avg"]
        assert len(opt.state) == len(list(model.parameters()))


def sgd_then_bop():
    """SGD with momentum listed *before* Bop: the order in which a half-applied step used to happen."""
    real = nn.Parameter(torch.tensor([0.5, -0.25]))
    w = nn.Parameter(torch.tensor([1.0, -1.0, 1.0]))
    opt = CompositeOptimizer(torch.optim.SGD([real], lr=0.1, momentum=0.9), Bop([("w", w)], gamma=0.5, threshold=0.0))
    return opt, real, w


class TestRefusedStep:
    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    def test_nonfinite_gradient_steps_no_child(self, bad):
        opt, real, w = sgd_then_bop()
        real.grad, w.grad = torch.ones(2), torch.tensor([1.0, bad, 1.0])
        with pytest.raises(RuntimeError, match=r"non-finite gradient.*'w'"):
            opt.step()
        assert real.tolist() == [0.5, -0.25]  # SGD did not step
        assert len(opt.optimizers[0].state) == 0  # nor create its momentum buffer
        assert w.tolist() == [1.0, -1.0, 1.0] and len(opt.optimizers[1].state) == 0

    def test_bad_hyperparameter_steps_no_child(self):
        opt, real, w = sgd_then_bop()
        real.grad, w.grad = torch.ones(2), torch.ones(3)
        opt.param_groups[1]["lr"] = float("nan")  # the composite's groups are the children's
        with pytest.raises(ValueError, match=r"Invalid gamma value in param group 0 \('lr'\): nan"):
            opt.step()
        assert real.tolist() == [0.5, -0.25]

    def test_closure_runs_once_before_the_checks(self):
        opt, real, w = sgd_then_bop()
        calls = []

        def closure():
            calls.append(1)
            opt.zero_grad()
            real.grad, w.grad = torch.ones(2), torch.full((3,), float("nan"))
            return torch.tensor(1.0)

        with pytest.raises(RuntimeError, match="non-finite gradient"):
            opt.step(closure)
        assert calls == [1] and real.tolist() == [0.5, -0.25]

    def test_the_gradients_are_read_once_per_step(self, monkeypatch):
        bop_module = importlib.import_module("torchbop.optim.bop")
        calls = []
        original = bop_module._nonfinite_entries
        monkeypatch.setattr(bop_module, "_nonfinite_entries", lambda *a: calls.append(1) or original(*a))
        opt, real, w = sgd_then_bop()
        real.grad, w.grad = torch.ones(2), torch.ones(3)
        opt.step()
        assert len(calls) == 1  # in the composite's check, not again in Bop's step
        assert real.tolist() != [0.5, -0.25] and w.tolist() == [-1.0, -1.0, -1.0]  # both stepped (w*m = [.5, -.5, .5])


def legacy_state_dict(opt):
    """The format CompositeOptimizer.state_dict() wrote before issue 22 (still loaded)."""
    return {"optimizers": [child.state_dict() for child in opt.optimizers]}


def assert_same_state(opt_a, opt_b, params_a, params_b):
    for (name, p), (_, q) in zip(params_a, params_b):
        assert torch.equal(p, q), name
        assert opt_a.state[p].keys() == opt_b.state[q].keys(), name
        for key, value in opt_a.state[p].items():
            assert torch.equal(value, opt_b.state[q][key]) and value.dtype == opt_b.state[q][key].dtype, (name, key)


class TestStateDict:
    def test_torch_format_numbered_as_one_optimizer_over_the_groups(self):
        """Exactly what torch's own Optimizer.state_dict writes over the composite's groups and state, plus the
        child index in every group."""
        model = small_bnn()
        opt = make_optimizer(model)
        train(model, opt, 2, seed=0)
        saved = opt.state_dict()
        reference = torch.optim.Optimizer.state_dict(opt)  # one torch optimizer over the concatenated groups
        assert [(g["composite_child"], g["params"]) for g in saved["param_groups"]] == [(0, [0, 1]), (1, [2, 3, 4, 5])]
        assert saved["param_groups"] == [{**g, "composite_child": i} for i, g in enumerate(reference["param_groups"])]
        assert sorted(saved["state"]) == sorted(reference["state"]) == list(range(6))
        for index, values in reference["state"].items():
            assert values.keys() == saved["state"][index].keys()
            assert all(torch.equal(v, saved["state"][index][k]) for k, v in values.items()), index
        assert "flips" in saved["state"][0] and "exp_avg_sq" in saved["state"][2]  # Bop first, then Adam

    @pytest.mark.parametrize("children", ["bop+adam", "bop2nd+adam", "cema+adam"])
    def test_resume_through_a_file_is_bit_exact(self, children, tmp_path):
        """Train, save (torch.save, read back with weights_only=True), continue; a fresh model and optimizer loading
        the file continue with the same losses, weights, state and scheduled rates, bit for bit."""

        def build(seed):
            model = small_bnn(seed)
            binary, other = split_binary_params(model)
            first = {
                "bop+adam": lambda: Bop(binary, gamma=0.05, threshold=1e-4),
                "bop2nd+adam": lambda: Bop2ndOrder(binary, gamma=0.05, sigma=0.1, threshold=1e-4),
                "cema+adam": lambda: CEMA(binary, gamma=0.3, alpha=0.5),
            }[children]()
            opt = CompositeOptimizer(first, torch.optim.Adam(other, lr=0.01), model=model)
            return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

        def run(model, opt, sched, steps, seed):
            losses = train(model, opt, steps, seed)
            sched.step()
            return losses

        model, opt, sched = build(0)
        run(model, opt, sched, 4, seed=1)
        torch.save(
            {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "ckpt.pt"
        )
        uninterrupted = run(model, opt, sched, 4, seed=2)

        model2, opt2, sched2 = build(99)
        saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
        model2.load_state_dict(saved["model"])
        opt2.load_state_dict(saved["opt"])
        sched2.load_state_dict(saved["sched"])
        assert run(model2, opt2, sched2, 4, seed=2) == uninterrupted
        assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
        assert_same_state(opt, opt2, list(model.named_parameters()), list(model2.named_parameters()))

    def test_a_checkpoint_in_the_earlier_format_loads(self):
        """data/composite_state_v1.pt: a model and its {"optimizers": [...]} state dict, written by the code before
        issue 22 (see its "note"). It loads, and training goes on exactly as with each child loading its part."""
        pairs = []
        for load in ("composite", "children"):  # each from its own copy: a loaded state shares the saved tensors
            fixture = torch.load(DATA / "composite_state_v1.pt", weights_only=True)
            assert list(fixture["optimizer"]) == ["optimizers"]
            model = small_bnn(seed=5)
            model.load_state_dict(fixture["model"])
            opt = make_optimizer(model)
            if load == "composite":
                opt.load_state_dict(fixture["optimizer"])
            else:
                for child, state in zip(opt.optimizers, fixture["optimizer"]["optimizers"]):
                    child.load_state_dict(state)
            pairs.append((model, opt))
        (model, opt), (model_ref, opt_ref) = pairs
        assert len(opt.state) == 6 and int(opt.state[model[0].weight]["step"]) == 3
        assert_same_state(opt, opt_ref, list(model.named_parameters()), list(model_ref.named_parameters()))
        assert train(model, opt, 3, seed=4) == train(model_ref, opt_ref, 3, seed=4)
        assert_same_state(opt, opt_ref, list(model.named_parameters()), list(model_ref.named_parameters()))
        assert sorted(opt.state_dict()) == ["param_groups", "state"]  # saved again in torch's format

    @pytest.mark.parametrize("flatten", [False, True], ids=["nested", "flattened"])
    def test_torch_distributed_checkpoint_round_trip(self, flatten):
        """get_optimizer_state_dict / set_optimizer_state_dict (parameter names as keys; flattened, the groups come
        back without the child key) save and restore the composite: training goes on identically."""
        dcp = pytest.importorskip(
            "torch.distributed.checkpoint.state_dict", reason="this torch build has no torch.distributed"
        )
        options = dcp.StateDictOptions(flatten_optimizer_state_dict=flatten)
        model = small_bnn()
        opt = make_optimizer(model)
        train(model, opt, 3, seed=1)
        saved = copy.deepcopy(dcp.get_optimizer_state_dict(model, opt, options=options))
        names = ["0.weight", "2.weight", "1.weight", "1.bias", "3.weight", "3.bias"]
        if not flatten:
            assert [g["params"] for g in saved["param_groups"]] == [names[:2], names[2:]]
            assert saved["state"]["2.weight"]["exp_avg"].shape == (3, 8)
        else:
            assert "state.0.weight.exp_avg" in saved and "param_groups.3.bias.composite_child" in saved
        model2 = small_bnn(seed=99)
        model2.load_state_dict(model.state_dict())
        opt2 = make_optimizer(model2)
        dcp.set_optimizer_state_dict(model2, opt2, saved, options=options)
        assert_same_state(opt, opt2, list(model.named_parameters()), list(model2.named_parameters()))
        assert train(model, opt, 3, seed=2) == train(model2, opt2, 3, seed=2)

    def test_groups_without_the_child_key_load_by_position(self):
        """A state dict rebuilt by a tool that drops unknown group keys and renames parameter ids loads as torch
        would load it: the n-th saved group into the n-th group, ids paired by position."""
        model = small_bnn()
        opt = make_optimizer(model)
        train(model, opt, 2, seed=0)
        saved = copy.deepcopy(opt.state_dict())
        for group in saved["param_groups"]:
            del group["composite_child"]
            group["params"] = [f"p{i}" for i in group["params"]]
        saved["state"] = {f"p{i}": value for i, value in saved["state"].items()}
        fresh = make_optimizer(small_bnn())
        fresh.load_state_dict(saved)
        assert fresh.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
        new, old = fresh.state_dict()["state"], opt.state_dict()["state"]
        assert all(torch.equal(new[i][k], v) for i in old for k, v in old[i].items())


class TestRefusedLoad:
    @pytest.mark.parametrize("form", ["torch", "legacy"])
    def test_a_bop_state_of_another_shape_loads_no_child(self, form):
        model = small_bnn()
        binary, other = split_binary_params(model)
        opt = CompositeOptimizer(torch.optim.Adam(other, lr=0.01), Bop(binary, gamma=0.05), model=model)
        train(model, opt, 2, seed=0)
        if form == "torch":
            saved = copy.deepcopy(opt.state_dict())
            adam_group, bop_state = saved["param_groups"][0], saved["state"][4]  # Adam's 4 parameters come first
        else:
            saved = copy.deepcopy(legacy_state_dict(opt))
            adam_group, bop_state = saved["optimizers"][0]["param_groups"][0], saved["optimizers"][1]["state"][0]
        adam_group["lr"] = 123.0  # Adam's part loads first, if loading begins
        bop_state["exp_avg"] = torch.zeros(3, 3)
        before = {name: {k: v.clone() for k, v in opt.state[p].items()} for name, p in model.named_parameters()}
        with pytest.raises(
            ValueError,
            match=r"state\['exp_avg'\] .* has shape \(3, 3\), but that parameter has "
            r"shape \(8, 6\)",
        ):
            opt.load_state_dict(saved)
        assert opt.optimizers[0].param_groups[0]["lr"] == 0.01
        for name, p in model.named_parameters():
            for key, value in before[name].items():
                assert torch.equal(opt.state[p][key], value), (name, key)

    @pytest.mark.parametrize("form", ["torch", "legacy"])
    def test_group_sizes_are_checked_before_loading_any_child(self, form):
        model = small_bnn()
        opt = make_optimizer(model)
        saved = copy.deepcopy(opt.state_dict() if form == "torch" else legacy_state_dict(opt))
        groups = saved["param_groups"] if form == "torch" else [s["param_groups"][0] for s in saved["optimizers"]]
        groups[0]["lr"] = 0.5
        groups[1]["params"].pop()
        with pytest.raises(
            ValueError,
            match=r"optimizers\[1\] \(Adam\) holds param groups of \[3\] parameters, but "
            r"that optimizer has groups of \[4\]",
        ):
            opt.load_state_dict(saved)
        assert opt.optimizers[0].param_groups[0]["lr"] == 0.05

    def test_another_combination_of_optimizers_is_refused(self):
        model = small_bnn()
        opt = make_optimizer(model)
        binary, _ = split_binary_params(model)
        bop_only = CompositeOptimizer(Bop(binary, gamma=0.05))
        with pytest.raises(
            ValueError,
            match=r"has 1 optimizers but the state dict's param groups belong to "
            r"composite_child \[0, 1\]",
        ):
            bop_only.load_state_dict(opt.state_dict())
        with pytest.raises(ValueError, match="2 optimizers but the state dict holds 1"):
            opt.load_state_dict({"optimizers": [opt.optimizers[0].state_dict()]})
        unkeyed = copy.deepcopy(opt.state_dict())
        for group in unkeyed["param_groups"]:
            del group["composite_child"]
        with pytest.raises(ValueError, match="optimizers have 1 param groups but the state dict holds 2"):
            bop_only.load_state_dict(unkeyed)

    @pytest.mark.parametrize("bad", [{"model": {}}, {"state": {}, "param_groups": "x"}, [1, 2]])
    def test_not_a_state_dict(self, bad):
        opt = make_optimizer(small_bnn())
        with pytest.raises(ValueError, match="Expected an optimizer state dict with 'state' and 'param_groups'"):
            opt.load_state_dict(bad)
