"""The ``torchbop`` command: ``torchbop train --recipe mnist [--epochs 3] [--set key=value ...]``.

Errors: a mistake in the input (a recipe that does not exist, a bad value, a missing data folder, a corrupt
checkpoint, hardware that is not there) is a :class:`~torchbop.errors.UserError`; ``main`` prints its message on
stderr as one short line and returns 2. ``--debug`` (or ``TORCHBOP_DEBUG=1``) shows the traceback instead.

Subcommands are a small table. ``train`` lives here; other packages add theirs by exposing a module-level
``COMMANDS: dict[str, Command]`` in one of the modules listed in :data:`COMMAND_MODULES` (``torchbop.experiments``
provides ``experiment`` and ``report`` that way), so adding a subcommand never means editing this file's logic.
Nothing is registered at import time: the table is read when ``main`` builds the parser.

Example:
    >>> parser = build_parser()
    >>> args = parser.parse_args(["train", "--recipe", "mnist", "--epochs", "2", "--set", "gamma=1e-3"])
    >>> config_from_args(args).epochs, config_from_args(args).gamma
    (2, 0.001)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from torchbop.errors import UserError, blame_user

__all__ = ["Command", "COMMAND_MODULES", "build_parser", "config_from_args", "main"]

#: Modules that may define ``COMMANDS: dict[str, Command]``; a module that does not exist (yet) is skipped.
COMMAND_MODULES = ("torchbop.experiments.commands",)


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add_arguments(parser)`` declares its options, ``run(args) -> exit code`` runs it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------------------------
# Dedicated flags: (flag, config field, type, help). Everything else: --set key=value.
_TRAIN_FLAGS = (
    ("--epochs", "epochs", int, "number of epochs"),
    ("--batch-size", "batch_size", int, "training batch size"),
    ("--data-dir", "data_dir", str, "data root (default: $TORCHBOP_DATA, else ~/.cache/torchbop)"),
    ("--subset", "subset", int, "train on this many (seeded, random) training images"),
    ("--seed", "seed", int, "random seed"),
    ("--out", "out", str, "run directory (default: runs/<recipe name>)"),
    ("--resume", "resume", str, "continue a run: its folder (checkpoints/last.ckpt is used) or a .ckpt file; the "
                                "run goes on in that folder"),
    ("--precision", "precision", str, "32 or bf16-mixed"),
    ("--devices", "devices", str, "devices per node (an int or 'auto')"),
    ("--accelerator", "accelerator", str, "cpu, gpu or auto"),
    ("--strategy", "strategy", str, "auto or ddp"),
)


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from torchbop.training.config import available_recipes

    parser.add_argument("--recipe", help=f"a shipped recipe ({', '.join(available_recipes())}) or a .yaml path; "
                                          "optional with --resume (the checkpoint's configuration is used)")
    for flag, _, type_, help_ in _TRAIN_FLAGS:
        parser.add_argument(flag, type=type_, help=help_)
    parser.add_argument("--width", type=float, help="width multiplier of the model (model_kwargs.width)")
    parser.add_argument("--download", action="store_true", help="download missing datasets")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field (repeatable), e.g. --set gamma=1e-3 "
                             "--set model_kwargs.variant=reproduction")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in a folder that holds another run, removing that run's files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar: one line per epoch")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def config_from_args(args: argparse.Namespace):
    """The :class:`TrainConfig` the arguments describe: recipe (or the resumed checkpoint's config), then
    ``--set`` overrides, then dedicated flags. Bad input raises :class:`UserError`."""
    from torchbop.training.config import TrainConfig, apply_overrides, load_recipe

    if args.recipe is not None:
        with blame_user(ValueError, OSError):
            config = load_recipe(args.recipe)
    elif args.resume is not None:
        config = _config_of_checkpoint(args.resume)
    else:
        raise UserError("give --recipe NAME_OR_FILE (or --resume RUN_FOLDER to continue a run)")
    with blame_user(ValueError, what="--set"):
        config = apply_overrides(config, args.overrides)
    flags = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _, _ in _TRAIN_FLAGS}
    changes = {field: value for field, value in flags.items() if value is not None}
    if args.width is not None:
        changes["model_kwargs"] = {**config.model_kwargs, "width": args.width}
    if args.download:
        changes["download"] = True
    if args.no_progress:
        changes["progress_bar"] = False
    with blame_user(ValueError):
        config = config.replace(**changes) if changes else config
    assert isinstance(config, TrainConfig)
    return config


def _config_of_checkpoint(resume: str):
    """The configuration stored in the checkpoint ``--resume`` names, without its folder (``out``): a resumed run
    continues in the folder it is resumed from, wherever that run started."""
    from torchbop.training.checkpoints import load_checkpoint
    from torchbop.training.config import TrainConfig
    from torchbop.training.run_folder import checkpoint_of

    path, _ = checkpoint_of(resume)
    checkpoint = load_checkpoint(path)
    stored = checkpoint.get("hyper_parameters", {}).get("config")
    if not isinstance(stored, dict):
        raise UserError(f"{path}: not a torchbop training checkpoint (no stored configuration); give --recipe too")
    with blame_user(ValueError, what=f"{path}: stored configuration"):
        return TrainConfig.from_dict({**stored, "out": None})


def _run_train(args: argparse.Namespace) -> int:
    import yaml

    from torchbop.training.train import check_config, format_summary, train

    config = config_from_args(args)
    if args.print_config:
        check_config(config)
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    result = train(config, overwrite=args.overwrite)
    if not result.pop("is_global_zero"):
        return 0
    if result.get("already_finished"):
        print(f"{result['out_dir']}: this run has already finished ({result['epochs']} epochs, test accuracy "
              f"{_fraction(result.get('test_acc'))}); nothing was changed. Raise --epochs to train it further.")
        return 0
    print(format_summary(result))
    print(f"test accuracy: {_fraction(result['test_acc'])}")
    return 0


def _fraction(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


COMMANDS: dict[str, Command] = {
    "train": Command("train a binarized network from a recipe", _add_train_arguments, _run_train),
}


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------
def _all_commands() -> dict[str, Command]:
    commands = dict(COMMANDS)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is not None and name.startswith(error.name):
                continue  # that package does not provide commands (yet)
            raise
        for key, command in getattr(module, "COMMANDS", {}).items():
            if key in commands:
                raise RuntimeError(f"torchbop subcommand {key!r} is defined twice (again in {name})")
            commands[key] = command
    return commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchbop", description="Binarized neural networks trained with Bop.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: TORCHBOP_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in _all_commands().items():
        sub_parser = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; a :class:`UserError` becomes one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except UserError as error:
        if args.debug or os.environ.get("TORCHBOP_DEBUG", "") not in ("", "0"):
            raise
        print(f"torchbop {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
