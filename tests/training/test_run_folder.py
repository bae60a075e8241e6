"""Run folders: a run continues in the folder it is resumed from, never writes over another run, a finished run is
left alone, summaries are strict JSON, and checkpoints are read with weights_only=True (a bad one is named)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from torchbop.errors import UserError
from torchbop.training import train
from torchbop.training.checkpoints import load_checkpoint

from .test_resume import RUN_STATE, assert_same


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def one_epoch(tiny_config, synthetic, tmp_path):
    """A finished 1-epoch run in tmp_path/original, and its config."""
    config = tiny_config(out=str(tmp_path / "original"), epochs=1)
    train(config, data=synthetic, loggers=False)
    return config


class TestResumeFolder:
    def test_resuming_a_copy_writes_only_into_the_copy(self, one_epoch, synthetic, tiny_config, tmp_path):
        original, copy = tmp_path / "original", tmp_path / "copy"
        shutil.copytree(original, copy)
        before = snapshot(original)
        result = train(one_epoch.replace(out=None, resume=str(copy), epochs=2), data=synthetic, loggers=False)
        assert snapshot(original) == before  # byte-identical, not even touched
        assert Path(result["out_dir"]) == copy and result["epochs"] == 2
        assert Path(result["best_checkpoint"]).parent == (copy / "checkpoints").resolve()
        assert json.loads((copy / "summary.json").read_text())["epochs"] == 2

        # The copy carries on as the uninterrupted run does (best score kept; the checkpoints name no path).
        full = train(tiny_config(out=str(tmp_path / "full"), epochs=2), data=synthetic, loggers=False)
        a = torch.load(full["last_checkpoint"], weights_only=True)
        b = torch.load(result["last_checkpoint"], weights_only=True)
        assert_same({k: a[k] for k in RUN_STATE}, {k: b[k] for k in RUN_STATE})
        assert_same(a["model"], b["model"])
        assert str(tmp_path) not in repr({k: v for k, v in b.items() if k not in ("model", "optimizer", "config")})

    def test_resumed_copy_keeps_the_best_score(self, one_epoch, synthetic, tmp_path):
        """A moved folder keeps its best validation loss: the copy's next epoch is "best" only if it is lower, and
        the test of the best weights reads the copy's own best.ckpt."""
        shutil.copytree(tmp_path / "original", tmp_path / "copy")
        stored = torch.load(tmp_path / "copy" / "checkpoints" / "last.ckpt", weights_only=True)
        assert stored["best_val_loss"] is not None
        result = train(
            one_epoch.replace(out=None, resume=str(tmp_path / "copy"), epochs=2), data=synthetic, loggers=False
        )
        assert result["best_val_loss"] <= stored["best_val_loss"]
        assert Path(result["best_checkpoint"]) == (tmp_path / "copy" / "checkpoints" / "best.ckpt").resolve()

    def test_resuming_from_another_directory_writes_only_into_the_run(
        self, one_epoch, synthetic, tmp_path, monkeypatch
    ):
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        stored = one_epoch.replace(out="runs/tiny")  # a relative out, as recipes have, recorded elsewhere
        result = train(
            stored.replace(out=None, resume=str(tmp_path / "original"), epochs=2), data=synthetic, loggers=False
        )
        assert list(elsewhere.iterdir()) == []
        assert Path(result["out_dir"]) == tmp_path / "original" and result["epochs"] == 2

    def test_out_must_be_the_resumed_folder(self, one_epoch, synthetic, tmp_path):
        with pytest.raises(UserError, match="--out .*other differs from the folder being resumed"):
            train(
                one_epoch.replace(out=str(tmp_path / "other"), resume=str(tmp_path / "original")),
                data=synthetic,
                loggers=False,
            )
        assert not (tmp_path / "other").exists()

    def test_a_loose_checkpoint_continues_in_out(self, one_epoch, synthetic, tmp_path):
        loose = tmp_path / "shared.ckpt"
        shutil.copy(tmp_path / "original" / "checkpoints" / "last.ckpt", loose)
        with pytest.raises(UserError, match="give --out"):
            train(one_epoch.replace(out=None, resume=str(loose), epochs=2), data=synthetic, loggers=False)
        result = train(
            one_epoch.replace(out=str(tmp_path / "continued"), resume=str(loose), epochs=2),
            data=synthetic,
            loggers=False,
        )
        assert result["epochs"] == 2 and (tmp_path / "continued" / "checkpoints" / "last.ckpt").is_file()


