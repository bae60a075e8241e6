"""The packed engine (bit_engine, thresholds, engine_kernels): every C path equal bit for bit to the pure-torch
reference and to the model on every model; batch norm + sign thresholds checked exhaustively against the model's own
batch-norm modules on every channel; bad inputs are clear errors.

Models are untrained (random +-1 weights) with batch-norm statistics from real test images (one train-mode pass,
``momentum=None``) and random shifts, so that signs flip both ways and predictions vary between images.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchbop
from torchbop.deploy import engine_kernels as K
from torchbop.deploy import pack_model
from torchbop.deploy.bit_engine import BinaryLayerOp, FloatThresholdOp
from torchbop.deploy.graph_export import network_nodes
from torchbop.models import create_model
from torchbop.nn import BinaryConv2d, BinaryLinear
from torchbop.quantizers import sign

PATHS = K.available_paths()
pytestmark = pytest.mark.skipif(not PATHS, reason="no C compiler: the engine's C paths cannot be built")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def realistic(model: nn.Module, images: torch.Tensor, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in [*model.named_parameters(), *model.named_buffers()]:
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("threshold", "shift_in", "shift_out"):
                value.copy_(torch.randn(value.shape, generator=g) * 0.3)
            elif leaf == "slope":
                value.copy_(torch.rand(value.shape, generator=g))
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.5)
                if module.weight is not None:  # some negative scales
                    module.weight.copy_(torch.randn(module.weight.shape, generator=g))
        model.train()(images)
    return model.eval()


MODELS = [
    ("mnist_bnn", {}),
    ("binarynet", {"width": 1 / 8}),
    ("binarynet", {"width": 1 / 8, "variant": "reproduction"}),
    ("bireal_net18", {"stem": "cifar10", "width": 1 / 8}),
    ("reactnet_a", {"stem": "cifar10", "width": 1 / 8}),
    ("binary_resnet18", {"stem": "cifar10", "width": 1 / 8}),
    ("quicknet_small", {"stem": "cifar10", "width": 1 / 8}),
    ("quicknet", {"stem": "cifar10", "width": 1 / 8}),
    ("quicknet_large", {"stem": "cifar10", "width": 1 / 8}),
]


def _model(name, kwargs, mnist_images, cifar10_images):
    images = mnist_images[0] if name == "mnist_bnn" else cifar10_images[0]
    torch.manual_seed(0)
    return realistic(create_model(name, **kwargs), images[:128], seed=1), images


def check_thresholds(model: nn.Module, packed: nn.Module) -> int:
    """Every fused layer's thresholds against the model's own float operations and batch-norm module on a
    channels_last feature map holding every reachable integer of every channel; returns the channels checked."""
    nodes = {node["name"]: node for node in network_nodes(model)[0]}
    checked = 0
    for name, op in packed.ops.items():
        if not isinstance(op, BinaryLayerOp) or op.fused is None:
            continue
        thresholds, pool = op.fused
        layer = model.get_submodule(nodes[name]["module"])
        bn_nodes = [nodes[n] for n in op.folded if nodes[n]["op"] == "batch_norm"]
        bn = model.get_submodule(bn_nodes[0]["module"]) if bn_nodes else nn.Identity()
        k, c = thresholds.fan_in, op.out_channels
        xs = torch.arange(-k, k + 1, dtype=torch.float32)
        if isinstance(layer, BinaryConv2d):
            v = xs.view(1, 1, -1, 1).expand(1, c, -1, 1).contiguous(memory_format=torch.channels_last)
            shape = (-1, 1, 1)
        else:
            v, shape = xs.view(-1, 1).expand(-1, c).contiguous(), (-1,)
        alpha = layer.output_scale()
        if alpha is not None:
            v = layer._scaled(v, alpha, layer.bias, len(shape))
        elif layer.bias is not None:
            v = v + layer.bias.view(shape)
        with torch.no_grad():
            expected = sign(bn(v)) < 0  # the bit: -1
        expected = expected[0, :, :, 0].T if isinstance(layer, BinaryConv2d) else expected
        assert torch.equal(thresholds.bits(xs.to(torch.int64)[:, None]), expected), name
        if pool is not None:
            gamma = getattr(bn, "weight", None)
            negative = torch.zeros(c, dtype=torch.bool) if gamma is None else gamma < 0
            assert torch.equal(thresholds.pool_flip.bool(), negative)
        checked += c
    return checked


@pytest.mark.realdata
@pytest.mark.parametrize(
    "name, kwargs", MODELS, ids=[f"{n}{'-' + k.get('variant', '') if k.get('variant') else ''}" for n, k in MODELS]
)
def test_every_path_equals_the_reference_and_the_model(mnist_images, cifar10_images, name, kwargs):
    model, images = _model(name, kwargs, mnist_images, cifar10_images)
    with torch.no_grad():
        expected = model(images)
    reference = pack_model(model, backend="torch")(images)
    assert len(expected.unique(dim=0)) >= 100, "logits do not vary: the check would be vacuous"
    torch.testing.assert_close(reference, expected, rtol=1e-5, atol=1e-5)
    for path in PATHS:
        packed = pack_model(model, backend=path)
        assert packed.backend == path
        got = packed(images)
        assert torch.equal(got, reference), f"{path}: logits differ from the torch reference"
        assert torch.equal(got.argmax(1), expected.argmax(1))
    if name in ("mnist_bnn", "binarynet"):  # chains of binary layers: every one but the last writes bits
        fused = [op for op in packed.ops.values() if isinstance(op, BinaryLayerOp) and op.fused is not None]
        assert len(fused) == sum(isinstance(m, (BinaryConv2d, BinaryLinear)) for m in model.modules()) - 2
        assert any(isinstance(op, FloatThresholdOp) for op in packed.ops.values())  # the real first layer
    check_thresholds(model, packed)


@pytest.mark.realdata
@pytest.mark.parametrize("scale", [None, "fixed"])
def test_a_binarized_model(cifar10_images, scale):
    torch.manual_seed(2)
    real = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.Hardtanh(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(16),
        nn.Hardtanh(),
        nn.Conv2d(16, 24, 3, padding=1, bias=True),
        nn.BatchNorm2d(24),
        nn.Hardtanh(),
        nn.Flatten(),
        nn.Linear(24 * 16 * 16, 10),
    )
    model = realistic(torchbop.binarize(real, scale=scale), cifar10_images[0][:128], seed=3)
    reference = pack_model(model, backend="torch")(cifar10_images[0])
    for path in PATHS:
        assert torch.equal(pack_model(model, backend=path)(cifar10_images[0]), reference)


class Corners(nn.Module):
    """Batch norms with negative, zero and tiny scales, zero variance, ties at zero; a max pooling before one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = BinaryConv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = BinaryConv2d(16, 12, 3, padding=1, pad_value=1.0, scale="fixed")
        self.bn2 = nn.BatchNorm2d(12, eps=0.0)
        self.fc = BinaryLinear(12 * 3 * 3, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.bn2(self.conv2(self.bn1(self.pool(self.conv1(x))))), 1))


