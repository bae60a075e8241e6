"""The ``torchbop`` command: ``train``, ``experiment``, ``report``, ``summary`` and ``export``.

::

    torchbop train --recipe mnist [--epochs 3] [--set key=value ...]
    torchbop experiment approximation --profile quick --jobs 2
    torchbop report --profile quick
    torchbop summary --recipe cifar10 | --checkpoint RUN_DIR_OR_CKPT
    torchbop export RUN_DIR_OR_CKPT -o model.tbop [--format packed|onnx] [--overwrite]

Errors: a mistake in the input (a recipe that does not exist, a bad value, a missing data folder, a corrupt
checkpoint, hardware that is not there) is a :class:`~torchbop.errors.UserError`; ``main`` prints its message on
stderr as one short line and returns 2. ``--debug`` (or ``TORCHBOP_DEBUG=1``) shows the traceback instead.

Every option declares its domain as its ``type`` (a :class:`~torchbop.domains.Domain`; the options that set a
``TrainConfig`` field take that field's), or as ``choices``: a value outside it is one line and exit status 2 from
the parser, before anything runs. ``--set key=value`` is read the same way by ``train`` and ``experiment``
(:func:`~torchbop.domains.parse_assignments`: YAML scalars, the same errors for the same mistake), and both check
everything before a run or results folder exists (``train``: :func:`~torchbop.training.config.check_environment`;
``experiment``: the experiment's plan, which builds every run's ``TrainConfig``).

Each subcommand is a row of :data:`COMMANDS`. An option that several subcommands take is defined once, in
:data:`SHARED_OPTIONS`.

Example:
    >>> parser = build_parser()
    >>> args = parser.parse_args(["train", "--recipe", "mnist", "--epochs", "2", "--set", "gamma=1e-3"])
    >>> config_from_args(args).epochs, config_from_args(args).gamma
    (2, 0.001)
    >>> args = parser.parse_args(["experiment", "cifar10", "--profile", "quick", "--epochs", "2"])
    >>> settings_from_args(args)
    {'epochs': 2}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only

from torchbop.data import DATASETS, fetch_datasets
from torchbop.data.datasets import check_dataset_names
from torchbop.data.fetch import missing_files
from torchbop.data.paths import describe_data_dir, resolve_data_dir
from torchbop.deploy import export, export_onnx, summary
from torchbop.domains import Folder, Int, Parsed, Real, Text, parse_assignments
from torchbop.errors import UserError, blame_user
from torchbop.experiments import runner
from torchbop.experiments.launchers import LAUNCHERS, Launcher, parse_extra, parse_mem, parse_time, require_submitit
from torchbop.experiments.profiles import PROFILES
from torchbop.experiments.registry import EXPERIMENTS
from torchbop.experiments.report import build_report
from torchbop.models import create_model
from torchbop.training.checkpoints import load_checkpoint, load_model, stored_config
from torchbop.training.config import (
    PROTOCOLS,
    TrainConfig,
    apply_overrides,
    available_recipes,
    check_environment,
    field_domains,
    load_recipe,
)
from torchbop.training.loop import check_config, format_summary, train
from torchbop.training.run_folder import checkpoint_of

__all__ = ["Command", "COMMANDS", "SHARED_OPTIONS", "build_parser", "config_from_args", "settings_from_args", "main"]


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add_arguments(parser)`` declares its options, ``run(args) -> exit code`` runs it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line (``main`` prints it and returns 2), as a UserError is."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


class _UsageError(Exception):
    pass


#: The domain of each TrainConfig field; an option that sets a field takes the field's.
FIELDS = field_domains()
#: Paths that must exist: a run folder or a checkpoint file.
EXISTING = Parsed(
    rule="an existing run folder or checkpoint file", examples=("{tmp}/nothing",), parse=lambda text: _must_exist(text)
)


#: A recipe: a shipped name or a .yaml file (load_recipe says which exist).
RECIPE = Text(rule="a shipped recipe name or a .yaml file")
#: A file to write: not a folder, and nothing on its way is a file.
OUTPUT_FILE = Parsed(rule="a file to write", examples=("{tmp}",), parse=lambda text: _writable_file(text))


def _writable_file(text: str) -> None:
    Folder(rule="a file to write").check("output", os.path.dirname(os.path.abspath(text)))
    if os.path.isdir(text):
        raise ValueError(f"{text}: a folder (expected a file to write, e.g. {os.path.join(text, 'model.tbop')})")


def _must_exist(text: str) -> None:
    if not os.path.exists(os.path.expanduser(text)):
        raise ValueError(f"{text}: no such file or folder (expected a run folder or a checkpoint file)")


#: Options of more than one subcommand, each defined once: flag -> ``add_argument`` keywords.
SHARED_OPTIONS: dict[str, dict[str, Any]] = {
    "--epochs": dict(type=FIELDS["epochs"], help="training epochs"),
    "--width": dict(type=Real(0, low_open=True), help="width multiplier of the model (BinaryNet; model_kwargs.width)"),
    "--subset": dict(type=FIELDS["subset"], help="train on this many training images (a seeded random subset)"),
    "--data-dir": dict(type=Folder(), help="data root (default: $TORCHBOP_DATA, else ~/.cache/torchbop)"),
    "--download": dict(action="store_true", help="download missing datasets first (checksummed)"),
    "--set": dict(
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=Text(forbid=r"^[^=]*$|^\s*=", rule="KEY=VALUE", examples=("gamma", "=1")),
        help="change any setting (repeatable): a config field for train (--set gamma=1e-3, --set "
        "model_kwargs.variant=reproduction), a setting of the experiment (--set retrain_epochs=3)",
    ),
    "--print-config": dict(action="store_true", help="print the resolved configuration and exit"),
    "--profile": dict(
        default="quick",
        choices=list(PROFILES),
        help=f"named scale ({', '.join(PROFILES)}; default quick): the experiment's settings, and results/<profile>",
    ),
    "--results-dir": dict(default="results", type=Folder(), help="results root (default: results)"),
}


def _add_shared(parser: argparse.ArgumentParser, *flags: str) -> None:
    for flag in flags:
        parser.add_argument(flag, **SHARED_OPTIONS[flag])


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


# ----------------------------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------------------------
#: Flags that set the TrainConfig field of their name. Everything else: --set key=value.
TRAIN_FIELDS = (
    "--epochs",
    "--batch-size",
    "--data-dir",
    "--subset",
    "--seed",
    "--out",
    "--resume",
    "--precision",
    "--devices",
    "--accelerator",
    "--strategy",
)


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipe",
        type=RECIPE,
        help=f"a shipped recipe ({', '.join(available_recipes())}) or a "
        ".yaml path; optional with --resume (the checkpoint's "
        "configuration is used)",
    )
    _add_shared(parser, "--epochs", "--width", "--subset", "--data-dir", "--download", "--set", "--print-config")
    parser.add_argument("--batch-size", type=FIELDS["batch_size"], help="training batch size")
    parser.add_argument("--seed", type=FIELDS["seed"], help="random seed (0 to 2**32 - 1)")
    parser.add_argument("--out", type=FIELDS["out"], help="run directory (default: runs/<recipe name>)")
    parser.add_argument(
        "--resume",
        type=FIELDS["resume"],
        help="continue a run: its folder (checkpoints/last.ckpt "
        "is used) or a .ckpt file; the run goes on in that "
        "folder",
    )
    parser.add_argument("--precision", type=FIELDS["precision"], help=FIELDS["precision"].describe())
    parser.add_argument("--devices", type=FIELDS["devices"], help="devices per node: " + FIELDS["devices"].describe())
    parser.add_argument("--accelerator", type=FIELDS["accelerator"], help=FIELDS["accelerator"].describe())
    parser.add_argument("--strategy", type=FIELDS["strategy"], help=FIELDS["strategy"].describe())
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a folder that holds another run, removing that run's files",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar: one line per epoch")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` the arguments describe: recipe (or the resumed checkpoint's config), then
    ``--set`` overrides, then dedicated flags. Bad input raises :class:`UserError`."""
    if args.recipe is not None:
        with blame_user(ValueError, OSError):
            config = load_recipe(args.recipe)
    elif args.resume is not None:
        config = _config_of_checkpoint(args.resume)
    else:
        raise UserError("give --recipe NAME_OR_FILE (or --resume RUN_FOLDER to continue a run)")
    with blame_user(ValueError):
        config = apply_overrides(config, args.overrides)
    changes = {_dest(flag): getattr(args, _dest(flag)) for flag in TRAIN_FIELDS}
    changes = {field: value for field, value in changes.items() if value is not None}
    if args.width is not None:
        changes["model_kwargs"] = {**config.model_kwargs, "width": args.width}
    if args.download:
        changes["download"] = True
    if args.no_progress:
        changes["progress_bar"] = False
    with blame_user(ValueError):
        config = config.replace(**changes) if changes else config
        check_environment(config)  # the machine, the files and the model, before a run folder exists
    return config


