"""Tests for torchbop.nn: the binary layers, shift-only batch norm, and the init / binarize / clip / params helpers."""

import copy
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchbop.nn import (
    INIT_SCHEMES,
    BinaryConv1d,
    BinaryConv2d,
    BinaryLinear,
    ShiftBatchNorm1d,
    ShiftBatchNorm2d,
    binarize_,
    binary_parameters,
    clip_latent_weights_,
    init_binary_weights_,
    named_binary_layers,
    named_binary_parameters,
    split_binary_params,
)
from torchbop.quantizers import ApproxSign, SteSign, sign


def is_binary(t):
    return bool(((t == 1) | (t == -1)).all())


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _ste_reference_grad(x, w, pads, pad_value):
    """Gradient of sum(conv(pad(ste_sign(x), pad_value), w)) w.r.t. x, by hand: through the pad, masked by |x| <= 1."""
    q = sign(x.detach()).requires_grad_(True)
    F.conv2d(F.pad(q, pads, value=pad_value), w.detach()).sum().backward()
    return q.grad * (x.detach().abs() <= 1)


def small_net(mode="bop"):
    return nn.Sequential(
        BinaryConv2d(2, 4, 3, padding=1, input_quantizer=None, mode=mode),
        ShiftBatchNorm2d(4),
        nn.Sequential(BinaryConv2d(4, 4, 3, padding=1, mode=mode), nn.BatchNorm2d(4)),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 8),  # a float layer
        BinaryLinear(8, 3, bias=True, mode=mode),
    )


