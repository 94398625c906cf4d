"""actors.metrics: the edges' tallies, and one view of many processes (multiprocess mode).

The whole daemon's view (every family, replicas summed, counters monotonic across restarts)
is tested on a real daemon in tests/test_e2e.py and tests/test_shadow_e2e.py.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from actors import metrics
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


_FOLDING = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from actors import metrics
    directory = Path(sys.argv[1])
    metrics.use_directory(directory)

    def die_after_counting(n):
        pid = os.fork()
        if pid == 0:
            metrics.PREDICTIONS.labels("ok").inc(n)
            metrics.INGEST_BATCH.labels("readings").observe(n)
            metrics.CHAMPION_AUC.set(n / 1000)
            os._exit(0)
        os.waitpid(pid, 0)

    def figures():
        lines = metrics.render().decode().splitlines()
        return sorted(l for l in lines if l.startswith(("rml_predictions_total{",
                      "rml_ingest_batch_items", "rml_champion_roc_auc ")))

    def files():
        return sorted(p.name for p in directory.glob("*.db"))

    for n in range(1, metrics.FOLD_AFTER // 3 + 1):  # not enough dead files to fold yet
        die_after_counting(n)
    before, unfolded = figures(), files()
    folded = metrics.fold_dead(str(directory))
    after, left = figures(), files()
    for n in range(100, 100 + metrics.FOLD_AFTER):  # enough: the scrape folds them
        die_after_counting(n)
    scraped, finally_left = figures(), files()
    json.dump({"before": before, "after": after, "unfolded": unfolded, "folded": folded,
               "left": left, "scraped": scraped, "finally_left": finally_left}, sys.stdout)
""")


def test_dead_processes_files_fold_into_one_per_kind_with_the_same_figures(
        tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run([sys.executable, "-c", _FOLDING, str(tmp_path / "metrics")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    fold_after = metrics.FOLD_AFTER
    dead = fold_after // 3
    assert len(seen["unfolded"]) >= 3 * dead  # a counter, a histogram, a gauge file each
    own = {name for name in seen["left"] if not name.endswith("_folded.db")}  # the scraper's
    assert seen["folded"] == 3 * dead  # each one's counter, histogram and gauge
    assert set(seen["left"]) - own == {"counter_folded.db", "histogram_folded.db",
                                       "gauge_mostrecent_folded.db"}
    assert len(seen["unfolded"]) == 3 * dead + len(own)
    assert seen["after"] == seen["before"]  # the same figures from 3 files
    total = sum(range(1, dead + 1))
    assert f'rml_predictions_total{{outcome="ok"}} {float(total)}' in seen["before"]
    assert f"rml_champion_roc_auc {dead / 1000}" in seen["before"]  # the last one written
    later = total + sum(range(100, 100 + fold_after))
    assert f'rml_predictions_total{{outcome="ok"}} {float(later)}' in seen["scraped"]
    assert f'rml_ingest_batch_items_count{{kind="readings"}} {float(dead + fold_after)}' \
        in seen["scraped"]
    assert f"rml_champion_roc_auc {(100 + fold_after - 1) / 1000}" in seen["scraped"]
    assert set(seen["finally_left"]) == set(seen["left"])  # folded again by the scrape


_SCRAPING = textwrap.dedent("""
    import os, sys, threading
    from pathlib import Path
    from actors import metrics
    directory = Path(sys.argv[1])
    metrics.use_directory(directory)
    dying = 3 * metrics.FOLD_AFTER
    done = threading.Event()

    def keep_dying():
        for _ in range(dying):
            pid = os.fork()
            if pid == 0:
                metrics.PREDICTIONS.labels("ok").inc()
                os._exit(0)
            os.waitpid(pid, 0)
        done.set()

    def ok():
        for line in metrics.render().decode().splitlines():
            if line.startswith('rml_predictions_total{outcome="ok"}'):
                return float(line.split()[-1])
        return 0.0

    def scrape_until_all_counted():
        seen = [ok()]
        while seen[-1] < dying:
            seen.append(ok())
            if seen[-1] < seen[-2]:
                print("went back:", seen[-2], "->", seen[-1], flush=True)
                return 1
        return 0

    scrapers = []  # scrapes from other processes, as the daemon's are
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            os._exit(scrape_until_all_counted())
        scrapers.append(pid)
    thread = threading.Thread(target=keep_dying)
    thread.start()
    thread.join()
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in scrapers]
    print(codes, ok(), len(list(directory.glob("*.db"))))
""")


def test_scrapes_while_dead_files_fold_never_see_a_counter_go_back(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run([sys.executable, "-c", _SCRAPING, str(tmp_path / "metrics")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    codes, total, files = done.stdout.strip().rsplit("\n", 1)[-1].rsplit(" ", 2)
    assert codes == "[0, 0]", done.stdout
    assert float(total) == 3 * metrics.FOLD_AFTER
    assert int(files) < metrics.FOLD_AFTER + 3  # folded along the way
