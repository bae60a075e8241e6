"""CIFAR-10 from its python-pickle batches, without numpy and without trusting the pickles.

The canonical archive ``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5``
(50,000 training images) and ``test_batch`` (10,000). Each batch is a pickled dict: ``data`` is a numpy uint8 array
``[10000, 3072]`` whose rows are the R, G and B planes of a 32x32 image, ``labels`` a list of ints in 0..9.
:func:`load_cifar10` reads the extracted folder ``<root>/cifar10/cifar-10-batches-py/`` when it is there, else the
members of ``<root>/cifar10/cifar-10-python.tar.gz`` straight from the archive (nothing is extracted to disk).

Unpickling can run arbitrary code, so batches are read with :class:`_BatchUnpickler`, which resolves only the
handful of globals a numpy array needs (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``
and, for protocol 5, ``numpy.core.numeric._frombuffer``, under numpy 1 and 2 module names) and maps them to inert
stand-ins that record shape, dtype and raw bytes. Any other global (``os.system``, ...) is refused. The array is
then rebuilt with torch, so numpy need not be installed.

Verification. Every split :func:`load_cifar10` reads is checked against :data:`CONTENT_DIGESTS`, the
order-independent digest of its (label, image) pairs (:func:`~torchbop.data.verify.image_set_digest`), whether it
comes from the extracted batches or from the archive (which is so verified each time it is read, not only when it
is downloaded). So the canonical batch files, the canonical archive and any faithful copy of the data in another
order or pickle protocol all verify, and a single changed byte anywhere in the pixels or labels does not. (A byte
checksum of each batch file could not do this: a copy with its images in another order, like the development copy,
has other checksums.) It costs about 0.2 s for train and test together, on one core.

When a split fails, the error (a :class:`~torchbop.data.paths.ChecksumError`) names the corrupt file and the fix.
Which file: each is compared with its canonical md5 (:data:`CANONICAL_MD5`, as torchvision lists them); a file
byte-identical to its canonical version is intact, so when one file of the split differs from its canonical version
it is the corrupt one. Files that are all non-canonical (a re-ordered copy) are named together as suspects; an
archive is named with its md5 against the canonical one. ``verify=False`` skips the check, for synthetic files in
the same format. :func:`read_cifar10_batch` reads one batch and validates its format only: a batch alone has no
known content.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from torchbop.data.paths import (
    ChecksumError,
    RemoteFile,
    describe_data_dir,
    ensure_files,
    resolve_data_dir,
)
from torchbop.data.verify import file_md5, image_set_digest

__all__ = ["CANONICAL_MD5", "CIFAR10_CLASSES", "CONTENT_DIGESTS", "load_cifar10", "missing_files", "read_cifar10_batch"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_ARCHIVE = RemoteFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/", "c58f30108f718f92721af3b95e74349a")
_BATCHES_DIR = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCHES = ("test_batch",)
IMAGES_PER_BATCH = 10_000  # every canonical batch holds exactly this many images
_PIXELS = 3 * 32 * 32

# md5 of each file of the canonical archive's cifar-10-batches-py/ (as torchvision lists them).
CANONICAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
# image_set_digest of each split's 50,000 / 10,000 (label, 3072 pixel bytes) pairs: the same for any ordering.
# Computed from a pixel-exact copy of CIFAR-10 (whose per-channel means, 125.30691805 122.95039414 113.86538318 for
# train and 126.02464141 123.70850420 114.85431865 for test, are the published ones, so the splits are the originals).
CONTENT_DIGESTS = {
    "train": "e1712812f70329e680f3503a3db620c1109ca483611df8a99005f4e187a4712e",
    "test": "034f02e415c014013a0afacf36b7dab6f5118bae3db357b873f935eae9993e6e",
}


# ------------------------------------------------------------------------------------------------------------------
#  Restricted unpickling
# ------------------------------------------------------------------------------------------------------------------


class _Dtype:
    """Stands in for ``numpy.dtype(spec, align, copy)``: keeps the spec string ('u1')."""

    def __init__(self, spec: Any, *_: Any) -> None:
        self.spec = spec.decode("latin1") if isinstance(spec, bytes) else str(spec)

    def __setstate__(self, state: Any) -> None:  # (version, byteorder, ...): irrelevant for single bytes
        self.state = state


class _Array:
    """Stands in for a numpy array: shape, dtype, Fortran order and the raw bytes."""

    shape: tuple[int, ...] = ()
    dtype: Any = None
    fortran: bool = False
    raw: bytes | bytearray = b""

    def __setstate__(self, state: Any) -> None:
        # ndarray.__setstate__ takes (version, shape, dtype, is_fortran, rawdata) or the same without version.
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError(f"unexpected ndarray state of type {type(state).__name__}")
        shape, dtype, fortran, raw = state[-4:]
        self.shape, self.dtype, self.fortran = tuple(shape), dtype, bool(fortran)
        self.raw = raw.encode("latin1") if isinstance(raw, str) else raw  # Python 2 str read with encoding="latin1"


def _reconstruct(cls: Any, shape: Any, dtype_char: Any) -> _Array:  # numpy.core.multiarray._reconstruct
    return _Array()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> _Array:  # protocol 5: numpy _frombuffer
    if not isinstance(buffer, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        raise pickle.UnpicklingError(f"_frombuffer expects a buffer, got {type(buffer).__name__}")
    array = _Array()
    array.__setstate__((shape, dtype, order == "F", bytes(buffer)))
    return array


def _codecs_encode(text: str, encoding: str = "latin1") -> bytes:  # how protocol 2 stores Python 3 bytes
    if not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode expects a str, got {type(text).__name__}")
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _Array,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _codecs_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals needed to rebuild a numpy array, as inert stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden in a CIFAR-10 batch") from None


# ------------------------------------------------------------------------------------------------------------------
#  One batch
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """A decoded, validated batch: ``len(labels)`` images of 3072 bytes back to back (row-major), and the labels."""

    pixels: bytes | bytearray
    labels: list[int]


def _array_pixels(array: _Array, name: str) -> bytes | bytearray:
    """The bytes of a ``[n, 3072]`` uint8 array in row-major order, after checking dtype, shape and size."""
    spec = getattr(array.dtype, "spec", None)
    if spec not in ("u1", "|u1", "uint8", "B"):
        raise ValueError(f"{name}: 'data' has dtype {spec!r}, expected uint8")
    well_formed = all(type(size) is int and size >= 0 for size in array.shape)
    if not well_formed or not isinstance(array.raw, (bytes, bytearray)):
        raise ValueError(f"{name}: 'data' is not a well-formed array (shape {array.shape!r})")
    count = 1
    for size in array.shape:
        count *= size
    if len(array.raw) != count:
        raise ValueError(
            f"{name}: 'data' declares shape {list(array.shape)} ({count} bytes) but holds {len(array.raw)} bytes"
        )
    if len(array.shape) != 2 or array.shape[1] != _PIXELS:
        raise ValueError(f"{name}: 'data' has shape {list(array.shape)}, expected [n, {_PIXELS}]")
    n = array.shape[0]
    if array.fortran and n > 1:  # column-major: element (i, j) is raw[j * n + i], so row i is raw[i::n]
        return b"".join(array.raw[i::n] for i in range(n))
    return array.raw


def _decode_batch(file: BinaryIO, name: str, expected_count: int | None) -> _Batch:
    """Unpickle (restricted) and validate one batch; see :func:`read_cifar10_batch`."""
    try:
        batch = _BatchUnpickler(file, encoding="bytes").load()
    except Exception as e:  # truncation (EOFError), garbage (UnpicklingError, ValueError, ...), forbidden globals
        raise ValueError(f"{name}: not a readable CIFAR-10 batch pickle ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{name}: expected a pickled dict, got {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise ValueError(f"{name}: key {key!r} missing (keys: {sorted(map(str, batch))})")
    if not isinstance(batch["data"], _Array):
        raise ValueError(f"{name}: 'data' is a {type(batch['data']).__name__}, expected a numpy array")
    pixels = _array_pixels(batch["data"], name)
    n = len(pixels) // _PIXELS
    if expected_count is not None and n != expected_count:
        raise ValueError(f"{name}: {n} images, expected {expected_count}")
    labels = batch["labels"]
    if not isinstance(labels, (list, tuple)) or not all(type(v) is int for v in labels):
        raise ValueError(f"{name}: 'labels' must be a list of ints")
    if len(labels) != n:
        raise ValueError(f"{name}: {len(labels)} labels for {n} images")
    if labels and (min(labels) < 0 or max(labels) >= len(CIFAR10_CLASSES)):
        raise ValueError(f"{name}: labels outside 0..9 (min {min(labels)}, max {max(labels)})")
    return _Batch(pixels, list(labels))


def _to_tensors(batches: Sequence[_Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate batches into uint8 ``[N, 3, 32, 32]`` images and int64 ``[N]`` labels, copying the pixels once."""
    buffer = bytearray()
    for b in batches:
        buffer += b.pixels  # faster than filling a preallocated bytearray, which first writes zeros
    flat = torch.frombuffer(buffer, dtype=torch.uint8) if buffer else torch.empty(0, dtype=torch.uint8)
    labels = torch.tensor([label for b in batches for label in b.labels], dtype=torch.int64)
    return flat.reshape(-1, 3, 32, 32), labels


