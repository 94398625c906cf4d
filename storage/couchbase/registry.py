"""``ModelRegistry`` on Couchbase's Data service: numbered records, blobs in chunks, two logs.

Key layout, in one collection (``models``); ``V`` is a version, ``N`` an entry number:

- ``m:V`` -> the model record, entry V of the model log (``AppendLog``): the version *is*
  the number ``append`` took, so two registering processes never share one and no
  counter exists. It holds the job, metrics, lineage and evaluation (the JSON texts
  SQLite stores), the initial status, and the artifact's (and the compiled form's, if
  registered with one) ``{sha256, size, chunks}``. Records never change.
- ``blob:<sha256>:I`` -> chunk I (0, 1, ...) of a blob, raw bytes, ``CHUNK_BYTES`` each
  (the last shorter). Keyed by content, not version: written (one pipelined call) before
  the record that names them, so a record never names a missing chunk; identical blobs
  share chunks; a registration that dies leaves orphan chunks only. Every read joins the
  chunks and checks the sha256 (``StoreError`` if it does not match).
- ``cf:V`` -> ``{sha256, size, chunks}``: a compiled form added after registration,
  taken once with ``insert`` (a second one is a no-op).
- ``st:V:N`` -> entry N of V's status log, ``{s, r, at, c}``; entry 1 is the initial
  status (until it is written, a reader takes the record's).
- ``ch:N`` -> entry N of the champion log, ``{v, p, r, at}``: promotion N crowned ``v``
  and replaced ``p`` (or null).

Promotion is three writes, not a transaction, so every status entry carries a fence
``c``, a champion-log number: the entry that crowns it (a ``champion`` status), the
promotion that replaced it (its ``retired``), else the log's length when it was written.
A reader reads the champion log first (its snapshot: entries 1..M), then status logs,
and takes each version's status as of M: entries fenced past M are not there yet; a
``champion`` entry counts only if entry ``c`` of the champion log names its version (else
it is a promotion that lost the race for that entry, or died before it); a counted
``champion`` entry whose successor ``c + 1`` replaced it reads as followed by its
``retired``, written or not. Promoting V: (1) append ``champion`` fenced M+1 to V's status
log; (2) ``insert`` ``ch:M+1``, the commit, which one promoter alone wins (a loser starts
again from a new snapshot, so each entry's ``p`` is the champion of the entry before);
(3) append ``retired`` fenced M+1 to the replaced one's log. At snapshot M a version is
champion only through a counted ``champion`` entry fenced M, and only the version entry M
names has one: never two champions. (1) precedes (2), and readers read status logs after
the snapshot, so they always find that entry: the champion M names reads as champion
unless demoted since, never none in between. A crash between any two writes leaves the
same reading. No document is updated or removed, and no key is written by every write.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from storage.couchbase.keys import doc_key
from storage.couchbase.kv import KeyValue
from storage.couchbase.log import AppendLog
from storage.couchbase.status_view import (
    EffectiveStatus,
    effective_statuses,
    replaced_reason,
    status_entry,
)
from storage.errors import StoreError
from storage.registry import (
    CANDIDATE,
    CHAMPION,
    RETIRED,
    ChampionChange,
    ModelRecord,
    StatusChange,
)
from storage.sqlite.registry import _check_status, _json, _record, _verified

__all__ = ["CHUNK_BYTES", "CouchbaseModelRegistry", "chunk_key"]

# Part of the key layout: chunk I of a blob is bytes [I * CHUNK_BYTES, (I + 1) * CHUNK_BYTES),
# so changing it needs a new key prefix. Well under Couchbase's 20 MB document limit.
CHUNK_BYTES = 512 * 1024
_PROBE = 4  # status entries asked for per version and call (most logs hold one to three)

Doc = dict[str, Any]


def chunk_key(sha256: str, i: int) -> str:
    """The key of chunk ``i`` of the blob whose sha256 is ``sha256``."""
    return doc_key("blob", sha256, i)


def _status_key(version: int, n: int) -> str:
    return doc_key("st", version, n)


def _blob(data: bytes) -> tuple[Doc, dict[str, bytes]]:
    """A blob's descriptor (for the document naming it) and its chunks by key."""
    sha = hashlib.sha256(data).hexdigest()
    chunks = {chunk_key(sha, i): data[start:start + CHUNK_BYTES]
              for i, start in enumerate(range(0, len(data), CHUNK_BYTES))}
    return {"sha256": sha, "size": len(data), "chunks": len(chunks)}, chunks


