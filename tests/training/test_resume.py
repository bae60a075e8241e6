"""Checkpoints: a killed run resumed from its last checkpoint ends bit-for-bit where an uninterrupted run ends;
checkpoint writes are atomic."""

from __future__ import annotations

import os

import pytest
import torch

from torchbop.errors import UserError
from torchbop.training import Observer, train
from torchbop.training.checkpoints import load_checkpoint, save_checkpoint

#: what a checkpoint holds besides the model and the optimizer, compared between the runs
RUN_STATE = (
    "scheduler",
    "epoch",
    "batch",
    "epochs_completed",
    "stopped_early",
    "rng",
    "epoch_state",
    "early_stop",
    "best_val_loss",
    "observers",
)


class Kill(Observer):
    """Simulates a crash: raises at the start of training batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_batch_start(self, run, batch):
        if run.epoch == self.epoch and run.batch == self.batch:
            raise RuntimeError("simulated crash")


class EpochFlips(Observer):
    def __init__(self) -> None:
        self.flips: dict[int, int] = {}

    def on_epoch_end(self, run, metrics):
        self.flips[run.epoch] = int(run.counter.epoch_total)


def renamed(obj, old: str, new: str):
    """``obj`` with ``old`` replaced by ``new`` in every string (keys included): checkpoints record their paths."""
    if isinstance(obj, dict):
        return {renamed(k, old, new): renamed(v, old, new) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(renamed(v, old, new) for v in obj)
    return obj.replace(old, new) if isinstance(obj, str) else obj


def assert_same(a, b, path="") -> None:
    """Recursive equality: tensors with torch.equal (bit-for-bit), everything else with ==."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path


@pytest.mark.parametrize("every_n_steps", [None, 3], ids=["epoch-checkpoints", "mid-epoch-checkpoints"])
def test_resume_after_kill_equals_uninterrupted(tiny_config, synthetic, tmp_path, every_n_steps):
    # 8 steps per epoch; the crash is at step 6 of epoch 1. With checkpoints every 3 steps the last one is from
    # step 12 (mid-epoch 1): the resumed run must skip exactly the 4 batches of epoch 1 already consumed.
    common = dict(
        epochs=3, gamma_decay=0.5, gamma_decay_every=1, early_stop_flip_epochs=3, checkpoint_every_n_steps=every_n_steps
    )
    full_flips, resumed_flips = EpochFlips(), EpochFlips()
    full = train(
        tiny_config(out=str(tmp_path / "full"), **common), data=synthetic, loggers=False, observers=[full_flips]
    )

    killed = tiny_config(out=str(tmp_path / "killed"), **common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(killed, data=synthetic, loggers=False, observers=[Kill(epoch=1, batch=6)])
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == (12 if every_n_steps else 8)

    resumed = train(
        killed.replace(resume=str(tmp_path / "killed")), data=synthetic, loggers=False, observers=[resumed_flips]
    )
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["global_step"] == b["global_step"] == 24 and a["epoch"] == b["epoch"]
    assert_same(a["model"], b["model"], "model")
    assert_same(a["optimizer"], b["optimizer"], "optimizer")  # Bop's m, Adam's moments, steps
    assert any("exp_avg" in s and "flips" in s for s in a["optimizer"]["state"].values())  # Bop's m (torch's shape)
    # schedule, early-stopping counter, RNG states, epoch sums, best validation loss: the checkpoint names no path
    assert_same({k: a[k] for k in RUN_STATE}, {k: b[k] for k in RUN_STATE}, "run state")
    assert resumed["test_acc"] == full["test_acc"]
    for epoch, flips in resumed_flips.flips.items():  # the interrupted epoch's flips are counted in full
        assert flips == full_flips.flips[epoch]


def test_resume_from_a_finished_run_extends_it(tiny_config, synthetic, tmp_path):
    """Training 1 epoch and resuming to 2 equals training 2 epochs (--resume with a larger --epochs)."""
    two = train(tiny_config(out=str(tmp_path / "two"), epochs=2), data=synthetic, loggers=False)
    one = tiny_config(out=str(tmp_path / "one"), epochs=1)
    train(one, data=synthetic, loggers=False)
    extended = train(
        one.replace(epochs=2, resume=str(tmp_path / "one" / "checkpoints" / "last.ckpt")), data=synthetic, loggers=False
    )
    a = torch.load(two["last_checkpoint"], weights_only=True)
    b = torch.load(extended["last_checkpoint"], weights_only=True)
    assert_same(a["model"], b["model"])
    assert_same(a["optimizer"], b["optimizer"])


def test_resume_missing_checkpoint(tiny_config, synthetic, tmp_path):
    with pytest.raises(UserError, match="nothing: no checkpoint to resume from"):
        train(tiny_config(resume=str(tmp_path / "nothing")), data=synthetic, loggers=False)


class TestAtomicCheckpoint:
    def test_failed_write_leaves_previous_checkpoint(self, tmp_path, monkeypatch):
        path = tmp_path / "ckpts" / "last.ckpt"
        save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
        before = path.read_bytes()

        def crash_midway(obj, f, *args, **kwargs):
            f.write(b"partial checkpoint bytes")
            raise OSError("disk full")

        monkeypatch.setattr(torch, "save", crash_midway)
        with pytest.raises(OSError, match="disk full"):
            save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
        assert path.read_bytes() == before
        assert torch.load(path)["step"] == 1
        assert os.listdir(path.parent) == ["last.ckpt"]  # no temporary file left behind

    def test_successful_write_replaces(self, tmp_path):
        path = tmp_path / "last.ckpt"
        save_checkpoint({"step": 1}, path)
        save_checkpoint({"step": 2}, path)
        assert load_checkpoint(path)["step"] == 2 and os.listdir(tmp_path) == ["last.ckpt"]


class TestEarlierFormat:
    """A checkpoint of the Lightning engine (tests/training/data, written by torchbop at e0bdf48's parent)."""

    PATH = os.path.join(os.path.dirname(__file__), "data", "lightning_2.6_checkpoint.pt")

    def test_its_weights_load(self):
        import torchbop

        model = torchbop.load_model(self.PATH)
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)[:2].float() / 127.5 - 1
        assert not model.training and type(model).__name__ == "BinaryNet"
        with torch.no_grad():  # the logits the Lightning engine's model computed from these weights
            logits = model(x)[:, :3]
        expected = torch.tensor([[-4.3456, -1.9373, 1.3769], [-2.6247, -3.2452, 7.2140]])
        assert torch.allclose(logits, expected, atol=1e-4)

    def test_resuming_it_is_refused_in_one_line(self, tiny_config, synthetic, tmp_path):
        with pytest.raises(UserError) as error:
            train(tiny_config(resume=self.PATH, out=str(tmp_path / "continued")), data=synthetic, loggers=False)
        message = str(error.value)
        assert "\n" not in message and "earlier Lightning engine" in message and "cannot resume" in message
        assert not (tmp_path / "continued").exists()