def read_cifar10_batch(
    file: str | os.PathLike[str] | BinaryIO, *, name: str | None = None, expected_count: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR-10 batch pickle safely and validate its format (not its content: see :func:`load_cifar10`).

    Args:
        file: a path, or a binary file object (a tar member).
        name: how to call it in error messages (defaults to the path).
        expected_count: if given, the number of images the batch must hold (10,000 for the canonical batches).

    Returns:
        ``(images, labels)``: uint8 ``[n, 3, 32, 32]`` and int64 ``[n]`` in 0..9.

    Raises:
        ValueError: a truncated or corrupt pickle, a forbidden global, missing keys, a wrong shape or dtype, a
            label count that disagrees with the images, or a label outside 0..9. The message names the file.
    """
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return _to_tensors([_decode_batch(f, name or str(file), expected_count)])
    return _to_tensors([_decode_batch(file, name or getattr(file, "name", "<stream>"), expected_count)])


# ------------------------------------------------------------------------------------------------------------------
#  A split: from the folder or from the archive
# ------------------------------------------------------------------------------------------------------------------


def _read_from_archive(archive: Path, names: tuple[str, ...]) -> list[_Batch]:
    """Read the named batches from the tar.gz in one sequential pass, without extracting them to disk."""
    wanted = {f"{_BATCHES_DIR}/{n}": n for n in names}
    found: dict[str, _Batch] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    found[wanted[member.name]] = _decode_batch(
                        io.BytesIO(f.read()), f"{archive}:{member.name}", IMAGES_PER_BATCH
                    )
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ValueError(
            f"{archive}: corrupt or truncated archive ({type(e).__name__}: {e}); delete it and "
            f"download it again (download=True, --download on the command line)"
        ) from e
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"{archive}: members {', '.join(f'{_BATCHES_DIR}/{n}' for n in missing)} are missing")
    return [found[n] for n in names]


def _fix(what: str) -> str:
    return (
        f"Fix: delete {what} and download CIFAR-10 again (download=True in Python, --download on the command "
        f"line: the canonical archive is fetched and its md5 checked), or restore a good copy. verify=False skips "
        f"this check; use it only for synthetic files in the CIFAR-10 format."
    )


def _corruption_message(split: str, actual: str, files: Sequence[Path], archive: Path | None) -> str:
    """Name the corrupt file(s) of a split whose content digest is wrong, and the fix.

    The digest says *that* the split is wrong; the canonical md5s say *which* file: one byte-identical to its
    canonical version is intact, so the corrupt one is among the others.
    """
    digests = f"content digest {actual[:16]}..., expected {CONTENT_DIGESTS[split][:16]}..."
    if archive is not None:
        md5 = file_md5(archive)
        if md5 == _ARCHIVE.md5:
            return (
                f"CIFAR-10 {split}: the images and labels read from {archive} are not CIFAR-10's {split} set "
                f"({digests}), although the archive is byte-identical to the canonical one: torchbop's table of "
                f"digests is wrong; please report it."
            )
        return (
            f"CIFAR-10 {split}: {archive} is corrupt: the images and labels read from it are not CIFAR-10's "
            f"{split} set ({digests}), and its md5 is {md5}, not the canonical {_ARCHIVE.md5}. {_fix('it')}"
        )
    folder = files[0].parent
    listed = ", ".join(f.name for f in files)
    suspects = [f for f in files if file_md5(f) != CANONICAL_MD5.get(f.name)]
    intact = [f.name for f in files if f not in suspects]
    if not suspects:
        return (
            f"CIFAR-10 {split}: the images and labels of {listed} in {folder} are not CIFAR-10's {split} set "
            f"({digests}), yet each file is byte-identical to its canonical version: a file changed while it "
            f"was read, or torchbop's table of digests is wrong. {_fix(f'the folder {folder}')}"
        )
    if len(suspects) == 1:
        why = f"; it is the only one of {listed} that is not byte-identical to its canonical version" if intact else ""
        return (
            f"CIFAR-10 {split}: {suspects[0]} is corrupt: the images and labels of {listed} are not CIFAR-10's "
            f"{split} set ({digests}){why}. {_fix('it')}"
        )
    head = f"CIFAR-10 {split}: the images and labels of {listed} in {folder} are not CIFAR-10's {split} set ({digests})"
    if not intact:
        return (
            f"{head}: one or more of these files is corrupt. None is byte-identical to its canonical version (as "
            f"in a copy with the images in another order), so which one changed cannot be told. "
            f"{_fix('them (or the whole folder)')}"
        )
    names = ", ".join(f.name for f in suspects)
    return (
        f"{head}: one or more of {names} is corrupt ({', '.join(intact)} are byte-identical to the canonical "
        f"files and so intact; the others are not, so which of them changed cannot be told). {_fix(names)}"
    )


def _verify(split: str, batches: Sequence[_Batch], files: Sequence[Path], archive: Path | None) -> None:
    """Compare the split's content digest with :data:`CONTENT_DIGESTS`; raise :class:`ChecksumError` if it differs."""
    actual = image_set_digest(((b.pixels, b.labels) for b in batches), _PIXELS)
    if actual != CONTENT_DIGESTS[split]:
        raise ChecksumError(_corruption_message(split, actual, files, archive))


def _folder_complete(batches_dir: Path, names: Sequence[str]) -> bool:
    return all((batches_dir / n).is_file() for n in names)


def missing_files(root: Path) -> list[tuple[Path, RemoteFile]]:
    """What must be downloaded so that both splits load from ``root``: nothing, or the archive.

    A split loads from the extracted folder when all its batches are there, else from the archive.

    Example:
        >>> [(folder.name, f.filename) for folder, f in missing_files(Path("/nonexistent"))]
        [('cifar10', 'cifar-10-python.tar.gz')]
    """
    folder = root / "cifar10"
    if (folder / _ARCHIVE.filename).is_file():
        return []
    if all(_folder_complete(folder / _BATCHES_DIR, names) for names in (_TRAIN_BATCHES, _TEST_BATCHES)):
        return []
    return [(folder, _ARCHIVE)]


def load_cifar10(
    root: str | os.PathLike[str] | None = None,
    train: bool = True,
    download: bool = False,
    *,
    verify: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of CIFAR-10, verified.

    Looks for ``<root>/cifar10/cifar-10-batches-py/`` (all batches of the split present), else
    ``<root>/cifar10/cifar-10-python.tar.gz``; with ``download=True`` and neither present, fetches the canonical
    archive (md5-checked, with progress on stderr) and reads it. Whichever is read, the split's content is then
    verified (see the module docstring).

    Args:
        root: the data root (see :func:`~torchbop.data.paths.resolve_data_dir`); ``None`` uses ``$TORCHBOP_DATA``
            or ``~/.cache/torchbop``.
        train: the 50,000 training images (``data_batch_1..5`` in order) if true, else the 10,000 test images.
        download: fetch the archive when the data is missing instead of raising.
        verify: check the content against CIFAR-10's. Leave on for the real dataset; turn off only for synthetic
            files in the same format.

    Returns:
        ``(images, labels)``: uint8 ``[N, 3, 32, 32]`` (RGB planes) and int64 ``[N]`` in 0..9.

    Raises:
        DatasetNotFoundError: neither the folder nor the archive is there and ``download`` is false.
        DatasetUnavailableError: the download failed (offline); the message says what to fetch and where to put it.
        ChecksumError: the content is not CIFAR-10's (or a download's md5 is wrong); the message names the corrupt
            file(s) and the fix.
        ValueError: an unreadable batch or archive; the message names the file.
    """
    split = "train" if train else "test"
    names = _TRAIN_BATCHES if train else _TEST_BATCHES
    folder = resolve_data_dir(root) / "cifar10"
    batches_dir = folder / _BATCHES_DIR
    if _folder_complete(batches_dir, names):
        files = [batches_dir / n for n in names]
        batches = []
        for path in files:
            with open(path, "rb") as f:
                batches.append(_decode_batch(f, str(path), IMAGES_PER_BATCH))
        archive = None
    else:
        (archive,) = ensure_files(
            folder,
            [_ARCHIVE],
            dataset=f"CIFAR-10 {split}",
            download=download,
            data_dir_source=describe_data_dir(root),
            alternatives=(batches_dir,),
            expected=f"{_BATCHES_DIR}/{{{','.join(names)}}} (or the archive {_ARCHIVE.filename})",
        )
        batches = _read_from_archive(archive, names)
        files = []
    if verify:
        _verify(split, batches, files, archive)
    return _to_tensors(batches)
