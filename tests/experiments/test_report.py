"""The report: built from stored results only, with verdicts computed by stated criteria."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta

import pytest

from torchbop.experiments import approximation, arbitrary_lr, cifar10, hyperparameters
from torchbop.experiments.report import at_published_scale, build_report, scale_differences
from torchbop.experiments.runner import configure


def test_report_from_smoke_results(smoke_results, tmp_path):
    path = build_report("smoke", results_root=smoke_results, reports_root=tmp_path)
    text = path.read_text()
    assert path == tmp_path / "smoke" / "REPORT.md"
    for title in ("Table 1", "Figure 1", "Figure 2", "Figure 3"):
        assert f"## {title}" in text
    for name in ("approximation", "arbitrary-lr", "hyperparameters", "cifar10"):
        assert (tmp_path / "smoke" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"]({name}.png)" in text
    assert "0.9663" in text and "91.30%" in text  # published numbers beside ours
    assert "**reproduced**" in text  # the exact Theorem-1 check does not need the published scale
    assert "**not run at scale**" in text  # everything else ran below it
    # each claim below the published scale names the settings that make it so
    assert (
        "**not run at scale** (epochs 2 (published 500); width 0.0625 (published 1); subset 200 (published all)" in text
    )
    manifest = json.loads((smoke_results / "smoke" / "cifar10" / "manifest.json").read_text())
    env = manifest["environment"]
    # the machine is stated, with the vector instructions its kernels use (they decide how a run rounds)
    assert f"| machine | {env['cpu']} ({env['cpu_capability']}), {env['cores']} cores" in text
    assert env["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512", "NO AVX", "ZVECTOR", "VSX", "SVE256")
    # below the published scale, the scale line also names the settings that are as published
    same = [k for k, v in manifest["paper_config"].items() if k not in cifar10.NOT_SCALE and manifest["config"][k] == v]
    assert same and all(k not in ("epochs", "width", "subset") for k in same)
    scale_line = next(line for line in text.split("## Figure 3")[1].splitlines() if line.startswith("Scale:"))
    assert scale_line.endswith(f"; as published: {', '.join(same)}.")


def test_missing_experiments_are_marked_not_run(smoke_results, tmp_path):
    partial = tmp_path / "results"
    shutil.copytree(smoke_results / "smoke" / "cifar10", partial / "smoke" / "cifar10")
    text = build_report("smoke", results_root=partial, reports_root=tmp_path / "reports").read_text()
    assert text.count("not run at scale** (no results)") == 5  # every experiment but cifar10
    assert "## Figure 3" in text


def test_published_scale_detection():
    paper = {"seeds": 10, "epochs": 6, "datasets": ["mnist"], "subset": None}
    assert at_published_scale("approximation", dict(paper, datasets=["mnist", "cifar10"]), paper)
    assert not at_published_scale("approximation", dict(paper, subset=6000), paper)
    assert not at_published_scale("approximation", dict(paper, seeds=3), paper)
    assert scale_differences("approximation", dict(paper, seeds=3, precision="auto"), dict(paper, precision="32")) == [
        "seeds 3 (published 10)"
    ]  # the precision does not define the scale
    assert scale_differences(
        "hyperparameters",
        {"epochs": 100, "width": 0.125, "smooth_std": 1.0},
        {"epochs": 100, "width": 1.0, "smooth_std": 100.0},
    ) == ["width 0.125 (published 1)"]


def _table1(binary, real, retrained):
    def entry(mean, published):
        return {"mean": mean, "published_mean": published}

    return {
        "datasets": {
            "mnist": {
                "seeds": 10,
                "binary": entry(binary, 0.9663),
                "real": entry(real, 0.1039),
                "real_retrained": entry(retrained, 0.9807),
            }
        }
    }


def test_table1_verdicts_follow_the_numbers():
    close = approximation.verdicts(_table1(0.960, 0.100, 0.975))
    assert [v.outcome(at_scale=True) for v in close] == ["reproduced"] * 3
    assert [v.outcome(at_scale=False) for v in close] == ["not run at scale"] * 3
    far = approximation.verdicts(_table1(0.90, 0.50, 0.98))
    assert [v.outcome(at_scale=True) for v in far] == ["not reproduced", "not reproduced", "reproduced"]


def test_theorem_verdict_needs_a_control_that_fails():
    def summary(differing, control, flips=5):
        check = {"differing_total": differing, "steps": 10, "factor": 2**-7, "flips_total": flips}
        return {
            "theorem1": {"check": check, "control": dict(check, differing_total=control, factor=2**10)},
            "max_gaps": {},
        }

    assert arbitrary_lr.verdicts(summary(0, 3))[0].outcome(at_scale=False) == "reproduced"
    assert arbitrary_lr.verdicts(summary(4, 3))[0].outcome(at_scale=False) == "not reproduced"
    assert arbitrary_lr.verdicts(summary(0, 0))[0].outcome(at_scale=False) == "inconclusive"
    assert arbitrary_lr.verdicts(summary(0, 3, flips=0))[0].outcome(at_scale=False) == "inconclusive"


def test_cifar10_verdict_uses_the_protocols_published_number():
    row = {
        "protocol": "reproduction",
        "published": 0.8867,
        "test_acc": 0.88,
        "test_weights": "best",
        "epochs": 327,
        "flip_ratio_first_phase": 1e-3,
        "flip_ratio_last_phase": 1e-6,
    }
    accuracy, flips = cifar10.verdicts({"tables": {"figure3": [row]}})
    assert accuracy.met and flips.met
    (accuracy, _) = cifar10.verdicts({"tables": {"figure3": [dict(row, test_acc=0.85)]}})
    assert accuracy.outcome(at_scale=True) == "not reproduced"


def test_a_claim_of_an_unfinished_profile_is_pending_not_inconclusive():
    from torchbop.experiments.report import _outcome
    from torchbop.experiments.verdicts import Verdict

    missing = Verdict("2 and 3 behave identically", "-", "configurations missing", met=None)
    assert _outcome(missing, [], "7 of 13 runs stored so far").startswith("**pending**")
    assert _outcome(missing, []) == "**inconclusive**"  # every run stored: the check could not be evaluated
    met = Verdict("theorem", "0 differing", "0", met=True, scale_independent=True)
    assert _outcome(met, [], "7 of 13 runs stored so far") == "**reproduced**"  # its own runs are all there
    # a claim whose runs are stored at the published scale has its verdict while other runs (controls) still run
    failed = Verdict("2 and 3 behave identically", "gap <= 0.01", "0.27", met=False)
    assert _outcome(failed, [], "14 of 15 runs stored so far") == "**not reproduced**"
    assert _outcome(failed, ["width 0.125 (published 1)"], "14 of 15 runs stored so far").startswith(
        "**not run at scale** (width 0.125 (published 1), all else as published: "
    )
    # the summary names one or two departures (Figure 2 at the published length, width 1/8), not a long list
    assert _outcome(failed, ["width 0.125 (published 1)"], detail=False) == (
        "**not run at scale** (width 0.125 (published 1), all else as published: criterion not met at this scale)"
    )
    many = ["epochs 4 (published 500)", "width 0.125 (published 1)", "subset 5000 (published all)"]
    assert _outcome(failed, many, detail=False) == "**not run at scale** (criterion not met at this scale)"
    assert _outcome(failed, many).startswith("**not run at scale** (epochs 4 (published 500); width")


def test_the_runs_not_stored_yet_are_listed_with_their_progress(tmp_path):
    import torch

    from torchbop.experiments.progress import progress_table, runs_in_progress
    from torchbop.training.checkpoints import FORMAT
    from torchbop.training.history import History

    manifest = {
        "runs": [
            {"label": "done", "key": "k1"},
            {"label": "training", "key": "k2"},
            {"label": "waiting", "key": "k3"},
            {"label": "corrupt", "key": "k4"},
        ]
    }
    history = History()
    history.epochs = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.625}]
    folder = tmp_path / "runs" / "k2" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(
        {"format": FORMAT, "config": {"epochs": 100}, "observers": {"History": history.state_dict()}},
        folder / "last.ckpt",
    )
    (tmp_path / "runs" / "k4" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "k4" / "checkpoints" / "last.ckpt").write_bytes(b"truncated")
    (tmp_path / "runs" / "k2" / "elapsed.json").write_text('{"elapsed_s": 750.0, "started_at": "x"}')  # its clock
    rows = runs_in_progress(tmp_path, manifest, [{"key": "k1"}])
    assert [r["label"] for r in rows] == ["training", "waiting", "corrupt"]
    assert (rows[0]["epochs_done"], rows[0]["epochs"], rows[0]["val_acc"]) == (2, 100, 0.625)
    assert rows[1]["epochs_done"] == rows[2]["epochs_done"] == 0
    lines = progress_table(rows)
    assert "| training | training: 2 of 100 epochs | 0.6250 | 12.5 min | 612.5 min |" in lines  # 6.25 min an epoch
    assert "| waiting | not started (or no epoch finished) | - | - | - |" in lines
    assert progress_table([]) == []


def test_figure1_training_accuracy_gaps_and_test_noise():
    """The full-length control's evidence: training-accuracy gaps between configurations, and how much each test
    curve moves from epoch to epoch."""

    def record(configuration, train, test):
        history = [{"epoch": i + 1, "train_acc": a, "val_acc": b} for i, (a, b) in enumerate(zip(train, test))]
        return {"params": {"kind": "figure", "configuration": configuration}, "result": {"history": history}}

    records = [
        record("2", [0.90, 0.95, 0.97], [0.97, 0.98, 0.97]),
        record("2b", [0.89, 0.94, 0.96], [0.90, 0.97, 0.80]),
        record("3", [0.89, 0.945, 0.96], [0.95, 0.85, 0.96]),
    ]
    summary = arbitrary_lr.summarize(records, configure("smoke", "arbitrary-lr"))
    assert summary["train_gaps"]["2-3"] == {
        "epochs": 3,
        "mean": pytest.approx(0.025 / 3),
        "max_abs": pytest.approx(0.01),
    }
    assert summary["train_gaps"]["2b-3"]["mean"] == pytest.approx(-0.005 / 3)
    assert summary["train_gaps"]["2b-3"]["max_abs"] == pytest.approx(0.005)
    assert summary["test_noise"] == {"2": pytest.approx(0.01), "2b": pytest.approx(0.12), "3": pytest.approx(0.105)}
    text = "\n".join(arbitrary_lr.results(summary))
    assert "| 2b vs 3 | 3 | -0.0017 | 0.0050 | 0.1200 / 0.1050 |" in text
    assert "| 2 vs 3 | 3 | +0.0083 | 0.0100 | 0.0100 / 0.1050 |" in text
    # the decomposition of 2 against 3, the pairs stored (3p is not): equal epochs and the largest test gap
    assert "| 2 vs 2b | batch norm's lr: 1 against 0.01 | 0 of 3 | 0.1700 |" in text
    assert "| 2 vs 3 | all three (Figure 1 as run) | 0 of 3 | 0.1300 |" in text
    assert "| 2b vs 3p |" not in text


def test_figure1_gaps_show_the_median_beside_the_largest():
    """One epoch's spike decides the largest gap; the median and the count of large gaps say whether it is typical."""

    def record(configuration, test):
        history = [{"epoch": i + 1, "train_acc": 0.9, "val_acc": v} for i, v in enumerate(test)]
        return {"params": {"kind": "figure", "configuration": configuration}, "result": {"history": history}}

    records = [record("1", [0.90, 0.92, 0.93, 0.94, 0.95]), record("4k", [0.91, 0.92, 0.70, 0.945, 0.96])]
    summary = arbitrary_lr.summarize(records, configure("smoke", "arbitrary-lr"))
    assert summary["max_gaps"]["1-4k"] == pytest.approx(0.23)
    assert summary["gap_spread"]["1-4k"] == {"epochs": 5, "median": pytest.approx(0.01), "above": 1}
    text = "\n".join(arbitrary_lr.results(summary))
    assert "| 1 vs 4k | 0.2300 | 0.0100 | 1 of 5 |" in text


