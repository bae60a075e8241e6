"""Every setting has a declared domain, and every value outside it stops the command before it writes anything.

The fields are read from the ``TrainConfig`` dataclass and the flags from the ``torchbop`` parser itself, so a new
field or flag without a domain fails here. Each value outside a domain (the domain's own ``outside()`` examples, and
the values issue 22 lists, tried as a new user would) must give exit status 2 through ``torchbop.cli.main``, one line
on stderr naming the key or flag, no traceback, and no run or results folder. ``train`` and the experiment runner are
replaced by functions that fail the test, so "before anything runs" is checked, not assumed.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import torchbop.cli as cli
from torchbop.domains import Domain
from torchbop.training.config import TrainConfig, field_domains

FIELDS = field_domains()

#: The values of issue 22 (and a few more a new user would try), each with the key the message must name.
ISSUE_VALUES = [
    ("batch_size", "1e9"),
    ("batch_size", "1000000000"),
    ("eval_batch_size", "0"),
    ("seed", "-1"),
    ("seed", "2**40"),
    ("seed", str(2**40)),
    ("seed", str(2**32)),
    ("devices", "0"),
    ("devices", "-2"),
    ("devices", "cpu"),
    ("devices", "'0,'"),
    ("devices", "-1"),
    ("accelerator", "tpu"),
    ("num_nodes", "0"),
    ("strategy", "foo"),
    ("limit_train_batches", "1.5"),
    ("limit_train_batches", "-1"),
    ("limit_train_batches", "0"),
    ("limit_eval_batches", "2.0"),
    ("log_every_n_steps", "0"),
    ("val_fraction", "1"),
    ("subset", "0"),
    ("subset", "70000"),
    ("precision", "16"),
    ("gamma", "nan"),
    ("gamma", "inf"),
    ("threshold", "-1"),
    ("threshold", "inf"),
    ("lr", "inf"),
    ("lr", "nan"),
    ("momentum", "2"),
    ("momentum", "0.9"),
    ("alpha", "0"),
    ("sigma", "2"),
    ("gamma_end", "2"),
    ("threshold_end", "nan"),
    ("lr_end", "inf"),
    ("sigma_end", "0.5"),
    ("model_kwargs.width", "0"),
    ("model_kwargs.depth", "3"),
    ("model", "binarynet"),
    ("name", "a/b"),
    ("name", ".."),
    ("out", "{file}"),
    ("out", "{file}/run"),
    ("data_dir", "{file}"),
    ("resume", "{tmp}/missing"),
    ("epochs", "1.5"),
    ("epochs", "0"),
    ("other_lr", "0.1"),
    ("recipe_version", "0"),
    ("compile", "2"),
]


@pytest.fixture
def guarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace (with a file at ``{file}``) where nothing may train or run an experiment."""

    def reached(*args, **kwargs):
        raise AssertionError("a value outside its domain reached the run")

    monkeypatch.setattr(cli, "train", reached)
    monkeypatch.setattr(cli.runner, "run_experiment", reached)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "source").mkdir()  # an existing run folder for export's positional argument
    return tmp_path


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{file}", str(tmp / "a-file")).replace("{tmp}", str(tmp))


