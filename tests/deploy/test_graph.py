"""The fx graph engine on models written here: every supported op, the corners of binary layers, the file format's
versions, and the one error that names what the engine cannot run (as a ValueError and on the command line)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from torchbop.deploy import export, load_packed, pack_model
from torchbop.deploy.bit_engine import BinaryLayerOp
from torchbop.deploy.packed_format import read_packed
from torchbop.errors import UserError
from torchbop.models.memory_format import to_channels_last
from torchbop.nn import BinaryConv2d, BinaryLinear, RPReLU, RSign, ShiftBatchNorm2d
from torchbop.quantizers import ApproxSign, SteSign, StochasticSign

LEGACY = Path(__file__).parent / "data" / "legacy_v1.tbop"


class Block(nn.Module):
    """ReActNet-like: RSign -> binary conv (grouped, +-1 padding, scaled) -> BN -> + shortcut -> RPReLU."""

    def __init__(self, channels: int, groups: int, pad_value: float, scale: str | None) -> None:
        super().__init__()
        self.sign = RSign(channels)
        self.conv = BinaryConv2d(
            channels, channels, 3, padding=1, groups=groups, pad_value=pad_value, scale=scale, input_quantizer=None
        )
        self.bn = ShiftBatchNorm2d(channels)
        self.act = RPReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.sign(x))) + x)


class Everything(nn.Module):
    """Every supported module and function once, a residual add and a concatenation, in channels_last."""

    def __init__(self, pad_value: float = 0.0, groups: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.PReLU(8))
        self.block = Block(8, groups, pad_value, "fixed")
        self.inner = BinaryConv2d(
            8, 8, 3, padding=1, stride=2, input_quantizer=RSign(8, quantizer=SteSign()), bias=True
        )
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(16)
        self.sign = ApproxSign()
        self.pointwise = BinaryConv2d(16, 16, 1, input_quantizer=None, scale="learnable")
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.avg = nn.AvgPool2d(2, count_include_pad=False, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.BatchNorm1d(16)
        self.dense = BinaryLinear(16, 12, bias=True, scale="fixed")
        self.drop = nn.Dropout(0.3)
        self.out = nn.Sequential(nn.Hardtanh(), nn.Identity(), nn.Linear(12 + 16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_channels_last(x)
        x = self.block(self.stem(x))
        y = self.inner(x)
        x = torch.cat([y, torch.relu(self.depthwise(y))], dim=1)
        x = self.pointwise(self.sign(self.bn(x)))
        x = torch.add(self.pool(x), nn.functional.relu(self.pool(x)))
        x = torch.flatten(self.gap(self.avg(x)), 1)
        z = self.drop(self.dense(self.norm(x)))
        return self.out(torch.cat([z, x], dim=1))  # the real features reach the logits too: nothing hides


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """Every real parameter and statistic drawn at random (variances and scales positive); +-1 weights kept."""
    g = torch.Generator().manual_seed(seed)
    binary = {id(m.weight) for m in model.modules() if getattr(m, "is_binary", False)}
    with torch.no_grad():
        for name, value in [*model.named_parameters(), *model.named_buffers()]:
            if id(value) in binary or name.endswith("num_batches_tracked"):
                continue
            draw = torch.randn(value.shape, generator=g)
            value.copy_(draw.abs() + 0.1 if name.endswith(("running_var", "weight_scale")) else draw * 0.5)
    return model.eval()


def inputs(seed: int, shape=(24, 3, 13, 11)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, shape, generator=g).float() / 2  # many exact zeros: sign(0) = +1


class TestGraphOps:
    @pytest.mark.parametrize("pad_value, groups", [(0.0, 1), (1.0, 2), (-1.0, 8)])
    def test_kernel_equals_torch_equals_model(self, pad_value, groups):
        torch.manual_seed(0)
        model = randomized(Everything(pad_value, groups), 1)
        x = inputs(2)
        with torch.no_grad():
            expected = model(x)
        kernel, reference = pack_model(model, backend="kernel")(x), pack_model(model, backend="torch")(x)
        assert torch.equal(kernel, reference)
        torch.testing.assert_close(kernel, expected, rtol=1e-5, atol=1e-5)
        assert len(expected.unique(dim=0)) >= 20  # not vacuous: the logits depend on the image

    def test_binary_inputs_run_on_packed_bits(self):
        packed = pack_model(randomized(Everything(), 1), backend="kernel")
        on_bits = {name for name, op in packed.ops.items() if isinstance(op, BinaryLayerOp)}
        # block.conv and pointwise read an RSign / a sign quantizer; inner has RSign as its input quantizer
        assert on_bits == {"block_conv", "inner", "pointwise", "dense"}
        assert "inner_rsign" in packed.ops

    def test_file_round_trip_is_version_2_of_nodes(self, tmp_path):
        model = randomized(Everything(1.0, 2), 3)
        path = export(model, tmp_path / "m.tbop", input_shape=[3, 13, 11])
        header, _ = read_packed(path)
        assert header["version"] == 2
        ops = {node["name"]: node["op"] for node in header["network"]["nodes"]}
        assert ops["add"] == "add" and ops["cat"] == "cat" and ops["block_sign"] == "rsign"
        x = inputs(4)
        with torch.no_grad():
            assert torch.equal(load_packed(path)(x), model(x))

    def test_version_1_files_still_load(self):
        header, tensors = read_packed(LEGACY)
        assert header["version"] == 1 and "layers" in header["network"]
        for backend in ("kernel", "torch"):
            packed = load_packed(LEGACY, backend=backend)
            assert torch.equal(packed(tensors["test.input"]), tensors["test.logits"])


class Sigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


class Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


def with_block(layer: nn.Module) -> nn.Module:
    model = nn.Sequential(BinaryConv2d(1, 8, 3, input_quantizer=None), nn.Sequential(ShiftBatchNorm2d(8), layer))
    return model.eval()


class TestUnsupported:
    @pytest.mark.parametrize(
        "model, match",
        [
            (with_block(nn.GELU()), r"^1\.1 \(GELU\): module type GELU is not supported"),
            (with_block(Sigmoid()), r"^1\.1 \(Sigmoid\): torch\.sigmoid is not supported"),
            (
                with_block(BinaryConv2d(8, 8, 3, input_quantizer=StochasticSign())),
                r"^1\.1 \(BinaryConv2d\): input quantizer StochasticSign is not supported",
            ),
            (with_block(RSign(8, quantizer=StochasticSign())), r"^1\.1 \(RSign\): quantizer StochasticSign"),
            (with_block(BinaryConv2d(8, 8, 3, padding=1, padding_mode="circular")), r"padding_mode='circular'"),
            (with_block(nn.BatchNorm2d(8, track_running_stats=False)), r"^1\.1 \(BatchNorm2d\): .*running statistics"),
            (Branchy(), r"^Branchy: torch\.fx cannot trace its forward"),
        ],
    )
    def test_one_value_error_names_it(self, model, match):
        with pytest.raises(ValueError, match=match):
            pack_model(model)

    def test_bop_weights_must_be_binary(self):
        model = nn.Sequential(BinaryLinear(4, 2))
        with torch.no_grad():
            model[0].weight[0, 0] = 0.5
        with pytest.raises(ValueError, match=r"0 \(BinaryLinear\): a weight used as is .* exactly -1 and \+1"):
            pack_model(model)

    def test_the_command_line_says_it_in_one_line(self, tmp_path, capsys, monkeypatch):
        from torchbop.cli import main
        from torchbop.models import MODELS
        from torchbop.training.config import TrainConfig

        class Gelu(nn.Module):  # a registered model with a layer the engine cannot run
            def __init__(self, mode: str = "bop") -> None:
                super().__init__()
                self.conv = BinaryConv2d(3, 4, 3, mode=mode, input_quantizer=None)
                self.act = nn.GELU()

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.act(self.conv(x)).flatten(1)

        monkeypatch.setitem(MODELS, "gelu_net", Gelu)
        config = TrainConfig(model="gelu_net", dataset="cifar10", name="g")
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        state = {f"model.{k}": v for k, v in Gelu().state_dict().items()}
        torch.save(
            {"hyper_parameters": {"config": config.to_dict()}, "state_dict": state, "global_step": 1},
            tmp_path / "run" / "checkpoints" / "last.ckpt",
        )
        assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "g.tbop")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("torchbop export: error:")
        assert "act (GELU): module type GELU is not supported" in err
        assert not (tmp_path / "g.tbop").exists()


def test_a_packed_model_is_inference_only():
    packed = pack_model(randomized(Everything(), 5))
    with pytest.raises(RuntimeError, match="inference only"):
        packed.train()
    assert not packed(inputs(6)).requires_grad


def test_a_corrupt_network_is_a_user_error(tmp_path):
    from torchbop.deploy.packed_format import write_packed

    write_packed(
        tmp_path / "x.tbop",
        {"network": {"nodes": [{"name": "a", "op": "nope", "inputs": ["input"]}], "output": "a"}},
        {},
    )
    with pytest.raises(UserError, match="x.tbop: malformed network description .*unknown op 'nope'"):
        load_packed(tmp_path / "x.tbop")
