"""Verdicts: each claim of the paper or the report, the criterion that decides it, and the outcome computed from our
numbers. Nothing here is hard-coded to an outcome; every function reads a summary (see each experiment's
``summarize``) and returns :class:`Verdict` rows.

Outcomes:

* ``reproduced`` / ``not reproduced``: the criterion was evaluated on a run at the published scale;
* ``not run at scale``: the run was smaller than the published one (fewer epochs, a subset, a narrower network,
  fewer seeds); the criterion is still evaluated and shown as an indication only (the report also marks
  experiments without results so);
* ``inconclusive``: the check could not have failed (e.g. no weight ever flipped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Verdict", "verdicts", "TOLERANCE"]

#: Absolute accuracy tolerance for "matches a published number".
TOLERANCE = {"table1": 0.02, "cifar10": 0.015, "identical": 0.01, "alike": 0.02}


@dataclass(frozen=True)
class Verdict:
    claim: str
    criterion: str
    measured: str
    met: bool | None  # None: could not be evaluated
    scale_independent: bool = False  # an exact property: the verdict does not need the published scale

    def outcome(self, at_scale: bool) -> str:
        if self.met is None:
            return "inconclusive"
        if at_scale or self.scale_independent:
            return "reproduced" if self.met else "not reproduced"
        return "not run at scale"

    def indication(self) -> str:
        return {True: "criterion met at this scale", False: "criterion not met at this scale",
                None: "not evaluable"}[self.met]


def verdicts(experiment: str, summary: dict[str, Any]) -> list[Verdict]:
    return {"approximation": _approximation, "arbitrary-lr": _arbitrary_lr, "hyperparameters": _hyperparameters,
            "cifar10": _cifar10}[experiment](summary)


def _approximation(summary: dict[str, Any]) -> list[Verdict]:
    entry = summary["datasets"].get("mnist")
    tol = TOLERANCE["table1"]
    claims = {"binary": "with its binary weights the latent-weight BNN is accurate",
              "real": "with its real latent weights in place of their signs it is at chance level",
              "real_retrained": "retraining batch norm alone makes the real-weight network accurate again"}
    out = []
    for name, claim in claims.items():
        if entry is None:
            out.append(Verdict(f"Table 1, {name}: {claim}", "MNIST not run", "-", None))
            continue
        mean, published = entry[name]["mean"], entry[name]["published_mean"]
        out.append(Verdict(
            f"Table 1, {name}: {claim} (report: {published:.4f})",
            f"abs(our mean - {published:.4f}) <= {tol}",
            f"{mean:.4f} (diff {mean - published:+.4f}, {entry['seeds']} seeds)",
            abs(mean - published) <= tol))
    return out


def _arbitrary_lr(summary: dict[str, Any]) -> list[Verdict]:
    out = []
    theorem = summary.get("theorem1", {})
    check, control = theorem.get("check"), theorem.get("control")
    if check is not None:
        measured = (f"{check['differing_total']} differing weights over {check['steps']} steps "
                    f"(factor {check['factor']:g}; {check['flips_total']} flips in the reference run)")
        met: bool | None = check["differing_total"] == 0
        if control is not None:
            measured += (f"; control (factor {control['factor']:g}, clipping + saturating STE): "
                         f"{control['differing_total']} differing")
        if check["flips_total"] == 0 or control is None or control["differing_total"] == 0:
            met = None if met else False  # a check that could not fail proves nothing
        out.append(Verdict(
            "Theorem 1: scaling the initial latent weights and the lr by the same factor leaves the binary "
            "trajectory unchanged (no clipping, unsaturated STE)",
            "0 differing binary weights after every step, with flips > 0 in the run and > 0 differing weights in "
            "the control", measured, met, scale_independent=True))
    gaps = summary.get("max_gaps", {})

    def gap_verdict(claim: str, pairs: list[str], limit: float, above: bool) -> Verdict:
        values = [gaps.get(p) for p in pairs]
        if any(v is None for v in values):
            return Verdict(claim, "-", "configurations missing", None)
        worst = min(values) if above else max(values)
        shown = ", ".join(f"{p}: {v:.4f}" for p, v in zip(pairs, values))
        criterion = (f"max over epochs of abs(accuracy gap) {'>' if above else '<='} {limit} for "
                     + " and ".join(pairs))
        return Verdict(claim, criterion, shown, worst > limit if above else worst <= limit)

    if gaps:
        out.append(gap_verdict("Figure 1: configurations 2 and 3 (init and lr both x0.01) behave identically",
                               ["2-3"], TOLERANCE["identical"], above=False))
        out.append(gap_verdict("Figure 1: configurations 1 and 4 behave alike", ["1-4"], TOLERANCE["alike"],
                               above=False))
        out.append(gap_verdict("Figure 1: configuration 1 differs from 2 and 3", ["1-2", "1-3"], TOLERANCE["alike"],
                               above=True))
    return out


def _hyperparameters(summary: dict[str, Any]) -> list[Verdict]:
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

    gammas = sorted({g for g, _ in rows}, reverse=True)
    fixed_tau = _most_common([t for _, t in rows])
    fixed_gamma = _most_common([g for g, _ in rows])
    by_gamma = [(g, fixed_tau) for g in gammas if (g, fixed_tau) in rows]
    by_tau = sorted([(fixed_gamma, t) for g, t in rows if g == fixed_gamma], key=lambda p: p[1])
    out.append(ordered("Figure 2: a higher adaptivity rate gamma gives more flips", by_gamma, "mean_pi_t",
                       f"mean pi_t strictly decreasing from the highest to the lowest gamma (tau {fixed_tau:g})",
                       "gamma"))
    out.append(ordered("Figure 2: a higher threshold tau gives fewer flips", by_tau, "mean_pi_t",
                       f"mean pi_t strictly decreasing from the lowest to the highest tau (gamma {fixed_gamma:g})",
                       "tau"))
    if len(by_gamma) >= 2 and len(by_tau) >= 2:
        noisy = [by_gamma[0], by_tau[0]]
        calm = [by_gamma[-1], by_tau[-1]]
        pairs = [(rows[a]["train_acc_noise"], rows[b]["train_acc_noise"]) for a, b in zip(noisy, calm)]
        out.append(Verdict(
            "Figure 2: high gamma or low tau makes training noisy, low gamma or high tau stable",
            "std of the per-step training accuracy around its smoothed curve: highest gamma > lowest gamma and "
            "lowest tau > highest tau",
            f"gamma {by_gamma[0][0]:g}: {pairs[0][0]:.4f} vs gamma {by_gamma[-1][0]:g}: {pairs[0][1]:.4f}; "
            f"tau {by_tau[0][1]:g}: {pairs[1][0]:.4f} vs tau {by_tau[-1][1]:g}: {pairs[1][1]:.4f}",
            all(a > b for a, b in pairs)))
    return out


def _most_common(values: list[float]) -> float:
    return max(set(values), key=values.count)


def _cifar10(summary: dict[str, Any]) -> list[Verdict]:
    rows = summary["tables"]["figure3"]
    if not rows:
        return [Verdict("CIFAR-10 test accuracy", "-", "no runs", None)]
    tol = TOLERANCE["cifar10"]
    protocol = rows[0]["protocol"]
    published = rows[0]["published"]
    accs = [r["test_acc"] for r in rows]
    mean = sum(accs) / len(accs)
    out = [Verdict(
        f"BinaryNet trained with Bop reaches {published:.2%} on CIFAR-10 ({protocol} protocol)",
        f"our test accuracy >= {published:.2%} - {tol:.1%}",
        f"{mean:.2%} ({len(rows)} seed(s); {rows[0]['test_weights']} weights; {rows[0]['epochs']} epochs)",
        mean >= published - tol)]
    first = [r["flip_ratio_first_phase"] for r in rows]
    last = [r["flip_ratio_last_phase"] for r in rows]
    if all(v is not None and v > 0 for v in first) and all(v is not None for v in last):
        out.append(Verdict(
            "Figure 3: flips die down as gamma decays",
            "mean flip ratio of the last gamma phase at least 10x below that of the first",
            "; ".join(f"first {a:.2e}, last {b:.2e}" for a, b in zip(first, last)),
            all(b * 10 <= a for a, b in zip(first, last))))
    return out
