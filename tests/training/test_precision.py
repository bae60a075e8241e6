"""precision: auto: the decision (native bf16 or not, both outcomes), its signals, and what a run records."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from torchbop.training import precision as P
from torchbop.training import train
from torchbop.training.config import TrainConfig, load_recipe


@pytest.fixture(autouse=True)
def fresh_cache():
    P.native_bf16.cache_clear()
    yield
    P.native_bf16.cache_clear()


def pretend(monkeypatch, *, cpu: bool | None = None, cuda: bool | None = None) -> None:
    if cpu is not None:
        monkeypatch.setattr(P, "_cpu_native_bf16", lambda: cpu)
    if cuda is not None:
        monkeypatch.setattr(P, "_cuda_native_bf16", lambda: cuda)


class TestDecision:
    @pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32")])
    def test_cpu(self, monkeypatch, native, expected):
        pretend(monkeypatch, cpu=native)
        assert P.resolve_precision("auto", "cpu") == expected

    @pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32")])
    def test_cuda(self, monkeypatch, native, expected):
        pretend(monkeypatch, cuda=native, cpu=not native)  # the CPU's answer must not matter
        assert P.resolve_precision("auto", "gpu") == expected
        assert P.resolve_precision("auto", "cuda") == expected

    def test_auto_accelerator_follows_the_device_lightning_picks(self, monkeypatch):
        pretend(monkeypatch, cpu=True, cuda=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        assert P.device_type("auto") == "cpu" and P.resolve_precision("auto", "auto") == "bf16-mixed"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        P.native_bf16.cache_clear()
        assert P.device_type("auto") == "cuda" and P.resolve_precision("auto", "auto") == "32"

    def test_mps_and_others_stay_fp32(self, monkeypatch):
        pretend(monkeypatch, cpu=True, cuda=True)
        assert P.resolve_precision("auto", "mps") == "32"

    @pytest.mark.parametrize("explicit", ["32", "bf16-mixed"])
    def test_explicit_precisions_are_kept(self, monkeypatch, explicit):
        pretend(monkeypatch, cpu=explicit == "32", cuda=explicit == "32")  # the opposite of what auto would say
        assert P.resolve_precision(explicit, "cpu") == explicit

    def test_unknown_precision(self):
        with pytest.raises(ValueError, match="Invalid precision value: '16'"):
            P.resolve_precision("16", "cpu")

    def test_decided_once_per_device_type(self, monkeypatch):
        calls = []
        monkeypatch.setattr(P, "_cpu_native_bf16", lambda: calls.append(1) or False)
        for _ in range(3):
            P.resolve_precision("auto", "cpu")
        assert calls == [1]

    def test_describe(self, monkeypatch):
        pretend(monkeypatch, cpu=False)
        assert P.describe_resolution("auto", "cpu") == "precision auto -> 32 (no native bf16 on cpu)"
        assert P.describe_resolution("bf16-mixed", "cpu") == "precision bf16-mixed"


class TestSignals:
    @pytest.mark.parametrize(
        "flags, expected",
        [("fpu avx2 avx512f avx512_bf16", True), ("fpu amx_bf16", True), ("fpu avx avx2 avx512f", False)],
    )
    def test_cpu_reads_proc_cpuinfo(self, monkeypatch, tmp_path, flags, expected):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        read = P._cpuinfo_flags
        monkeypatch.setattr(P, "_cpuinfo_flags", lambda: read(str(cpuinfo)))
        assert P._cpu_native_bf16() is expected

    def test_cuda_without_a_gpu_is_not_native(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert P._cuda_native_bf16() is False

    def test_cuda_native_means_no_emulation(self, monkeypatch):
        seen = {}
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(
            torch.cuda,
            "is_bf16_supported",
            lambda including_emulation=True: seen.setdefault("emulation", including_emulation),
        )
        P._cuda_native_bf16()
        assert seen == {"emulation": False}


class TestConfig:
    def test_auto_is_a_precision(self):
        assert TrainConfig(precision="auto").precision == "auto"
        with pytest.raises(ValueError, match="expected one of 'auto', '32', 'bf16-mixed'"):
            TrainConfig(precision="16-mixed")

    def test_recipes_stay_fp32_until_parity_is_shown(self):
        for name in ("mnist", "cifar10", "cifar10_reproduction", "cifar10_hyperparams"):
            assert load_recipe(name).precision == "32"

    @pytest.mark.parametrize("name", ["approximation", "arbitrary-lr", "hyperparameters", "cifar10"])
    @pytest.mark.parametrize("native, resolved", [(False, "32"), (True, "bf16-mixed")])
    def test_profiles(self, monkeypatch, name, native, resolved):
        """Every profile trains in fp32; precision=auto is resolved when planned, so that the key says what ran."""
        import dataclasses

        from torchbop.experiments import EXPERIMENTS

        monkeypatch.setattr(P, "native_bf16", lambda device: native)
        module = EXPERIMENTS[name]
        assert {config.precision for config in module.CONFIGS.values()} == {"32"}
        auto = dataclasses.replace(module.CONFIGS["quick"], precision="auto")
        trained = [spec.params["train"]["precision"] for spec in module.plan(auto) if "train" in spec.params]
        assert trained and set(trained) == {resolved}
        paper = [
            spec.params["train"]["precision"] for spec in module.plan(module.CONFIGS["paper"]) if "train" in spec.params
        ]
        assert set(paper) == {"32"}


@pytest.mark.parametrize("native, resolved", [(False, "32"), (True, "bf16-mixed")])
def test_a_run_records_the_precision_it_used(monkeypatch, tiny_config, synthetic, native, resolved):
    pretend(monkeypatch, cpu=native)
    result = train(
        tiny_config(epochs=1, precision="auto", limit_train_batches=2, limit_eval_batches=1),
        data=synthetic,
        loggers=False,
    )
    assert result["precision"] == resolved and result["precision_requested"] == "auto"
    out = tiny_config().out_dir
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == resolved and summary["precision_requested"] == "auto"
    text = (out / "config.yaml").read_text()
    assert text.splitlines()[0] == f"# precision auto -> {resolved} ({'' if native else 'no '}native bf16 on cpu)"
    assert yaml.safe_load(text)["precision"] == resolved  # what a resumed run continues with
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["config"]["precision"] == resolved


def test_explicit_precision_writes_no_comment(tiny_config, synthetic):
    result = train(
        tiny_config(epochs=1, precision="32", limit_train_batches=1, limit_eval_batches=1),
        data=synthetic,
        loggers=False,
    )
    assert result["precision"] == result["precision_requested"] == "32"
    assert not (tiny_config().out_dir / "config.yaml").read_text().startswith("#")
