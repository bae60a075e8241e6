r"""Experiment 3, Bop's hyperparameters (paper 5.1, Figure 2; reproducibility report 3.2).

BinaryNet on CIFAR-10 trained with Bop from the shipped recipe ``cifar10_hyperparams`` (batch 100, constant gamma and
tau, Adam(0.01) for the batch-norm shifts, augmentation, the test set as validation set as in the original code),
in two sweeps: tau = ``fixed_threshold`` (1e-6) with gamma in ``gammas`` (1e-2, 1e-3, 1e-4), and gamma =
``fixed_gamma`` (1e-3) with tau in ``thresholds`` (0, 1e-5, 1e-6). The point (1e-3, 1e-6) belongs to both sweeps and
is run once. Recorded per step: :math:`\pi_t` (eq. 7: the log of the fraction of weights flipped by that step) and
the training-batch accuracy; per epoch: validation accuracy. Curves are smoothed with a Gaussian filter of standard
deviation ``smooth_std`` steps (100 in the report), see :func:`torchbop.experiments.stats.gaussian_filter1d`.

Expected: high gamma or low tau gives many flips and noisy training; low gamma or high tau gives slow, stable
training with almost no flips.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure

from torchbop.experiments.common import stored_train_config, train_stored_run
from torchbop.experiments.plots import COLORS, mean_curve, scale_note
from torchbop.experiments.spec import RunContext, RunSpec
from torchbop.experiments.stats import gaussian_filter1d
from torchbop.experiments.verdicts import Verdict
from torchbop.training import load_recipe
from torchbop.training.precision import resolve_precision

__all__ = [
    "NAME",
    "TITLE",
    "VERSION",
    "Config",
    "CONFIGS",
    "grid",
    "datasets",
    "plan",
    "execute",
    "describe",
    "summarize",
    "plot",
    "verdicts",
    "results",
]

NAME = "hyperparameters"
TITLE = "Figure 2: Bop's hyperparameters gamma and tau (paper 5.1, report 3.2)"
VERSION = 1
KEEP_RUN_DIR = False
NOT_SCALE = frozenset({"smooth_std", "precision"})  # the smoothing only draws the curves


@dataclass(frozen=True)
class Config:
    """Figure 2 (paper 5.1, report 3.2): Bop's gamma and tau on BinaryNet / CIFAR-10."""

    seeds: int = 1
    epochs: int = 100
    width: float = 1.0
    subset: int | None = None
    test_subset: int | None = None
    gammas: tuple[float, ...] = (1e-2, 1e-3, 1e-4)  # varied at tau = fixed_threshold
    thresholds: tuple[float, ...] = (0.0, 1e-5, 1e-6)  # varied at gamma = fixed_gamma
    fixed_gamma: float = 1e-3
    fixed_threshold: float = 1e-6
    smooth_std: float = 100.0  # std, in steps, of the Gaussian filter applied to per-step curves
    # TrainConfig.precision of the training runs: "32", or "auto" (bf16-mixed where the device computes bf16
    # natively, else 32; resolved when the runs are planned, so the resolved value enters the run keys)
    precision: str = "32"


#: The settings at each profile (torchbop.experiments.profiles names them).
CONFIGS = {
    "paper": Config(),
    # the published length and data (100 epochs of all 50,000 images, batch 100) at width 1/8: 5 x 50,000 steps,
    # about 8 CPU-hours in fp32 where bf16 is not native (111 ms a step at one thread on the 2-core development VM)
    "cpu": Config(width=0.125),
    "quick": Config(epochs=4, width=0.125, subset=5000, test_subset=2000, smooth_std=10.0),
    "smoke": Config(epochs=1, width=0.0625, subset=300, test_subset=200, smooth_std=1.0),
}
RECIPE = "cifar10_hyperparams"


def grid(cfg: Config) -> list[tuple[str, float, float]]:
    """``(sweep, gamma, tau)`` of the two sweeps: ``"gamma"`` varies gamma, ``"tau"`` varies tau."""
    return [("gamma", g, cfg.fixed_threshold) for g in cfg.gammas] + [
        ("tau", cfg.fixed_gamma, t) for t in cfg.thresholds
    ]


def datasets(cfg: Config) -> tuple[str, ...]:
    return ("cifar10",)


def plan(cfg: Config) -> list[RunSpec]:
    recipe = load_recipe(RECIPE)
    specs = []
    for seed in range(cfg.seeds):
        for _, gamma, tau in grid(cfg):
            train = recipe.replace(
                gamma=gamma,
                threshold=tau,
                epochs=cfg.epochs,
                seed=seed,
                precision=resolve_precision(cfg.precision),
                model_kwargs={**recipe.model_kwargs, "width": cfg.width},
            )
            params = {
                "gamma": gamma,
                "threshold": tau,
                "seed": seed,
                "subset": cfg.subset,
                "test_subset": cfg.test_subset,
                "train": stored_train_config(train),
            }
            specs.append(RunSpec(NAME, f"gamma{gamma:g}-tau{tau:g}-seed{seed}", params))
    return specs


