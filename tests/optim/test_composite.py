"""CompositeOptimizer: routing errors, one step / state_dict for all children, schedulers, exact resume."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

from torchbop.nn import BinaryLinear, split_binary_params
from torchbop.optim import Bop, CompositeOptimizer


def small_bnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(BinaryLinear(6, 8, input_quantizer=None), nn.BatchNorm1d(8), BinaryLinear(8, 3),
                         nn.BatchNorm1d(3))


def make_optimizer(model):
    binary, other = split_binary_params(model)
    return CompositeOptimizer(Bop(binary, gamma=0.05, threshold=1e-4), torch.optim.Adam(other, lr=0.01),
                              model=model)


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
        opt = CompositeOptimizer(Bop(binary, gamma=0.05, threshold=1e-4),
                                 torch.optim.Adam([p for p in other if p.requires_grad], lr=0.01), model=model)
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

    def test_resume_from_state_dict_is_exact(self):
        model = small_bnn()
        opt = make_optimizer(model)
        train(model, opt, 6, seed=1)
        saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
        uninterrupted = train(model, opt, 6, seed=2)

        model2 = small_bnn(seed=99)
        model2.load_state_dict(saved[0])
        opt2 = make_optimizer(model2)
        opt2.load_state_dict(saved[1])
        resumed = train(model2, opt2, 6, seed=2)
        assert resumed == uninterrupted
        for (name, p), q in zip(model.named_parameters(), model2.parameters()):
            assert torch.equal(p, q), name
            for key, value in opt.state[p].items():
                assert torch.equal(value, opt2.state[q][key]), (name, key)

    def test_load_state_dict_checks_the_number_of_children(self):
        opt = make_optimizer(small_bnn())
        with pytest.raises(ValueError, match="2 optimizers but the state dict holds 1"):
            opt.load_state_dict({"optimizers": [opt.optimizers[0].state_dict()]})

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


class TestRefusedLoad:
    def test_a_bop_state_of_another_shape_loads_no_child(self):
        model = small_bnn()
        binary, other = split_binary_params(model)
        opt = CompositeOptimizer(torch.optim.Adam(other, lr=0.01), Bop(binary, gamma=0.05), model=model)
        train(model, opt, 2, seed=0)
        saved = copy.deepcopy(opt.state_dict())
        saved["optimizers"][0]["param_groups"][0]["lr"] = 123.0  # Adam's part loads first, if loading begins
        saved["optimizers"][1]["state"][0]["exp_avg"] = torch.zeros(3, 3)
        before = {name: {k: v.clone() for k, v in opt.state[p].items()} for name, p in model.named_parameters()}
        with pytest.raises(ValueError, match=r"state\['exp_avg'\] .* has shape \(3, 3\), but that parameter has "
                                             r"shape \(8, 6\)"):
            opt.load_state_dict(saved)
        assert opt.optimizers[0].param_groups[0]["lr"] == 0.01
        for name, p in model.named_parameters():
            for key, value in before[name].items():
                assert torch.equal(opt.state[p][key], value), (name, key)

    def test_group_sizes_are_checked_before_loading_any_child(self):
        model = small_bnn()
        opt = make_optimizer(model)
        saved = copy.deepcopy(opt.state_dict())
        saved["optimizers"][0]["param_groups"][0]["lr"] = 0.5
        saved["optimizers"][1]["param_groups"][0]["params"].pop()
        with pytest.raises(ValueError, match=r"optimizers\[1\] \(Adam\) holds param groups of \[3\] parameters, but "
                                             r"that optimizer has groups of \[4\]"):
            opt.load_state_dict(saved)
        assert opt.optimizers[0].param_groups[0]["lr"] == 0.05
