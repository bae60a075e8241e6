"""Tests for torchbop.nn.activations (RSign, RPReLU) and torchbop.nn.blocks (BiRealBlock, ReActNetBlock): the
formulas of contract B, equality with the authors' ReActNet code written out here in functional form, shapes,
shortcuts, argument errors and fx-traceability."""

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from torchbop.nn import BinaryConv2d, BiRealBlock, ReActNetBlock, RPReLU, RSign
from torchbop.quantizers import ApproxSign, SteSign, approx_sign


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def authors_binary_activation(x):
    """liuzechun/ReActNet's BinaryActivation in training mode (sign forward, polynomial surrogate backward), with
    sign(0) = +1 as torchbop's convention (zero inputs do not occur with random data)."""
    poly = torch.where(
        x < -1,
        -torch.ones_like(x),
        torch.where(x < 0, x * x + 2 * x, torch.where(x < 1, -x * x + 2 * x, torch.ones_like(x))),
    )
    return torch.where(x >= 0, 1.0, -1.0).detach() - poly.detach() + poly


def set_random_(module, seed=1):
    """Random values in every float parameter and batch-norm statistic (so that shifts and thresholds matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:  # every per-channel parameter; convolution weights keep their values
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.add_(1.0)
    return module


class TestRSign:
    def test_forward_is_the_quantizer_of_x_minus_threshold_per_channel(self):
        rsign = set_random_(RSign(3))
        x = randn(2, 3, 4, 4)
        out = rsign(x)
        expected = approx_sign(x - rsign.threshold.view(1, -1, 1, 1))
        assert torch.equal(out, expected)
        assert set(out.unique().tolist()) == {-1.0, 1.0}

    def test_two_dimensional_input_uses_view_1_minus_1(self):
        rsign = set_random_(RSign(5))
        x = randn(4, 5)
        assert torch.equal(rsign(x), approx_sign(x - rsign.threshold.view(1, -1)))

    def test_threshold_starts_at_zero_and_the_default_quantizer_is_approx_sign(self):
        rsign = RSign(4)
        assert torch.equal(rsign.threshold.detach(), torch.zeros(4))
        assert isinstance(rsign.quantizer, ApproxSign)
        assert isinstance(RSign(4, quantizer=SteSign()).quantizer, SteSign)

    def test_equals_the_authors_learnable_bias_and_binary_activation_in_value_and_gradient(self):
        # The authors: out = BinaryActivation(x + b); here threshold = -b.
        bias = randn(3, seed=2) * 0.3
        x = (randn(2, 3, 5, 5, seed=3) * 0.8).requires_grad_()
        ref = authors_binary_activation(x + bias.view(1, -1, 1, 1))
        (ref * randn(2, 3, 5, 5, seed=4)).sum().backward()
        ref_grad, x.grad = x.grad.clone(), None
        rsign = RSign(3)
        with torch.no_grad():
            rsign.threshold.copy_(-bias)
        out = rsign(x)
        (out * randn(2, 3, 5, 5, seed=4)).sum().backward()
        assert torch.equal(out, ref)
        torch.testing.assert_close(x.grad, ref_grad)
        assert rsign.threshold.grad is not None and rsign.threshold.grad.abs().sum() > 0


class TestRPReLU:
    def test_forward_is_prelu_of_x_minus_shift_in_plus_shift_out(self):
        act = set_random_(RPReLU(3))
        x = randn(2, 3, 4, 4)
        expected = F.prelu(x - act.shift_in.view(1, -1, 1, 1), act.slope) + act.shift_out.view(1, -1, 1, 1)
        assert torch.equal(act(x), expected)
        x2 = randn(6, 3)
        assert torch.equal(act(x2), F.prelu(x2 - act.shift_in.view(1, -1), act.slope) + act.shift_out.view(1, -1))

    def test_initial_values(self):
        act = RPReLU(4, init_slope=0.1)
        assert torch.equal(act.shift_in.detach(), torch.zeros(4))
        assert torch.equal(act.shift_out.detach(), torch.zeros(4))
        torch.testing.assert_close(act.slope.detach(), torch.full((4,), 0.1))
        assert torch.equal(RPReLU(2).slope.detach(), torch.full((2,), 0.25))

    def test_equals_the_authors_bias_prelu_bias(self):
        # The authors: move13(prelu1(move12(x))) with LearnableBias adding b1, b2; here shift_in = -b1, shift_out = b2.
        b1, b2 = randn(3, seed=5), randn(3, seed=6)
        prelu = nn.PReLU(3)
        x = randn(2, 3, 4, 4, seed=7)
        ref = prelu(x + b1.view(1, -1, 1, 1)) + b2.view(1, -1, 1, 1)
        act = RPReLU(3)
        with torch.no_grad():
            act.shift_in.copy_(-b1)
            act.shift_out.copy_(b2)
        torch.testing.assert_close(act(x), ref)


@pytest.mark.parametrize(
    "build, exception, match",
    [
        (lambda: RSign(0), ValueError, "Invalid num_channels: 0"),
        (lambda: RSign(True), ValueError, "Invalid num_channels: True"),
        (lambda: RPReLU("4"), ValueError, "Invalid num_channels: '4'"),
        (lambda: RSign(4, quantizer=torch.sign), TypeError, "quantizer must be an nn.Module"),
        (lambda: RPReLU(4, init_slope="0.25"), TypeError, "init_slope must be a float"),
        (lambda: ReActNetBlock(4, 12), ValueError, "Invalid out_channels: 12"),
        (lambda: ReActNetBlock(4, 8, stride=3), ValueError, "Invalid stride: 3"),
        (lambda: BiRealBlock(0, 8), ValueError, "Invalid in_channels: 0"),
        (lambda: BiRealBlock(4, 4, mode="adam"), ValueError, "Invalid mode: 'adam'"),
        (lambda: BiRealBlock(4, 4, scale="mean_abs"), ValueError, "Invalid scale: 'mean_abs' in mode='bop'"),
    ],
)
def test_invalid_arguments_raise_a_clear_error(build, exception, match):
    with pytest.raises(exception, match=match):
        build()


class TestBiRealBlock:
    def test_identity_shortcut_around_a_binary_convolution(self):
        block = set_random_(BiRealBlock(4, 4)).eval()
        x = randn(2, 4, 6, 6)
        conv = block.conv
        expected = block.bn(F.conv2d(approx_sign(x), conv.weight, padding=1)) + x
        torch.testing.assert_close(block(x), expected)
        assert isinstance(block.shortcut, nn.Identity)
        assert isinstance(conv, BinaryConv2d) and isinstance(conv.input_quantizer, ApproxSign)

    def test_downsampling_shortcut_is_avgpool_real_1x1_conv_and_batch_norm(self):
        block = BiRealBlock(4, 8, stride=2)
        pool, conv, bn = block.shortcut
        assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 2 and pool.stride == 2
        assert type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.bias is None
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 8
        assert block.conv.stride == (2, 2)
        assert block(randn(2, 4, 8, 8)).shape == (2, 8, 4, 4)
        # channels change without a stride: 1x1 convolution, no pooling
        assert [type(m).__name__ for m in BiRealBlock(4, 8).shortcut] == ["Conv2d", "BatchNorm2d"]

    def test_latent_mode_with_the_mean_abs_scale(self):
        block = BiRealBlock(4, 8, stride=2, mode="latent", scale="mean_abs")
        assert block.conv.mode == "latent" and block.conv.scale == "mean_abs"
        block(randn(2, 4, 8, 8)).sum().backward()
        assert block.conv.weight.grad is not None and block.conv.weight.grad.abs().sum() > 0


def authors_reactnet_block(block, x):
    """liuzechun/ReActNet ``mobilenet/2_step2/reactnet.py`` BasicBlock.forward written with this block's parameters,
    with the doubling 1x1 convolution as the authors' *two* C -> C convolutions and two batch norms."""
    c = block.conv3x3.in_channels

    def bn(t, m, sl=slice(None)):
        return F.batch_norm(t, m.running_mean[sl], m.running_var[sl], m.weight[sl], m.bias[sl], m.training, 0.0, m.eps)

    out1 = authors_binary_activation(x + (-block.conv3x3.input_quantizer.threshold).view(1, -1, 1, 1))
    out1 = bn(F.conv2d(out1, block.conv3x3.weight, stride=block.conv3x3.stride, padding=1), block.bn1)
    if block.conv3x3.stride == (2, 2):
        x = F.avg_pool2d(x, 2, 2)
    out1 = x + out1
    a1 = block.act1
    out1 = F.prelu(out1 + (-a1.shift_in).view(1, -1, 1, 1), a1.slope) + a1.shift_out.view(1, -1, 1, 1)
    out2 = authors_binary_activation(out1 + (-block.conv1x1.input_quantizer.threshold).view(1, -1, 1, 1))
    w = block.conv1x1.weight
    if w.shape[0] == c:
        out2 = bn(F.conv2d(out2, w), block.bn2) + out1
    else:
        out2_1 = bn(F.conv2d(out2, w[:c]), block.bn2, slice(0, c)) + out1
        out2_2 = bn(F.conv2d(out2, w[c:]), block.bn2, slice(c, 2 * c)) + out1
        out2 = torch.cat([out2_1, out2_2], dim=1)
    a2 = block.act2
    return F.prelu(out2 + (-a2.shift_in).view(1, -1, 1, 1), a2.slope) + a2.shift_out.view(1, -1, 1, 1)


