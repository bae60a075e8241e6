"""TrainConfig: recipes, typed overrides, unknown keys, validation; the CLI's view of them."""

from __future__ import annotations

import pytest
import yaml

from torchbop.cli import build_parser, config_from_args, main
from torchbop.training.config import TrainConfig, apply_overrides, available_recipes, load_recipe


class TestRecipes:
    def test_shipped_recipes_load(self):
        names = available_recipes()
        assert {"mnist", "cifar10", "cifar10_reproduction", "cifar10_hyperparams"} <= set(names)
        for name in names:
            cfg = load_recipe(name)
            assert cfg.name == name and cfg.recipe_version >= 1

    def test_cifar10_is_the_papers_recipe(self):
        cfg = load_recipe("cifar10")
        assert (cfg.model, cfg.model_kwargs["variant"], cfg.dataset, cfg.protocol) == (
            "binarynet",
            "original",
            "cifar10",
            "original",
        )
        assert (cfg.batch_size, cfg.epochs, cfg.gamma, cfg.threshold) == (50, 500, 1e-4, 1e-8)
        assert (cfg.gamma_decay, cfg.gamma_decay_every, cfg.lr, cfg.augment) == (0.1, 100, 0.01, True)

    def test_reproduction_recipe(self):
        cfg = load_recipe("cifar10_reproduction")
        assert cfg.protocol == "reproduction" and cfg.val_fraction == 0.1 and cfg.test_weights == "best"
        assert cfg.early_stop_flip_epochs == 10 and cfg.lr == 1e-3
        assert cfg.model_kwargs["variant"] == "reproduction"

    def test_recipe_from_path_and_name_default(self, tmp_path):
        path = tmp_path / "mine.yaml"
        path.write_text("epochs: 7\ngamma: 1e-3\n")  # YAML reads 1e-3 as a string: it must still be a float
        cfg = load_recipe(path)
        assert cfg.name == "mine" and cfg.epochs == 7 and cfg.gamma == 1e-3 and isinstance(cfg.gamma, float)

    def test_unknown_recipe_key_names_it(self, tmp_path):
        path = tmp_path / "bad.yaml"
        path.write_text("epochs: 3\nlearning_rate: 0.1\ngama: 1.0e-3\n")
        with pytest.raises(ValueError, match=r"'learning_rate'.*'gama' \(did you mean 'gamma'\?\)"):
            load_recipe(path)

    def test_unknown_recipe_name(self):
        with pytest.raises(ValueError, match="Unknown recipe 'nope'"):
            load_recipe("nope")


class TestOverrides:
    def test_typed_by_field(self):
        cfg = apply_overrides(
            TrainConfig(),
            [
                "epochs=3",
                "gamma=1e-3",
                "lr=1",
                "augment=true",
                "precision=32",
                "subset=null",
                "devices=2",
                "limit_train_batches=0.5",
            ],
        )
        assert cfg.epochs == 3 and cfg.gamma == 1e-3 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
        assert cfg.augment is True and cfg.precision == "32" and cfg.subset is None
        assert cfg.devices == 2 and cfg.limit_train_batches == 0.5

    def test_model_kwargs_entries(self):
        cfg = apply_overrides(TrainConfig(model_kwargs={"variant": "original"}), ["model_kwargs.width=0.25"])
        assert cfg.model_kwargs == {"variant": "original", "width": 0.25}

    @pytest.mark.parametrize(
        ("override", "error"),
        [
            ("epochz=3", r"TrainConfig has no setting 'epochz' \(did you mean 'epochs'\?\)"),
            ("epochs=three", r"Invalid epochs value: 'three'"),
            ("epochs=0", r"Invalid epochs value: 0"),
            ("optimizer=adam", r"Invalid optimizer value: 'adam' for mode 'bop'"),
            ("protocol=holdout", r"Invalid protocol value"),
            ("gamma_decay=2", r"Invalid gamma_decay value"),
            ("epochs", r"expected key=value"),
            ("foo.bar=1", r"TrainConfig has no setting 'foo'"),
            ("other_lr=0.01", r"other_lr applies to mode 'latent' only"),
            ("other_lr=-1", r"Invalid other_lr value: -1"),
            ("decay_schedule=cosine", r"Invalid decay_schedule value: 'cosine'"),
        ],
    )
    def test_errors(self, override, error):
        with pytest.raises(ValueError, match=error):
            apply_overrides(TrainConfig(), [override])

    def test_linear_decay_replaces_the_staircase(self):
        with pytest.raises(ValueError, match="decay_schedule 'linear' decays to 0 over the run by itself"):
            load_recipe("cifar10", ["decay_schedule=linear"])  # the recipe's gamma_decay_every would be ignored
        cfg = load_recipe("cifar10_bireal_latent")
        assert (cfg.decay_schedule, cfg.mode, cfg.optimizer, cfg.lr) == ("linear", "latent", "adam", 1.25e-3)

    def test_best_weights_need_a_held_out_split(self):
        with pytest.raises(ValueError, match="test_weights='best' with protocol 'original'"):
            TrainConfig(test_weights="best")

    def test_frozen_and_round_trip(self):
        cfg = TrainConfig(epochs=4, model_kwargs={"width": 0.5})
        with pytest.raises(AttributeError):
            cfg.epochs = 5  # type: ignore[misc]
        assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


class TestCli:
    def test_flags_override_recipe_and_set(self):
        args = build_parser().parse_args(
            [
                "train",
                "--recipe",
                "cifar10",
                "--set",
                "epochs=9",
                "--epochs",
                "2",
                "--width",
                "0.25",
                "--batch-size",
                "64",
                "--devices",
                "2",
                "--data-dir",
                "/data",
                "--seed",
                "3",
                "--out",
                "/tmp/x",
            ]
        )
        cfg = config_from_args(args)
        assert (cfg.epochs, cfg.batch_size, cfg.devices, cfg.data_dir, cfg.seed, cfg.out) == (
            2,
            64,
            2,
            "/data",
            3,
            "/tmp/x",
        )
        assert cfg.model_kwargs == {"variant": "original", "width": 0.25}

    def test_print_config(self, capsys):
        assert main(["train", "--recipe", "mnist", "--epochs", "1", "--print-config"]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["epochs"] == 1 and printed["name"] == "mnist"

    def test_bad_override_is_a_usage_error(self, capsys):
        assert main(["train", "--recipe", "mnist", "--set", "nope=1", "--print-config"]) == 2
        assert "TrainConfig has no setting 'nope'" in capsys.readouterr().err

    def test_train_needs_a_recipe_or_resume(self, capsys):
        assert main(["train", "--epochs", "1"]) == 2
        assert "give --recipe" in capsys.readouterr().err

    @pytest.mark.parametrize("value", ["auto", "32", "bf16-mixed"])
    def test_precision_flag(self, value):
        args = build_parser().parse_args(["train", "--recipe", "cifar10", "--precision", value])
        assert config_from_args(args).precision == value

    def test_precision_defaults(self):
        """fp32 until bf16 parity is shown; --precision auto and --set precision=auto opt in."""
        mnist = config_from_args(build_parser().parse_args(["train", "--recipe", "mnist"]))
        auto = config_from_args(build_parser().parse_args(["train", "--recipe", "mnist", "--precision", "auto"]))
        assert (mnist.precision, auto.precision) == ("32", "auto")
        assert apply_overrides(TrainConfig(), ["precision=auto"]).precision == "auto"
