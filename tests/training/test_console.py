"""What a run prints: one line per epoch with --no-progress, and nothing else: no advertisement, no device banner,
no warning (the loop is torchbop's own; Fabric prints none of the Trainer's messages)."""

from __future__ import annotations

import re
import warnings

import pytest

from torchbop.training import train

LINE = re.compile(r"^epoch (\d+)/(\d+): train loss (\S+) acc (\S+), val loss (\S+) acc (\S+), (\d+) flips, [\d.]+ s$")


def test_one_line_per_epoch_without_progress_bar(tiny_config, synthetic, capsys):
    result = train(tiny_config(epochs=3), data=synthetic, loggers=False)  # tiny_config: progress_bar=False
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m[1], m[2]) for m in parsed] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert all(int(m[7]) > 0 for m in parsed)
    last = parsed[-1]
    assert float(last[5]) == pytest.approx(result["val_loss"], abs=1e-4)
    assert float(last[6]) == pytest.approx(result["val_acc"], abs=1e-4)


def test_no_epoch_lines_with_the_progress_bar(tiny_config, synthetic, capsys):
    train(
        tiny_config(epochs=1, progress_bar=True, limit_train_batches=2, limit_eval_batches=1),
        data=synthetic,
        loggers=False,
    )
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1:")]


def test_without_validation_the_line_has_no_val_part(tiny_config, synthetic, capsys):
    train(tiny_config(epochs=1, limit_eval_batches=0), data=synthetic, loggers=False)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert re.match(r"^epoch 1/1: train loss \S+ acc \S+, \d+ flips, [\d.]+ s$", line), line


def test_a_run_and_its_resume_print_nothing_but_their_lines(tiny_config, synthetic, tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = tiny_config(
            epochs=1, log_every_n_steps=50, limit_train_batches=2, limit_eval_batches=1, out=str(tmp_path / "run")
        )
        train(config, data=synthetic)  # 2 batches per epoch < 50, with loggers
        train(config.replace(epochs=2, resume=str(tmp_path / "run")), data=synthetic)  # its checkpoints are there
        warnings.warn("an unrelated warning", FutureWarning)
    assert [str(w.message) for w in caught] == ["an unrelated warning"]  # the filter shows warnings: ours only
    captured = capsys.readouterr()
    assert [line.split(":")[0] for line in captured.out.splitlines()] == ["epoch 1/1", "epoch 2/2"]
    assert captured.err == ""
