"""Checkpoints: a killed run resumed from its last checkpoint ends bit-for-bit where an uninterrupted run ends;
checkpoint writes are atomic."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch

from torchbop.errors import UserError
from torchbop.training import train
from torchbop.training.callbacks import AtomicCheckpointIO, atomic_torch_save


class Kill(L.Callback):
    """Simulates a crash: raises at the start of training batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("simulated crash")


class EpochFlips(L.Callback):
    def __init__(self) -> None:
        self.flips: dict[int, int] = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.flips[trainer.current_epoch] = int(pl_module.flip_counter.epoch_total)


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
    common = dict(epochs=3, gamma_decay=0.5, gamma_decay_every=1, early_stop_flip_epochs=3,
                  checkpoint_every_n_steps=every_n_steps)
    full_flips, resumed_flips = EpochFlips(), EpochFlips()
    full = train(tiny_config(out=str(tmp_path / "full"), **common), data=synthetic, loggers=False,
                 callbacks=[full_flips])

    killed = tiny_config(out=str(tmp_path / "killed"), **common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(killed, data=synthetic, loggers=False, callbacks=[Kill(epoch=1, batch=6)])
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == (12 if every_n_steps else 8)

    resumed = train(killed.replace(resume=str(tmp_path / "killed")), data=synthetic, loggers=False,
                    callbacks=[resumed_flips])
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["global_step"] == b["global_step"] == 24 and a["epoch"] == b["epoch"]
    assert_same(a["state_dict"], b["state_dict"], "model")
    assert_same(a["optimizer_states"], b["optimizer_states"], "optimizer")  # Bop's m, Adam's moments, steps
    bop_state = a["optimizer_states"][0]["optimizers"][0]["state"]
    assert bop_state and all("exp_avg" in s for s in bop_state.values())
    assert_same(a["lr_schedulers"], b["lr_schedulers"], "schedulers")
    # early-stopping counter, RNG states, best validation loss. The run directories differ, and ModelCheckpoint's
    # `current_score` (the score of the checkpoint it last wrote, not restored by Lightning) is informational.
    callbacks_b = renamed(b["callbacks"], str(tmp_path / "killed"), str(tmp_path / "full"))
    for name in a["callbacks"]:
        a["callbacks"][name].pop("current_score", None)
        callbacks_b[name].pop("current_score", None)
    assert_same(a["callbacks"], callbacks_b, "callbacks")
    assert resumed["test_acc"] == full["test_acc"]
    for epoch, flips in resumed_flips.flips.items():  # the interrupted epoch's flips are counted in full
        assert flips == full_flips.flips[epoch]


def test_resume_from_a_finished_run_extends_it(tiny_config, synthetic, tmp_path):
    """Training 1 epoch and resuming to 2 equals training 2 epochs (--resume with a larger --epochs)."""
    two = train(tiny_config(out=str(tmp_path / "two"), epochs=2), data=synthetic, loggers=False)
    one = tiny_config(out=str(tmp_path / "one"), epochs=1)
    train(one, data=synthetic, loggers=False)
    extended = train(one.replace(epochs=2, resume=str(tmp_path / "one" / "checkpoints" / "last.ckpt")),
                     data=synthetic, loggers=False)
    a = torch.load(two["last_checkpoint"], weights_only=True)
    b = torch.load(extended["last_checkpoint"], weights_only=True)
    assert_same(a["state_dict"], b["state_dict"])
    assert_same(a["optimizer_states"], b["optimizer_states"])


def test_resume_missing_checkpoint(tiny_config, synthetic, tmp_path):
    with pytest.raises(UserError, match="nothing: no checkpoint to resume from"):
        train(tiny_config(resume=str(tmp_path / "nothing")), data=synthetic, loggers=False)


class TestAtomicCheckpoint:
    def test_failed_write_leaves_previous_checkpoint(self, tmp_path, monkeypatch):
        path = tmp_path / "ckpts" / "last.ckpt"
        atomic_torch_save({"step": 1, "w": torch.ones(3)}, path)
        before = path.read_bytes()

        def crash_midway(obj, f, *args, **kwargs):
            f.write(b"partial checkpoint bytes")
            raise OSError("disk full")

        monkeypatch.setattr(torch, "save", crash_midway)
        with pytest.raises(OSError, match="disk full"):
            AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
        assert path.read_bytes() == before
        assert torch.load(path)["step"] == 1
        assert os.listdir(path.parent) == ["last.ckpt"]  # no temporary file left behind

    def test_successful_write_replaces(self, tmp_path):
        path = tmp_path / "last.ckpt"
        io = AtomicCheckpointIO()
        io.save_checkpoint({"step": 1}, path)
        io.save_checkpoint({"step": 2}, path)
        assert io.load_checkpoint(path)["step"] == 2 and os.listdir(tmp_path) == ["last.ckpt"]


class TestResumableLoader:
    @staticmethod
    def make(consumed, epoch=None):
        from torchbop.data import DeviceLoader
        from torchbop.training.data import ResumableLoader

        images = torch.arange(20, dtype=torch.uint8).reshape(20, 1, 1, 1)
        inner = DeviceLoader(images, torch.arange(20), batch_size=4, shuffle=True, seed=0, drop_last=True)
        return ResumableLoader(inner, epoch=epoch, consumed=consumed)

    def test_epochs_are_counted_on_the_first_batch_not_on_iter(self):
        loader = self.make(lambda: 0)
        iter(loader)  # Lightning probes iterability: must not start an epoch
        first = [y.tolist() for _, y in loader]
        second = [y.tolist() for _, y in loader]
        assert loader.epoch == 1 and first != second and sorted(sum(first, [])) == list(range(20))

    def test_mid_epoch_state_skips_consumed_batches(self):
        reference = self.make(lambda: 0)
        epochs = [[y.tolist() for _, y in reference] for _ in range(2)]
        consumed = {"n": 0}
        loader = self.make(lambda: consumed["n"])
        batches = iter(loader)
        next(batches), next(batches)
        consumed["n"] = 2
        state = loader.state_dict()
        assert state == {"epoch": 0, "consumed": 2, "finished": False}
        resumed = self.make(lambda: 0)
        resumed.load_state_dict(state)
        assert [y.tolist() for _, y in resumed] == epochs[0][2:]  # the rest of epoch 0
        assert [y.tolist() for _, y in resumed] == epochs[1]  # then epoch 1 in full

    def test_finished_epoch_state_starts_the_next(self):
        loader = self.make(lambda: 5)
        list(loader)
        resumed = self.make(lambda: 0, epoch=lambda: 1)  # Lightning's restored loop counter says epoch 1
        resumed.load_state_dict(loader.state_dict())
        assert len(list(resumed)) == 5 and resumed.epoch == 1