def test_figure1_decomposition_counts_the_epochs_equal_to_the_last_bit():
    def record(configuration, flips):
        history = [
            {
                "epoch": i + 1,
                "train_acc": 0.9,
                "train_loss": 0.3,
                "val_acc": 0.95,
                "val_loss": 0.2,
                "flips": f,
                "rate": {"2b": 1.0, "3p": 2.0**-7}.get(configuration, 0.01),
            }
            for i, f in enumerate(flips)
        ]
        return {"params": {"kind": "figure", "configuration": configuration, "seed": 0}, "result": {"history": history}}

    records = [record("2b", [5, 6, 7, 8]), record("3p", [5, 6, 7, 9]), record("3", [5, 4, 7, 8])]
    summary = arbitrary_lr.summarize(records, configure("smoke", "arbitrary-lr"))
    assert summary["same_epochs"] == {
        "2b-3p": {"same": 3, "epochs": 4, "seeds": 1},
        "3p-3": {"same": 1, "epochs": 4, "seeds": 1},
    }
    text = "\n".join(arbitrary_lr.results(summary))
    assert (
        "| 2b vs 3p | clipping: 2b's latent weights are clipped at 1, 3p's (2^-7 times 2b's) never reach it | 3 of 4 "
        "| 0.0000 |" in text
    )
    assert "| 3p vs 3 | the factor: 2^-7 (exact in floating point) against 0.01 (rounds) | 1 of 4 | 0.0000 |" in text