def _refused(argv: list[str], names: tuple[str, ...], tmp: Path, capsys: pytest.CaptureFixture) -> str:
    code = cli.main([_fill(a, tmp) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (argv, out, err)
    assert len(lines) == 1 and "Traceback" not in out + err, err
    assert lines[0].startswith("torchbop") and ": error: " in lines[0], lines[0]
    assert any(name in lines[0] for name in names), (names, lines[0])
    assert sorted(p.name for p in tmp.iterdir()) == ["a-file", "source"], "something was written"
    return lines[0].partition(": error: ")[2]


# ----------------------------------------------------------------------------------------------------------------
# TrainConfig fields
# ----------------------------------------------------------------------------------------------------------------
def test_every_field_declares_a_domain():
    for f in dataclasses.fields(TrainConfig):
        assert isinstance(f.metadata.get("domain"), Domain), f"TrainConfig.{f.name} declares no domain"
        assert f.metadata["domain"].check(f.name, getattr(TrainConfig(), f.name)) == getattr(TrainConfig(), f.name)


def _field_cases() -> list[tuple[str, str]]:
    cases = [
        (key, text)
        for key, domain in FIELDS.items()  # through --set, a blank is null
        for text in (domain.outside() + ([] if domain.none else ["null"]))
        if text.strip() or not domain.none
    ]
    return list(dict.fromkeys(cases + ISSUE_VALUES))


@pytest.mark.parametrize(("key", "text"), _field_cases(), ids=lambda v: str(v))
def test_field_outside_its_domain_is_one_line_exit_2_and_nothing_written(key, text, guarded, capsys):
    argv = ["train", "--recipe", "mnist", "--out", "{tmp}/run", "--set", f"{key}={text}"]
    if key == "devices":  # on a GPU machine '0,' and -1 are valid: the rule tested is that of accelerator cpu
        argv += ["--accelerator", "cpu"]
    head = key.partition(".")[0]
    _refused(argv, (f"{head} value", f"'{head}'", f"{head} ", f"{head}="), guarded, capsys)


def test_every_field_is_walked():
    walked = {key.partition(".")[0] for key, _ in _field_cases()}
    assert walked == set(FIELDS) and len(_field_cases()) > 3 * len(FIELDS)


# ----------------------------------------------------------------------------------------------------------------
# command-line flags
# ----------------------------------------------------------------------------------------------------------------
#: Valid arguments of each subcommand, around the flag under test.
BASE = {
    "train": ["train", "--recipe", "mnist", "--out", "{tmp}/run"],
    "experiment": ["experiment", "arbitrary-lr", "--profile", "smoke", "--results-dir", "{tmp}/run"],
    "report": ["report", "--results-dir", "{tmp}/run", "--out", "{tmp}/reports"],
    "summary": ["summary", "--recipe", "mnist"],
    "export": ["export", "{tmp}/source", "-o", "{tmp}/model.tbop"],
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": parser, **sub.choices}


def _flag_cases() -> list[tuple[str, str, str]]:
    """(subcommand, flag or positional name, text outside its domain) for every option of every subcommand."""
    cases = []
    for command, parser in _subparsers().items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            if action.nargs == 0:  # a switch: its domain is given / not given
                cases.append((command, name, "=yes"))
                continue
            domain = action.type
            assert isinstance(domain, Domain) or action.choices is not None, f"{command} {name} declares no domain"
            texts = ["no-such-choice"] if action.choices is not None else domain.outside()
            cases += [(command, name, text) for text in texts]
    return cases


@pytest.mark.parametrize(("command", "flag", "text"), _flag_cases(), ids=lambda v: str(v))
def test_flag_outside_its_domain_is_one_line_exit_2_and_nothing_written(command, flag, text, guarded, capsys):
    base = BASE.get(command, ["report", "--results-dir", "{tmp}/run"])
    if flag == "--debug" or command == "":
        argv = [f"{flag}{text}", *base] if text == "=yes" else [flag, text, *base]
    elif text == "=yes":
        argv = [*base, f"{flag}{text}"]
    elif not flag.startswith("-"):  # a positional argument: replace it
        argv = [command, text, *base[2:]]
    elif command == "summary" and flag in ("--recipe", "--checkpoint"):
        argv = ["summary", flag, text]
    else:
        argv = [*base, flag, text]
    _refused(argv, (flag, flag.lstrip("-"), "RUN_DIR_OR_CHECKPOINT"), guarded, capsys)


def test_every_option_is_walked():
    walked = {(command, flag) for command, flag, _ in _flag_cases()}
    for command, parser in _subparsers().items():
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                assert (command, action.option_strings[-1] if action.option_strings else action.dest) in walked


# ----------------------------------------------------------------------------------------------------------------
# --set means the same for train and experiment
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "item",
    ["epochs=0", "epochs=abc", "epochs=1.5", "epochs=null", "subset=0", "precision=16", "batch_size=0", "epochs", "=3"],
)
def test_set_means_the_same_for_train_and_experiment(item, guarded, capsys):
    names = ("epochs", "subset", "precision", "batch_size", "seed", "--set")
    train = _refused([*BASE["train"], "--set", item], names, guarded, capsys)
    experiment = _refused([*BASE["experiment"], "--set", item], names, guarded, capsys)
    assert train.replace("torchbop train", "torchbop experiment") == experiment


def test_an_unknown_setting_has_the_same_hint(guarded, capsys):
    train = _refused([*BASE["train"], "--set", "epochz=3"], ("epochz",), guarded, capsys)
    experiment = _refused([*BASE["experiment"], "--set", "epochz=3"], ("epochz",), guarded, capsys)
    hint = "has no setting 'epochz' (did you mean 'epochs'?)"
    assert train == f"TrainConfig {hint}" and experiment == f"arbitrary-lr {hint}"


def test_a_real_process_prints_one_line_and_writes_nothing(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchbop.cli",
            "train",
            "--recipe",
            "mnist",
            "--out",
            str(tmp_path / "run"),
            "--set",
            "seed=-1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == "" and not (tmp_path / "run").exists()
    assert done.stderr.splitlines() == [
        "torchbop train: error: Invalid seed value: -1 (expected an integer in [0, 4294967295])"
    ]
