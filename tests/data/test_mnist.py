"""MNIST / Fashion-MNIST loading: synthetic files for the checks, the real files for the counts."""

import gzip
import hashlib

import pytest
import torch

from torchbop.data import DatasetNotFoundError, load_mnist
from torchbop.data import mnist as mnist_module
from torchbop.data.paths import RemoteFile

TRAIN_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


@pytest.fixture
def synthetic(tmp_path, write_idx):
    """A data root with a small synthetic ``mnist/`` train split: 12 images, labels 0..9 and two more."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 7], dtype=torch.uint8)
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_idx(folder / TRAIN_NAMES[0], images)
    write_idx(folder / TRAIN_NAMES[1], labels)
    return tmp_path, images, labels


class TestSynthetic:
    def test_loads_images_and_labels(self, synthetic):
        root, images, labels = synthetic
        x, y = load_mnist(root, train=True, verify=False)
        assert x.dtype == torch.uint8 and x.shape == (12, 28, 28)
        assert y.dtype == torch.int64
        assert torch.equal(x, images) and torch.equal(y, labels.long())

    def test_verify_rejects_content_that_is_not_mnist(self, synthetic):
        root, _, _ = synthetic
        with pytest.raises(ValueError, match="content md5 .* differs"):
            load_mnist(root, train=True)

    def test_uncompressed_files_accepted(self, tmp_path, write_idx):
        folder = tmp_path / "fashion-mnist"
        folder.mkdir()
        write_idx(folder / "t10k-images-idx3-ubyte", torch.zeros(3, 28, 28, dtype=torch.uint8), gz=False)
        write_idx(folder / "t10k-labels-idx1-ubyte", torch.tensor([1, 2, 3], dtype=torch.uint8), gz=False)
        x, y = load_mnist(tmp_path, train=False, variant="fashion-mnist", verify=False)
        assert x.shape == (3, 28, 28) and y.tolist() == [1, 2, 3]

    def test_count_mismatch(self, synthetic, write_idx):
        root, _, _ = synthetic
        write_idx(root / "mnist" / TRAIN_NAMES[1], torch.zeros(11, dtype=torch.uint8))
        with pytest.raises(ValueError, match="12 images in .* but 11 labels in"):
            load_mnist(root, verify=False)

    def test_label_out_of_range(self, synthetic, write_idx):
        root, _, _ = synthetic
        write_idx(root / "mnist" / TRAIN_NAMES[1], torch.full((12,), 10, dtype=torch.uint8))
        with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: label 10 outside 0\.\.9"):
            load_mnist(root, verify=False)

    def test_wrong_image_size(self, synthetic, write_idx):
        root, _, _ = synthetic
        write_idx(root / "mnist" / TRAIN_NAMES[0], torch.zeros(12, 32, 32, dtype=torch.uint8))
        with pytest.raises(ValueError, match=r"images are \(32, 32\), expected 28x28"):
            load_mnist(root, verify=False)

    def test_images_and_labels_swapped(self, synthetic, write_idx):
        root, _, _ = synthetic
        write_idx(root / "mnist" / TRAIN_NAMES[0], torch.zeros(12, dtype=torch.uint8))
        with pytest.raises(ValueError, match="magic number 2049"):
            load_mnist(root, verify=False)

    def test_unknown_variant(self, tmp_path):
        with pytest.raises(ValueError, match="Invalid variant: 'kmnist'"):
            load_mnist(tmp_path, variant="kmnist")


class TestMissingAndDownload:
    def test_missing_names_files_folders_and_remedies(self, tmp_path):
        with pytest.raises(DatasetNotFoundError) as info:
            load_mnist(tmp_path, train=False)
        message = str(info.value)
        assert isinstance(info.value, FileNotFoundError)
        for expected in (
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
            str(tmp_path / "mnist"),
            "the data_dir argument",
            "$TORCHBOP_DATA",
            "download=True",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ):
            assert expected in message

    def test_root_from_environment(self, synthetic, monkeypatch):
        root, images, _ = synthetic
        monkeypatch.setenv("TORCHBOP_DATA", str(root))
        x, _ = load_mnist(None, train=True, verify=False)
        assert torch.equal(x, images)

    def _mirror(self, tmp_path, make_idx, images, labels):
        """A file:// mirror of a synthetic train split, and the table entry that points at it."""
        mirror = tmp_path / "mirror"
        mirror.mkdir()
        entry = []
        for name, array in zip(TRAIN_NAMES, (images, labels)):
            raw = make_idx(array)
            packed = gzip.compress(raw)
            (mirror / name).write_bytes(packed)
            remote = RemoteFile(name, mirror.as_uri() + "/", hashlib.md5(packed).hexdigest())
            entry.append((remote, hashlib.md5(raw).hexdigest()))
        return tuple(entry)

    def test_download_fetches_verifies_and_loads(self, tmp_path, make_idx, monkeypatch):
        images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
        labels = torch.tensor([9, 0, 4, 2], dtype=torch.uint8)
        train = self._mirror(tmp_path, make_idx, images, labels)
        monkeypatch.setitem(mnist_module.MNIST_VARIANTS, "mnist", {"train": train, "test": train})
        root = tmp_path / "root"
        x, y = load_mnist(root, train=True, download=True)  # verify=True: the content md5s of the mirror
        assert torch.equal(x, images) and y.tolist() == [9, 0, 4, 2]
        assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(TRAIN_NAMES)

    def test_download_checksum_mismatch_keeps_nothing(self, tmp_path, make_idx, monkeypatch):
        from torchbop.data import ChecksumError

        images = torch.zeros(2, 28, 28, dtype=torch.uint8)
        (img, img_md5), lab = self._mirror(tmp_path, make_idx, images, torch.tensor([1, 2], dtype=torch.uint8))
        corrupt = (RemoteFile(img.filename, img.base_url, "f" * 32), img_md5)
        monkeypatch.setitem(mnist_module.MNIST_VARIANTS, "mnist", {"train": (corrupt, lab), "test": (corrupt, lab)})
        root = tmp_path / "root"
        with pytest.raises(ChecksumError, match="Checksum mismatch"):
            load_mnist(root, train=True, download=True)
        assert not root.exists()  # no file, no temporary file, and the folders the download created are gone


@pytest.mark.realdata
class TestRealData:
    @pytest.mark.parametrize("variant", ["mnist", "fashion-mnist"])
    def test_counts_shapes_and_classes(self, real_mnist, variant):
        for split, n in (("train", 60_000), ("test", 10_000)):
            images, labels = real_mnist[variant][split]
            assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
            assert labels.shape == (n,) and labels.dtype == torch.int64
            counts = torch.bincount(labels, minlength=10)
            assert len(counts) == 10 and counts.min() > 0.08 * n  # every class present, none tiny

    def test_fashion_is_balanced_and_differs_from_mnist(self, real_mnist):
        _, fashion_labels = real_mnist["fashion-mnist"]["train"]
        assert torch.bincount(fashion_labels).tolist() == [6000] * 10
        assert not torch.equal(real_mnist["mnist"]["test"][0], real_mnist["fashion-mnist"]["test"][0])
