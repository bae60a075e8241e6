"""Tests for torchbop.models.quicknet: QuickNetSmall, QuickNet and QuickNetLarge as Larq Zoo defines them
(larq/zoo, ``larq_zoo/sota/quicknet.py``).

The parameter and MAC counts of ``torchbop.summary`` are compared with numbers derived here, by hand-written
arithmetic, from that definition; the totals are then cross-checked against Larq Zoo's published parameter counts.
Full-width models are built and run once on one 224 x 224 image (the summary's forward); every other forward runs
at reduced width.
"""

import functools
import math
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchbop import summary
from torchbop.models import MODELS, QuickNet, QuickNetLarge, QuickNetSmall, create_model
from torchbop.models.quicknet import LATENT_WEIGHT_BOUND, ResidualBlock
from torchbop.nn import BinaryConv2d, named_binary_parameters, split_binary_params
from torchbop.optim import Bop
from torchbop.quantizers import SteSign, sign

# Larq Zoo's section blocks and filters (QuickNetFactory; QuickNetSmallFactory overrides the filters,
# QuickNetLargeFactory the blocks).
SPECS = {
    "quicknet_small": ((4, 4, 4, 4), (32, 64, 256, 512)),
    "quicknet": ((4, 4, 4, 4), (64, 128, 256, 512)),
    "quicknet_large": ((6, 8, 12, 6), (64, 128, 256, 512)),
}
CLASSES = {"quicknet_small": QuickNetSmall, "quicknet": QuickNet, "quicknet_large": QuickNetLarge}
# "Parameters" and "Memory" in the ImageNet Metrics tables of the QuickNetSmall / QuickNet / QuickNetLarge docstrings
# (larq/zoo, larq_zoo/sota/quicknet.py), shown on docs.larq.dev/zoo.
PUBLISHED = {"quicknet_small": (12_655_688, 4.00), "quicknet": (13_234_088, 4.17), "quicknet_large": (23_342_248, 5.40)}


def derive(blocks, filters, stem, num_classes):
    """Binary params, float params (batch-norm statistics included), binary MACs, float MACs per image, and the
    number of affine batch-norm channels, from the published definition."""
    size = 224 if stem == "imagenet" else 32
    mid, f0 = filters[0] // 4, filters[0]
    # Stem: conv 3x3 3->mid (/2), BN (gamma, beta, mean, var), depthwise 3x3 (/2), BN (mean, var only), conv 1x1, BN.
    r1 = math.ceil(size / 2) if stem == "imagenet" else size  # "same" padding: ceil(size / stride)
    r = math.ceil(r1 / 2) if stem == "imagenet" else size
    float_params = 27 * mid + 4 * mid + 9 * mid + 2 * mid + mid * f0 + 4 * f0
    float_macs = r1 * r1 * mid * 27 + r * r * mid * 9 + r * r * f0 * mid
    binary_params = binary_macs = 0
    affine_bn = mid + f0
    for s, (b, f) in enumerate(zip(blocks, filters)):
        if s > 0:  # transition: maxpool 2 / stride 1 (valid), blur depthwise 3x3 /2 ("same"), conv 1x1, BN
            cin = filters[s - 1]
            r = math.ceil((r - 1) / 2)
            float_params += 9 * cin + cin * f + 4 * f
            float_macs += r * r * (9 * cin + cin * f)
            affine_bn += f
        # residual blocks: binary conv 3x3 f->f, BN
        binary_params += b * 9 * f * f
        binary_macs += b * r * r * 9 * f * f
        float_params += b * 4 * f
        affine_bn += b * f
    float_params += filters[-1] * num_classes + num_classes  # dense with bias
    float_macs += filters[-1] * num_classes
    return binary_params, float_params, binary_macs, float_macs, affine_bn


@pytest.fixture(scope="module", params=list(SPECS))
def variant(request):
    return request.param


@functools.lru_cache(maxsize=None)
def full(variant, mode="bop", stem="imagenet"):
    """A full-width model, built once per test module (1 s for QuickNetLarge); tests must not change it."""
    return CLASSES[variant](mode=mode, stem=stem)


