"""The one runner behind every experiment: plan -> skip what exists -> run (in parallel) -> store -> summarize -> plot.

An experiment is a module following :class:`~torchbop.experiments.spec.Experiment`, listed in
:mod:`~torchbop.experiments.registry`. Layout of ``results/<profile>/<experiment>/``::

    runs/<key>.json    one record per run: params, result, wall time, environment, code version
    manifest.json      the last invocation: its config, the (label, key) of its runs, wall time, machine; written
                       when it starts (finished_at null) and again when it ends
    summary.json       summarize() of the manifest's runs; <table>.csv for each table
    figure.png         the experiment's plot(), from the records

A run's key is a hash of its experiment, the experiment's ``VERSION`` and its ``params``, so a run whose record exists
is skipped, whatever invocation or profile override planned it. Runs go to ``jobs`` spawned processes with
``cores // jobs`` torch threads each; every worker writes its record itself (atomically), so a crash or Ctrl-C loses
only the runs in flight.

**Killed runs continue.** A run executes in its own scratch folder ``runs/<key>/`` (``RunContext.run_dir``), which
outlives a killed invocation. The training runs of an experiment (``common.train_run``) continue there from the last
checkpoint the next time the experiment is invoked, and end with the result an uninterrupted run has; what a run
computes outside ``torchbop.training.train`` (arbitrary-lr's Theorem-1 check, approximation's batch-norm retraining)
starts again from its beginning.

**Concurrent invocations.** Two invocations of an experiment on the same results folder share the work: a run is
executed only under its lock (:class:`~torchbop.experiments.run_lock.RunLock`, an OS file lock beside the record that
a killed process releases at once), taken by the worker that executes it. A run locked by another invocation is left
to it ("running in another invocation") and waited for once everything else is done: if that invocation stores it,
its record is used (counted under ``elsewhere`` in the manifest); if it fails or is killed, this invocation runs it.
So each invocation ends with every run of its plan stored (or failed here), and each run is executed once.

**On a cluster.** With a :class:`~torchbop.experiments.launchers.Launcher` (``--launcher slurm``), each run to do
goes out as one job (submitit; :mod:`~torchbop.experiments.launchers`) instead of a local process; the jobs execute
:func:`~torchbop.experiments.execution.claim_and_execute` as workers do, so records, locks and resumed runs are the
same, and this process waits for them, logs each finished run and writes the manifest as above.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from torchbop.data.paths import resolve_data_dir
from torchbop.domains import check_known, parse_scalar
from torchbop.experiments.cluster_job import experiment_reference
from torchbop.experiments.execution import claim_and_execute, init_worker, quiet_lightning
from torchbop.experiments.launchers import Launcher, require_submitit
from torchbop.experiments.plots import save_figure
from torchbop.experiments.profiles import PROFILES
from torchbop.experiments.registry import get_experiment
from torchbop.experiments.spec import RunSpec
from torchbop.experiments.store import (
    compute_time_s,
    environment,
    jsonable,
    read_json,
    time_stamp,
    write_csv,
    write_json,
)
from torchbop.training.config import field_domains

__all__ = ["configure", "config_from_dict", "run_experiment", "experiment_dir", "write_outputs", "quiet_lightning"]


def configure(profile: str, experiment: str, overrides: dict[str, Any] | None = None) -> Any:
    """The experiment's config of ``profile`` with ``overrides`` (field -> value) applied.

    Values are read as ``torchbop train --set`` reads them: a setting named like a ``TrainConfig`` field (``epochs``,
    ``subset``, ``lr``, ``precision``, ...) is checked against that field's domain, with the same message; any
    other is converted to its default's type (``"3"`` -> 3, ``[1e-3]`` -> ``(0.001,)``). Unknown settings raise
    with the closest one.

    Example:
        >>> configure("quick", "cifar10", {"epochs": "2", "subset": None}).epochs
        2
        >>> configure("quick", "cifar10", {"retrain_epochs": 1})
        Traceback (most recent call last):
        ...
        ValueError: cifar10 has no setting 'retrain_epochs' (did you mean 'epochs'?)
        >>> configure("quick", "cifar10", {"epochs": 0})
        Traceback (most recent call last):
        ...
        ValueError: Invalid epochs value: 0 (expected an integer >= 1)
    """
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r} (expected one of {', '.join(PROFILES)})")
    config = get_experiment(experiment).CONFIGS[profile]
    fields = {f.name: f for f in dataclasses.fields(config)}
    check_known(experiment, overrides or {}, list(fields))
    changes = {name: _setting(name, value, getattr(config, name)) for name, value in (overrides or {}).items()}
    return dataclasses.replace(config, **changes)


def _setting(name: str, value: Any, default: Any) -> Any:
    """One ``--set`` value of an experiment, typed and checked (see :func:`configure`)."""
    domains = field_domains()
    value = parse_scalar(value) if isinstance(value, str) else value
    if name in domains and not isinstance(default, tuple):
        return domains[name].check(name, value)
    try:
        return _convert(name, value, default)
    except (TypeError, ValueError):
        kind = type(default[0] if isinstance(default, tuple) and default else default).__name__
        raise ValueError(
            f"Invalid {name} value: {value!r} (expected {kind}"
            f"{' values, comma-separated' if isinstance(default, tuple) else ''})"
        ) from None


def config_from_dict(experiment: str, values: dict[str, Any]) -> Any:
    """The typed config of a stored one (a manifest's ``config``): lists become tuples again, settings it lacks take
    their default, settings the experiment no longer has are left out.

    Example:
        >>> config_from_dict("hyperparameters", {"epochs": 4, "gammas": [0.01, 0.001]}).gammas
        (0.01, 0.001)
    """
    default = get_experiment(experiment).Config()
    names = {f.name for f in dataclasses.fields(default)}
    return dataclasses.replace(
        default, **{k: _convert(k, v, getattr(default, k)) for k, v in values.items() if k in names}
    )


def _convert(name: str, value: Any, default: Any) -> Any:
    if value is None or isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    if isinstance(default, tuple):
        # a single value (``--set gammas=0.01``, read as a number) is a list of one
        single = isinstance(value, (int, float)) and not isinstance(value, bool)
        items = value.split(",") if isinstance(value, str) else [value] if single else list(value)
        kind = type(default[0]) if default else str
        return tuple(_convert(name, v.strip() if isinstance(v, str) else v, kind()) for v in items)
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    if isinstance(default, float):
        return float(value)
    if isinstance(default, int) or default is None and _looks_int(value):
        return int(value)
    if default is None:
        return float(value) if _looks_float(value) else value
    return type(default)(value)


def _looks_int(value: Any) -> bool:
    try:
        return float(value) == int(value)
    except (TypeError, ValueError):
        return False


def _looks_float(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def experiment_dir(results_root: str | os.PathLike[str], profile: str, experiment: str) -> Path:
    return Path(results_root) / profile / experiment


def reuse_records(results_root: str | os.PathLike[str], profile: str, experiment: str, keys: list[str]) -> int:
    """Copy into ``profile``'s folder the records of ``keys`` that another profile of the same results root stored.

    A key covers the experiment, its version and every value the run depends on, so a record stored under the same
    key by another profile is the same run (the ``cpu`` profile shares Table 1 and Figure 1 with ``paper``). Returns
    how many were copied.
    """
    runs = experiment_dir(results_root, profile, experiment) / "runs"
    copied = 0
    for key in keys:
        if (runs / f"{key}.json").is_file():
            continue
        for other in sorted(Path(results_root).glob(f"*/{experiment}/runs/{key}.json")):
            try:
                record = read_json(other)
            except (OSError, ValueError):
                continue  # unreadable: the run is done again here
            write_json(runs / f"{key}.json", record)
            copied += 1
            break
    return copied


# ----------------------------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------------------------
def run_experiment(
    experiment: str,
    config: Any,
    *,
    profile: str,
    results_root: str | os.PathLike[str] = "results",
    data_dir: str | None = None,
    jobs: int = 1,
    threads: int | None = None,
    verbose: bool = True,
    command: str | None = None,
    log: Callable[[str], None] = print,
    launcher: Launcher | None = None,
) -> dict[str, Any]:
    """Run ``config``'s plan (skipping runs already stored), then write the manifest, summary, tables and figure.

    Returns the manifest. Failed runs are listed under ``"failed"`` (with their tracebacks in the log); the summary
    then covers the runs that succeeded. Runs that another invocation holds are waited for at the end (see the module
    docstring); ``"elsewhere"`` counts those it stored. With ``launcher`` each run to do is a job of that launcher
    (``jobs`` is then unused: ``launcher.max_running`` caps the jobs at once).
    """
    if jobs < 1:
        raise ValueError(f"Invalid jobs value: {jobs} (expected >= 1)")
    module = get_experiment(experiment)
    if launcher is not None:  # before anything is written: submitit is there, the experiment importable by a job
        require_submitit()
        reference = experiment_reference(module)
    out = experiment_dir(results_root, profile, experiment)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    unique: dict[str, RunSpec] = {}  # identical runs planned twice (a grid point of two sweeps) run once
    for spec in module.plan(config):
        unique.setdefault(spec.key(module.VERSION), spec)
    keyed = [(spec, key) for key, spec in unique.items()]
    reused = reuse_records(results_root, profile, experiment, [k for _, k in keyed])
    todo = [(s, k) for s, k in keyed if not (out / "runs" / f"{k}.json").is_file()]
    if launcher is None:
        threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        how = f"with {jobs} job(s) x {threads} thread(s)"
    else:
        jobs = launcher.max_running or max(1, len(todo))
        share = max(1, (os.cpu_count() or 1) // jobs) if launcher.kind == "local" else 1  # this machine's cores
        threads = threads or launcher.cpus_per_task or share
        how = f"as {launcher.describe()}, {threads} thread(s) each"
    log(
        f"{experiment} ({profile}): {len(keyed)} runs, {len(keyed) - len(todo)} already done"
        + (f" ({reused} stored by another profile)" if reused else "")
        + f", {len(todo)} to run {how} -> {out}"
    )

    started = time.time()
    failed: list[str] = []
    counts = {"done": 0, "elsewhere": 0}

    def stored_records() -> list[dict[str, Any]]:
        return [read_json(out / "runs" / f"{k}.json") for _, k in keyed if (out / "runs" / f"{k}.json").is_file()]

    def manifest_now(finished: bool, stored: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "experiment": experiment,
            "profile": profile,
            "config": jsonable(dataclasses.asdict(config)),
            "paper_config": jsonable(dataclasses.asdict(configure("paper", experiment))),
            "runs": [{"label": s.label, "key": k} for s, k in keyed],
            "executed": counts["done"],
            "skipped": len(keyed) - len(todo),
            "elsewhere": counts["elsewhere"],
            "failed": failed,
            "wall_time_s": time.time() - started,
            "compute_time_s": sum(map(compute_time_s, stored)),
            "started_at": time_stamp(started),
            # None while the invocation runs (a report of a long profile then says so); stays None if it is killed
            "finished_at": time_stamp() if finished else None,
            "command": command,
            "environment": environment(threads=threads, jobs=jobs),
            "launcher": launcher.as_dict() if launcher is not None else None,
        }

    if todo:  # what a report made before this invocation ends reads: the plan, and that it is still running
        write_json(out / "manifest.json", manifest_now(finished=False, stored=stored_records()))
    # module.execute travels to spawned workers by reference (module and name), like any top-level function
    tasks = [
        dict(
            execute=module.execute,
            keep_run_dir=module.KEEP_RUN_DIR,
            experiment=experiment,
            label=s.label,
            params=s.params,
            key=k,
            version=module.VERSION,
            run_dir=str(out / "runs" / k),
            record_path=str(out / "runs" / f"{k}.json"),
            data_dir=data_dir,
            verbose=verbose,
        )
        for s, k in todo
    ]
    finished = 0

    def report(task: dict[str, Any], outcome: str, record: dict[str, Any] | None, error: str | None) -> bool:
        """Log a run's outcome; False when the run is held by another invocation and is to be waited for."""
        nonlocal finished
        if outcome == "busy":
            log(f"  [{task['label']}] running in another invocation: waiting for it once the other runs are done")
            return False
        finished += 1
        if outcome == "failed":
            failed.append(task["label"])
            log(f"[{finished}/{len(tasks)}] {task['label']}: FAILED\n{error}")
            return True
        counts[outcome] += 1
        where = f"{record['wall_time_s']:.0f} s" if outcome == "done" else "run by another invocation"
        if outcome == "done" and compute_time_s(record) > record["wall_time_s"] + 1:  # resumed
            where += f", {compute_time_s(record):.0f} s over all its invocations"
        log(
            f"[{finished}/{len(tasks)}] {task['label']}: {module.describe(record['result'])} "
            f"({where}; {time.time() - started:.0f} s elapsed)"
        )
        return True

    if launcher is not None and tasks:  # paths absolute: a job may start elsewhere; the experiment by reference
        root, data = out.resolve(), str(resolve_data_dir(data_dir).resolve())
        jobs_tasks = [
            {
                **{k: v for k, v in task.items() if k not in ("execute", "keep_run_dir")},
                "reference": reference,
                "data_dir": data,
                "run_dir": str(root / "runs" / task["key"]),
                "record_path": str(root / "runs" / f"{task['key']}.json"),
            }
            for task in tasks
        ]
        launcher.run(
            jobs_tasks, folder=root / "jobs", name=f"torchbop-{experiment}", threads=threads, report=report, log=log
        )
    elif jobs == 1 or len(tasks) <= 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            queue = deque((task, False) for task in tasks)  # (task, wait for its lock)
            while queue:
                task, wait = queue.popleft()
                if not report(task, *claim_and_execute(task, wait)):
                    queue.append((task, True))
        finally:
            torch.set_num_threads(previous)
    else:
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            max_workers=jobs, mp_context=context, initializer=init_worker, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(claim_and_execute, task, False): task for task in tasks}
            try:
                while futures:
                    future = next(cf.as_completed(futures))
                    task = futures.pop(future)
                    if not report(task, *future.result()):  # queued behind every run not yet started
                        futures[pool.submit(claim_and_execute, task, True)] = task
            except KeyboardInterrupt:  # stop now; finished runs are stored, the rest runs next time
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    records = stored_records()
    manifest = manifest_now(finished=True, stored=records)
    write_json(out / "manifest.json", manifest)
    write_outputs(experiment, out, records, config)
    elsewhere = f"{counts['elsewhere']} run by another invocation, " if counts["elsewhere"] else ""
    log(
        f"{experiment}: {manifest['executed']} run, {manifest['skipped']} skipped, {elsewhere}{len(failed)} failed "
        f"in {manifest['wall_time_s']:.0f} s; results in {out}"
    )
    return manifest


def write_outputs(experiment: str, out: Path, records: list[dict[str, Any]], config: Any) -> dict[str, Any]:
    """summary.json, one CSV per table and figure.png, from the records alone; each file is replaced atomically, so
    two invocations finishing at once leave complete files."""
    module = get_experiment(experiment)
    summary = module.summarize(records, config)
    write_json(out / "summary.json", summary)
    for name, rows in summary.get("tables", {}).items():
        write_csv(out / f"{name}.csv", rows)
    if records:
        partial = out / f".figure.{os.getpid()}.png"
        save_figure(module.plot, records, summary, config, partial)
        os.replace(partial, out / "figure.png")
    return summary