class CouchbaseModelRegistry:
    """Versioned models with verified chunked artifacts, status logs and champion history,
    insert-only on the Data service (see the module docstring); thread-safe per instance.
    The connection belongs to whoever opened it: ``close`` only ends this store's use."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._models = AppendLog(kv, "m")
        self._champions = AppendLog(kv, "ch")
        # Caches of what never changes: records, late compiled forms, and the status
        # entries read so far (each log's entries 1..len; a log has no holes).
        self._records: dict[int, Doc] = {}
        self._late_forms: dict[int, Doc] = {}
        self._statuses: dict[int, list[Doc]] = {}
        self._lock = threading.RLock()
        self._closed = False

    # -- writing -----------------------------------------------------------

    def register(self, *, feature_collection_id: int, job: Mapping[str, Any],
                 metrics: Mapping[str, float], lineage: Mapping[str, Any], artifact: bytes,
                 created_at_ms: int, status: str = CANDIDATE,
                 evaluation: Mapping[str, Any] | None = None,
                 compiled: bytes | None = None) -> int:
        """Store a new model (numbered 1, 2, 3, ...) with its artifact, evaluation record
        and compiled form (if it has one); return its version."""
        _check_status(status)
        with self._lock:
            self._check_open()
            self._kv.check_writable()
            artifact_blob, chunks = _blob(bytes(artifact))
            compiled_blob = None
            if compiled is not None:
                compiled_blob, more = _blob(bytes(compiled))
                chunks.update(more)
            initial = CANDIDATE if status == CHAMPION else status  # until the promotion lands
            record = {
                "at": created_at_ms, "fc": feature_collection_id, "job": _json(job),
                "metrics": json.dumps([[str(k), float(v)] for k, v in metrics.items()]),
                "lineage": _json(lineage), "evaluation": _json(evaluation or {}),
                "artifact": artifact_blob, "compiled": compiled_blob,
                "status": initial, "reason": "registered",
            }
            self._kv.insert_bytes_many(chunks)  # first: a record never names a missing chunk
            version = self._models.append(record)
            self._records[version] = record
            if status == CHAMPION:
                self._promote(version, "registered as champion", created_at_ms,
                              materialize=False)
            else:
                self._write_first(version, status_entry(status, "registered", created_at_ms, 0))
        return version

    def set_status(self, version: int, status: str, reason: str, at_ms: int) -> None:
        """Append a status; ``champion`` means ``promote``; the same status again is a no-op."""
        _check_status(status)
        if status == CHAMPION:
            self.promote(version, reason, at_ms)
            return
        with self._lock:
            self._check_open()
            self._kv.check_writable()
            self._record_doc(version)  # KeyError if unknown
            champions = self._champions.entries()
            view = self._views([version], champions)[version]
            if view[-1].status != status:
                self._materialize(version, view)
                self._append_status(version, status_entry(status, reason, at_ms, len(champions)))

    def promote(self, version: int, reason: str, at_ms: int) -> None:
        """Make ``version`` champion and retire the previous one; a no-op if it already is."""
        with self._lock:
            self._check_open()
            self._kv.check_writable()
            self._record_doc(version)  # KeyError if unknown
            self._promote(version, reason, at_ms, materialize=True)

    def _promote(self, version: int, reason: str, at_ms: int, *, materialize: bool) -> None:
        """The three writes of a promotion (see the module docstring)."""
        while True:
            champions = self._champions.entries()
            n = len(champions) + 1
            named = int(champions[-1]["v"]) if champions else None
            views = self._views([v for v in {version, named} if v is not None], champions)
            crowned = named is not None and views[named][-1].status == CHAMPION
            previous = named if crowned else None
            if previous == version:
                return
            if materialize:
                self._materialize(version, views[version])
            self._append_status(version, status_entry(CHAMPION, reason, at_ms, n))
            change = {"v": version, "p": previous, "r": reason, "at": at_ms}
            if self._kv.insert(self._champions.key(n), change):
                break
            # Another promotion took entry n: ours never counts; start again after it.
        if previous is not None:
            self._append_status(previous, status_entry(RETIRED, replaced_reason(version, reason),
                                                 at_ms, n))

    def _append_status(self, version: int, entry: Doc) -> None:
        """Add ``entry`` to ``version``'s status log at its first free number."""
        while True:
            log = self._statuses.setdefault(version, [])
            if self._kv.insert(_status_key(version, len(log) + 1), entry):
                log.append(entry)
                return
            self._status_entries([version])  # taken meanwhile: read on, try the next

    def _write_first(self, version: int, entry: Doc) -> None:
        """Store the initial status as entry 1, unless that is taken: by the same initial
        status, or by whatever a registration as champion wrote there."""
        if self._kv.insert(_status_key(version, 1), entry):
            log = self._statuses.setdefault(version, [])
            if not log:
                log.append(entry)

    def _materialize(self, version: int, view: list[EffectiveStatus]) -> None:
        """Before appending to a log that is still empty (its registration died before
        entry 1), store the record's initial status, so the history keeps it."""
        first = view[0]
        if not first.stored and not self._statuses.get(version):
            self._write_first(version, status_entry(first.status, first.reason, first.at_ms, 0))

    def add_compiled_form(self, version: int, compiled: bytes) -> None:
        """Give a version registered without a compiled form one; a no-op if it has one."""
        with self._lock:
            self._check_open()
            self._kv.check_writable()
            if self._compiled_blob(version) is not None:  # KeyError if unknown
                return
            blob, chunks = _blob(bytes(compiled))
            self._kv.insert_bytes_many(chunks)
            self._kv.insert(doc_key("cf", version), blob)  # False: another was first; kept

    # -- reading -----------------------------------------------------------

    def champion(self) -> ModelRecord | None:
        """The current champion, or None."""
        with self._lock:
            self._check_open()
            champions = self._champions.entries()
            if not champions:
                return None
            version = int(champions[-1]["v"])
            view = self._views([version], champions)[version]
            return self._model(version, view) if view[-1].status == CHAMPION else None

    def champion_history(self) -> tuple[ChampionChange, ...]:
        """Every promotion, oldest first."""
        with self._lock:
            self._check_open()
            return tuple(ChampionChange(int(c["v"]), None if c["p"] is None else int(c["p"]),
                                        str(c["r"]), int(c["at"]))
                         for c in self._champions.entries())

    def status_history(self, version: int) -> tuple[StatusChange, ...]:
        """A model's status log, oldest first (``KeyError`` if unknown)."""
        with self._lock:
            self._check_open()
            self._record_doc(version)
            view = self._views([version], self._champions.entries())[version]
            return tuple(StatusChange(version, s.status, s.reason, s.at_ms) for s in view)

    def get(self, version: int) -> ModelRecord:
        """The model's record (``KeyError`` if unknown)."""
        with self._lock:
            self._check_open()
            self._record_doc(version)
            view = self._views([version], self._champions.entries())[version]
            return self._model(version, view)

    def versions(self) -> tuple[ModelRecord, ...]:
        """Every model, by version."""
        with self._lock:
            self._check_open()
            champions = self._champions.entries()  # first: see the module docstring
            numbers = self._all_versions()
            views = self._views(numbers, champions)
            return tuple(self._model(v, views[v]) for v in numbers)

    def artifact(self, version: int) -> bytes:
        """The artifact, verified against its sha256 (``StoreError`` if it fails)."""
        with self._lock:
            self._check_open()
            blob = self._record_doc(version)["artifact"]
            return self._read_blob(blob, f"artifact of model version {version}")

    def compiled_form(self, version: int) -> bytes | None:
        """The compiled form (``learning.serving.compiled``), verified against its sha256
        (``StoreError`` if it fails); None for a version registered without one."""
        with self._lock:
            self._check_open()
            try:
                blob = self._compiled_blob(version)
            except KeyError:
                return None  # as SQLite: no such version has no compiled form
            if blob is None:
                return None
            return self._read_blob(blob, f"compiled form of model version {version}")

    def champion_for_collection(self, collection_id: int) -> ModelRecord | None:
        """The newest champion-or-retired model trained on ``collection_id`` (for fallback)."""
        with self._lock:
            self._check_open()
            champions = self._champions.entries()
            ours = [v for v in self._all_versions()
                    if self._records[v]["fc"] == collection_id]
            views = self._views(ours, champions)
            for version in reversed(ours):
                if views[version][-1].status in (CHAMPION, RETIRED):
                    return self._model(version, views[version])
            return None

    def close(self) -> None:
        """End this store's use (the connection's owner closes it); idempotent."""
        self._closed = True

    # -- internals ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self._kv.where}: the store is closed")

    def _record_doc(self, version: int) -> Doc:
        """The record of ``version`` (``KeyError`` if unknown)."""
        record = self._records.get(version)
        if record is None:
            record = self._kv.get(self._models.key(version)) if version > 0 else None
            if record is None:
                raise KeyError(f"no model version {version}")
            self._records[version] = record
        return record

    def _all_versions(self) -> list[int]:
        """Every version, reading only records not read before."""
        records = self._models.entries()
        for version, record in enumerate(records, start=1):
            self._records.setdefault(version, record)
        return list(range(1, len(records) + 1))

    def _status_entries(self, versions: Iterable[int]) -> dict[int, list[Doc]]:
        """Each version's stored status entries, oldest first: every log probed past what
        was read before, ``_PROBE`` keys each, all in one call."""
        wanted = list(dict.fromkeys(versions))
        found = {v: self._statuses.setdefault(v, []) for v in wanted}
        open_logs = wanted
        while open_logs:
            keys = {(v, n): _status_key(v, n) for v in open_logs
                    for n in range(len(found[v]) + 1, len(found[v]) + 1 + _PROBE)}
            got = self._kv.get_many(list(keys.values()))
            still = []
            for v in open_logs:
                start = len(found[v]) + 1
                for n in range(start, start + _PROBE):
                    entry = got.get(keys[(v, n)])
                    if entry is None:
                        break
                    found[v].append(entry)
                else:
                    still.append(v)
            open_logs = still
        return {v: list(found[v]) for v in wanted}

    def _views(self, versions: Sequence[int], champions: Sequence[Doc]
               ) -> dict[int, list[EffectiveStatus]]:
        """Each version's status as of ``champions``, read before the status logs are."""
        raw = self._status_entries(versions)
        return {v: effective_statuses(v, self._record_doc(v), raw[v], champions) for v in versions}

    def _model(self, version: int, view: list[EffectiveStatus]) -> ModelRecord:
        r, current = self._record_doc(version), view[-1]
        return _record((version, r["at"], current.status, r["fc"], r["job"], r["metrics"],
                        r["lineage"], r["artifact"]["sha256"], current.reason, r["evaluation"]))

    def _compiled_blob(self, version: int) -> Doc | None:
        """The compiled form's descriptor, or None (``KeyError`` if the version is unknown)."""
        registered = self._record_doc(version).get("compiled")
        if registered is not None:
            return dict(registered)
        if version not in self._late_forms:
            late = self._kv.get(doc_key("cf", version))
            if late is None:
                return None
            self._late_forms[version] = late
        return self._late_forms[version]

    def _read_blob(self, blob: Mapping[str, Any], what: str) -> bytes:
        """The blob's chunks joined (one call), verified against its sha256."""
        keys = [chunk_key(str(blob["sha256"]), i) for i in range(int(blob["chunks"]))]
        got = self._kv.get_bytes_many(keys)
        missing = len(keys) - len(got)
        if missing:
            raise StoreError(f"{what}: {missing} of its {len(keys)} chunks are missing; "
                             "refusing to return it")
        return _verified(b"".join(got[key] for key in keys), str(blob["sha256"]), what)
