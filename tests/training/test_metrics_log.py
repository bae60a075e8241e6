"""The run folder's metric logs: one CSV table (and one TensorBoard folder) per run, continued across a kill and a
resume, equal to the uninterrupted run's, epoch metrics of the interrupted epoch included."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from torchbop.training import Observer, train
from torchbop.training.run_logs import RunCSVLogger, read_metrics


class HardKill(Observer):
    """A crash as SIGKILL leaves it: at the start of batch ``batch`` of epoch ``epoch`` the run folder is copied
    to ``snapshot`` (what is on disk at that instant), then the run raises; the test puts the snapshot back, so
    nothing written while unwinding counts."""

    def __init__(self, epoch: int, batch: int, folder: Path, snapshot: Path) -> None:
        self.epoch, self.batch, self.folder, self.snapshot = epoch, batch, folder, snapshot

    def on_batch_start(self, run, batch):
        if run.epoch == self.epoch and run.batch == self.batch:
            shutil.copytree(self.folder, self.snapshot)
            raise RuntimeError("simulated crash")


def table(run: Path) -> list[dict[str, str]]:
    files = sorted((run / "csv").glob("*/metrics.csv"))
    assert [f.parent.name for f in files] == ["version_0"]  # one table per run folder
    return read_metrics(files[0])


@pytest.mark.parametrize("every_n_steps", [None, 3], ids=["epoch-checkpoints", "mid-epoch-checkpoints"])
def test_killed_and_resumed_run_logs_the_uninterrupted_table(tiny_config, synthetic, tmp_path, every_n_steps):
    # 8 steps per epoch; the crash is at the start of step 15 (epoch 1, batch 6). The last checkpoint is from step 8
    # (end of epoch 0) or step 12 (mid-epoch 1, with checkpoints every 3 steps).
    common = dict(epochs=3, gamma_decay=0.5, gamma_decay_every=1, checkpoint_every_n_steps=every_n_steps)
    train(tiny_config(out=str(tmp_path / "full"), **common), data=synthetic)
    full = table(tmp_path / "full")

    run, snapshot = tmp_path / "killed", tmp_path / "at-kill"
    killed = tiny_config(out=str(run), **common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(killed, data=synthetic, observers=[HardKill(1, 6, run, snapshot)])
    shutil.rmtree(run)
    shutil.copytree(snapshot, run)
    resume_step = 12 if every_n_steps else 8
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == resume_step

    # What the kill left: every row logged before the checkpoint (and more: rows are written as they come)
    at_kill = table(run)
    before = [row for row in at_kill if int(row["step"]) < resume_step]
    assert before == [row for row in full if int(row["step"]) < resume_step]
    assert max(int(row["step"]) for row in at_kill) >= resume_step  # rows the resumed run will log again

    train(killed.replace(resume=str(run)), data=synthetic)
    resumed = table(run)
    assert [row["step"] for row in resumed] == [row["step"] for row in full]
    assert resumed == full  # same rows, same values (the columns hold no times)

    # the interrupted epoch's own row: its mean loss and accuracy over all 8 batches, its gamma, its flips
    epoch_rows = [row for row in resumed if "train_loss_epoch" in row]
    assert [row["epoch"] for row in epoch_rows] == ["0", "1", "2"]
    assert {"gamma", "threshold", "epoch_flips", "train_acc_epoch"} <= set(epoch_rows[1])
    assert float(epoch_rows[1]["gamma"]) == pytest.approx(1e-2 * 0.5, rel=1e-6)
    step_losses = [float(r["train_loss_step"]) for r in resumed if r["epoch"] == "1" and "train_loss_step" in r]
    assert len(step_losses) == 8
    assert float(epoch_rows[1]["train_loss_epoch"]) == pytest.approx(sum(step_losses) / 8, rel=1e-5)

    # TensorBoard: both processes wrote into tb/version_0; the resumed one purged the steps it logged again
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert [p.name for p in (run / "tb").iterdir()] == ["version_0"]
    files = [len(list((f / "tb" / "version_0").glob("events.out.tfevents.*"))) for f in (tmp_path / "full", run)]
    assert files == [1, 2]  # one per process: the killed process's file too
    views = []
    for folder in (tmp_path / "full", run):
        events = EventAccumulator(str(folder / "tb" / "version_0"))
        events.Reload()
        views.append(
            {
                tag: [(e.step, e.value) for e in events.Scalars(tag)]
                for tag in ("train_loss_step", "pi_t", "train_loss_epoch", "gamma", "val_acc")
            }
        )
    assert views[0] == views[1]


def test_epoch_metrics_are_means_over_the_epoch(tiny_config, synthetic, tmp_path):
    train(tiny_config(epochs=2, limit_eval_batches=0), data=synthetic)
    rows = table(tmp_path / "run")
    for epoch in ("0", "1"):
        steps = [row for row in rows if row["epoch"] == epoch and "train_acc_step" in row]
        (end,) = [row for row in rows if row["epoch"] == epoch and "train_acc_epoch" in row]
        assert len(steps) == 8  # log_every_n_steps=1
        # equal batches of 32: the epoch mean is the mean of the step values
        assert float(end["train_acc_epoch"]) == pytest.approx(sum(float(r["train_acc_step"]) for r in steps) / 8)
        assert float(end["epoch_flips"]) == sum(float(r["flips"]) for r in steps)
        assert int(end["step"]) == int(steps[-1]["step"])


class TestRunCSVLogger:
    def test_resume_cuts_the_table_at_the_start_step(self, tmp_path):
        first = RunCSVLogger(tmp_path)
        for step in range(5):
            first.log_metrics({"loss": 1.0 / (step + 1), "epoch": 0}, step=step)
            first.save()
        first.log_metrics({"acc": 0.5, "epoch": 0}, step=4)  # a new column: the file is rewritten
        first.save()
        with open(first.path, "a") as f:
            f.write("0.1,0,5")  # a row cut short by a kill (no line end)
        resumed = RunCSVLogger(tmp_path)
        resumed.start_at(3)
        resumed.log_metrics({"loss": 9.0, "epoch": 0}, step=3)
        resumed.save()
        rows = read_metrics(resumed.path)
        assert [(r["step"], r["loss"]) for r in rows] == [("0", "1.0"), ("1", "0.5"), ("2", str(1 / 3)), ("3", "9.0")]
        with open(resumed.path, newline="") as f:
            assert next(csv.reader(f)) == ["epoch", "loss", "step"]  # "acc" was only in dropped rows

    def test_fresh_start_and_standalone_use(self, tmp_path):
        old = RunCSVLogger(tmp_path)
        old.log_metrics({"loss": 1.0}, step=0)
        old.log_metrics({"loss": 2.0}, step=1)
        old.finalize("success")
        fresh = RunCSVLogger(tmp_path)
        fresh.start_at(0)  # what ContinueLogs says for a run that is not resumed
        fresh.log_metrics({"loss": 3.0}, step=0)
        fresh.save()
        assert read_metrics(fresh.path) == [{"loss": "3.0", "step": "0"}]
        standalone = RunCSVLogger(tmp_path)  # no start step: the first row's
        standalone.log_metrics({"loss": 4.0}, step=0)
        standalone.save()
        assert read_metrics(fresh.path) == [{"loss": "4.0", "step": "0"}]
        standalone.start_at(5)  # too late: it has written
        standalone.log_metrics({"loss": 5.0}, step=1)
        standalone.save()
        assert [r["loss"] for r in read_metrics(fresh.path)] == ["4.0", "5.0"]