class TestBinaryConv2d:
    def test_is_a_conv2d(self):
        conv = BinaryConv2d(3, 4, 3)
        assert isinstance(conv, nn.Conv2d) and conv.is_binary and BinaryConv2d.is_binary
        assert conv.bias is None and conv.mode == "bop"

    def test_bop_mode_weights_are_exactly_binary(self):
        conv = BinaryConv2d(16, 32, 3)
        assert is_binary(conv.weight)
        assert conv.weight_quantizer is None and isinstance(conv.input_quantizer, SteSign)
        frac_pos = (conv.weight == 1).float().mean().item()
        assert 0.45 < frac_pos < 0.55  # sign of a symmetric draw

    def test_latent_mode_weights_are_glorot_uniform(self):
        conv = BinaryConv2d(16, 32, 3, mode="latent")
        bound = math.sqrt(6 / (16 * 9 + 32 * 9))
        assert not is_binary(conv.weight)
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
        assert isinstance(conv.weight_quantizer, SteSign)

    def test_default_quantizers_are_not_shared(self):
        a, b = BinaryConv2d(3, 3, 3, mode="latent"), BinaryConv2d(3, 3, 3, mode="latent")
        assert a.input_quantizer is not b.input_quantizer
        assert a.weight_quantizer is not a.input_quantizer

    @pytest.mark.parametrize("mode", ["bop", "latent"])
    @pytest.mark.parametrize(
        "kwargs",
        [dict(padding=1), dict(padding=0, stride=2), dict(padding=2, dilation=2), dict(padding="same", groups=2)],
    )
    def test_matches_conv2d_on_binarized_operands(self, mode, kwargs):
        conv = BinaryConv2d(4, 6, 3, bias=True, mode=mode, dtype=torch.float64, **kwargs)
        nn.init.normal_(conv.bias)
        x = randn(2, 4, 9, 9)
        expected = F.conv2d(
            sign(x), sign(conv.weight), conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
        )
        torch.testing.assert_close(conv(x), expected)
        assert is_binary(sign(x))  # the comparison is with a truly binary input

    def test_real_input_without_input_quantizer(self):
        conv = BinaryConv2d(3, 5, 3, padding=1, input_quantizer=None, dtype=torch.float64)
        x = randn(2, 3, 8, 8)
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, None, 1, 1))

    def test_latent_mode_without_weight_quantizer_uses_real_weights(self):
        conv = BinaryConv2d(3, 5, 3, mode="latent", weight_quantizer=None, dtype=torch.float64)
        x = randn(2, 3, 8, 8)
        torch.testing.assert_close(conv(x), F.conv2d(sign(x), conv.weight))

    def test_custom_quantizers(self):
        conv = BinaryConv2d(3, 5, 3, mode="latent", input_quantizer=ApproxSign(), weight_quantizer=SteSign(0.5))
        assert isinstance(conv.input_quantizer, ApproxSign) and conv.weight_quantizer.clip_value == 0.5

    def test_gradients_bop_mode(self):
        # Input gradient: the gradient w.r.t. the binary input, masked by the STE (|x| <= 1); weight gradient: the
        # plain convolution gradient w.r.t. the binary weight, which is what Bop accumulates.
        conv = BinaryConv2d(3, 4, 3, padding=1, dtype=torch.float64)
        x = randn(2, 3, 6, 6).requires_grad_(True)
        upstream = randn(2, 4, 6, 6, seed=1)
        conv(x).backward(upstream)

        q = sign(x.detach()).requires_grad_(True)
        w = conv.weight.detach().clone().requires_grad_(True)
        F.conv2d(q, w, padding=1).backward(upstream)
        torch.testing.assert_close(x.grad, q.grad * (x.detach().abs() <= 1))
        torch.testing.assert_close(conv.weight.grad, w.grad)
        assert (x.grad == 0).any() and (x.grad != 0).any()

    def test_gradients_latent_mode(self):
        conv = BinaryConv2d(3, 4, 3, mode="latent", dtype=torch.float64)
        with torch.no_grad():
            conv.weight.mul_(8)  # push some latent weights beyond the clip value
        x = randn(2, 3, 6, 6)
        upstream = randn(2, 4, 4, 4, seed=1)
        conv(x).backward(upstream)

        wb = sign(conv.weight.detach()).requires_grad_(True)
        F.conv2d(sign(x), wb).backward(upstream)
        mask = conv.weight.detach().abs() <= 1
        assert mask.any() and not mask.all()
        torch.testing.assert_close(conv.weight.grad, wb.grad * mask)

    def test_all_ones_border_values_show_pad_value(self):
        # 1 channel, all weights +1, input all positive: an interior output sums 9 ones; a corner sees 4 inputs
        # and 5 padded values.
        for pad_value, corner, edge in [(0.0, 4.0, 6.0), (-1.0, -1.0, 3.0), (1.0, 9.0, 9.0)]:
            conv = BinaryConv2d(1, 1, 3, padding="same", pad_value=pad_value)
            with torch.no_grad():
                conv.weight.fill_(1.0)
            y = conv(torch.full((1, 1, 5, 5), 0.5))[0, 0]
            assert y.shape == (5, 5)
            assert y[2, 2] == 9.0 and y[0, 0] == corner and y[4, 4] == corner and y[0, 2] == edge, pad_value

    @pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's own note for kernel 4
    @pytest.mark.parametrize("pad_value", [-1.0, 1.0, 0.5])
    @pytest.mark.parametrize("kernel_size, padding", [(3, "same"), (5, "same"), (4, "same"), (3, 1), (3, (2, 1))])
    def test_pad_value_matches_explicit_pad(self, pad_value, kernel_size, padding):
        conv = BinaryConv2d(3, 4, kernel_size, padding=padding, pad_value=pad_value, dtype=torch.float64)
        x = randn(2, 3, 7, 7).requires_grad_(True)
        p = conv._reversed_padding_repeated_twice
        expected = F.conv2d(F.pad(sign(x), p, value=pad_value), conv.weight)
        y = conv(x)
        torch.testing.assert_close(y, expected)
        if padding == "same":
            assert y.shape[-2:] == x.shape[-2:]
        y.backward(torch.ones_like(y))
        x_ref = x.detach().clone().requires_grad_(True)
        w_ref = conv.weight.detach().clone().requires_grad_(True)
        F.conv2d(F.pad(sign(x_ref) * 1.0, p, value=pad_value), w_ref).backward(torch.ones_like(y))
        torch.testing.assert_close(w_ref.grad, conv.weight.grad)  # the padded border counts in the weight gradient
        torch.testing.assert_close(x.grad, _ste_reference_grad(x_ref, w_ref, p, pad_value))

    def test_pad_value_unbatched_input(self):
        conv = BinaryConv2d(2, 3, 3, padding=1, pad_value=-1.0, dtype=torch.float64)
        x = randn(2, 5, 5)
        torch.testing.assert_close(conv(x), conv(x.unsqueeze(0)).squeeze(0))

    def test_pad_value_binary_input_keeps_borders_binary(self):
        # With pad_value=-1 every value the kernel sees is +-1, so each output of a 3x3x1 conv is odd.
        conv = BinaryConv2d(1, 1, 3, padding=1, pad_value=-1.0)
        y = conv(torch.randn(1, 1, 6, 6))
        assert bool((y.remainder(2) == 1).all())

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            (dict(mode="float"), ValueError, r"Invalid mode: 'float' \(expected one of \('bop', 'latent'\)\)"),
            (dict(pad_value=-1.0), ValueError, "has no effect: the layer does not pad"),
            (dict(padding=1, pad_value=-1.0, padding_mode="reflect"), ValueError, "needs padding_mode='zeros'"),
            (dict(input_quantizer=sign), TypeError, "input_quantizer must be an nn.Module or None, got function"),
            (dict(weight_quantizer="ste_sign"), TypeError, "weight_quantizer must be an nn.Module or None, got str"),
        ],
    )
    def test_errors(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            BinaryConv2d(3, 4, 3, **kwargs)

    def test_repr(self):
        r = repr(BinaryConv2d(3, 4, 3, padding=1, pad_value=-1.0, mode="latent"))
        assert "mode=latent" in r and "pad_value=-1.0" in r and "(weight_quantizer): SteSign" in r
        assert "pad_value" not in repr(BinaryConv2d(3, 4, 3, padding=1))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision(self, dtype):
        conv = BinaryConv2d(3, 4, 3, padding=1, pad_value=-1.0).to(dtype)
        assert is_binary(conv.weight)
        x = torch.randn(2, 3, 6, 6, dtype=dtype, requires_grad=True)
        y = conv(x)
        y.float().sum().backward()
        assert y.dtype == x.grad.dtype == conv.weight.grad.dtype == dtype
        expected = conv.to(torch.float32)(x.detach().float())
        torch.testing.assert_close(y.float(), expected)  # small integers are exact in fp16 and bf16

    @pytest.mark.parametrize("pad_value", [0.0, -1.0])
    def test_compiles(self, pad_value):
        torch._dynamo.reset()
        conv = BinaryConv2d(3, 4, 3, padding=1, pad_value=pad_value, mode="latent")
        compiled = torch.compile(conv, backend="aot_eager", fullgraph=True)
        x = torch.randn(2, 3, 6, 6, requires_grad=True)
        y = compiled(x)
        torch.testing.assert_close(y, conv(x))
        y.sum().backward()
        assert x.grad is not None and conv.weight.grad is not None

    def test_state_dict_round_trip_and_deepcopy(self):
        a = BinaryConv2d(3, 4, 3, mode="latent")
        b = BinaryConv2d(3, 4, 3, mode="latent")
        b.load_state_dict(a.state_dict())
        assert torch.equal(a.weight, b.weight)
        assert set(a.state_dict()) == {"weight"}
        c = copy.deepcopy(a)
        assert c.mode == "latent" and torch.equal(c.weight, a.weight) and c.weight is not a.weight

    def test_reset_parameters_keeps_mode(self):
        conv = BinaryConv2d(3, 4, 3, bias=True, mode="bop")
        with torch.no_grad():
            conv.weight.fill_(0.3)
            conv.bias.fill_(2.0)
        conv.reset_parameters()
        assert is_binary(conv.weight) and torch.equal(conv.bias, torch.zeros(4))


class TestBinaryConv1d:
    def test_is_a_conv1d_with_binary_weights(self):
        conv = BinaryConv1d(3, 5, 3, padding=1, bias=True)
        assert isinstance(conv, nn.Conv1d) and conv.is_binary and conv.mode == "bop"
        assert is_binary(conv.weight) and conv.weight.shape == (5, 3, 3)

    @pytest.mark.parametrize("mode", ["bop", "latent"])
    @pytest.mark.parametrize("kwargs", [dict(), dict(stride=2, dilation=2, padding=2), dict(groups=3), dict(bias=True)])
    def test_matches_conv1d_on_binarized_operands(self, mode, kwargs):
        conv = BinaryConv1d(3, 6, 3, mode=mode, dtype=torch.float64, **kwargs)
        if conv.bias is not None:
            nn.init.uniform_(conv.bias)
        x = randn(2, 3, 11)
        expected = F.conv1d(
            sign(x), sign(conv.weight), conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
        )
        torch.testing.assert_close(conv(x), expected)

    @pytest.mark.parametrize("pad_value", [-1.0, 1.0])
    @pytest.mark.parametrize("padding", ["same", 2])
    def test_pad_value_matches_explicit_pad(self, pad_value, padding):
        conv = BinaryConv1d(2, 3, 5, padding=padding, pad_value=pad_value, dtype=torch.float64)
        x = randn(4, 2, 9)
        p = conv._reversed_padding_repeated_twice
        torch.testing.assert_close(conv(x), F.conv1d(F.pad(sign(x), p, value=pad_value), conv.weight))
        torch.testing.assert_close(conv(x[0]), F.conv1d(F.pad(sign(x[:1]), p, value=pad_value), conv.weight)[0])

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            (dict(pad_value=1.0), ValueError, "has no effect"),
            (dict(pad_value=1.0, padding=1, padding_mode="reflect"), ValueError, "padding_mode='zeros'"),
            (dict(mode="xnor"), ValueError, "Invalid mode"),
            (dict(scale="mean_abs"), ValueError, "'mean_abs' in mode='bop'"),
        ],
    )
    def test_errors(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            BinaryConv1d(2, 2, 3, **kwargs)


def _old_forward(layer, x):
    """The forward of the binary layers before weight scaling existed, copied from that version: the reference for
    bit-identity of ``scale=None``."""
    xq = layer._quantized_input(x)
    w = layer._quantized_weight()
    if isinstance(layer, nn.Linear):
        return F.linear(xq, w, layer.bias)
    out = layer._conv_forward(xq, w, layer.bias)
    if layer.pad_value != 0.0:
        border = F.pad(xq.new_zeros(xq.shape[-3:]), layer._reversed_padding_repeated_twice, value=layer.pad_value)
        out = out + F.conv2d(border, w, None, layer.stride, 0, layer.dilation, layer.groups)
    return out


SCALED_LAYERS = [
    (lambda **kw: BinaryConv2d(3, 4, 3, padding=1, bias=True, **kw), (2, 3, 6, 6), F.conv2d, (1, -1, 1, 1)),
    (lambda **kw: BinaryConv1d(3, 4, 3, padding=1, bias=True, **kw), (2, 3, 7), F.conv1d, (1, -1, 1)),
    (lambda **kw: BinaryLinear(5, 4, bias=True, **kw), (2, 5), None, (1, -1)),
]


class TestWeightScale:
    @pytest.mark.parametrize("make, shape, conv, view", SCALED_LAYERS)
    @pytest.mark.parametrize(
        "mode, scale", [("latent", "mean_abs"), ("bop", "fixed"), ("bop", "learnable"), ("latent", "learnable")]
    )
    def test_forward_is_the_contract_formula(self, make, shape, conv, view, mode, scale):
        layer = make(mode=mode, scale=scale, dtype=torch.float64)
        with torch.no_grad():
            nn.init.uniform_(layer.bias, -1, 1)
            if mode == "latent":
                layer.weight.copy_(randn(*layer.weight.shape, seed=3))
            if scale != "mean_abs":
                layer.weight_scale.copy_(torch.rand(4, dtype=torch.float64) + 0.5)
        x = randn(*shape, seed=1)
        w = layer.weight.detach()
        alpha = w.abs().mean(dim=tuple(range(1, w.dim()))) if scale == "mean_abs" else layer.weight_scale.detach()
        torch.testing.assert_close(layer.output_scale(), alpha, rtol=0, atol=0)
        if conv is None:
            raw = F.linear(sign(x), sign(w))
        else:
            raw = conv(sign(x), sign(w), None, layer.stride, layer.padding)
        expected = raw * alpha.view(view) + layer.bias.detach().view(view)
        assert torch.equal(layer(x), expected)

    def test_no_scale_forward_is_bit_identical_to_the_old_forward(self):
        layers = [
            BinaryConv2d(3, 4, 3, padding=1, bias=True),
            BinaryConv2d(3, 4, 3, padding=1, pad_value=-1.0),
            BinaryConv2d(3, 4, 3, mode="latent", bias=True),
            BinaryLinear(5, 4, bias=True),
        ]
        for layer in layers:
            assert layer.scale is None and layer.output_scale() is None and not hasattr(layer, "weight_scale")
            if layer.bias is not None:
                nn.init.uniform_(layer.bias.data)
            x = torch.randn(2, 5) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 6, 6)
            assert torch.equal(layer(x), _old_forward(layer, x))

    def test_mean_abs_is_refused_in_bop_mode_with_the_alternatives(self):
        for make in (lambda: BinaryConv2d(2, 2, 3, scale="mean_abs"), lambda: BinaryLinear(2, 2, scale="mean_abs")):
            with pytest.raises(ValueError, match=r"'mean_abs' in mode='bop'.*'fixed'.*'learnable'"):
                make()

    @pytest.mark.parametrize(
        "scale, error, match", [("xnor", ValueError, "Invalid scale"), (1.0, TypeError, "scale must be a string")]
    )
    def test_invalid_scale(self, scale, error, match):
        with pytest.raises(error, match=match):
            BinaryLinear(2, 2, scale=scale)

    def test_mean_abs_scale_is_detached(self):
        layer = BinaryLinear(3, 2, mode="latent", scale="mean_abs", weight_quantizer=None)
        assert not layer.output_scale().requires_grad
        layer(torch.randn(4, 3)).sum().backward()
        x = torch.randn(4, 3)
        layer.weight.grad = None
        layer(x).sum().backward()
        # only through W itself (STE-free here), not through alpha: d/dW sum(alpha * sign(x) W^T) = alpha_c sign(x)
        expected = layer.output_scale().view(-1, 1) * sign(x).sum(0).view(1, -1)
        torch.testing.assert_close(layer.weight.grad, expected)

    def test_learnable_scale_gets_a_gradient_and_goes_to_the_other_optimizer(self):
        model = nn.Sequential(
            BinaryConv2d(2, 3, 3, scale="learnable"), nn.Flatten(), BinaryLinear(12, 2, scale="learnable")
        )
        for layer, x in ((model[0], torch.randn(2, 2, 4, 4)), (model[2], torch.randn(2, 12))):
            out = layer(x)
            (out * torch.randn_like(out)).sum().backward()  # d/d alpha_c = sum over c's outputs of g * conv(...)
            assert isinstance(layer.weight_scale, nn.Parameter) and layer.weight_scale.grad is not None
            assert bool(layer.weight_scale.grad.abs().sum() > 0)
        binary, other = split_binary_params(model)
        assert [id(p) for p in binary] == [id(model[0].weight), id(model[2].weight)]
        assert [id(p) for p in other] == [id(model[0].weight_scale), id(model[2].weight_scale)]

    def test_fixed_scale_is_a_buffer_not_trained(self):
        layer = BinaryConv2d(2, 3, 3, scale="fixed")
        assert "weight_scale" in dict(layer.named_buffers()) and "weight_scale" not in dict(layer.named_parameters())
        assert torch.equal(layer.weight_scale, torch.ones(3))
        assert split_binary_params(layer)[1] == []
        layer.weight_scale.fill_(3.0)
        layer.reset_parameters()
        assert torch.equal(layer.weight_scale, torch.ones(3))
        copy_ = BinaryConv2d(2, 3, 3, scale="fixed")
        layer.weight_scale.fill_(2.0)
        copy_.load_state_dict(layer.state_dict())
        assert torch.equal(copy_.weight_scale, torch.full((3,), 2.0))

    def test_repr_shows_scale(self):
        assert "scale=learnable" in repr(BinaryLinear(2, 2, scale="learnable"))
        assert "scale" not in repr(BinaryLinear(2, 2))


