"""``RunLock``: the claim one process holds on one run of an experiment while it executes it.

Two invocations of an experiment on the same results folder (or the worker processes of one, ``--jobs N``) never
execute the same run at once: a run is executed only under its lock, an OS file lock (``fcntl.flock``) on
``runs/<key>.lock`` beside the run's record. The kernel releases it when the holder's file is closed, *including when
the process is killed*, so a killed invocation leaves no stale claim behind, and nothing ever has to be cleaned up by
hand.

The protocol (:mod:`~torchbop.experiments.runner` follows it): take the lock, then look for the run's record; stored
means another process finished the run meanwhile, so use that. Otherwise execute, write the record, and remove the lock
file before releasing it (:meth:`RunLock.done`); a process still waiting on the removed file then gets its lock, finds
the record, and runs nothing. Locking an already removed file is harmless for that reason: the record is always
checked after the lock is taken.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "0123abcd.lock"
    >>> with RunLock(path) as first:
    ...     first.acquire(), RunLock(path).acquire()  # a second claim on the same run is refused
    (True, False)
    >>> with RunLock(path) as again:  # released on leaving the block
    ...     again.acquire()
    True
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

__all__ = ["RunLock"]


class RunLock:
    """An exclusive ``flock`` on ``path`` (created if missing), held from :meth:`acquire` to :meth:`release`.

    Locks of different open files conflict even within one process, so every claimant opens its own ``RunLock``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: bool = False) -> bool:
        """Take the lock; with ``wait``, block until its holder releases it (or dies). Returns whether it is held."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:  # KeyboardInterrupt while waiting
            os.close(fd)
            raise
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person looking at the folder
        return True

    def done(self) -> None:
        """The run's record is written: remove the lock file, then release (see the module docstring)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor of the open file releases the flock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()
