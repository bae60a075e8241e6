"""Every known user mistake reaches the user as one short message on stderr and exit status 2: no traceback, the
file, key or value named, and nothing written (a refused run leaves no run folder behind)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchbop.cli import main
from torchbop.training.config import available_recipes


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """Bad inputs on disk: malformed YAML, empty and corrupt data folders, truncated and garbage checkpoints."""
    (tmp_path / "bad.yaml").write_text("name: bad\nepochs: [1, 2\nbatch_size: 10\n")
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt" / "mnist"
    corrupt.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        (corrupt / name).write_bytes(b"\x1f\x8b not really gzip")
    ckpt = tmp_path / "trunc" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(10_000)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:20_000])
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all\n" * 50)
    return tmp_path


OUT = ["--out", "{tmp}/run"]
MNIST = ["train", "--recipe", "mnist", *OUT]
# (case, arguments, what the message must name). {tmp} is the workspace.
CASES = [
    ("recipe file missing", ["train", "--recipe", "{tmp}/nope.yaml", *OUT], "nope.yaml (shipped recipes"),
    ("recipe name unknown", ["train", "--recipe", "mnsit", *OUT], "Unknown recipe 'mnsit'"),
    ("malformed YAML", ["train", "--recipe", "{tmp}/bad.yaml", *OUT], "bad.yaml is not valid YAML"),
    ("unknown key", [*MNIST, "--set", "gama=1e-3"], "'gama' (did you mean 'gamma'?)"),
    ("gamma 2, print-config", [*MNIST, "--set", "gamma=2", "--print-config"], "Invalid gamma value: 2.0"),
    ("gamma 2", [*MNIST, "--set", "gamma=2"], "Invalid gamma value: 2.0"),
    ("gamma nan", [*MNIST, "--set", "gamma=nan"], "Invalid gamma value: nan"),
    ("width 0", [*MNIST, "--width", "0"], "width"),
    ("unknown model argument", [*MNIST, "--set", "model_kwargs.depth=3"], "depth"),
    ("data folder missing", [*MNIST, "--data-dir", "{tmp}/none"], "none/mnist"),
    ("data folder empty", [*MNIST, "--data-dir", "{tmp}/empty"], "empty/mnist"),
    ("data folder corrupt", [*MNIST, "--data-dir", "{tmp}/corrupt"], "corrupt/mnist/t"),
    ("checkpoint missing", ["train", "--resume", "{tmp}/nothing"], "nothing: no such checkpoint file"),
    ("checkpoint truncated", ["train", "--resume", "{tmp}/trunc"], "last.ckpt: truncated or not a torch checkpoint"),
    ("checkpoint garbage", ["train", "--resume", "{tmp}/garbage.ckpt"], "garbage.ckpt: truncated or not"),
    ("no GPU", [*MNIST, "--accelerator", "gpu"], "accelerator 'gpu': this machine has no gpu device"),
    ("devices abc", [*MNIST, "--devices", "abc"], "argument --devices: invalid value 'abc'"),
    ("report without results", ["report", "--results-dir", "{tmp}/none", "--out", "{tmp}/run"], "no results"),
    (
        "experiment: unknown setting",
        ["experiment", "arbitrary-lr", "--profile", "smoke", "--set", "epochz=1", "--results-dir", "{tmp}/run"],
        "epochz",
    ),
]


@pytest.mark.parametrize("case, argv, named", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line_and_exit_2(case, argv, named, workspace, capsys, monkeypatch):
    if case == "no GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(workspace)
    code = main([a.replace("{tmp}", str(workspace)) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"torchbop {argv[0]}: error: "), err
    assert named in lines[0] and "Traceback" not in out + err
    assert not (workspace / "run").exists() and not (workspace / "runs").exists()  # nothing written


@pytest.mark.realdata
def test_training_set_smaller_than_a_batch(data_dir, tmp_path, capsys):
    code = main(["train", "--recipe", "mnist", "--subset", "20", "--batch-size", "32", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "Invalid batch_size value: 32 (more than the 20 training images" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_debug_shows_the_traceback(workspace, monkeypatch):
    from torchbop.errors import UserError

    with pytest.raises(UserError, match="nope.yaml"):
        main(["--debug", "train", "--recipe", str(workspace / "nope.yaml")])
    monkeypatch.setenv("TORCHBOP_DEBUG", "1")
    with pytest.raises(UserError, match="nope.yaml"):
        main(["train", "--recipe", str(workspace / "nope.yaml")])


def test_the_installed_command_prints_no_traceback(tmp_path):
    """The same through a real process (the console entry point), where nothing catches what main lets through."""
    done = subprocess.run(
        [sys.executable, "-m", "torchbop.cli", "train", "--recipe", str(tmp_path / "x.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    shipped = ", ".join(available_recipes())
    assert done.stderr.strip().splitlines() == [
        f"torchbop train: error: Recipe file not found: {tmp_path}/x.yaml (shipped recipes: {shipped})"
    ]
    assert "cifar10_bireal" in shipped and "mnist" in shipped


class TestExperimentData:
    """``torchbop experiment`` checks (or, with --download, fetches) its datasets before any run."""

    ARGS = ["experiment", "arbitrary-lr", "--profile", "smoke"]

    def test_missing_data_lists_the_files_and_where_they_go(self, tmp_path, capsys):
        code = main([*self.ARGS, "--data-dir", str(tmp_path / "none"), "--results-dir", str(tmp_path / "res")])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert "mnist: 4 file(s) missing" in err and "--download" in err
        assert f"-> {tmp_path}/none/mnist/train-images-idx3-ubyte.gz" in err
        assert not (tmp_path / "res").exists()

    def test_offline_download_is_one_clear_message(self, tmp_path, capsys, monkeypatch):
        import urllib.error
        import urllib.request

        def offline(*args, **kwargs):
            raise urllib.error.URLError("no network")

        monkeypatch.setattr(urllib.request, "urlopen", offline)
        code = main(
            [*self.ARGS, "--download", "--data-dir", str(tmp_path / "none"), "--results-dir", str(tmp_path / "res")]
        )
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and "offline" in err
        assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in err
        assert not (tmp_path / "res").exists()
        assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing partial left behind

    @pytest.mark.realdata
    def test_download_fetches_what_is_missing(self, data_dir, tmp_path, capsys, monkeypatch):
        """From a file:// mirror (the real MNIST files) standing in for the canonical server: progress is shown, the
        files land in the data root, verified, and only then does the experiment run."""
        import dataclasses
        import hashlib

        import torchbop.data.mnist as mnist
        import torchbop.experiments.runner as runner

        mirror = tmp_path / "mirror"
        mirror.mkdir()
        patched = {}
        for split, files in mnist.MNIST_VARIANTS["mnist"].items():
            entries = []
            for remote, content_md5 in files:
                payload = (data_dir / "mnist" / remote.filename).read_bytes()
                (mirror / remote.filename).write_bytes(payload)
                md5 = hashlib.md5(payload).hexdigest()
                entries.append((dataclasses.replace(remote, base_url=mirror.as_uri() + "/", md5=md5), content_md5))
            patched[split] = tuple(entries)
        monkeypatch.setitem(mnist.MNIST_VARIANTS, "mnist", patched)
        ran = []
        monkeypatch.setattr(runner, "run_experiment", lambda *args, **kwargs: ran.append(kwargs) or {"failed": []})

        code = main(
            [*self.ARGS, "--download", "--data-dir", str(tmp_path / "root"), "--results-dir", str(tmp_path / "res")]
        )
        err = capsys.readouterr().err
        assert code == 0 and ran and ran[0]["data_dir"] == str(tmp_path / "root"), err
        names = sorted(remote.filename for files in patched.values() for remote, _ in files)
        assert sorted(p.name for p in (tmp_path / "root" / "mnist").iterdir()) == names
        assert "train-images-idx3-ubyte.gz" in err  # the progress lines
