r"""torchbop's own comparison of BNN optimizers: Bop, Bop2ndOrder (biased and unbiased), CEMA and latent weights.

No published claim is tested here; the papers each report their own optimizer on their own budget. Two networks,
five optimizers, one budget per network (the same data, batch size, epochs, schedule shape, validation split and
seeds for every optimizer):

* networks: the MNIST BNN (``mnist_bnn`` on MNIST; recipes ``mnist`` / ``mnist_latent``, batch 100) and BinaryNet
  (``binarynet``, original variant, at width ``binarynet_width``, 1/8 by default, on CIFAR-10 with pad-4 crop and
  flip; recipes ``cifar10`` / ``cifar10_latent``, batch 50);
* ``bop``: Bop (Helwegen et al., NeurIPS 2019, arXiv:1906.02107), Adam(recipe lr) for the batch-norm shifts;
* ``bop2nd``: Bop2ndOrder (Suarez-Ramirez et al., 2021, arXiv:2104.05124), biased, the authors' default;
* ``bop2nd_unbiased``: its unbiased variant (``TrainConfig.unbiased``; the authors' ``bop2ndOrder_unbiased``);
* ``cema``: CEMA (Quist et al., ICLR 2023, OpenReview uBKBoix9NXa): two cascaded averages, no threshold;
* ``latent``: the AdamBNN baseline (Liu et al., ICML 2021, arXiv:2009.13799): latent weights binarized by the
  straight-through sign and clipped to [-1, 1], Adam for every parameter (recipes ``mnist_latent`` /
  ``cifar10_latent``).

Each run starts from its network's Bop recipe (``mnist``, ``cifar10``) or latent recipe and changes only what the
comparison needs: the optimizer and its grid point, and for every optimizer alike

* ``decay_schedule: linear``: the scheduled rate is multiplied by ``1 - epoch / epochs`` at each epoch, down to 0
  over the run. It decays the rate a param group keeps as ``"lr"``: gamma for Bop and Bop2ndOrder, alpha for CEMA
  (as its authors decay it; CEMA's gamma stays), the learning rate of every parameter for the latent baseline.
  The Adam that trains the batch-norm shifts next to Bop, Bop2ndOrder and CEMA keeps the recipe's constant lr.
  (Recipe ``cifar10``'s x0.1 staircase is replaced by it.)
* ``recalibrate_bn: eval``: batch norm's running statistics are recomputed over the training images before each
  validation and the test, so that neither the choice of grid point nor the test accuracy is decided by running
  averages that lag weights still flipping (issue 23, item 5).
* protocol ``reproduction``: a seeded (by the run's seed) class-balanced 90/10 split of the training images;
  validation on the 10%, the test set only for the final test; ``test_weights: last``.

Protocol, fixed before any run (:data:`GRIDS`): each optimizer is tuned within two grid points per network, the same
two for both networks. For each network and optimizer the point with the highest mean (over seeds) final validation
accuracy is chosen (a tie goes to the first point); the table reports, for the chosen point, the test accuracy
(mean, sample std, min-max over the seeds), the weights that changed sign in the first and in the last epoch (mean
over the seeds; for the latent baseline the sign changes of the latent weights) and the milliseconds per training
step (``batch_size / train_images_per_s``: wall-clock time of the training steps, evaluation and recalibration
excluded; every run at the same threads). The other point's numbers are shown below it.

* ``bop``: (gamma 1e-3, tau 1e-6), the base point of the paper's hyperparameter study and recipe ``mnist``, and
  (gamma 1e-4, tau 1e-8), the paper's CIFAR-10 values and recipe ``cifar10``.
* ``bop2nd`` and ``bop2nd_unbiased``: (gamma 1e-2, sigma 1e-7, tau 1e-5), the start values of the authors' CIFAR-10
  schedule (CuauSuarez/Bop2ndOrder, ``bnn_optimization/models/binarynet_batch.py``, ``bop2ndOrder_CIFAR``; recipe
  ``cifar10_bop2nd``), and (gamma 1e-3, sigma 1e-4, tau 1e-6).
* ``cema``: (gamma 1e-3, alpha 1e-2) and (gamma 1e-4, alpha 1e-2), values in the range of the authors' CIFAR-10 runs
  (jorisquist/Understanding-WM-HP-in-BNNs). (The grid first stated had (gamma 1e-2, alpha 1e-3) as its second point,
  which the note below shows to be the first point again; it was replaced before any result was read off it.)
* ``latent``: Adam lr 1.25e-3 (AdamBNN's ``step2/run.sh``; recipes ``mnist_latent`` / ``cifar10_latent``) and 1e-2.

Every point is valid for its optimizer as the code checks it (CEMA's gamma and alpha in (0, 1], Bop2ndOrder's sigma
in (0, 1]): none had to be moved. CEMA takes no threshold: its runs keep the recipe's unused ``threshold``.

.. note::
    CEMA's inertia is the gradient passed through two first-order filters in cascade, and such a cascade is
    symmetric in its two rates: (gamma 1e-3, alpha 1e-2) and (gamma 1e-2, alpha 1e-3) give the same ``I`` and the
    same flips (up to rounding) until the linear schedule, which decays alpha alone, first changes alpha after epoch 1
    (measured: identical epoch-1 flip counts per seed). So the grid's second CEMA point changes gamma instead. The
    unbiased Bop2ndOrder tests
    ``(m / gamma) / (sqrt(v / sigma) + eps)``, the biased ratio times ``sqrt(sigma) / gamma`` up to eps: the biased
    variant's flips with tau scaled by ``gamma / sqrt(sigma)``.

``grid_points`` = 1 runs only the first point of each optimizer (the ``smoke`` profile). ``*_epochs``, ``*_subset``
and ``binarynet_width`` scale the runs down to what a CPU affords; the ranking holds at the scale it was measured,
not beyond it.

Example:
    >>> [describe_point(point) for point in GRIDS["bop2nd"]]
    ['gamma 0.01, sigma 1e-07, tau 1e-05', 'gamma 0.001, sigma 0.0001, tau 1e-06']
    >>> len(plan(CONFIGS["quick"]))  # 2 networks x 5 optimizers x 2 points x 3 seeds
    60
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from torchbop.data import class_balanced_split
from torchbop.experiments.common import (
    load_data,
    number,
    percent,
    run_config,
    seeded_model,
    stored_train_config,
    train_run,
)
from torchbop.experiments.plots import COLORS
from torchbop.experiments.spec import RunContext, RunSpec
from torchbop.experiments.verdicts import Verdict
from torchbop.training import TrainConfig, load_recipe
from torchbop.training.precision import resolve_precision

__all__ = [
    "NAME",
    "TITLE",
    "VERSION",
    "Config",
    "CONFIGS",
    "NETWORKS",
    "GRIDS",
    "describe_point",
    "choose",
    "datasets",
    "plan",
    "execute",
    "describe",
    "summarize",
    "plot",
    "verdicts",
    "results",
]

NAME = "optimizers"
TITLE = (
    "BNN optimizers at one budget: Bop, Bop2ndOrder, CEMA and latent weights on the MNIST BNN and BinaryNet "
    "(torchbop's own comparison, no published claim)"
)
VERSION = 1
KEEP_RUN_DIR = False
NOT_SCALE = frozenset({"precision"})


@dataclass(frozen=True)
class Network:
    """A network of the comparison: its dataset and the recipes its runs start from."""

    dataset: str
    bop_recipe: str
    latent_recipe: str


#: network (a torchbop.models name) -> its dataset and recipes
NETWORKS = {
    "mnist_bnn": Network("mnist", "mnist", "mnist_latent"),
    "binarynet": Network("cifar10", "cifar10", "cifar10_latent"),
}
#: optimizer -> the TrainConfig fields that select it (on top of its network's Bop or latent recipe)
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "bop": {"mode": "bop", "optimizer": "bop"},
    "bop2nd": {"mode": "bop", "optimizer": "bop2nd", "unbiased": False},
    "bop2nd_unbiased": {"mode": "bop", "optimizer": "bop2nd", "unbiased": True},
    "cema": {"mode": "bop", "optimizer": "cema"},
    "latent": {"mode": "latent", "optimizer": "adam"},
}
_BOP2ND = ({"gamma": 1e-2, "sigma": 1e-7, "threshold": 1e-5}, {"gamma": 1e-3, "sigma": 1e-4, "threshold": 1e-6})
#: The grid stated in advance: optimizer -> its points (TrainConfig fields), the same for both networks.
GRIDS: dict[str, tuple[dict[str, float], ...]] = {
    "bop": ({"gamma": 1e-3, "threshold": 1e-6}, {"gamma": 1e-4, "threshold": 1e-8}),
    "bop2nd": _BOP2ND,
    "bop2nd_unbiased": _BOP2ND,
    "cema": ({"gamma": 1e-3, "alpha": 1e-2}, {"gamma": 1e-4, "alpha": 1e-2}),
    "latent": ({"lr": 1.25e-3}, {"lr": 1e-2}),
}
#: What every run shares, whatever its optimizer: the schedule shape, batch-norm recalibration, the protocol.
SHARED = {
    "decay_schedule": "linear",
    "gamma_decay": 1.0,
    "gamma_decay_every": None,
    "recalibrate_bn": "eval",
    "protocol": "reproduction",
    "val_fraction": 0.1,
    "test_weights": "last",
    "early_stop_flip_epochs": None,
}


@dataclass(frozen=True)
class Config:
    """Five optimizers on two networks, each tuned on a small grid, same budget per network, several seeds."""

    networks: tuple[str, ...] = ("mnist_bnn", "binarynet")
    optimizers: tuple[str, ...] = ("bop", "bop2nd", "bop2nd_unbiased", "cema", "latent")
    grid_points: int = 2  # the first grid_points points of each optimizer's GRIDS entry (1 or 2)
    seeds: int = 3
    mnist_epochs: int = 3
    mnist_subset: int | None = None
    mnist_test_subset: int | None = None
    binarynet_epochs: int = 100
    binarynet_width: float = 0.125
    binarynet_subset: int | None = None
    binarynet_test_subset: int | None = None
    precision: str = "32"


#: The settings at each profile; ``paper`` is the recipes' full length (there is no published run to match).
CONFIGS = {
    "paper": Config(),
    # MNIST at the recipe's length (1,620 steps a run), BinaryNet 1/8 on 20,000 images for 5 epochs (1,800 steps):
    # from the quick profile's step times, about 1 h with --jobs 2 on the idle 2-core VM (see docs/experiments.md)
    "cpu": Config(mnist_epochs=3, binarynet_epochs=5, binarynet_subset=20000),
    "quick": Config(
        mnist_epochs=2,
        mnist_subset=5000,
        mnist_test_subset=2000,
        binarynet_epochs=2,
        binarynet_subset=5000,
        binarynet_test_subset=2000,
    ),
    "smoke": Config(
        grid_points=1,
        seeds=1,
        mnist_epochs=1,
        mnist_subset=300,
        mnist_test_subset=200,
        binarynet_epochs=1,
        binarynet_width=0.0625,
        binarynet_subset=200,
        binarynet_test_subset=200,
    ),
}

_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")
_SYMBOLS = {"gamma": "gamma", "sigma": "sigma", "threshold": "tau", "alpha": "alpha", "lr": "lr"}


def describe_point(point: dict[str, float]) -> str:
    """A grid point as the table shows it: ``gamma 0.001, tau 1e-06``."""
    return ", ".join(f"{_SYMBOLS.get(k, k)} {v:g}" for k, v in point.items())


def choose(val_accs: list[list[float]]) -> int | None:
    """The index of the grid point with the highest mean validation accuracy (``val_accs[i]``: point i's per-seed
    values; an empty list is a point not run yet); a tie goes to the first. None when no point has a value.

    Example:
        >>> choose([[0.90, 0.92], [0.93, 0.91]]), choose([[0.90, 0.92], [0.92, 0.90]]), choose([[0.9], []])
        (1, 0, 0)
        >>> choose([[], []]) is None
        True
    """
    means = [(statistics.fmean(v), -i) for i, v in enumerate(val_accs) if v and all(map(math.isfinite, v))]
    return -max(means)[1] if means else None


def datasets(cfg: Config) -> tuple[str, ...]:
    return tuple(dict.fromkeys(NETWORKS[n].dataset for n in cfg.networks if n in NETWORKS))


def _budget(cfg: Config, network: str) -> dict[str, Any]:
    if network == "mnist_bnn":
        return {"epochs": cfg.mnist_epochs, "subset": cfg.mnist_subset, "test_subset": cfg.mnist_test_subset}
    return {
        "epochs": cfg.binarynet_epochs,
        "subset": cfg.binarynet_subset,
        "test_subset": cfg.binarynet_test_subset,
        "width": cfg.binarynet_width,
    }


def _check(cfg: Config) -> None:
    for key, known in (("networks", NETWORKS), ("optimizers", OPTIMIZERS)):
        chosen = getattr(cfg, key)
        if not chosen or any(name not in known for name in chosen):
            raise ValueError(f"Invalid {key}: {list(chosen)} (expected some of {', '.join(known)})")
    if cfg.grid_points not in (1, 2):
        raise ValueError(
            f"Invalid grid_points value: {cfg.grid_points} (expected 1 or 2: the grid is fixed in advance, GRIDS)"
        )


def train_config(cfg: Config, network: str, optimizer: str, point: dict[str, float], seed: int) -> TrainConfig:
    """The TrainConfig of one run: the network's recipe with the optimizer, its grid point and :data:`SHARED`."""
    spec = NETWORKS[network]
    recipe = load_recipe(spec.latent_recipe if optimizer == "latent" else spec.bop_recipe)
    budget = _budget(cfg, network)
    kwargs = dict(recipe.model_kwargs)
    if "width" in budget:
        kwargs["width"] = budget["width"]
    return recipe.replace(
        **OPTIMIZERS[optimizer],
        **SHARED,
        **point,
        epochs=budget["epochs"],
        seed=seed,
        model_kwargs=kwargs,
        precision=resolve_precision(cfg.precision),
    )