def test_figure1_plot_without_configuration_3(tmp_path):
    """A profile part-way: the training-accuracy panel shows the curves until configuration 3 is stored."""
    from torchbop.experiments.plots import save_figure

    history = [{"epoch": i + 1, "train_acc": 0.5 + 0.1 * i, "val_acc": 0.6 + 0.1 * i} for i in range(3)]
    records = [{"params": {"kind": "figure", "configuration": c}, "result": {"history": history}} for c in ("1", "2")]
    config = configure("smoke", "arbitrary-lr")
    summary = arbitrary_lr.summarize(records, config)
    path = save_figure(arbitrary_lr.plot, records, summary, config, tmp_path / "figure.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_figure2_plot_names_the_curves_still_to_come():
    """A profile part-way: each panel lists the (gamma, tau) points not stored yet; no empty legend."""
    from matplotlib.figure import Figure

    config = configure("smoke", "hyperparameters")
    gamma, tau = max(config.gammas), config.fixed_threshold
    steps = {"pi_t": [-5.0] * 20, "train_acc": [0.3] * 20}
    records = [
        {
            "params": {"gamma": gamma, "threshold": tau},
            "result": {"steps": steps, "history": [{"steps": 10, "val_acc": 0.25}, {"steps": 10, "val_acc": 0.3}]},
        }
    ]
    fig = Figure()
    hyperparameters.plot(fig, records, {}, config)
    (gamma_top, tau_top), (gamma_bottom, tau_bottom) = fig.axes[:2], fig.axes[2:]
    gamma_notes, tau_notes = [t.get_text() for t in gamma_top.texts], [t.get_text() for t in tau_top.texts]
    others = [f"gamma {g:g}" for g in sorted(config.gammas, reverse=True) if g != gamma]
    assert gamma_notes == [f"not stored yet: {', '.join(others)}"]
    assert tau_notes == [f"not stored yet: {', '.join(f'tau {t:g}' for t in sorted(config.thresholds))}"]
    assert gamma_top.get_legend() is not None and tau_top.get_legend() is None and tau_bottom.get_legend() is None
    assert len(gamma_bottom.lines) == 2  # training curve and validation points


def test_compute_time_counts_every_invocation_of_a_resumed_run(smoke_results, tmp_path):
    """A run resumed after a kill: its record's ``compute_time_s`` (all invocations) and ``started_at`` (the first
    one's start), not the last invocation's ``wall_time_s``, make the report's times."""
    results = tmp_path / "results"
    shutil.copytree(smoke_results / "smoke" / "cifar10", results / "smoke" / "cifar10")
    (path,) = (results / "smoke" / "cifar10" / "runs").glob("*.json")
    record = json.loads(path.read_text())
    finished = datetime.strptime(record["finished_at"], "%Y-%m-%d %H:%M:%S %z")
    record.update(
        compute_time_s=3000.0 + record["wall_time_s"],
        started_at=(finished - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S %z"),
    )
    path.write_text(json.dumps(record))
    text = build_report("smoke", results_root=results, reports_root=tmp_path / "reports").read_text()
    assert f"| compute time (sum over runs) | {record['compute_time_s'] / 60:.1f} min |" in text
    assert "| wall time (first run's start to last run's end) | 120.0 min |" in text
    assert record["cpu_time_s"] is not None and record["cpu_time_s"] > 0  # this run counted its CPU time
    assert f"| CPU time (sum over runs) | {record['cpu_time_s'] / 60:.1f} min |" in text


def test_cpu_time_of_runs_begun_before_it_was_counted_is_not_guessed(smoke_results, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(smoke_results / "smoke" / "approximation", results / "smoke" / "approximation")
    paths = sorted((results / "smoke" / "approximation" / "runs").glob("*.json"))
    assert len(paths) >= 2
    records = [json.loads(p.read_text()) for p in paths]
    records[0]["cpu_time_s"] = None
    paths[0].write_text(json.dumps(records[0]))
    counted = sum(r["cpu_time_s"] for r in records[1:])
    text = build_report("smoke", results_root=results, reports_root=tmp_path / "reports").read_text()
    assert (
        f"| CPU time (sum over runs) | {counted / 60:.1f} min over {len(paths) - 1} of {len(paths)} runs (the "
        "others began before runs counted CPU time) |"
    ) in text
    for record in records:
        record.pop("cpu_time_s")  # records stored before runs counted CPU time
    for path, record in zip(paths, records):
        path.write_text(json.dumps(record))
    text = build_report("smoke", results_root=results, reports_root=tmp_path / "reports").read_text()
    assert "| CPU time (sum over runs) | not counted (runs begun before runs counted CPU time) |" in text


def test_an_experiment_planned_but_without_a_stored_run_is_pending(smoke_results, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(smoke_results / "smoke" / "cifar10", results / "smoke" / "cifar10")
    planned = results / "smoke" / "hyperparameters"
    (planned / "runs").mkdir(parents=True)
    manifest = json.loads((smoke_results / "smoke" / "hyperparameters" / "manifest.json").read_text())
    (planned / "manifest.json").write_text(json.dumps({**manifest, "finished_at": None}))  # its first invocation runs
    text = build_report("smoke", results_root=results, reports_root=tmp_path / "reports").read_text()
    runs = len(manifest["runs"])
    assert (
        f"| Figure 2: Bop's hyperparameters gamma and tau (paper 5.1, report 3.2) | **pending** (0 of {runs} runs "
        "stored) | - |" in text
    )
    # approximation, arbitrary-lr and torchbop's own two comparisons: nothing planned
    assert text.count("not run at scale** (no results)") == 4
    section = text.split("## Figure 2")[1].split("## Figure 3")[0]
    assert "not finished: still running" in section
    assert section.count("| not started (or no epoch finished) | - | - | - |") == runs


def test_figure2_claims_wait_for_every_planned_point():
    """One stored run of five: a single point cannot be "strictly decreasing"; the claims have no verdict yet."""
    from torchbop.experiments import hyperparameters

    config = configure("smoke", "hyperparameters")
    sweeps = {
        "gamma": [(g, t) for s, g, t in hyperparameters.grid(config) if s == "gamma"],
        "tau": [(g, t) for s, g, t in hyperparameters.grid(config) if s == "tau"],
    }
    row = {"gamma": 1e-2, "threshold": 1e-6, "mean_pi_t": -5.0, "train_acc_noise": 0.05}
    claims = hyperparameters.verdicts({"sweeps": sweeps, "tables": {"figure2": [row]}})
    assert len(claims) == 3 and all(v.met is None for v in claims)
    rows = [
        dict(row, gamma=g, threshold=t, mean_pi_t=-5.0 - 2 * i - 10 * t * 1e5, train_acc_noise=0.05 - 0.01 * i)
        for i, (g, t) in enumerate(sorted({(g, t) for _, g, t in hyperparameters.grid(config)}, reverse=True))
    ]
    claims = hyperparameters.verdicts({"sweeps": sweeps, "tables": {"figure2": rows}})
    assert [v.met is not None for v in claims] == [True, True, True]  # every point stored: each claim is decided


def _section_text(text, title, next_title=None):
    section = text.split(f"## {title}")[1]
    return section.split(f"## {next_title}")[0] if next_title else section


def test_a_section_whose_runs_are_gone_is_kept_with_its_figure(smoke_results, tmp_path):
    """Results lost after a report was built: the next report keeps each section (and its figure and summary rows)
    whose runs are not all stored any more, says so, and rebuilds only on request."""
    reports = tmp_path / "reports"
    full = build_report("smoke", results_root=smoke_results, reports_root=reports).read_text()
    figure = (reports / "smoke" / "hyperparameters.png").read_bytes()
    saved = json.loads((reports / "smoke" / "sections" / "hyperparameters.json").read_text())
    assert len(saved["runs"]) == saved["planned"] > 1 and saved["lines"][0].startswith("## Figure 2")

    results = tmp_path / "results"  # only cifar10 survives, and hyperparameters lost one run
    shutil.copytree(smoke_results / "smoke" / "cifar10", results / "smoke" / "cifar10")
    shutil.copytree(smoke_results / "smoke" / "hyperparameters", results / "smoke" / "hyperparameters")
    (results / "smoke" / "hyperparameters" / "runs" / f"{saved['runs'][0]}.json").unlink()
    (reports / "smoke" / "hyperparameters.png").write_bytes(figure + b"unchanged")  # a rebuild would overwrite it
    logged = []
    text = build_report(
        "smoke", results_root=results, reports_root=reports, rebuild=False, log=logged.append
    ).read_text()
    assert [line.split(" section")[0] for line in logged] == [
        "kept the approximation",
        "kept the arbitrary-lr",
        "kept the hyperparameters",
        "kept the architectures",
        "kept the optimizers",
    ]
    assert f"holds {saved['planned'] - 1} of the {saved['planned']} runs it was built from" in logged[2]
    assert (reports / "smoke" / "hyperparameters.png").read_bytes() == figure + b"unchanged"
    for title, after in (("Table 1", "Figure 1"), ("Figure 1", "Figure 2"), ("Figure 2", "Figure 3")):
        kept, before = _section_text(text, title, after), _section_text(full, title, after)
        heading, rest = before.split("\n\n", 1)
        assert kept.startswith(f"{heading}\n\n*Kept from the report generated ") and kept.endswith(rest)
    kept = _section_text(text, "Figure 2", "Figure 3")
    assert f"holds {saved['planned'] - 1} of those runs now.*\n\nRuns not stored yet" in kept  # and where they stand
    assert "*Kept from" not in _section_text(text, "Figure 3", "Bi-Real Net-18")  # its runs are all there: rebuilt
    assert (
        text.split("## Verdicts at a glance")[1].split("Time:")[0]
        == full.split("## Verdicts at a glance")[1].split("Time:")[0]
    )  # the summary keeps the kept sections' rows
    assert text.split("Time: ")[1].split("\n")[0] == full.split("Time: ")[1].split("\n")[0]

    text = build_report(
        "smoke", results_root=results, reports_root=reports, rebuild=True, log=logged.append
    ).read_text()
    assert "*Kept from" not in text
    assert text.count("not run at scale** (no results)") == 4  # approximation, arbitrary-lr and the two comparisons
    assert "**pending** (its runs are not all stored yet)" in _section_text(text, "Figure 2", "Figure 3")
    assert (
        len(json.loads((reports / "smoke" / "sections" / "hyperparameters.json").read_text())["runs"])
        == saved["planned"] - 1
    )  # the rebuilt section now records what it was built from


def test_an_unreadable_saved_section_stops_the_report_before_it_writes(smoke_results, tmp_path):
    from torchbop.errors import UserError

    reports = tmp_path / "reports"
    path = build_report("smoke", results_root=smoke_results, reports_root=reports)
    before = path.read_text()
    section = reports / "smoke" / "sections" / "cifar10.json"
    section.write_text(section.read_text()[:100])  # truncated
    with pytest.raises(UserError, match=r"sections/cifar10\.json: not a report section .* Restore it with git"):
        build_report("smoke", results_root=smoke_results, reports_root=reports)
    assert path.read_text() == before


def test_the_runs_stored_now_are_shown_beneath_a_kept_section(smoke_results, tmp_path):
    """A section built from runs A-D; later the results hold B-E (E new, A lost): the section is kept, and the
    results of B-E are shown under it, E named as new, marked as not part of its verdicts."""
    results, reports = tmp_path / "results", tmp_path / "reports"
    shutil.copytree(smoke_results / "smoke" / "hyperparameters", results / "smoke" / "hyperparameters")
    paths = sorted((results / "smoke" / "hyperparameters" / "runs").glob("*.json"))
    held_back = json.loads(paths[-1].read_text())
    paths[-1].unlink()
    build_report("smoke", results_root=results, reports_root=reports)
    paths[0].unlink()
    paths[-1].write_text(json.dumps(held_back))
    text = build_report("smoke", results_root=results, reports_root=reports, log=lambda _: None).read_text()
    section = _section_text(text, "Figure 2", "Figure 3")
    now = len(paths) - 1
    assert (
        f"Stored in the results now ({now} run(s), 1 of them not in this section: {held_back['label']}), "
        "recomputed from their records; not part of this section's figure or verdicts:"
    ) in section
    table = section.split("Stored in the results now")[1].split("\n\n")[1].splitlines()
    points = {
        (json.loads(p.read_text())["params"]["gamma"], json.loads(p.read_text())["params"]["threshold"])
        for p in paths[1:]
    }
    assert len(table) == 2 + len(points)  # header, rule, one row per (gamma, tau) stored now
    gamma, tau = held_back["params"]["gamma"], held_back["params"]["threshold"]
    assert any(row.startswith(f"| {gamma:g} | {tau:g} | ") for row in table[2:])
