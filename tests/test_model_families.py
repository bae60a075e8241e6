"""Tests for the model families bireal_net18, reactnet_a and binary_resnet18: parameter and MAC counts from
``torchbop.summary`` against numbers derived here from the published descriptions (and published totals), forward
shapes at reduced width, fx-traceability, one Bop step, latent mode, channels_last, the registry and errors.

Counting conventions (contract D, Larq's): binary params are binary layers' weights; float params are every other
parameter plus batch norm's running mean and variance (4 numbers per batch-norm channel); MACs per image.
"""

import operator

import pytest
import torch
from torch import fx, nn

from torchbop.deploy.summary import summary
from torchbop.models import MODELS, BinaryResNet18, BiRealNet18, ReActNetA, create_model
from torchbop.models.binary_resnet import BinaryBasicBlock
from torchbop.models.memory_format import input_memory_format
from torchbop.nn import BiRealBlock, ReActNetBlock, named_binary_layers, split_binary_params
from torchbop.optim import Bop, CompositeOptimizer

BN = 4  # numbers per batch-norm channel: weight, bias, running mean, running var


def conv_macs(h_out, c_in, c_out, k):
    return h_out * h_out * c_out * c_in * k * k


# ----------------------------------------------------------------------------------------------------------------------
# Derivations from the published descriptions


