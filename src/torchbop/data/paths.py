"""Where datasets live on disk, and a checksummed download for when they are missing.

The data root is chosen by one rule, used by every loader in :mod:`torchbop.data`:

1. the ``data_dir`` argument (``--data-dir`` on the command line), when given;
2. else the environment variable ``$TORCHBOP_DATA``, when set and non-empty;
3. else ``~/.cache/torchbop``.

This is a precedence, not a search: the first rule that applies names *the* root, files are looked up there and
downloads (only with ``download=True``) are written there. Each dataset has its own folder under the root, as in
the development copies::

    <root>/mnist/          train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...
    <root>/fashion-mnist/  the same four names
    <root>/cifar10/        cifar-10-batches-py/{data_batch_1..5,test_batch}  or  cifar-10-python.tar.gz

Downloads go to a temporary file next to the destination, are checked against the md5 of the canonical file while
they stream, and only then are renamed into place (``os.replace``, atomic on one file system). A mismatch raises
:class:`ChecksumError` and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENV_VAR",
    "DEFAULT_DATA_DIR",
    "RemoteFile",
    "DatasetNotFoundError",
    "ChecksumError",
    "resolve_data_dir",
    "describe_data_dir",
    "download_file",
    "ensure_files",
]

ENV_VAR = "TORCHBOP_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/torchbop")

_CHUNK = 1 << 20


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on disk and downloading was not allowed."""


class ChecksumError(ValueError):
    """A downloaded file's md5 differs from the canonical one."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its name on disk, where to fetch it and the md5 of the fetched bytes.

    Example:
        >>> f = RemoteFile("t10k-labels-idx1-ubyte.gz", "https://example.org/mnist/", "0" * 32)
        >>> f.url
        'https://example.org/mnist/t10k-labels-idx1-ubyte.gz'
    """

    filename: str
    base_url: str
    md5: str

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/" + self.filename


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root: ``data_dir`` if given, else ``$TORCHBOP_DATA`` if set, else ``~/.cache/torchbop``.

    The path is returned with ``~`` expanded; it need not exist.

    Example:
        >>> resolve_data_dir("/srv/datasets").as_posix()
        '/srv/datasets'
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR.expanduser()


def describe_data_dir(data_dir: str | os.PathLike[str] | None = None) -> str:
    """Say which rule chose the data root, for error messages.

    Example:
        >>> describe_data_dir("/srv/datasets")
        'the data_dir argument'
    """
    if data_dir is not None:
        return "the data_dir argument"
    if os.environ.get(ENV_VAR):
        return f"${ENV_VAR}"
    return f"the default {DEFAULT_DATA_DIR} (neither data_dir nor ${ENV_VAR} was given)"


def download_file(url: str, dest: str | os.PathLike[str], md5: str, *, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` atomically, checking the md5 of the bytes received.

    The bytes stream into a temporary file in ``dest``'s folder; only when their md5 equals ``md5`` is the file
    renamed to ``dest``. Any ``urllib`` scheme works (``file://`` URLs are what the tests use).

    Raises:
        ChecksumError: the md5 differs; the temporary file is removed and ``dest`` is untouched.
        OSError: the download failed (network, HTTP status, file system); the message names the URL.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)  # a checksum, not security: allowed under FIPS
        request = urllib.request.Request(url, headers={"User-Agent": "torchbop"})
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as e:
            raise OSError(f"Could not download {url} to {dest}: {e}") from e
        actual = digest.hexdigest()
        if actual != md5:
            raise ChecksumError(
                f"Checksum mismatch for {url}: md5 {actual}, expected {md5}. The download is corrupt or the file "
                f"changed upstream; nothing was written to {dest}."
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def ensure_files(
    folder: Path,
    files: list[RemoteFile] | tuple[RemoteFile, ...],
    *,
    dataset: str,
    download: bool,
    data_dir_source: str,
    alternatives: tuple[Path, ...] = (),
    expected: str | None = None,
) -> list[Path]:
    """Return the paths of ``files`` in ``folder``, downloading the missing ones if ``download`` is true.

    Args:
        folder: the dataset's folder (``<root>/<dataset>``).
        files: what must be there, with where to fetch each.
        dataset: a human name for messages ("MNIST train").
        download: fetch missing files; otherwise a missing file raises :class:`DatasetNotFoundError`.
        data_dir_source: which rule chose the root (:func:`describe_data_dir`), for the message.
        alternatives: other paths that were also looked at (named in the message only).
        expected: what was looked for, in words, when it is more than ``files`` (default: the missing names).

    Raises:
        DatasetNotFoundError: files are missing and ``download`` is false. The message names the missing files,
            the folders searched and both ways out (put the files there, or allow the download).
    """
    missing = [f for f in files if not (folder / f.filename).is_file()]
    if missing and not download:
        searched = ", ".join(str(p) for p in [folder, *alternatives])
        raise DatasetNotFoundError(
            f"{dataset}: missing {expected or ', '.join(f.filename for f in missing)} in {folder}. "
            f"Searched: {searched} (the data root {folder.parent} comes from {data_dir_source}; the order is "
            f"data_dir / --data-dir, then ${ENV_VAR}, then {DEFAULT_DATA_DIR}). "
            f"Put the files there, point ${ENV_VAR} or data_dir at a root that holds them, or pass download=True "
            f"to fetch them from {missing[0].base_url}."
        )
    for f in missing:
        download_file(f.url, folder / f.filename, f.md5)
    return [folder / f.filename for f in files]
