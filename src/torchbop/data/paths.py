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
:class:`ChecksumError` and leaves nothing behind; so does a failed transfer, which raises :class:`DownloadError`
(folders the download created are removed again when they are left empty). Progress (bytes, total, percent) goes
to a callback, :class:`~torchbop.data.progress.DownloadProgress` in practice.

:func:`ensure_files` is what the loaders call: it names what is missing and, when downloading is allowed, fetches
it. When the download fails (an offline machine), it raises :class:`DatasetUnavailableError`, whose message lists
every file still missing with its URL, its md5 and the exact path to put it at, so that the files can be fetched on
another machine and copied over.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from torchbop.data.progress import DownloadProgress, format_size, progress_stream

__all__ = [
    "ENV_VAR",
    "DEFAULT_DATA_DIR",
    "RemoteFile",
    "DatasetNotFoundError",
    "DatasetUnavailableError",
    "DownloadError",
    "ChecksumError",
    "resolve_data_dir",
    "describe_data_dir",
    "download_file",
    "ensure_files",
    "fetch_files",
]

ENV_VAR = "TORCHBOP_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/torchbop")

_CHUNK = 1 << 20


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on disk and downloading was not allowed."""


class DatasetUnavailableError(DatasetNotFoundError):
    """A dataset's files are not on disk and downloading them failed (typically: the machine is offline).

    The message lists each missing file's URL, md5 and the path to put it at, and how the data root was chosen.
    """


class DownloadError(OSError):
    """Fetching a URL failed: no network, DNS, refused connection, HTTP error status, a transfer cut short."""


class ChecksumError(ValueError):
    """Data whose checksum differs from the known one: a corrupt download, or a corrupt file on disk.

    The message names the file (or URL) and the fix.
    """


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


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    md5: str,
    *,
    timeout: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Fetch ``url`` to ``dest`` atomically, checking the md5 of the bytes received.

    The bytes stream into a temporary file in ``dest``'s folder; only when their md5 equals ``md5`` is the file
    renamed to ``dest``. On any failure the temporary file is removed, ``dest`` is untouched, and folders created
    for ``dest`` are removed again if empty. Any ``urllib`` scheme works (``file://`` URLs are what the tests use).

    Args:
        url, dest, md5: what to fetch, where to put it, and the md5 (hex) its bytes must have.
        timeout: seconds to wait for the connection and for each read.
        progress: called after each chunk as ``progress(bytes_so_far, total)``; ``total`` is the server's
            Content-Length, or ``None`` when it sends none.

    Raises:
        DownloadError: fetching failed (network, DNS, HTTP status, a cut transfer); the message names the URL.
        ChecksumError: the md5 differs.
        OSError: writing to ``dest``'s folder failed (permissions, a full disk).
    """
    dest = Path(dest)
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    done = False
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        digest = hashlib.md5(usedforsecurity=False)  # a checksum, not security: allowed under FIPS
        request = urllib.request.Request(url, headers={"User-Agent": "torchbop"})
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                raise DownloadError(f"Could not download {url} to {dest}: {e}") from e
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                received = 0
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, IncompleteRead
                        raise DownloadError(
                            f"Could not download {url} to {dest}: the transfer failed after "
                            f"{format_size(received)} ({type(e).__name__}: {e})"
                        ) from e
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    if progress is not None:
                        progress(received, total)
        actual = digest.hexdigest()
        if actual != md5:
            raise ChecksumError(
                f"Checksum mismatch for {url}: md5 {actual}, expected {md5}. The download is corrupt or the file "
                f"changed upstream (a proxy or captive portal can also answer in its place); nothing was written "
                f"to {dest}. Try again, or fetch the file by hand and put it at {dest}."
            )
        os.replace(tmp, dest)
        done = True
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if not done:
            for folder in created:  # deepest first; stops at the first one that is not empty
                try:
                    folder.rmdir()
                except OSError:
                    break
    return dest


