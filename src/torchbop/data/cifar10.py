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
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import torch

from torchbop.data.paths import RemoteFile, describe_data_dir, ensure_files, resolve_data_dir

__all__ = ["CIFAR10_CLASSES", "load_cifar10", "read_cifar10_batch"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_ARCHIVE = RemoteFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/", "c58f30108f718f92721af3b95e74349a")
_BATCHES_DIR = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCHES = ("test_batch",)
IMAGES_PER_BATCH = 10_000  # every canonical batch holds exactly this many images
_PIXELS = 3 * 32 * 32


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

def _array_to_tensor(array: _Array, name: str) -> torch.Tensor:
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
        raise ValueError(f"{name}: 'data' declares shape {list(array.shape)} ({count} bytes) but holds "
                         f"{len(array.raw)} bytes")
    flat = torch.frombuffer(bytearray(array.raw), dtype=torch.uint8) if count else torch.empty(0, dtype=torch.uint8)
    if array.fortran:  # column-major: reshape reversed, then transpose back
        return flat.reshape(array.shape[::-1]).permute(*reversed(range(len(array.shape)))).contiguous()
    return flat.reshape(array.shape)


def read_cifar10_batch(
    file: str | os.PathLike[str] | BinaryIO, *, name: str | None = None, expected_count: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR-10 batch pickle safely and validate it.

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
        name = name or str(file)
        with open(file, "rb") as f:
            return read_cifar10_batch(f, name=name, expected_count=expected_count)
    name = name or getattr(file, "name", "<stream>")
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
    data = _array_to_tensor(batch["data"], name)
    if data.dim() != 2 or data.shape[1] != _PIXELS:
        raise ValueError(f"{name}: 'data' has shape {list(data.shape)}, expected [n, {_PIXELS}]")
    if expected_count is not None and data.shape[0] != expected_count:
        raise ValueError(f"{name}: {data.shape[0]} images, expected {expected_count}")
    raw_labels = batch["labels"]
    if not isinstance(raw_labels, (list, tuple)) or not all(type(v) is int for v in raw_labels):
        raise ValueError(f"{name}: 'labels' must be a list of ints")
    if len(raw_labels) != data.shape[0]:
        raise ValueError(f"{name}: {len(raw_labels)} labels for {data.shape[0]} images")
    labels = torch.tensor(raw_labels, dtype=torch.int64)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(CIFAR10_CLASSES)):
        raise ValueError(f"{name}: labels outside 0..9 (min {int(labels.min())}, max {int(labels.max())})")
    return data.reshape(-1, 3, 32, 32), labels


# ------------------------------------------------------------------------------------------------------------------
#  A split: from the folder or from the archive
# ------------------------------------------------------------------------------------------------------------------

def _read_from_archive(archive: Path, names: tuple[str, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Read the named batches from the tar.gz in one sequential pass, without extracting them to disk."""
    wanted = {f"{_BATCHES_DIR}/{n}": n for n in names}
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    payload = io.BytesIO(f.read())
                    found[wanted[member.name]] = read_cifar10_batch(
                        payload, name=f"{archive}:{member.name}", expected_count=IMAGES_PER_BATCH
                    )
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{archive}: corrupt or truncated archive ({type(e).__name__}: {e})") from e
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"{archive}: members {', '.join(f'{_BATCHES_DIR}/{n}' for n in missing)} are missing")
    return [found[n] for n in names]


def load_cifar10(
    root: str | os.PathLike[str] | None = None, train: bool = True, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of CIFAR-10.

    Looks for ``<root>/cifar10/cifar-10-batches-py/`` (all batches of the split present), else
    ``<root>/cifar10/cifar-10-python.tar.gz``; with ``download=True`` and neither present, fetches the canonical
    archive (md5-checked) and reads it.

    Args:
        root: the data root (see :func:`~torchbop.data.paths.resolve_data_dir`); ``None`` uses ``$TORCHBOP_DATA``
            or ``~/.cache/torchbop``.
        train: the 50,000 training images (``data_batch_1..5`` in order) if true, else the 10,000 test images.
        download: fetch the archive when the data is missing instead of raising.

    Returns:
        ``(images, labels)``: uint8 ``[N, 3, 32, 32]`` (RGB planes) and int64 ``[N]`` in 0..9.

    Raises:
        DatasetNotFoundError: neither the folder nor the archive is there and ``download`` is false.
        ValueError: a corrupt or truncated batch or archive; the message names the file.
    """
    names = _TRAIN_BATCHES if train else _TEST_BATCHES
    folder = resolve_data_dir(root) / "cifar10"
    batches_dir = folder / _BATCHES_DIR
    if all((batches_dir / n).is_file() for n in names):
        parts = [read_cifar10_batch(batches_dir / n, expected_count=IMAGES_PER_BATCH) for n in names]
    else:
        (archive,) = ensure_files(folder, [_ARCHIVE], dataset=f"CIFAR-10 {'train' if train else 'test'}",
                                  download=download, data_dir_source=describe_data_dir(root),
                                  alternatives=(batches_dir,),
                                  expected=f"{_BATCHES_DIR}/{{{','.join(names)}}} (or the archive {_ARCHIVE.filename})")
        parts = _read_from_archive(archive, names)
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    return images, labels
