"""fetch_datasets: download what is missing from a file:// mirror (never the network), with progress, then verify;
offline, one DatasetUnavailableError that says what to download, from where, and exactly where to put it."""

import gzip
import hashlib
import io
import pickle
import tarfile
import urllib.error
import urllib.request

import pytest
import torch

from torchbop.data import (
    ChecksumError,
    DatasetNotFoundError,
    DatasetUnavailableError,
    fetch_datasets,
    load_cifar10,
    load_mnist,
)
from torchbop.data import cifar10 as cifar10_module
from torchbop.data import mnist as mnist_module
from torchbop.data.fetch import missing_files
from torchbop.data.paths import RemoteFile
from torchbop.data.progress import format_size
from torchbop.data.verify import image_set_digest

MNIST_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
REAL_URLS = {  # what the offline message must point at: the canonical sources
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def point_mnist_at(monkeypatch, server, make_idx, variant: str, seed: int) -> None:
    """Write a small synthetic ``variant`` (6 train, 4 test images) to ``server/variant/`` and point the tables at it:
    its file:// URL, the md5 of each .gz and the md5 of each uncompressed file (so that verification passes)."""
    folder = server / variant
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    splits = {}
    for split, prefix, n in (("train", "train", 6), ("test", "t10k", 4)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g)
        entry = []
        for kind, tensor in (("images-idx3", images), ("labels-idx1", labels)):
            raw = make_idx(tensor)
            packed = gzip.compress(raw, mtime=0)
            name = f"{prefix}-{kind}-ubyte.gz"
            (folder / name).write_bytes(packed)
            entry.append((RemoteFile(name, folder.as_uri() + "/", md5(packed)), md5(raw)))
        splits[split] = tuple(entry)
    monkeypatch.setitem(mnist_module.MNIST_VARIANTS, variant, splits)


def point_cifar_at(monkeypatch, server, payload: bytes = b"an archive") -> bytes:
    """Put ``payload`` on the server as the CIFAR-10 archive and point the table at it (with its md5)."""
    folder = server / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cifar-10-python.tar.gz").write_bytes(payload)
    monkeypatch.setattr(
        cifar10_module, "_ARCHIVE", RemoteFile("cifar-10-python.tar.gz", folder.as_uri() + "/", md5(payload))
    )
    return payload


@pytest.fixture
def mirror(tmp_path, make_idx, monkeypatch):
    """A file:// server with synthetic MNIST and Fashion-MNIST (verifiable) and a CIFAR-10 archive (arbitrary bytes:
    tests that read it build a real one)."""
    server = tmp_path / "server"
    point_mnist_at(monkeypatch, server, make_idx, "mnist", seed=0)
    point_mnist_at(monkeypatch, server, make_idx, "fashion-mnist", seed=1)
    point_cifar_at(monkeypatch, server)
    return server


def leftovers(root):
    """Temporary download files anywhere under ``root``."""
    return [p for p in root.rglob("*") if p.name.endswith(".part")] if root.exists() else []


class TestFetch:
    def test_fresh_root_gets_everything_with_progress(self, mirror, tmp_path):
        root, out = tmp_path / "root", io.StringIO()
        assert fetch_datasets(["mnist", "fashion-mnist"], root, progress=out) == root  # verify=True: reads all
        for variant in ("mnist", "fashion-mnist"):
            assert sorted(p.name for p in (root / variant).iterdir()) == sorted(MNIST_NAMES)
            assert (root / variant / MNIST_NAMES[0]).read_bytes() == (mirror / variant / MNIST_NAMES[0]).read_bytes()
        text = out.getvalue()
        for variant in ("mnist", "fashion-mnist"):
            for name in MNIST_NAMES:
                assert f"Downloading {(mirror / variant / name).as_uri()}\n  to {root / variant / name}\n" in text
                size = format_size((mirror / variant / name).stat().st_size)
                assert f"  {variant}/{name}: {size} / {size} (100%)\n" in text
        assert leftovers(root) == []

    def test_only_missing_files_are_downloaded(self, mirror, tmp_path):
        root = tmp_path / "root"
        (root / "mnist").mkdir(parents=True)
        kept = (mirror / "mnist" / MNIST_NAMES[1]).read_bytes()
        (root / "mnist" / MNIST_NAMES[1]).write_bytes(kept)
        (root / "mnist" / MNIST_NAMES[3].removesuffix(".gz")).write_bytes(
            gzip.decompress((mirror / "mnist" / MNIST_NAMES[3]).read_bytes())
        )  # an uncompressed copy counts as present
        out = io.StringIO()
        fetch_datasets("mnist", root, progress=out)
        downloaded = [line.split("/")[-1] for line in out.getvalue().splitlines() if line.startswith("Downloading")]
        assert downloaded == [MNIST_NAMES[0], MNIST_NAMES[2]]
        out = io.StringIO()
        fetch_datasets(["mnist", "mnist"], root, progress=out)  # all there now: no download, no output
        assert out.getvalue() == ""

    def test_cifar10_archive_fetched_when_the_folder_is_incomplete(self, mirror, tmp_path):
        root = tmp_path / "root"
        batches = root / "cifar10" / "cifar-10-batches-py"
        batches.mkdir(parents=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)]:  # the train batches, but no test_batch
            (batches / name).write_bytes(b"")
        assert [(f.name, r.filename) for f, r in missing_files(["cifar10"], root)] == [
            ("cifar10", "cifar-10-python.tar.gz")
        ]
        fetch_datasets(["cifar10"], root, progress=False, verify=False)
        assert (root / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == b"an archive"
        assert missing_files(["cifar10"], root) == []
        (batches / "test_batch").write_bytes(b"")
        (root / "cifar10" / "cifar-10-python.tar.gz").unlink()
        assert missing_files(["cifar10"], root) == []  # a complete folder is enough

    def test_cifar10_downloaded_then_verified(self, tmp_path, monkeypatch):
        np = pytest.importorskip("numpy")  # numpy writes the batch pickles here
        monkeypatch.setattr(cifar10_module, "IMAGES_PER_BATCH", 2)
        rng = np.random.default_rng(0)
        buffer, digests = io.BytesIO(), {}
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
                parts = []
                for name in names:
                    data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
                    labels = [int(v) for v in rng.integers(0, 10, 2)]
                    parts.append((data.tobytes(), labels))
                    blob = pickle.dumps({b"data": data, b"labels": labels}, protocol=2)
                    info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
                digests[split] = image_set_digest(parts, 3072)
        point_cifar_at(monkeypatch, tmp_path / "server", buffer.getvalue())
        root = tmp_path / "root"
        with pytest.raises(ChecksumError, match=r"CIFAR-10 train: .*cifar-10-python\.tar\.gz are not CIFAR-10's"):
            fetch_datasets(["cifar10"], root, progress=False)
        assert (root / "cifar10" / "cifar-10-python.tar.gz").is_file()  # the download itself was complete
        for split, digest in digests.items():
            monkeypatch.setitem(cifar10_module.CONTENT_DIGESTS, split, digest)
        fetch_datasets(["cifar10"], root, progress=False)
        assert load_cifar10(root, train=False)[0].shape == (2, 3, 32, 32)

    def test_corrupt_local_file_is_named(self, mirror, tmp_path):
        root = tmp_path / "root"
        fetch_datasets(["fashion-mnist"], root, progress=False)
        path = root / "fashion-mnist" / MNIST_NAMES[2]
        raw = bytearray(gzip.decompress(path.read_bytes()))
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(gzip.compress(bytes(raw)))
        with pytest.raises(ChecksumError, match=f"{path}: content md5 .* Fix: delete it and download it again"):
            fetch_datasets(["fashion-mnist"], root, progress=False)
        fetch_datasets(["fashion-mnist"], root, progress=False, verify=False)  # present, so nothing to do

    def test_wrong_md5_from_the_server(self, mirror, tmp_path, monkeypatch):
        bad = RemoteFile("cifar-10-python.tar.gz", (mirror / "cifar10").as_uri() + "/", "0" * 32)
        monkeypatch.setattr(cifar10_module, "_ARCHIVE", bad)
        root = tmp_path / "root"
        with pytest.raises(ChecksumError, match="Checksum mismatch .* put it at .*cifar-10-python.tar.gz"):
            fetch_datasets(["cifar10"], root, progress=False)
        assert not root.exists()

    def test_unknown_name(self, tmp_path):
        with pytest.raises(ValueError, match="Unknown dataset.*'cifar100'.*mnist, fashion-mnist, cifar10"):
            fetch_datasets(["mnist", "cifar100"], tmp_path)
        assert list(tmp_path.iterdir()) == []

    def test_loaders_show_progress_too(self, mirror, tmp_path, capsys):
        load_mnist(tmp_path / "root", train=False, download=True)
        err = capsys.readouterr().err
        assert "Downloading" in err and f"mnist/{MNIST_NAMES[2]}: " in err and "(100%)" in err


class TestOffline:
    def test_every_missing_file_named_with_url_md5_and_destination(self, tmp_path, monkeypatch):
        """The canonical URLs, and urlopen failing as it does without a network."""

        def offline(*args, **kwargs):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

        monkeypatch.setattr(urllib.request, "urlopen", offline)
        root = tmp_path / "root"
        with pytest.raises(DatasetUnavailableError) as info:
            fetch_datasets(["mnist", "fashion-mnist", "cifar10"], root, progress=io.StringIO())
        error = info.value
        assert isinstance(error, DatasetNotFoundError) and isinstance(error, OSError)
        message = str(error)
        assert "Temporary failure in name resolution" in message and "offline" in message
        for variant in ("mnist", "fashion-mnist"):
            for name in MNIST_NAMES:
                remote = next(
                    r for s in mnist_module.MNIST_VARIANTS[variant].values() for r, _ in s if r.filename == name
                )
                assert f"  {REAL_URLS[variant]}{name}  (md5 {remote.md5})\n    -> {root / variant / name}\n" in message
        archive_md5 = cifar10_module._ARCHIVE.md5
        assert (
            f"  {REAL_URLS['cifar10']}cifar-10-python.tar.gz  (md5 {archive_md5})\n"
            f"    -> {root / 'cifar10' / 'cifar-10-python.tar.gz'}"
        ) in message
        assert f"The data root {root} comes from the data_dir argument" in message
        assert "$TORCHBOP_DATA" in message and "--data-dir" in message
        assert not root.exists()  # no partial file, no temporary file, no empty folder

    def test_root_from_the_environment_is_named(self, tmp_path, monkeypatch):
        monkeypatch.setenv("TORCHBOP_DATA", str(tmp_path / "env-root"))
        monkeypatch.setattr(
            urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("no route to host"))
        )
        with pytest.raises(DatasetUnavailableError, match=r"The data root .*env-root comes from \$TORCHBOP_DATA"):
            fetch_datasets(["cifar10"], progress=False)

    def test_failure_midway_keeps_complete_files_and_lists_the_rest(self, mirror, tmp_path):
        """The mirror loses one file: those fetched before it stay (complete, checked), it and the rest are listed."""
        (mirror / "mnist" / MNIST_NAMES[1]).unlink()
        root, out = tmp_path / "root", io.StringIO()
        with pytest.raises(DatasetUnavailableError) as info:
            fetch_datasets(["mnist", "cifar10"], root, progress=out)
        message = str(info.value)
        assert f"Could not download {(mirror / 'mnist' / MNIST_NAMES[1]).as_uri()}" in message
        listed = [line.strip().removeprefix("-> ") for line in message.splitlines() if line.strip().startswith("->")]
        assert listed == [str(root / "mnist" / n) for n in MNIST_NAMES[1:]] + [
            str(root / "cifar10" / "cifar-10-python.tar.gz")
        ]
        assert [p.name for p in (root / "mnist").iterdir()] == [MNIST_NAMES[0]]  # complete, nothing partial
        assert leftovers(root) == []
        assert f"mnist/{MNIST_NAMES[0]}: " in out.getvalue()

    def test_loader_with_download_offline(self, tmp_path, monkeypatch):
        """load_cifar10(download=True) from a mirror that does not exist: the same message, nothing left behind."""
        archive = cifar10_module._ARCHIVE
        monkeypatch.setattr(
            cifar10_module,
            "_ARCHIVE",
            RemoteFile(archive.filename, (tmp_path / "no-server").as_uri() + "/", archive.md5),
        )
        root = tmp_path / "root"
        with pytest.raises(DatasetUnavailableError, match=r"-> .*/root/cifar10/cifar-10-python\.tar\.gz"):
            load_cifar10(root, train=False, download=True)
        assert not root.exists()

    def test_http_error_is_not_called_offline(self, tmp_path, monkeypatch):
        def not_found(request, *args, **kwargs):
            raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)

        monkeypatch.setattr(urllib.request, "urlopen", not_found)
        with pytest.raises(DatasetUnavailableError) as info:
            fetch_datasets(["cifar10"], tmp_path / "root", progress=False)
        message = str(info.value)
        assert "HTTP Error 404: Not Found" in message and "The server refused the file." in message
        assert "offline" not in message
