"""``torchbop report``: gather the stored results of a profile into ``reports/<profile>/REPORT.md`` with its figures.

Reads ``results/<profile>/<experiment>/`` only (manifest and run records; never trains), recomputes each summary
and figure from the records, states the scale every experiment ran at beside the published one, and gives every
claim a verdict computed by :mod:`torchbop.experiments.verdicts` with its criterion.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from torchbop.errors import UserError
from torchbop.experiments.profiles import PROFILES
from torchbop.experiments.runner import (EXPERIMENTS, experiment_dir, experiment_module, load_manifest,
                                         load_records)
from torchbop.experiments.verdicts import Verdict, verdicts

__all__ = ["build_report", "at_published_scale"]

TITLES = {
    "approximation": "Table 1: the approximation viewpoint (report 3.1.1)",
    "arbitrary-lr": "Figure 1 and Theorem 1: the arbitrary learning rate (report 3.1.2)",
    "hyperparameters": "Figure 2: Bop's hyperparameters gamma and tau (paper 5.1, report 3.2)",
    "cifar10": "Figure 3: BinaryNet on CIFAR-10 with Bop (paper 5.2, report 3.3)",
}
#: Settings that do not change how an experiment's published claims are tested.
NOT_SCALE = {"approximation": {"datasets", "width"}, "arbitrary-lr": {"theorem_steps", "theorem_factor",
             "control_factor", "theorem_lr"}, "cifar10": {"protocol"}, "hyperparameters": set()}


def at_published_scale(experiment: str, config: dict[str, Any], paper: dict[str, Any]) -> bool:
    """True when every setting that defines the scale equals the paper profile's.

    Example:
        >>> at_published_scale("cifar10", {"epochs": 500, "protocol": "reproduction"},
        ...                    {"epochs": 500, "protocol": "original"})
        True
    """
    ignore = NOT_SCALE[experiment]
    return all(config.get(k) == v for k, v in paper.items() if k not in ignore)


def build_report(profile: str, results_root: str | Path = "results", reports_root: str | Path = "reports") -> Path:
    """Write ``<reports_root>/<profile>/REPORT.md`` and one PNG per experiment with results; return the path.

    Raises:
        UserError: no experiment of ``profile`` has results; nothing is written (a committed report stays as it is).
    """
    from torchbop.experiments import plots

    found = {e: load_manifest(experiment_dir(results_root, profile, e)) for e in EXPERIMENTS}
    if not any(manifest and load_records(experiment_dir(results_root, profile, e), manifest)
               for e, manifest in found.items()):
        raise UserError(f"no results in {Path(results_root) / profile}: run `torchbop experiment NAME --profile "
                        f"{profile}` first (or give --results-dir). Nothing was written.")
    out = Path(reports_root) / profile
    out.mkdir(parents=True, exist_ok=True)
    description = PROFILES[profile].description if profile in PROFILES else "custom"
    lines = [f"# torchbop reproduction report: profile `{profile}`", "",
             f"Profile `{profile}`: {description}. Generated {time.strftime('%Y-%m-%d %H:%M')} by "
             f"`torchbop report --profile {profile}` from `{Path(results_root) / profile}`; every number below is "
             "recomputed from the stored run records.", "",
             "Verdicts: **reproduced** / **not reproduced** (criterion evaluated at the published scale), "
             "**not run at scale** (the run was smaller; the criterion's outcome at our scale is shown as an "
             "indication only; experiments without results are also marked so), **inconclusive** (the check could not "
             "have failed).", ""]
    summary_rows: list[str] = []
    sections: list[str] = []
    span = compute = 0.0
    for experiment in EXPERIMENTS:
        exp_dir = experiment_dir(results_root, profile, experiment)
        manifest = load_manifest(exp_dir)
        records = load_records(exp_dir, manifest) if manifest else []
        if not records:
            sections += [f"## {TITLES[experiment]}", "",
                         f"**not run at scale**: no results in `{exp_dir}` (run `torchbop experiment {experiment} "
                         f"--profile {profile}`).", ""]
            summary_rows.append(f"| {TITLES[experiment]} | **not run at scale** (no results) | - |")
            continue
        summary = experiment_module(experiment).summarize(records, manifest["config"])
        figure = plots.plot(experiment, records, summary, manifest["config"], out / f"{experiment}.png")
        scale_ok = at_published_scale(experiment, manifest["config"], manifest["paper_config"])
        claims = verdicts(experiment, summary)
        sections += [f"## {TITLES[experiment]}", "", *_scale_table(manifest, records, scale_ok), "",
                     *_results(experiment, summary), "", f"![{experiment}]({figure.name})", "",
                     *_verdict_table(claims, scale_ok), ""]
        for v in claims:
            outcome = v.outcome(scale_ok)
            note = f" ({v.indication()})" if outcome == "not run at scale" else ""
            summary_rows.append(f"| {v.claim} | **{outcome}**{note} | {v.measured} |")
        span += run_span(records)
        compute += sum(r["wall_time_s"] for r in records)
    lines += ["## Verdicts at a glance", "", "| claim | verdict | ours |", "|---|---|---|", *summary_rows, "",
              f"Time: {compute / 60:.1f} min of compute over all runs; {span / 60:.1f} min of wall time from the "
              "first run's start to the last run's end, summed over the experiments (runs in parallel overlap).",
              "", *sections]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _scale_table(manifest: dict[str, Any], records: list[dict[str, Any]], scale_ok: bool) -> list[str]:
    config, paper = manifest["config"], manifest["paper_config"]
    env = manifest["environment"]
    rows = ["| setting | ours | `paper` profile (the published scale) |", "|---|---|---|"]
    for key, value in config.items():
        rows.append(f"| {key} | {_fmt(key, value)} | {_fmt(key, paper.get(key))} |")
    machine = f"{env['cpu']}, {env['cores']} cores" + (f", {env['cuda']}" if env.get("cuda") else "")
    compute = sum(r["wall_time_s"] for r in records)
    rows += [
        f"| runs | {len(records)} of {len(manifest['runs'])} planned | |",
        f"| compute time (sum over runs) | {compute / 60:.1f} min | |",
        f"| wall time (first run's start to last run's end) | {run_span(records) / 60:.1f} min | |",
        f"| wall time of the last invocation | {manifest['wall_time_s'] / 60:.1f} min "
        f"({manifest['executed']} run, {manifest['skipped']} cached; {env.get('jobs', 1)} job(s) x "
        f"{env['torch_threads']} thread(s)) | |",
        f"| machine | {machine}; torch {env['torch']} | |",
        f"| code | {env.get('git') or 'unknown'} (finished {manifest['finished_at']}) | |",
    ]
    scale = "at the published scale" if scale_ok else "**below the published scale**"
    return [f"Scale: {scale}.", "", *rows]


def run_span(records: list[dict[str, Any]]) -> float:
    """Seconds from the earliest run's start to the latest run's end (each start = its end minus its wall time)."""
    from datetime import datetime

    ends = [datetime.strptime(r["finished_at"], "%Y-%m-%d %H:%M:%S %z").timestamp() for r in records]
    starts = [end - r["wall_time_s"] for end, r in zip(ends, records)]
    return max(ends) - min(starts) if records else 0.0


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(_fmt(key, v) for v in value)
    if value is None:
        return "all" if key.endswith("subset") else "recipe default"
    return str(value)


def _verdict_table(claims: list[Verdict], scale_ok: bool) -> list[str]:
    rows = ["| claim | criterion | ours | verdict |", "|---|---|---|---|"]
    for v in claims:
        outcome = v.outcome(scale_ok)
        note = f" ({v.indication()})" if outcome == "not run at scale" else ""
        rows.append(f"| {v.claim} | {v.criterion} | {v.measured} | **{outcome}**{note} |")
    return rows


def _results(experiment: str, summary: dict[str, Any]) -> list[str]:
    if experiment == "approximation":
        rows = ["| dataset | evaluation | ours: mean | ours: variance | report: mean | report: variance | seeds |",
                "|---|---|---|---|---|---|---|"]
        for r in summary["tables"]["table1"]:
            rows.append(f"| {r['dataset']} | {r['evaluation']} | {r['mean']:.4f} | {_sci(r['var'])} | "
                        f"{_opt(r['published_mean'], '.4f')} | {_sci(r['published_var'])} | {r['seeds']} |")
        bound = ", ".join(f"{d}: {e['latent_at_bound']:.1%}" for d, e in summary["datasets"].items())
        rows += ["", f"Fraction of latent weights clipped at +-1 after training: {bound}."]
        for dataset, entry in summary["datasets"].items():
            names = [n for n in ("binary", "real", "real_retrained") if entry[n]["published_mean"] is not None]
            if names:
                diffs = ", ".join(f"{n} {entry[n]['mean'] - entry[n]['published_mean']:+.4f}" for n in names)
                ratios = ", ".join(f"{n} {entry[n]['var'] / entry[n]['published_var']:.2g}" for n in names)
                rows += ["", f"Beside the report ({dataset}): our mean minus theirs: {diffs}; our variance over "
                             f"theirs: {ratios}."]
        return rows
    if experiment == "arbitrary-lr":
        from torchbop.experiments.arbitrary_lr import CONFIGURATIONS

        rows = ["| configuration | final test accuracy (seed mean) |", "|---|---|"]
        rows += [f"| {k}: {CONFIGURATIONS[k][0]} | {v:.4f} |" for k, v in summary["final_test_acc"].items()]
        gaps = ", ".join(f"{k}: {v:.4f}" for k, v in summary["max_gaps"].items() if v is not None)
        return rows + ["", f"Largest gap between seed-mean accuracy curves over the epochs: {gaps}."]
    if experiment == "hyperparameters":
        rows = ["| gamma | tau | mean pi_t | mean pi_t, 2nd half | flips per weight per step | training-accuracy "
                "noise | final validation accuracy | steps |", "|---|---|---|---|---|---|---|---|"]
        for r in summary["tables"]["figure2"]:
            rows.append(f"| {r['gamma']:g} | {r['threshold']:g} | {r['mean_pi_t']:.2f} | "
                        f"{r['mean_pi_t_second_half']:.2f} | {r['flip_fraction']:.2e} | {r['train_acc_noise']:.4f} | "
                        f"{r['final_val_acc']:.4f} | {r['steps']:.0f} |")
        return rows + ["", f"Curves smoothed with a Gaussian filter of std {summary['smooth_std']:g} steps."]
    rows = ["| seed | protocol | tested weights | test accuracy | published | epochs | train / test images |",
            "|---|---|---|---|---|---|---|"]
    for r in summary["tables"]["figure3"]:
        rows.append(f"| {r['seed']} | {r['protocol']} | {r['test_weights']} | {r['test_acc']:.2%} | "
                    f"{r['published']:.2%} | {r['epochs']} | {r['train_images']} / {r['test_images']} |")
    protocols = ("Protocol original: train on the training images, validate on the test set, test the final "
                 "weights (the paper's code). Protocol reproduction: seeded class-balanced 90/10 split, test the "
                 "lowest-validation-loss weights (the reproducibility report).")
    return rows + ["", protocols]


def _sci(value: Any) -> str:
    if value is None or isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:.2e}"


def _opt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)