class TestReActNetBlock:
    @pytest.mark.parametrize("out_channels, stride", [(4, 1), (8, 1), (8, 2), (4, 2)])
    @pytest.mark.parametrize("training", [False, True])
    def test_equals_the_authors_block(self, out_channels, stride, training):
        block = set_random_(ReActNetBlock(4, out_channels, stride)).train(training)
        x = randn(3, 4, 8, 8, seed=9)
        expected = authors_reactnet_block(block, x)
        torch.testing.assert_close(block(x), expected)

    def test_layers(self):
        block = ReActNetBlock(4, 8, stride=2)
        assert (block.conv3x3.in_channels, block.conv3x3.out_channels, block.conv3x3.stride) == (4, 4, (2, 2))
        assert (block.conv1x1.in_channels, block.conv1x1.out_channels, block.conv1x1.kernel_size) == (4, 8, (1, 1))
        assert isinstance(block.conv3x3.input_quantizer, RSign) and isinstance(block.conv1x1.input_quantizer, RSign)
        assert block.conv3x3.input_quantizer is not block.conv1x1.input_quantizer
        assert (block.act1.num_channels, block.act2.num_channels, block.bn2.num_features) == (4, 8, 8)
        assert isinstance(block.pool, nn.AvgPool2d) and isinstance(ReActNetBlock(4, 4).pool, nn.Identity)

    def test_every_float_parameter_gets_a_gradient(self):
        block = ReActNetBlock(4, 8, stride=2)
        block(randn(2, 4, 8, 8) * 0.5).square().sum().backward()
        missing = [n for n, p in block.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert missing == []


class LeafTracer(fx.Tracer):
    """Treats torchbop's layers (binary convolutions, RSign, RPReLU) as leaves; traces through the blocks."""

    def is_leaf_module(self, m, qualname):
        if type(m).__module__.startswith("torchbop.nn.") and not isinstance(m, (BiRealBlock, ReActNetBlock)):
            return True
        return super().is_leaf_module(m, qualname)


@pytest.mark.parametrize(
    "block",
    [BiRealBlock(4, 8, 2), BiRealBlock(4, 4), ReActNetBlock(4, 8, 2), ReActNetBlock(4, 4)],
    ids=["bireal-down", "bireal", "reactnet-down", "reactnet"],
)
def test_blocks_trace_with_torch_fx_without_data_dependent_control_flow(block):
    graph = LeafTracer().trace(block)
    traced = fx.GraphModule(block, graph)
    x = randn(2, 4, 8, 8)
    block.eval()
    torch.testing.assert_close(traced(x), block(x))
    ops = {n.target for n in graph.nodes if n.op == "call_function"}
    assert ops <= {torch.cat, operator.add}
