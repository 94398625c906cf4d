"""The daemon's Prometheus metrics: every family, defined once here, and the node's one view.

How the figures of many processes become one scrape: prometheus-client's multiprocess mode.
The keeper points ``PROMETHEUS_MULTIPROC_DIR`` at ``<run_dir>/metrics`` (emptied at each
start, ``use_directory``) before anything forks; every actor process then writes its own
values to small memory-mapped files there, and a scrape (``render``: the keeper's metrics
port, or any predictor's ``GET /metrics``) merges all of them. That gives:

- one consistent view, whichever process answers: replicas are summed, not sampled;
- counters that never go backwards when a replica is killed and restarted: a dead
  process's files stay and keep being summed (its last flushed values), the new one adds
  its own. (A whole daemon restart starts from zero, as any Prometheus target does.)
  Once ``FOLD_AFTER`` dead processes' files have gathered, a scrape folds them into one
  file per kind (``fold_dead``), under a lock every scrape shares, so restarts do not slow
  scrapes for good.

Gauges say how they merge: ``livemax``/``livemostrecent`` count live processes only (a
scrape removes the files of dead ones), ``mostrecent`` keeps the
last value written by any process (a champion's AUC outlives the publisher that set it).

Hot paths do not write the files per request. The HTTP edges count requests and latencies
in a ``Tally`` (plain integers under a lock, ~0.4 us) and the actor's thread flushes the
deltas every second (``Worker``'s metrics timer) and when it stops: a scrape lags the
edge by at most a second, and a SIGKILLed process loses at most its last second, which
keeps every counter monotonic. Rare events (a restart, a training run, a batch commit)
write directly.

Without ``use_directory`` (an actor or edge run alone, a test) the same families count in
this process's memory and ``render`` shows them.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import glob
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from actors.counters import ThreadBooks

__all__ = [
    "CONTENT_TYPE",
    "INGEST",
    "PREDICT",
    "EdgeFamilies",
    "Tally",
    "count_batch",
    "flush_counters",
    "render",
    "use_directory",
]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what every Prometheus version reads
_ENV = "PROMETHEUS_MULTIPROC_DIR"
_REGISTRY = CollectorRegistry(auto_describe=True)

# Request latencies: 50 us to 10 s (a prediction is ~0.1 ms, an ingest batch ~1-50 ms).
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10000)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_FIT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


def _counter(name: str, doc: str, labels: Iterable[str]) -> Counter:
    return Counter(name, doc, tuple(labels), registry=_REGISTRY)


def _histogram(name: str, doc: str, labels: Iterable[str],
               buckets: tuple[float, ...]) -> Histogram:
    return Histogram(name, doc, tuple(labels), buckets=buckets, registry=_REGISTRY)


_Mode = Literal["livemax", "mostrecent"]


def _gauge(name: str, doc: str, labels: Iterable[str], mode: _Mode) -> Gauge:
    return Gauge(name, doc, tuple(labels), registry=_REGISTRY, multiprocess_mode=mode)


# --- ingest ----------------------------------------------------------------------------
INGEST_REQUESTS = _counter("rml_ingest_requests", "Ingest HTTP requests answered, by route "
                           "and status (503s included: overloaded, shutting down, store "
                           "unavailable).", ("route", "status"))
INGEST_LATENCY = _histogram("rml_ingest_request_seconds", "Ingest request latency in the "
                            "edge, from the request's last byte to its answer.", ("route",),
                            LATENCY_BUCKETS)
INGEST_UNAVAILABLE = _counter("rml_ingest_unavailable", "Ingest requests answered 503 "
                              "(the client retries after Retry-After), by reason.",
                              ("reason",))
INGEST_ITEMS = _counter("rml_ingest_items", "Facts received by collectors (HTTP and MQTT), "
                        "by kind (readings, outcomes) and outcome (accepted, duplicate, "
                        "rejected).", ("kind", "outcome"))
INGEST_REJECTED = _counter("rml_ingest_rejected_items", "Facts rejected, by kind and error "
                           "name.", ("kind", "error"))
INGEST_BATCH = _histogram("rml_ingest_batch_items", "Facts per ingest batch (HTTP request "
                          "or MQTT message).", ("kind",), _BATCH_BUCKETS)

# --- predict ---------------------------------------------------------------------------
PREDICT_REQUESTS = _counter("rml_predict_requests", "Predict-port HTTP requests answered, by "
                            "route and status.", ("route", "status"))
PREDICT_LATENCY = _histogram("rml_predict_request_seconds", "Predict-port request latency in "
                             "the edge, from the request's last byte to its answer.",
                             ("route",), LATENCY_BUCKETS)
PREDICTIONS = _counter("rml_predictions", "Predictions answered (HTTP and Thespian), by "
                       "outcome: ok, fallback (a fallback model answered), bad_request, "
                       "unavailable (503).", ("outcome",))
PREDICTION_FALLBACKS = _counter("rml_prediction_fallbacks", "Predictions the fallback model "
                                "answered, by cause: deadline, error, stand_in (the "
                                "champion's collection has an invalid feature).", ("cause",))
DEADLINE_MISSES = _counter("rml_prediction_deadline_misses", "Predictions whose first model "
                           "overran the deadline.", ())
CHAMPION_VERSION = _gauge("rml_champion_version", "The champion version the predictors serve "
                          "(the highest among live replicas).", (), "livemax")
CHAMPION_COLLECTION = _gauge("rml_champion_feature_collection", "The feature collection of "
                             "the champion the predictors serve.", (), "livemax")
ROWS = _counter("rml_prediction_rows", "Feature rows looked up for location_id predictions, "
                "by predictor and where they came from (memory, store).",
                ("predictor", "source"))
ROWS_CONFIRMED_AT = _gauge("rml_feature_rows_confirmed_at_seconds", "When each predictor's "
                           "in-memory rows were last known complete (Unix time).",
                           ("predictor",), "livemax")
SHADOW = _counter("rml_shadow_predictions", "Shadow predictions made beside the champion's "
                  "answers, by version and outcome (served, agreed, error).",
                  ("version", "outcome"))

# --- supervision -----------------------------------------------------------------------
RESTARTS = _counter("rml_actor_restarts", "Actors restarted by their supervisor, by actor "
                    "and cause.", ("actor", "cause"))
HANGS = _counter("rml_actor_hangs", "Actors found hung (no answer to the supervisor's "
                 "heartbeat) and killed.", ("actor",))
ESCALATIONS = _counter("rml_supervisor_escalations", "Supervisors that gave up (past their "
                       "restart intensity) and escalated to their parent.", ("supervisor",))
DEAD_LETTERS = _counter("rml_dead_letters", "Messages that failed twice in an actor (poison) "
                        "and were recorded as dead letters, by actor.", ("actor",))
PROMOTIONS = _counter("rml_standby_promotions", "Warm standbys promoted in place of a failed "
                      "replica, by role.", ("role",))

# --- learning --------------------------------------------------------------------------
TRAINING_RUNS = _counter("rml_training_runs", "Training runs, by trigger and outcome "
                         "(published, shadow, rejected, failed, ...).", ("trigger", "outcome"))
FIT_SECONDS = _histogram("rml_training_fit_seconds", "Seconds to fit a candidate model.",
                         ("model_type",), _FIT_BUCKETS)
CHAMPION_AUC = _gauge("rml_champion_roc_auc", "The champion's holdout ROC AUC.", (),
                      "mostrecent")
DRIFT_PSI = _gauge("rml_drift_psi", "Population stability index of each feature over the "
                   "drift window against the champion's training profile.", ("feature",),
                   "mostrecent")
SHADOW_PROGRESS = _gauge("rml_shadow_trial_progress", "The shadow trial's requests so far over "
                         "those it needs (0..1).", ("version",), "mostrecent")

# --- store -----------------------------------------------------------------------------
COMMIT_SECONDS = _histogram("rml_store_commit_seconds", "Store write latency, by store and "
                            "operation.", ("store", "operation"), _COMMIT_BUCKETS)


# Families without labels have their value from their definition on (see use_directory).
_UNLABELLED = (DEADLINE_MISSES, CHAMPION_VERSION, CHAMPION_COLLECTION, CHAMPION_AUC)


class EdgeFamilies:
    """The request counter and latency histogram an edge's ``Tally`` flushes into."""

    def __init__(self, requests: Counter, latency: Histogram) -> None:
        self.requests, self.latency = requests, latency


