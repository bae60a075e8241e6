"""MNIST and Fashion-MNIST: four IDX files each, loaded as uint8 images and int64 labels.

Files live in ``<root>/mnist/`` or ``<root>/fashion-mnist/`` under their canonical names
(``train-images-idx3-ubyte.gz``, ...); an uncompressed copy without the ``.gz`` suffix is accepted too.

Every file is verified by the md5 of its *uncompressed* content: the same data arrives in different gzip wrappers
(the canonical downloads, distribution packages, re-compressed copies), and the content is what matters. Downloads
are additionally checked against the md5 of the canonical ``.gz`` file before they are kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from torchbop.data.idx import read_idx
from torchbop.data.paths import RemoteFile, describe_data_dir, ensure_files, resolve_data_dir

__all__ = ["MNIST_VARIANTS", "load_mnist", "missing_files"]

_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # yann.lecun.com no longer serves the files
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# variant -> split -> (images, labels): the canonical download (name, url, md5 of the .gz) and the md5 of the
# uncompressed IDX content. MNIST content md5s are the originals'; Fashion-MNIST's are those of the upstream files.
_Files = tuple[tuple[RemoteFile, str], tuple[RemoteFile, str]]
MNIST_VARIANTS: dict[str, dict[str, _Files]] = {
    "mnist": {
        "train": (
            (
                RemoteFile("train-images-idx3-ubyte.gz", _MNIST_URL, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                "6bbc9ace898e44ae57da46a324031adb",
            ),
            (
                RemoteFile("train-labels-idx1-ubyte.gz", _MNIST_URL, "d53e105ee54ea40749a09fcbcd1e9432"),
                "a25bea736e30d166cdddb491f175f624",
            ),
        ),
        "test": (
            (
                RemoteFile("t10k-images-idx3-ubyte.gz", _MNIST_URL, "9fb629c4189551a2d022fa330f9573f3"),
                "2646ac647ad5339dbf082846283269ea",
            ),
            (
                RemoteFile("t10k-labels-idx1-ubyte.gz", _MNIST_URL, "ec29112dd5afa0611ce80d1b7f02629c"),
                "27ae3e4e09519cfbb04c329615203637",
            ),
        ),
    },
    "fashion-mnist": {
        "train": (
            (
                RemoteFile("train-images-idx3-ubyte.gz", _FASHION_URL, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            ),
            (
                RemoteFile("train-labels-idx1-ubyte.gz", _FASHION_URL, "25c81989df183df01b3e8a0aad5dffbe"),
                "9018921c3c673c538a1fc5bad174d6f9",
            ),
        ),
        "test": (
            (
                RemoteFile("t10k-images-idx3-ubyte.gz", _FASHION_URL, "bef4ecab320f06d8554ea6380940ec79"),
                "8181f5470baa50b63fa0f6fddb340f0a",
            ),
            (
                RemoteFile("t10k-labels-idx1-ubyte.gz", _FASHION_URL, "bb300cfdad3c16e7a12a480ee83cd310"),
                "15d484375f8d13e6eb1aabb0c3f46965",
            ),
        ),
    },
}

_NUM_CLASSES = 10
_SIDE = 28


def _locate(folder: Path, remote: RemoteFile) -> Path | None:
    """The file on disk: the canonical ``.gz`` name, else the same name uncompressed, else None."""
    for candidate in (folder / remote.filename, folder / remote.filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def missing_files(root: Path, variant: str) -> list[tuple[Path, RemoteFile]]:
    """The files of ``variant`` (both splits) that are not under ``root``, as ``(folder, remote)`` pairs.

    Example:
        >>> [f.filename for _, f in missing_files(Path("/nonexistent"), "mnist")][:2]
        ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz']
    """
    if variant not in MNIST_VARIANTS:
        raise ValueError(f"Invalid variant: {variant!r}; expected one of {sorted(MNIST_VARIANTS)}")
    folder = root / variant
    return [
        (folder, remote)
        for split in ("train", "test")
        for remote, _ in MNIST_VARIANTS[variant][split]
        if _locate(folder, remote) is None
    ]


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    train: bool = True,
    variant: str = "mnist",
    download: bool = False,
    *,
    verify: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of MNIST or Fashion-MNIST.

    Args:
        root: the data root (see :func:`~torchbop.data.paths.resolve_data_dir`); the files are in
            ``<root>/<variant>/``. ``None`` uses ``$TORCHBOP_DATA`` or ``~/.cache/torchbop``.
        train: the 60,000-image training split if true, else the 10,000-image test split.
        variant: ``"mnist"`` or ``"fashion-mnist"``.
        download: fetch missing files from the canonical source (checksummed, progress on stderr) instead of
            raising.
        verify: check each file's uncompressed content against its known md5. Leave on for the real datasets;
            turn off only for synthetic files in the same format.

    Returns:
        ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]`` with values in 0..9.

    Raises:
        DatasetNotFoundError: files are missing and ``download`` is false.
        DatasetUnavailableError: the download failed (offline); the message says what to fetch and where to put it.
        ChecksumError: a file's content md5 is not the known one; the message names the file and the fix.
        ValueError: an unknown variant, an unreadable file, or images and labels that disagree.
    """
    if variant not in MNIST_VARIANTS:
        raise ValueError(f"Invalid variant: {variant!r}; expected one of {sorted(MNIST_VARIANTS)}")
    split = "train" if train else "test"
    (images_remote, images_md5), (labels_remote, labels_md5) = MNIST_VARIANTS[variant][split]
    folder = resolve_data_dir(root) / variant

    paths = [_locate(folder, r) for r in (images_remote, labels_remote)]
    if any(p is None for p in paths):
        missing = [r for r, p in zip((images_remote, labels_remote), paths) if p is None]
        ensure_files(
            folder, missing, dataset=f"{variant} {split}", download=download, data_dir_source=describe_data_dir(root)
        )
        paths = [_locate(folder, r) for r in (images_remote, labels_remote)]
    images_path, labels_path = paths
    assert images_path is not None and labels_path is not None

    images = read_idx(images_path, ndim=3, expected_md5=images_md5 if verify else None)
    labels = read_idx(labels_path, ndim=1, expected_md5=labels_md5 if verify else None)
    if images.shape[1:] != (_SIDE, _SIDE):
        raise ValueError(f"{images_path}: images are {tuple(images.shape[1:])}, expected {_SIDE}x{_SIDE}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{variant} {split}: {images.shape[0]} images in {images_path} but {labels.shape[0]} labels in "
            f"{labels_path}"
        )
    if labels.numel() and int(labels.max()) >= _NUM_CLASSES:
        raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0..{_NUM_CLASSES - 1}")
    return images, labels.long()