class TestBinaryLinear:
    def test_is_a_linear(self):
        fc = BinaryLinear(5, 3)
        assert isinstance(fc, nn.Linear) and fc.is_binary and fc.bias is None and is_binary(fc.weight)

    @pytest.mark.parametrize("mode", ["bop", "latent"])
    def test_matches_linear_on_binarized_operands(self, mode):
        fc = BinaryLinear(7, 3, bias=True, mode=mode, dtype=torch.float64)
        nn.init.normal_(fc.bias)
        x = randn(4, 7)
        torch.testing.assert_close(fc(x), F.linear(sign(x), sign(fc.weight), fc.bias))

    def test_gradients(self):
        fc = BinaryLinear(6, 2, dtype=torch.float64)
        x = randn(3, 6).requires_grad_(True)
        upstream = randn(3, 2, seed=1)
        fc(x).backward(upstream)
        torch.testing.assert_close(x.grad, (upstream @ fc.weight.detach()) * (x.detach().abs() <= 1))
        torch.testing.assert_close(fc.weight.grad, upstream.t() @ sign(x.detach()))

    def test_errors_and_repr(self):
        with pytest.raises(ValueError, match="Invalid mode: 'binary'"):
            BinaryLinear(3, 3, mode="binary")
        with pytest.raises(TypeError, match="got function"):
            BinaryLinear(3, 3, input_quantizer=sign)
        assert "mode=latent" in repr(BinaryLinear(3, 3, mode="latent"))