class TestNewRunFolder:
    def test_refuses_a_folder_that_holds_a_run(self, one_epoch, synthetic, tmp_path):
        before = snapshot(tmp_path / "original")
        with pytest.raises(UserError, match="already holds a run .*--resume .*--out.*--overwrite"):
            train(one_epoch, data=synthetic, loggers=False)
        assert snapshot(tmp_path / "original") == before

    def test_overwrite_replaces_the_run_and_keeps_other_files(self, one_epoch, synthetic, tmp_path):
        notes = tmp_path / "original" / "notes.txt"
        notes.write_text("mine")
        stale = tmp_path / "original" / "checkpoints" / "epoch=7.ckpt"
        stale.write_bytes(b"old")
        result = train(one_epoch.replace(epochs=2), data=synthetic, loggers=False, overwrite=True)
        assert result["epochs"] == 2 and notes.read_text() == "mine" and not stale.exists()


class TestFinishedRun:
    def test_resuming_a_finished_run_changes_nothing(self, one_epoch, synthetic, tmp_path):
        before = snapshot(tmp_path / "original")
        result = train(one_epoch.replace(resume=str(tmp_path / "original")), data=synthetic, loggers=False)
        assert result["already_finished"] and result["epochs"] == 1
        assert result["val_acc"] == json.loads((tmp_path / "original" / "summary.json").read_text())["val_acc"]
        assert snapshot(tmp_path / "original") == before

    def test_more_epochs_continue_it(self, one_epoch, synthetic, tmp_path):
        result = train(one_epoch.replace(resume=str(tmp_path / "original"), epochs=2), data=synthetic, loggers=False)
        assert "already_finished" not in result and result["epochs"] == 2

    def test_the_cli_says_it_is_finished(self, one_epoch, tmp_path, capsys):
        from torchbop.cli import main

        before = snapshot(tmp_path / "original")
        assert main(["train", "--resume", str(tmp_path / "original")]) == 0
        assert "already finished (1 epochs" in capsys.readouterr().out
        assert snapshot(tmp_path / "original") == before


class TestRefusedBeforeWriting:
    def test_training_set_smaller_than_a_batch(self, tiny_config, synthetic, tmp_path):
        # the configuration itself refuses it now (batch_size against the dataset's training images)
        with pytest.raises(ValueError, match="Invalid batch_size value: 32 \\(more than the 20 training images"):
            train(tiny_config(subset=20, batch_size=32), data=synthetic, loggers=False)
        assert not (tmp_path / "run").exists()

    def test_optimizer_hyperparameters(self, tiny_config, synthetic, tmp_path):
        with pytest.raises(ValueError, match="Invalid gamma value: 2.0"):
            train(tiny_config(gamma=2.0), data=synthetic, loggers=False)
        assert not (tmp_path / "run").exists()


def test_summary_is_strict_json(tiny_config, synthetic, tmp_path):
    """Without evaluation there is no test accuracy: null, not NaN (which strict parsers reject)."""
    train(tiny_config(epochs=1, limit_eval_batches=0), data=synthetic, loggers=False)
    text = (tmp_path / "run" / "summary.json").read_text()

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    summary = json.loads(text, parse_constant=refuse)
    assert summary["test_acc"] is None and summary["global_step"] == 8


class Exploit:
    """Unpickling this runs ``os.system``: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class TestCheckpointLoading:
    def test_a_crafted_checkpoint_never_runs(self, tmp_path, capsys):
        import torchbop
        from torchbop.cli import main

        marker = tmp_path / "pwned"
        evil = tmp_path / "evil" / "checkpoints" / "last.ckpt"
        evil.parent.mkdir(parents=True)
        torch.save({"state_dict": {}, "payload": Exploit(marker)}, evil)
        with pytest.raises(UserError, match="refused to load"):
            load_checkpoint(evil)
        with pytest.raises(UserError, match="refused to load"):
            torchbop.load_model(evil)  # the path summary, export and the experiments take
        assert main(["train", "--resume", str(tmp_path / "evil")]) == 2
        assert "refused to load" in capsys.readouterr().err
        assert not marker.exists()

    def test_truncated_last_checkpoint_names_an_intact_one(self, one_epoch, synthetic, tmp_path):
        last = tmp_path / "original" / "checkpoints" / "last.ckpt"
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        with pytest.raises(
            UserError,
            match=r"last.ckpt: truncated or not a torch checkpoint.*newest intact "
            r"checkpoint there is .*best.ckpt \(step 8\)",
        ):
            train(one_epoch.replace(resume=str(tmp_path / "original"), epochs=2), data=synthetic, loggers=False)

    def test_garbage_without_an_alternative(self, tmp_path):
        bad = tmp_path / "x.ckpt"
        bad.write_bytes(os.urandom(1000))
        with pytest.raises(UserError, match="x.ckpt: truncated or not a torch checkpoint.*No other intact"):
            load_checkpoint(bad)