def _download_with_progress(remote: RemoteFile, dest: Path, stream: TextIO | None) -> Path:
    """:func:`download_file` with a header line and a :class:`DownloadProgress` on ``stream`` (if not None)."""
    if stream is None:
        return download_file(remote.url, dest, remote.md5)
    stream.write(f"Downloading {remote.url}\n  to {dest}\n")
    stream.flush()
    bar = DownloadProgress(f"{dest.parent.name}/{dest.name}", stream)
    try:
        return download_file(remote.url, dest, remote.md5, progress=bar)
    finally:
        bar.close()


def unavailable_message(
    missing: Sequence[tuple[Path, RemoteFile]], cause: BaseException, root: Path, data_dir_source: str
) -> str:
    """The message of :class:`DatasetUnavailableError`: why the download failed, then each missing file's URL,
    md5 and destination path, then how the data root was chosen and how to choose another.

    Example (the long lines wrapped here are single lines in the message):
        >>> remote = RemoteFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/", "c58f" + "0" * 28)
        >>> cause = DownloadError("Could not download ...: <urlopen error no network>")
        >>> print(unavailable_message([(Path("/d/cifar10"), remote)], cause, Path("/d"), "$TORCHBOP_DATA"))
        ... # doctest: +NORMALIZE_WHITESPACE
        Could not download ...: <urlopen error no network>
        Is this machine offline? On a machine with network access, download these files and put each at the path
        shown (create the folders):
          https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz  (md5 c58f0000000000000000000000000000)
            -> /d/cifar10/cifar-10-python.tar.gz
        torchbop verifies the files when it reads them.
        The data root /d comes from $TORCHBOP_DATA; set $TORCHBOP_DATA or pass --data-dir (data_dir=... in Python)
        to use another one.
    """
    refused = isinstance(cause.__cause__, urllib.error.HTTPError)  # the server answered, with an error status
    lines = [
        str(cause),
        ("The server refused the file. " if refused else "Is this machine offline? ")
        + "On a machine with network access, download these files and put each at the path shown (create the "
        "folders):",
    ]
    for folder, remote in missing:
        lines.append(f"  {remote.url}  (md5 {remote.md5})")
        lines.append(f"    -> {folder / remote.filename}")
    lines.append("torchbop verifies the files when it reads them.")
    lines.append(
        f"The data root {root} comes from {data_dir_source}; set ${ENV_VAR} or pass --data-dir "
        f"(data_dir=... in Python) to use another one."
    )
    return "\n".join(lines)


def fetch_files(
    missing: Sequence[tuple[Path, RemoteFile]],
    *,
    root: Path,
    data_dir_source: str,
    progress: bool | TextIO | None = True,
) -> list[Path]:
    """Download each ``(folder, remote)`` in turn to ``folder / remote.filename``, with progress on ``progress``.

    Each file is checksummed and atomic (:func:`download_file`), so files fetched before a failure are complete and
    kept, and the one that failed leaves nothing behind.

    Raises:
        DatasetUnavailableError: a download failed (:class:`DownloadError`); the message lists that file and every
            one after it, with URLs, md5s and destination paths (:func:`unavailable_message`).
        ChecksumError: a download arrived with the wrong md5.
    """
    stream = progress_stream(progress)
    paths = []
    for i, (folder, remote) in enumerate(missing):
        try:
            paths.append(_download_with_progress(remote, folder / remote.filename, stream))
        except DownloadError as e:
            raise DatasetUnavailableError(unavailable_message(missing[i:], e, root, data_dir_source)) from e
    return paths


def ensure_files(
    folder: Path,
    files: list[RemoteFile] | tuple[RemoteFile, ...],
    *,
    dataset: str,
    download: bool,
    data_dir_source: str,
    alternatives: tuple[Path, ...] = (),
    expected: str | None = None,
    progress: bool | TextIO | None = True,
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
        progress: where downloads report progress: ``True`` for stderr, a stream, or ``False`` for silence.

    Raises:
        DatasetNotFoundError: files are missing and ``download`` is false. The message names the missing files,
            the folders searched and both ways out (put the files there, or allow the download).
        DatasetUnavailableError: downloading failed; the message says what to fetch from where and where to put it.
        ChecksumError: a download arrived with the wrong md5.
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
    fetch_files([(folder, f) for f in missing], root=folder.parent, data_dir_source=data_dir_source, progress=progress)
    return [folder / f.filename for f in files]
