"""What a run prints: one line per epoch with --no-progress, and no Lightning advertisement or known-noise warnings
(while other warnings still show)."""

from __future__ import annotations

import logging
import re
import warnings

import lightning as L
import pytest

from torchbop.training import train
from torchbop.training.console import ADVERTISEMENT, quiet_lightning

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
    train(tiny_config(epochs=1, progress_bar=True, limit_train_batches=2, limit_eval_batches=1), data=synthetic,
          loggers=False)
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1:")]


def test_without_validation_the_line_has_no_val_part(tiny_config, synthetic, capsys):
    train(tiny_config(epochs=1, limit_eval_batches=0), data=synthetic, loggers=False)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert re.match(r"^epoch 1/1: train loss \S+ acc \S+, \d+ flips, [\d.]+ s$", line), line


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def lightning_messages():
    """What Lightning logs (its own handler prints these on stderr), collected at its package logger."""
    handler = Records()
    logger = logging.getLogger("lightning.pytorch")
    # `torchbop experiment` raises these loggers' levels for its many runs; in one test process that may have run.
    names = ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.INFO)  # Lightning's own default
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_no_advertisement(lightning_messages, monkeypatch):
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert any(m.startswith("GPU available") for m in lightning_messages)  # Lightning's messages do get through
    assert not any(ADVERTISEMENT in m or "litlogger" in m for m in lightning_messages)
    # ... because of the filter: without it the Trainer advertises
    import lightning_utilities.core.rank_zero as rank_zero

    monkeypatch.setattr(rank_zero.log, "filters", [])
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert any(m.startswith(ADVERTISEMENT) for m in lightning_messages)


NOISE = ("`isinstance(treespec, LeafSpec)` is deprecated", "is smaller than the logging interval",
         "checkpoints exists and is not empty")


@pytest.mark.parametrize("quiet", [False, True], ids=["lightning-as-is", "quiet"])
def test_known_noise_warnings_are_filtered_and_others_are_not(tiny_config, synthetic, tmp_path, quiet, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # pytest's per-test filters dropped the ones installed at import
        if quiet:
            quiet_lightning()
        config = tiny_config(epochs=1, log_every_n_steps=50, limit_train_batches=2, limit_eval_batches=1,
                             out=str(tmp_path / "run"))
        train(config, data=synthetic)  # 2 batches per epoch < 50, with loggers
        train(config.replace(epochs=2, resume=str(tmp_path / "run")), data=synthetic)  # its checkpoints are there
        warnings.warn("an unrelated warning", FutureWarning)
    messages = [str(w.message) for w in caught]
    assert "an unrelated warning" in messages
    for noise in NOISE:
        assert any(noise in m for m in messages) != quiet, noise
    assert ADVERTISEMENT not in capsys.readouterr().err