def _config_of_checkpoint(resume: str) -> TrainConfig:
    """The configuration stored in the checkpoint ``--resume`` names, without its folder (``out``): a resumed run
    continues in the folder it is resumed from, wherever that run started."""
    path, _ = checkpoint_of(resume)
    return _stored_config(path, load_checkpoint(path))


def _stored_config(path: Any, checkpoint: dict[str, Any]) -> TrainConfig:
    try:
        stored = stored_config(checkpoint, path)
    except UserError as error:
        raise UserError(f"{error}; give --recipe too") from None
    with blame_user(ValueError, what=f"{path}: stored configuration"):
        return TrainConfig.from_dict({**stored, "out": None})


def _run_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.print_config:
        check_config(config)
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    result = train(config, overwrite=args.overwrite)
    if rank_zero_only.rank != 0:  # under DDP every process returns here; one prints
        return 0
    if result.get("already_finished"):
        print(
            f"{result['out_dir']}: this run has already finished ({result['epochs']} epochs, test accuracy "
            f"{_fraction(result.get('test_acc'))}); nothing was changed. Raise --epochs to train it further."
        )
        return 0
    print(format_summary(result))
    print(f"test accuracy: {_fraction(result['test_acc'])}")
    return 0


def _fraction(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ----------------------------------------------------------------------------------------------------------------
# experiment, report
# ----------------------------------------------------------------------------------------------------------------
#: Flags that change one setting of the experiment: flag -> setting. --set reaches any other.
EXPERIMENT_SETTINGS = {
    "--epochs": "epochs",
    "--seeds": "seeds",
    "--width": "width",
    "--subset": "subset",
    "--test-subset": "test_subset",
    "--dataset": "datasets",
    "--protocol": "protocol",
}


def _add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=list(EXPERIMENTS), help="which experiment")
    _add_shared(
        parser,
        "--profile",
        "--epochs",
        "--width",
        "--subset",
        "--set",
        "--results-dir",
        "--data-dir",
        "--download",
        "--print-config",
    )
    parser.add_argument("--seeds", type=Int(1), help="number of seeds (random initializations)")
    parser.add_argument("--test-subset", type=Int(1), help="evaluate on this many test images")
    parser.add_argument(
        "--dataset",
        type=Parsed(
            rule="datasets", parse=lambda t: check_dataset_names(t.split(",")), examples=("svhn", "mnist,svhn")
        ),
        help=f"approximation only: comma-separated datasets ({', '.join(DATASETS)})",
    )
    parser.add_argument("--protocol", choices=PROTOCOLS, help="cifar10 only: " + " | ".join(PROTOCOLS))
    parser.add_argument(
        "--jobs",
        type=Int(1),
        help="independent runs in parallel processes (default 1); with "
        "--launcher, at most this many jobs at once (default: all)",
    )
    parser.add_argument(
        "--threads",
        type=Int(1),
        help="torch threads per job (default: cores // jobs; with --launcher: --cpus-per-task, else 1 on SLURM)",
    )
    parser.add_argument("--quiet", action="store_true", help="only one line per finished run")
    cluster = parser.add_argument_group(
        "cluster jobs",
        "each run to do as one job, through submitit (pip install "
        "'torchbop[cluster]'); the results land in --results-dir",
    )
    cluster.add_argument(
        "--launcher",
        choices=list(LAUNCHERS),
        help="; ".join(f"{k}: {v}" for k, v in LAUNCHERS.items()) + " (default: local processes)",
    )
    cluster.add_argument(
        "--partition",
        type=Text(forbid=r"[^\w.,-]", rule="a SLURM partition name", examples=("a b",)),
        help="SLURM partition (default: the cluster's)",
    )
    cluster.add_argument(
        "--time",
        type=Parsed(parse=parse_time, rule="a time limit", examples=("1h", "0")),
        help="each job's time limit, as sbatch --time takes it (90, 4:00:00, 1-12:00); required with --launcher slurm",
    )
    cluster.add_argument("--cpus-per-task", type=Int(1), help="CPUs of each job (also its torch threads)")
    cluster.add_argument("--gpus-per-node", type=Int(0), help="GPUs of each job")
    cluster.add_argument(
        "--mem",
        type=Parsed(parse=parse_mem, rule="an amount of memory", examples=("lots",)),
        help="memory of each job, as sbatch --mem takes it (16G, 4000M)",
    )
    cluster.add_argument(
        "--slurm-extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=Parsed(parse=lambda t: parse_extra([t]), rule="KEY=VALUE", examples=("=x",)),
        help="any other sbatch option (repeatable): --slurm-extra account=myproject, "
        "--slurm-extra qos=high, --slurm-extra exclusive",
    )