def plan(cfg: Config) -> list[RunSpec]:
    _check(cfg)
    specs = []
    for network in cfg.networks:
        budget = _budget(cfg, network)
        for seed in range(cfg.seeds):
            for optimizer in cfg.optimizers:
                for index, point in enumerate(GRIDS[optimizer][: cfg.grid_points]):
                    train = train_config(cfg, network, optimizer, point, seed)
                    params = {
                        "network": network,
                        "optimizer": optimizer,
                        "point": index,
                        "hyper": dict(point),
                        "seed": seed,
                        "subset": budget["subset"],
                        "test_subset": budget["test_subset"],
                        "train": stored_train_config(train),
                    }
                    specs.append(RunSpec(NAME, f"{network}-{optimizer}-p{index}-seed{seed}", params))
    return specs


def execute(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    dataset = NETWORKS[params["network"]].dataset
    data = load_data(dataset, ctx.data_dir, params["subset"], params["test_subset"])
    config = run_config(params["train"], ctx.run_dir)
    result, history = train_run(config, data, seeded_model(config), log=ctx.log)
    _, val_idx = class_balanced_split(data["train"][1], val_fraction=config.val_fraction, seed=config.seed)
    return {
        **result,
        "history": history["epochs"],
        "train_images": len(data["train"][1]) - len(val_idx),
        "val_images": len(val_idx),
        "test_images": len(data["test"][1]),
    }


def describe(result: dict[str, Any]) -> str:
    return (
        f"validation accuracy {result.get('val_acc', math.nan):.4f}, test accuracy {result['test_acc']:.4f} "
        f"after {result['epochs']} epochs"
    )


def _rank(table: dict[str, Any], name: str) -> tuple[int, str]:
    names = list(table)
    return (names.index(name) if name in names else len(names), name)


def _mean(values: Any) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarize(records: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    """One row per run, and one per (network, optimizer, grid point) with ``chosen`` marking the point the mean
    validation accuracy picked: test accuracy (mean, sample std, range), flips in the first and last epoch, ms/step."""

    def order(record: dict[str, Any]) -> tuple:
        params = record["params"]
        return (
            _rank(NETWORKS, params["network"]),
            _rank(OPTIMIZERS, params["optimizer"]),
            params["point"],
            params["seed"],
        )

    runs = []
    for record in sorted(records, key=order):
        params, result, train = record["params"], record["result"], record["params"]["train"]
        flips = [row.get("flips") for row in result["history"]]
        rate = result.get("train_images_per_s")
        runs.append(
            {
                "network": params["network"],
                "optimizer": params["optimizer"],
                "point": params["point"],
                "hyper": describe_point(params["hyper"]),
                "seed": params["seed"],
                "val_acc": result.get("val_acc"),
                "test_acc": result["test_acc"],
                "epochs": result["epochs"],
                "flips_first_epoch": flips[0] if flips else None,
                "flips_last_epoch": flips[-1] if flips else None,
                "ms_per_step": 1e3 * train["batch_size"] / rate if rate else None,
                "train_images": result["train_images"],
                "val_images": result["val_images"],
                "test_images": result["test_images"],
            }
        )
    points = []
    for network in dict.fromkeys(r["network"] for r in runs):
        for optimizer in dict.fromkeys(r["optimizer"] for r in runs if r["network"] == network):
            mine = [r for r in runs if (r["network"], r["optimizer"]) == (network, optimizer)]
            indices = sorted({r["point"] for r in mine})
            vals = [
                [r["val_acc"] for r in mine if r["point"] == i and r["val_acc"] is not None]
                for i in range(max(indices) + 1)
            ]
            chosen = choose(vals)
            for index in indices:
                seeds = [r for r in mine if r["point"] == index]
                accs = [r["test_acc"] for r in seeds]
                steps = [r["ms_per_step"] for r in seeds if r["ms_per_step"] is not None]
                points.append(
                    {
                        "network": network,
                        "optimizer": optimizer,
                        "point": index,
                        "hyper": seeds[0]["hyper"],
                        "chosen": index == chosen,
                        "seeds": len(seeds),
                        "val_acc_mean": _mean(vals[index]),
                        "test_acc_mean": statistics.fmean(accs),
                        "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
                        "test_acc_min": min(accs),
                        "test_acc_max": max(accs),
                        "flips_first_epoch_mean": _mean(r["flips_first_epoch"] for r in seeds),
                        "flips_last_epoch_mean": _mean(r["flips_last_epoch"] for r in seeds),
                        "ms_per_step_median": statistics.median(steps) if steps else None,
                        "epochs": seeds[0]["epochs"],
                        "train_images": seeds[0]["train_images"],
                    }
                )
    return {"tables": {"runs": runs, "points": points}}


def plot(fig: Figure, records: list[dict[str, Any]], summary: dict[str, Any], config: Config) -> None:
    networks = list(dict.fromkeys(r["network"] for r in summary["tables"]["points"])) or list(config.networks)
    fig.set_size_inches(11, 3.8 * len(networks))
    axes = fig.subplots(len(networks), 2, squeeze=False)
    optimizers = [o for o in config.optimizers if o in OPTIMIZERS]
    color = {o: COLORS[i % len(COLORS)] for i, o in enumerate(optimizers)}
    marker = {o: _MARKERS[i % len(_MARKERS)] for i, o in enumerate(optimizers)}  # curves that coincide stay visible
    for (acc_ax, flip_ax), network in zip(axes, networks):
        chosen = {r["optimizer"]: r for r in summary["tables"]["points"] if r["network"] == network and r["chosen"]}
        others = [r for r in summary["tables"]["points"] if r["network"] == network and not r["chosen"]]
        shown = [o for o in optimizers if o in chosen]
        epochs = 0
        for x, optimizer in enumerate(shown):
            row = chosen[optimizer]
            seeds = [
                r["test_acc"]
                for r in summary["tables"]["runs"]
                if (r["network"], r["optimizer"], r["point"]) == (network, optimizer, row["point"])
            ]
            acc_ax.bar(x, row["test_acc_mean"], width=0.6, color=color[optimizer], alpha=0.35)
            acc_ax.plot([x] * len(seeds), seeds, "o", color=color[optimizer], ms=5)
            acc_ax.annotate(
                f"{row['test_acc_mean']:.1%}",
                (x, max(seeds)),
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
                fontsize=7,
            )
            curves = [
                [h.get("flips", math.nan) for h in rec["result"]["history"]]
                for rec in records
                if (rec["params"]["network"], rec["params"]["optimizer"], rec["params"]["point"])
                == (network, optimizer, row["point"])
            ]
            n = min(len(c) for c in curves)
            mean = [max(statistics.fmean(c[i] for c in curves), 1.0) for i in range(n)]
            flip_ax.plot(
                range(1, n + 1),
                mean,
                marker=marker[optimizer],
                ms=7,
                mfc="none",
                color=color[optimizer],
                label=optimizer,
            )
            epochs = max(epochs, n)
        for optimizer in shown:  # the other grid point's mean, as a hollow marker
            for row in (r for r in others if r["optimizer"] == optimizer):
                acc_ax.plot(
                    shown.index(optimizer) + 0.38, row["test_acc_mean"], "D", mfc="none", ms=5, color=color[optimizer]
                )
        values = [r["test_acc"] for r in summary["tables"]["runs"] if r["network"] == network]
        if values:  # room above the bars for the legend
            low = max(0.0, min(values + [r["test_acc_mean"] for r in others]) - 0.05)
            high = max(values + [r["test_acc_mean"] for r in others])
            acc_ax.set_ylim(low, high + 0.45 * (high - low) + 0.01)
        acc_ax.set_xticks(range(len(shown)), shown, fontsize=8)
        acc_ax.plot([], [], "o", color="gray", label="one seed")
        acc_ax.bar([], [], color="gray", alpha=0.35, label="seed mean")
        acc_ax.plot([], [], "D", mfc="none", color="gray", label="other grid point, mean")
        acc_ax.legend(fontsize=7, loc="upper center", ncol=3)
        acc_ax.set_ylabel("test accuracy")
        acc_ax.set_title(f"{network}: test accuracy at the chosen grid point (table: which)", fontsize=9)
        flip_ax.set_yscale("log")
        flip_ax.set_xlabel("epoch")
        if 0 < epochs <= 12:
            flip_ax.set_xticks(range(1, epochs + 1))
            flip_ax.set_xlim(0.5, epochs + 0.5)
        else:
            flip_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        flip_ax.set_ylabel("sign changes in the epoch (latent: of latent weights)", fontsize=8)
        flip_ax.set_title(f"{network}: flips per epoch at the chosen point (mean over seeds)", fontsize=9)
        if flip_ax.lines:  # room above the curves for the legend (log scale)
            bottom, top = flip_ax.get_ylim()
            flip_ax.set_ylim(bottom, top * (top / bottom) ** 0.6)
            flip_ax.legend(fontsize=7, loc="upper center", ncol=3)
    fig.suptitle(
        f"BNN optimizers at one budget, each tuned on {config.grid_points} grid point(s) by validation "
        f"accuracy\n{_scale_note(config)}",
        fontsize=10,
    )


def _scale_note(config: Config) -> str:
    def size(value: int | None) -> str:
        return "all" if value is None else str(value)

    return (
        f"seeds {config.seeds}; MNIST BNN {config.mnist_epochs} epochs, subset {size(config.mnist_subset)}; "
        f"BinaryNet width {config.binarynet_width:g}, {config.binarynet_epochs} epochs, subset "
        f"{size(config.binarynet_subset)}"
    )


def verdicts(summary: dict[str, Any]) -> list[Verdict]:
    return []  # torchbop's own comparison: nothing published to hold it against


def results(summary: dict[str, Any]) -> list[str]:
    def row(r: dict[str, Any]) -> str:
        return (
            f"| {r['optimizer']} | {r['hyper']} | {r['seeds']} | {percent(r['val_acc_mean'])} | "
            f"{percent(r['test_acc_mean'])} | {percent(r['test_acc_std'])} | {percent(r['test_acc_min'])}-"
            f"{percent(r['test_acc_max'])} | {number(r['flips_first_epoch_mean'])} | "
            f"{number(r['flips_last_epoch_mean'])} "
            f"| {number(r['ms_per_step_median'], '.1f')} |"
        )

    header = [
        "| optimizer | grid point | seeds | validation accuracy, mean | test accuracy, mean | std (sample) | "
        "min-max | flips, first epoch | flips, last epoch | ms per step (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines = []
    points = summary["tables"]["points"]
    for network in dict.fromkeys(r["network"] for r in points):
        mine = [r for r in points if r["network"] == network]
        first = mine[0]
        lines += [
            f"**{network}** ({first['epochs']} epochs, {first['train_images']} training images): the point "
            "chosen by validation accuracy",
            "",
            *header,
            *(row(r) for r in mine if r["chosen"]),
            "",
        ]
        rest = [r for r in mine if not r["chosen"]]
        if rest:
            lines += [f"{network}, the other grid points", "", *header, *(row(r) for r in rest), ""]
    lines += [
        "Same network, data, batch size, epochs, schedule shape (linear decay to 0), validation split and seeds "
        "for every optimizer; each tuned on the two grid points stated in advance, chosen by the mean final "
        "validation accuracy (held-out 10% of the training images), then tested once with the final weights "
        "and batch norm recalibrated. Milliseconds per step: wall-clock time per training step, evaluation "
        "excluded (`train_images_per_s`). A difference smaller than the seed-to-seed spread is no effect."
    ]
    return lines
