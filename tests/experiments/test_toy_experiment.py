"""Adding an experiment is one module and one registry line: the toy experiment of ``toy_experiment.py`` is
registered, planned, run at the smoke scale from the command line and reported, with no other file changed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from torchbop.cli import main
from torchbop.experiments.registry import EXPERIMENTS
from torchbop.experiments.spec import Experiment


@pytest.fixture
def toy(monkeypatch):
    path = Path(__file__).with_name("toy_experiment.py")
    spec = importlib.util.spec_from_file_location("toy_experiment", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "toy_experiment", module)
    spec.loader.exec_module(module)
    monkeypatch.setitem(EXPERIMENTS, "toy", module)  # the one registry line
    return module


def test_toy_is_an_experiment(toy):
    assert isinstance(toy, Experiment)


def test_toy_experiment_is_planned_run_and_reported(toy, tmp_path, capsys):
    results, reports = tmp_path / "results", tmp_path / "reports"
    assert main(["experiment", "toy", "--profile", "smoke", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == {"seeds": 2, "steps": 8, "thresholds": [0.0, 0.001, 0.1]}

    argv = ["experiment", "toy", "--profile", "smoke", "--results-dir", str(results), "--quiet"]
    assert main(argv) == 0
    out = results / "smoke" / "toy"
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["executed"], manifest["skipped"], manifest["failed"]) == (6, 0, [])
    assert [run["label"] for run in manifest["runs"]] == [
        f"tau{t}-seed{s}" for t in ("0", "0.001", "0.1") for s in (0, 1)
    ]
    assert (out / "figure.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "toy.csv").read_text().startswith("threshold,mean_flips,seeds")
    assert main(argv) == 0  # a second invocation runs nothing
    assert json.loads((out / "manifest.json").read_text())["skipped"] == 6

    assert main(["report", "--profile", "smoke", "--results-dir", str(results), "--out", str(reports)]) == 0
    text = (reports / "smoke" / "REPORT.md").read_text()
    assert f"## {toy.TITLE}" in text and "![toy](toy.png)" in text
    assert "| tau | mean flips | seeds |" in text  # the module's results table
    summary = json.loads((out / "summary.json").read_text())
    (verdict,) = toy.verdicts(summary)
    departures = "seeds 2 (published 3); steps 8 (published 50), all else as published"
    assert f"| {toy.TITLE} | **not run at scale** ({departures}: {verdict.indication()}) | {verdict.measured} |" in text
    assert (reports / "smoke" / "toy.png").is_file()
    # every other registered experiment (the paper's and torchbop's own) has no results here
    assert text.count("not run at scale** (no results)") == len(EXPERIMENTS) - 1, text


def test_a_report_made_while_an_invocation_runs_or_after_it_was_killed(toy, tmp_path, monkeypatch):
    # the manifest is written when the invocation starts: a report of a long profile shows the runs stored so far,
    # says the invocation has not finished, and gives no verdict from part of the runs
    results, reports = tmp_path / "results", tmp_path / "reports"
    execute, calls = toy.execute, []

    def killed_at_the_third_run(params, ctx):
        calls.append(params)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return execute(params, ctx)

    monkeypatch.setattr(toy, "execute", killed_at_the_third_run)
    argv = ["experiment", "toy", "--profile", "smoke", "--results-dir", str(results), "--quiet"]
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        main(argv)
    manifest = json.loads((results / "smoke" / "toy" / "manifest.json").read_text())
    assert manifest["finished_at"] is None and len(manifest["runs"]) == 6 and manifest["started_at"]
    assert main(["report", "--profile", "smoke", "--results-dir", str(results), "--out", str(reports)]) == 0
    text = (reports / "smoke" / "REPORT.md").read_text()
    assert "2 of 6 runs stored so far" in text and "not finished" in text

    monkeypatch.setattr(toy, "execute", execute)
    assert main(argv) == 0  # the next invocation runs the other four and finishes
    manifest = json.loads((results / "smoke" / "toy" / "manifest.json").read_text())
    assert manifest["finished_at"] and (manifest["executed"], manifest["skipped"]) == (4, 2)
    assert main(["report", "--profile", "smoke", "--results-dir", str(results), "--out", str(reports)]) == 0
    assert "runs stored so far" not in (reports / "smoke" / "REPORT.md").read_text()
