"""A toy experiment: the smallest module that follows :class:`torchbop.experiments.spec.Experiment`.

``test_toy_experiment.py`` adds it to the registry with one line and runs it like the paper's four: planned, run at
the smoke scale, stored, summarized, plotted and reported, with no other file changed.

Claim: with Bop, a higher threshold tau flips fewer weights. Each run trains one ``BinaryLinear(16, 4)`` on a fixed
random batch for ``steps`` steps at one tau and counts the weights that change sign.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from torchbop.experiments.plots import COLORS, scale_note
from torchbop.experiments.spec import RunContext, RunSpec
from torchbop.experiments.verdicts import Verdict
from torchbop.nn import BinaryLinear
from torchbop.optim import Bop

NAME = "toy"
TITLE = "Toy: a higher threshold tau flips fewer weights"
VERSION = 1
KEEP_RUN_DIR = False
NOT_SCALE: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Config:
    seeds: int = 3
    steps: int = 50
    thresholds: tuple[float, ...] = (0.0, 1e-3, 1e-1)


CONFIGS = {"paper": Config(), "quick": Config(seeds=2, steps=20), "smoke": Config(seeds=2, steps=8)}


def datasets(config: Config) -> tuple[str, ...]:
    return ()  # random data only


def plan(config: Config) -> list[RunSpec]:
    return [
        RunSpec(NAME, f"tau{tau:g}-seed{seed}", {"threshold": tau, "seed": seed, "steps": config.steps})
        for tau in config.thresholds
        for seed in range(config.seeds)
    ]


def execute(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    torch.manual_seed(params["seed"])
    layer = BinaryLinear(16, 4)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    optimizer = Bop(layer.parameters(), gamma=0.1, threshold=params["threshold"])
    flips = 0
    for _ in range(params["steps"]):
        before = layer.weight.detach().clone()
        optimizer.zero_grad()
        F.cross_entropy(layer(x), y).backward()
        optimizer.step()
        flips += int((layer.weight != before).sum())
    ctx.log(f"{flips} flips")
    return {"flips": flips}


def describe(result: dict[str, Any]) -> str:
    return f"{result['flips']} flips"


def summarize(records: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    by_tau: dict[float, list[int]] = {}
    for record in records:
        by_tau.setdefault(record["params"]["threshold"], []).append(record["result"]["flips"])
    rows = [{"threshold": tau, "mean_flips": statistics.fmean(v), "seeds": len(v)} for tau, v in sorted(by_tau.items())]
    return {"tables": {"toy": rows}}


def plot(fig: Figure, records: list[dict[str, Any]], summary: dict[str, Any], config: Config) -> None:
    rows = summary["tables"]["toy"]
    ax = fig.subplots()
    ax.bar(range(len(rows)), [r["mean_flips"] for r in rows], color=COLORS[0])
    ax.set_xticks(range(len(rows)), [f"tau {r['threshold']:g}" for r in rows])
    ax.set_ylabel("flips (mean over seeds)")
    fig.suptitle(f"Toy ({scale_note(config)})")


def verdicts(summary: dict[str, Any]) -> list[Verdict]:
    flips = [r["mean_flips"] for r in summary["tables"]["toy"]]
    return [
        Verdict(
            TITLE,
            "mean flips strictly decreasing from the lowest to the highest tau",
            ", ".join(f"{f:g}" for f in flips),
            all(a > b for a, b in zip(flips, flips[1:])),
        )
    ]


def results(summary: dict[str, Any]) -> list[str]:
    return [
        "| tau | mean flips | seeds |",
        "|---|---|---|",
        *(f"| {r['threshold']:g} | {r['mean_flips']:g} | {r['seeds']} |" for r in summary["tables"]["toy"]),
    ]