INGEST = EdgeFamilies(INGEST_REQUESTS, INGEST_LATENCY)
PREDICT = EdgeFamilies(PREDICT_REQUESTS, PREDICT_LATENCY)


class _Book:
    """What one thread has recorded since it began: cumulative, written by it alone."""

    __slots__ = ("flushed_latency", "flushed_requests", "latency", "requests")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        # route -> [count per bucket..., sum of seconds]
        self.latency: dict[str, list[float]] = {}
        # What `Tally.flush` has added of it so far (the flushing thread's alone).
        self.flushed_requests: dict[tuple[str, int], int] = {}
        self.flushed_latency: dict[str, list[float]] = {}


class Tally:
    """Requests by (route, status), and latencies by route, counted in memory by an edge's
    threads; ``flush`` (one thread: the actor's) adds what came since into the families.

    No lock on the request path: each recording thread counts in a book of its own
    (`ThreadBooks`), cumulative, and ``flush`` copies each book and adds the difference from
    its last copy.
    """

    def __init__(self, families: EdgeFamilies) -> None:
        self._families = families
        self._bounds = tuple(families.latency._upper_bounds)  # noqa: SLF001
        self._books: ThreadBooks[_Book] = ThreadBooks(_Book)

    def record(self, route: str, status: int, seconds: float | None = None) -> None:
        """One request answered; ``seconds`` its latency (None: counted, not timed)."""
        try:
            book: _Book = self._books.local.book
        except AttributeError:
            book = self._books.add()
        requests = book.requests
        key = (route, status)
        requests[key] = requests.get(key, 0) + 1
        if seconds is not None:
            row = book.latency.get(route)
            if row is None:
                row = book.latency[route] = [0.0] * (len(self._bounds) + 1)
            row[bisect.bisect_left(self._bounds, seconds)] += 1
            row[-1] += seconds

    def flush(self) -> None:
        """Add the counts since the last flush to the Prometheus families."""
        books = self._books.all()
        requests, histogram = self._families.requests, self._families.latency
        for book in books:
            counts = book.requests.copy()
            latency = {route: row[:] for route, row in book.latency.copy().items()}
            for (route, status), n in counts.items():
                added = n - book.flushed_requests.get((route, status), 0)
                if added:
                    requests.labels(route, str(status)).inc(added)
            for route, row in latency.items():
                before = book.flushed_latency.get(route) or [0.0] * len(row)
                if row == before:
                    continue
                # prometheus-client has no bulk observe: add to its bucket and sum values
                # directly (tests/test_metrics.py checks this gives what observe() gives).
                child = histogram.labels(route)
                for i, (seen, was) in enumerate(zip(row[:-1], before[:-1], strict=True)):
                    if seen != was:
                        child._buckets[i].inc(seen - was)  # noqa: SLF001
                child._sum.inc(row[-1] - before[-1])  # noqa: SLF001
            book.flushed_requests, book.flushed_latency = counts, latency


