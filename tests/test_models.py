"""Tests for torchbop.models: shapes, parameter and binary-weight counts, variants, width, modes, the float twin,
batch norm hyperparameters, and the registry. Full-width BinaryNets are built (10M weights) but only run at small
width, to keep the suite fast on CPU.
"""

import pytest
import torch
from torch import nn

from torchbop.models import MODELS, BinaryNet, MnistBNN, create_model
from torchbop.nn import (
    BinaryConv2d,
    BinaryLinear,
    ShiftBatchNorm1d,
    ShiftBatchNorm2d,
    named_binary_layers,
    named_binary_parameters,
    split_binary_params,
)
from torchbop.quantizers import SteSign


def n_binary(model):
    return sum(w.numel() for _, w in named_binary_parameters(model))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def norms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def images(n=2, channels=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def binarynet():
    return BinaryNet()


class TestMnistBNN:
    @pytest.mark.parametrize("padding", ["same", "valid"])
    def test_shapes(self, padding):
        model = MnistBNN(padding=padding)
        x = images(3, channels=1, size=28)
        assert model.features(x).shape == (3, 64, 3, 3)
        assert model(x).shape == (3, 10)

    @pytest.mark.parametrize("padding", ["same", "valid"])
    def test_counts(self, padding):
        model = MnistBNN(padding=padding)
        # conv 1*32*9 + 32*64*9 + 64*64*9, dense 576*64 + 64*10; shift-only BN 32+64+64+64+10
        assert n_binary(model) == 288 + 18_432 + 36_864 + 36_864 + 640 == 93_088
        assert n_params(model) == 93_088 + 234
        assert [c.out_channels for c in convs(model)] == [32, 64, 64]
        assert [(fc.in_features, fc.out_features) for fc in linears(model)] == [(576, 64), (64, 10)]

    def test_layout(self):
        same, valid = MnistBNN(padding="same"), MnistBNN(padding="valid")
        assert sum(isinstance(m, nn.MaxPool2d) for m in same.modules()) == 3
        assert sum(isinstance(m, nn.MaxPool2d) for m in valid.modules()) == 2
        assert [c.padding for c in convs(same)] == [(1, 1)] * 3 and [c.padding for c in convs(valid)] == [(0, 0)] * 3
        # pooling before batch norm in every pooled block
        kinds = [type(m).__name__ for m in same.features]
        assert kinds == ["BinaryConv2d", "MaxPool2d", "ShiftBatchNorm2d"] * 3

    def test_quantizers_and_bias(self):
        model = MnistBNN()
        layers = [m for _, m in named_binary_layers(model)]
        assert layers[0].input_quantizer is None  # real pixels in
        assert all(isinstance(m.input_quantizer, SteSign) for m in layers[1:])
        assert all(m.bias is None for m in layers)
        assert all(isinstance(m, (ShiftBatchNorm1d, ShiftBatchNorm2d)) for m in norms(model))
        assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in norms(model))

    @pytest.mark.parametrize("mode", ["bop", "latent"])
    def test_modes(self, mode):
        model = MnistBNN(mode=mode)
        assert all(m.mode == mode for _, m in named_binary_layers(model))
        binary_flags = [bool(((w == 1) | (w == -1)).all()) for _, w in named_binary_parameters(model)]
        assert all(binary_flags) if mode == "bop" else not any(binary_flags)
        out = model(images(4, channels=1, size=28))
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters())

    def test_logits_are_batch_norm_output(self):
        model = MnistBNN()
        model.eval()  # running stats are 0/1: the logits are the last linear output (+ beta) / sqrt(1 + eps)
        x = images(2, channels=1, size=28)
        pre = model.classifier[:-1](model.features(x))
        torch.testing.assert_close(model(x), pre / (1 + 1e-3) ** 0.5)

    @pytest.mark.parametrize(
        "kwargs, match",
        [(dict(mode="float"), "Invalid mode"), (dict(padding="full"), "Invalid padding"), (dict(num_classes=0), "num")],
    )
    def test_errors(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            MnistBNN(**kwargs)


class TestBinaryNet:
    def test_binary_weight_count(self, binarynet):
        assert n_binary(binarynet) == 10_352_000
        binary, other = split_binary_params(binarynet)
        assert sum(p.numel() for p in binary) == 10_352_000
        # BN shifts only: 2*(128 + 256 + 512) + 1024 + 1024 + 10
        assert sum(p.numel() for p in other) == 3850
        assert n_params(binarynet) == 10_355_850

    def test_original_layout(self, binarynet):
        c = convs(binarynet)
        assert [(m.in_channels, m.out_channels) for m in c] == [
            (3, 128),
            (128, 128),
            (128, 256),
            (256, 256),
            (256, 512),
            (512, 512),
        ]
        assert [m.padding for m in c] == [(0, 0)] + [(1, 1)] * 5  # valid first, then 'same'
        assert all(m.kernel_size == (3, 3) and m.stride == (1, 1) and m.bias is None for m in c)
        assert [(m.in_features, m.out_features) for m in linears(binarynet)] == [(4608, 1024), (1024, 1024), (1024, 10)]
        assert all(m.bias is None for m in linears(binarynet))
        kinds = [type(m).__name__ for m in binarynet.features]
        assert kinds == [
            "BinaryConv2d", "ShiftBatchNorm2d",
            "BinaryConv2d", "MaxPool2d", "ShiftBatchNorm2d",
            "BinaryConv2d", "ShiftBatchNorm2d",
            "BinaryConv2d", "MaxPool2d", "ShiftBatchNorm2d",
            "BinaryConv2d", "ShiftBatchNorm2d",
            "BinaryConv2d", "MaxPool2d", "ShiftBatchNorm2d",
        ]  # fmt: skip

    def test_batch_norm_hyperparameters(self, binarynet):
        bns = norms(binarynet)
        assert len(bns) == 9
        for bn in bns:
            assert isinstance(bn, (ShiftBatchNorm1d, ShiftBatchNorm2d))
            assert bn.eps == 1e-3 and bn.momentum == 0.01 and bn.weight is None and bn.bias is not None

    def test_quantizers(self, binarynet):
        layers = [m for _, m in named_binary_layers(binarynet)]
        assert len(layers) == 9
        assert layers[0].input_quantizer is None
        assert all(isinstance(m.input_quantizer, SteSign) and m.weight_quantizer is None for m in layers[1:])

    def test_shapes_small_width(self):
        model = BinaryNet(width=0.125)
        x = images(2)
        assert model.forward_features(x).shape == (2, 64, 3, 3)
        assert model(x).shape == (2, 10)

    def test_reproduction_variant(self):
        model = BinaryNet(width=0.125, variant="reproduction")
        assert model.forward_features(images(2)).shape == (2, 64, 4, 4)
        assert model(images(2)).shape == (2, 10)
        full = BinaryNet(variant="reproduction")
        assert linears(full)[0].in_features == 8192
        assert convs(full)[0].padding == (1, 1)
        assert all(m.bias is not None for m in convs(full) + linears(full))
        bns = norms(full)
        assert all(type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d) for bn in bns)
        assert all(bn.eps == 1e-5 and bn.momentum == 0.1 for bn in bns)
        assert all(bn.affine for bn in bns[:-1]) and not bns[-1].affine
        assert n_binary(full) == 10_352_000 + (8192 - 4608) * 1024

    @pytest.mark.parametrize(
        "width, channels, hidden",
        [(0.25, [32, 32, 64, 64, 128, 128], 256), (0.5, [64, 64, 128, 128, 256, 256], 512), (1e-4, [1] * 6, 1)],
    )
    def test_width(self, width, channels, hidden):
        model = BinaryNet(width=width)
        assert [m.out_channels for m in convs(model)] == channels
        assert [m.out_features for m in linears(model)] == [hidden, hidden, 10]
        assert linears(model)[0].in_features == channels[-1] * 9
        assert model(images(2)).shape == (2, 10)

    def test_num_classes(self):
        assert BinaryNet(width=0.125, num_classes=7)(images(2)).shape == (2, 7)

    def test_float_twin(self):
        binary, twin = BinaryNet(width=0.25), BinaryNet(width=0.25, binarize=False)
        assert list(named_binary_layers(twin)) == []
        assert not any(isinstance(m, (BinaryConv2d, BinaryLinear, SteSign)) for m in twin.modules())
        assert [p.shape for p in twin.parameters()] == [p.shape for p in binary.parameters()]
        assert sum(isinstance(m, nn.Hardtanh) for m in twin.modules()) == 8  # before each layer but the first
        out = twin(images(2))
        assert out.shape == (2, 10)
        out.sum().backward()
        assert all(p.grad is not None for p in twin.parameters())

    @pytest.mark.parametrize("variant", ["original", "reproduction"])
    @pytest.mark.parametrize("mode", ["bop", "latent"])
    def test_modes_train(self, variant, mode):
        model = BinaryNet(width=0.125, variant=variant, mode=mode)
        assert all(m.mode == mode for _, m in named_binary_layers(model))
        assert all(isinstance(m.weight_quantizer, SteSign) == (mode == "latent") for _, m in named_binary_layers(model))
        loss = nn.functional.cross_entropy(model(images(4)), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        binary, other = split_binary_params(model, modes=("bop", "latent"))
        assert len(binary) == 9 and len(binary) + len(other) == len(list(model.parameters()))

    def test_compiled_training_step_matches_eager(self):
        torch._dynamo.reset()
        model = BinaryNet(width=0.125)
        x, y = images(4), torch.tensor([0, 1, 2, 3])
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        nn.functional.cross_entropy(compiled(x), y).backward()
        compiled_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for g, p in zip(compiled_grads, model.parameters()):
            torch.testing.assert_close(g, p.grad)

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (dict(width=0), "Invalid width: 0"),
            (dict(width=-1.0), "Invalid width"),
            (dict(variant="larq"), r"Invalid variant: 'larq' \(expected one of \('original', 'reproduction'\)\)"),
            (dict(mode="float"), "Invalid mode: 'float'"),
            (dict(num_classes=0), "Invalid num_classes: 0"),
        ],
    )
    def test_errors(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            BinaryNet(**kwargs)

    def test_repr(self):
        assert repr(BinaryNet(width=0.125)).startswith(
            "BinaryNet(\n  width=0.125, variant=original, mode=bop, binarize=True"
        )


class TestRegistry:
    def test_models(self):
        assert {name: MODELS[name] for name in ("mnist_bnn", "binarynet")} == {
            "mnist_bnn": MnistBNN,
            "binarynet": BinaryNet,
        }

    def test_create_model_passes_kwargs(self):
        model = create_model("binarynet", width=0.125, mode="latent", variant="reproduction")
        assert isinstance(model, BinaryNet)
        assert (model.width, model.mode, model.variant) == (0.125, "latent", "reproduction")
        assert create_model("mnist_bnn", mode="latent").mode == "latent"

    def test_unknown_name_lists_known_ones(self):
        known = r"\(known: (\w+, )*binarynet, (\w+, )*mnist_bnn(, \w+)*\)"  # sorted, the other models between
        with pytest.raises(ValueError, match=r"Unknown model: 'resnet' " + known):
            create_model("resnet")

    def test_unknown_kwarg_is_an_error(self):
        with pytest.raises(TypeError):
            create_model("mnist_bnn", widht=0.5)


class TestMemoryFormat:
    """channels_last (the default) against NCHW: same outputs, NHWC activations, parameters in torch's layout."""

    FACTORIES = {
        "mnist_same": (lambda **kw: MnistBNN(**kw), 1, 28),
        "mnist_valid_latent": (lambda **kw: MnistBNN(padding="valid", mode="latent", **kw), 1, 28),
        "binarynet": (lambda **kw: BinaryNet(width=0.125, **kw), 3, 32),
        "binarynet_reproduction": (lambda **kw: BinaryNet(width=0.125, variant="reproduction", **kw), 3, 32),
        "binarynet_float": (lambda **kw: BinaryNet(width=0.125, binarize=False, **kw), 3, 32),
    }

    @staticmethod
    def twins(name):
        factory, channels, size = TestMemoryFormat.FACTORIES[name]
        torch.manual_seed(0)
        nhwc = factory()
        nchw = factory(channels_last=False)
        nchw.load_state_dict(nhwc.state_dict())
        return nhwc, nchw, channels, size

    @staticmethod
    def dyadic(n, channels, size, seed=0):
        """Images in [-1, 1] on a grid of 1/8: every sum of the first (+-1-weighted) convolution is exact."""
        g = torch.Generator().manual_seed(seed)
        return torch.randint(-8, 9, (n, channels, size, size), generator=g).float() / 8

    @pytest.mark.parametrize("name", list(FACTORIES))
    def test_same_outputs_and_gradients(self, name):
        nhwc, nchw, channels, size = self.twins(name)
        x = self.dyadic(4, channels, size)
        binary = "float" not in name
        nhwc.eval(), nchw.eval()
        out_a, out_b = nhwc(x), nchw(x)
        if binary:  # +-1 weights and dyadic inputs: every sum is exact, whatever order a kernel adds in
            assert torch.equal(out_a, out_b)
        else:
            torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
        out_a.square().sum().backward()
        out_b.square().sum().backward()
        for (key, a), b in zip(nhwc.named_parameters(), nchw.parameters()):  # float sums: relative to their size
            assert (a.grad - b.grad).abs().max() <= 1e-5 * b.grad.abs().max(), key
        nhwc.train(), nchw.train()  # batch statistics: reductions in another order, equal up to rounding
        y = images(8, channels, size, seed=1)
        torch.testing.assert_close(nhwc(y), nchw(y), rtol=1e-4, atol=1e-4)

    @pytest.mark.parametrize("name", ["mnist_same", "binarynet"])
    def test_activations_are_channels_last_and_parameters_keep_their_layout(self, name):
        from torchbop.models.memory_format import is_channels_last

        nhwc, nchw, channels, size = self.twins(name)
        seen = {}
        for label, model in (("nhwc", nhwc), ("nchw", nchw)):
            model.features.register_forward_hook(lambda m, i, o, label=label: seen.__setitem__(label, o))
            model(images(2, channels, size))  # an NCHW input: the model converts it
        assert is_channels_last(seen["nhwc"]) and not is_channels_last(seen["nchw"])
        assert all(p.is_contiguous() for p in nhwc.parameters())  # state dicts, optimizers: as in NCHW
        assert nhwc.memory_format == torch.channels_last and nchw.memory_format == torch.contiguous_format

    def test_repr_and_validation(self):
        assert "channels_last" not in repr(MnistBNN()).splitlines()[1]
        assert "channels_last=False" in repr(MnistBNN(channels_last=False)).splitlines()[1]
        assert "channels_last=False" in BinaryNet(width=0.125, channels_last=False).extra_repr()
        with pytest.raises(ValueError, match="Invalid channels_last"):
            MnistBNN(channels_last="yes")
        with pytest.raises(ValueError, match="Invalid channels_last"):
            BinaryNet(width=0.125, channels_last=1)


class TestMemoryFormatHelpers:
    def test_one_channel_images_get_channels_last_strides(self):
        from torchbop.models.memory_format import is_channels_last, to_channels_last

        x = torch.randn(2, 1, 4, 4)
        assert x.is_contiguous(memory_format=torch.channels_last) and not is_channels_last(x)  # torch: both
        y = to_channels_last(x)
        assert is_channels_last(y) and torch.equal(x, y) and to_channels_last(y) is y
        z = to_channels_last(torch.randn(2, 3, 4, 4))
        assert z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous()
        flat = torch.randn(2, 5)
        assert to_channels_last(flat) is flat

    def test_to_channels_last_is_differentiable(self):
        from torchbop.models.memory_format import to_channels_last

        x = torch.randn(2, 3, 4, 4, requires_grad=True)
        (to_channels_last(x) * 2).sum().backward()
        assert torch.equal(x.grad, torch.full_like(x, 2.0))

    def test_input_memory_format(self):
        from torchbop.models.memory_format import input_memory_format

        assert input_memory_format(MnistBNN()) == torch.channels_last
        assert input_memory_format(BinaryNet(width=0.125, channels_last=False)) == torch.contiguous_format
        assert input_memory_format(nn.Sequential(nn.Conv2d(1, 2, 3))) == torch.contiguous_format
