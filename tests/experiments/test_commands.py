"""The ``experiment`` and ``report`` subcommands, registered through the CLI's command table."""

import json

from torchbop.cli import main


def test_print_config_applies_flags_and_set(capsys):
    code = main(
        [
            "experiment",
            "approximation",
            "--profile",
            "paper",
            "--epochs",
            "2",
            "--dataset",
            "mnist,fashion-mnist",
            "--set",
            "retrain_epochs=3",
            "--print-config",
        ]
    )
    assert code == 0
    config = json.loads(capsys.readouterr().out)
    assert (config["epochs"], config["retrain_epochs"], config["seeds"]) == (2, 3, 10)
    assert config["datasets"] == ["mnist", "fashion-mnist"]


def test_unknown_setting_is_a_usage_error(capsys):
    assert main(["experiment", "hyperparameters", "--dataset", "mnist", "--print-config"]) == 2
    assert "has no setting 'datasets'" in capsys.readouterr().err


def test_report_command(smoke_results, tmp_path, capsys):
    assert main(["report", "--profile", "smoke", "--results-dir", str(smoke_results), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "smoke" / "REPORT.md").is_file()
    assert "REPORT.md" in capsys.readouterr().out