def test_threshold_corners_negative_zero_scales_zero_variance_ties():
    torch.manual_seed(4)
    model = Corners().eval()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([1, -1, 0, 2, -0.5, 1e-30, -3, 1] * 2))
        model.bn1.running_mean.copy_(torch.arange(16.0) - 8)  # integers: BN output exactly 0 at x = mean
        model.bn1.bias.zero_()
        model.bn1.running_var.copy_(torch.tensor([0.0, 1.0] * 8))  # zero variance: 1 / sqrt(eps)
        model.bn2.running_var.copy_(torch.tensor([0.0] * 6 + [2.0] * 6))  # eps 0 and zero variance: +-inf, NaN
        model.bn2.running_mean.copy_(torch.tensor([2.0] * 12))
        model.bn2.weight.copy_(torch.linspace(-1, 1, 12))
        model.conv2.weight_scale.copy_(torch.linspace(-2, 2, 12))  # negative weight scales
    x = torch.randn(64, 8, 5, 5)
    reference = pack_model(model, backend="torch")(x)
    torch.testing.assert_close(reference, model(x).detach(), rtol=0, atol=0)
    for path in PATHS:
        packed = pack_model(model, backend=path)
        assert torch.equal(packed(x), reference)
    assert check_thresholds(model, packed) == 16 + 12


