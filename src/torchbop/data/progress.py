"""Download progress for a person watching: bytes received, the total and the percentage, on a text stream.

:class:`DownloadProgress` is the ``progress`` callback of :func:`~torchbop.data.paths.download_file`; it is called
after every chunk with ``(bytes so far, total or None)`` and decides whether to print:

* at a terminal (``stream.isatty()``), one line is rewritten in place with ``\\r`` at most every ``interval``
  seconds (0.25 by default), so a fast download does not flood the terminal;
* elsewhere (a log file, CI, a ``StringIO`` in tests), a new line is written each time another tenth of the file
  has arrived (or, when the server sends no size, every 10 MB), so logs stay short;
* the last chunk (``done == total``) is always printed, and :meth:`DownloadProgress.close` ends the line.

Example:
    >>> import io
    >>> out = io.StringIO()
    >>> p = DownloadProgress("mnist/t10k-labels-idx1-ubyte.gz", out)
    >>> for done in (1_000, 2_000, 3_000, 4_000): p(done, 4_000)
    >>> p.close()
    >>> print(out.getvalue(), end="")
      mnist/t10k-labels-idx1-ubyte.gz: 1.0 kB / 4.0 kB (25%)
      mnist/t10k-labels-idx1-ubyte.gz: 2.0 kB / 4.0 kB (50%)
      mnist/t10k-labels-idx1-ubyte.gz: 3.0 kB / 4.0 kB (75%)
      mnist/t10k-labels-idx1-ubyte.gz: 4.0 kB / 4.0 kB (100%)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["DownloadProgress", "format_size", "progress_stream"]

_UNKNOWN_TOTAL_STEP = 10_000_000  # bytes between lines in a log when the size is unknown


def format_size(n: int) -> str:
    """Bytes in decimal units, one decimal: ``format_size(170_498_071) == '170.5 MB'``.

    Example:
        >>> format_size(512), format_size(9_912_422), format_size(170_498_071)
        ('512 B', '9.9 MB', '170.5 MB')
    """
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def progress_stream(progress: bool | TextIO | None) -> TextIO | None:
    """The stream a ``progress`` argument names: ``True`` is ``sys.stderr`` (looked up now, so that redirections
    apply), ``False``/``None`` is no output, a stream is itself.

    Example:
        >>> progress_stream(False) is None, progress_stream(True) is sys.stderr
        (True, True)
    """
    if progress is True:
        return sys.stderr
    if progress is False or progress is None:
        return None
    return progress


class DownloadProgress:
    """Print ``<name>: <done> / <total> (<percent>%)`` for one download, throttled (see the module docstring).

    Args:
        name: what is being downloaded, as the reader should see it (``cifar10/cifar-10-python.tar.gz``).
        stream: where to print (a terminal gets in-place updates, anything else one line per tenth).
        interval: the least time between two in-place updates at a terminal, in seconds.
        clock: the time source (tests pass a fake one).
    """

    def __init__(
        self, name: str, stream: TextIO, *, interval: float = 0.25, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.stream = stream
        self.interval = interval
        self.clock = clock
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self._last_time: float | None = None
        self._last_step = 0  # tenths (or 10 MB steps) already printed, in log mode
        self._state: tuple[int, int | None] | None = None  # the latest (done, total)
        self._printed: tuple[int, int | None] | None = None  # the latest state printed
        self._open_line = False  # a terminal line without its newline yet

    def _line(self, done: int, total: int | None) -> str:
        if total:
            return f"  {self.name}: {format_size(done)} / {format_size(total)} ({100 * done // total}%)"
        return f"  {self.name}: {format_size(done)}"

    def _print(self, done: int, total: int | None) -> None:
        if self.tty:
            self.stream.write("\r" + self._line(done, total) + "\x1b[K")  # \x1b[K: clear the rest of the line
            self._open_line = True
        else:
            self.stream.write(self._line(done, total) + "\n")
        self.stream.flush()
        self._printed = (done, total)

    def __call__(self, done: int, total: int | None) -> None:
        """Record that ``done`` bytes of ``total`` (``None``: unknown) have arrived; print if it is time."""
        self._state = (done, total)
        finished = total is not None and done >= total
        if self.tty:
            now = self.clock()
            if finished or self._last_time is None or now - self._last_time >= self.interval:
                self._last_time = now
                self._print(done, total)
            return
        step = 10 * done // total if total else done // _UNKNOWN_TOTAL_STEP
        if finished or step > self._last_step:
            self._last_step = step
            self._print(done, total)

    def close(self) -> None:
        """Print the final state if it was throttled away, and end the terminal line."""
        if self._state is not None and self._state != self._printed:
            self._print(*self._state)
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
