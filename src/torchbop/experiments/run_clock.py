"""``RunClock``: the time one run has taken over every invocation that worked on it.

A long run that is killed and resumed (see :mod:`torchbop.experiments.runner`) spends time in several processes; its
record should say how long it took in all, not only how long the last invocation ran. While a run executes, its
clock writes the time spent so far to ``elapsed.json`` in the run's folder (atomically, every ``interval_s`` seconds
and at the end), so a process killed without warning loses at most ``interval_s`` of the count; the next invocation
of the run starts from that file. Time that a killed invocation spent after its last checkpoint is counted: it was
spent, even if the run had to do that work again.

Beside that wall-clock time the clock counts the CPU time of the process executing the run
(:func:`time.process_time`: every thread of it; a run executes alone in its process, in the invocation's own with
``--jobs 1`` or in a worker process otherwise). When runs share cores (two invocations on one machine, or more jobs
than cores), the wall-clock time overstates the work; the CPU time does not. A run begun before runs counted CPU time
has no complete CPU count: :meth:`RunClock.cpu_s` is then ``None``.

``elapsed.json``: ``{"elapsed_s": seconds over all invocations so far, "cpu_s": CPU seconds over all of them (absent
when not counted from the start), "started_at": when the first one began}``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from torchbop.experiments.store import read_json, time_stamp, write_json

__all__ = ["RunClock", "time_spent"]


class RunClock:
    """Counts a run's time across invocations; use as ``with RunClock(run_dir) as clock: ...; clock.elapsed_s()``.

    Args:
        run_dir: the run's folder (created when the clock first writes).
        interval_s: seconds between two writes of ``elapsed.json`` while the run executes (default
            :attr:`INTERVAL_S`).
    """

    FILE = "elapsed.json"
    INTERVAL_S = 30.0

    def __init__(self, run_dir: Path, interval_s: float | None = None) -> None:
        self.path = Path(run_dir) / self.FILE
        self.interval_s = interval_s or self.INTERVAL_S
        earlier = _read(self.path)
        self.earlier_s: float = earlier.get("elapsed_s", 0.0)
        # an earlier invocation that wrote no CPU count leaves it incomplete for good
        self.earlier_cpu_s: float | None = earlier.get("cpu_s") if earlier else 0.0
        self.started_at: str = earlier.get("started_at") or time_stamp()
        self._started = time.perf_counter()
        self._started_cpu = time.process_time()
        self._ended: float | None = None
        self._ended_cpu: float | None = None
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._keep_writing, name="RunClock", daemon=True)

    def __enter__(self) -> RunClock:
        self._started = time.perf_counter()
        self._started_cpu = time.process_time()
        self._writer.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._writer.join()
        self._ended = time.perf_counter()
        self._ended_cpu = time.process_time()
        self._write()  # also after a failure: the next attempt at the run counts this one's time

    def elapsed_s(self) -> float:
        """Seconds spent on the run: by earlier invocations, and by this one so far (until the ``with`` block ended)."""
        return self.earlier_s + (self._ended or time.perf_counter()) - self._started

    def cpu_s(self) -> float | None:
        """CPU seconds spent on the run by every invocation so far; ``None`` when an earlier invocation did not count
        them (the run began before runs counted CPU time)."""
        if self.earlier_cpu_s is None:
            return None
        ended = self._ended_cpu if self._ended_cpu is not None else time.process_time()
        return self.earlier_cpu_s + ended - self._started_cpu

    def _keep_writing(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write()

    def _write(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            cpu = self.cpu_s()
            write_json(
                self.path,
                {
                    "elapsed_s": self.elapsed_s(),
                    **({"cpu_s": cpu} if cpu is not None else {}),
                    "started_at": self.started_at,
                },
            )
        except OSError:  # the run's folder was removed (a finished run) or cannot be written: only the count suffers
            pass


def time_spent(run_dir: Path) -> float | None:
    """Seconds spent on the run in ``run_dir`` so far, as its clock last wrote them (``None``: nothing written)."""
    return _read(Path(run_dir) / RunClock.FILE).get("elapsed_s")


def _read(path: Path) -> dict[str, Any]:
    """What an earlier invocation wrote, or nothing (none ran, or its file cannot be read)."""
    try:
        data = read_json(path)
        earlier = {"elapsed_s": float(data["elapsed_s"]), "started_at": str(data["started_at"])}
        if "cpu_s" in data:
            earlier["cpu_s"] = float(data["cpu_s"])
        return earlier
    except (OSError, ValueError, KeyError, TypeError):
        return {}
