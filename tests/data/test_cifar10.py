"""CIFAR-10 batches: canonical-format pickles written here (Python 2 style by hand, Python 3 ones by numpy when it
is installed), read from a folder or a tar.gz; damaged and malicious pickles are ValueErrors naming the file."""

import hashlib
import io
import os
import pickle
import struct
import tarfile

import pytest
import torch

from torchbop.data import ChecksumError, DatasetNotFoundError, load_cifar10, read_cifar10_batch
from torchbop.data import cifar10 as cifar10_module
from torchbop.data.paths import RemoteFile


# ------------------------------------------------------------------------------------------------------------------
#  A Python 2 cPickle (protocol 2) of a CIFAR-10 batch, written opcode by opcode: str keys, an ndarray whose raw
#  bytes are a Python 2 str (BINSTRING), labels as a list of small ints. This is the layout of the canonical files.
# ------------------------------------------------------------------------------------------------------------------

def _string(s: bytes) -> bytes:
    return b"U" + bytes([len(s)]) + s if len(s) < 256 else b"T" + struct.pack("<I", len(s)) + s


def _int(i: int) -> bytes:
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if 0 <= i < 65536:
        return b"M" + struct.pack("<H", i)
    return b"J" + struct.pack("<i", i)


def py2_batch(raw: bytes, shape: tuple[int, ...], labels: list[int], *, dtype: bytes = b"u1",
              data_key: bytes = b"data", labels_key: bytes = b"labels") -> bytes:
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _int(0) + b"\x85" + _string(b"b")
        + b"\x87R"                                                   # _reconstruct(ndarray, (0,), 'b')
        + b"(" + _int(1)                                             # state: (1, shape, dtype, False, raw)
        + b"(" + b"".join(_int(s) for s in shape) + b"t"
        + b"cnumpy\ndtype\n" + _string(dtype) + _int(0) + _int(1) + b"\x87R"
        + b"(" + _int(3) + _string(b"|") + b"NNN" + _int(-1) + _int(-1) + _int(0) + b"tb"
        + b"\x89" + _string(raw) + b"tb"
    )
    items = (
        _string(b"batch_label") + _string(b"training batch 1 of 5")
        + _string(labels_key) + b"](" + b"".join(_int(v) for v in labels) + b"e"
        + _string(data_key) + array
    )
    return b"\x80\x02}(" + items + b"u."