#: The options of cluster jobs, which need --launcher.
CLUSTER_OPTIONS = ("--partition", "--time", "--cpus-per-task", "--gpus-per-node", "--mem", "--slurm-extra")


def _launcher_from_args(args: argparse.Namespace) -> Launcher | None:
    """The :class:`~torchbop.experiments.launchers.Launcher` of ``--launcher`` and its options (``None``: local
    processes), checked, with submitit importable; a :class:`UserError` otherwise, before anything is submitted."""
    given = [flag for flag in CLUSTER_OPTIONS if getattr(args, _dest(flag)) not in (None, [])]
    if args.launcher is None:
        if given:
            raise UserError(
                f"{', '.join(given)}: options of cluster jobs, which need --launcher slurm (without a "
                "launcher, runs are local processes)"
            )
        return None
    with blame_user(ValueError):
        launcher = Launcher(
            args.launcher,
            time=args.time,
            partition=args.partition,
            cpus_per_task=args.cpus_per_task,
            gpus_per_node=args.gpus_per_node,
            mem=args.mem,
            extra=parse_extra(args.slurm_extra),
            max_running=args.jobs,
        )
    with blame_user(ImportError):
        require_submitit()
    return launcher


def settings_from_args(args: argparse.Namespace) -> dict[str, object]:
    """Settings changed by the command line: ``--set`` first, then the dedicated flags."""
    with blame_user(ValueError):
        changes: dict[str, object] = parse_assignments(args.overrides)
    for flag, setting in EXPERIMENT_SETTINGS.items():
        value = getattr(args, _dest(flag))
        if value is not None:
            changes[setting] = value
    return changes


