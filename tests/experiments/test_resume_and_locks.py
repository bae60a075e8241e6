"""A killed invocation's runs continue from their last checkpoint next time; concurrent invocations share the work.

The slow tests start ``torchbop experiment`` as a user does, in subprocesses: one killed with SIGKILL in the middle of
an epoch, then invoked again (in the test's process); two at once on one results folder, one with two workers. The
killed one runs :class:`Resumable`, an experiment defined here whose training runs checkpoint every 2 steps; :func:`cli`
registers it and, with ``kill_at_step``, makes the process SIGKILL itself right after that optimizer step (a checkpoint
of a step before it is on disk by then). The fast tests interrupt a run in-process (an exception: the loop writes no
checkpoint on one) and compare the resumed run with an uninterrupted one: result, History and weights, bit for bit.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from torchbop.cli import main
from torchbop.experiments import configure, registry, run_experiment
from torchbop.experiments.common import (
    load_data,
    resumable_checkpoint,
    run_config,
    seeded_model,
    stored_train_config,
    train_run,
    train_stored_run,
)
from torchbop.experiments.run_clock import RunClock
from torchbop.experiments.run_lock import RunLock
from torchbop.experiments.spec import RunContext, RunSpec
from torchbop.experiments.store import jsonable
from torchbop.training import TrainConfig
from torchbop.training.checkpoints import load_checkpoint
from torchbop.training.history import History
from torchbop.training.precision import resolve_precision

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
        return [
            RunSpec(
                Resumable.NAME,
                f"seed{seed}",
                {
                    "subset": 256,
                    "test_subset": 128,
                    "train": stored_train_config(
                        TrainConfig(
                            name="resumable",
                            model="mnist_bnn",
                            dataset="mnist",
                            protocol="original",
                            batch_size=32,
                            epochs=config.epochs,
                            seed=seed,
                            checkpoint_every_n_steps=2,
                            precision="32",
                        )
                    ),
                },
            )
            for seed in range(config.seeds)
        ]

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
    registry.EXPERIMENTS[Resumable.NAME] = Resumable
    if kill_at_step is not None:
        RunClock.INTERVAL_S = 0.2  # the run's clock on disk when the kill comes
        record = History.on_batch_end

        def on_batch_end(self, run):
            record(self, run)
            if run.step == kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)

        History.on_batch_end = on_batch_end
    return main(argv)


def invoke(
    results: Path, data_dir: Path, *args: str, experiment: str = Resumable.NAME, kill_at_step: int | None = None
) -> subprocess.Popen:
    """Start ``torchbop experiment EXPERIMENT --profile smoke`` on ``results`` (stdout and stderr in one pipe)."""
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_resume_and_locks as t; "
        f"sys.exit(t.cli(sys.argv[1:], {kill_at_step!r}))"
    )
    argv = command(results, data_dir, *args, experiment=experiment)
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def command(results: Path, data_dir: Path, *args: str, experiment: str = Resumable.NAME) -> list[str]:
    return [
        "experiment",
        experiment,
        "--profile",
        "smoke",
        "--results-dir",
        str(results),
        "--data-dir",
        str(data_dir),
        "--threads",
        "1",
        *args,
    ]


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def records(folder: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted((folder / "runs").glob("*.json"))}


def without_timing(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in TIMING}


@pytest.mark.slow
@pytest.mark.realdata
def test_a_killed_invocation_continues_mid_epoch_and_ends_as_an_uninterrupted_run(
    tmp_path, data_dir, uninterrupted, monkeypatch, capsys
):
    code, out = finish(invoke(tmp_path, data_dir, kill_at_step=5))  # 8 steps an epoch: killed in the first
    assert code == -signal.SIGKILL, out
    folder = tmp_path / "smoke" / Resumable.NAME
    (run_dir,) = [p for p in (folder / "runs").iterdir() if p.is_dir()]
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4  # mid-epoch, not stored
    assert records(folder) == {}
    killed = json.loads((run_dir / RunClock.FILE).read_text())
    assert killed["elapsed_s"] > 0

    # invoked again: the same command, in this process (a second subprocess would only add its imports)
    monkeypatch.setitem(registry.EXPERIMENTS, Resumable.NAME, Resumable)
    assert main(command(tmp_path, data_dir)) == 0
    out = capsys.readouterr().out
    assert out.count("started") == 1 and out.index("resuming from step 4") < out.index("epoch 1/2:"), out
    (record,) = records(folder).values()
    assert record["key"] == run_dir.name
    _, _, expected, expected_history, _ = uninterrupted
    assert without_timing(record["result"]) == jsonable({**expected, "history": expected_history})  # bit-exact
    assert len(record["result"]["history"]["steps"]["pi_t"]) == 16  # the steps before the kill included
    # its time: the killed invocation's (up to the clock's last write) and this one's
    assert record["compute_time_s"] >= killed["elapsed_s"] + 0.9 * record["wall_time_s"]
    assert record["started_at"] == killed["started_at"]
    assert not run_dir.exists()  # a stored run's scratch folder is removed


class Interrupted(Exception):
    """Stands for a kill in-process: the loop writes no checkpoint on an exception, so the files are a killed run's."""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    """``(config, data, result, history, weights)`` of :class:`Resumable`'s run trained without interruption."""
    (spec,) = Resumable.plan(Resumable.Config())
    config = run_config(spec.params["train"], tmp_path_factory.mktemp("uninterrupted"))
    data = load_data("mnist", str(data_dir), 256, 128)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests (conftest's one_thread): float sums depend on the number of threads
    try:
        result, history = train_run(config, data, model := seeded_model(config), per_step=True)
    finally:
        torch.set_num_threads(threads)
    return config, data, without_timing(result), history, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.realdata
@pytest.mark.parametrize("stop_at_step, resumed_at", [(3, 2), (9, 8)], ids=["mid-epoch", "after-an-epoch"])
def test_a_resumed_run_ends_with_the_uninterrupted_result_weights_and_history(
    tmp_path, uninterrupted, monkeypatch, stop_at_step, resumed_at
):
    reference, data, expected, expected_history, expected_weights = uninterrupted
    config = reference.replace(out=str(tmp_path / "run"))
    record = History.on_batch_end

    def stop(self, run):
        record(self, run)
        if run.step == stop_at_step:
            raise Interrupted

    monkeypatch.setattr(History, "on_batch_end", stop)
    with pytest.raises(Interrupted):
        train_run(config, data, seeded_model(config), per_step=True)
    monkeypatch.undo()
    assert resumable_checkpoint(config) == resumed_at
    lines = []
    result, history = train_run(config, data, model := seeded_model(config), per_step=True, log=lines.append)
    assert lines[0].startswith(f"resuming from step {resumed_at}")
    assert without_timing(result) == expected and history == expected_history
    assert [n for n, v in expected_weights.items() if not model.state_dict()[n].equal(v)] == []


@pytest.mark.realdata
def test_a_finished_but_unstored_training_run_restores_its_model_and_history(tmp_path, uninterrupted):
    # killed after train() finished, before the run's record was written (in an experiment's later phase)
    reference, data, expected, expected_history, expected_weights = uninterrupted
    shutil.copytree(reference.out, tmp_path / "run")
    config = reference.replace(out=str(tmp_path / "run"))
    result, history = train_run(config, data, model := seeded_model(config), per_step=True)
    assert without_timing(result) == expected and history == expected_history
    assert [n for n, v in expected_weights.items() if not model.state_dict()[n].equal(v)] == []  # trained, not initial


@pytest.mark.realdata
def test_only_an_intact_checkpoint_of_the_same_configuration_with_a_history_is_resumed(tmp_path, uninterrupted):
    reference = uninterrupted[0]
    shutil.copytree(reference.out, tmp_path / "run")
    config = reference.replace(out=str(tmp_path / "run"))
    assert resumable_checkpoint(config) == 16
    same = resolve_precision("auto", config.accelerator) == config.precision  # "32" here: "auto" resolves to it
    assert resumable_checkpoint(config.replace(precision="auto")) == (16 if same else None)
    assert resumable_checkpoint(config.replace(lr=config.lr * 2)) is None  # another configuration
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(path)
    del checkpoint["observers"]["History"]
    torch.save(checkpoint, path)
    assert resumable_checkpoint(config) is None  # written without a History (before it travelled with checkpoints)
    path.write_bytes(b"truncated")
    assert resumable_checkpoint(config) is None


@pytest.mark.realdata
def test_a_checkpoint_from_before_a_config_field_was_added_resumes(tmp_path, uninterrupted):
    # a field added to TrainConfig since (other_lr, compile) is missing from an older checkpoint's config: at its
    # default, the checkpoint is the same configuration's
    reference = uninterrupted[0]
    shutil.copytree(reference.out, tmp_path / "run")
    config = reference.replace(out=str(tmp_path / "run"))
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(path)
    del checkpoint["config"]["other_lr"]
    torch.save(checkpoint, path)
    assert resumable_checkpoint(config) == 16
    assert resumable_checkpoint(config.replace(mode="latent", optimizer="sgd", other_lr=0.5)) is None


@pytest.mark.realdata
def test_an_unresumable_checkpoint_is_set_aside_not_overwritten(tmp_path, uninterrupted):
    reference, data, expected, _, _ = uninterrupted
    shutil.copytree(reference.out, tmp_path / "run")
    old = (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes()
    config = reference.replace(out=str(tmp_path / "run"), lr=reference.lr * 2)  # another configuration
    lines = []
    train_run(config, data, seeded_model(config), log=lines.append)
    (kept,) = tmp_path.glob("run.stale-*")
    assert (kept / "checkpoints" / "last.ckpt").read_bytes() == old
    assert any("not resuming" in line and str(kept) in line for line in lines)


@pytest.mark.slow
@pytest.mark.realdata
def test_two_concurrent_invocations_share_the_runs(tmp_path, data_dir):
    # as a user would: the same command twice at once, one of them with two worker processes
    first, second = (invoke(tmp_path, data_dir, *args, experiment="arbitrary-lr") for args in (["--jobs", "2"], []))
    outputs = []
    for process in (first, second):
        code, out = finish(process)
        assert code == 0, out
        assert "FAILED" not in out
        outputs.append(out)
    folder = tmp_path / "smoke" / "arbitrary-lr"
    manifest = json.loads((folder / "manifest.json").read_text())
    stored = records(folder)
    planned = registry.get_experiment("arbitrary-lr").plan(configure("smoke", "arbitrary-lr"))
    assert sorted(stored) == sorted(run["key"] for run in manifest["runs"]) and len(stored) == len(planned) == 15
    assert all(r["result"] and r["key"] == key for key, r in stored.items())
    # "[k/n] label: ..." lines, found anywhere: a worker's stderr shares the pipe and may land mid-line
    executed = [
        [
            label
            for label, rest in re.findall(r"\[\d+/\d+\] ([\w.-]+): ([^\n]*)", out)
            if "run by another invocation" not in rest
        ]
        for out in outputs
    ]
    assert sorted(executed[0] + executed[1]) == sorted(run["label"] for run in manifest["runs"])  # each run once
    assert not list((folder / "runs").glob("*.lock")) and not [p for p in (folder / "runs").iterdir() if p.is_dir()]


@pytest.fixture
def toy(monkeypatch):
    """The toy experiment of ``toy_experiment.py`` (no data, milliseconds a run), registered."""
    spec = importlib.util.spec_from_file_location("toy_experiment", HERE / "toy_experiment.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "toy_experiment", module)
    spec.loader.exec_module(module)
    monkeypatch.setitem(registry.EXPERIMENTS, "toy", module)
    return module


class TestRunnerLocks:
    """One invocation, with one run's lock held by "another process" (a second open file of its lock here)."""

    def run(self, tmp_path, toy, when_busy):
        config = configure("smoke", "toy")
        spec = toy.plan(config)[0]
        key = spec.key(toy.VERSION)
        runs = tmp_path / "smoke" / "toy" / "runs"
        holder = RunLock(runs / f"{key}.lock")
        assert holder.acquire()
        lines = []

        def log(line: str) -> None:
            lines.append(line)
            if "running in another invocation" in line:
                when_busy(holder, runs / f"{key}.json", spec)

        manifest = run_experiment("toy", config, profile="smoke", results_root=tmp_path, verbose=False, log=log)
        holder.release()
        return manifest, lines, json.loads((runs / f"{key}.json").read_text())

    def test_a_run_held_elsewhere_is_waited_for_and_its_record_used(self, tmp_path, toy):
        def store_elsewhere(holder, record, spec):
            record.write_text(
                json.dumps({"key": record.stem, "params": spec.params, "result": {"flips": -1}, "wall_time_s": 0})
            )
            holder.done()

        manifest, lines, record = self.run(tmp_path, toy, store_elsewhere)
        assert (manifest["executed"], manifest["elsewhere"], manifest["failed"]) == (5, 1, [])
        assert record["result"] == {"flips": -1}  # not run again here
        assert any("tau0-seed0: -1 flips (run by another invocation" in line for line in lines)
        assert lines[-1].startswith("toy: 5 run, 0 skipped, 1 run by another invocation, 0 failed")

    def test_a_run_whose_holder_died_unstored_is_run_here(self, tmp_path, toy):
        manifest, lines, record = self.run(tmp_path, toy, lambda holder, record, spec: holder.release())
        assert (manifest["executed"], manifest["elsewhere"], manifest["failed"]) == (6, 0, [])
        assert record["result"]["flips"] >= 0 and not list((tmp_path / "smoke/toy/runs").glob("*.lock"))


class TestRunLock:
    def test_one_holder_at_a_time_and_released_when_the_holder_dies(self, tmp_path):
        path = tmp_path / "run.lock"
        # another process holding the same kind of lock (plain fcntl: no torch to import)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import fcntl, os, sys, time; "
                "fcntl.flock(os.open(sys.argv[1], os.O_RDWR | os.O_CREAT), fcntl.LOCK_EX); "
                "print('held', flush=True); time.sleep(60)",
                str(path),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout.readline() == "held\n"
        with RunLock(path) as lock:
            assert not lock.acquire()
            holder.kill()
            holder.wait()
            assert lock.acquire(wait=True)  # the kernel released the dead holder's lock
            lock.done()
        assert not path.exists()