def make_batch(n: int, seed: int, **kwargs) -> tuple[bytes, torch.Tensor, torch.Tensor]:
    """A py2-style batch of ``n`` random images, with the tensors it must decode to."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    raw = bytes(images.flatten().tolist())
    return py2_batch(raw, (n, 3072), labels.tolist(), **kwargs), images, labels


def write_canonical(root, n: int = 6, *, folder: bool = True, archive: bool = False, skip: tuple[str, ...] = ()):
    """Write the six batches (``n`` images each) under ``root/cifar10``; return the expected train/test tensors."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    parts = {name: make_batch(n, seed=i) for i, name in enumerate(names)}
    base = root / "cifar10"
    if folder:
        (base / "cifar-10-batches-py").mkdir(parents=True, exist_ok=True)
        for name, (blob, _, _) in parts.items():
            if name not in skip:
                (base / "cifar-10-batches-py" / name).write_bytes(blob)
    if archive:
        base.mkdir(parents=True, exist_ok=True)
        with tarfile.open(base / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, (blob, _, _) in [("readme.html", (b"<html/>", None, None)), *parts.items()]:
                if name in skip:
                    continue
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    train = [parts[f"data_batch_{i}"] for i in range(1, 6)]
    return (
        (torch.cat([p[1] for p in train]), torch.cat([p[2] for p in train])),
        (parts["test_batch"][1], parts["test_batch"][2]),
    )


@pytest.fixture
def small_batches(monkeypatch):
    """Synthetic batches hold 6 images, not 10,000."""
    monkeypatch.setattr(cifar10_module, "IMAGES_PER_BATCH", 6)


# ------------------------------------------------------------------------------------------------------------------


class TestBatchFormat:
    def test_python2_pickle(self, tmp_path):
        blob, images, labels = make_batch(7, seed=0)
        (tmp_path / "b").write_bytes(blob)
        x, y = read_cifar10_batch(tmp_path / "b", expected_count=7)
        assert x.dtype == torch.uint8 and x.shape == (7, 3, 32, 32)
        assert y.dtype == torch.int64
        assert torch.equal(x, images) and torch.equal(y, labels)

    def test_handwritten_pickle_is_what_numpy_reads(self):
        np = pytest.importorskip("numpy")
        blob, images, labels = make_batch(3, seed=1)
        batch = pickle.loads(blob, encoding="bytes")
        assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (3, 3072)
        assert torch.equal(torch.from_numpy(batch[b"data"].reshape(3, 3, 32, 32)), images)
        assert batch[b"labels"] == labels.tolist()

    @pytest.mark.parametrize("protocol", [2, 4, 5])
    @pytest.mark.parametrize("fortran", [False, True])
    def test_numpy_written_pickles(self, tmp_path, protocol, fortran):
        np = pytest.importorskip("numpy")
        rng = np.random.default_rng(protocol)
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        if fortran:
            data = np.asfortranarray(data)
        labels = [int(v) for v in rng.integers(0, 10, 4)]
        path = tmp_path / "b"
        path.write_bytes(pickle.dumps({b"batch_label": b"x", b"labels": labels, b"data": data,
                                       b"filenames": [b"a.png"] * 4}, protocol=protocol))
        x, y = read_cifar10_batch(path)
        assert torch.equal(x, torch.from_numpy(np.ascontiguousarray(data).reshape(4, 3, 32, 32)))
        assert y.tolist() == labels

    def test_str_keys_accepted(self, tmp_path):
        np = pytest.importorskip("numpy")
        path = tmp_path / "b"
        path.write_bytes(pickle.dumps({"labels": [1], "data": np.zeros((1, 3072), np.uint8)}, protocol=4))
        assert read_cifar10_batch(path)[1].tolist() == [1]


class TestDamagedBatches:
    def _write(self, tmp_path, blob):
        path = tmp_path / "data_batch_1"
        path.write_bytes(blob)
        return path

    def test_truncated(self, tmp_path):
        blob, _, _ = make_batch(5, seed=0)
        path = self._write(tmp_path, blob[: len(blob) // 2])
        with pytest.raises(ValueError, match="data_batch_1: not a readable CIFAR-10 batch pickle"):
            read_cifar10_batch(path)

    def test_garbage(self, tmp_path):
        path = self._write(tmp_path, os.urandom(1000))
        with pytest.raises(ValueError, match="data_batch_1: not a readable CIFAR-10 batch pickle"):
            read_cifar10_batch(path)

    def test_malicious_global_is_refused_not_called(self, tmp_path):
        target = tmp_path / "pwned"

        class Exploit:
            def __reduce__(self):
                return (os.mkdir, (str(target),))

        path = self._write(tmp_path, pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2))
        with pytest.raises(ValueError, match=r"global '(posix|nt|os)\.mkdir' is forbidden"):
            read_cifar10_batch(path)
        assert not target.exists()

    def test_declared_shape_larger_than_bytes(self, tmp_path):
        path = self._write(tmp_path, py2_batch(bytes(3072 * 2), (3, 3072), [0, 0, 0]))
        with pytest.raises(ValueError, match=r"data_batch_1: 'data' declares shape \[3, 3072\] \(9216 bytes\) but "
                                             r"holds 6144 bytes"):
            read_cifar10_batch(path)

    def test_malformed_shape(self, tmp_path):
        blob = py2_batch(bytes(6), (2, 3), [0, 0]).replace(b"K\x02K\x03t", b"U\x01xK\x03t")  # shape ('x', 3)
        with pytest.raises(ValueError, match="data_batch_1: 'data' is not a well-formed array"):
            read_cifar10_batch(self._write(tmp_path, blob))

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (dict(raw=bytes(2 * 3000), shape=(2, 3000), labels=[0, 0]), r"shape \[2, 3000\], expected \[n, 3072\]"),
            (dict(raw=bytes(2 * 3072), shape=(2, 3072), labels=[0]), "1 labels for 2 images"),
            (dict(raw=bytes(2 * 3072), shape=(2, 3072), labels=[0, 10]), r"labels outside 0\.\.9"),
            (dict(raw=bytes(4 * 3072), shape=(2, 3072), labels=[0, 1], dtype=b"<u2"), "dtype '<u2', expected uint8"),
            (dict(raw=bytes(2 * 3072), shape=(2, 3072), labels=[0, 1], labels_key=b"fine_labels"),
             "key 'labels' missing"),
        ],
    )
    def test_invalid_content(self, tmp_path, kwargs, message):
        path = self._write(tmp_path, py2_batch(**kwargs))
        with pytest.raises(ValueError, match=f"data_batch_1: .*{message}"):
            read_cifar10_batch(path)

    def test_wrong_count(self, tmp_path):
        blob, _, _ = make_batch(5, seed=0)
        with pytest.raises(ValueError, match="5 images, expected 10000"):
            read_cifar10_batch(self._write(tmp_path, blob), expected_count=10_000)

    def test_not_a_dict(self, tmp_path):
        with pytest.raises(ValueError, match="expected a pickled dict, got list"):
            read_cifar10_batch(self._write(tmp_path, pickle.dumps([1, 2], protocol=2)))


