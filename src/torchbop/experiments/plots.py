"""Figures of the four experiments, drawn from stored records only (never trains).

Matplotlib is used through its object API with the Agg canvas (``Figure`` + ``FigureCanvasAgg``): no pyplot, no global
backend switch, so importing this module changes nothing for the caller.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch
from matplotlib.ticker import MaxNLocator

__all__ = ["plot"]

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def plot(experiment: str, records: list[dict[str, Any]], summary: dict[str, Any], config: dict[str, Any],
         path: Path) -> Path:
    """Draw ``experiment``'s figure to ``path`` (PNG) and return the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    draw = {"approximation": _approximation, "arbitrary-lr": _arbitrary_lr, "hyperparameters": _hyperparameters,
            "cifar10": _cifar10}[experiment]
    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    draw(fig, records, summary, config)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _scale_note(config: dict[str, Any]) -> str:
    keys = ("epochs", "retrain_epochs", "seeds", "width", "subset", "test_subset")
    return ", ".join(f"{k} {'all' if config[k] is None else config[k]}" for k in keys if k in config)


# ----------------------------------------------------------------------------------------------------------------
def _approximation(fig, records, summary, config) -> None:
    from torchbop.experiments.approximation import EVALUATIONS

    datasets = summary["datasets"]
    fig.set_size_inches(max(6.5, 3.8 * len(datasets)), 4.2)
    axes = fig.subplots(1, max(1, len(datasets)), squeeze=False)[0]
    labels = {"binary": "binary", "real": "real latent", "real_retrained": "real,\nBN retrained"}
    for ax, (dataset, entry) in zip(axes, datasets.items()):
        for i, name in enumerate(EVALUATIONS):
            values = entry[name]["values"]
            mean = entry[name]["mean"]
            sd = statistics.pstdev(values) if len(values) > 1 else 0.0
            ax.bar(i, mean, yerr=sd, color=COLORS[i], alpha=0.75, capsize=4,
                   label="ours (mean, std)" if i == 0 else None)
            ax.scatter([i + 0.18] * len(values), values, s=9, color="black", zorder=3,
                       label="ours, per seed" if i == 0 else None)
            inside = mean > 0.25
            ax.text(i, mean / 2 if inside else mean + sd + 0.03, f"{mean:.4f}", ha="center", va="center",
                    fontsize=8, color="white" if inside else "black", weight="bold" if inside else "normal")
            published = entry[name]["published_mean"]
            if published is not None:
                ax.scatter([i - 0.18], [published], marker="D", s=30, color="white", edgecolor="black", zorder=4,
                           label="report (Table 1)" if i == 0 else None)
        ax.axhline(0.1, color="gray", lw=0.8, ls=":", label="chance")
        ax.set_xticks(range(len(EVALUATIONS)), [labels[n] for n in EVALUATIONS])
        ax.set_ylim(0, 1.32)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{dataset} ({entry['seeds']} seeds)")
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    fig.suptitle(f"Table 1, approximation viewpoint\n({_scale_note(config)})", fontsize=10)


# ----------------------------------------------------------------------------------------------------------------
def _arbitrary_lr(fig, records, summary, config) -> None:
    from torchbop.experiments.arbitrary_lr import CONFIGURATIONS

    left, right = fig.subplots(1, 2)
    styles = {"2": "-", "3": "--"}
    for i, (name, curve) in enumerate(summary["curves"].items()):
        epochs = list(range(1, len(curve) + 1))
        left.plot(epochs, curve, marker="o", ms=3, ls=styles.get(name, "-"), color=COLORS[i],
                  label=f"{name}: {CONFIGURATIONS[name][0]}")
    left.set_xlabel("epoch")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_ylabel("test accuracy (mean over seeds)")
    left.set_title("Figure 1: five initializations / learning rates")
    left.legend(fontsize=7)

    theorem = {("control" if r["params"]["clip_latent"] else "check"): r["result"] for r in records
               if r["params"]["kind"] == "theorem"}
    for i, (name, result) in enumerate(sorted(theorem.items())):
        steps = range(1, len(result["differing"]) + 1)
        what = ("no clipping, STE without saturation" if name == "check" else "clipping + saturating STE")
        right.plot(steps, result["differing"], color=COLORS[i + 1],
                   label=f"{name}: factor {result['factor']:g}, {what}; total {result['differing_total']}")
        if name == "check":
            right.plot(steps, result["flips"], color="gray", lw=0.7, alpha=0.7,
                       label=f"flips per step of the reference run (total {result['flips_total']})")
    right.set_yscale("symlog", linthresh=1)
    top = max([1] + [max(r["differing"] + r["flips"]) for r in theorem.values()])
    right.set_ylim(-0.3, top * 300)  # headroom for the legend
    right.set_xlabel("optimizer step")
    right.set_ylabel("binary weights that differ between the runs")
    right.set_title("Theorem 1: scaled init + lr, exact comparison")
    right.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Arbitrary learning rate ({_scale_note(config)})", fontsize=10)


