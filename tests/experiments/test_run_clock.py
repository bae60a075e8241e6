"""A run's clock: the time of every invocation that worked on the run, kept on disk while it runs."""

from __future__ import annotations

import json
import time

from torchbop.experiments.run_clock import RunClock
from torchbop.experiments.store import parse_time_stamp, time_stamp


def test_written_while_running_and_continued_by_the_next_invocation(tmp_path):
    run_dir = tmp_path / "run"
    with RunClock(run_dir, interval_s=0.05) as first:
        time.sleep(0.3)
        on_disk = json.loads((run_dir / RunClock.FILE).read_text())  # what a kill now would leave
        assert 0.05 <= on_disk["elapsed_s"] <= 0.3
    assert first.elapsed_s() >= 0.3
    assert first.elapsed_s() == json.loads((run_dir / RunClock.FILE).read_text())["elapsed_s"]
    time.sleep(0.1)
    assert first.elapsed_s() == json.loads((run_dir / RunClock.FILE).read_text())["elapsed_s"]  # stopped with the block

    with RunClock(run_dir, interval_s=10) as second:
        time.sleep(0.1)
    assert second.earlier_s == first.elapsed_s()
    assert second.elapsed_s() >= first.elapsed_s() + 0.1
    assert second.started_at == first.started_at  # the run began with the first invocation


def test_an_unreadable_file_starts_the_count_afresh(tmp_path):
    (tmp_path / RunClock.FILE).write_text('{"elapsed_s": ')
    with RunClock(tmp_path) as clock:
        pass
    assert clock.earlier_s == 0.0 and 0 <= clock.elapsed_s() < 1.0


def test_a_failed_attempt_counts_for_the_next(tmp_path):
    try:
        with RunClock(tmp_path / "run"):
            time.sleep(0.1)
            raise RuntimeError("the run failed")
    except RuntimeError:
        pass
    assert RunClock(tmp_path / "run").earlier_s >= 0.1


def test_time_stamps_keep_the_second_and_the_utc_offset():
    moment = 1_800_000_000.75
    stamp = time_stamp(moment)
    assert parse_time_stamp(stamp) == 1_800_000_000  # whole seconds, the same moment in any time zone
    assert stamp[-5] in "+-" and stamp[-4:].isdigit()
    assert abs(parse_time_stamp(time_stamp()) - time.time()) < 2


def test_cpu_time_counts_work_not_waiting_and_continues_across_invocations(tmp_path):
    run_dir = tmp_path / "run"
    with RunClock(run_dir) as waiting:
        time.sleep(0.3)
    assert waiting.elapsed_s() >= 0.3 and 0.0 <= waiting.cpu_s() < 0.1  # a run waiting for cores costs no CPU
    with RunClock(run_dir) as working:
        start = time.process_time()
        while time.process_time() - start < 0.2:
            pass
    assert working.earlier_cpu_s == waiting.cpu_s()
    assert working.cpu_s() >= waiting.cpu_s() + 0.2
    assert json.loads((run_dir / RunClock.FILE).read_text())["cpu_s"] == working.cpu_s()


def test_a_run_begun_without_a_cpu_count_never_gets_a_partial_one(tmp_path):
    # elapsed.json as written before runs counted CPU time: the earlier invocations' CPU time is unknown
    (tmp_path / RunClock.FILE).write_text(json.dumps({"elapsed_s": 100.0, "started_at": time_stamp()}))
    for _ in range(2):
        with RunClock(tmp_path) as clock:
            pass
        assert clock.cpu_s() is None and clock.elapsed_s() >= 100.0
        assert "cpu_s" not in json.loads((tmp_path / RunClock.FILE).read_text())
