"""The ONNX export run by ONNX Runtime: the eval-mode predictions of torch, at batch sizes 1, 7 and 64.

How the comparison is exact where it can be and honest where it cannot. The binary products are sums of +-1
products, exact integers in float32 in any order; the real-valued parts (first and last layer, batch norm, scales,
PReLU) are the same float32 operations, but ONNX Runtime orders them differently (its own convolution kernels; it
folds batch norm and per-channel multiplies into the convolution before them), so they agree to a few roundings.
A sign whose argument lies within such a rounding of zero can therefore come out differently, and from there on
that image's activations differ by whole units. torch is no different from itself: the same model at batch 1 and at
batch 300 takes a few such signs differently on real MNIST images (its channels_last convolution picks other
kernels), and 1% of the argmaxes move. So :func:`compare` follows every sign of every image in order (the ONNX
graph gets the argument of every sign as an extra output; torch's are read with forward pre-hooks):

- up to an image's first sign that differs, every sign argument agrees within ``SIGN_TOL`` (1e-4 + 1e-5 |x|: the
  arguments are O(1-100), float32 rounds at 6e-8 relative, and the largest deviation measured was 5e-6 absolute);
- that first differing sign must be a tie: torch's argument within ``SIGN_TOL`` of zero (a wrong weight, sign
  convention, padding or statistic moves arguments by far more, and on most images);
- on images where every sign agrees, the argmax is the same and the logits agree within ``LOGIT_TOL`` (1e-4
  absolute + 1e-5 relative: 20x the largest difference measured, 4.8e-6 (ReActNet); one flipped sign moves a logit
  by at least a hundredth in these models);
- such ties stay rare (at most 5% of the images; measured: 0 to 4 of 300, QuickNetLarge the most), and the logits
  vary between images by 1000x ``LOGIT_TOL`` (else the check is vacuous).

Measured on the full test sets (one-off, trained for one epoch: the MNIST BNN at 97.3%, BinaryNet at width 1/8 at
39.6%): no tie taken differently, the same argmax on 10,000 of 10,000 images at batch 1, 7 and 64, logits within
2.4e-6 (MNIST) and 4.5e-6 (CIFAR-10).

Models are untrained but realistic: batch norms hold running statistics of the test images (one train-mode pass with
``momentum=None``) and random shifts; RSign thresholds, RPReLU shifts and slopes and weight scales are random.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import torchbop
from torchbop.cli import main
from torchbop.deploy import export_onnx, onnx_model
from torchbop.deploy.graph_tracer import SIGN_QUANTIZERS
from torchbop.models import create_model
from torchbop.nn import BinaryConv2d, BinaryLinear, RSign, ShiftBatchNorm2d
from torchbop.quantizers import SteSign, StochasticSign
from torchbop.training.config import TrainConfig

BATCH_SIZES = (1, 7, 64)
SIGN_TOL = {"atol": 1e-4, "rtol": 1e-5}
LOGIT_TOL = {"atol": 1e-4, "rtol": 1e-5}
MAX_TIE_SHARE = 0.05


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)  # the models' random +-1 weights: the same network, and so the same ties, every run


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------------
# Following every sign


def sign_arguments(proto: onnx.ModelProto) -> list[str]:
    """The ONNX values every sign is taken of, in graph order: the input of ``Sign`` in ``Sign(Add(Sign(x), .5))``."""
    producer = {node.output[0]: node for node in proto.graph.node}
    return [
        producer[node.input[0]].input[0]
        for node in proto.graph.node
        if node.op_type == "Add" and node.input[1].endswith(".half")
    ]


def session(proto: onnx.ModelProto, with_signs: bool = False) -> ort.InferenceSession:
    """An ONNX Runtime session (default optimizations, one thread); ``with_signs``: every sign argument an output."""
    if with_signs:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in sign_arguments(proto))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_ort(sess: ort.InferenceSession, images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """All outputs of ``sess`` over ``images`` in batches of ``batch_size``, concatenated along the batch."""
    runs = [sess.run(None, {"input": images[i : i + batch_size].numpy()}) for i in range(0, len(images), batch_size)]
    return [torch.from_numpy(np.concatenate(parts)) for parts in zip(*runs)]


def run_torch(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """``[logits, argument of each sign ...]`` of torch's eval forward (activation quantizers, not weights)."""
    weight_quantizers = {id(m.weight_quantizer) for m in model.modules() if getattr(m, "weight_quantizer", None)}
    arguments: list[torch.Tensor] = []
    hooks = [
        m.register_forward_pre_hook(lambda _, args: arguments.append(args[0].detach().clone()))
        for m in model.modules()
        if isinstance(m, SIGN_QUANTIZERS) and id(m) not in weight_quantizers
    ]
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return [logits, *arguments]