def _run_experiment(args: argparse.Namespace) -> int:
    with blame_user(ValueError):
        config = runner.configure(args.profile, args.name, settings_from_args(args))
    if args.print_config:
        print(json.dumps(dataclasses.asdict(config), indent=1))
        return 0
    with blame_user(ValueError, TypeError, what=f"{args.name}"):  # every run's TrainConfig, before results/ exists
        EXPERIMENTS[args.name].plan(config)
    launcher = _launcher_from_args(args)
    _check_data(EXPERIMENTS[args.name].datasets(config), args.data_dir, download=args.download)
    runner.quiet_lightning()
    manifest = runner.run_experiment(
        args.name,
        config,
        profile=args.profile,
        results_root=args.results_dir,
        data_dir=args.data_dir,
        jobs=1 if args.jobs is None or launcher else args.jobs,
        threads=args.threads,
        verbose=not args.quiet,
        launcher=launcher,
        command="torchbop " + " ".join(sys.argv[1:]),
    )
    return 1 if manifest["failed"] else 0


def _check_data(names: tuple[str, ...], data_dir: str | None, *, download: bool) -> None:
    """Before any run: the experiment's datasets are on disk and intact (each file verified once, so a corrupt file is
    named now rather than in every run), or fetched with ``download``; otherwise one message lists the missing files
    with their URLs and destinations."""
    with blame_user(OSError, ValueError):
        missing = missing_files(names, data_dir)
        if download or not missing:  # fetch what is missing (with download), then verify every file once
            fetch_datasets(names, data_dir, progress=True)
            return
        listing = "\n".join(
            f"  {remote.url}  (md5 {remote.md5})\n    -> {folder / remote.filename}" for folder, remote in missing
        )
        raise UserError(
            f"{', '.join(names)}: {len(missing)} file(s) missing under the data root "
            f"{resolve_data_dir(data_dir)} (from {describe_data_dir(data_dir)}). Run again with "
            f"--download to fetch them (checksummed), or put each file at the path shown:\n{listing}"
        )


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    _add_shared(parser, "--profile", "--results-dir")
    parser.add_argument(
        "--out", default="reports", type=Folder(), help="reports root: writes <out>/<profile>/REPORT.md"
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="build every section from the results, even where they no longer hold all the runs a "
        "section of the existing report was built from (by default such a section is kept)",
    )


def _run_report(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    path = build_report(args.profile, results_root=args.results_dir, reports_root=args.out, rebuild=args.rebuild)
    print(f"wrote {path} ({time.perf_counter() - started:.1f} s)")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# summary, export
# ----------------------------------------------------------------------------------------------------------------
def _add_summary_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--recipe", type=RECIPE, help=f"the model of a recipe ({', '.join(available_recipes())}) or a .yaml path"
    )
    source.add_argument(
        "--checkpoint", type=EXISTING, help="a trained model: a run folder (its checkpoints/last.ckpt) or a .ckpt file"
    )
    _add_shared(parser, "--width", "--set")


