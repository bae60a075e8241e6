"""The runner: settings and overrides, run keys, caching (a second invocation skips), parallel workers, storage."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from torchbop.experiments import EXPERIMENTS, configure, run_experiment
from torchbop.experiments.profiles import PROFILES
from torchbop.experiments.runner import config_from_dict
from torchbop.experiments.spec import Experiment, RunSpec
from torchbop.experiments.store import jsonable, load_manifest
from torchbop.training import precision

#: The key of every run each experiment plans at each profile, as computed by the code that made the results/ caches
#: of the first reports (commit aeb885c): a cache stays valid only while these stay the same. Changing one is a
#: deliberate change of what the run computes (then bump the experiment's VERSION).
RUN_KEYS = json.loads((Path(__file__).with_name("run_keys.json")).read_text())


class TestConfigure:
    def test_profiles_differ_in_scale_only_where_declared(self):
        assert configure("paper", "approximation").seeds == 10
        assert configure("paper", "approximation").epochs == 6
        assert configure("quick", "approximation").seeds < 10

    def test_overrides_are_typed(self):
        cfg = configure(
            "quick", "approximation", {"epochs": "3", "datasets": "mnist,cifar10", "subset": "none", "lr": "1e-3"}
        )
        assert (cfg.epochs, cfg.datasets, cfg.subset, cfg.lr) == (3, ("mnist", "cifar10"), None, 0.001)
        assert configure("quick", "cifar10", {"gamma_decay_every": "7"}).gamma_decay_every == 7

    @pytest.mark.parametrize("experiment, key", [("cifar10", "retrain_epochs"), ("approximation", "epoch")])
    def test_unknown_setting_raises(self, experiment, key):
        with pytest.raises(ValueError, match=f"has no setting '{key}'"):
            configure("quick", experiment, {key: 1})

    def test_unknown_profile_or_experiment(self):
        with pytest.raises(ValueError, match="Unknown profile"):
            configure("huge", "cifar10")
        with pytest.raises(ValueError, match="Unknown experiment"):
            configure("quick", "imagenet")


class TestRegistry:
    @pytest.mark.parametrize("name", sorted(EXPERIMENTS))
    def test_every_experiment_follows_the_protocol(self, name):
        module = EXPERIMENTS[name]
        assert isinstance(module, Experiment) and module.NAME == name
        assert set(module.CONFIGS) == set(PROFILES)
        assert all(isinstance(config, module.Config) for config in module.CONFIGS.values())
        assert module.NOT_SCALE <= {f.name for f in dataclasses.fields(module.Config)}

    @pytest.mark.parametrize("name", sorted(EXPERIMENTS))
    def test_a_stored_config_comes_back_typed(self, name):
        config = configure("quick", name)
        assert config_from_dict(name, jsonable(dataclasses.asdict(config))) == config


class TestKeys:
    def test_key_depends_on_every_param_and_the_version(self):
        spec = RunSpec("approximation", "a", {"seed": 0, "train": {"lr": 0.001}})
        assert spec.key(1) == RunSpec("approximation", "other label", {"train": {"lr": 0.001}, "seed": 0}).key(1)
        assert spec.key(1) != RunSpec("approximation", "a", {"seed": 0, "train": {"lr": 0.002}}).key(1)
        assert spec.key(1) != spec.key(2)
        assert spec.key(1) != RunSpec("cifar10", "a", spec.params).key(1)

    @pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
    def test_keys_of_every_profile_are_unchanged(self, experiment, monkeypatch):
        # pinned on a machine without native bf16: there "auto" (the quick profile's precision) resolves to "32"
        monkeypatch.setattr(precision, "native_bf16", lambda device: False)
        module = EXPERIMENTS[experiment]
        for profile in PROFILES:
            keys = list(dict.fromkeys(spec.key(module.VERSION) for spec in module.plan(configure(profile, experiment))))
            # the order is the plan's (which runs first); a run added to a plan is added here
            assert keys == RUN_KEYS[experiment][profile], f"{experiment} at {profile}: run keys changed"

    def test_jsonable_is_strict_json(self):
        value = jsonable({"a": (1, math.inf), "b": math.nan})
        assert value == {"a": [1, "inf"], "b": "nan"}
        json.dumps(value, allow_nan=False)


def test_second_invocation_skips_existing_runs(tmp_path, data_dir, run_smoke):
    first = run_smoke("approximation", tmp_path, data_dir, seeds=1)
    assert (first["executed"], first["skipped"]) == (1, 0)
    runs = tmp_path / "smoke" / "approximation" / "runs"
    record = runs / f"{first['runs'][0]['key']}.json"
    stamp = record.stat().st_mtime_ns

    second = run_smoke("approximation", tmp_path, data_dir, seeds=1)
    assert (second["executed"], second["skipped"]) == (0, 1)
    assert record.stat().st_mtime_ns == stamp  # not rewritten

    third = run_smoke("approximation", tmp_path, data_dir, seeds=2)  # one new run, the old one reused
    assert (third["executed"], third["skipped"]) == (1, 1)
    assert len(list(runs.glob("*.json"))) == 2
    assert load_manifest(tmp_path / "smoke" / "approximation")["runs"] == third["runs"]


def test_parallel_jobs_match_a_serial_run(tmp_path, data_dir, smoke_results):
    # the same plan as the serial smoke run of the session fixture, now in 2 spawned worker processes
    parallel = run_experiment(
        "approximation",
        configure("smoke", "approximation"),
        profile="smoke",
        results_root=tmp_path,
        data_dir=str(data_dir),
        jobs=2,
        threads=1,
        verbose=False,
        log=lambda m: None,
    )
    serial = load_manifest(smoke_results / "smoke" / "approximation")
    assert parallel["executed"] == 2 and parallel["failed"] == []
    assert parallel["runs"] == serial["runs"]  # same keys
    for run in serial["runs"]:
        a = json.loads((tmp_path / "smoke/approximation/runs" / f"{run['key']}.json").read_text())
        b = json.loads((smoke_results / "smoke/approximation/runs" / f"{run['key']}.json").read_text())
        assert a["result"]["binary"] == b["result"]["binary"]  # seeded: a worker process gives the same numbers
        assert a["result"]["real_retrained"] == b["result"]["real_retrained"]


def test_records_of_the_same_key_are_reused_across_profiles(tmp_path):
    """cpu shares Table 1 with paper: a record stored under a key by one profile serves the other."""
    from torchbop.experiments.runner import reuse_records
    from torchbop.experiments.store import read_json, write_json

    module = EXPERIMENTS["approximation"]
    keys = [spec.key(module.VERSION) for spec in module.plan(configure("paper", "approximation"))]
    write_json(tmp_path / "paper" / "approximation" / "runs" / f"{keys[0]}.json", {"key": keys[0], "result": 1})
    (tmp_path / "quick" / "approximation" / "runs").mkdir(parents=True)
    (tmp_path / "quick" / "approximation" / "runs" / f"{keys[1]}.json").write_text("{truncated")  # unreadable
    assert reuse_records(tmp_path, "cpu", "approximation", keys) == 1
    assert read_json(tmp_path / "cpu" / "approximation" / "runs" / f"{keys[0]}.json") == {"key": keys[0], "result": 1}
    assert not (tmp_path / "cpu" / "approximation" / "runs" / f"{keys[1]}.json").exists()
    assert reuse_records(tmp_path, "cpu", "approximation", keys) == 0  # already there: nothing copied twice