@pytest.mark.usefixtures("small_batches")
class TestLoadSplit:
    @pytest.mark.parametrize("source", ["folder", "archive"])
    def test_train_and_test(self, tmp_path, source):
        train, test = write_canonical(tmp_path, folder=source == "folder", archive=source == "archive")
        for is_train, (images, labels) in ((True, train), (False, test)):
            x, y = load_cifar10(tmp_path, train=is_train)
            assert x.shape == (len(labels), 3, 32, 32) and x.dtype == torch.uint8
            assert torch.equal(x, images) and torch.equal(y, labels)
        assert not (tmp_path / "cifar10" / "cifar-10-batches-py").exists() or source == "folder"  # not extracted

    def test_incomplete_folder_falls_back_to_archive(self, tmp_path):
        train, _ = write_canonical(tmp_path, folder=True, archive=True, skip=())
        (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3").unlink()
        x, _ = load_cifar10(tmp_path, train=True)
        assert torch.equal(x, train[0])

    def test_batch_of_wrong_size_rejected(self, tmp_path):
        write_canonical(tmp_path, n=5)
        with pytest.raises(ValueError, match="data_batch_1: 5 images, expected 6"):
            load_cifar10(tmp_path, train=True)

    def test_truncated_archive(self, tmp_path):
        write_canonical(tmp_path, folder=False, archive=True)
        archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
        archive.write_bytes(archive.read_bytes()[:-200])
        with pytest.raises(ValueError, match=r"cifar-10-python\.tar\.gz: corrupt or truncated archive"):
            load_cifar10(tmp_path, train=True)

    def test_archive_missing_member(self, tmp_path):
        write_canonical(tmp_path, folder=False, archive=True, skip=("test_batch",))
        with pytest.raises(ValueError, match="members cifar-10-batches-py/test_batch are missing"):
            load_cifar10(tmp_path, train=False)

    def test_not_a_gzip_archive(self, tmp_path):
        (tmp_path / "cifar10").mkdir()
        (tmp_path / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"not an archive at all")
        with pytest.raises(ValueError, match="corrupt or truncated archive"):
            load_cifar10(tmp_path, train=False)

    def test_missing(self, tmp_path):
        with pytest.raises(DatasetNotFoundError) as info:
            load_cifar10(tmp_path, train=True)
        message = str(info.value)
        for expected in ("cifar-10-python.tar.gz", str(tmp_path / "cifar10" / "cifar-10-batches-py"),
                         "download=True", "$TORCHBOP_DATA", "https://www.cs.toronto.edu/~kriz/"):
            assert expected in message

    def _mirror(self, tmp_path, md5=None):
        src = tmp_path / "src"
        train, test = write_canonical(src, folder=False, archive=True)
        archive = src / "cifar10" / "cifar-10-python.tar.gz"
        md5 = md5 or hashlib.md5(archive.read_bytes()).hexdigest()
        return RemoteFile(archive.name, archive.parent.as_uri(), md5), train, test

    def test_download(self, tmp_path, monkeypatch):
        remote, _, (images, labels) = self._mirror(tmp_path)
        monkeypatch.setattr(cifar10_module, "_ARCHIVE", remote)
        x, y = load_cifar10(tmp_path / "root", train=False, download=True)
        assert torch.equal(x, images) and torch.equal(y, labels)
        assert (tmp_path / "root" / "cifar10" / "cifar-10-python.tar.gz").is_file()

    def test_download_checksum_mismatch(self, tmp_path, monkeypatch):
        remote, _, _ = self._mirror(tmp_path, md5="0" * 32)
        monkeypatch.setattr(cifar10_module, "_ARCHIVE", remote)
        with pytest.raises(ChecksumError, match="md5 .*, expected 0{32}"):
            load_cifar10(tmp_path / "root", train=False, download=True)
        assert list((tmp_path / "root" / "cifar10").iterdir()) == []


@pytest.mark.realdata
class TestRealData:
    def test_counts_and_class_balance(self, real_cifar10):
        for split, n, per_class in (("train", 50_000, 5_000), ("test", 10_000, 1_000)):
            images, labels = real_cifar10[split]
            assert images.shape == (n, 3, 32, 32) and images.dtype == torch.uint8
            assert labels.shape == (n,) and labels.dtype == torch.int64
            assert torch.bincount(labels, minlength=10).tolist() == [per_class] * 10

    def test_pixels_are_natural_images(self, real_cifar10):
        images, _ = real_cifar10["test"]
        assert images.min() == 0 and images.max() == 255
        # Neighbouring pixels are close in real photos (mean step ~14 against a spread of ~54), unlike noise (~85)
        # or planes decoded in the wrong order (a height-width-channel reshape gives ~29).
        x = images[:500].float()
        horizontal_step = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
        assert horizontal_step < 0.35 * (x - x.mean()).abs().mean()
