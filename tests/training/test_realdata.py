"""The shipped MNIST recipe on the real dataset, a handful of steps (skips without the data; fails in CI)."""

from __future__ import annotations

import pytest

from torchbop.cli import main
from torchbop.training import load_recipe, train


@pytest.mark.realdata
def test_mnist_recipe_a_few_steps(data_dir, tmp_path):
    config = load_recipe(
        "mnist",
        [
            f"data_dir={data_dir}",
            f"out={tmp_path}",
            "epochs=1",
            "limit_train_batches=30",
            "limit_eval_batches=2",
            "progress_bar=false",
            "accelerator=cpu",
        ],
    )
    result = train(config, loggers=False)
    assert result["global_step"] == 30 and result["train_images"] == 30 * config.batch_size
    assert result["dataset"] == "mnist" and result["protocol"] == "original"
    assert result["test_acc"] > 0.15  # chance is 0.1; 30 steps reach about 0.25, a full epoch about 0.95


@pytest.mark.realdata
def test_cli_prints_test_accuracy(data_dir, tmp_path, capsys):
    code = main(
        [
            "train",
            "--recipe",
            "mnist",
            "--data-dir",
            str(data_dir),
            "--out",
            str(tmp_path),
            "--epochs",
            "1",
            "--set",
            "limit_train_batches=5",
            "--set",
            "limit_eval_batches=1",
            "--no-progress",
            "--accelerator",
            "cpu",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out and "protocol original" in out
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "summary.json").is_file()


@pytest.mark.realdata
def test_cli_resume_takes_the_config_from_the_checkpoint(data_dir, tmp_path, capsys):
    common = ["--no-progress", "--accelerator", "cpu"]
    assert (
        main(
            [
                "train",
                "--recipe",
                "mnist",
                "--data-dir",
                str(data_dir),
                "--out",
                str(tmp_path),
                "--epochs",
                "1",
                "--batch-size",
                "50",
                "--set",
                "limit_train_batches=4",
                "--set",
                "limit_eval_batches=1",
                *common,
            ]
        )
        == 0
    )
    assert main(["train", "--resume", str(tmp_path), "--epochs", "2", *common]) == 0  # no --recipe
    out = capsys.readouterr().out
    assert "2 epochs, 8 steps" in out
    import torch

    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 8 and checkpoint["config"]["batch_size"] == 50
