"""A killed invocation's runs continue from their last checkpoint next time; concurrent invocations share the work.

These tests start ``torchbop experiment`` as a user does, in subprocesses: one killed with SIGKILL in the middle of an
epoch, then invoked again; two at once on one results folder. The killed one runs :class:`Resumable`, an experiment
defined here whose training runs checkpoint every 2 steps; :func:`cli` registers it and, with ``kill_at_step``, makes
the process SIGKILL itself right after that optimizer step (a checkpoint of a step before it is on disk by then).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from torchbop.experiments import configure, registry, run_experiment
from torchbop.experiments.common import (load_data, run_config, seeded_model, stored_train_config, train_run,
                                         train_stored_run)
from torchbop.experiments.run_lock import RunLock
from torchbop.experiments.spec import RunContext, RunSpec
from torchbop.training import TrainConfig
from torchbop.training.checkpoints import load_checkpoint

HERE = Path(__file__).resolve().parent
#: Measured, not computed: they differ between an interrupted and an uninterrupted run.
TIMING = ("wall_time_s", "train_images_per_s")


class Resumable:
    """An experiment (the protocol's names as class attributes) of plain training runs: the MNIST BNN on 256
    images, 2 epochs of 8 steps, a checkpoint every 2 steps."""

    NAME = "resumable"
    TITLE = "Resumable training runs"
    VERSION = 1
    KEEP_RUN_DIR = False
    NOT_SCALE: frozenset[str] = frozenset()

    @dataclasses.dataclass(frozen=True)
    class Config:
        seeds: int = 1
        epochs: int = 2

    CONFIGS = {"paper": Config(), "quick": Config(), "smoke": Config()}

    @staticmethod
    def datasets(config: Any) -> tuple[str, ...]:
        return ("mnist",)

    @staticmethod
    def plan(config: Any) -> list[RunSpec]:
        return [RunSpec(Resumable.NAME, f"seed{seed}", {"subset": 256, "test_subset": 128, "train": stored_train_config(
            TrainConfig(name="resumable", model="mnist_bnn", dataset="mnist", protocol="original", batch_size=32,
                        epochs=config.epochs, seed=seed, checkpoint_every_n_steps=2, precision="32"))})
                for seed in range(config.seeds)]

    @staticmethod
    def execute(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
        result, history, _ = train_stored_run(params, ctx, "mnist", per_step=True)
        return {**result, "history": history}

    @staticmethod
    def describe(result: dict[str, Any]) -> str:
        return f"test accuracy {result['test_acc']:.4f} after {result['global_step']} steps"

    @staticmethod
    def summarize(records: list[dict[str, Any]], config: Any) -> dict[str, Any]:
        return {"tables": {}}

    @staticmethod
    def plot(fig: Any, records: list[dict[str, Any]], summary: dict[str, Any], config: Any) -> None:
        fig.subplots().plot([r["result"]["test_acc"] for r in records])


def cli(argv: list[str], kill_at_step: int | None = None) -> int:
    """``torchbop`` with :class:`Resumable` registered; with ``kill_at_step``, SIGKILL after that training step."""
    from torchbop.cli import main
    from torchbop.training.history import History

    registry.EXPERIMENTS[Resumable.NAME] = Resumable
    if kill_at_step is not None:
        record = History.on_train_batch_end

        def on_train_batch_end(self, trainer, *args):
            record(self, trainer, *args)
            if trainer.global_step == kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)

        History.on_train_batch_end = on_train_batch_end
    return main(argv)


def invoke(results: Path, data_dir: Path, *args: str, experiment: str = Resumable.NAME,
           kill_at_step: int | None = None) -> subprocess.Popen:
    """Start ``torchbop experiment EXPERIMENT --profile smoke`` on ``results`` (stdout and stderr in one pipe)."""
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_resume_and_locks as t; "
            f"sys.exit(t.cli(sys.argv[1:], {kill_at_step!r}))")
    argv = ["experiment", experiment, "--profile", "smoke", "--results-dir", str(results), "--data-dir",
            str(data_dir), "--threads", "1", *args]
    return subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def records(folder: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted((folder / "runs").glob("*.json"))}


def without_timing(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in TIMING}


@pytest.mark.realdata
def test_a_killed_run_continues_mid_epoch_and_ends_as_an_uninterrupted_one(tmp_path, data_dir, monkeypatch):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    code, out = finish(invoke(killed, data_dir, kill_at_step=5))  # 8 steps an epoch: killed in the first
    assert code == -signal.SIGKILL, out
    folder = killed / "smoke" / Resumable.NAME
    (run_dir,) = [p for p in (folder / "runs").iterdir() if p.is_dir()]
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4  # mid-epoch, not stored
    assert records(folder) == {}

    code, out = finish(invoke(killed, data_dir))
    assert code == 0, out
    assert out.count("started") == 1 and out.index("resuming from step 4") < out.index("epoch 1/2:"), out
    monkeypatch.setitem(registry.EXPERIMENTS, Resumable.NAME, Resumable)
    run_experiment(Resumable.NAME, configure("smoke", Resumable.NAME), profile="smoke", results_root=reference,
                   data_dir=str(data_dir), threads=1, verbose=False, log=lambda message: None)
    (resumed,), (expected,) = records(folder).values(), records(reference / "smoke" / Resumable.NAME).values()
    assert resumed["key"] == expected["key"]
    assert without_timing(resumed["result"]) == without_timing(expected["result"])  # bit-exact: the same floats
    history = resumed["result"]["history"]
    assert [row["epoch"] for row in history["epochs"]] == [1, 2] and len(history["steps"]["pi_t"]) == 16
    assert not run_dir.exists()  # a stored run's scratch folder is removed


@pytest.mark.realdata
def test_a_finished_but_unstored_training_run_restores_its_model_and_history(tmp_path, data_dir):
    # killed after train() finished but before the run's record was written (in an experiment's later phase)
    (spec,) = Resumable.plan(Resumable.Config(epochs=1))
    config = run_config(spec.params["train"], tmp_path / "run")
    data = load_data("mnist", str(data_dir), 256, 128)
    runs = []
    for attempt in ("fresh", "resumed at its end"):
        model = seeded_model(config)
        result, history = train_run(config, data, model, per_step=True)
        runs.append((without_timing(result), history, model.state_dict()))
    (result, history, weights), (again, history_again, weights_again) = runs
    assert again == result and history_again == history and len(history["steps"]["pi_t"]) == 8
    assert all(weights[name].equal(weights_again[name]) for name in weights)  # the trained weights, not the initial


@pytest.mark.realdata
def test_two_concurrent_invocations_share_the_runs(tmp_path, data_dir):
    first, second = (invoke(tmp_path, data_dir, experiment="arbitrary-lr") for _ in range(2))
    outputs = []
    for process in (first, second):
        code, out = finish(process)
        assert code == 0, out
        assert "FAILED" not in out
        outputs.append(out)
    folder = tmp_path / "smoke" / "arbitrary-lr"
    manifest = json.loads((folder / "manifest.json").read_text())
    stored = records(folder)
    assert sorted(stored) == sorted(run["key"] for run in manifest["runs"]) and len(stored) == 7
    assert all(r["result"] and r["key"] == key for key, r in stored.items())
    executed = [[line.split()[1].rstrip(":") for line in out.splitlines()
                 if line.startswith("[") and "run by another invocation" not in line] for out in outputs]
    assert sorted(executed[0] + executed[1]) == sorted(run["label"] for run in manifest["runs"])  # each run once
    assert not list((folder / "runs").glob("*.lock")) and not [p for p in (folder / "runs").iterdir() if p.is_dir()]


class TestRunLock:
    def test_one_holder_at_a_time_and_released_when_the_holder_dies(self, tmp_path):
        path = tmp_path / "run.lock"
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                                   "from torchbop.experiments.run_lock import RunLock; RunLock(sys.argv[2]).acquire();"
                                   " print('held', flush=True); time.sleep(60)", str(HERE), str(path)],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline() == "held\n"
        with RunLock(path) as lock:
            assert not lock.acquire()
            holder.kill()
            holder.wait()
            assert lock.acquire(wait=True)  # the kernel released the dead holder's lock
            lock.done()
        assert not path.exists()
