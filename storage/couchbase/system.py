"""The system records on Couchbase's Data service: dead letters, training runs, drift checks
and shadow trials, each an append-only log (``AppendLog``) or a document written once.

Key layout, in one collection (``system``); ``N`` = 1, 2, 3, ... numbers a log's entries,
``V`` is a model version, ``R`` a shadow reporter:

- ``dl:N`` -> dead letter N (``DeadLetter``'s fields, the repr already truncated).
- ``tr:N`` -> training run N, in ``TrainingRun.to_mapping`` form.
- ``dc:N`` -> drift check N (``DriftCheck``'s fields, the scores as ``[name, psi]`` pairs).
- ``sh:V`` -> ``{"version", "target", "started_at_ms"}``: V's shadow trial, written by the
  first ``start`` (a later one finds the key and returns what is there).
- ``shv:N`` -> ``{"version": V}``: the trial directory, written before ``sh:V`` so no
  trial is ever missing from it; a version may appear twice, and is read as a set.
- ``shr:V:N`` -> ``{"reporter": R}``: who reported on V's trial, written before R's first
  report (so R's counts are never missing from the totals); read as a set.
- ``shc:V:R:N`` -> ``{"reporter", "served", "agreed", "errors", "at_ms"}``: R's N-th
  cumulative report on V. A report no larger in any field than one already there (a
  redelivery, a late one) is not written at all.

A trial's totals are, summed over its reporters, the largest value of each field among
the reporter's reports, and it was updated at its newest report's ``at_ms`` (its start's
if none): what SQLite's upsert keeping the maxima stores. Nothing is ever updated or
removed, and no key is written by every writer: a log's next free number is the only key
two writers may race for, and the loser takes the next one. A log's entries never change,
so each store reads only those it has not read before: ``run_of`` and
``retrained_in_episode`` walk the runs, and a trial's totals its reports, once per
process, then only what was appended since.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from storage.couchbase.keys import doc_key
from storage.couchbase.kv import KeyValue
from storage.couchbase.log import AppendLog
from storage.deadletters import DeadLetter, dead_letter
from storage.errors import StoreError
from storage.records import DriftCheck, Trigger
from storage.shadow import ShadowCounts, ShadowTrial
from storage.training_runs import REGISTERED, TrainingRun, failures_at_head

__all__ = ["CouchbaseDeadLetters", "CouchbaseDriftLog", "CouchbaseShadowTrials",
           "CouchbaseTrainingRuns"]

_FIELDS = ("served", "agreed", "errors")  # ShadowCounts' fields, as stored in a report


class _SystemStore:
    """What the system stores share: a collection, and refusing every call once closed."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self._kv.where}: the store is closed")

    def _check_writable(self) -> None:
        self._check_open()
        self._kv.check_writable()  # before any read: a refused write costs no call

    def close(self) -> None:
        """Refuse further calls; idempotent (the connection is closed by its owner)."""
        self._closed = True


# -- dead letters ------------------------------------------------------------------------


