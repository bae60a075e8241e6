"""Launchers: each planned run of an experiment as a job through submitit (``torchbop experiment NAME --launcher``).

The jobs run with submitit's local executor (``--launcher local``): real subprocesses that unpickle a
:class:`~torchbop.experiments.cluster_job.RunJob` and import their experiment by reference, as SLURM jobs do on a
compute node. Each job imports torch and Lightning, so the tests that start jobs take seconds per job (marked slow).
:class:`Counting`, an experiment defined here, checkpoints after every step in its run's folder; ``$STOP`` (for
instance ``0:3:SIGKILL,1:2:SIGUSR2``) makes the job of a seed send itself a signal right after a step's checkpoint:
SIGKILL (a killed job) or SIGUSR2 (what SLURM sends before a time limit or a preemption, through submitit). The SLURM
executor is checked without a cluster: a fake ``srun`` and ``sbatch`` on the PATH, the job script captured as
submitit hands it to ``sbatch``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from torchbop.cli import main
from torchbop.experiments import configure, registry, run_experiment, runner
from torchbop.experiments.cluster_job import RunJob, experiment_reference, resolve_experiment
from torchbop.experiments.launchers import Launcher, parse_extra, parse_mem, parse_time
from torchbop.experiments.run_lock import RunLock
from torchbop.experiments.spec import RunContext, RunSpec
from torchbop.experiments.store import read_json, write_json

submitit = pytest.importorskip("submitit", reason="submitit (the dev extra) runs the launcher tests")

HERE = Path(__file__).resolve().parent
STOP = "TORCHBOP_TEST_STOP"  # seed:step:signal,...


class Counting:
    """An experiment whose runs count ``steps`` steps, checkpointing after each in the run's folder."""

    NAME = "counting"
    TITLE = "Counting steps"
    VERSION = 1
    KEEP_RUN_DIR = False
    NOT_SCALE: frozenset[str] = frozenset()

    @dataclasses.dataclass(frozen=True)
    class Config:
        seeds: int = 1
        steps: int = 6

    CONFIGS = {"paper": Config(), "quick": Config(), "smoke": Config()}

    @staticmethod
    def datasets(config: Any) -> tuple[str, ...]:
        return ()

    @staticmethod
    def plan(config: Any) -> list[RunSpec]:
        return [RunSpec(Counting.NAME, f"seed{s}", {"seed": s, "steps": config.steps}) for s in range(config.seeds)]

    @staticmethod
    def execute(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
        checkpoint = ctx.run_dir / "progress.json"
        state = read_json(checkpoint) if checkpoint.is_file() else {"step": 0, "value": params["seed"]}
        resumed_from = state["step"]
        stops = {
            (int(seed), int(step)): name
            for seed, step, name in (item.split(":") for item in filter(None, os.environ.get(STOP, "").split(",")))
        }
        for step in range(resumed_from + 1, params["steps"] + 1):
            state = {"step": step, "value": (state["value"] * 31 + step) % 1_000_003}
            write_json(checkpoint, state)
            if (params["seed"], step) in stops:
                os.kill(os.getpid(), getattr(signal, stops[params["seed"], step]))
        return {"value": state["value"], "resumed_from": resumed_from}

    @staticmethod
    def describe(result: dict[str, Any]) -> str:
        return f"value {result['value']} (resumed from step {result['resumed_from']})"

    @staticmethod
    def summarize(records: list[dict[str, Any]], config: Any) -> dict[str, Any]:
        return {"tables": {}}

    @staticmethod
    def plot(fig: Any, records: list[dict[str, Any]], summary: dict[str, Any], config: Any) -> None:
        fig.subplots().plot([r["result"]["value"] for r in records])


def counted(seed: int, steps: int) -> int:
    """What an uninterrupted run of :class:`Counting` ends with."""
    value = seed
    for step in range(1, steps + 1):
        value = (value * 31 + step) % 1_000_003
    return value


@pytest.fixture
def jobs_import_here(monkeypatch):
    """Job processes find this file's experiments (by the names this process gave them) and toy_experiment.py."""
    paths = [str(HERE.parents[1]), str(HERE), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
    monkeypatch.delenv(STOP, raising=False)


@pytest.fixture
def toy(monkeypatch):
    """The toy experiment of ``toy_experiment.py`` (no data, milliseconds a run), registered."""
    spec = importlib.util.spec_from_file_location("toy_experiment", HERE / "toy_experiment.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "toy_experiment", module)
    spec.loader.exec_module(module)
    monkeypatch.setitem(registry.EXPERIMENTS, "toy", module)
    return module


@pytest.fixture
def counting(monkeypatch):
    monkeypatch.setitem(registry.EXPERIMENTS, Counting.NAME, Counting)
    return Counting


def launch(name: str, root: Path, lines: list[str], log=None, **changes) -> dict[str, Any]:
    """``name`` at the smoke scale (with ``changes``) as local submitit jobs, two at a time, one thread each."""
    return run_experiment(
        name,
        configure("smoke", name, changes),
        profile="smoke",
        results_root=root,
        threads=1,
        verbose=False,
        log=log or lines.append,
        launcher=Launcher("local", max_running=2),
    )


def stored(root: Path, name: str) -> dict[str, dict[str, Any]]:
    return {p.stem: read_json(p) for p in sorted((root / "smoke" / name / "runs").glob("*.json"))}


# ----------------------------------------------------------------------------------------------------------------
# jobs through submitit's local executor
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sweep_as_jobs_stores_every_run_once_as_the_in_process_runner(tmp_path, toy, jobs_import_here):
    lines: list[str] = []
    manifest = launch("toy", tmp_path / "jobs", lines, seeds=1, thresholds="0,0.1")
    assert (manifest["executed"], manifest["skipped"], manifest["failed"]) == (2, 0, [])
    assert manifest["launcher"]["kind"] == "local" and manifest["finished_at"] is not None
    assert sum("submitted" in line for line in lines) == 1 and any(line.startswith("[2/2] ") for line in lines)
    assert len(list((tmp_path / "jobs/smoke/toy/jobs").glob("*_result.pkl"))) == 2  # one job per run

    here = run_experiment(
        "toy",
        configure("smoke", "toy", {"seeds": 1, "thresholds": "0,0.1"}),
        profile="smoke",
        results_root=tmp_path / "here",
        threads=1,
        verbose=False,
        log=lambda line: None,
    )
    jobs, local = stored(tmp_path / "jobs", "toy"), stored(tmp_path / "here", "toy")
    assert (
        sorted(jobs)
        == sorted(local)
        == sorted(run["key"] for run in manifest["runs"])
        == sorted(run["key"] for run in here["runs"])
    )
    assert {k: r["result"] for k, r in jobs.items()} == {k: r["result"] for k, r in local.items()}
    assert not list((tmp_path / "jobs/smoke/toy/runs").glob("*.lock"))

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "jobs/smoke/toy/runs").glob("*.json")}
    lines.clear()
    again = launch("toy", tmp_path / "jobs", lines, seeds=1, thresholds="0,0.1")
    assert (again["executed"], again["skipped"], again["failed"]) == (0, 2, [])
    assert not any("submitted" in line for line in lines)  # nothing left to submit
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.slow
def test_killed_and_preempted_jobs_continue_from_their_runs_checkpoints(
    tmp_path, counting, jobs_import_here, monkeypatch
):
    # seed 0's job is killed after step 3; seed 1's is preempted after step 2 (submitit requeues it at once)
    monkeypatch.setenv(STOP, "0:3:SIGKILL,1:2:SIGUSR2")
    lines: list[str] = []
    first = launch(Counting.NAME, tmp_path, lines, seeds=2)
    assert (first["executed"], first["failed"]) == (1, ["seed0"]), lines
    (failure,) = [line for line in lines if "FAILED" in line]
    assert failure.startswith("[") and "seed0: FAILED" in failure and "ended without storing the run" in failure
    log = Path(failure.split("its log: ")[1].split()[0])
    assert log.is_file() and log.parent == tmp_path / "smoke/counting/jobs"  # the killed job's submitit log
    keys = {run["label"]: run["key"] for run in first["runs"]}
    assert read_json(tmp_path / "smoke/counting/runs" / keys["seed0"] / "progress.json")["step"] == 3
    records = stored(tmp_path, Counting.NAME)
    assert list(records) == [keys["seed1"]]
    assert records[keys["seed1"]]["result"] == {"value": counted(1, 6), "resumed_from": 2}  # in its requeued job
    preempted = "".join(p.read_text() for p in (tmp_path / "smoke/counting/jobs").glob("*_log.*"))
    assert "this job is preempted" in preempted and "Requeued job" in preempted

    monkeypatch.delenv(STOP)  # the same command again
    lines.clear()
    second = launch(Counting.NAME, tmp_path, lines, seeds=2)
    assert (second["executed"], second["skipped"], second["failed"]) == (1, 1, []), lines
    record = stored(tmp_path, Counting.NAME)[keys["seed0"]]
    assert record["result"] == {"value": counted(0, 6), "resumed_from": 3}  # from the killed job's checkpoint
    assert not [p for p in (tmp_path / "smoke/counting/runs").iterdir() if p.is_dir()]  # scratch folders removed
    assert not list((tmp_path / "smoke/counting/runs").glob("*.lock"))


class TestHeldRuns:
    """A run locked by another invocation gets no job until everything else is done, as in the local runner."""

    def launch_held(self, tmp_path, toy, when_busy):
        config = configure("smoke", "toy", {"seeds": 1, "thresholds": "0"})
        (spec,) = toy.plan(config)
        record = tmp_path / "smoke/toy/runs" / f"{spec.key(toy.VERSION)}.json"
        holder = RunLock(record.with_suffix(".lock"))
        assert holder.acquire()
        lines: list[str] = []

        def log(line: str) -> None:
            lines.append(line)
            if "running in another invocation" in line:
                when_busy(holder, record, spec)

        manifest = launch("toy", tmp_path, lines, log=log, seeds=1, thresholds="0")
        holder.release()
        return manifest, lines, read_json(record)

    def test_stored_by_its_holder_it_is_not_submitted(self, tmp_path, toy):
        def store_elsewhere(holder, record, spec):
            write_json(record, {"key": record.stem, "params": spec.params, "result": {"flips": -1}, "wall_time_s": 0})
            holder.done()

        manifest, lines, record = self.launch_held(tmp_path, toy, store_elsewhere)
        assert (manifest["executed"], manifest["elsewhere"], manifest["failed"]) == (0, 1, [])
        assert record["result"] == {"flips": -1} and not any("submitted" in line for line in lines)

    @pytest.mark.slow
    def test_left_unstored_by_its_holder_it_is_submitted(self, tmp_path, toy, jobs_import_here):
        manifest, lines, record = self.launch_held(tmp_path, toy, lambda holder, record, spec: holder.release())
        assert (manifest["executed"], manifest["elsewhere"], manifest["failed"]) == (1, 0, [])
        assert record["result"]["flips"] >= 0 and sum("submitted" in line for line in lines) == 1


# ----------------------------------------------------------------------------------------------------------------
# SLURM, without a cluster
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """``srun`` and ``sbatch`` on the PATH; ``sbatch`` keeps a copy of the script it is given. Returns the copy."""
    bin_dir, copy = tmp_path / "bin", tmp_path / "sbatch_script.sh"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {copy}\necho 'Submitted batch job 4242'\n")
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return copy


def test_the_slurm_jobs_are_submitted_with_the_options_and_carry_no_module(tmp_path, fake_slurm, toy):
    launcher = Launcher(
        "slurm",
        time="1:30:00",
        partition="gpu",
        cpus_per_task=4,
        gpus_per_node=1,
        mem="16g",
        extra=parse_extra(["account=bnn", "exclusive", "mail_type=END"]),
    )
    executor = launcher.executor(tmp_path / "jobs", "torchbop-toy")
    tasks = [
        {
            "experiment": "toy",
            "reference": experiment_reference(toy),
            "label": f"run{i}",
            "params": {"seed": i},
            "key": f"k{i}",
            "version": 1,
            "run_dir": str(tmp_path / f"k{i}"),
            "record_path": str(tmp_path / f"k{i}.json"),
            "data_dir": None,
            "verbose": False,
        }
        for i in range(2)
    ]
    jobs = launcher.submit(executor, RunJob(threads=4), tasks)
    assert [job.job_id for job in jobs] == ["4242_0", "4242_1"]  # one array of two jobs

    script = fake_slurm.read_text().splitlines()
    for line in (
        "--partition=gpu",
        "--time=90",
        "--cpus-per-task=4",
        "--gpus-per-node=1",
        "--mem=16G",
        "--job-name=torchbop-toy",
        "--array=0-1%2",
        "--account=bnn",
        "--exclusive",
        "--mail-type=END",
        "--signal=USR2@90",
    ):
        assert f"#SBATCH {line}" in script, (line, script)
    assert any(
        line.startswith("srun ") and "-m submitit.core._submit" in line and sys.executable in line for line in script
    )

    submission = jobs[1].submission()  # what the job process unpickles
    assert isinstance(submission.function, RunJob) and submission.function.threads == 4
    assert submission.args == (tasks[1],) and json.loads(json.dumps(submission.args[0])) == tasks[1]  # plain data
    assert resolve_experiment("nothing-registered", submission.args[0]["reference"]) is toy


def test_the_command_line_builds_the_launcher(tmp_path, toy, monkeypatch):
    ran = []
    monkeypatch.setattr(runner, "run_experiment", lambda *args, **kwargs: ran.append(kwargs) or {"failed": []})
    argv = [
        "experiment",
        "toy",
        "--profile",
        "smoke",
        "--results-dir",
        str(tmp_path),
        "--launcher",
        "slurm",
        "--partition",
        "gpu",
        "--time",
        "2:00:00",
        "--cpus-per-task",
        "8",
        "--gpus-per-node",
        "1",
        "--mem",
        "32G",
        "--slurm-extra",
        "account=bnn",
        "--slurm-extra",
        "exclusive",
        "--jobs",
        "5",
    ]
    assert main(argv) == 0
    assert ran[0]["launcher"] == Launcher(
        "slurm",
        time="2:00:00",
        partition="gpu",
        cpus_per_task=8,
        gpus_per_node=1,
        mem="32G",
        extra={"account": "bnn", "exclusive": True},
        max_running=5,
    )
    assert main(["experiment", "toy", "--profile", "smoke", "--results-dir", str(tmp_path), "--jobs", "3"]) == 0
    assert ran[1]["launcher"] is None and ran[1]["jobs"] == 3  # the local runner stays the default


# ----------------------------------------------------------------------------------------------------------------
# errors, before anything is submitted
# ----------------------------------------------------------------------------------------------------------------
SLURM = ["--launcher", "slurm", "--time", "1:00:00"]
CLI_ERRORS = [
    ("negative cpus", [*SLURM, "--cpus-per-task", "-1"], "argument --cpus-per-task: invalid value -1"),
    ("malformed time", ["--launcher", "slurm", "--time", "1h"], "Invalid time value: '1h'"),
    ("no time on SLURM", ["--launcher", "slurm"], "a SLURM job needs a time limit"),
    ("zero time", ["--launcher", "local", "--time", "0"], "Invalid time value: '0'"),
    ("negative gpus", ["--launcher", "local", "--gpus-per-node", "-2"], "argument --gpus-per-node: invalid value -2"),
    ("malformed mem", [*SLURM, "--mem", "16GiB"], "Invalid mem value: '16GiB'"),
    ("reserved extra", [*SLURM, "--slurm-extra", "time=5"], "time is not an extra: use --time"),
    ("malformed extra", [*SLURM, "--slurm-extra", "qos="], "Invalid slurm-extra value: 'qos='"),
    ("jobs 0", ["--launcher", "local", "--jobs", "0"], "argument --jobs: invalid value 0"),
    ("bad partition", [*SLURM, "--partition", "a b"], "argument --partition: invalid value 'a b'"),
    ("option without a launcher", ["--partition", "gpu"], "--partition: options of cluster jobs, which need"),
]


@pytest.mark.parametrize("case, args, named", CLI_ERRORS, ids=[c[0] for c in CLI_ERRORS])
def test_invalid_launcher_options_are_one_line_errors(case, args, named, tmp_path, toy, capsys):
    code = main(["experiment", "toy", "--profile", "smoke", "--results-dir", str(tmp_path / "res"), *args])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("torchbop experiment: error: ") and named in err, err
    assert not (tmp_path / "res").exists()  # nothing written, nothing submitted


def test_without_submitit_the_error_names_the_extra(tmp_path, toy, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    code = main(["experiment", "toy", "--profile", "smoke", "--results-dir", str(tmp_path / "res"), *SLURM])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'torchbop[cluster]'" in err and err.count("\n") == 1, err
    with pytest.raises(ImportError, match=r"torchbop\[cluster\]"):
        run_experiment(
            "toy", configure("smoke", "toy"), profile="smoke", results_root=tmp_path / "res", launcher=Launcher("local")
        )
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize(
    "text, minutes",
    [("90", 90), ("30:30", 31), ("4:00:00", 240), ("2-0", 2880), ("1-12:30", 2190), ("1-00:00:01", 1441)],
)
def test_time_limits_read_as_sbatch_reads_them(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["", "1h", "-5", "1:60", "1:00:60", "1-24", "0:00"])
def test_malformed_time_limits_raise(text):
    with pytest.raises(ValueError, match="Invalid time value"):
        parse_time(text)


def test_memory_and_extras():
    assert [parse_mem(m) for m in ("16G", "16gb", "512", "1T", "0")] == ["16G", "16G", "512M", "1T", "0M"]
    with pytest.raises(ValueError, match="Invalid mem value: '1.5G'"):
        parse_mem("1.5G")
    assert parse_extra(["--qos=high", "constraint=a100|h100"]) == {"qos": "high", "constraint": "a100|h100"}
    with pytest.raises(ValueError, match="output is not an extra: torchbop sets it"):
        parse_extra(["output=/tmp/x"])


def test_an_experiment_a_job_cannot_import_is_refused():
    def local_experiment():
        class Inside:
            NAME = "inside"

        return Inside

    with pytest.raises(ValueError, match="define it at the top level"):
        experiment_reference(local_experiment())
    main_class = type("Script", (), {"__module__": "__main__", "NAME": "script"})
    with pytest.raises(ValueError, match="defined in __main__"):
        experiment_reference(main_class)
    assert experiment_reference(Counting) == f"{__name__}:Counting"