# ----------------------------------------------------------------------------------------------------------------
def _hyperparameters(fig, records, summary, config) -> None:
    from torchbop.experiments.hyperparameters import grid
    from torchbop.experiments.stats import gaussian_filter1d

    fig.set_size_inches(11, 7.5)
    axes = fig.subplots(2, 2)
    std = float(config.get("smooth_std", 100.0))
    cfg = _Namespace(config)
    by_point: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for record in records:
        by_point.setdefault((record["params"]["gamma"], record["params"]["threshold"]), []).append(record["result"])
    for col, sweep in enumerate(("gamma", "tau")):
        points = sorted(((g, t) for s, g, t in grid(cfg) if s == sweep),  # gamma high -> low, tau low -> high
                        key=lambda p: -p[0] if sweep == "gamma" else p[1])
        for i, (gamma, tau) in enumerate(points):
            results = by_point.get((gamma, tau))
            if not results:
                continue
            label = f"gamma {gamma:g}" if sweep == "gamma" else f"tau {tau:g}"
            pi = _mean_curve([r["steps"]["pi_t"] for r in results])
            acc = _mean_curve([r["steps"]["train_acc"] for r in results])
            steps = range(1, len(pi) + 1)
            axes[0, col].plot(steps, gaussian_filter1d(pi, std).tolist(), color=COLORS[i], label=label)
            axes[1, col].plot(steps, gaussian_filter1d(acc, std).tolist(), color=COLORS[i], label=f"{label} train")
            ends, val = _epoch_points(results)
            axes[1, col].plot(ends, val, color=COLORS[i], ls="--", marker="o", ms=3, label=f"{label} validation")
        fixed = f"tau = {cfg.fixed_threshold:g}" if sweep == "gamma" else f"gamma = {cfg.fixed_gamma:g}"
        axes[0, col].set_title(f"varying {sweep} ({fixed})")
        axes[0, col].set_ylabel("pi_t (log flip ratio), smoothed")
        axes[1, col].set_ylabel("accuracy")
        axes[1, col].set_xlabel("optimizer step")
        for ax in axes[:, col]:
            ax.legend(fontsize=7)
    fig.suptitle(f"Figure 2, Bop hyperparameters on BinaryNet / CIFAR-10 (Gaussian smoothing std {std:g} steps; "
                 f"{_scale_note(config)})", fontsize=10)


class _Namespace:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _mean_curve(curves: list[list[float]]) -> torch.Tensor:
    n = min(len(c) for c in curves)
    return torch.tensor([c[:n] for c in curves], dtype=torch.float64).mean(dim=0)


def _epoch_points(results: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    history = results[0]["history"]
    ends, total = [], 0
    for row in history:
        total += int(row["steps"])
        ends.append(total)
    vals = [statistics.fmean(r["history"][i].get("val_acc", math.nan) for r in results) for i in range(len(history))]
    return ends, vals


# ----------------------------------------------------------------------------------------------------------------
def _cifar10(fig, records, summary, config) -> None:
    from torchbop.experiments.cifar10 import PUBLISHED

    left, right = fig.subplots(1, 2)
    gamma_ax = right.twinx()
    for i, record in enumerate(records):
        result = record["result"]
        history = result["history"]
        epochs = [row["epoch"] for row in history]
        tag = f"seed {record['params']['seed']}"
        left.plot(epochs, [row.get("train_acc", math.nan) for row in history], color=COLORS[i], label=f"train, {tag}")
        left.plot(epochs, [row.get("val_acc", math.nan) for row in history], color=COLORS[i], ls="--",
                  label=f"validation, {tag}")
        right.plot(epochs, [row.get("flip_ratio", math.nan) for row in history], color=COLORS[i],
                   label=f"flip ratio, {tag}")
        gamma_ax.step(epochs, [row["rate"] for row in history], where="mid", color="black", ls=":", lw=1,
                      label="gamma (right axis)" if i == 0 else None)
    protocol = records[0]["result"]["protocol"]
    left.axhline(PUBLISHED[protocol], color="black", lw=0.8, ls=":",
                 label=f"published test accuracy ({protocol} protocol): {PUBLISHED[protocol]:.2%}")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_ylabel("accuracy")
    left.set_title(f"accuracy (validation = {'test set' if protocol == 'original' else 'held-out 10%'})")
    left.legend(fontsize=7)
    right.set_yscale("log")
    right.set_ylabel("flip ratio (flips / weights / step)")
    gamma_ax.set_yscale("log")
    gamma_ax.set_ylabel("gamma")
    right.set_title("flip ratio per epoch")
    handles = right.get_legend_handles_labels()[0] + gamma_ax.get_legend_handles_labels()[0]
    right.legend(handles, [h.get_label() for h in handles], fontsize=7)
    fig.suptitle(f"Figure 3, BinaryNet / CIFAR-10 with Bop ({_scale_note(config)})", fontsize=10)
