"""Training options of issue 23: CEMA and Bop2ndOrder's unbiased variant in a run, the per-step "interpolate"
schedule (the Bop2ndOrder authors' CIFAR-10 recipe), batch-norm recalibration, and the recipes that use them."""

from __future__ import annotations

import csv

import pytest

from torchbop.cli import main
from torchbop.optim import CEMA, Bop2ndOrder, LinearInterpolation
from torchbop.training import History, Observer, train
from torchbop.training.config import TrainConfig, apply_overrides, load_recipe


class StepRates(Observer):
    """The rates each optimizer step used: (global_step, Bop group values, Adam's lr), read right before the step."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict, float]] = []
        self.optimizer = None

    def on_before_step(self, run):
        groups = run.optimizer.param_groups
        bop = {k: groups[0][k] for k in ("lr", "threshold", "sigma", "unbiased") if k in groups[0]}
        self.steps.append((run.step, bop, groups[-1]["lr"]))
        self.optimizer = run.optimizer


class TestConfigDomains:
    """Every new field: a value outside its domain is a ValueError naming the field, the value and the fix."""

    @pytest.mark.parametrize(
        ("overrides", "error"),
        [
            (["optimizer=cema"], r"optimizer 'cema' needs alpha.*set alpha"),
            (["optimizer=cema", "alpha=1.5"], r"Invalid alpha value: 1.5 \(CEMA expects a number in \(0, 1\]\)"),
            (["optimizer=cema", "alpha=0"], r"Invalid alpha value: 0.0"),
            (["optimizer=cema", "alpha=0.1", "gamma=2"], r"Invalid gamma value: 2.0 \(CEMA expects"),
            (["alpha=0.1"], r"alpha is CEMA's inertia rate.*remove alpha or set optimizer: cema"),
            (["unbiased=2"], r"Invalid unbiased value: 2 \(expected bool, got int\)"),
            (["unbiased=true"], r"unbiased=True selects Bop2ndOrder's.*set optimizer: bop2nd"),
            (["gamma_end=1e-5"], r"gamma_end set\(s\).*set decay_schedule: interpolate"),
            (["decay_schedule=interpolate"], r"none has: set one or more of gamma_end"),
            (["decay_schedule=interpolate", "gamma_end=-1"], r"Invalid gamma_end value: -1.0 \(expected >= 0\)"),
            (["decay_schedule=interpolate", "gamma_end=2"], r"Invalid gamma_end value: 2.0 \(expected a number in"),
            (["decay_schedule=interpolate", "threshold_end=-1e-8"], r"Invalid threshold_end value: -1e-08"),
            (["decay_schedule=interpolate", "sigma_end=1e-2"], r"sigma_end is not a rate of optimizer 'bop'"),
            (["optimizer=bop2nd", "decay_schedule=interpolate", "sigma_end=3"], r"Invalid sigma_end value: 3.0"),
            (["decay_schedule=interpolate", "lr_end=-0.1"], r"Invalid lr_end value: -0.1"),
            (
                ["decay_schedule=interpolate", "gamma_end=1e-5", "gamma_decay_every=10"],
                r"'interpolate' moves the rates to their \*_end.*remove gamma_decay",
            ),
            (
                ["optimizer=cema", "alpha=0.1", "decay_schedule=interpolate", "gamma_end=1e-5"],
                r"gamma_end is not a rate of optimizer 'cema'.*'step' or 'linear'",
            ),
            (
                ["mode=latent", "optimizer=adam", "decay_schedule=interpolate", "gamma_end=1e-5"],
                r"gamma_end is not a rate of optimizer 'adam' in mode 'latent'",
            ),
            (
                ["mode=latent", "optimizer=adam", "other_lr=0.1", "decay_schedule=interpolate", "lr_end=0"],
                r"lr_end with other_lr",
            ),
            (["recalibrate_bn=always"], r"Invalid recalibrate_bn value: 'always' \(expected one of 'off', 'end'"),
        ],
    )
    def test_errors(self, overrides, error):
        with pytest.raises(ValueError, match=error):
            apply_overrides(TrainConfig(), overrides)

    def test_unquoted_off_is_off(self, tmp_path):
        assert apply_overrides(TrainConfig(recalibrate_bn="end"), ["recalibrate_bn=off"]).recalibrate_bn == "off"
        path = tmp_path / "mine.yaml"
        path.write_text("recalibrate_bn: off\n")  # YAML 1.1: false
        assert load_recipe(path).recalibrate_bn == "off"

    def test_defaults_keep_the_old_behaviour(self):
        cfg = TrainConfig()
        assert (cfg.unbiased, cfg.alpha, cfg.recalibrate_bn, cfg.decay_schedule) == (False, None, "off", "step")
        assert (cfg.gamma_end, cfg.threshold_end, cfg.sigma_end, cfg.lr_end) == (None, None, None, None)

    def test_new_fields_are_keyed_only_away_from_their_defaults(self):
        from torchbop.experiments.common import ADDED_FIELDS

        new = {"unbiased", "alpha", "gamma_end", "threshold_end", "sigma_end", "lr_end", "recalibrate_bn"}
        defaults = TrainConfig().to_dict()
        assert new <= set(ADDED_FIELDS) and all(ADDED_FIELDS[k] == defaults[k] for k in new)

    def test_cli_refuses_before_a_run_folder_exists(self, tmp_path, capsys):
        out = tmp_path / "run"
        assert main(["train", "--recipe", "mnist", "--set", "recalibrate_bn=sometimes", "--out", str(out)]) == 2
        assert "Invalid recalibrate_bn value: 'sometimes'" in capsys.readouterr().err and not out.exists()


class TestRecipes:
    def test_cifar10_bop2nd_is_the_authors_recipe(self):
        cfg = load_recipe("cifar10_bop2nd")
        assert (cfg.model, cfg.model_kwargs["variant"], cfg.optimizer, cfg.unbiased) == (
            "binarynet",
            "original",
            "bop2nd",
            False,
        )
        assert (cfg.epochs, cfg.batch_size, cfg.decay_schedule) == (500, 50, "interpolate")
        assert (cfg.threshold, cfg.threshold_end, cfg.gamma, cfg.gamma_end) == (1e-5, 1e-8, 1e-2, 1e-5)
        assert (cfg.sigma, cfg.sigma_end, cfg.lr, cfg.lr_end) == (1e-7, 1e-2, 0.01, 0.001)
        assert cfg.recalibrate_bn == "off"  # the authors' protocol

    @pytest.mark.parametrize(("latent", "bop"), [("mnist_latent", "mnist"), ("cifar10_latent", "cifar10")])
    def test_latent_baselines_match_their_bop_recipes_budget(self, latent, bop):
        a, b = load_recipe(latent), load_recipe(bop)
        assert (a.mode, a.optimizer, a.lr, a.decay_schedule) == ("latent", "adam", 1.25e-3, "linear")
        assert (a.model, a.model_kwargs, a.epochs, a.batch_size, a.augment) == (
            b.model,
            b.model_kwargs,
            b.epochs,
            b.batch_size,
            b.augment,
        )

    def test_paper_recipes_do_not_recalibrate(self):
        for name in ("cifar10", "cifar10_reproduction", "cifar10_hyperparams", "cifar10_bop2nd"):
            assert load_recipe(name).recalibrate_bn == "off", name
        assert load_recipe("mnist").recalibrate_bn != "off"  # the demo


class TestOptimizers:
    def test_cema_trains_and_logs_alpha(self, tiny_config, synthetic):
        rates, history = StepRates(), History()
        result = train(
            tiny_config(optimizer="cema", alpha=0.5, gamma=0.1, epochs=2, decay_schedule="linear"),
            data=synthetic,
            loggers=False,
            observers=[rates, history],
        )
        cema = rates.optimizer.optimizers[0]
        assert isinstance(cema, CEMA) and result["global_step"] == 16
        assert cema.param_groups[0]["gamma"] == 0.1
        # alpha is the group's lr: the linear schedule decays it per epoch (1, then 1/2), gamma stays
        assert [s[1]["lr"] for s in rates.steps] == [0.5] * 8 + [0.25] * 8
        assert [e["rate"] for e in history.epochs] == [0.5, 0.25] and all(e["flips"] > 0 for e in history.epochs)
        assert all("inertia" in cema.state[p] for p in cema.param_groups[0]["params"])

    def test_bop2nd_unbiased_reaches_the_optimizer(self, tiny_config, synthetic):
        rates = StepRates()
        train(
            tiny_config(optimizer="bop2nd", unbiased=True, gamma=1e-2, sigma=1e-2, threshold=1e-3, epochs=1),
            data=synthetic,
            loggers=False,
            observers=[rates],
        )
        assert isinstance(rates.optimizer.optimizers[0], Bop2ndOrder)
        assert all(s[1]["unbiased"] is True for s in rates.steps)


class TestInterpolation:
    def test_values_at_each_step(self):
        f = LinearInterpolation(1e-5, 1e-8, total_steps=500_000)  # threshold in the authors' recipe
        assert f(0) == pytest.approx(1e-5, rel=1e-15) and f(500_000) == f(10**7) == 1e-8
        assert f(250_000) == pytest.approx((1e-5 + 1e-8) / 2, rel=1e-15)
        rising = LinearInterpolation(1e-7, 1e-2, total_steps=4)  # sigma rises
        assert [rising(t) for t in range(5)] == [(1e-7 - 1e-2) * (1 - t / 4) + 1e-2 for t in range(5)]
        with pytest.raises(ValueError, match="Invalid total_steps value: 0"):
            LinearInterpolation(1.0, 0.0, total_steps=0)

    def test_every_step_of_a_run_uses_its_interpolated_rates(self, tiny_config, synthetic):
        """gamma, tau, sigma and Adam's lr at optimizer step t are (start - end)(1 - t/T) + end, T = all steps."""
        rates = StepRates()
        cfg = tiny_config(
            optimizer="bop2nd",
            epochs=2,
            decay_schedule="interpolate",
            gamma=1e-2,
            gamma_end=1e-5,
            threshold=1e-5,
            threshold_end=1e-8,
            sigma=1e-7,
            sigma_end=1e-2,
            lr=0.01,
            lr_end=0.001,
        )
        result = train(cfg, data=synthetic, loggers=False, observers=[rates])
        total = result["global_step"]
        assert total == 16 and [s[0] for s in rates.steps] == list(range(16))

        def at(start, end, t):
            return (start - end) * (1.0 - t / total) + end

        for t, bop, adam_lr in rates.steps:
            assert bop["lr"] == at(1e-2, 1e-5, t) and bop["threshold"] == at(1e-5, 1e-8, t)
            assert bop["sigma"] == at(1e-7, 1e-2, t) and adam_lr == at(0.01, 0.001, t)
        assert rates.steps[-1][1]["lr"] > 1e-5  # the end value is reached at step T, after the run

    def test_only_rates_with_an_end_move(self, tiny_config, synthetic):
        rates = StepRates()
        train(
            tiny_config(epochs=1, decay_schedule="interpolate", gamma=1e-2, gamma_end=0.0),
            data=synthetic,
            loggers=False,
            observers=[rates],
        )
        assert [s[1]["lr"] for s in rates.steps] == [1e-2 * (1 - t / 8) for t in range(8)]
        assert {s[1]["threshold"] for s in rates.steps} == {1e-6} and {s[2] for s in rates.steps} == {0.01}

    def test_epoch_logs_show_the_rates_of_the_epochs_first_step(self, tiny_config, synthetic, tmp_path):
        history = History()
        cfg = tiny_config(epochs=2, decay_schedule="interpolate", gamma=1e-2, gamma_end=0.0, lr_end=0.0)
        train(cfg, data=synthetic, observers=[history])
        assert [e["rate"] for e in history.epochs] == [1e-2, 0.5e-2]  # 8 steps per epoch, 16 in all
        rows = list(csv.DictReader(next((tmp_path / "run" / "csv").glob("version_*/metrics.csv")).open()))
        epochs = [r for r in rows if r["gamma"]]
        assert [float(r["gamma"]) for r in epochs] == pytest.approx([1e-2, 0.5e-2], rel=1e-6)  # logged in float32
        assert [float(r["lr"]) for r in epochs] == pytest.approx([0.01, 0.005], rel=1e-6)