class CouchbaseDeadLetters(_SystemStore):
    """Dead letters as the log ``dl`` (see the module docstring)."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv)
        self._log = AppendLog(kv, "dl")

    def record(self, *, at_ms: int, actor: str, message: object, error: object,
               message_type: str | None = None) -> DeadLetter:
        """Append a dead letter for ``message`` and return what was stored."""
        self._check_writable()
        letter = dead_letter(at_ms=at_ms, actor=actor, message=message, error=error,
                             message_type=message_type)
        self._log.append({"at_ms": letter.at_ms, "actor": letter.actor,
                          "message_type": letter.message_type, "message": letter.message,
                          "error": letter.error})
        return letter

    def list(self, limit: int = 100) -> tuple[DeadLetter, ...]:
        """The newest dead letters, newest first."""
        self._check_open()
        if limit <= 0:
            return ()
        return tuple(DeadLetter(int(d["at_ms"]), d["actor"], d["message_type"], d["message"],
                                d["error"]) for d in self._log.newest(limit))

    def count(self) -> int:
        """How many dead letters were ever recorded."""
        self._check_open()
        return self._log.length()


# -- training runs -----------------------------------------------------------------------


def _run(doc: Mapping[str, Any]) -> TrainingRun:
    """A run from its ``to_mapping`` form (the trigger's kind and reason out of its detail)."""
    detail = dict(doc["trigger"])
    kind, reason = detail.pop("kind"), detail.pop("reason")
    version = doc["version"]
    return TrainingRun(doc["correlation_id"], int(doc["started_at_ms"]),
                       Trigger(kind, reason, detail), doc["trainer"], doc["outcome"],
                       doc["error"], float(doc["seconds"]),
                       None if version is None else int(version))


class CouchbaseTrainingRuns(_SystemStore):
    """The training runs as the log ``tr`` (see the module docstring)."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv)
        self._log = AppendLog(kv, "tr")

    def record(self, run: TrainingRun) -> None:
        """Append ``run`` (durable on return, at the configured durability)."""
        self._check_writable()
        # float: SQLite's REAL column gives a float back, so must this.
        self._log.append({**run.to_mapping(), "seconds": float(run.seconds)})

    def runs(self, limit: int = 100) -> tuple[TrainingRun, ...]:
        """The newest runs, newest first."""
        self._check_open()
        if limit <= 0:
            return ()
        return tuple(_run(doc) for doc in self._log.newest(limit))

    def retrained_in_episode(self, champion_version: int, episode_started_at_ms: int) -> bool:
        """Whether a drift run registered a version in this champion's drift episode (a run
        that timed out or failed leaves the episode free to retrain)."""
        self._check_open()
        return any(doc["outcome"] == REGISTERED and doc["trigger"].get("kind") == "drift"
                   and doc["trigger"].get("champion_version") == champion_version
                   and doc["trigger"].get("episode_started_at_ms") == episode_started_at_ms
                   for doc in self._log.entries())

    def run_of(self, version: int) -> TrainingRun | None:
        """The run that registered ``version`` (the newest, should there be two), or None."""
        self._check_open()
        for doc in reversed(self._log.entries()):
            if doc["version"] == version:
                return _run(doc)
        return None

    def failures_in_a_row(self, trainer: str, limit: int = 64) -> tuple[TrainingRun, ...]:
        """The newest runs through ``trainer`` that timed out or failed, up to the newest run
        that did not (or went through another trainer); newest first, at most ``limit``."""
        return failures_at_head(self.runs(limit), trainer)


# -- drift checks ------------------------------------------------------------------------


class CouchbaseDriftLog(_SystemStore):
    """The drift checks as the log ``dc`` (see the module docstring)."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv)
        self._log = AppendLog(kv, "dc")

    def record_check(self, check: DriftCheck) -> None:
        """Append a drift check."""
        self._check_writable()
        self._log.append({
            "at_ms": check.at_ms, "champion_version": check.champion_version,
            "collection_id": check.collection_id, "window_start_ms": check.window_start_ms,
            "window_end_ms": check.window_end_ms, "rows": check.rows,
            "scores": [[name, float(score)] for name, score in check.scores],
            "threshold": float(check.threshold),
            "episode_started_at_ms": check.episode_started_at_ms})

    def latest_check(self) -> DriftCheck | None:
        """The newest drift check, or None."""
        self._check_open()
        newest = self._log.newest(1)
        if not newest:
            return None
        d = newest[0]
        episode = d["episode_started_at_ms"]
        return DriftCheck(int(d["at_ms"]), int(d["champion_version"]), int(d["collection_id"]),
                          int(d["window_start_ms"]), int(d["window_end_ms"]), int(d["rows"]),
                          tuple((str(name), float(score)) for name, score in d["scores"]),
                          float(d["threshold"]), None if episode is None else int(episode))


# -- shadow trials -----------------------------------------------------------------------


def _largest(reports: list[Any]) -> tuple[ShadowCounts, int | None]:
    """One reporter's counts (the largest of each field) and its newest report's time."""
    if not reports:
        return ShadowCounts(), None
    return (ShadowCounts(*(max(int(r[f]) for r in reports) for f in _FIELDS)),
            max(int(r["at_ms"]) for r in reports))