def compare(model: nn.Module, images: torch.Tensor, proto: onnx.ModelProto, batch_size: int) -> dict[str, float]:
    """Check ONNX Runtime against torch sign by sign (see the module docstring); the numbers for the report."""
    logits, *expected = run_torch(model, images)
    got_logits, *got = run_ort(session(proto, with_signs=True), images, batch_size)
    assert len(got) == len(expected) > 0, "the graph's signs do not match the model's sign quantizers one for one"
    n = len(images)
    ties = torch.zeros(n, dtype=torch.bool)
    for want, have in zip(expected, got):  # in forward order
        want, have = want.flatten(1), have.reshape(n, -1)
        close = (have - want).abs() <= SIGN_TOL["atol"] + SIGN_TOL["rtol"] * want.abs()
        flipped = (have >= 0) != (want >= 0)
        near_zero = want.abs() <= SIGN_TOL["atol"]
        live = ~ties  # images before their first differing sign
        assert bool(close[live].all()), f"sign arguments differ beyond rounding: {(have - want)[live].abs().max()}"
        assert bool((near_zero | ~flipped)[live].all()), "a sign differs away from a tie"
        ties |= flipped.any(1)
    same = ~ties
    assert ties.float().mean() <= MAX_TIE_SHARE, f"{int(ties.sum())} of {n} images take a tie differently"
    assert float(logits[same].std(0).max()) > 1e3 * LOGIT_TOL["atol"], "logits do not vary: the check is vacuous"
    assert torch.equal(got_logits[same].argmax(1), logits[same].argmax(1))
    torch.testing.assert_close(got_logits[same], logits[same], **LOGIT_TOL)
    return {
        "max_diff": float((got_logits[same] - logits[same]).abs().max()),
        "ties": int(ties.sum()),
        "argmax_agree_all": float((got_logits.argmax(1) == logits.argmax(1)).float().mean()),
    }


def assert_predicts_as_torch(model: nn.Module, images: torch.Tensor) -> onnx.ModelProto:
    proto = onnx_model(model, list(images.shape[1:]))
    for batch_size in BATCH_SIZES:
        compare(model, images, proto, batch_size)
    return proto


# ----------------------------------------------------------------------------------------------------------------------
# Real data: every model family


CIFAR_FAMILIES = [
    "binarynet",
    "bireal_net18",
    "reactnet_a",
    "binary_resnet18",
    "quicknet_small",
    "quicknet",
    "quicknet_large",
]


@pytest.mark.realdata
@pytest.mark.parametrize("mode", ["bop", "latent"])
def test_mnist_bnn_predicts_as_torch(mnist_images, mode, realistic):
    images, _ = mnist_images
    assert_predicts_as_torch(realistic(create_model("mnist_bnn", mode=mode), images), images)


@pytest.mark.realdata
@pytest.mark.parametrize("mode", ["bop", "latent"])
@pytest.mark.parametrize("name", CIFAR_FAMILIES)
def test_cifar10_families_predict_as_torch(cifar10_images, name, mode, realistic):
    images, _ = cifar10_images
    kwargs = {"width": 1 / 8} if name == "binarynet" else {"stem": "cifar10", "width": 1 / 8}
    assert_predicts_as_torch(realistic(create_model(name, mode=mode, **kwargs), images), images)


@pytest.mark.realdata
def test_a_binarized_model_with_scales_and_pad_values_predicts_as_torch(cifar10_images, realistic):
    images, _ = cifar10_images
    torch.manual_seed(0)
    real = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.Hardtanh(),
        nn.Conv2d(16, 16, 3, padding="same"),
        nn.BatchNorm2d(16),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 64),
        nn.BatchNorm1d(64),
        nn.PReLU(64),
        nn.Linear(64, 10),
    )
    model = torchbop.binarize(real, example_input=images[:2], scale="fixed", pad_value=-1.0)
    assert sum(isinstance(m, (BinaryConv2d, BinaryLinear)) for m in model.modules()) == 3
    proto = assert_predicts_as_torch(realistic(model, images), images)
    assert {"Pad", "Mul", "MaxPool", "AveragePool", "Clip", "PRelu"} <= {node.op_type for node in proto.graph.node}


# ----------------------------------------------------------------------------------------------------------------------
# The graph itself