def count_batch(kind: str, accepted: int, duplicates: int, rejected: Iterable[str],
                commit_s: float | None) -> None:
    """One ingest batch decoded (and committed, taking ``commit_s``): its facts by
    outcome, the rejected ones by error name, its size."""
    errors: dict[str, int] = {}
    for error in rejected:
        errors[error] = errors.get(error, 0) + 1
    for outcome, n in (("accepted", accepted), ("duplicate", duplicates),
                       ("rejected", sum(errors.values()))):
        if n:
            INGEST_ITEMS.labels(kind, outcome).inc(n)
    for error, n in errors.items():
        INGEST_REJECTED.labels(kind, error).inc(n)
    INGEST_BATCH.labels(kind).observe(accepted + duplicates + sum(errors.values()))
    if commit_s is not None:
        COMMIT_SECONDS.labels("facts", f"insert_{kind}").observe(commit_s)


def flush_counters(family: Counter, now: Mapping[str, int], before: dict[str, int],
                   *labels: str) -> None:
    """Add ``now - before`` of each named count (the last label) to ``family``, and
    remember ``now`` in ``before``."""
    for name, value in now.items():
        delta = value - before.get(name, 0)
        if delta > 0 or name not in before:  # the first time even at 0: the series exists
            family.labels(*labels, name).inc(max(delta, 0))
        before[name] = value


