"""Tests for torchbop.optim.bop_optimizer: one call routes a model's binary weights to Bop and the rest elsewhere."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchbop
from torchbop.nn import BinaryConv2d, BinaryLinear, ShiftBatchNorm1d, ShiftBatchNorm2d, split_binary_params
from torchbop.optim import Bop, Bop2ndOrder, CompositeOptimizer, bop_optimizer


def bnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        ShiftBatchNorm2d(4),
        BinaryConv2d(4, 4, 3, padding=1, scale="learnable"),
        ShiftBatchNorm2d(4),
        nn.Flatten(),
        BinaryLinear(4 * 6 * 6, 10),
        ShiftBatchNorm1d(10),
    )


def ids(params):
    return [id(p) for p in params]


class TestRouting:
    def test_splits_exactly_as_split_binary_params_and_names_every_parameter(self):
        model = bnn()
        opt = bop_optimizer(model, binary_kwargs=dict(gamma=1e-3, threshold=1e-6), other_kwargs=dict(lr=0.01))
        assert isinstance(opt, CompositeOptimizer)
        bop, adam = opt.optimizers
        assert type(bop) is Bop and type(adam) is torch.optim.Adam
        binary, other = split_binary_params(model)
        assert ids(bop.param_groups[0]["params"]) == ids(binary)
        assert ids(adam.param_groups[0]["params"]) == ids(other)
        assert bop.param_groups[0]["param_names"] == ["2.weight", "5.weight"]
        assert "2.weight_scale" in adam.param_groups[0]["param_names"]
        assert bop.param_groups[0]["lr"] == 1e-3 and bop.param_groups[0]["threshold"] == 1e-6
        assert adam.param_groups[0]["lr"] == 0.01

    def test_any_bop_class_and_any_torch_optimizer(self):
        model = bnn()
        opt = bop_optimizer(
            model, Bop2ndOrder, torch.optim.SGD, binary_kwargs=dict(sigma=0.1), other_kwargs=dict(lr=0.1, momentum=0.9)
        )
        assert type(opt.optimizers[0]) is Bop2ndOrder and opt.optimizers[0].param_groups[0]["sigma"] == 0.1
        assert type(opt.optimizers[1]) is torch.optim.SGD and opt.optimizers[1].param_groups[0]["momentum"] == 0.9

    def test_no_other_optimizer_when_there_is_nothing_else_to_train(self):
        model = nn.Sequential(BinaryLinear(4, 4), BinaryLinear(4, 2))
        opt = bop_optimizer(model)
        assert [type(o) for o in opt.optimizers] == [Bop]
        assert [type(o) for o in bop_optimizer(model, other=None).optimizers] == [Bop]

    def test_frozen_parameters_are_left_out(self):
        model = bnn()
        model[0].requires_grad_(False)
        names = bop_optimizer(model).optimizers[1].param_groups[0]["param_names"]
        assert "0.weight" not in names and "0.bias" not in names and "1.bias" in names

    def test_a_training_step_flips_weights_and_keeps_them_binary(self):
        model = bnn()
        opt = bop_optimizer(model, binary_kwargs=dict(gamma=1.0, threshold=0.0))
        binary, _ = split_binary_params(model)
        before = [w.detach().clone() for w in binary]
        x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 10, (8,))
        F.cross_entropy(model(x), y).backward()
        opt.step()
        assert all(bool(((w == 1) | (w == -1)).all()) for w in binary)
        assert sum(int((w != b).sum()) for w, b in zip(binary, before)) > 0
        opt.zero_grad()
        assert all(w.grad is None for w in binary)

    def test_exported_from_the_package(self):
        assert torchbop.optim.bop_optimizer is bop_optimizer


class TestErrors:
    def test_real_model_says_binarize_it_first(self):
        with pytest.raises(ValueError, match=r"Sequential has no binary layer in mode 'bop'.*torchbop\.binarize"):
            bop_optimizer(nn.Sequential(nn.Linear(3, 3)))

    def test_latent_only_model_says_so(self):
        model = nn.Sequential(BinaryLinear(3, 3, mode="latent"), BinaryLinear(3, 2, mode="latent"))
        with pytest.raises(ValueError, match=r"binary layers \('0', '1'\) are in mode 'latent'"):
            bop_optimizer(model)

    def test_other_none_with_parameters_to_train_names_them(self):
        listed = r"\('0\.weight', '0\.bias', '1\.bias', '2\.weight_scale', '3\.bias', \.\.\.\)"
        with pytest.raises(
            ValueError, match=r"other=None, but Sequential has 6 other trainable parameter\(s\) " + listed
        ):
            bop_optimizer(bnn(), other=None)

    def test_non_binary_bop_weight_is_named(self):
        model = bnn()
        with torch.no_grad():
            model[5].weight[0, 0] = 0.5
        with pytest.raises(ValueError, match=r"parameter '5\.weight' holds values other than -1/\+1"):
            bop_optimizer(model)

    @pytest.mark.parametrize(
        "kwargs, error, regex",
        [
            (dict(model="net"), TypeError, r"model must be an nn\.Module, got str"),
            (dict(binary=torch.optim.Adam), TypeError, r"binary must be the class Bop or Bop2ndOrder"),
            (dict(binary=Bop([nn.Parameter(torch.ones(2))])), TypeError, r"binary must be the class"),
            (dict(other="adam"), TypeError, r"other must be a torch\.optim\.Optimizer class"),
            (dict(other=torch.optim.Adam([nn.Parameter(torch.ones(2))])), TypeError, r"other must be a"),
            (dict(binary_kwargs=[("gamma", 1e-3)]), TypeError, r"binary_kwargs must be a dict"),
            (dict(other_kwargs=0.01), TypeError, r"other_kwargs must be a dict"),
            (dict(binary_kwargs=dict(params=[])), ValueError, r"binary_kwargs must not hold 'params'"),
            (dict(binary_kwargs=dict(gamma=2.0)), ValueError, r"Invalid gamma value: 2\.0"),
            (dict(other_kwargs=dict(lr=-1.0)), ValueError, r"Invalid learning rate"),
        ],
    )
    def test_bad_arguments(self, kwargs, error, regex):
        kwargs = dict(kwargs)
        model = kwargs.pop("model", None) or bnn()
        with pytest.raises(error, match=regex):
            bop_optimizer(model, **kwargs)
