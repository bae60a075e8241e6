r"""torchbop's own comparison: Bi-Real Net-18 on CIFAR-10 trained with Bop against the latent-weight baseline.

No published claim is tested here (Bop was published on BinaryNet and, on ImageNet, Bi-Real Net; Larq Zoo trains
Bi-Real Net, ReActNet and QuickNet with latent weights and Adam only). Two shipped recipes, one network, the same
budget (epochs, batch size, images, augmentation, seeds):

* ``bop``: recipe ``cifar10_bireal``: the +-1 weights flipped by Bop (the paper's CIFAR-10 hyperparameters: gamma
  1e-4 decayed x0.1 every ``decay_every`` epochs, tau 1e-8), Adam(0.01) for every real parameter (batch norm, the
  real stem, the 1x1 downsampling shortcuts, the dense head);
* ``latent``: recipe ``cifar10_bireal_latent``: the baseline of today's BNN papers as AdamBNN trains ReActNet
  (Liu et al., ICML 2021, arXiv:2009.13799; liuzechun/AdamBNN ``step2/run.sh``): real latent weights binarized by the
  straight-through sign and clipped to [-1, 1], Adam(1.25e-3) for every parameter, no weight decay, the learning
  rate decayed linearly to 0 over the run. Not copied: AdamBNN's two-step schedule and its knowledge distillation
  from a real-valued teacher.

``model`` picks another registered network with a CIFAR-10 stem (``--set model=reactnet_a``: recipe
``cifar10_reactnet``'s network) while the two recipes' optimizers stay. ``width``, ``subset``, ``epochs`` and
``decay_every`` scale the runs down to what a CPU affords; the comparison holds at whatever scale it is run, not
beyond it.

Recorded per run: test accuracy (final weights, batch norm's running statistics), per epoch the training and test
accuracy and the weights that changed sign (for the latent baseline: the signs of the latent weights), and the
training throughput (wall-clock images per second over the whole run, hence time per step).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from torchbop.experiments.common import number, percent, stored_train_config, train_epochs_run
from torchbop.experiments.plots import COLORS, scale_note
from torchbop.experiments.spec import RunContext, RunSpec
from torchbop.experiments.verdicts import Verdict
from torchbop.training import load_recipe
from torchbop.training.precision import resolve_precision

__all__ = [
    "NAME",
    "TITLE",
    "VERSION",
    "Config",
    "CONFIGS",
    "RECIPES",
    "datasets",
    "plan",
    "execute",
    "describe",
    "summarize",
    "plot",
    "verdicts",
    "results",
]

NAME = "architectures"
TITLE = (
    "Bi-Real Net-18 on CIFAR-10: Bop against latent weights with Adam (torchbop's own comparison, no published claim)"
)
VERSION = 1
KEEP_RUN_DIR = False
NOT_SCALE = frozenset({"precision"})

#: optimizer -> the shipped recipe that trains Bi-Real Net-18 with it
RECIPES = {"bop": "cifar10_bireal", "latent": "cifar10_bireal_latent"}


@dataclass(frozen=True)
class Config:
    """Bop against the latent-weight baseline on one network, same budget, several seeds."""

    model: str = "bireal_net18"  # a torchbop.models name that takes stem="cifar10"
    optimizers: tuple[str, ...] = ("bop", "latent")
    seeds: int = 3
    epochs: int = 300
    decay_every: int | None = None  # Bop's gamma: epochs between x0.1 decays; None: the recipe's (100)
    width: float = 1.0
    subset: int | None = None
    test_subset: int | None = None
    precision: str = "32"


#: The settings at each profile; ``paper`` is the recipes' own scale (there is no published run to match).
CONFIGS = {
    "paper": Config(),
    # measured on the 2-core VM: see reports/cpu; width 1/4 keeps a run near ten minutes
    "cpu": Config(epochs=8, width=0.25, subset=10000, test_subset=10000, decay_every=4),
    "quick": Config(epochs=3, width=0.125, subset=2000, test_subset=2000, decay_every=2),
    "smoke": Config(seeds=1, epochs=1, width=0.0625, subset=200, test_subset=200, decay_every=1),
}


def datasets(cfg: Config) -> tuple[str, ...]:
    return ("cifar10",)


def plan(cfg: Config) -> list[RunSpec]:
    unknown = [name for name in cfg.optimizers if name not in RECIPES]
    if unknown or not cfg.optimizers:
        raise ValueError(f"Invalid optimizers: {list(cfg.optimizers)} (expected some of {', '.join(RECIPES)})")
    specs = []
    for optimizer in cfg.optimizers:
        recipe = load_recipe(RECIPES[optimizer])
        changes: dict[str, Any] = {
            "model": cfg.model,
            "epochs": cfg.epochs,
            "model_kwargs": {**recipe.model_kwargs, "width": cfg.width},
            "precision": resolve_precision(cfg.precision),
        }
        if optimizer == "bop" and cfg.decay_every is not None:
            changes["gamma_decay_every"] = cfg.decay_every
        for seed in range(cfg.seeds):
            train = recipe.replace(**changes, seed=seed)
            params = {
                "optimizer": optimizer,
                "seed": seed,
                "subset": cfg.subset,
                "test_subset": cfg.test_subset,
                "train": stored_train_config(train),
            }
            specs.append(RunSpec(NAME, f"{optimizer}-seed{seed}", params))
    return specs


def execute(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    return train_epochs_run(params, ctx, "cifar10")


def describe(result: dict[str, Any]) -> str:
    return f"test accuracy {result['test_acc']:.4f} after {result['epochs']} epochs"


def _ms_per_step(result: dict[str, Any], batch_size: int) -> float | None:
    rate = result.get("train_images_per_s")
    return 1e3 * batch_size / rate if rate else None


def summarize(records: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    """One row per run and one per optimizer: test accuracy (mean, sample std, range), flips per epoch, ms/step."""
    runs = []
    for record in sorted(records, key=lambda r: (r["params"]["optimizer"], r["params"]["seed"])):
        result, train = record["result"], record["params"]["train"]
        flips = [row.get("flips") for row in result["history"]]
        runs.append(
            {
                "optimizer": record["params"]["optimizer"],
                "seed": record["params"]["seed"],
                "model": train["model"],
                "width": train["model_kwargs"].get("width", 1.0),
                "test_acc": result["test_acc"],
                "epochs": result["epochs"],
                "flips_first_epoch": flips[0] if flips else None,
                "flips_last_epoch": flips[-1] if flips else None,
                "ms_per_step": _ms_per_step(result, train["batch_size"]),
                "batch_size": train["batch_size"],
                "train_images": result["train_images"],
                "test_images": result["test_images"],
            }
        )
    by_optimizer = []
    for optimizer in dict.fromkeys(r["optimizer"] for r in runs):
        mine = [r for r in runs if r["optimizer"] == optimizer]
        accs = [r["test_acc"] for r in mine]
        steps = [r["ms_per_step"] for r in mine if r["ms_per_step"] is not None]
        by_optimizer.append(
            {
                "optimizer": optimizer,
                "seeds": len(mine),
                "test_acc_mean": statistics.fmean(accs),
                "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
                "test_acc_min": min(accs),
                "test_acc_max": max(accs),
                "flips_first_epoch_mean": _mean(r["flips_first_epoch"] for r in mine),
                "flips_last_epoch_mean": _mean(r["flips_last_epoch"] for r in mine),
                "ms_per_step_median": statistics.median(steps) if steps else None,
            }
        )
    return {"tables": {"runs": runs, "optimizers": by_optimizer}}


def _mean(values: Any) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def plot(fig: Figure, records: list[dict[str, Any]], summary: dict[str, Any], config: Config) -> None:
    acc_ax, flip_ax = fig.subplots(1, 2)
    optimizers = list(dict.fromkeys(r["params"]["optimizer"] for r in records))
    for record in records:
        optimizer = record["params"]["optimizer"]
        color = COLORS[optimizers.index(optimizer) % len(COLORS)]
        history = record["result"]["history"]
        epochs = [row["epoch"] for row in history]
        first = record["params"]["seed"] == min(
            r["params"]["seed"] for r in records if r["params"]["optimizer"] == optimizer
        )
        acc_ax.plot(
            epochs,
            [row.get("val_acc", math.nan) for row in history],
            color=color,
            marker="o",
            ms=3,
            label=f"{optimizer}: test" if first else None,
        )
        acc_ax.plot(
            epochs,
            [row.get("train_acc", math.nan) for row in history],
            color=color,
            ls="--",
            lw=1,
            label=f"{optimizer}: train" if first else None,
        )
        flip_ax.plot(
            epochs,
            [max(row.get("flips", 0), 1) for row in history],
            color=color,
            marker="o",
            ms=3,
            label=optimizer if first else None,
        )
    for ax in (acc_ax, flip_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    acc_ax.set_ylabel("accuracy (one line per seed)")
    acc_ax.set_title("test accuracy (solid) and training accuracy (dashed)")
    flip_ax.set_yscale("log")
    flip_ax.set_ylabel("weights that changed sign in the epoch")
    flip_ax.set_title("flips per epoch (latent: sign changes of latent weights)")
    model = records[0]["params"]["train"]["model"] if records else config.model
    fig.suptitle(f"{model} on CIFAR-10, Bop against latent weights + Adam ({scale_note(config)})", fontsize=10)


def verdicts(summary: dict[str, Any]) -> list[Verdict]:
    return []  # torchbop's own comparison: nothing published to hold it against


def results(summary: dict[str, Any]) -> list[str]:
    lines = [
        "| optimizer | seeds | test accuracy, mean | std (sample) | min-max | flips, first epoch | "
        "flips, last epoch | ms per step (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["tables"]["optimizers"]:
        lines.append(
            f"| {r['optimizer']} | {r['seeds']} | {percent(r['test_acc_mean'])} | "
            f"{percent(r['test_acc_std'])} | {percent(r['test_acc_min'])}-{percent(r['test_acc_max'])} | "
            f"{number(r['flips_first_epoch_mean'])} | "
            f"{number(r['flips_last_epoch_mean'])} | {number(r['ms_per_step_median'], '.1f')} |"
        )
    lines += [
        "",
        "| optimizer | seed | test accuracy | epochs | flips, first / last epoch | ms per step | train / test images |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["tables"]["runs"]:
        lines.append(
            f"| {r['optimizer']} | {r['seed']} | {percent(r['test_acc'])} | {r['epochs']} | "
            f"{number(r['flips_first_epoch'])} / {number(r['flips_last_epoch'])} | "
            f"{number(r['ms_per_step'], '.1f')} "
            f"| {r['train_images']} / {r['test_images']} |"
        )
    lines += [
        "",
        "Same network, data, batch size, epochs and seeds for both optimizers; test accuracy of the final "
        "weights. Milliseconds per step: the run's wall-clock time per training step, evaluation excluded "
        "(`train_images_per_s`). A difference smaller than the seed-to-seed spread is no effect.",
    ]
    return lines
