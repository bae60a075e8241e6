"""Each experiment at the smoke scale: what it stores and the properties its numbers must have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchbop.experiments import arbitrary_lr
from torchbop.experiments.store import load_manifest, load_records


def stored(results: Path, name: str):
    out = results / "smoke" / name
    manifest = load_manifest(out)
    return manifest, load_records(out, manifest), json.loads((out / "summary.json").read_text()), out


def test_every_experiment_writes_manifest_summary_csv_and_figure(smoke_results):
    for name in ("approximation", "arbitrary-lr", "hyperparameters", "cifar10"):
        manifest, records, _, out = stored(smoke_results, name)
        assert len(records) == len(manifest["runs"]) > 0
        assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert list(out.glob("*.csv"))
        assert manifest["environment"]["torch"]
        for record in records:  # every record carries its full configuration
            assert record["params"] and record["key"] and record["wall_time_s"] > 0


def test_approximation(smoke_results):
    manifest, records, summary, out = stored(smoke_results, "approximation")
    assert len(records) == manifest["config"]["seeds"]
    for record in records:
        result = record["result"]
        for name in ("binary", "real", "real_retrained"):
            assert 0.0 <= result[name] <= 1.0
        assert result["test_images"] == 256
        assert record["params"]["train"]["mode"] == "latent" and record["params"]["train"]["optimizer"] == "adam"
        assert record["params"]["train"]["batch_size"] == 32
        assert 0.0 <= result["latent_at_bound"] <= 1.0
    entry = summary["datasets"]["mnist"]
    assert entry["binary"]["published_mean"] == 0.9663
    assert entry["binary"]["mean"] == pytest.approx(sum(entry["binary"]["values"]) / len(records))
    assert "published_mean" in (out / "table1.csv").read_text()


def test_arbitrary_lr(smoke_results):
    _, records, summary, _ = stored(smoke_results, "arbitrary-lr")
    figure = [r for r in records if r["params"]["kind"] == "figure"]
    assert sorted({r["params"]["configuration"] for r in figure}) == ["1", "2", "2b", "3", "4", "4k", "5"]
    lrs = {r["params"]["configuration"]: r["params"]["train"]["lr"] for r in figure}
    assert lrs == {"1": 0.01, "2": 1.0, "2b": 1.0, "3": 0.01, "4": 0.01, "4k": 0.01, "5": 0.01}
    # the control 2b: configuration 2 with batch norm at configuration 3's lr; the paper's five keep one lr
    other_lrs = {r["params"]["configuration"]: r["params"]["train"].get("other_lr") for r in figure}
    assert other_lrs == {"1": None, "2": None, "2b": 0.01, "3": None, "4": None, "4k": None, "5": None}
    assert summary["max_gaps"]["2b-3"] is not None and summary["max_gaps"]["1-4k"] is not None
    result = {r["params"]["configuration"]: r["result"] for r in figure}
    assert result["3"]["initial_latent_abs_mean"] == pytest.approx(0.01 * result["2"]["initial_latent_abs_mean"],
                                                                   rel=1e-5)
    # the control 4k: Keras's random_uniform range, U(-0.05, 0.05), against 4's U(-1, 1): mean abs 0.025 and 0.5
    assert result["4k"]["initial_latent_abs_mean"] == pytest.approx(0.025, rel=0.05)
    assert result["4"]["initial_latent_abs_mean"] == pytest.approx(0.5, rel=0.05)
    check, control = summary["theorem1"]["check"], summary["theorem1"]["control"]
    assert check["flips_total"] > 0
    assert check["differing_total"] == 0
    assert control["differing_total"] > 0
    # the ablation of configurations 2 and 3: Theorem 1's setting at lr 1 stays equal; scaling batch norm's lr breaks it
    ablation = summary["ablation"]
    assert list(ablation) == list(arbitrary_lr.ABLATION)
    assert ablation["power-of-two factor only (Theorem 1's setting)"]["first_difference_step"] is None
    assert ablation["batch norm's lr scaled too"]["differing_at_end"] > 0
    assert [row["change"] for row in summary["tables"]["ablation"]] == list(arbitrary_lr.ABLATION)


def test_hyperparameters(smoke_results):
    manifest, records, summary, _ = stored(smoke_results, "hyperparameters")
    assert len(records) == 5  # six grid points, (1e-3, 1e-6) shared by the two sweeps
    for record in records:
        steps = record["result"]["steps"]
        n = sum(e["steps"] for e in record["result"]["history"])
        assert len(steps["pi_t"]) == len(steps["train_acc"]) == n > 0
        assert all(-21.0 < p <= 0.0 for p in steps["pi_t"])
    rows = {(r["gamma"], r["threshold"]): r["mean_pi_t"] for r in summary["tables"]["figure2"]}
    # Bop flips more with a larger gamma and with a smaller tau: visible from the first steps
    assert rows[(1e-2, 1e-6)] > rows[(1e-3, 1e-6)] > rows[(1e-4, 1e-6)]
    assert rows[(1e-3, 0.0)] > rows[(1e-3, 1e-6)] > rows[(1e-3, 1e-5)]


def test_cifar10(smoke_results):
    _, records, summary, _ = stored(smoke_results, "cifar10")
    (record,) = records
    result = record["result"]
    assert result["protocol"] == "original" and result["test_weights"] == "last"
    assert [row["rate"] for row in result["history"]] == pytest.approx([1e-4, 1e-5])  # decayed x0.1 each epoch
    assert all(row["flip_ratio"] >= 0 for row in result["history"])
    assert record["params"]["train"]["batch_size"] == 50 and record["params"]["train"]["augment"] is True
    assert summary["tables"]["figure3"][0]["published"] == 0.913