def test_sign_of_exact_zeros_is_plus_one_as_in_torch():
    """Exact zeros reach the sign through an input quantizer, batch norm (x = mean, unit variance) and RSign."""
    torch.manual_seed(0)
    bn = ShiftBatchNorm2d(4)
    rsign = RSign(4)
    model = nn.Sequential(
        BinaryConv2d(2, 4, 3, padding=1, pad_value=1.0),
        bn,
        rsign,
        BinaryConv2d(4, 4, 3, input_quantizer=None),
        nn.Flatten(),
        BinaryLinear(64, 5),
    ).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.0, 2.0, -4.0, 6.0]))
        bn.running_var.fill_(1 - bn.eps)  # sqrt(var + eps) = 1: the batch norm is exactly x - mean
        rsign.threshold.copy_(torch.tensor([0.0, 1.0, 0.0, -1.0]))
    x = torch.randint(-1, 2, (64, 2, 6, 6)).float()  # one third zeros
    arguments = run_torch(model, x)[1:]
    assert all(bool((a == 0).any()) for a in arguments), "every sign should see exact zeros"
    expected = model(x).detach()
    sess = session(onnx_model(model, [2, 6, 6]))
    for batch_size in BATCH_SIZES:
        assert torch.equal(run_ort(sess, x, batch_size)[0], expected)  # integers throughout: bit for bit


def test_the_batch_dimension_is_dynamic_and_weights_are_plus_minus_one():
    model = create_model("binarynet", width=1 / 16)
    proto = onnx_model(model, [3, 32, 32])
    shape = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert shape == ["batch", 3, 32, 32]
    assert [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == ["batch", 10]
    weights = [
        onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.endswith(("weight", "weight_t"))
    ]
    assert len(weights) == 9 and all(set(np.unique(w)) == {-1.0, 1.0} for w in weights)
    assert proto.opset_import[0].version == torchbop.deploy.onnx_export.OPSET


def test_the_model_is_left_in_its_mode_and_its_statistics_untouched():
    model = create_model("mnist_bnn").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    onnx_model(model, [1, 28, 28])
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class Sigmoidal(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = BinaryConv2d(1, 2, 3)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


@pytest.mark.parametrize(
    "model, match",
    [
        (nn.Sequential(BinaryConv2d(1, 2, 3), nn.Sigmoid()), r"1 \(Sigmoid\): module type Sigmoid is not supported"),
        (Sigmoidal(), r"sigmoid is not supported by the ONNX exporter"),
        (
            nn.Sequential(BinaryConv2d(1, 2, 3, input_quantizer=StochasticSign())),
            r"0 \(BinaryConv2d\): input quantizer "
            "StochasticSign is not supported",
        ),
        (nn.Sequential(BinaryConv2d(1, 2, 3, mode="latent", weight_quantizer=None)), r"must hold exactly -1 and \+1"),
        (nn.Sequential(nn.AvgPool2d(2, divisor_override=3)), "divisor_override=3"),
    ],
)
def test_what_it_cannot_write_is_one_value_error_naming_it(model, match):
    with pytest.raises(ValueError, match=match):
        onnx_model(model, [1, 8, 8])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_shape": [3, 0, 32]}, "Invalid input_shape"),
        ({"input_shape": 3}, "Invalid input_shape"),
        ({"input_shape": [3, 32, 32], "opset": 13}, "Invalid opset"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        onnx_model(nn.Sequential(SteSign()), **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# The command line


@pytest.fixture
def run_dir(tmp_path):
    """A run folder whose checkpoints/last.ckpt holds what training writes: the config and the weights."""
    torch.manual_seed(0)
    model = create_model("binarynet", width=1 / 16).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 2)
                module.bias.normal_()
    config = TrainConfig(model="binarynet", model_kwargs={"width": 1 / 16}, dataset="cifar10", name="tiny")
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(
        {"hyper_parameters": {"config": config.to_dict()}, "state_dict": state, "global_step": 1},
        tmp_path / "run" / "checkpoints" / "last.ckpt",
    )
    return tmp_path / "run", model


def test_cli_exports_onnx_that_predicts_as_the_run(run_dir, tmp_path, capsys):
    folder, model = run_dir
    out = tmp_path / "tiny.onnx"
    assert main(["export", str(folder), "-o", str(out), "--format", "onnx"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    images = torch.rand(64, 3, 32, 32) * 2 - 1
    proto = onnx.load(str(out))
    compare(model, images, proto, 64)
    compare(model, images, proto, 7)


def test_cli_refuses_to_overwrite_in_one_line(run_dir, tmp_path, capsys):
    folder, _ = run_dir
    out = tmp_path / "tiny.onnx"
    out.write_bytes(b"keep")
    assert main(["export", str(folder), "-o", str(out), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"keep"


def test_export_onnx_writes_a_file_onnx_checks(tmp_path):
    path = export_onnx(create_model("mnist_bnn"), tmp_path / "m.onnx", input_shape=[1, 28, 28])
    onnx.checker.check_model(str(path))
    with pytest.raises(torchbop.errors.UserError, match="already exists"):
        export_onnx(create_model("mnist_bnn"), path, input_shape=[1, 28, 28])


def test_cli_without_the_onnx_package_says_what_to_install_in_one_line(run_dir, tmp_path, capsys, monkeypatch):
    folder, _ = run_dir
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    assert main(["export", str(folder), "-o", str(tmp_path / "m.onnx"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'torchbop[onnx]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()
