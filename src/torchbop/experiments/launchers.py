"""Launchers: each planned run of an experiment as a job of a cluster scheduler, through submitit.

The default runner executes runs in local processes (``--jobs N``). With a launcher, each run that is not stored yet
goes out as one job: ``--launcher slurm`` submits them to SLURM with ``sbatch`` (a job array) through submitit
(facebookincubator/submitit, ``AutoExecutor``). The submitting process then waits for the jobs, prints a line per
finished run as the local runner does, and writes the manifest, summary and figure when they are all done::

    torchbop experiment cifar10 --profile paper --launcher slurm --partition gpu --time 12:00:00 \\
        --cpus-per-task 8 --gpus-per-node 1 --mem 32G --slurm-extra account=bnn --slurm-extra qos=normal

What stays as it is locally (see :mod:`~torchbop.experiments.runner`): each job writes its run's record into the
same results store (``results/<profile>/<experiment>/runs/``, which must be on a file system the compute nodes share),
executes the run only under its :class:`~torchbop.experiments.run_lock.RunLock`, and continues from the run's last
checkpoint when the run was killed before. A job that fails is reported with its traceback or the path of its
submitit log (in ``results/<profile>/<experiment>/jobs/``); running the command again submits what is still not
stored. A preempted job, or one that reaches its time limit, is requeued by submitit and resumes from its checkpoint
(:class:`~torchbop.experiments.cluster_job.RunJob`).

``--launcher local`` runs the same jobs with submitit's local executor, one subprocess each, on this machine: a way
to try a launcher setup, and what the tests use. It takes ``--time``; the SLURM-only options are ignored.

Options are checked before anything is submitted (:class:`Launcher` raises ``ValueError`` naming the option);
submitit is imported only when a launcher is used (:func:`require_submitit`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torchbop.experiments.cluster_job import RunJob
from torchbop.experiments.execution import Outcome
from torchbop.experiments.run_lock import RunLock
from torchbop.experiments.store import read_json

__all__ = ["LAUNCHERS", "Launcher", "parse_time", "parse_mem", "parse_extra", "require_submitit"]

#: launcher -> what it does. (The local runner, the default, is no launcher.)
LAUNCHERS = {
    "slurm": "each run a SLURM job (sbatch), through submitit",
    "local": "each run a job of submitit's local executor on this machine (for trying a setup; tests)",
}
#: sbatch options that the launcher's own options or submitit set: not accepted by --slurm-extra.
RESERVED = {
    "partition": "--partition",
    "p": "--partition",
    "time": "--time",
    "t": "--time",
    "cpus-per-task": "--cpus-per-task",
    "c": "--cpus-per-task",
    "gpus-per-node": "--gpus-per-node",
    "mem": "--mem",
    "job-name": "",
    "J": "",
    "output": "",
    "o": "",
    "error": "",
    "e": "",
    "array": "--jobs",
    "a": "--jobs",
    "signal": "",
    "open-mode": "",
    "nodes": "",
    "N": "",
    "ntasks-per-node": "",
    "wckey": "",
}
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
_MEM = re.compile(r"(\d+)([KMGT]?)B?", re.IGNORECASE)
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def require_submitit() -> Any:
    """The ``submitit`` module; ``ImportError`` naming the extra to install when it is missing."""
    try:
        import submitit
    except ImportError as error:
        raise ImportError(
            "Launchers need submitit, which is not installed: pip install 'torchbop[cluster]' "
            "(or pip install 'submitit>=1.5')"
        ) from error
    return submitit


def parse_time(text: str) -> int:
    """A time limit as ``sbatch --time`` takes it, in whole minutes (rounded up).

    Example:
        >>> [parse_time(t) for t in ("90", "30:30", "4:00:00", "1-0", "1-12:00", "0-0:0:1")]
        [90, 31, 240, 1440, 2160, 1]
        >>> parse_time("1h")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Invalid time value: '1h' (expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, ...)
    """
    match = _TIME.fullmatch(str(text).strip())
    error = ValueError(
        f"Invalid time value: {text!r} (expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
        "D-HH:MM:SS, as sbatch --time takes; e.g. --time 4:00:00)"
    )
    if not match:
        raise error
    days, *fields = match.groups()
    values = [int(f) for f in fields if f is not None]
    if days is None:  # minutes | minutes:seconds | hours:minutes:seconds
        units = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(values)]
    else:  # days-hours | days-hours:minutes | days-hours:minutes:seconds
        units = (3600, 60, 1)[: len(values)]
    if any(v >= 60 for v in values[1:]) or days is not None and values[0] >= 24:
        raise error
    seconds = sum(v * u for v, u in zip(values, units)) + int(days or 0) * 86400
    if seconds <= 0:
        raise ValueError(f"Invalid time value: {text!r} (expected a time limit above zero)")
    return -(-seconds // 60)


def parse_mem(text: str) -> str:
    """Memory per node as ``sbatch --mem`` takes it (an integer with an optional unit K, M, G or T; megabytes
    without one), normalized; ``0`` asks SLURM for all the memory of the node.

    Example:
        >>> parse_mem("16G"), parse_mem("500mb"), parse_mem("2048")
        ('16G', '500M', '2048M')
    """
    match = _MEM.fullmatch(str(text).strip())
    if not match:
        raise ValueError(
            f"Invalid mem value: {text!r} (expected an integer with an optional unit K, M, G or T, as "
            "sbatch --mem takes; e.g. --mem 16G)"
        )
    return f"{int(match[1])}{(match[2] or 'M').upper()}"


def parse_extra(items: list[str] | tuple[str, ...]) -> dict[str, str | bool]:
    """``KEY=VALUE`` (or a bare ``KEY`` for a flag) items, each an ``#SBATCH --KEY=VALUE`` line of the job script.

    Example:
        >>> parse_extra(["account=bnn", "qos=high", "exclusive", "mail_type=END"])
        {'account': 'bnn', 'qos': 'high', 'exclusive': True, 'mail-type': 'END'}
    """
    extra: dict[str, str | bool] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("-").replace("_", "-")
        if not _KEY.fullmatch(key) or sep and not value.strip():
            raise ValueError(
                f"Invalid slurm-extra value: {item!r} (expected KEY=VALUE, an sbatch option without its "
                "dashes, e.g. --slurm-extra account=myproject, or KEY alone for a flag)"
            )
        if key in RESERVED:
            instead = f"use {RESERVED[key]}" if RESERVED[key] else "torchbop sets it"
            raise ValueError(f"Invalid slurm-extra value: {item!r} ({key} is not an extra: {instead})")
        extra[key] = value.strip() if sep else True
    return extra


@dataclasses.dataclass(frozen=True)
class Launcher:
    """Where and with what resources each run's job goes; every value is checked when the launcher is made.

    Args:
        kind: ``"slurm"`` or ``"local"`` (:data:`LAUNCHERS`).
        time: each job's time limit, as ``sbatch --time`` (:func:`parse_time`); required for SLURM.
        partition: the SLURM partition (default: the cluster's).
        cpus_per_task: CPUs of each job (>= 1; default: the cluster's, usually 1); also its torch threads.
        gpus_per_node: GPUs of each job (>= 0).
        mem: memory of each job, as ``sbatch --mem`` (:func:`parse_mem`).
        extra: any other ``sbatch`` option, ``{"account": "bnn", "exclusive": True}`` (:func:`parse_extra`).
        max_running: at most this many jobs submitted and not finished at once (default: all of them).
        poll_s: seconds between two looks at the jobs (default 10 for SLURM, 0.2 locally).
    """

    kind: str
    time: str | None = None
    partition: str | None = None
    cpus_per_task: int | None = None
    gpus_per_node: int | None = None
    mem: str | None = None
    extra: Mapping[str, str | bool] = dataclasses.field(default_factory=dict)
    max_running: int | None = None
    poll_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in LAUNCHERS:
            raise ValueError(f"Invalid launcher value: {self.kind!r} (expected one of {', '.join(LAUNCHERS)})")
        if self.kind == "slurm" and self.time is None:
            raise ValueError(
                "Invalid time value: None (a SLURM job needs a time limit: give the time one run "
                "takes, e.g. --time 4:00:00; a run that reaches it is requeued from its checkpoint)"
            )
        if self.time is not None:
            parse_time(self.time)
        if self.partition is not None and not re.fullmatch(r"[\w.,-]+", self.partition):
            raise ValueError(f"Invalid partition value: {self.partition!r} (expected a SLURM partition name)")
        for name, low in (("cpus_per_task", 1), ("gpus_per_node", 0), ("max_running", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                flag = "--jobs" if name == "max_running" else "--" + name.replace("_", "-")
                raise ValueError(f"Invalid {name} value: {value!r} (expected an integer >= {low}, {flag})")
        if self.mem is not None:
            object.__setattr__(self, "mem", parse_mem(self.mem))
        object.__setattr__(
            self, "extra", parse_extra([k if v is True else f"{k}={v}" for k, v in dict(self.extra).items()])
        )
        if self.poll_s is not None and not self.poll_s > 0:
            raise ValueError(f"Invalid poll_s value: {self.poll_s!r} (expected seconds > 0)")

    @property
    def timeout_min(self) -> int:
        """Each job's time limit in minutes (a day for the local executor when not given)."""
        return parse_time(self.time) if self.time is not None else 24 * 60

    def parameters(self, name: str) -> dict[str, Any]:
        """The ``AutoExecutor.update_parameters`` keywords: generic ones, and ``slurm_*`` ones that only SLURM uses.

        Example:
            >>> Launcher("slurm", time="1:30:00", cpus_per_task=4, extra={"qos": "high"}).parameters("x")
            {'name': 'x', 'timeout_min': 90, 'cpus_per_task': 4, 'slurm_additional_parameters': {'qos': 'high'}}
        """
        params: dict[str, Any] = {"name": name, "timeout_min": self.timeout_min}
        if self.cpus_per_task is not None:
            params["cpus_per_task"] = self.cpus_per_task
        if self.gpus_per_node is not None:
            params["gpus_per_node"] = self.gpus_per_node
        if self.partition is not None:
            params["slurm_partition"] = self.partition
        if self.mem is not None:
            params["slurm_mem"] = self.mem
        if self.extra:
            params["slurm_additional_parameters"] = dict(self.extra)
        return params

    def as_dict(self) -> dict[str, Any]:
        """For the manifest: the launcher and its options."""
        return {
            f.name: getattr(self, f.name) if f.name != "extra" else dict(self.extra) for f in dataclasses.fields(self)
        }

    def describe(self) -> str:
        """One line for the log: ``"SLURM jobs (partition gpu, time 4:00:00, 8 cpus, 1 gpus, mem 32G)"``."""
        shown = [
            f"partition {self.partition}" if self.partition else "",
            f"time {self.time}" if self.time else "",
            f"{self.cpus_per_task} cpus" if self.cpus_per_task else "",
            f"{self.gpus_per_node} gpus" if self.gpus_per_node else "",
            f"mem {self.mem}" if self.mem else "",
            *(k if v is True else f"{k}={v}" for k, v in self.extra.items()),
        ]
        what = "SLURM jobs" if self.kind == "slurm" else "local submitit jobs"
        details = ", ".join(filter(None, shown))
        return f"{what} ({details})" if details else what

    def executor(self, folder: Path, name: str) -> Any:
        """A configured ``submitit.AutoExecutor`` writing its files (job pickles, logs) to ``folder``."""
        submitit = require_submitit()
        executor = submitit.AutoExecutor(folder=Path(folder), cluster=self.kind)
        executor.update_parameters(**self.parameters(name))
        return executor

    def submit(self, executor: Any, job: RunJob, tasks: list[dict[str, Any]]) -> list[Any]:
        """Submit ``job(task)`` for each task (a job array on SLURM); returns the submitit jobs."""
        return executor.map_array(job, tasks)

    # ------------------------------------------------------------------------------------------------------------
    def run(
        self,
        tasks: list[dict[str, Any]],
        *,
        folder: Path,
        name: str,
        threads: int,
        report: Callable[[dict[str, Any], str, dict[str, Any] | None, str | None], bool],
        log: Callable[[str], None],
    ) -> None:
        """Run ``tasks`` as jobs and wait for them all; ``report(task, outcome, record, error)`` is called once per
        finished run (and with ``"busy"`` for a run another invocation holds, which is waited for at the end, as
        the local runner does: stored there, its record is used; not stored, it is submitted again)."""
        executor = self.executor(folder, name)
        job = RunJob(threads)
        queue: deque[dict[str, Any]] = deque()
        held: list[dict[str, Any]] = []
        for task in tasks:
            with RunLock(_lock_path(task)) as lock:
                free = lock.acquire()  # held by another invocation: no job for it now (see above)
            if free:
                queue.append(task)
            else:
                report(task, "busy", None, None)
                held.append(task)
        running: dict[Any, dict[str, Any]] = {}
        poll_s = self.poll_s or (10.0 if self.kind == "slurm" else 0.2)
        try:
            while queue or running or held:
                room = len(queue) if self.max_running is None else self.max_running - len(running)
                batch = [queue.popleft() for _ in range(min(room, len(queue)))]
                if batch:
                    jobs = self.submit(executor, job, batch)
                    log(f"  submitted {len(jobs)} job(s) ({_ids(jobs)}); their logs in {folder}")
                    running.update(zip(jobs, batch))
                for finished in [j for j in running if j.done()]:
                    task = running.pop(finished)
                    if not report(task, *self._outcome(finished, task)):
                        held.append(task)
                if not queue and not running and held:  # everything else is done: wait for the other invocation
                    task = held.pop(0)
                    with RunLock(_lock_path(task)) as lock:
                        lock.acquire(wait=True)
                        if Path(task["record_path"]).is_file():
                            lock.done()
                            report(task, "elsewhere", read_json(Path(task["record_path"])), None)
                            continue
                    queue.append(task)  # the other invocation stopped without storing it: run it here
                elif running and not batch:
                    time.sleep(poll_s)
        except KeyboardInterrupt:
            if running:
                log(
                    f"interrupted: {len(running)} submitted job(s) keep running and store their runs "
                    f"({_ids(list(running))}; scancel cancels them); run the command again to collect them"
                )
            raise

    def _outcome(self, job: Any, task: dict[str, Any]) -> Outcome:
        """What a finished job did: its function's return value, or ``"failed"`` with where to look."""
        result_file = job.paths.result_pickle
        deadline = time.monotonic() + (15.0 if self.kind == "slurm" else 1.0)  # a shared file system may lag
        while not result_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        where = f"job {job.job_id}; its log: {job.paths.stderr}"
        if result_file.exists():
            try:
                outcome, record, error = job.result()
            except Exception as failure:  # the job could not run the function (import, unpickling)
                return "failed", None, f"{failure}\n({where})"
            return outcome, record, f"{error}({where})" if error else None
        record_path = Path(task["record_path"])
        if record_path.is_file():  # stored, but the job's return value was lost
            return "done", read_json(record_path), None
        return (
            "failed",
            None,
            (
                f"job {job.job_id} ended without storing the run (state {job.state}: killed, out of "
                f"memory or over its time limit?); its log: {job.paths.stderr}{_tail(job)}\n"
                "The run continues from its last checkpoint when the command is run again."
            ),
        )


def _lock_path(task: dict[str, Any]) -> Path:
    return Path(task["record_path"]).with_suffix(".lock")


def _ids(jobs: list[Any]) -> str:
    ids = [str(j.job_id) for j in jobs]
    return ", ".join(ids) if len(ids) <= 4 else f"{ids[0]}, ..., {ids[-1]}"


def _tail(job: Any, lines: int = 12) -> str:
    try:
        text = Path(job.paths.stderr).read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    return ("\n  " + "\n  ".join(text[-lines:])) if text else ""
