"""Storage of experiment results: strict JSON written atomically, CSV tables, and the environment stamp (machine,
library and code versions) stored with every run record and manifest."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from torchbop.atomic_file import atomic_write

__all__ = [
    "jsonable",
    "write_json",
    "read_json",
    "write_csv",
    "load_manifest",
    "load_records",
    "compute_time_s",
    "cpu_time_s",
    "environment",
    "TIME_FORMAT",
    "time_stamp",
    "parse_time_stamp",
]

#: How records and manifests store a moment (``started_at``, ``finished_at``): local time with its UTC offset.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def time_stamp(seconds: float | None = None) -> str:
    """``seconds`` since the epoch (default: now) as :data:`TIME_FORMAT`."""
    return time.strftime(TIME_FORMAT, time.localtime(seconds))


def parse_time_stamp(stamp: str) -> float:
    """The inverse of :func:`time_stamp`: seconds since the epoch."""
    return datetime.strptime(stamp, TIME_FORMAT).timestamp()


# ----------------------------------------------------------------------------------------------------------------
def load_manifest(out: Path) -> dict[str, Any] | None:
    path = Path(out) / "manifest.json"
    return read_json(path) if path.is_file() else None


def load_records(out: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored records of the manifest's runs, in plan order (missing ones left out)."""
    paths = [Path(out) / "runs" / f"{run['key']}.json" for run in manifest["runs"]]
    return [read_json(p) for p in paths if p.is_file()]


def compute_time_s(record: dict[str, Any]) -> float:
    """Seconds a stored run took over all the invocations that worked on it (:class:`~torchbop.experiments.run_clock
    .RunClock`). Records stored before runs kept that count have only their last invocation's ``wall_time_s``, less
    than the whole for a run that was resumed."""
    return record.get("compute_time_s", record["wall_time_s"])


def cpu_time_s(record: dict[str, Any]) -> float | None:
    """CPU seconds a stored run took over all its invocations (:meth:`~torchbop.experiments.run_clock.RunClock
    .cpu_s`); ``None`` for a run that began before runs counted CPU time."""
    return record.get("cpu_time_s")


def jsonable(value: Any) -> Any:
    """Strict-JSON form: tuples -> lists, non-finite floats -> the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return jsonable(value.item())
    return value


def write_json(path: Path, obj: Any) -> None:
    """Write atomically (temp file in the same folder, then rename)."""
    with atomic_write(path, "w") as f:
        json.dump(jsonable(obj), f, indent=1, allow_nan=False)
        f.write("\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` (one column per key seen) atomically, like :func:`write_json`."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(jsonable(rows))


# ----------------------------------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------------------------------
def environment(threads: int | None = None, jobs: int | None = None) -> dict[str, Any]:
    """Machine, library versions and code version, stored with every record and manifest."""
    env: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        # the vector instructions torch's CPU kernels use (AVX2, AVX512): the same run rounds differently on each
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads() if threads is None else threads,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git": _git_version(),
    }
    if jobs is not None:
        env["jobs"] = jobs
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_version() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")