def execute(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    result, history, _ = train_stored_run(params, ctx, "cifar10", per_step=True)
    return {"test_acc": result["test_acc"], "history": history["epochs"], "steps": history["steps"]}


def describe(result: dict[str, Any]) -> str:
    pi = [p for p in result["steps"]["pi_t"] if math.isfinite(p)]
    return f"test accuracy {result['test_acc']:.4f}, mean pi_t {statistics.fmean(pi):.2f}" if pi else "no steps"


def summarize(records: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    """Per (gamma, tau), seed means of: pi_t over all steps and over the last half, the per-step flip fraction,
    the final validation accuracy, and the noise of the training accuracy (std of its residual around the smoothed
    curve)."""
    std = float(config.smooth_std)
    points: dict[tuple[float, float], list[dict[str, float]]] = {}
    for record in records:
        params, result = record["params"], record["result"]
        pi = torch.tensor(result["steps"]["pi_t"], dtype=torch.float64)
        acc = torch.tensor(result["steps"]["train_acc"], dtype=torch.float64)
        half = len(pi) // 2
        residual = acc - gaussian_filter1d(acc, std) if len(acc) else acc
        points.setdefault((params["gamma"], params["threshold"]), []).append(
            {
                "mean_pi_t": float(pi.mean()),
                "mean_pi_t_second_half": float(pi[half:].mean()),
                "flip_fraction": float((pi.exp() - 1e-9).clamp(min=0).mean()),
                "final_val_acc": result["history"][-1].get("val_acc", float("nan"))
                if result["history"]
                else float("nan"),
                "train_acc_noise": float(residual.std()) if len(residual) > 1 else float("nan"),
                "steps": len(pi),
            }
        )
    rows = []
    for (gamma, tau), runs in sorted(points.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        row: dict[str, Any] = {"gamma": gamma, "threshold": tau, "seeds": len(runs)}
        for key in runs[0]:
            row[key] = statistics.fmean(r[key] for r in runs)
        rows.append(row)
    sweeps = {
        "gamma": [(g, t) for sweep, g, t in grid(config) if sweep == "gamma"],
        "tau": [(g, t) for sweep, g, t in grid(config) if sweep == "tau"],
    }  # the planned points: all must be in
    return {"smooth_std": std, "sweeps": sweeps, "tables": {"figure2": rows}}


def plot(fig: Figure, records: list[dict[str, Any]], summary: dict[str, Any], config: Config) -> None:
    fig.set_size_inches(11, 7.5)
    axes = fig.subplots(2, 2)
    std = float(config.smooth_std)
    by_point: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for record in records:
        by_point.setdefault((record["params"]["gamma"], record["params"]["threshold"]), []).append(record["result"])
    for col, sweep in enumerate(("gamma", "tau")):
        points = sorted(
            ((g, t) for s, g, t in grid(config) if s == sweep),  # gamma high -> low, tau low -> high
            key=lambda p: -p[0] if sweep == "gamma" else p[1],
        )
        missing = []
        for i, (gamma, tau) in enumerate(points):
            results = by_point.get((gamma, tau))
            label = f"gamma {gamma:g}" if sweep == "gamma" else f"tau {tau:g}"
            if not results:
                missing.append(label)
                continue
            pi = mean_curve([r["steps"]["pi_t"] for r in results])
            acc = mean_curve([r["steps"]["train_acc"] for r in results])
            steps = range(1, len(pi) + 1)
            axes[0, col].plot(steps, gaussian_filter1d(pi, std).tolist(), color=COLORS[i], label=label)
            axes[1, col].plot(steps, gaussian_filter1d(acc, std).tolist(), color=COLORS[i], label=f"{label} train")
            ends, val = _epoch_points(results)
            axes[1, col].plot(ends, val, color=COLORS[i], ls="--", marker="o", ms=3, label=f"{label} validation")
        fixed = f"tau = {config.fixed_threshold:g}" if sweep == "gamma" else f"gamma = {config.fixed_gamma:g}"
        axes[0, col].set_title(f"varying {sweep} ({fixed})")
        axes[0, col].set_ylabel("pi_t (log flip ratio), smoothed")
        axes[1, col].set_ylabel("accuracy")
        axes[1, col].set_xlabel("optimizer step")
        for ax in axes[:, col]:
            if ax.lines:
                ax.legend(fontsize=7)
        if missing:  # a profile still running: say which curves are to come instead of leaving them out silently
            axes[0, col].text(
                0.5,
                0.04,
                f"not stored yet: {', '.join(missing)}",
                ha="center",
                fontsize=8,
                color="gray",
                transform=axes[0, col].transAxes,
            )
    fig.suptitle(
        f"Figure 2, Bop hyperparameters on BinaryNet / CIFAR-10 (Gaussian smoothing std {std:g} steps; "
        f"{scale_note(config)})",
        fontsize=10,
    )


def _epoch_points(results: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """The step at each epoch's end, and the seed-mean validation accuracy there."""
    history = results[0]["history"]
    ends, total = [], 0
    for row in history:
        total += int(row["steps"])
        ends.append(total)
    vals = [statistics.fmean(r["history"][i].get("val_acc", math.nan) for r in results) for i in range(len(history))]
    return ends, vals


def verdicts(summary: dict[str, Any]) -> list[Verdict]:
    rows = {(r["gamma"], r["threshold"]): r for r in summary["tables"]["figure2"]}
    out = []

    def ordered(claim: str, points: list[tuple[float, float]], key: str, what: str, name: str) -> Verdict:
        missing = [p for p in points if p not in rows]
        if missing:
            return Verdict(claim, "-", f"missing runs {missing}", None)
        values = [rows[p][key] for p in points]
        shown = ", ".join(f"{name} {p[0] if name == 'gamma' else p[1]:g}: {v:.3f}" for p, v in zip(points, values))
        met = all(a > b for a, b in zip(values, values[1:]))
        if any(math.isnan(v) for v in values):
            met = None
        return Verdict(claim, what, shown, met)

    # the planned points, present or not: a claim with runs missing has no verdict yet
    by_gamma = sorted((tuple(p) for p in summary["sweeps"]["gamma"]), reverse=True)
    by_tau = sorted((tuple(p) for p in summary["sweeps"]["tau"]), key=lambda p: p[1])
    fixed_tau, fixed_gamma = by_gamma[0][1], by_tau[0][0]
    out.append(
        ordered(
            "Figure 2: a higher adaptivity rate gamma gives more flips",
            by_gamma,
            "mean_pi_t",
            f"mean pi_t strictly decreasing from the highest to the lowest gamma (tau {fixed_tau:g})",
            "gamma",
        )
    )
    out.append(
        ordered(
            "Figure 2: a higher threshold tau gives fewer flips",
            by_tau,
            "mean_pi_t",
            f"mean pi_t strictly decreasing from the lowest to the highest tau (gamma {fixed_gamma:g})",
            "tau",
        )
    )
    if any(p not in rows for p in by_gamma + by_tau):
        out.append(
            Verdict(
                "Figure 2: high gamma or low tau makes training noisy, low gamma or high tau stable",
                "-",
                "missing runs",
                None,
            )
        )
    elif len(by_gamma) >= 2 and len(by_tau) >= 2:
        noisy = [by_gamma[0], by_tau[0]]
        calm = [by_gamma[-1], by_tau[-1]]
        pairs = [(rows[a]["train_acc_noise"], rows[b]["train_acc_noise"]) for a, b in zip(noisy, calm)]
        out.append(
            Verdict(
                "Figure 2: high gamma or low tau makes training noisy, low gamma or high tau stable",
                "std of the per-step training accuracy around its smoothed curve: highest gamma > lowest gamma and "
                "lowest tau > highest tau",
                f"gamma {by_gamma[0][0]:g}: {pairs[0][0]:.4f} vs gamma {by_gamma[-1][0]:g}: {pairs[0][1]:.4f}; "
                f"tau {by_tau[0][1]:g}: {pairs[1][0]:.4f} vs tau {by_tau[-1][1]:g}: {pairs[1][1]:.4f}",
                all(a > b for a, b in pairs),
            )
        )
    return out


def results(summary: dict[str, Any]) -> list[str]:
    rows = [
        "| gamma | tau | mean pi_t | mean pi_t, 2nd half | flips per weight per step | training-accuracy "
        "noise | final validation accuracy | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["tables"]["figure2"]:
        rows.append(
            f"| {r['gamma']:g} | {r['threshold']:g} | {r['mean_pi_t']:.2f} | "
            f"{r['mean_pi_t_second_half']:.2f} | {r['flip_fraction']:.2e} | {r['train_acc_noise']:.4f} | "
            f"{r['final_val_acc']:.4f} | {r['steps']:.0f} |"
        )
    return rows + ["", f"Curves smoothed with a Gaussian filter of std {summary['smooth_std']:g} steps."]