def bireal_counts(size):
    """Bi-Real Net 18 (larq/zoo larq_zoo/literature/birealnet.py; arXiv:1808.00278): stem 7x7/2 conv 64 + BN + 3x3/2
    max pool (ImageNet) or 3x3/1 conv 64 + BN (CIFAR-10); 4 stages x 4 binary 3x3 convs, 64/128/256/512; a
    downsampling shortcut (avgpool, real 1x1 conv, BN) at the start of stages 2-4; global pool; dense with bias."""
    classes = 1000 if size == 224 else 10
    h = size // 4 if size == 224 else size  # after the stem
    binary_params = float_params = binary_macs = float_macs = 0
    if size == 224:
        float_params += 3 * 64 * 49 + BN * 64
        float_macs += conv_macs(size // 2, 3, 64, 7)
    else:
        float_params += 3 * 64 * 9 + BN * 64
        float_macs += conv_macs(size, 3, 64, 3)
    c_in = 64
    for stage, c in enumerate([64, 128, 256, 512]):
        if stage > 0:
            h //= 2
            float_params += c_in * c + BN * c  # shortcut 1x1 conv + BN
            float_macs += conv_macs(h, c_in, c, 1)
        for block in range(4):
            cin = c_in if block == 0 else c
            binary_params += cin * c * 9
            float_params += BN * c
            binary_macs += conv_macs(h, cin, c, 3)
        c_in = c
    float_params += 512 * classes + classes
    float_macs += 512 * classes
    return binary_params, float_params, binary_macs, float_macs


#: ReActNet-A (liuzechun/ReActNet mobilenet/2_step2/reactnet.py): stage_out_channel and the stride rule.
REACTNET_CHANNELS = [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024] * 2


def reactnet_counts(size):
    """ReActNet-A: real 3x3 stem 3->32 (stride 2 on ImageNet, 1 on CIFAR-10) + BN; 13 blocks, each a binary 3x3
    C->C conv (RSign C, BN C, RPReLU 3C) and a binary 1x1 C->C' conv (RSign C, BN C', RPReLU 3C'), strided where the
    channels change except into 64; average pool; dense 1024->classes with bias."""
    classes = 1000 if size == 224 else 10
    h = size // 2 if size == 224 else size
    binary_params = binary_macs = 0
    float_params = 3 * 32 * 9 + BN * 32
    float_macs = conv_macs(h, 3, 32, 3)
    for i in range(1, len(REACTNET_CHANNELS)):
        c, c_out = REACTNET_CHANNELS[i - 1], REACTNET_CHANNELS[i]
        if c != c_out and c_out != 64:
            h //= 2
        binary_params += c * c * 9 + c * c_out
        binary_macs += conv_macs(h, c, c, 3) + conv_macs(h, c, c_out, 1)
        float_params += (c + BN * c + 3 * c) + (c + BN * c_out + 3 * c_out)
    float_params += 1024 * classes + classes
    float_macs += 1024 * classes
    return binary_params, float_params, binary_macs, float_macs


def resnet18_counts():
    """The CIFAR ResNet-18 of IR-Net (htqin/IR-Net CIFAR-10/ResNet18/resnet.py): 3x3 stem 64 + BN; stages of two
    BasicBlocks (two binary 3x3 convs + 2 BN), 64/128/256/512 at 32/16/8/4 px, real strided 1x1 conv + BN shortcut
    in stages 2-4; avgpool 4; BatchNorm1d(512); dense 512->10 with bias."""
    binary_params = binary_macs = 0
    float_params = 3 * 64 * 9 + BN * 64
    float_macs = conv_macs(32, 3, 64, 3)
    c_in, h = 64, 32
    for stage, c in enumerate([64, 128, 256, 512]):
        if stage > 0:
            h //= 2
            float_params += c_in * c + BN * c
            float_macs += conv_macs(h, c_in, c, 1)
        for conv in range(4):
            cin = c_in if conv == 0 else c
            binary_params += cin * c * 9
            binary_macs += conv_macs(h, cin, c, 3)
            float_params += BN * c
        c_in = c
    float_params += BN * 512 + 512 * 10 + 10
    float_macs += 512 * 10
    return binary_params, float_params, binary_macs, float_macs


def counts(model, size):
    s = summary(model, (3, size, size))
    return s.binary_params, s.float_params, s.binary_macs, s.float_macs


@pytest.mark.parametrize("stem, size", [("imagenet", 224), ("cifar10", 32)])
class TestCounts:
    def test_bireal_net18(self, stem, size):
        assert counts(BiRealNet18(stem=stem), size) == bireal_counts(size)

    def test_reactnet_a(self, stem, size):
        assert counts(ReActNetA(stem=stem), size) == reactnet_counts(size)

    def test_counts_do_not_depend_on_the_mode(self, stem, size):
        # the mean_abs scale of latent mode has no parameters; the binary MACs stay binary
        assert counts(BiRealNet18(stem=stem, mode="latent"), size) == bireal_counts(size)


def test_binary_resnet18_counts():
    assert counts(BinaryResNet18(), 32) == resnet18_counts()


class TestPublishedTotals:
    def test_bireal_net18_matches_larq_zoo(self):
        b, f, bm, fm = counts(BiRealNet18(), 224)
        # Larq Zoo, larq_zoo/literature/birealnet.py docstring: "Parameters 11 699 112" (with batch-norm statistics);
        # tests/snapshots/model_summaries/BiRealNet_512.txt: 10,985,472 1-bit and 704,040 32-bit trainable
        # parameters (batch norm without its 9,600 running statistics), 1,676,279,808 1-bit and 137,793,536
        # 32-bit MACs.
        assert b + f == 11_699_112
        assert (b, f - 9_600) == (10_985_472, 704_040)
        assert (bm, fm) == (1_676_279_808, 137_793_536)

    def test_reactnet_a_matches_the_paper(self):
        _, _, bm, fm = counts(ReActNetA(), 224)
        # arXiv:2003.03488, ReActNet-A: 4.82e9 BOPs, 0.12e8 FLOPs, 0.87e8 OPs (OPs = BOPs / 64 + FLOPs)
        assert round(bm / 1e9, 2) == 4.82
        assert round(fm / 1e8, 2) == 0.12
        assert round((bm / 64 + fm) / 1e8, 2) == 0.87

    def test_binary_resnet18_matches_the_cifar_resnet18(self):
        model = BinaryResNet18()
        trainable = sum(p.numel() for p in model.parameters())
        # kuangliu/pytorch-cifar ResNet18: 11,173,962 parameters; IR-Net adds BatchNorm1d(512) (weight and bias)
        assert trainable == 11_173_962 + 2 * 512


# ----------------------------------------------------------------------------------------------------------------------
# Structure, forward, tracing, training

SMALL = [
    ("bireal_net18", {"stem": "cifar10", "width": 0.125}, 32),
    ("bireal_net18", {"stem": "imagenet", "width": 0.0625}, 64),
    ("reactnet_a", {"stem": "cifar10", "width": 0.125}, 32),
    ("reactnet_a", {"stem": "imagenet", "width": 0.125}, 64),
    ("binary_resnet18", {"width": 0.125}, 32),
]
IDS = [f"{name}-{kw.get('stem', 'cifar10')}" for name, kw, _ in SMALL]


def images(n, size, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name, kwargs, size", SMALL, ids=IDS)
@pytest.mark.parametrize("mode", ["bop", "latent"])
def test_forward_shapes_at_reduced_width(name, kwargs, size, mode):
    model = create_model(name, mode=mode, **kwargs)
    classes = 1000 if kwargs.get("stem") == "imagenet" else 10
    assert model(images(2, size)).shape == (2, classes)
    assert create_model(name, num_classes=7, **kwargs)(images(2, size)).shape == (2, 7)
    assert all(layer.mode == mode for _, layer in named_binary_layers(model))


def test_imagenet_forward_at_full_width_batch_1():
    for model in (BiRealNet18(), ReActNetA()):
        assert model.eval()(images(1, 224)).shape == (1, 1000)


class LeafTracer(fx.Tracer):
    """Treats torchbop's layers (binary layers, RSign, RPReLU) as leaves; traces through blocks and models."""

    def is_leaf_module(self, m, qualname):
        if type(m).__module__.startswith("torchbop.nn.") and not isinstance(m, (BiRealBlock, ReActNetBlock)):
            return True
        return super().is_leaf_module(m, qualname)


@pytest.mark.parametrize("name, kwargs, size", SMALL, ids=IDS)
def test_models_trace_with_torch_fx(name, kwargs, size):
    model = create_model(name, **kwargs).eval()
    graph = LeafTracer().trace(model)  # fails on Python control flow over tensor values
    traced = fx.GraphModule(model, graph)
    x = images(2, size)
    torch.testing.assert_close(traced(x), model(x))
    assert {n.target for n in graph.nodes if n.op == "call_function"} <= {operator.add, torch.cat}


@pytest.mark.parametrize("name, kwargs, size", SMALL[::2], ids=IDS[::2])
def test_one_bop_step_keeps_the_weights_plus_minus_one(name, kwargs, size):
    torch.manual_seed(0)
    model = create_model(name, mode="bop", **kwargs)
    binary, other = split_binary_params(model)
    before = [w.detach().clone() for w in binary]
    optimizer = CompositeOptimizer(
        Bop(binary, gamma=1.0, threshold=1e-12, fused=False), torch.optim.Adam(other, lr=1e-2)
    )
    logits = model(images(4, size))
    nn.functional.cross_entropy(logits, torch.arange(4) % logits.shape[1]).backward()
    optimizer.step()
    assert all(set(w.detach().unique().tolist()) <= {-1.0, 1.0} for w in binary)
    assert sum(int((w != b).sum()) for w, b in zip(binary, before)) > 0  # gamma = 1, tiny tau: weights flipped


@pytest.mark.parametrize("name, kwargs, size", SMALL[::2], ids=IDS[::2])
def test_latent_mode_trains_real_latent_weights(name, kwargs, size):
    torch.manual_seed(0)
    model = create_model(name, mode="latent", **kwargs)
    layers = [layer for _, layer in named_binary_layers(model)]
    expected_scale = None if name == "binary_resnet18" else "mean_abs"
    assert all(layer.scale == expected_scale for layer in layers)
    binary, other = split_binary_params(model)
    assert binary == [] and len(other) > len(layers)  # latent weights go to the ordinary optimizer
    weights = [layer.weight for layer in layers]
    assert any(not set(w.detach().unique().tolist()) <= {-1.0, 1.0} for w in weights)
    model(images(4, size)).logsumexp(dim=1).sum().backward()
    assert all(w.grad is not None for w in weights) and sum(float(w.grad.abs().sum()) for w in weights) > 0


@pytest.mark.parametrize("name, kwargs, size", SMALL, ids=IDS)
def test_channels_last_is_declared_and_gives_the_same_outputs(name, kwargs, size):
    nhwc = create_model(name, **kwargs).eval()
    nchw = create_model(name, channels_last=False, **kwargs).eval()
    nchw.load_state_dict(nhwc.state_dict())
    assert input_memory_format(nhwc) == torch.channels_last
    assert input_memory_format(nchw) == torch.contiguous_format
    x = images(2, size)
    torch.testing.assert_close(nhwc(x), nchw(x), rtol=1e-4, atol=1e-4)
    assert nhwc.forward_features(x).is_contiguous(memory_format=torch.channels_last)


def test_registry_defaults():
    assert {"bireal_net18", "reactnet_a", "binary_resnet18"} <= set(MODELS)
    assert create_model("binary_resnet18").stem == "cifar10"
    assert (create_model("bireal_net18", width=0.125).stem, create_model("bireal_net18", width=0.125).num_classes) == (
        "imagenet",
        1000,
    )
    assert create_model("reactnet_a", stem="cifar10", width=0.125).num_classes == 10
    bop_conv = create_model("bireal_net18", width=0.125).features.stage2[0].conv
    assert bop_conv.scale is None and bop_conv.stride == (2, 2)
    learnable = create_model("reactnet_a", width=0.125, scale="learnable").features.blocks[0].conv3x3
    assert learnable.scale == "learnable"
    assert isinstance(BinaryResNet18(width=0.125).features.stage2[0], BinaryBasicBlock)


def test_width_keeps_every_reactnet_doubling_exact():
    model = ReActNetA(width=0.3)  # round(32 * 0.3) = 10: channels 10, 20, 40, ...
    assert [b.conv1x1.out_channels for b in model.features.blocks] == [10 * c // 32 for c in REACTNET_CHANNELS[1:]]


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("bireal_net18", {"mode": "adam"}, "Invalid mode: 'adam'"),
        ("reactnet_a", {"stem": "mnist"}, "Invalid stem: 'mnist'"),
        ("binary_resnet18", {"stem": "imagenet"}, "Invalid stem: 'imagenet' for binary_resnet18"),
        ("bireal_net18", {"width": 0}, "Invalid width: 0"),
        ("reactnet_a", {"num_classes": 0}, "Invalid num_classes: 0"),
        ("binary_resnet18", {"channels_last": "yes"}, "Invalid channels_last: 'yes'"),
        ("bireal_net18", {"scale": "mean_abs"}, "Invalid scale: 'mean_abs' in mode='bop'"),
    ],
)
def test_invalid_arguments_raise_a_clear_error(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **kwargs)