class TestCounts:
    @pytest.mark.parametrize("stem", ["imagenet", "cifar10"])
    def test_summary_matches_the_derivation(self, variant, stem):
        model = full(variant, stem=stem)
        size = 224 if stem == "imagenet" else 32
        s = summary(model, (3, size, size))
        expected = derive(*SPECS[variant], stem, 1000 if stem == "imagenet" else 10)[:4]
        assert (s.binary_params, s.float_params, s.binary_macs, s.float_macs) == expected

    def test_derivation_pinned(self):
        # The derivation's ImageNet numbers, written out, so a slip in derive() cannot hide one in the model.
        assert derive(*SPECS["quicknet"], "imagenet", 1000)[:4] == (12_533_760, 709_960, 1_849_688_064, 29_651_712)
        assert derive(*SPECS["quicknet_small"], "imagenet", 1000)[:4] == (
            11_980_800,
            683_544,
            1_156_055_040,
            15_941_120,
        )
        assert derive(*SPECS["quicknet_large"], "imagenet", 1000)[:4] == (
            22_634_496,
            724_808,
            3_699_376_128,
            29_651_712,
        )

    def test_published_totals(self, variant):
        # Larq's summary (larq/larq, larq/models.py, LayerProfile) folds batch norm for inference: where a layer has
        # both, it drops beta (paired with moving_mean) and gamma (paired with moving_variance). Larq Zoo's published
        # counts are that summary's, so they are ours minus 2 per affine batch-norm channel; the statistics-only
        # batch norm of the stem keeps its 2 per channel. The published memory follows: 1 bit per binary weight,
        # 32 bits per other counted weight, in MiB.
        binary, floats, _, _, affine_bn = derive(*SPECS[variant], "imagenet", 1000)
        params, mib = PUBLISHED[variant]
        assert binary + floats - 2 * affine_bn == params
        assert round((binary / 8 + 4 * (params - binary)) / 2**20, 2) == mib
        model = full(variant)
        bn = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.affine)
        assert bn == affine_bn
        total = sum(p.numel() for p in model.parameters())
        total += sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
        assert total - 2 * bn == params


