"""Files replaced atomically: a reader (or a process killed mid-write) sees the old content or the whole new one.

:func:`atomic_write` writes into a temporary file beside the destination (same folder, so the same file system),
flushes and fsyncs it, then renames it over the destination with ``os.replace``, which is atomic on POSIX and on
Windows. If the body raises, the temporary file is removed and the destination is untouched. ``durable=True`` also
fsyncs the folder, so that the rename itself survives a power loss (checkpoints ask for it).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
    >>> with atomic_write(path, "w") as f:
    ...     _ = f.write("complete")
    >>> path.read_text()
    'complete'
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", *, newline: str | None = None, durable: bool = False
) -> Iterator[IO[Any]]:
    """Open a temporary file to write ``path``'s new content in; on a clean exit it replaces ``path``.

    Args:
        path: the destination; its folder is created when missing.
        mode: ``"wb"`` or ``"w"`` (text).
        newline: passed to ``open`` in text mode (``""`` for the csv module).
        durable: also fsync the folder after the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, newline=newline) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
