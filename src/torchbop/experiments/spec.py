"""What an experiment is: the :class:`Experiment` protocol its module follows, the :class:`RunSpec` of each of its
independent runs and the :class:`RunContext` a run executes in.

An experiment is one module that owns everything about itself (settings, plan, execution, summary, figure, verdicts,
report section); :mod:`~torchbop.experiments.registry` lists the modules. The runner, the figures and the report know
an experiment only through this protocol, as ``torch.optim.lr_scheduler`` knows optimizers only through
``param_groups``.

Example:
    >>> spec = RunSpec("approximation", "mnist-seed0", {"seed": 0, "train": {"lr": 0.001}})
    >>> spec.key(1) == RunSpec("approximation", "another label", {"train": {"lr": 0.001}, "seed": 0}).key(1)
    True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from matplotlib.figure import Figure

from torchbop.experiments.store import jsonable
from torchbop.experiments.verdicts import Verdict

__all__ = ["Experiment", "RunSpec", "RunContext"]

Record = dict[str, Any]  # a stored run: {"params", "result", "wall_time_s", "environment", ...} (see runner)


@dataclass(frozen=True)
class RunSpec:
    """One independent run: ``label`` is for people, ``params`` (JSON-able) is everything the run depends on."""

    experiment: str
    label: str
    params: dict[str, Any]

    def key(self, version: int) -> str:
        """16 hex digits of SHA-256 over the experiment, its version and the canonical JSON of ``params``."""
        text = json.dumps(
            {"experiment": self.experiment, "version": version, "params": jsonable(self.params)},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunContext:
    """Where a run may write scratch files (checkpoints), where the data is, and whether to print progress."""

    run_dir: Path
    data_dir: str | None = None
    verbose: bool = False
    label: str = ""

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"  [{self.label}] {message}", flush=True)


@runtime_checkable
class Experiment(Protocol):
    """The names an experiment module defines (a module satisfies a protocol by its attributes).

    Identity and settings:

    * ``NAME``: the command's name (``torchbop experiment NAME``) and the folder ``results/<profile>/NAME``;
    * ``TITLE``: the report section's title; ``VERSION``: bumped when the procedure changes (it enters every run key);
    * ``Config``: its settings, a frozen dataclass (values only); ``CONFIGS``: the ``Config`` of each profile;
    * ``NOT_SCALE``: settings that do not change how a published claim is tested (a run differing from the ``paper``
      profile only in those is at the published scale);
    * ``KEEP_RUN_DIR``: keep a stored run's scratch folder (its checkpoints).

    Running: ``datasets(config)`` (what to check or fetch first), ``plan(config)`` (the runs, *every* value a run
    depends on in its ``params``), ``execute(params, ctx)`` (one run, in this process or a worker; JSON-able
    results), ``describe(result)`` (one line for the log).

    Reporting, from stored records only: ``summarize(records, config)`` (numbers; ``summary["tables"]`` maps a name
    to rows, written as ``<name>.csv``), ``plot(fig, records, summary, config)``, ``verdicts(summary)`` (one
    :class:`~torchbop.experiments.verdicts.Verdict` per claim), ``results(summary)`` (the report's Markdown lines).
    """

    NAME: str
    TITLE: str
    VERSION: int
    Config: type
    CONFIGS: Mapping[str, Any]
    NOT_SCALE: frozenset[str]
    KEEP_RUN_DIR: bool

    def datasets(self, config: Any) -> tuple[str, ...]: ...

    def plan(self, config: Any) -> list[RunSpec]: ...

    def execute(self, params: dict[str, Any], ctx: RunContext) -> dict[str, Any]: ...

    def describe(self, result: dict[str, Any]) -> str: ...

    def summarize(self, records: list[Record], config: Any) -> dict[str, Any]: ...

    def plot(self, fig: Figure, records: list[Record], summary: dict[str, Any], config: Any) -> None: ...

    def verdicts(self, summary: dict[str, Any]) -> list[Verdict]: ...

    def results(self, summary: dict[str, Any]) -> list[str]: ...