class TestLayout:
    def test_stem_imagenet(self):
        stem = full("quicknet").features.stem
        assert [name for name, _ in stem.named_children()] == [
            "pad",
            "conv",
            "bn",
            "act",
            "dw_pad",
            "dw",
            "dw_bn",
            "pw",
            "pw_bn",
        ]
        assert stem.pad.padding == (0, 1, 0, 1) and stem.dw_pad.padding == (0, 1, 0, 1)
        conv, dw, pw = stem.conv, stem.dw, stem.pw
        assert type(conv) is nn.Conv2d and type(dw) is nn.Conv2d and type(pw) is nn.Conv2d  # real convolutions
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
            3,
            16,
            (3, 3),
            (2, 2),
            (0, 0),
        )
        assert (dw.groups, dw.out_channels, dw.kernel_size, dw.stride) == (16, 16, (3, 3), (2, 2))
        assert (pw.in_channels, pw.out_channels, pw.kernel_size) == (16, 64, (1, 1))
        assert conv.bias is None and dw.bias is None and pw.bias is None
        for bn in (stem.bn, stem.pw_bn):
            assert (bn.eps, bn.momentum, bn.affine) == (1e-3, 0.01, True)  # Keras defaults
        assert (stem.dw_bn.eps, stem.dw_bn.momentum, stem.dw_bn.affine) == (1e-3, 0.01, False)

    def test_stem_cifar10_runs_at_stride_1(self):
        stem = QuickNet(stem="cifar10").features.stem
        assert not any(isinstance(m, nn.ZeroPad2d) for m in stem)
        assert stem.conv.stride == stem.dw.stride == (1, 1) and stem.conv.padding == stem.dw.padding == (1, 1)

    @pytest.mark.parametrize("mode", ["bop", "latent"])
    def test_residual_block(self, mode):
        block = full("quicknet", mode=mode).features.section2.block3
        conv = block.conv
        assert isinstance(block, ResidualBlock) and isinstance(conv, BinaryConv2d)
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
            256,
            256,
            (3, 3),
            (1, 1),
            (1, 1),
        )
        assert conv.pad_value == 1.0 and conv.bias is None and conv.mode == mode
        assert isinstance(conv.input_quantizer, SteSign) and conv.input_quantizer.clip_value == 1.25
        if mode == "latent":
            assert isinstance(conv.weight_quantizer, SteSign) and conv.weight_quantizer.clip_value == 1.25
        else:
            assert conv.weight_quantizer is None and set(conv.weight.detach().unique().tolist()) == {-1.0, 1.0}
        assert isinstance(block.act, nn.ReLU)
        assert (block.bn.eps, block.bn.momentum, block.bn.affine) == (1e-5, 0.1, True)

    def test_residual_block_adds_its_input(self):
        # With the batch norm's scale at 0 and shift at -10, the branch is the constant -10.
        block = ResidualBlock(8)
        with torch.no_grad():
            block.bn.weight.zero_()
            block.bn.bias.fill_(-10.0)
        x = torch.randn(2, 8, 4, 4)
        torch.testing.assert_close(block(x), x - 10.0)

    def test_transitions(self, variant):
        model = full(variant)
        blocks, filters = SPECS[variant]
        sections = list(model.features)[1:]
        assert [len(s) for s in sections] == [blocks[0], blocks[1] + 1, blocks[2] + 1, blocks[3] + 1]
        assert not hasattr(sections[0], "transition")
        for s in (1, 2, 3):
            t = sections[s].transition
            assert [type(m) for m in t] == [nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.Conv2d, nn.BatchNorm2d]
            assert (t.pool.kernel_size, t.pool.stride, t.pool.padding) == (2, 1, 0)
            assert (t.blur.groups, t.blur.kernel_size, t.blur.stride, t.blur.padding) == (
                filters[s - 1],
                (3, 3),
                (2, 2),
                (1, 1),
            )
            blur = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
            assert torch.equal(t.blur.weight, blur.expand(filters[s - 1], 1, 3, 3))
            assert not t.blur.weight.requires_grad  # Larq Zoo: trainable=False
            assert (t.conv.in_channels, t.conv.out_channels, t.conv.kernel_size) == (filters[s - 1], filters[s], (1, 1))
            assert t.blur.bias is None and t.conv.bias is None
            assert (t.bn.eps, t.bn.momentum) == (1e-5, 0.1)

    def test_head(self):
        head = full("quicknet").head
        assert [type(m) for m in head] == [nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
        assert (head.fc.in_features, head.fc.out_features) == (512, 1000) and head.fc.bias is not None
        assert torch.count_nonzero(head.fc.bias) == 0

    def test_binary_layers_are_the_residual_convolutions(self, variant):
        model = full(variant)
        names = [name for name, _ in named_binary_parameters(model)]
        assert len(names) == sum(SPECS[variant][0])
        assert all(".block" in n and n.endswith(".conv.weight") for n in names)
        binary, other = split_binary_params(model)
        assert not any(p is t.blur.weight for t in (s.transition for s in list(model.features)[2:]) for p in other)


class TestForward:
    @pytest.mark.parametrize("cls", [QuickNetSmall, QuickNet, QuickNetLarge])
    def test_imagenet_shapes(self, cls):
        model = cls(width=0.25).eval()  # width 0.125 would leave QuickNetSmall's stem 1 channel (no layout to keep)
        x = torch.randn(1, 3, 224, 224)
        features = model.forward_features(x)
        assert features.shape == (1, 128, 7, 7)
        assert features.is_contiguous(memory_format=torch.channels_last)
        assert model(x).shape == (1, 1000)

    def test_feature_map_sizes(self):
        model = QuickNet(width=0.125).eval()
        sizes = []
        hooks = [s.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for s in model.features]
        model(torch.randn(1, 3, 224, 224))
        for h in hooks:
            h.remove()
        assert sizes == [56, 56, 28, 14, 7]

    @pytest.mark.parametrize("cls", [QuickNetSmall, QuickNet, QuickNetLarge])
    def test_cifar10_shapes(self, cls):
        model = cls(stem="cifar10", width=0.125)
        assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 64, 4, 4)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert cls(stem="cifar10", width=0.125, num_classes=7)(torch.randn(2, 3, 32, 32)).shape == (2, 7)

    def test_memory_format(self):
        assert QuickNet(width=0.125).memory_format == torch.channels_last
        nchw = QuickNet(stem="cifar10", width=0.125, channels_last=False).eval()
        nhwc = QuickNet(stem="cifar10", width=0.125).eval()
        nhwc.load_state_dict(nchw.state_dict())
        x = torch.randn(2, 3, 32, 32)
        assert nchw.memory_format == torch.contiguous_format
        assert nchw.forward_features(x).is_contiguous()
        torch.testing.assert_close(nhwc(x), nchw(x), rtol=1e-4, atol=1e-4)

    def test_fx_traceable(self):
        model = QuickNet(stem="cifar10", width=0.125).eval()
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))

        class BinaryLeaves(torch.fx.Tracer):
            def is_leaf_module(self, m, name):
                return isinstance(m, BinaryConv2d) or super().is_leaf_module(m, name)

        graph = BinaryLeaves().trace(model)
        assert sum(n.target is operator.add for n in graph.nodes) == 16  # one add per residual block


