"""One experiment's part of a report, stored beside the report so that the report outlives its results.

``torchbop report`` writes, for every experiment it builds from stored runs, ``reports/<profile>/sections/
<experiment>.json``: the section's markdown, its rows of the summary table, its times and the keys of the runs it was
built from. A later ``torchbop report`` rebuilds the section when ``results/<profile>`` still holds every one of those
runs (a resumed profile holds more), and otherwise keeps the stored section as it is, saying so under its heading.
So a results folder that was deleted, lost with a machine, or only partly copied never makes a committed report
forget what it showed: long profiles (the ``cpu`` profile takes about 20 CPU-hours) can finish one experiment per
machine or session. ``--rebuild`` overrides this when the loss is wanted (runs deleted on purpose).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torchbop.errors import UserError
from torchbop.experiments.store import read_json, write_json

__all__ = ["ReportSection", "load_section", "save_section", "section_path"]

FORMAT = 1


@dataclasses.dataclass
class ReportSection:
    """What a report shows of one experiment, and what it was built from.

    Attributes:
        experiment: the experiment's name (``hyperparameters``).
        generated: when it was built (``YYYY-MM-DD HH:MM``).
        source: the results folder it was built from.
        runs: keys of the stored runs it was built from.
        planned: how many runs that invocation planned.
        lines: the section's markdown, its heading first.
        summary_rows: its rows of the report's "Verdicts at a glance" table.
        compute_s: its runs' compute time (wall-clock time of each run, summed).
        span_s: seconds from its first run's start to its last run's end.
        cpu_s: CPU time summed over the runs that counted it (``cpu_counted`` of ``len(runs)``).
        cpu_counted: how many of its runs counted their CPU time.
    """

    experiment: str
    generated: str
    source: str
    runs: list[str]
    planned: int
    lines: list[str]
    summary_rows: list[str]
    compute_s: float
    span_s: float
    cpu_s: float
    cpu_counted: int

    def covered_by(self, stored_keys: set[str]) -> bool:
        """True when ``stored_keys`` hold every run this section was built from: rebuilding it loses nothing."""
        return set(self.runs) <= stored_keys


def section_path(report_dir: Path, experiment: str) -> Path:
    return Path(report_dir) / "sections" / f"{experiment}.json"


def save_section(report_dir: Path, section: ReportSection) -> Path:
    """Write ``section`` atomically to :func:`section_path`; return the path."""
    path = section_path(report_dir, section.experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"format": FORMAT, **dataclasses.asdict(section)})
    return path


def load_section(report_dir: Path, experiment: str) -> ReportSection | None:
    """The stored section of ``experiment``, or None when the report has none.

    Raises:
        UserError: the file is not a section this version wrote (naming the file and the fix); nothing is written.
    """
    path = section_path(report_dir, experiment)
    if not path.is_file():
        return None
    fields = {f.name for f in dataclasses.fields(ReportSection)}
    try:
        stored: dict[str, Any] = read_json(path)
        if stored.get("format") != FORMAT or set(stored) - {"format"} != fields:
            raise ValueError(f"format {stored.get('format')!r}, fields {sorted(stored)}")
        return ReportSection(**{k: stored[k] for k in fields})
    except (ValueError, TypeError, AttributeError) as error:
        raise UserError(
            f"{path}: not a report section torchbop can read ({error}). Restore it with git, or delete it "
            f"to rebuild that section from the results alone. Nothing was written."
        ) from None