class TestShiftBatchNorm:
    @pytest.mark.parametrize("cls, shape", [(ShiftBatchNorm1d, (8, 5)), (ShiftBatchNorm2d, (8, 5, 3, 3))])
    def test_shift_only(self, cls, shape):
        bn = cls(5).double()
        assert [name for name, _ in bn.named_parameters()] == ["bias"]
        assert bn.weight is None and bn.eps == 1e-3 and bn.momentum == 0.01
        with torch.no_grad():
            bn.bias.copy_(torch.arange(5.0))
        x = randn(*shape)
        dims = [0] + list(range(2, len(shape)))
        view = (1, 5) + (1,) * (len(shape) - 2)
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        expected = (x - mean.view(view)) / torch.sqrt(var.view(view) + 1e-3) + bn.bias.detach().view(view)
        torch.testing.assert_close(bn(x), expected)
        n = x.numel() // 5
        torch.testing.assert_close(bn.running_mean, 0.01 * mean)
        torch.testing.assert_close(bn.running_var, 0.99 + 0.01 * var * n / (n - 1))

    def test_bias_gets_gradient_and_resets(self):
        bn = ShiftBatchNorm2d(3)
        bn(torch.randn(4, 3, 2, 2)).sum().backward()
        assert bn.bias.grad is not None
        with torch.no_grad():
            bn.bias.fill_(1.0)
        bn.reset_parameters()
        assert torch.equal(bn.bias, torch.zeros(3)) and torch.equal(bn.running_mean, torch.zeros(3))

    def test_custom_hyperparameters_and_state_dict(self):
        bn = ShiftBatchNorm1d(4, eps=1e-5, momentum=0.1)
        assert repr(bn) == "ShiftBatchNorm1d(4, eps=1e-05, momentum=0.1, scale=False)"
        assert set(bn.state_dict()) == {"bias", "running_mean", "running_var", "num_batches_tracked"}


