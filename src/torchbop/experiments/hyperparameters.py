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
from typing import Any

import torch

from torchbop.experiments.runner import RunContext, RunSpec

__all__ = ["VERSION", "plan", "execute", "describe", "summarize", "grid"]

VERSION = 1


def grid(cfg: Any) -> list[tuple[str, float, float]]:
    """``(sweep, gamma, tau)`` of the two sweeps: ``"gamma"`` varies gamma, ``"tau"`` varies tau."""
    return ([("gamma", g, cfg.fixed_threshold) for g in cfg.gammas]
            + [("tau", cfg.fixed_gamma, t) for t in cfg.thresholds])


def datasets(cfg: Any) -> tuple[str, ...]:
    """The datasets this experiment reads (CIFAR-10), so that they can be checked or fetched before any run."""
    return ("cifar10",)


def plan(cfg: Any) -> list[RunSpec]:
    from torchbop.training import load_recipe

    specs = []
    for seed in range(cfg.seeds):
        for _, gamma, tau in grid(cfg):
            train = load_recipe("cifar10_hyperparams").replace(
                gamma=gamma, threshold=tau, epochs=cfg.epochs, seed=seed, progress_bar=False,
                model_kwargs={**load_recipe("cifar10_hyperparams").model_kwargs, "width": cfg.width})
            params = {"gamma": gamma, "threshold": tau, "seed": seed, "subset": cfg.subset,
                      "test_subset": cfg.test_subset,
                      "train": {k: v for k, v in train.to_dict().items() if k not in ("out", "data_dir", "progress_bar")}}
            specs.append(RunSpec("hyperparameters", f"gamma{gamma:g}-tau{tau:g}-seed{seed}", params))
    return specs


def execute(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    from torchbop.experiments.common import train_cifar10_run

    result, history, _ = train_cifar10_run(params, ctx, per_step=True)
    return {"test_acc": result["test_acc"], "history": history["epochs"], "steps": history["steps"]}


def describe(result: dict[str, Any]) -> str:
    pi = [p for p in result["steps"]["pi_t"] if math.isfinite(p)]
    return f"test accuracy {result['test_acc']:.4f}, mean pi_t {statistics.fmean(pi):.2f}" if pi else "no steps"


def summarize(records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Per (gamma, tau), seed means of: pi_t over all steps and over the last half, the per-step flip fraction,
    the final validation accuracy, and the noise of the training accuracy (std of its residual around the smoothed
    curve)."""
    from torchbop.experiments.stats import gaussian_filter1d

    std = float(config.get("smooth_std", 100.0))
    points: dict[tuple[float, float], list[dict[str, float]]] = {}
    for record in records:
        params, result = record["params"], record["result"]
        pi = torch.tensor(result["steps"]["pi_t"], dtype=torch.float64)
        acc = torch.tensor(result["steps"]["train_acc"], dtype=torch.float64)
        half = len(pi) // 2
        residual = acc - gaussian_filter1d(acc, std) if len(acc) else acc
        points.setdefault((params["gamma"], params["threshold"]), []).append({
            "mean_pi_t": float(pi.mean()), "mean_pi_t_second_half": float(pi[half:].mean()),
            "flip_fraction": float((pi.exp() - 1e-9).clamp(min=0).mean()),
            "final_val_acc": result["history"][-1].get("val_acc", float("nan")) if result["history"] else float("nan"),
            "train_acc_noise": float(residual.std()) if len(residual) > 1 else float("nan"),
            "steps": len(pi),
        })
    rows = []
    for (gamma, tau), runs in sorted(points.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        row: dict[str, Any] = {"gamma": gamma, "threshold": tau, "seeds": len(runs)}
        for key in runs[0]:
            row[key] = statistics.fmean(r[key] for r in runs)
        rows.append(row)
    return {"smooth_std": std, "tables": {"figure2": rows}}