def _model_of_recipe(args: argparse.Namespace) -> tuple[Any, TrainConfig]:
    with blame_user(ValueError, OSError):
        config = load_recipe(args.recipe)
    with blame_user(ValueError):
        config = apply_overrides(config, args.overrides)
    if args.width is not None:
        config = config.replace(model_kwargs={**config.model_kwargs, "width": args.width})
    with blame_user(ValueError, TypeError, what=f"model {config.model} {config.model_kwargs}"):
        return create_model(config.model, mode=config.mode, **config.model_kwargs), config


def _trained_model(source: str) -> tuple[Any, TrainConfig, Any]:
    """``(model with the checkpoint's weights, its config, checkpoint path)`` of a run folder or ``.ckpt`` file."""
    path, _ = checkpoint_of(source)
    config = _stored_config(path, load_checkpoint(path))
    return load_model(path), config, path


def _run_summary(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        if args.width is not None or args.overrides:
            raise UserError("--width and --set change a recipe's model; a checkpoint's model is what was trained")
        model, config, _ = _trained_model(args.checkpoint)
    else:
        model, config = _model_of_recipe(args)
    kwargs = f" {config.model_kwargs}" if config.model_kwargs else ""
    shape = list(DATASETS[config.dataset].input_shape)
    print(f"{config.model}{kwargs}, mode {config.mode}, on {config.dataset} images {shape}")
    print(summary(model, shape))
    return 0


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="RUN_DIR_OR_CHECKPOINT",
        type=EXISTING,
        help="a run folder (its checkpoints/last.ckpt is used) or a .ckpt file",
    )
    parser.add_argument(
        "-o", "--output", required=True, type=OUTPUT_FILE, help="the file to write (e.g. model.tbop, model.onnx)"
    )
    parser.add_argument(
        "--format",
        choices=("packed", "onnx"),
        default="packed",
        help="packed: the 1-bit file torchbop.load_packed reads (default); onnx: an ONNX graph for "
        "ONNX Runtime and other runtimes (needs pip install 'torchbop[onnx]')",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")


def _run_export(args: argparse.Namespace) -> int:
    if os.path.exists(args.output) and not args.overwrite:
        raise UserError(f"{args.output}: already exists; choose another output file or pass --overwrite")
    model, config, path = _trained_model(args.source)
    source = {
        "checkpoint": str(path),
        "model": config.model,
        "model_kwargs": config.model_kwargs,
        "mode": config.mode,
        "dataset": config.dataset,
    }
    with blame_user(ValueError, ImportError, what=f"{path}: {config.model}"):
        if args.format == "onnx":
            written = export_onnx(
                model, args.output, input_shape=list(DATASETS[config.dataset].input_shape), overwrite=args.overwrite
            )
        else:
            written = export(
                model,
                args.output,
                input_shape=list(DATASETS[config.dataset].input_shape),
                overwrite=args.overwrite,
                source=source,
            )
    size = written.stat().st_size
    fp32 = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    print(f"wrote {written}: {size:,} bytes; the model's fp32 weights: {fp32:,} bytes ({fp32 / size:.1f}x)")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------
COMMANDS: dict[str, Command] = {
    "train": Command("train a binarized network from a recipe", _add_train_arguments, _run_train),
    "experiment": Command(
        "run one of the paper's experiments at a named scale", _add_experiment_arguments, _run_experiment
    ),
    "report": Command("gather experiment results into reports/<profile>/REPORT.md", _add_report_arguments, _run_report),
    "summary": Command(
        "per-layer parameters, 1-bit memory and MACs of a recipe's or a checkpoint's model",
        _add_summary_arguments,
        _run_summary,
    ),
    "export": Command(
        "write a trained model as a packed 1-bit file (torchbop.load_packed reads it) or, with "
        "--format onnx, as an ONNX graph",
        _add_export_arguments,
        _run_export,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="torchbop", description="Binarized neural networks trained with Bop.")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (also: TORCHBOP_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; a usage error or a :class:`UserError` becomes one line on stderr and exit status 2."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as error:
        print(error, file=sys.stderr)
        return 2
    try:
        return args._run(args)
    except UserError as error:
        if args.debug or os.environ.get("TORCHBOP_DEBUG", "") not in ("", "0"):
            raise
        print(f"torchbop {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
