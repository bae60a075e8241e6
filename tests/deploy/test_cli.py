"""``torchbop summary`` and ``torchbop export`` end to end, in process: exit 0, or 2 with one line naming the fix."""

from __future__ import annotations

import pytest
import torch

from torchbop.cli import main
from torchbop.deploy import load_packed
from torchbop.models import BinaryNet
from torchbop.training.config import TrainConfig


@pytest.fixture
def run_dir(tmp_path):
    """A run folder whose checkpoints/last.ckpt holds what training writes: the config and the weights."""
    torch.manual_seed(0)
    model = BinaryNet(width=1 / 16).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
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


def test_summary_of_a_recipe(capsys):
    assert main(["summary", "--recipe", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 10,363,550 (10,352,000 binary, 11,550 float)" in out
    assert "Compression ratio of memory: 30.93" in out


def test_summary_of_a_recipe_with_width(capsys):
    assert main(["summary", "--recipe", "cifar10", "--width", "0.5"]) == 0
    assert "2,591,424 binary" in capsys.readouterr().out  # 64-64-128-128-256-256 channels, 512 units


def test_summary_of_a_checkpoint_and_of_its_run_folder(run_dir, capsys):
    folder, _ = run_dir
    assert main(["summary", "--checkpoint", str(folder)]) == 0
    by_folder = capsys.readouterr().out
    assert main(["summary", "--checkpoint", str(folder / "checkpoints" / "last.ckpt")]) == 0
    assert capsys.readouterr().out == by_folder
    assert "features.0" in by_folder


def test_export_then_load(run_dir, tmp_path, capsys):
    folder, model = run_dir
    out = tmp_path / "tiny.tbop"
    assert main(["export", str(folder), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    x = torch.rand(20, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(load_packed(out)(x), model(x))


def test_export_refuses_to_overwrite(run_dir, tmp_path, capsys):
    folder, _ = run_dir
    out = tmp_path / "tiny.tbop"
    out.write_bytes(b"keep me")
    assert main(["export", str(folder), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"keep me"
    assert main(["export", str(folder), "-o", str(out), "--overwrite"]) == 0
    assert load_packed(out) is not None


@pytest.mark.parametrize(
    "argv, match",
    [
        (["export", "{tmp}/nowhere", "-o", "{tmp}/x.tbop"], "nowhere: no such file or folder"),
        (["export", "{tmp}/garbage.ckpt", "-o", "{tmp}/x.tbop"], "truncated or not a torch checkpoint"),
        (["summary", "--checkpoint", "{tmp}/nowhere"], "nowhere: no such file or folder"),
        (["summary", "--recipe", "no-such-recipe"], "no-such-recipe"),
    ],
)
def test_user_errors(tmp_path, capsys, argv, match):
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"torchbop {argv[0]}: error:")
    assert __import__("re").search(match, err)


def test_summary_needs_a_source(capsys):
    assert main(["summary"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("torchbop summary: error:")