def use_directory(path: Path) -> None:
    """This process and every process it forks from now on write their metrics to files in
    ``path``, emptied first (the keeper, before the actor system starts)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[_ENV] = str(path)
    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus-client chose its value class when first imported, before the variable
        # was set: no family has a value yet (all are labelled), so switching is safe.
        values.ValueClass = values.MultiProcessValue()
        for family in _UNLABELLED:  # their value was made at import: make it again
            family._metric_init()  # noqa: SLF001


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_dead(path: str) -> None:
    """Remove the ``live*`` gauge files of processes that are gone (what prometheus-client's
    ``mark_process_dead`` does, but a file another scrape removed first is no error)."""
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        stem = os.path.basename(name)[:-3]
        pid = stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)


#: The kinds of file whose dead processes' values are kept (summed, or the latest written),
#: and so folded into one file per kind once ``FOLD_AFTER`` of them have gathered.
_FOLDED_KINDS = ("counter", "histogram", "gauge_mostrecent")
FOLD_AFTER = 32
_FOLDED = "folded"  # the folded file's "pid": counter_folded.db
_LOCK = ".scrape.lock"


def _dead_files(path: str) -> dict[str, list[str]]:
    """Kind -> the files of that kind whose process is gone."""
    dead: dict[str, list[str]] = {}
    for name in glob.glob(os.path.join(path, "*.db")):
        kind, _, pid = os.path.basename(name)[:-3].rpartition("_")
        if kind in _FOLDED_KINDS and pid.isdigit() and not _pid_alive(int(pid)):
            dead.setdefault(kind, []).append(name)
    return dead


def fold_dead(path: str) -> int:
    """Fold the files of processes that are gone into one file per kind (``counter_folded.db``
    ...): counters and histograms summed, a ``mostrecent`` gauge's latest value kept, so a
    scrape shows the same figures from fewer files. The caller holds the directory's lock
    exclusively (``render`` does), so no scrape reads the folded file beside the files it
    came from. Returns how many files were folded. (A process given a dead one's pid in the
    instant between the check and the fold would write on in a file no longer read: its
    counts would stop rising, never go back.)"""
    folded = 0
    for kind, files in _dead_files(path).items():
        target = os.path.join(path, f"{kind}_{_FOLDED}.db")
        merged: dict[str, tuple[float, float]] = {}
        taken = []
        for name in ([target] if os.path.exists(target) else []) + sorted(files):
            if os.path.getsize(name) == 0:  # never written: nothing to keep
                taken.append(name)
                continue
            for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(name):
                if kind == "gauge_mostrecent":
                    if key not in merged or timestamp >= merged[key][1]:
                        merged[key] = (value, timestamp)
                else:
                    merged[key] = (merged.get(key, (0.0, 0.0))[0] + value, 0.0)
            taken.append(name)
        staged = target + ".new"  # not *.db: no scrape reads it
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        out = MmapedDict(staged)
        try:
            for key, (value, timestamp) in merged.items():
                out.write_value(key, value, timestamp)
        finally:
            out.close()
        os.replace(staged, target)
        for name in taken:
            if name != target:
                os.unlink(name)
                folded += 1
    return folded


class _Derived:
    """Families computed at scrape time from others: how old each predictor's rows are."""

    def __init__(self, source: Callable[[], Iterable[Metric]],
                 clock: Callable[[], float] = time.time) -> None:
        self._source, self._clock = source, clock

    def collect(self) -> Iterable[Metric]:
        age = GaugeMetricFamily(
            "rml_feature_rows_confirmed_age_seconds",
            "Since when each predictor's in-memory rows are known complete (answers read the "
            "store past [predict] row_freshness_s).", labels=("predictor",))
        now = self._clock()
        for metric in self._source():
            if metric.name != "rml_feature_rows_confirmed_at_seconds":
                continue
            latest: dict[str, float] = {}
            for sample in metric.samples:
                predictor = sample.labels.get("predictor", "")
                latest[predictor] = max(latest.get(predictor, 0.0), sample.value)
            for predictor, at in sorted(latest.items()):
                age.add_metric((predictor,), max(0.0, now - at) if at > 0 else float("inf"))
        return [age]


class _ProcessFiles(MultiProcessCollector):
    """Every process's files merged, as prometheus-client does, but for a file a starting
    process has created and not yet sized: it holds no value yet, and reading it raised
    ``struct.error`` (a scrape answered 500 in a test run, while an actor restarted)."""

    def __init__(self, path: str) -> None:
        super().__init__(None, path)
        self._directory = path

    def collect(self) -> Iterable[Metric]:
        files = []
        for name in glob.glob(os.path.join(self._directory, "*.db")):
            try:
                if os.path.getsize(name) > 0:  # sized once, it only grows
                    files.append(name)
            except OSError:  # gone meanwhile (a dead process's file, forgotten)
                continue
        return self.merge(files, accumulate=True)


def render() -> bytes:
    """The node's metrics in Prometheus text format: every process of the daemon (from the
    multiprocess files), or this process's own when there are none."""
    path = os.environ.get(_ENV)
    if path and os.path.isdir(path):
        _forget_dead(path)
        with open(os.path.join(path, _LOCK), "a") as lock:
            if sum(map(len, _dead_files(path).values())) >= FOLD_AFTER:
                # Another scrape reading: it folds next time (a restarted actor leaves its
                # files behind, and thousands of them would slow every scrape).
                with contextlib.suppress(BlockingIOError):
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fold_dead(path)
            fcntl.flock(lock, fcntl.LOCK_SH)  # from exclusive: shared, never unlocked between
            registry = CollectorRegistry(auto_describe=False)
            collector = _ProcessFiles(path)
            registry.register(collector)
            registry.register(_Derived(collector.collect))
            return generate_latest(registry)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


class _Merged:
    """This process's families, and the derived ones computed from them."""

    def collect(self) -> Iterable[Any]:
        own = list(_REGISTRY.collect())
        return [*own, *_Derived(lambda: own).collect()]