class TestInit:
    @pytest.mark.parametrize("scheme", sorted(INIT_SCHEMES))
    def test_bop_layers_stay_binary(self, scheme):
        model = small_net("bop")
        init_binary_weights_(model, scheme, scale=0.01)
        for _, w in named_binary_parameters(model):
            assert is_binary(w)

    def test_scale_and_generator(self):
        # Theorem 1 needs exactly scaled copies: same generator seed, scale 0.01 gives 0.01 times scale 1.
        a, b = small_net("latent"), small_net("latent")
        init_binary_weights_(a, "glorot_uniform", generator=torch.Generator().manual_seed(3))
        init_binary_weights_(b, "glorot_uniform", scale=0.01, generator=torch.Generator().manual_seed(3))
        for (_, wa), (_, wb) in zip(named_binary_parameters(a), named_binary_parameters(b)):
            torch.testing.assert_close(wb, 0.01 * wa)
            assert torch.equal(sign(wa), sign(wb))

    def test_schemes_have_their_distributions(self):
        layer = BinaryLinear(400, 600, mode="latent")
        g = torch.Generator().manual_seed(0)
        fan_in, fan_out = 400, 600
        init_binary_weights_(layer, "uniform", generator=g)
        w = layer.weight.detach()
        assert w.abs().max() <= 1 and w.abs().max() > 0.99 and abs(w.std() - 1 / math.sqrt(3)) < 0.01
        init_binary_weights_(layer, "glorot_uniform", generator=g)
        assert layer.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out))
        init_binary_weights_(layer, "glorot_normal", generator=g)
        assert abs(layer.weight.std() / math.sqrt(2 / (fan_in + fan_out)) - 1) < 0.02
        init_binary_weights_(layer, "he_normal", generator=g)
        assert abs(layer.weight.std() / math.sqrt(2 / fan_in) - 1) < 0.02

    def test_leaves_other_parameters_alone(self):
        model = small_net("latent")
        float_layer, fc = model[4], model[5]
        before = float_layer.weight.detach().clone()
        with torch.no_grad():
            fc.bias.fill_(0.7)
        init_binary_weights_(model, "uniform")
        assert torch.equal(float_layer.weight, before) and torch.equal(fc.bias, torch.full((3,), 0.7))

    @pytest.mark.parametrize(
        "args, error, match",
        [
            (("orthogonal",), ValueError, r"Invalid scheme: 'orthogonal' \(expected one of"),
            (("uniform", 0.0), ValueError, "Invalid scale: 0.0"),
            (("uniform", -1.0), ValueError, "Invalid scale: -1.0"),
            (("uniform", math.inf), ValueError, "Invalid scale: inf"),
        ],
    )
    def test_errors(self, args, error, match):
        with pytest.raises(error, match=match):
            init_binary_weights_(small_net(), *args)

    def test_binarize(self):
        model = small_net("latent")
        with torch.no_grad():
            model[0].weight.view(-1)[:3] = torch.tensor([0.0, -0.0, -0.2])
        float_before = model[4].weight.detach().clone()
        assert binarize_(model) is model
        for _, w in named_binary_parameters(model):
            assert is_binary(w)
        assert model[0].weight.view(-1)[:3].tolist() == [1.0, 1.0, -1.0]
        assert torch.equal(model[4].weight, float_before)  # the float layer is not binary

    def test_binarize_keeps_bop_weights(self):
        model = small_net("bop")
        before = [w.detach().clone() for _, w in named_binary_parameters(model)]
        binarize_(model)
        assert all(torch.equal(a, w) for a, (_, w) in zip(before, named_binary_parameters(model)))

    def test_clip_latent_weights(self):
        model = nn.Sequential(BinaryLinear(4, 4, mode="latent"), BinaryLinear(4, 4, mode="bop"), nn.Linear(4, 4))
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(3.0)
            model[0].weight[0, 0] = -5.0
            model[0].weight[0, 1] = 0.25
        assert clip_latent_weights_(model) is model
        assert model[0].weight.max() == 1.0 and model[0].weight[0, 0] == -1.0 and model[0].weight[0, 1] == 0.25
        assert (model[1].weight == 3.0).all()  # bop-mode weights are not latent: untouched
        assert (model[2].weight == 3.0).all()
        clip_latent_weights_(model, bound=0.1)
        assert model[0].weight.abs().max().item() == pytest.approx(0.1)
        with pytest.raises(ValueError, match="Invalid bound: 0"):
            clip_latent_weights_(model, bound=0)

    @pytest.mark.parametrize(
        "fn", [init_binary_weights_, binarize_, clip_latent_weights_, split_binary_params, binary_parameters]
    )
    def test_type_errors(self, fn):
        with pytest.raises(TypeError, match=f"{fn.__name__}: expected nn.Module, got list"):
            fn([nn.Linear(2, 2)])

    def test_no_grad_inside(self):
        layer = BinaryLinear(3, 3, mode="latent")
        init_binary_weights_(layer)
        clip_latent_weights_(layer)
        binarize_(layer)
        assert layer.weight.grad_fn is None and layer.weight.requires_grad


