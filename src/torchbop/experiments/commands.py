"""The ``experiment`` and ``report`` subcommands of ``torchbop`` (read by ``torchbop.cli`` from :data:`COMMANDS`).

Example:
    >>> from torchbop.cli import build_parser
    >>> args = build_parser().parse_args(["experiment", "cifar10", "--profile", "quick", "--epochs", "2"])
    >>> overrides_from_args(args)
    {'epochs': 2}
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings

from torchbop.cli import Command
from torchbop.errors import UserError, blame_user
from torchbop.experiments.profiles import PROFILES
from torchbop.experiments.runner import EXPERIMENTS, experiment_module

__all__ = ["COMMANDS", "overrides_from_args"]

# (flag, setting, type, help): shortcuts for the settings every profile has; --set reaches any other.
_SCALE_FLAGS = (
    ("--epochs", "epochs", int, "training epochs"),
    ("--seeds", "seeds", int, "number of seeds (random initializations)"),
    ("--width", "width", float, "BinaryNet width multiplier"),
    ("--subset", "subset", int, "train on this many images (a fixed random subset)"),
    ("--test-subset", "test_subset", int, "evaluate on this many test images"),
    ("--dataset", "datasets", str, "approximation only: comma-separated datasets (mnist, fashion-mnist, cifar10)"),
    ("--protocol", "protocol", str, "cifar10 only: original | reproduction"),
)


def _add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=list(EXPERIMENTS), help="which experiment")
    parser.add_argument("--profile", default="quick", choices=list(PROFILES),
                        help="named scale: paper (published), quick (<15 min for all four on 2 CPU cores), smoke")
    for flag, _, type_, help_ in _SCALE_FLAGS:
        parser.add_argument(flag, type=type_, help=help_)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change any setting of the experiment (repeatable), e.g. --set retrain_epochs=3")
    parser.add_argument("--jobs", type=int, default=1, help="independent runs in parallel processes (default 1)")
    parser.add_argument("--threads", type=int, help="torch threads per job (default: cores // jobs)")
    parser.add_argument("--results-dir", default="results", help="results root (default: results)")
    parser.add_argument("--data-dir", help="data root (default: $TORCHBOP_DATA, else ~/.cache/torchbop)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the datasets the experiment needs when they are missing (checksummed)")
    parser.add_argument("--quiet", action="store_true", help="only one line per finished run")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")


def overrides_from_args(args: argparse.Namespace) -> dict[str, object]:
    """Settings changed by the command line: ``--set`` first, then the dedicated flags."""
    changes: dict[str, object] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Invalid --set {item!r}: expected key=value")
        changes[key.strip()] = value.strip()
    for flag, setting, _, _ in _SCALE_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            changes[setting] = value
    return changes


def _run_experiment(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from torchbop.experiments.runner import configure, quiet_lightning, run_experiment

    with blame_user(ValueError):
        config = configure(args.profile, args.name, overrides_from_args(args))
    if args.print_config:
        print(json.dumps(dataclasses.asdict(config), indent=1))
        return 0
    _check_data(experiment_module(args.name).datasets(config), args.data_dir, download=args.download)
    quiet_lightning(logging, warnings)
    manifest = run_experiment(args.name, config, profile=args.profile, results_root=args.results_dir,
                              data_dir=args.data_dir, jobs=args.jobs, threads=args.threads, verbose=not args.quiet,
                              command="torchbop " + " ".join(sys.argv[1:]))
    return 1 if manifest["failed"] else 0


def _check_data(names: tuple[str, ...], data_dir: str | None, *, download: bool) -> None:
    """Before any run: the experiment's datasets are on disk and intact (each file verified once, so a corrupt file is
    named now rather than in every run), or fetched with ``download``; otherwise one message lists the missing files
    with their URLs and destinations."""
    from torchbop.data import fetch_datasets
    from torchbop.data.fetch import missing_files
    from torchbop.data.paths import describe_data_dir, resolve_data_dir

    with blame_user(OSError, ValueError):
        missing = missing_files(names, data_dir)
        if download or not missing:  # fetch what is missing (with download), then verify every file once
            fetch_datasets(names, data_dir, progress=True)
            return
        listing = "\n".join(f"  {remote.url}  (md5 {remote.md5})\n    -> {folder / remote.filename}"
                             for folder, remote in missing)
        raise UserError(f"{', '.join(names)}: {len(missing)} file(s) missing under the data root "
                        f"{resolve_data_dir(data_dir)} (from {describe_data_dir(data_dir)}). Run again with "
                        f"--download to fetch them (checksummed), or put each file at the path shown:\n{listing}")


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", help="which results/<profile> to report on (default quick)")
    parser.add_argument("--results-dir", default="results", help="results root (default: results)")
    parser.add_argument("--out", default="reports", help="reports root: writes <out>/<profile>/REPORT.md")


def _run_report(args: argparse.Namespace) -> int:
    from torchbop.experiments.report import build_report

    started = time.perf_counter()
    path = build_report(args.profile, results_root=args.results_dir, reports_root=args.out)
    print(f"wrote {path} ({time.perf_counter() - started:.1f} s)")
    return 0


COMMANDS: dict[str, Command] = {
    "experiment": Command("run one of the paper's experiments at a named scale", _add_experiment_arguments,
                          _run_experiment),
    "report": Command("gather experiment results into reports/<profile>/REPORT.md", _add_report_arguments,
                      _run_report),
}