class CouchbaseShadowTrials(_SystemStore):
    """Shadow trials as documents written once, their counts as one log per reporter (see
    the module docstring); thread-safe."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv)
        self._directory = AppendLog(kv, "shv")
        self._trials: dict[int, dict[str, Any]] = {}  # sh:V as read (it never changes)
        self._logs: dict[tuple[object, ...], AppendLog] = {}  # kept for what each has read
        self._lock = threading.Lock()

    def _log(self, prefix: str, *parts: object) -> AppendLog:
        with self._lock:
            log = self._logs.get((prefix, *parts))
            if log is None:
                log = self._logs[(prefix, *parts)] = AppendLog(self._kv, prefix, *parts)
            return log

    def _trial_doc(self, version: int) -> dict[str, Any] | None:
        with self._lock:
            known = self._trials.get(version)
        if known is not None:
            return known
        doc = self._kv.get(doc_key("sh", version))
        if doc is not None:
            with self._lock:
                self._trials[version] = doc
        return doc

    def _reporters(self, version: int) -> list[str]:
        """Who reported on ``version``'s trial, each once, in the order they first came."""
        return list(dict.fromkeys(str(e["reporter"]) for e in self._log("shr", version).entries()))

    def _with_totals(self, doc: Mapping[str, Any]) -> ShadowTrial:
        """The trial ``doc`` with its counts summed over its reporters, as stored now."""
        version = int(doc["version"])
        served = agreed = errors = 0
        updated: int | None = None
        for reporter in self._reporters(version):
            counts, at = _largest(self._log("shc", version, reporter).entries())
            served, agreed, errors = (served + counts.served, agreed + counts.agreed,
                                      errors + counts.errors)
            if at is not None:
                updated = at if updated is None else max(updated, at)
        started = int(doc["started_at_ms"])
        return ShadowTrial(version, int(doc["target"]), started,
                           ShadowCounts(served, agreed, errors),
                           started if updated is None else updated)

    def start(self, version: int, target: int, at_ms: int) -> ShadowTrial:
        """Begin ``version``'s trial (idempotent: a trial already begun is returned as is)."""
        if target < 1:
            raise ValueError(f"a shadow trial needs a target of at least 1 request, got {target}")
        self._check_writable()
        doc = self._trial_doc(version)
        if doc is None:
            # The directory first: a crash before the trial leaves a name that reads as none.
            if all(int(e["version"]) != version for e in self._directory.entries()):
                self._directory.append({"version": version})
            key = doc_key("sh", version)
            self._kv.insert(key, {"version": version, "target": target, "started_at_ms": at_ms})
            doc = self._trial_doc(version)  # ours, or the one another writer stored first
            if doc is None:
                raise StoreError(f"{self._kv.where}: {key} was inserted but cannot be read")
        return self._with_totals(doc)

    def record(self, version: int, reporter: str, counts: ShadowCounts,
               at_ms: int) -> ShadowTrial:
        """Keep ``reporter``'s cumulative counts (the largest seen); the trial's new totals.
        ``KeyError`` if ``version`` has no trial."""
        self._check_writable()
        doc = self._trial_doc(version)
        if doc is None:
            raise KeyError(f"model version {version} has no shadow trial")
        if reporter not in self._reporters(version):
            # Before the report, so a reporter's counts are never left out of the totals.
            self._log("shr", version).append({"reporter": reporter})
        reports = self._log("shc", version, reporter)
        kept, newest = _largest(reports.entries())
        report = {"reporter": reporter, "served": counts.served, "agreed": counts.agreed,
                  "errors": counts.errors, "at_ms": at_ms}
        if newest is None or at_ms > newest or any(report[f] > getattr(kept, f)
                                                   for f in _FIELDS):
            reports.append(report)  # else redelivered or late: it would change nothing
        return self._with_totals(doc)

    def get(self, version: int) -> ShadowTrial | None:
        """``version``'s trial, or None."""
        self._check_open()
        doc = self._trial_doc(version)
        return None if doc is None else self._with_totals(doc)

    def trials(self) -> tuple[ShadowTrial, ...]:
        """Every trial, by version."""
        self._check_open()
        versions = sorted({int(e["version"]) for e in self._directory.entries()})
        with self._lock:
            unread = [v for v in versions if v not in self._trials]
        found = self._kv.get_many([doc_key("sh", v) for v in unread])
        with self._lock:
            for v in unread:
                if doc_key("sh", v) in found:
                    self._trials[v] = found[doc_key("sh", v)]
            docs = [self._trials[v] for v in versions if v in self._trials]
        return tuple(self._with_totals(doc) for doc in docs)
