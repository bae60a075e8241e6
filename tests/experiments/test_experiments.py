"""Each experiment at the smoke scale: what it stores and the properties its numbers must have."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from torchbop.experiments import arbitrary_lr, optimizers
from torchbop.experiments.store import load_manifest, load_records


def stored(results: Path, name: str):
    out = results / "smoke" / name
    manifest = load_manifest(out)
    return manifest, load_records(out, manifest), json.loads((out / "summary.json").read_text()), out


def test_every_experiment_writes_manifest_summary_csv_and_figure(smoke_results):
    for name in ("approximation", "arbitrary-lr", "hyperparameters", "cifar10", "architectures", "optimizers"):
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
    assert sorted({r["params"]["configuration"] for r in figure}) == ["1", "2", "2b", "3", "3p", "4", "4k", "5"]
    lrs = {r["params"]["configuration"]: r["params"]["train"]["lr"] for r in figure}
    assert lrs == {"1": 0.01, "2": 1.0, "2b": 1.0, "3": 0.01, "3p": 2.0**-7, "4": 0.01, "4k": 0.01, "5": 0.01}
    # the controls 2b (configuration 2 with batch norm at configuration 3's lr) and 3p (2b scaled by 2^-7) keep
    # batch norm at 0.01; the paper's five train everything at one lr
    other_lrs = {r["params"]["configuration"]: r["params"]["train"].get("other_lr") for r in figure}
    assert other_lrs == {"1": None, "2": None, "2b": 0.01, "3": None, "3p": 0.01, "4": None, "4k": None, "5": None}
    assert summary["max_gaps"]["2b-3"] is not None and summary["max_gaps"]["1-4k"] is not None
    # Theorem 1 through the whole training pipeline: 3p repeats 2b to the last bit while no latent weight of 2b
    # reaches the clip (none does in the smoke run's few steps)
    history = {r["params"]["configuration"]: r["result"]["history"] for r in figure}
    assert history["2b"][-1]["latent_at_clip"] == 0.0 and history["2b"][-1]["flips"] > 0
    metrics = arbitrary_lr.EXACT_METRICS
    assert [[e[k] for k in metrics] for e in history["3p"]] == [[e[k] for k in metrics] for e in history["2b"]]
    assert summary["same_epochs"]["2b-3p"] == {"same": 1, "epochs": 1, "seeds": 1}
    result = {r["params"]["configuration"]: r["result"] for r in figure}
    assert result["3"]["initial_latent_abs_mean"] == pytest.approx(
        0.01 * result["2"]["initial_latent_abs_mean"], rel=1e-5
    )
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


def test_same_epochs_counts_leading_exact_agreement_over_every_seed():
    epoch = {"train_acc": 0.5, "train_loss": 1.0, "val_acc": 0.5, "val_loss": 1.0, "flips": 10, "rate": 1.0}
    other = {**epoch, "rate": 2.0**-7, "latent_at_clip": 0.5}  # differs only where it must
    later = {**epoch, "flips": 11}
    histories = {
        ("2b", 0): [epoch, epoch, epoch],
        ("3p", 0): [other, other, later],
        ("2b", 1): [epoch, epoch, epoch],
        ("3p", 1): [other, {**epoch, "val_acc": 0.5 + 1e-9}, epoch],
    }
    assert arbitrary_lr._same_epochs(histories, "2b", "3p") == {"same": 1, "epochs": 3, "seeds": 2}
    del histories["3p", 1]
    assert arbitrary_lr._same_epochs(histories, "2b", "3p") == {"same": 2, "epochs": 3, "seeds": 1}
    assert arbitrary_lr._same_epochs(histories, "2b", "4k") is None
    unrecorded = {k: v for k, v in epoch.items() if k != "flips"}  # a metric neither run recorded proves nothing
    assert arbitrary_lr._same_epochs({("a", 0): [unrecorded], ("b", 0): [unrecorded]}, "a", "b")["same"] == 0


def test_architectures(smoke_results):
    _, records, summary, _ = stored(smoke_results, "architectures")
    by_optimizer = {r["params"]["optimizer"]: r for r in records}
    assert sorted(by_optimizer) == ["bop", "latent"]
    bop, latent = by_optimizer["bop"]["params"]["train"], by_optimizer["latent"]["params"]["train"]
    assert (bop["mode"], bop["optimizer"], bop["model"]) == ("bop", "bop", "bireal_net18")
    assert (latent["mode"], latent["optimizer"], latent["decay_schedule"]) == ("latent", "adam", "linear")
    # the same budget: network, data, batch size, epochs, augmentation
    for key in ("model", "model_kwargs", "batch_size", "epochs", "augment", "dataset"):
        assert bop[key] == latent[key], key
    assert bop["model_kwargs"]["stem"] == "cifar10"
    for record in records:
        history = record["result"]["history"]
        assert len(history) == record["result"]["epochs"] == 1
        assert history[0]["flips"] >= 0 and 0.0 <= record["result"]["test_acc"] <= 1.0
    assert by_optimizer["latent"]["result"]["history"][0]["rate"] == pytest.approx(1.25e-3)  # epoch 0: factor 1
    rows = {r["optimizer"]: r for r in summary["tables"]["optimizers"]}
    assert rows["bop"]["seeds"] == rows["latent"]["seeds"] == 1 and rows["bop"]["ms_per_step_median"] > 0
    assert rows["bop"]["test_acc_mean"] == by_optimizer["bop"]["result"]["test_acc"]


def test_optimizers(smoke_results):
    _, records, summary, _ = stored(smoke_results, "optimizers")
    runs = {(r["params"]["network"], r["params"]["optimizer"]): r for r in records}
    assert sorted(runs) == sorted(
        (n, o) for n in ("mnist_bnn", "binarynet") for o in ("bop", "bop2nd", "bop2nd_unbiased", "cema", "latent")
    )
    for (network, optimizer), record in runs.items():
        params, train, result = record["params"], record["params"]["train"], record["result"]
        assert params["point"] == 0 and params["hyper"] == optimizers.GRIDS[optimizer][0]  # smoke: the first point
        for field, value in params["hyper"].items():  # the grid point is what the run trained with
            assert train[field] == value, (network, optimizer, field)
        # the shared protocol: schedule shape, recalibration, held-out split, last weights
        assert (train["decay_schedule"], train["recalibrate_bn"], train["protocol"], train["test_weights"]) == (
            "linear",
            "eval",
            "reproduction",
            "last",
        )
        assert "gamma_decay_every" not in train or train["gamma_decay_every"] is None
        assert result["train_images"] + result["val_images"] == params["subset"]
        assert result["test_images"] == params["test_subset"]
        assert len(result["history"]) == result["epochs"] == 1 and result["history"][0]["flips"] >= 0
        assert 0.0 <= result["val_acc"] <= 1.0 and 0.0 <= result["test_acc"] <= 1.0
    for network in ("mnist_bnn", "binarynet"):  # the same budget for every optimizer of a network
        trains = [runs[network, o]["params"]["train"] for o in optimizers.GRIDS]
        for key in ("model", "model_kwargs", "batch_size", "epochs", "augment", "dataset", "seed", "val_fraction"):
            assert len({json.dumps(t[key], sort_keys=True) for t in trains}) == 1, (network, key)
    assert runs["binarynet", "bop"]["params"]["train"]["augment"] is True
    assert runs["binarynet", "bop"]["params"]["train"]["model_kwargs"]["width"] == 0.0625
    unbiased = {o: runs["mnist_bnn", o]["params"]["train"] for o in ("bop2nd", "bop2nd_unbiased")}
    assert unbiased["bop2nd"]["optimizer"] == unbiased["bop2nd_unbiased"]["optimizer"] == "bop2nd"
    assert not unbiased["bop2nd"].get("unbiased", False) and unbiased["bop2nd_unbiased"]["unbiased"] is True
    assert runs["mnist_bnn", "latent"]["params"]["train"]["mode"] == "latent"
    # epoch 0 of the linear schedule: factor 1 on the rate the group keeps as "lr" (CEMA: alpha; latent: Adam's lr)
    assert runs["mnist_bnn", "cema"]["result"]["history"][0]["rate"] == pytest.approx(1e-2)
    assert runs["binarynet", "latent"]["result"]["history"][0]["rate"] == pytest.approx(1.25e-3)
    points = summary["tables"]["points"]
    assert len(points) == 10 and all(p["chosen"] and p["seeds"] == 1 for p in points)
    for p in points:
        assert p["test_acc_mean"] == runs[p["network"], p["optimizer"]]["result"]["test_acc"]
        assert p["ms_per_step_median"] > 0
    assert optimizers.verdicts(summary) == []
    text = "\n".join(optimizers.results(summary))
    assert "**mnist_bnn**" in text and "**binarynet**" in text and "gamma 0.001, alpha 0.01" in text


def _fake_record(point: int, seed: int, val_acc: float, test_acc: float) -> dict:
    return {
        "params": {
            "network": "mnist_bnn",
            "optimizer": "bop",
            "point": point,
            "seed": seed,
            "hyper": dict(optimizers.GRIDS["bop"][point]),
            "train": {"batch_size": 100},
        },
        "result": {
            "val_acc": val_acc,
            "test_acc": test_acc,
            "epochs": 2,
            "train_images_per_s": 1000.0,
            "history": [{"flips": 10}, {"flips": 4}],
            "train_images": 90,
            "val_images": 10,
            "test_images": 50,
        },
    }


def test_optimizers_chooses_the_point_of_highest_mean_validation_accuracy_not_test_accuracy():
    records = [
        _fake_record(0, 0, 0.90, 0.99),
        _fake_record(0, 1, 0.92, 0.99),
        _fake_record(1, 0, 0.95, 0.80),
        _fake_record(1, 1, 0.93, 0.82),
    ]
    points = optimizers.summarize(records, optimizers.CONFIGS["smoke"])["tables"]["points"]
    chosen = [p for p in points if p["chosen"]]
    assert [p["point"] for p in chosen] == [1] and len(points) == 2
    assert chosen[0]["test_acc_mean"] == pytest.approx(0.81)  # chosen by validation, though its test is lower
    assert chosen[0]["test_acc_std"] == pytest.approx(0.02**0.5 / 10)  # sample std of 0.80, 0.82
    assert chosen[0]["ms_per_step_median"] == pytest.approx(100.0)
    assert (chosen[0]["flips_first_epoch_mean"], chosen[0]["flips_last_epoch_mean"]) == (10, 4)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"optimizers": ("adamw",)}, "Invalid optimizers"),
        ({"networks": ()}, "Invalid networks"),
        ({"grid_points": 3}, "Invalid grid_points value: 3"),
    ],
)
def test_optimizers_plan_rejects_unknown_names_and_grid_sizes(changes, match):
    with pytest.raises(ValueError, match=match):
        optimizers.plan(dataclasses.replace(optimizers.CONFIGS["smoke"], **changes))