class TestTraining:
    def test_bop_step_keeps_weights_binary(self):
        torch.manual_seed(0)
        model = QuickNet(stem="cifar10", width=0.125)
        binary, other = split_binary_params(model)
        before = [w.detach().clone() for w in binary]
        optimizer = Bop(binary, gamma=1.0, threshold=0.0, foreach=False, fused=False)
        loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in binary)
        optimizer.step()
        flips = sum(int((w != b).sum()) for w, b in zip(binary, before))
        assert flips > 0
        assert all(set(w.detach().unique().tolist()) <= {-1.0, 1.0} for w in binary)

    def test_latent_mode(self):
        torch.manual_seed(0)
        latent = QuickNet(mode="latent", stem="cifar10", width=0.125)
        weights = [w for _, w in named_binary_parameters(latent)]
        assert all(len(w.detach().unique()) > 2 for w in weights)  # real latent weights
        assert max(w.detach().abs().max() for w in weights) < 2 * LATENT_WEIGHT_BOUND  # truncated glorot normal
        x = torch.randn(2, 3, 32, 32)
        latent(x).sum().backward()
        assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in weights)
        # The same network in Bop mode with the signs of the latent weights computes the same function.
        bop = QuickNet(mode="bop", stem="cifar10", width=0.125)
        state = dict(latent.state_dict())
        for name, w in named_binary_parameters(latent):
            state[name] = sign(w.detach())
        bop.load_state_dict(state)
        torch.testing.assert_close(bop.eval()(x), latent.eval()(x))


class TestRegistry:
    def test_names(self):
        assert {name: MODELS[name] for name in CLASSES} == CLASSES

    def test_create_model_passes_contract_kwargs(self):
        model = create_model(
            "quicknet_small", mode="latent", stem="cifar10", num_classes=5, width=0.25, channels_last=False
        )
        assert isinstance(model, QuickNetSmall)
        assert (model.mode, model.stem, model.num_classes, model.width) == ("latent", "cifar10", 5, 0.25)
        assert model.memory_format == torch.contiguous_format
        assert full("quicknet").num_classes == 1000 and full("quicknet", stem="cifar10").num_classes == 10

    def test_repr(self):
        assert repr(QuickNetLarge(width=0.125)).startswith(
            "QuickNetLarge(\n  mode=bop, stem=imagenet, num_classes=1000, width=0.125"
        )

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (dict(mode="float"), "Invalid mode: 'float'"),
            (dict(stem="mnist"), "Invalid stem: 'mnist'"),
            (dict(num_classes=0), "Invalid num_classes: 0"),
            (dict(num_classes=True), "Invalid num_classes: True"),
            (dict(width=0), "Invalid width: 0"),
            (dict(width="1"), "Invalid width: '1'"),
            (dict(channels_last=1), "Invalid channels_last: 1"),
        ],
    )
    def test_errors(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            QuickNet(**kwargs)
