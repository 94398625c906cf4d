"""actors.metrics: the edges' tallies, and one view of many processes (multiprocess mode).

The whole daemon's view (every family, replicas summed, counters monotonic across restarts)
is tested on a real daemon in tests/test_e2e.py and tests/test_shadow_e2e.py.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from actors.counters import Counters
from actors.metrics import LATENCY_BUCKETS, EdgeFamilies, Tally

ROOT = Path(__file__).resolve().parents[1]


def _families() -> tuple[CollectorRegistry, EdgeFamilies]:
    registry = CollectorRegistry()
    return registry, EdgeFamilies(
        Counter("t_requests", "requests", ("route", "status"), registry=registry),
        Histogram("t_seconds", "latency", ("route",), buckets=LATENCY_BUCKETS,
                  registry=registry))


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


def test_a_flushed_tally_shows_what_direct_counting_shows() -> None:
    seconds = [0.00004, 0.00005, 0.0003, 0.0003, 0.02, 3.0, 11.0, 0.0001]
    tallied, families = _families()
    tally = Tally(families)
    direct, reference = _families()
    for i, s in enumerate(seconds):
        route, status = ("/model", 200) if i % 3 else ("/health", 503)
        tally.record(route, status, s)
        reference.requests.labels(route, str(status)).inc()
        reference.latency.labels(route).observe(s)
    tally.record("unmatched", 404)  # refused by the edge: counted, not timed
    reference.requests.labels("unmatched", "404").inc()
    tally.flush()
    assert _without_created(generate_latest(tallied)) == _without_created(
        generate_latest(direct))
    tally.flush()  # nothing new: nothing added
    assert _without_created(generate_latest(tallied)) == _without_created(
        generate_latest(direct))


def test_a_tally_recorded_from_threads_while_it_flushes_loses_nothing() -> None:
    tallied, families = _families()
    tally = Tally(families)
    per_thread, seconds = 20_000, 0.0003
    go = threading.Barrier(3)

    def record() -> None:
        go.wait()
        for _ in range(per_thread):
            tally.record("/model", 200, seconds)

    threads = [threading.Thread(target=record) for _ in range(2)]
    for thread in threads:
        thread.start()
    go.wait()
    flushes = 0
    while any(thread.is_alive() for thread in threads):
        tally.flush()  # between the threads' records: each flush adds only what is new
        flushes += 1
    for thread in threads:
        thread.join()
    tally.flush()
    assert flushes > 1
    total = 2 * per_thread
    assert tallied.get_sample_value("t_requests_total", {"route": "/model",
                                                         "status": "200"}) == total
    assert tallied.get_sample_value("t_seconds_count", {"route": "/model"}) == total
    assert tallied.get_sample_value("t_seconds_bucket", {"route": "/model",
                                                         "le": "0.00025"}) == 0
    assert tallied.get_sample_value("t_seconds_bucket", {"route": "/model",
                                                         "le": "0.0005"}) == total
    summed = tallied.get_sample_value("t_seconds_sum", {"route": "/model"})
    assert summed is not None and abs(summed - total * seconds) < 1e-6


def test_counters_bumped_from_threads_while_read_lose_nothing() -> None:
    counters = Counters(("ok", "fallback"))
    per_thread = 20_000
    go = threading.Barrier(3)

    def bump() -> None:
        go.wait()
        for i in range(per_thread):
            counters.bump("ok")
            if i % 4 == 0:
                counters.bump("fallback", 2)

    threads = [threading.Thread(target=bump) for _ in range(2)]
    for thread in threads:
        thread.start()
    go.wait()
    seen = [counters.snapshot()]
    while any(thread.is_alive() for thread in threads):
        seen.append(counters.snapshot())  # read while the threads bump
    for thread in threads:
        thread.join()
    assert len(seen) > 1
    for earlier, later in itertools.pairwise(seen):  # never goes back
        assert later["ok"] >= earlier["ok"] and later["fallback"] >= earlier["fallback"]
    assert counters.snapshot() == {"ok": 2 * per_thread, "fallback": 2 * 2 * per_thread // 4}
    counters.bump("ok", 3)  # this thread's own book, counted with the others
    assert counters.snapshot()["ok"] == 2 * per_thread + 3


_CHILDREN = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from actors import metrics   # imported before the directory is set, as in the keeper
    metrics.use_directory(Path(sys.argv[1]))
    for n in (3, 4):  # one after the other: the second writes last
        pid = os.fork()
        if pid == 0:
            metrics.PREDICTIONS.labels("ok").inc(n)
            metrics.DEADLINE_MISSES.inc()
            metrics.CHAMPION_VERSION.set(n)
            metrics.CHAMPION_AUC.set(0.5 + n / 100)
            os._exit(0)
        os.waitpid(pid, 0)
    sys.stdout.write(metrics.render().decode())
""")


def test_processes_are_summed_and_the_dead_keep_their_counts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run([sys.executable, "-c", _CHILDREN, str(tmp_path / "metrics")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # Both (dead) processes' counters, summed: nothing lost with the process.
    assert 'rml_predictions_total{outcome="ok"} 7.0' in lines
    assert "rml_prediction_deadline_misses_total 2.0" in lines
    # A live-only gauge forgets the dead; a most-recent one keeps the last value written.
    assert not any(line.startswith("rml_champion_version ") and not line.endswith(" 0.0")
                   for line in lines)
    assert "rml_champion_roc_auc 0.54" in lines


_STARTING = textwrap.dedent("""
    import sys
    from pathlib import Path
    from actors import metrics
    directory = Path(sys.argv[1])
    metrics.use_directory(directory)
    metrics.PREDICTIONS.labels("ok").inc(5)
    # What a process that is starting leaves for an instant: its file, not yet sized.
    (directory / "counter_999999.db").touch()
    sys.stdout.write(metrics.render().decode())
""")


def test_a_scrape_while_a_process_starts_skips_its_empty_file(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run([sys.executable, "-c", _STARTING, str(tmp_path / "metrics")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'rml_predictions_total{outcome="ok"} 5.0' in done.stdout.splitlines()