def test_float_thresholds_at_the_boundary():
    """The first (real-input) layer's batch norm + sign as float thresholds: equal to the batch norm's sign at the
    threshold, the float just below it, and random values."""
    torch.manual_seed(5)
    model = nn.Sequential(BinaryConv2d(3, 16, 3, input_quantizer=None), nn.BatchNorm2d(16), BinaryConv2d(16, 4, 3))
    model = realistic(model, torch.randn(32, 3, 8, 8), seed=6)
    packed = pack_model(model, backend=PATHS[-1])
    op = packed.ops["_1"]
    assert isinstance(op, FloatThresholdOp)
    t = op.threshold
    probes = torch.stack([t, torch.nextafter(t, torch.tensor(-float("inf"))), t / 2, -t, torch.zeros(16)])
    probes = torch.cat([probes, torch.randn(200, 16) * 5])
    bits = op(probes.view(-1, 16, 1, 1)).data.view(-1, 2)
    got = ((bits[:, :, None] >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1, 16).bool()
    expected = sign(model[1](probes.view(-1, 16, 1, 1)).view(-1, 16)) < 0
    assert torch.equal(got, expected)


def test_kernel_paths_agree_on_large_random_products():
    g = torch.Generator().manual_seed(7)
    pixels = torch.randint(0, 256, (2, 9, 7, 40), dtype=torch.uint8, generator=g)
    rows = torch.randint(-(2**62), 2**62, (37, 92), dtype=torch.int64, generator=g)  # 3 x 3 x 40 bytes + zeros
    rows.view(torch.uint8).view(37, -1)[:, 360:] = 0
    base = torch.randint(-100, 100, (9 * 7, 37), dtype=torch.int32, generator=g)
    thr = (
        torch.randint(-50, 50, (37,), dtype=torch.int32, generator=g),
        torch.randint(0, 2, (37,), generator=g, dtype=torch.uint8),
    )
    geometry = dict(kernel_size=(3, 3), stride=(1, 1), dilation=(1, 1), pad=(1, 1, 1, 1))
    outs = [K.binary_conv(pixels, rows, base, path=p, threads=2, **geometry) for p in PATHS]
    bits = [K.binary_conv(pixels, rows, base, path=p, threads=2, thresholds=thr, **geometry) for p in PATHS]
    for other, other_bits in zip(outs[1:], bits[1:]):
        assert torch.equal(other, outs[0]) and torch.equal(other_bits, bits[0])
    assert outs[0].abs().max() > 0


@pytest.mark.parametrize("fill", ["random", "all-disagree"])
def test_every_path_on_a_reduction_longer_than_its_counters(fill):
    """A dense product of 144,000 bits per row: longer than the AVX2 path's 8-bit counters (63 steps) and its 16-bit
    sums (256 widenings) hold, and, with every bit disagreeing, the largest count there is."""
    g = torch.Generator().manual_seed(11)
    n, cb, o = 5, 18_000, 20
    if fill == "random":
        pixels = torch.randint(0, 256, (n, 1, 1, cb), dtype=torch.uint8, generator=g)
        rows = torch.randint(-(2**62), 2**62, (o, cb // 8), dtype=torch.int64, generator=g)
    else:
        pixels = torch.full((n, 1, 1, cb), 255, dtype=torch.uint8)
        rows = torch.zeros(o, cb // 8, dtype=torch.int64)
    expected = _reference_conv(pixels, rows, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0))
    if fill == "all-disagree":
        assert torch.equal(expected, torch.full((n, o), -8.0 * cb))
    base = torch.full((1, o), 8 * cb, dtype=torch.int32)
    geometry = dict(kernel_size=(1, 1), stride=(1, 1), dilation=(1, 1), pad=(0, 0, 0, 0))
    for path in PATHS:
        assert torch.equal(K.binary_conv(pixels, rows, base, path=path, threads=1, **geometry), expected), path


@pytest.mark.parametrize("per_position", [False, True], ids=["one-base", "base-per-position"])
def test_every_path_on_thresholds_beyond_16_bits(per_position):
    """Thresholds far outside what a layer can output, at the edges of 16 bits and at the counts' extremes: the AVX2
    tile's own 16-bit epilogue (clamped limits) writes the bits the 64-bit epilogues write."""
    g = torch.Generator().manual_seed(5)
    o, cb = 48, 8
    pixels = torch.randint(0, 256, (2, 6, 5, cb), dtype=torch.uint8, generator=g)
    rows = torch.randint(-(2**62), 2**62, (o, 9), dtype=torch.int64, generator=g)
    expected = _reference_conv(pixels, rows, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    extremes = [-(2**31), -40000, -32768, -32767, -577, -576, -575, -1, 0, 1, 575, 576, 577, 32766, 32767, 40000]
    thr = torch.tensor((extremes * 3)[:o], dtype=torch.int32)
    flip = torch.randint(0, 2, (o,), dtype=torch.uint8, generator=g)
    base = torch.full((1, o), 9 * cb * 8, dtype=torch.int32)
    if per_position:
        base = base.expand(30, o).contiguous()
    want = (expected < thr.float()) ^ flip.bool()
    geometry = dict(kernel_size=(3, 3), stride=(1, 1), dilation=(1, 1), pad=(1, 1, 1, 1))
    for path in PATHS:
        bits = K.binary_conv(pixels, rows, base, path=path, threads=1, thresholds=(thr, flip), **geometry)
        unpacked = ((bits.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(len(expected), -1)
        assert torch.equal(unpacked[:, :o].bool(), want), path


def test_paths_and_the_environment_variable(monkeypatch):
    assert K.resolve_engine("torch") == "torch"
    assert K.resolve_engine("kernel") == PATHS[-1]
    monkeypatch.setenv(K.ENV_VAR, "portable")
    assert K.resolve_engine("auto") == "portable"
    assert pack_model(nn.Sequential(BinaryLinear(8, 2))).backend == "portable"
    monkeypatch.setenv(K.ENV_VAR, "sse9")
    with pytest.raises(ValueError, match=r"Invalid \$TORCHBOP_KERNEL: 'sse9'"):
        K.resolve_engine("auto")
    with pytest.raises(ValueError, match="Invalid backend: 'gpu'"):
        K.resolve_engine("gpu")
    missing = [p for p in K.PATHS if p not in PATHS]
    if missing:
        with pytest.raises(ValueError, match="this CPU does not run"):
            K.resolve_engine(missing[0])


@pytest.fixture(scope="module")
def packed():
    torch.manual_seed(8)
    return pack_model(create_model("mnist_bnn").eval(), backend=PATHS[-1])


class TestBadInput:
    @pytest.mark.parametrize(
        "x, match",
        [
            (torch.zeros(2, 1, 28, 28, dtype=torch.float64), "dtype torch.float64.*x.float()"),
            (torch.zeros(1, 28, 28), r"shape \(1, 28, 28\).*unsqueeze\(0\)"),
            (torch.zeros(2, 3, 28, 28), "3 channels"),
            (torch.zeros(2, 1, 56, 28)[:, :, ::2], "neither contiguous nor channels_last.*x.contiguous()"),
            (torch.zeros(2, 1, 20, 20), "dense layer of 576 inputs gets 256 features"),
        ],
    )
    def test_one_clear_error(self, packed, x, match):
        with pytest.raises(ValueError, match=match):
            packed(x)

    def test_channels_last_input_is_fine(self, packed):
        x = torch.randn(3, 1, 28, 28)
        assert torch.equal(packed(x.contiguous(memory_format=torch.channels_last)), packed(x))

    def test_kernel_wrappers_validate_before_c(self):
        with pytest.raises(ValueError, match="pixels: needs a contiguous CPU torch.uint8"):
            K.binary_conv(
                torch.zeros(1, 3, 3, 8),
                torch.zeros(1, 4, dtype=torch.int64),
                torch.zeros(1, 1, dtype=torch.int32),
                kernel_size=(3, 3),
                stride=(1, 1),
                dilation=(1, 1),
                pad=(0, 0, 0, 0),
                path=PATHS[0],
                threads=1,
            )
        with pytest.raises(ValueError, match="cannot hold"):
            K.binary_conv(
                torch.zeros(1, 3, 3, 8, dtype=torch.uint8),
                torch.zeros(1, 4, dtype=torch.int64),
                torch.zeros(1, 1, dtype=torch.int32),
                kernel_size=(3, 3),
                stride=(1, 1),
                dilation=(1, 1),
                pad=(0, 0, 0, 0),
                path=PATHS[0],
                threads=1,
            )


def _reference_conv(pixels, rows, kernel_size, stride, dilation, pad):
    """``sum of +-1 products`` over every bit position of the rows (unused bits are 0 in both: +1 * +1), padding read
    as +1: what the kernel computes with ``base`` = the number of bit positions."""
    n, h, w, cb = pixels.shape
    kh, kw = kernel_size
    signs = 1.0 - 2.0 * ((pixels.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(n, h, w, -1).float()
    signs = torch.nn.functional.pad(signs.permute(0, 3, 1, 2), pad, value=1.0)
    wbits = rows.contiguous().view(torch.uint8)[:, : kh * kw * cb].reshape(-1, kh, kw, cb)
    weight = 1.0 - 2.0 * ((wbits.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1, kh, kw, 8 * cb)
    out = torch.nn.functional.conv2d(signs, weight.permute(0, 3, 1, 2).float(), stride=stride, dilation=dilation)
    return out.permute(0, 2, 3, 1).reshape(-1, rows.shape[0])


@pytest.mark.parametrize("cb", [2, 8, 16], ids=["im2col", "direct", "direct-2-words"])
@pytest.mark.parametrize("o", [24, 37, 64])
@pytest.mark.parametrize(
    "stride, dilation, pad",
    [((1, 1), (1, 1), (0, 0, 0, 0)), ((2, 1), (1, 1), (1, 1, 1, 1)), ((1, 2), (2, 1), (2, 0, 1, 1))],
)
def test_every_path_equals_a_float_convolution(cb, o, stride, dilation, pad):
    """Panels, filters in lanes, direct and im2col rows, the zero-padded copy, the last partial panel, a base of one
    row (folded into the thresholds) and a base per position: every path equals ``F.conv2d`` of the +-1 values."""
    g = torch.Generator().manual_seed(cb * 1000 + o)
    pixels = torch.randint(0, 256, (3, 7, 9, cb), dtype=torch.uint8, generator=g)
    words = (9 * cb + 7) // 8
    rows = torch.randint(-(2**62), 2**62, (o, words + 3), dtype=torch.int64, generator=g)
    rows.view(torch.uint8).view(o, -1)[:, 9 * cb :] = 0
    geometry = dict(kernel_size=(3, 3), stride=stride, dilation=dilation, pad=pad)
    expected = _reference_conv(pixels, rows, (3, 3), stride, dilation, pad)
    positions = expected.shape[0] // 3
    uniform = torch.full((1, o), 9 * cb * 8, dtype=torch.int32)
    per_position = uniform.expand(positions, o).contiguous()
    thr = (
        torch.randint(-40, 40, (o,), dtype=torch.int32, generator=g),
        torch.randint(0, 2, (o,), dtype=torch.uint8, generator=g),
    )
    want_bits = (expected < thr[0].float()) ^ thr[1].bool()
    for path in PATHS:
        panels = K.weight_panels(rows, words, path)
        for weights, extra in ((rows, {}), (panels, {"out_channels": o})):
            for base in (uniform, per_position):
                got = K.binary_conv(pixels, weights, base, path=path, threads=2, **geometry, **extra)
                assert torch.equal(got, expected), (path, base.shape)
                bits = K.binary_conv(pixels, weights, base, path=path, threads=1, thresholds=thr, **geometry, **extra)
                unpacked = ((bits.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(len(got), -1)
                assert torch.equal(unpacked[:, :o].bool(), want_bits), (path, base.shape)
                assert not unpacked[:, o:].any()  # bits past the last channel are 0


def test_weight_panels_layout_and_errors():
    rows = torch.arange(20 * 8, dtype=torch.int64).view(20, 8)
    panels = K.weight_panels(rows, 5, "portable")
    assert panels.shape == (2, 5, 16)
    assert torch.equal(panels[0, 3], rows[:16, 3]) and torch.equal(panels[1, 2, :4], rows[16:, 2])
    assert not panels[1, :, 4:].any()  # filters past O are zero
    random_rows = torch.randint(-(2**62), 2**62, (20, 8), generator=torch.Generator().manual_seed(0))
    split = K.weight_panels(random_rows, 5, "avx2")  # per byte of a word: 16 low nibbles, then 16 high nibbles
    assert split.shape == (2, 5, 32)
    nibbles = split.view(torch.uint8).view(2, 5, 8, 32)
    assert int(nibbles.max()) < 16
    joined = (nibbles[..., :16] | (nibbles[..., 16:] << 4)).transpose(2, 3).contiguous().view(torch.int64)
    assert torch.equal(joined.view(2, 5, 16), K.weight_panels(random_rows, 5, "portable"))
    with pytest.raises(ValueError, match="words=9 for rows of 8 words"):
        K.weight_panels(rows, 9, "portable")
    with pytest.raises(ValueError, match="panels .* for 20 filters"):
        K.binary_conv(
            torch.zeros(1, 3, 3, 8, dtype=torch.uint8),
            panels,
            torch.zeros(1, 20, dtype=torch.int32),
            kernel_size=(3, 3),
            stride=(1, 1),
            dilation=(1, 1),
            pad=(0, 0, 0, 0),
            path="portable",
            threads=1,
            out_channels=20,
        )


def _fork_child(connection, pixels, weights, base, expected, geometry):
    out = K.binary_conv(pixels, weights, base, threads=2, **geometry)
    connection.send(bool(torch.equal(out, expected)))
    connection.close()


def test_threads_concurrent_callers_and_a_forked_child():
    """Threads over output tiles, on a product large enough to be split (the small products above run on one thread):
    2, 3 and 8 threads equal 1 thread and the float convolution on every path; four Python threads calling at once
    (ctypes releases the GIL, so the C calls overlap) get the same; so does a forked child."""
    import concurrent.futures
    import multiprocessing

    g = torch.Generator().manual_seed(7)
    pixels = torch.randint(0, 256, (4, 16, 16, 32), dtype=torch.uint8, generator=g)
    words = 9 * 32 // 8
    rows = torch.randint(-(2**62), 2**62, (128, words), dtype=torch.int64, generator=g)
    geometry = dict(kernel_size=(3, 3), stride=(1, 1), dilation=(1, 1), pad=(1, 1, 1, 1))
    expected = _reference_conv(pixels, rows, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    base = torch.full((1, 128), 9 * 32 * 8, dtype=torch.int32)
    for path in PATHS:
        for threads in (1, 2, 3, 8):
            got = K.binary_conv(pixels, rows, base, path=path, threads=threads, **geometry)
            assert torch.equal(got, expected), (path, threads)
    path = PATHS[-1]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(K.binary_conv, pixels, rows, base, path=path, threads=2, **geometry) for _ in range(40)]
        assert all(torch.equal(call.result(), expected) for call in calls)
    if "fork" not in multiprocessing.get_all_start_methods():
        return
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(
        target=_fork_child, args=(child, pixels, rows, base, expected, {**geometry, "path": path})
    )
    process.start()
    assert parent.poll(60) and parent.recv() is True
    process.join(10)
    assert process.exitcode == 0
