"""Download progress: one line per tenth in a log, throttled in-place updates at a terminal, always the last state."""

import io
import sys

import pytest

from torchbop.data.progress import DownloadProgress, format_size, progress_stream


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_prints_each_tenth_once():
    out = io.StringIO()
    progress = DownloadProgress("d/f", out)
    for done in range(0, 1001, 7):  # 143 chunks
        progress(done, 1000)
    progress(1000, 1000)
    progress.close()
    lines = out.getvalue().splitlines()
    assert [line.rsplit("(", 1)[1] for line in lines] == [f"{p}%)" for p in range(10, 101, 10)]
    assert lines[-1] == "  d/f: 1.0 kB / 1.0 kB (100%)"


def test_log_with_unknown_total_prints_every_10_mb_and_the_end():
    out = io.StringIO()
    progress = DownloadProgress("f", out)
    for done in range(1_000_000, 25_000_001, 1_000_000):
        progress(done, None)
    assert out.getvalue().splitlines() == ["  f: 10.0 MB", "  f: 20.0 MB"]
    progress.close()
    assert out.getvalue().splitlines()[-1] == "  f: 25.0 MB"


def test_terminal_updates_in_place_at_most_every_interval():
    out, clock = Terminal(), Clock()
    progress = DownloadProgress("f", out, interval=0.5, clock=clock)
    for step in range(1, 11):  # ten chunks, 0.1 s apart
        clock.now = step * 0.1
        progress(step * 100, 2000)
    updates = out.getvalue().split("\r")[1:]
    assert updates == ["  f: 100 B / 2.0 kB (5%)\x1b[K", "  f: 600 B / 2.0 kB (30%)\x1b[K"]  # at 0.1 s and 0.6 s
    assert out.getvalue().count("\n") == 0
    progress(2000, 2000)  # the end is always shown
    progress.close()
    assert out.getvalue().endswith("\r  f: 2.0 kB / 2.0 kB (100%)\x1b[K\n")


def test_close_shows_a_throttled_final_state():
    out, clock = Terminal(), Clock()
    progress = DownloadProgress("f", out, interval=10, clock=clock)
    progress(100, None)
    progress(300, None)  # throttled
    progress.close()
    assert out.getvalue().endswith("  f: 300 B\x1b[K\n")


def test_close_without_data_prints_nothing():
    out = io.StringIO()
    DownloadProgress("f", out).close()
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    "n, text", [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (170_498_071, "170.5 MB"), (5 * 10**12, "5000.0 GB")]
)
def test_format_size(n, text):
    assert format_size(n) == text


def test_progress_stream():
    stream = io.StringIO()
    assert progress_stream(stream) is stream
    assert progress_stream(None) is None and progress_stream(False) is None
    assert progress_stream(True) is sys.stderr
