"""CIFAR-10 batches: canonical-format pickles written here (Python 2 style by hand, Python 3 ones by numpy when it
is installed), read from a folder or a tar.gz; damaged and malicious pickles are ValueErrors naming the file.

Reading is tested with ``verify=False`` (the synthetic images are not CIFAR-10's). ``TestVerification`` checks the
content verification on synthetic batches made to pass it (the known digests and md5s monkeypatched to theirs);
``TestRealDataVerification`` changes one byte of a copy of the real files."""

import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import pytest
import torch

from torchbop.data import ChecksumError, DatasetNotFoundError, load_cifar10, read_cifar10_batch
from torchbop.data import cifar10 as cifar10_module
from torchbop.data.paths import RemoteFile
from torchbop.data.verify import image_set_digest

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


def py2_batch(
    raw: bytes,
    shape: tuple[int, ...],
    labels: list[int],
    *,
    dtype: bytes = b"u1",
    data_key: bytes = b"data",
    labels_key: bytes = b"labels",
) -> bytes:
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n"
        + _int(0)
        + b"\x85"
        + _string(b"b")
        + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
        + b"("
        + _int(1)  # state: (1, shape, dtype, False, raw)
        + b"("
        + b"".join(_int(s) for s in shape)
        + b"t"
        + b"cnumpy\ndtype\n"
        + _string(dtype)
        + _int(0)
        + _int(1)
        + b"\x87R"
        + b"("
        + _int(3)
        + _string(b"|")
        + b"NNN"
        + _int(-1)
        + _int(-1)
        + _int(0)
        + b"tb"
        + b"\x89"
        + _string(raw)
        + b"tb"
    )
    items = (
        _string(b"batch_label")
        + _string(b"training batch 1 of 5")
        + _string(labels_key)
        + b"]("
        + b"".join(_int(v) for v in labels)
        + b"e"
        + _string(data_key)
        + array
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
        path.write_bytes(
            pickle.dumps(
                {b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": [b"a.png"] * 4},
                protocol=protocol,
            )
        )
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
        with pytest.raises(
            ValueError,
            match=r"data_batch_1: 'data' declares shape \[3, 3072\] \(9216 bytes\) but "
            r"holds 6144 bytes",
        ):
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
            (
                dict(raw=bytes(2 * 3072), shape=(2, 3072), labels=[0, 1], labels_key=b"fine_labels"),
                "key 'labels' missing",
            ),
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
            x, y = load_cifar10(tmp_path, train=is_train, verify=False)
            assert x.shape == (len(labels), 3, 32, 32) and x.dtype == torch.uint8
            assert torch.equal(x, images) and torch.equal(y, labels)
        assert not (tmp_path / "cifar10" / "cifar-10-batches-py").exists() or source == "folder"  # not extracted

    def test_incomplete_folder_falls_back_to_archive(self, tmp_path):
        train, _ = write_canonical(tmp_path, folder=True, archive=True, skip=())
        (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3").unlink()
        x, _ = load_cifar10(tmp_path, train=True, verify=False)
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
        for expected in (
            "cifar-10-python.tar.gz",
            str(tmp_path / "cifar10" / "cifar-10-batches-py"),
            "download=True",
            "$TORCHBOP_DATA",
            "https://www.cs.toronto.edu/~kriz/",
        ):
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
        x, y = load_cifar10(tmp_path / "root", train=False, download=True, verify=False)
        assert torch.equal(x, images) and torch.equal(y, labels)
        assert (tmp_path / "root" / "cifar10" / "cifar-10-python.tar.gz").is_file()

    def test_download_checksum_mismatch(self, tmp_path, monkeypatch):
        remote, _, _ = self._mirror(tmp_path, md5="0" * 32)
        monkeypatch.setattr(cifar10_module, "_ARCHIVE", remote)
        with pytest.raises(ChecksumError, match="md5 .*, expected 0{32}"):
            load_cifar10(tmp_path / "root", train=False, download=True)
        assert not (tmp_path / "root").exists()  # the folders the download created are removed again


# ------------------------------------------------------------------------------------------------------------------
#  Content verification
# ------------------------------------------------------------------------------------------------------------------


def md5_of(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def digest_of(images: torch.Tensor, labels: torch.Tensor) -> str:
    return image_set_digest([(bytes(images.flatten().tolist()), labels.tolist())], 3 * 32 * 32)


def flip_pixel_byte(path, blob_images: torch.Tensor, index: int = 0) -> None:
    """Change one byte in the middle of the pixel data of a py2-style batch file written from ``blob_images``."""
    blob = bytearray(path.read_bytes())
    raw = bytes(blob_images.flatten().tolist())
    offset = blob.index(raw) + len(raw) // 2
    blob[offset] ^= 0x01
    path.write_bytes(bytes(blob))


@pytest.fixture
def known(tmp_path, monkeypatch):
    """Synthetic batches (6 images each, folder and archive) that pass verification: the table of content digests,
    the canonical md5s and the archive's md5 are monkeypatched to theirs. Returns ``(root, train, test)``."""
    monkeypatch.setattr(cifar10_module, "IMAGES_PER_BATCH", 6)
    train, test = write_canonical(tmp_path, folder=True, archive=True)
    monkeypatch.setitem(cifar10_module.CONTENT_DIGESTS, "train", digest_of(*train))
    monkeypatch.setitem(cifar10_module.CONTENT_DIGESTS, "test", digest_of(*test))
    batches = tmp_path / "cifar10" / "cifar-10-batches-py"
    for name in list(cifar10_module.CANONICAL_MD5):
        monkeypatch.setitem(cifar10_module.CANONICAL_MD5, name, md5_of(batches / name))
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    monkeypatch.setattr(cifar10_module, "_ARCHIVE", RemoteFile(archive.name, "file:///nowhere/", md5_of(archive)))
    return tmp_path, train, test


class TestVerification:
    def test_synthetic_data_fails_by_default(self, tmp_path, small_batches):
        write_canonical(tmp_path)
        with pytest.raises(ChecksumError) as info:
            load_cifar10(tmp_path, train=False)
        message = str(info.value)
        assert str(tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch") in message
        assert "verify=False" in message
        load_cifar10(tmp_path, train=False, verify=False)  # the escape hatch for synthetic files

    def test_verified_from_folder_and_from_archive(self, known):
        root, train, test = known
        for is_train, (images, labels) in ((True, train), (False, test)):
            x, y = load_cifar10(root, train=is_train)
            assert torch.equal(x, images) and torch.equal(y, labels)
        shutil.rmtree(root / "cifar10" / "cifar-10-batches-py")
        for is_train, (images, labels) in ((True, train), (False, test)):
            x, y = load_cifar10(root, train=is_train)
            assert torch.equal(x, images) and torch.equal(y, labels)

    def test_images_in_another_order_verify(self, known):
        """A faithful copy with the images re-shuffled across the five files (like the development copy)."""
        root, (images, labels), _ = known
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))
        images, labels = images[order], labels[order]
        for i in range(5):
            part = slice(6 * i, 6 * (i + 1))
            raw = bytes(images[part].flatten().tolist())
            (root / "cifar10" / "cifar-10-batches-py" / f"data_batch_{i + 1}").write_bytes(
                py2_batch(raw, (6, 3072), labels[part].tolist())
            )
        x, y = load_cifar10(root, train=True)
        assert torch.equal(x, images) and torch.equal(y, labels)

    def test_one_changed_pixel_byte_names_the_file(self, known):
        root, (images, _), _ = known
        path = root / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
        flip_pixel_byte(path, images[12:18])
        read_cifar10_batch(path, expected_count=6)  # still a well-formed batch: only the content check can tell
        with pytest.raises(ChecksumError) as info:
            load_cifar10(root, train=True)
        message = str(info.value)
        assert f"CIFAR-10 train: {path} is corrupt" in message
        assert "the only one of data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5" in message
        for fix in ("delete it", "download=True", "--download", "restore a good copy"):
            assert fix in message
        assert int((load_cifar10(root, train=True, verify=False)[0] != images).sum()) == 1
        load_cifar10(root, train=False)  # the test split is untouched

    def test_non_canonical_copy_lists_the_suspects(self, known, monkeypatch):
        """When files are not the canonical ones (a re-shuffled copy), every one of them is a suspect."""
        root, (images, _), _ = known
        for name in ("data_batch_3", "data_batch_4", "data_batch_5"):
            monkeypatch.setitem(cifar10_module.CANONICAL_MD5, name, "0" * 32)
        flip_pixel_byte(root / "cifar10" / "cifar-10-batches-py" / "data_batch_4", images[18:24])
        with pytest.raises(ChecksumError) as info:
            load_cifar10(root, train=True)
        message = str(info.value)
        assert "one or more of data_batch_3, data_batch_4, data_batch_5 is corrupt" in message
        assert "data_batch_1, data_batch_2 are byte-identical to the canonical files and so intact" in message
        assert "delete data_batch_3, data_batch_4, data_batch_5 and download CIFAR-10 again" in message
        assert str(root / "cifar10" / "cifar-10-batches-py") in message

    def test_no_canonical_file_all_are_suspects(self, known, monkeypatch):
        root, (images, _), _ = known
        for name in list(cifar10_module.CANONICAL_MD5):
            monkeypatch.setitem(cifar10_module.CANONICAL_MD5, name, "0" * 32)
        flip_pixel_byte(root / "cifar10" / "cifar-10-batches-py" / "data_batch_2", images[6:12])
        with pytest.raises(
            ChecksumError,
            match=r"data_batch_1, data_batch_2, data_batch_3, data_batch_4, "
            r"data_batch_5 in .*: one or more of these files is corrupt\. .*"
            r"delete them \(or the whole folder\)",
        ):
            load_cifar10(root, train=True)

    def test_changed_label_names_the_file(self, known):
        root, _, (images, labels) = known
        changed = labels.clone()
        changed[2] = (changed[2] + 1) % 10
        path = root / "cifar10" / "cifar-10-batches-py" / "test_batch"
        path.write_bytes(py2_batch(bytes(images.flatten().tolist()), (6, 3072), changed.tolist()))
        with pytest.raises(ChecksumError, match=f"CIFAR-10 test: {path} is corrupt"):
            load_cifar10(root, train=False)

    def test_swapped_image_and_label_pairs_detected(self, known):
        """Same images, same labels, but two labels exchanged between images: the pairs are what is checked."""
        root, _, (images, labels) = known
        i, j = next((i, j) for i in range(6) for j in range(6) if labels[i] != labels[j])
        swapped = labels.clone()
        swapped[i], swapped[j] = labels[j], labels[i]
        path = root / "cifar10" / "cifar-10-batches-py" / "test_batch"
        path.write_bytes(py2_batch(bytes(images.flatten().tolist()), (6, 3072), swapped.tolist()))
        with pytest.raises(ChecksumError):
            load_cifar10(root, train=False)

    def test_corrupt_archive_names_the_archive(self, known):
        root, _, (images, labels) = known
        shutil.rmtree(root / "cifar10" / "cifar-10-batches-py")
        archive = root / "cifar10" / "cifar-10-python.tar.gz"
        blob = bytearray(py2_batch(bytes(images.flatten().tolist()), (6, 3072), labels.tolist()))
        blob[len(blob) // 2] ^= 0x01  # inside the pixels: the pickle still reads
        with tarfile.open(archive, "w:gz") as tar:  # a well-formed archive whose test batch has one byte changed
            info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(bytes(blob)))
        with pytest.raises(ChecksumError) as info:
            load_cifar10(root, train=False)
        message = str(info.value)
        assert f"CIFAR-10 test: {archive} is corrupt" in message
        assert f"its md5 is {md5_of(archive)}, not the canonical" in message
        assert "delete it" in message and "--download" in message


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


@pytest.mark.realdata
class TestRealDataVerification:
    """One byte changed in a copy of the real files is caught, and named; the intact copies verify."""

    @pytest.fixture
    def real_batches(self, data_dir: Path) -> Path:
        folder = data_dir / "cifar10" / "cifar-10-batches-py"
        if not (folder / "test_batch").is_file():
            pytest.fail(f"real CIFAR-10 batches missing in {folder}", pytrace=False)
        return folder

    def _copy(self, real_batches: Path, root: Path, names: tuple[str, ...]) -> Path:
        folder = root / "cifar10" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name in names:
            shutil.copyfile(real_batches / name, folder / name)
        return folder

    def _flip_middle_byte(self, path: Path) -> None:
        """Change the middle byte of the file, which lies in the pixel data: the batch must still read, with one
        pixel changed (so that what fails below is the content check, not the format check)."""
        before, labels = read_cifar10_batch(path)
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        path.write_bytes(bytes(blob))
        after, same_labels = read_cifar10_batch(path)
        assert int((before != after).sum()) == 1 and torch.equal(labels, same_labels)

    def test_intact_copy_of_the_test_batch_loads(self, real_batches, tmp_path, real_cifar10):
        self._copy(real_batches, tmp_path, ("test_batch",))
        x, y = load_cifar10(tmp_path, train=False)
        assert torch.equal(x, real_cifar10["test"][0]) and torch.equal(y, real_cifar10["test"][1])

    def test_one_byte_changed_in_the_test_batch(self, real_batches, tmp_path):
        folder = self._copy(real_batches, tmp_path, ("test_batch",))
        self._flip_middle_byte(folder / "test_batch")
        with pytest.raises(ChecksumError) as info:
            load_cifar10(tmp_path, train=False)
        message = str(info.value)
        assert f"CIFAR-10 test: {folder / 'test_batch'} is corrupt" in message
        assert "delete it" in message and "--download" in message and "download=True" in message

    def test_one_byte_changed_in_a_train_batch(self, real_batches, tmp_path):
        folder = tmp_path / "cifar10" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in (1, 2, 4, 5):  # intact: links to the real files (read only through)
            (folder / f"data_batch_{i}").symlink_to(real_batches / f"data_batch_{i}")
        shutil.copyfile(real_batches / "data_batch_3", folder / "data_batch_3")
        self._flip_middle_byte(folder / "data_batch_3")
        with pytest.raises(ChecksumError) as info:
            load_cifar10(tmp_path, train=True)
        message = str(info.value)
        assert "CIFAR-10 train:" in message and "data_batch_3" in message and str(folder) in message
        canonical = all(
            md5_of(real_batches / f"data_batch_{i}") == cifar10_module.CANONICAL_MD5[f"data_batch_{i}"]
            for i in (1, 2, 4, 5)
        )
        if canonical:  # the canonical files: the corrupt one is named alone
            assert f"{folder / 'data_batch_3'} is corrupt" in message
        else:  # a re-ordered copy (the development one): all five are suspects
            assert "one or more of these files is corrupt" in message

    def test_archive_read_from_disk_is_verified(self, real_batches, tmp_path, real_cifar10):
        archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
        archive.parent.mkdir()
        blob = bytearray((real_batches / "test_batch").read_bytes())
        for changed in (False, True):
            if changed:
                blob[len(blob) // 2] ^= 0xFF
            with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
                info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(bytes(blob)))
            if not changed:
                x, y = load_cifar10(tmp_path, train=False)
                assert torch.equal(x, real_cifar10["test"][0]) and torch.equal(y, real_cifar10["test"][1])
        with pytest.raises(
            ChecksumError,
            match=f"CIFAR-10 test: {archive} is corrupt: .* its md5 is [0-9a-f]{{32}}, "
            f"not the canonical c58f30108f718f92721af3b95e74349a",
        ):
            load_cifar10(tmp_path, train=False)
