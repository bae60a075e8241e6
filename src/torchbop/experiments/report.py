"""``torchbop report``: gather the stored results of a profile into ``reports/<profile>/REPORT.md`` with its figures.

Reads ``results/<profile>/<experiment>/`` only (manifest and run records; never trains), recomputes each summary
and figure from the records, states the scale every experiment ran at beside the published one, and gives every
claim a verdict computed by :mod:`torchbop.experiments.verdicts` with its criterion. Each experiment's section is
also saved beside the report, and kept when its runs are no longer all stored
(:mod:`~torchbop.experiments.report_section`): a report never forgets what it showed because results were lost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from torchbop.atomic_file import atomic_write
from torchbop.errors import UserError
from torchbop.experiments.plots import save_figure
from torchbop.experiments.profiles import PROFILES
from torchbop.experiments.progress import progress_table, runs_in_progress
from torchbop.experiments.registry import EXPERIMENTS, get_experiment
from torchbop.experiments.report_section import ReportSection, load_section, save_section
from torchbop.experiments.runner import config_from_dict, experiment_dir
from torchbop.experiments.store import compute_time_s, cpu_time_s, load_manifest, load_records, parse_time_stamp
from torchbop.experiments.verdicts import Verdict

__all__ = ["build_report", "at_published_scale", "scale_differences"]


def at_published_scale(experiment: str, config: dict[str, Any], paper: dict[str, Any]) -> bool:
    """True when every setting that defines the scale (all but the experiment's ``NOT_SCALE``) equals the paper
    profile's.

    Example:
        >>> at_published_scale("cifar10", {"epochs": 500, "protocol": "reproduction"},
        ...                    {"epochs": 500, "protocol": "original"})
        True
    """
    return not scale_differences(experiment, config, paper)


def scale_differences(experiment: str, config: dict[str, Any], paper: dict[str, Any]) -> list[str]:
    """The settings that define the scale and differ from the paper profile's, as ``"width 0.125 (published 1)"``.

    Example:
        >>> scale_differences("cifar10", {"epochs": 4, "width": 0.125, "protocol": "reproduction"},
        ...                   {"epochs": 500, "width": 1.0, "protocol": "original"})
        ['epochs 4 (published 500)', 'width 0.125 (published 1)']
    """
    ignore = get_experiment(experiment).NOT_SCALE
    return [
        f"{k} {_fmt(k, config.get(k))} (published {_fmt(k, v)})"
        for k, v in paper.items()
        if k not in ignore and config.get(k) != v
    ]


def build_report(
    profile: str,
    results_root: str | Path = "results",
    reports_root: str | Path = "reports",
    rebuild: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Write ``<reports_root>/<profile>/REPORT.md`` and one PNG per experiment with results; return the path.

    Each experiment's section is built from its stored runs and saved under ``sections/`` beside the report
    (:mod:`~torchbop.experiments.report_section`). Where the results no longer hold every run a saved section was
    built from (a lost or partly copied results folder), the saved section and its figure are kept as they are and
    marked so, unless ``rebuild``; ``log`` names each kept section.

    Raises:
        UserError: no experiment of ``profile`` has results, or a saved section is unreadable; nothing is written
            (a committed report stays as it is).
    """
    out = Path(reports_root) / profile
    stored = {}  # experiment -> (its results folder, manifest, records, its saved section)
    for experiment in EXPERIMENTS:
        exp_dir = experiment_dir(results_root, profile, experiment)
        manifest = load_manifest(exp_dir)
        stored[experiment] = (
            exp_dir,
            manifest,
            load_records(exp_dir, manifest) if manifest else [],
            load_section(out, experiment),
        )
    if not any(records for _, _, records, _ in stored.values()):
        raise UserError(
            f"no results in {Path(results_root) / profile}: run `torchbop experiment NAME --profile "
            f"{profile}` first (or give --results-dir). Nothing was written."
        )
    out.mkdir(parents=True, exist_ok=True)
    description = PROFILES.get(profile, "custom")
    lines = [
        f"# torchbop reproduction report: profile `{profile}`",
        "",
        f"Profile `{profile}`: {description}. Generated {time.strftime('%Y-%m-%d %H:%M')} by "
        f"`torchbop report --profile {profile}` from `{Path(results_root) / profile}`; every number below is "
        "recomputed from the stored run records, except in a section kept from an earlier report because its "
        "runs are no longer all stored (it says so under its heading).",
        "",
        "Verdicts: **reproduced** / **not reproduced** (criterion evaluated at the published scale), "
        "**not run at scale** (the run was smaller; the criterion's outcome at our scale is shown as an "
        "indication only; experiments without results are also marked so), **inconclusive** (the check could not "
        "have failed), **pending** (a profile still running: the claim's runs are not all stored yet).",
        "",
    ]
    built: list[ReportSection] = []
    summary_rows: list[str] = []
    sections: list[str] = []
    for experiment, module in EXPERIMENTS.items():
        exp_dir, manifest, records, saved = stored[experiment]
        unfinished = progress_table(runs_in_progress(exp_dir, manifest, records)) if manifest else []
        if saved and not (rebuild or saved.covered_by({r["key"] for r in records})):
            held = sum(r["key"] in saved.runs for r in records)
            log(
                f"kept the {experiment} section of {out / 'REPORT.md'}: {exp_dir} holds {held} of the "
                f"{len(saved.runs)} runs it was built from (--rebuild builds it from what is there)"
            )
            note = (
                f"*Kept from the report generated {saved.generated} from `{saved.source}` ({len(saved.runs)} of "
                f"{saved.planned} runs stored then): `{exp_dir}` holds {held} of those runs now.*"
            )
            sections += [
                *saved.lines[:2],
                note,
                "",
                *([*unfinished, ""] if unfinished else []),
                *_stored_now(experiment, manifest, records, saved),
                *saved.lines[2:],
                "",
            ]
            summary_rows += saved.summary_rows
            built.append(saved)
            continue
        if not records and manifest:  # planned, none stored yet: where its runs stand
            sections += [
                f"## {module.TITLE}",
                "",
                f"**pending**: 0 of {len(manifest['runs'])} runs stored in `{exp_dir}` ({_when(manifest)}).",
                "",
                *unfinished,
                "",
            ]
            summary_rows.append(f"| {module.TITLE} | **pending** (0 of {len(manifest['runs'])} runs stored) | - |")
            continue
        if not records:
            sections += [
                f"## {module.TITLE}",
                "",
                f"**not run at scale**: no results in `{exp_dir}` (run `torchbop experiment {experiment} "
                f"--profile {profile}`).",
                "",
            ]
            summary_rows.append(f"| {module.TITLE} | **not run at scale** (no results) | - |")
            continue
        section = _build_section(experiment, exp_dir, manifest, records, unfinished, out)
        save_section(out, section)
        sections += [*section.lines, ""]
        summary_rows += section.summary_rows
        built.append(section)
    cpu = _cpu_time(sum(s.cpu_s for s in built), sum(s.cpu_counted for s in built), sum(len(s.runs) for s in built))
    lines += [
        "## Verdicts at a glance",
        "",
        "| claim | verdict | ours |",
        "|---|---|---|",
        *summary_rows,
        "",
        f"Time: {sum(s.compute_s for s in built) / 60:.1f} min of compute over all runs (each run's wall-clock "
        f"time, summed); CPU time {cpu}; {sum(s.span_s for s in built) / 60:.1f} min of wall time from the "
        "first run's start to the last run's end, summed over the experiments (runs in parallel overlap).",
        "",
        *sections,
    ]
    path = out / "REPORT.md"
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    return path


def _stored_now(
    experiment: str, manifest: dict[str, Any] | None, records: list[dict[str, Any]], saved: ReportSection
) -> list[str]:
    """Under a kept section: the results of the runs stored now, recomputed from their records (reruns of the
    section's own runs beside it show whether they reproduce; new runs are named)."""
    if not records or not manifest:
        return []
    module = EXPERIMENTS[experiment]
    summary = module.summarize(records, config_from_dict(experiment, manifest["config"]))
    new = [r["label"] for r in records if r["key"] not in saved.runs]
    return [
        f"Stored in the results now ({len(records)} run(s), {len(new)} of them not in this section"
        + (f": {', '.join(new)}" if new else "")
        + "), recomputed from their records; not part of this section's "
        "figure or verdicts:",
        "",
        *module.results(summary),
        "",
    ]


def _build_section(
    experiment: str,
    exp_dir: Path,
    manifest: dict[str, Any],
    records: list[dict[str, Any]],
    unfinished: list[str],
    out: Path,
) -> ReportSection:
    """The section of one experiment from its stored runs; writes its figure to ``out``."""
    module = EXPERIMENTS[experiment]
    config = config_from_dict(experiment, manifest["config"])
    summary = module.summarize(records, config)
    figure = save_figure(module.plot, records, summary, config, out / f"{experiment}.png")
    below = scale_differences(experiment, manifest["config"], manifest["paper_config"])
    # a long profile still running: claims whose runs are missing wait (pending), the others get their verdicts
    pending = (
        f"{len(records)} of {len(manifest['runs'])} runs stored so far"
        if len(records) < len(manifest["runs"])
        else None
    )
    claims = module.verdicts(summary)
    cpu_s, cpu_counted = _counted_cpu_time(records)
    return ReportSection(
        experiment=experiment,
        generated=time.strftime("%Y-%m-%d %H:%M"),
        source=str(exp_dir),
        runs=[r["key"] for r in records],
        planned=len(manifest["runs"]),
        lines=[
            f"## {module.TITLE}",
            "",
            *_scale_table(manifest, records, below, pending),
            "",
            *([*unfinished, ""] if unfinished else []),
            *module.results(summary),
            "",
            f"![{experiment}]({figure.name})",
            "",
            *_verdict_table(claims, below, pending),
        ],
        summary_rows=[f"| {v.claim} | {_outcome(v, below, pending, detail=False)} | {v.measured} |" for v in claims],
        compute_s=sum(map(compute_time_s, records)),
        span_s=run_span(records),
        cpu_s=cpu_s,
        cpu_counted=cpu_counted,
    )


def _scale_table(
    manifest: dict[str, Any], records: list[dict[str, Any]], below: list[str], pending: str | None
) -> list[str]:
    config, paper = manifest["config"], manifest["paper_config"]
    env = manifest["environment"]
    rows = ["| setting | ours | `paper` profile (the published scale) |", "|---|---|---|"]
    for key, value in config.items():
        rows.append(f"| {key} | {_fmt(key, value)} | {_fmt(key, paper.get(key))} |")
    machine = (
        f"{env['cpu']}"
        + (f" ({env['cpu_capability']})" if env.get("cpu_capability") else "")
        + f", {env['cores']} cores"
        + (f", {env['cuda']}" if env.get("cuda") else "")
    )
    compute = sum(map(compute_time_s, records))
    uncounted = sum("compute_time_s" not in r for r in records)
    rows += [
        f"| runs | {len(records)} of {len(manifest['runs'])} planned | |",
        f"| compute time (sum over runs) | {compute / 60:.1f} min"
        + (f" ({uncounted} run(s) stored before runs kept a clock: their last invocation only)" if uncounted else "")
        + " | |",
        f"| CPU time (sum over runs) | {_cpu_time(*_counted_cpu_time(records), len(records))} | |",
        f"| wall time (first run's start to last run's end) | {run_span(records) / 60:.1f} min | |",
        f"| wall time of the last invocation | {manifest['wall_time_s'] / 60:.1f} min "
        f"({manifest['executed']} run, {manifest['skipped']} cached; {env.get('jobs', 1)} job(s) x "
        f"{env['torch_threads']} thread(s)) | |"
        if manifest.get("finished_at")
        else f"| last invocation | in progress or stopped ({len(records)} of {len(manifest['runs'])} runs stored) | |",
        f"| machine | {machine}; torch {env['torch']} | |",
        f"| code | {env.get('git') or 'unknown'} ({_when(manifest)}) | |",
    ]
    scale = "at the published scale" if not below else f"**below the published scale** ({', '.join(below)})"
    if pending:
        scale += f"; {pending}" if below else f" ({pending})"
    same = [
        k for k, v in paper.items() if k not in get_experiment(manifest["experiment"]).NOT_SCALE and config.get(k) == v
    ]
    if below and same:  # e.g. "published length and data, width 1/8": what is as published, too
        scale += f"; as published: {', '.join(same)}"
    return [f"Scale: {scale}.", "", *rows]


def _counted_cpu_time(records: list[dict[str, Any]]) -> tuple[float, int]:
    """The CPU time summed over the runs that counted it from their start, and how many did."""
    counted = [t for t in map(cpu_time_s, records) if t is not None]
    return sum(counted), len(counted)


def _cpu_time(total_s: float, counted: int, runs: int) -> str:
    """The CPU time of the runs that counted it from their start (``counted`` of ``runs``), and how many did."""
    if not counted:
        return "not counted (runs begun before runs counted CPU time)"
    total = f"{total_s / 60:.1f} min"
    return (
        total
        if counted == runs
        else (f"{total} over {counted} of {runs} runs (the others began before runs counted CPU time)")
    )


def _when(manifest: dict[str, Any]) -> str:
    if manifest.get("finished_at"):
        return f"finished {manifest['finished_at']}"
    return f"started {manifest.get('started_at', '?')}; not finished: still running, or stopped before its end"


def run_span(records: list[dict[str, Any]]) -> float:
    """Seconds from the earliest run's start to the latest run's end: a run starts when its first invocation began
    (``started_at``; in records without it, its end minus its last invocation's wall time)."""
    ends = [parse_time_stamp(r["finished_at"]) for r in records]
    starts = [
        parse_time_stamp(r["started_at"]) if "started_at" in r else end - r["wall_time_s"]
        for end, r in zip(ends, records)
    ]
    return max(ends) - min(starts) if records else 0.0


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(_fmt(key, v) for v in value)
    if value is None:
        return "all" if key.endswith("subset") else "recipe default"
    return str(value)


def _verdict_table(claims: list[Verdict], below: list[str], pending: str | None) -> list[str]:
    if not claims:  # torchbop's own comparisons: nothing published to hold them against
        return ["No published claim: these numbers are torchbop's own comparison, with no verdict."]
    return [
        "| claim | criterion | ours | verdict |",
        "|---|---|---|---|",
        *(f"| {v.claim} | {v.criterion} | {v.measured} | {_outcome(v, below, pending)} |" for v in claims),
    ]


def _outcome(verdict: Verdict, below: list[str], pending: str | None = None, detail: bool = True) -> str:
    """``**outcome**``; below the published scale, the indication at this scale and which settings differ from the
    published ones (without ``detail``, only where they are at most two: then all else is as published, which the
    summary says too); a claim whose runs are still missing from an unfinished profile (``pending``: how many runs
    are stored so far) is pending."""
    if verdict.met is None and pending:
        return "**pending** (its runs are not all stored yet)"
    outcome = verdict.outcome(at_scale=not below)  # a claim with a measure has its runs: the others' wait is not scale
    if outcome != "not run at scale":
        return f"**{outcome}**"
    few = len(below) <= 2  # e.g. Figure 2 at "published length and data, width 1/8": say so even in the summary
    if not (detail or few):
        return f"**{outcome}** ({verdict.indication()})"
    named = "; ".join(below) + (", all else as published" if few else "")
    return f"**{outcome}** ({named}: {verdict.indication()})"