class TestParams:
    def test_named_binary_layers(self):
        model = small_net()
        names = [name for name, _ in named_binary_layers(model)]
        assert names == ["0", "2.0", "5"]
        layer = BinaryLinear(2, 2)
        assert list(named_binary_layers(layer)) == [("", layer)]

    def test_named_binary_parameters_names_match_named_parameters(self):
        model = small_net()
        params = dict(model.named_parameters())
        found = list(named_binary_parameters(model))
        assert [n for n, _ in found] == ["0.weight", "2.0.weight", "5.weight"]
        assert all(params[n] is w for n, w in found)
        assert [n for n, _ in named_binary_parameters(BinaryLinear(2, 2))] == ["weight"]
        assert [id(w) for w in binary_parameters(model)] == [id(w) for _, w in found]

    def test_duck_typed_binary_layer(self):
        class MyBinary(nn.Linear):
            is_binary = True
            mode = "bop"

        model = nn.Sequential(MyBinary(2, 2), nn.Linear(2, 2))
        assert [n for n, _ in named_binary_parameters(model)] == ["0.weight"]

    @pytest.mark.parametrize("mode", ["bop", "latent"])
    @pytest.mark.parametrize("modes", [("bop",), ("latent",), ("bop", "latent"), "bop"])
    def test_split_covers_every_trainable_parameter_once(self, mode, modes):
        model = small_net(mode)
        binary, other = split_binary_params(model, modes=modes)
        ids = [id(p) for p in binary + other]
        assert len(ids) == len(set(ids))
        assert set(ids) == {id(p) for p in model.parameters()}
        selected = mode in ((modes,) if isinstance(modes, str) else modes)
        expected_binary = [w for _, w in named_binary_parameters(model)] if selected else []
        assert [id(p) for p in binary] == [id(p) for p in expected_binary]

    def test_split_skips_frozen_and_shared(self):
        model = small_net()
        model[1].bias.requires_grad_(False)
        model.append(model[5])  # the same layer twice: its parameters count once
        binary, other = split_binary_params(model)
        assert len(binary) == 3 and all(p is not model[1].bias for p in other)
        n_trainable = len([p for p in model.parameters() if p.requires_grad])
        assert len(binary) + len(other) == n_trainable

    def test_split_logs_counts(self, caplog):
        with caplog.at_level(logging.INFO, logger="torchbop.nn.params"):
            split_binary_params(nn.Sequential(BinaryLinear(100, 20), ShiftBatchNorm1d(20)))
        assert "1 binary tensors with 2,000 parameters" in caplog.text
        assert "1 other tensors with 20 parameters" in caplog.text

    def test_split_errors(self):
        with pytest.raises(ValueError, match="Invalid mode: 'float'"):
            split_binary_params(small_net(), modes=("bop", "float"))
        with pytest.raises(TypeError, match="named_binary_layers: expected nn.Module, got str"):
            named_binary_layers("model")
        with pytest.raises(TypeError, match="named_binary_parameters: expected nn.Module, got NoneType"):
            named_binary_parameters(None)
