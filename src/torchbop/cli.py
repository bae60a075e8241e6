"""The ``torchbop`` command: ``torchbop train --recipe mnist [--epochs 3] [--set key=value ...]``.

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
import sys
from collections.abc import Callable
from dataclasses import dataclass

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
    ("--resume", "resume", str, "continue from a checkpoint, or a run directory's checkpoints/last.ckpt"),
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def config_from_args(args: argparse.Namespace):
    """The :class:`TrainConfig` the arguments describe: recipe (or the resumed checkpoint's config), then
    ``--set`` overrides, then dedicated flags."""
    from torchbop.training.config import TrainConfig, apply_overrides, load_recipe
    from torchbop.training.train import resolve_checkpoint

    if args.recipe is not None:
        config = load_recipe(args.recipe)
    elif args.resume is not None:
        config = _config_of_checkpoint(resolve_checkpoint(args.resume))
    else:
        raise SystemExit("torchbop train: give --recipe (or --resume to continue a run)")
    config = apply_overrides(config, args.overrides)
    flags = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _, _ in _TRAIN_FLAGS}
    changes = {field: value for field, value in flags.items() if value is not None}
    if args.width is not None:
        changes["model_kwargs"] = {**config.model_kwargs, "width": args.width}
    if args.download:
        changes["download"] = True
    if args.no_progress:
        changes["progress_bar"] = False
    config = config.replace(**changes) if changes else config
    assert isinstance(config, TrainConfig)
    return config


def _config_of_checkpoint(path):
    import torch

    from torchbop.training.config import TrainConfig

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return TrainConfig.from_dict(checkpoint["hyper_parameters"]["config"])


def _run_train(args: argparse.Namespace) -> int:
    import yaml

    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"torchbop train: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0

    from torchbop.training.train import format_summary, train

    result = train(config)
    if result.pop("is_global_zero"):
        print(format_summary(result))
        print(f"test accuracy: {result['test_acc']:.4f}")
    return 0


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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in _all_commands().items():
        sub_parser = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
