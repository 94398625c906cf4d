"""``ModelRegistry`` on an SQLite file: models, artifacts, status log and champion log.

Promotion runs in one write transaction (retire the old champion, crown the new
one, log the change), so every process sees either the old champion or the new
one, never two and never none in between.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storage.errors import StoreError
from storage.registry import (
    CANDIDATE,
    CHAMPION,
    RETIRED,
    STATUSES,
    ChampionChange,
    ModelRecord,
    StatusChange,
)
from storage.sqlite.connection import SQLiteBacked

__all__ = ["SQLiteModelRegistry"]

# The status log's columns. SQLite fixes a CHECK when the table is created, so a file made
# before a status existed refuses that status until the table is rebuilt (``_widen_statuses``).
_STATUS_NAMES = ", ".join(f"'{status}'" for status in sorted(STATUSES))
_STATUS_LOG_COLUMNS = f"""(
    seq INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({_STATUS_NAMES})),
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT"""
_STATUS_INDEX = "CREATE INDEX IF NOT EXISTS status_by_version ON status_log (version, seq)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    version INTEGER PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    feature_collection_id INTEGER NOT NULL,
    job TEXT NOT NULL,
    metrics TEXT NOT NULL,
    lineage TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    evaluation TEXT NOT NULL DEFAULT '{}'
) STRICT;
CREATE TABLE IF NOT EXISTS artifacts (
    version INTEGER PRIMARY KEY,
    data BLOB NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS compiled_forms (
    version INTEGER PRIMARY KEY,
    data BLOB NOT NULL,
    sha256 TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS status_log """ + _STATUS_LOG_COLUMNS + ";\n" + _STATUS_INDEX + """;
CREATE TABLE IF NOT EXISTS champion_log (
    seq INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    previous_version INTEGER,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT;
"""

# A file made before the evaluation column gets it on the first writable open.
_ADD_EVALUATION = "ALTER TABLE models ADD COLUMN evaluation TEXT NOT NULL DEFAULT '{}'"

# A model joined with the newest row of its status log.
_RECORDS = """
SELECT m.version, m.created_at_ms, s.status, m.feature_collection_id, m.job, m.metrics,
       m.lineage, m.artifact_sha256, s.reason, m.evaluation
FROM models AS m
JOIN status_log AS s ON s.seq = (SELECT max(seq) FROM status_log WHERE version = m.version)
"""
_NEWEST_CHAMPION = "SELECT version FROM champion_log ORDER BY seq DESC LIMIT 1"


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _json(value: Mapping[str, Any]) -> str:
    """Canonical JSON text (sorted keys) of a mapping of JSON-like values."""
    return json.dumps(value, default=_json_default, sort_keys=True, separators=(",", ":"))


def _record(row: tuple[Any, ...]) -> ModelRecord:
    version, created, status, collection, job, metrics, lineage, sha, reason, evaluation = row
    pairs = tuple((str(name), float(value)) for name, value in json.loads(metrics))
    return ModelRecord(version, created, status, collection, job, pairs, lineage, sha, reason,
                       evaluation)


def _has_evaluation(conn: sqlite3.Connection) -> bool:
    return any(row[1] == "evaluation" for row in conn.execute("PRAGMA table_info(models)"))


def _refused_statuses(conn: sqlite3.Connection) -> frozenset[str]:
    """The statuses the file's ``status_log`` CHECK leaves out (a file made before they
    existed); none when its CHECK names them all, or it has none."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' "
                       "AND name = 'status_log'").fetchone()
    sql = str(row[0]) if row is not None else ""
    if "CHECK" not in sql.upper():
        return frozenset()
    return frozenset(status for status in STATUSES if f"'{status}'" not in sql)


def _widen_statuses(conn: sqlite3.Connection) -> None:
    """Inside a write transaction: rebuild ``status_log`` with the current CHECK, every row
    kept (SQLite cannot alter a CHECK in place), and its index."""
    conn.execute(f"CREATE TABLE status_log_widened {_STATUS_LOG_COLUMNS}")
    conn.execute("INSERT INTO status_log_widened (seq, version, status, reason, at_ms) "
                 "SELECT seq, version, status, reason, at_ms FROM status_log")
    conn.execute("DROP TABLE status_log")  # drops its index too
    conn.execute("ALTER TABLE status_log_widened RENAME TO status_log")
    conn.execute(_STATUS_INDEX)


class SQLiteModelRegistry(SQLiteBacked):
    """Versioned models with verified artifacts, status log and champion history."""

    SCHEMA = _SCHEMA

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0,
                 read_only: bool = False) -> None:
        super().__init__(path, busy_timeout_s=busy_timeout_s, read_only=read_only)
        self._records = _RECORDS
        with self._db.read() as conn:
            present, refused = _has_evaluation(conn), _refused_statuses(conn)
        if read_only:  # an older file is read as is (and never written through this store)
            if not present:  # no evaluation records
                self._records = _RECORDS.replace("m.evaluation", "'{}'")
        elif not present or refused:
            # An older file is brought up to date on the first writable open, in one
            # transaction; another process may have just done it, hence the checks again.
            with self._db.write() as conn:
                if not _has_evaluation(conn):
                    conn.execute(_ADD_EVALUATION)
                if _refused_statuses(conn):
                    _widen_statuses(conn)

    # -- writing -----------------------------------------------------------

    def register(self, *, feature_collection_id: int, job: Mapping[str, Any],
                 metrics: Mapping[str, float], lineage: Mapping[str, Any], artifact: bytes,
                 created_at_ms: int, status: str = CANDIDATE,
                 evaluation: Mapping[str, Any] | None = None,
                 compiled: bytes | None = None) -> int:
        """Store a new model (numbered 1, 2, 3, ...) with its artifact, evaluation record
        and compiled form (if it has one); return its version."""
        _check_status(status)
        data = bytes(artifact)
        sha = hashlib.sha256(data).hexdigest()
        metric_pairs = json.dumps([[str(k), float(v)] for k, v in metrics.items()])
        job_text, lineage_text = _json(job), _json(lineage)
        evaluation_text = _json(evaluation or {})
        with self._db.write() as conn:
            cursor = conn.execute(
                "INSERT INTO models (created_at_ms, feature_collection_id, job, metrics, "
                "lineage, artifact_sha256, evaluation) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (created_at_ms, feature_collection_id, job_text, metric_pairs, lineage_text, sha,
                 evaluation_text))
            version = cursor.lastrowid
            assert version is not None
            conn.execute("INSERT INTO artifacts (version, data) VALUES (?, ?)", (version, data))
            if compiled is not None:
                _insert_compiled(conn, version, compiled)
            if status == CHAMPION:
                _promote(conn, version, "registered as champion", created_at_ms)
            else:
                _append_status(conn, version, status, "registered", created_at_ms)
        return version

    def set_status(self, version: int, status: str, reason: str, at_ms: int) -> None:
        """Append a status; ``champion`` means ``promote``; the same status again is a no-op."""
        _check_status(status)
        if status == CHAMPION:
            self.promote(version, reason, at_ms)
            return
        with self._db.write() as conn:
            if _current_status(conn, version) != status:
                _append_status(conn, version, status, reason, at_ms)

    def promote(self, version: int, reason: str, at_ms: int) -> None:
        """Make ``version`` champion and retire the previous one; a no-op if it already is."""
        with self._db.write() as conn:
            _current_status(conn, version)  # KeyError if unknown
            _promote(conn, version, reason, at_ms)

    # -- reading -----------------------------------------------------------

    def champion(self) -> ModelRecord | None:
        """The current champion, or None."""
        with self._db.read() as conn:
            row = conn.execute(f"{self._records} WHERE m.version = ({_NEWEST_CHAMPION}) "
                               "AND s.status = ?", (CHAMPION,)).fetchone()
        return None if row is None else _record(row)

    def champion_history(self) -> tuple[ChampionChange, ...]:
        """Every promotion, oldest first."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT version, previous_version, reason, at_ms "
                                "FROM champion_log ORDER BY seq").fetchall()
        return tuple(ChampionChange(*row) for row in rows)

    def status_history(self, version: int) -> tuple[StatusChange, ...]:
        """A model's status log, oldest first (``KeyError`` if unknown)."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT version, status, reason, at_ms FROM status_log "
                                "WHERE version = ? ORDER BY seq", (version,)).fetchall()
        if not rows:
            raise KeyError(f"no model version {version}")
        return tuple(StatusChange(*row) for row in rows)

    def get(self, version: int) -> ModelRecord:
        """The model's record (``KeyError`` if unknown)."""
        with self._db.read() as conn:
            row = conn.execute(f"{self._records} WHERE m.version = ?", (version,)).fetchone()
        if row is None:
            raise KeyError(f"no model version {version}")
        return _record(row)

    def versions(self) -> tuple[ModelRecord, ...]:
        """Every model, by version."""
        with self._db.read() as conn:
            rows = conn.execute(f"{self._records} ORDER BY m.version").fetchall()
        return tuple(_record(row) for row in rows)

    def artifact(self, version: int) -> bytes:
        """The artifact, verified against its sha256 (``StoreError`` if it fails)."""
        with self._db.read() as conn:
            row = conn.execute("SELECT a.data, m.artifact_sha256 FROM artifacts AS a "
                               "JOIN models AS m USING (version) WHERE version = ?",
                               (version,)).fetchone()
        if row is None:
            raise KeyError(f"no model version {version}")
        return _verified(bytes(row[0]), row[1], f"artifact of model version {version}")

    def add_compiled_form(self, version: int, compiled: bytes) -> None:
        """Give a version registered without a compiled form one; a no-op if it has one."""
        with self._db.write() as conn:
            known = conn.execute("SELECT 1 FROM models WHERE version = ?", (version,))
            if known.fetchone() is None:
                raise KeyError(f"no model version {version}")
            _insert_compiled(conn, version, compiled, ignore=True)

    def compiled_form(self, version: int) -> bytes | None:
        """The compiled form (``learning.serving.compiled``), verified against its sha256
        (``StoreError`` if it fails); None for a version registered without one."""
        if not self._db.has_tables("compiled_forms"):  # a read-only file from before them
            return None
        with self._db.read() as conn:
            row = conn.execute("SELECT data, sha256 FROM compiled_forms WHERE version = ?",
                               (version,)).fetchone()
        if row is None:
            return None
        return _verified(bytes(row[0]), row[1], f"compiled form of model version {version}")

    def champion_for_collection(self, collection_id: int) -> ModelRecord | None:
        """The newest champion-or-retired model trained on ``collection_id`` (for fallback)."""
        with self._db.read() as conn:
            row = conn.execute(f"{self._records} WHERE m.feature_collection_id = ? "
                               "AND s.status IN (?, ?) ORDER BY m.version DESC LIMIT 1",
                               (collection_id, CHAMPION, RETIRED)).fetchone()
        return None if row is None else _record(row)


def _verified(data: bytes, expected: str, what: str) -> bytes:
    """``data`` if its sha256 is ``expected``; else ``StoreError`` naming ``what``."""
    if hashlib.sha256(data).hexdigest() != expected:
        raise StoreError(f"{what} does not match its sha256; refusing to return it")
    return data


def _insert_compiled(conn: sqlite3.Connection, version: int, compiled: bytes, *,
                     ignore: bool = False) -> None:
    """Inside a write transaction: store ``version``'s compiled form with its sha256
    (``ignore``: keep the one it already has, if any)."""
    form = bytes(compiled)
    verb = "INSERT OR IGNORE" if ignore else "INSERT"
    conn.execute(f"{verb} INTO compiled_forms (version, data, sha256) VALUES (?, ?, ?)",
                 (version, form, hashlib.sha256(form).hexdigest()))


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown model status {status!r}; expected one of {sorted(STATUSES)}")


def _current_status(conn: sqlite3.Connection, version: int) -> str:
    row = conn.execute("SELECT status FROM status_log WHERE version = ? "
                       "ORDER BY seq DESC LIMIT 1", (version,)).fetchone()
    if row is None:
        raise KeyError(f"no model version {version}")
    return str(row[0])


def _append_status(conn: sqlite3.Connection, version: int, status: str, reason: str,
                   at_ms: int) -> None:
    conn.execute("INSERT INTO status_log (version, status, reason, at_ms) VALUES (?, ?, ?, ?)",
                 (version, status, reason, at_ms))


def _promote(conn: sqlite3.Connection, version: int, reason: str, at_ms: int) -> None:
    """Inside a write transaction: retire the current champion, crown ``version``, log it."""
    newest = conn.execute(_NEWEST_CHAMPION).fetchone()
    previous = None
    if newest is not None and _current_status(conn, newest[0]) == CHAMPION:
        previous = int(newest[0])
    if previous == version:
        return
    if previous is not None:
        _append_status(conn, previous, RETIRED, f"replaced by version {version}: {reason}",
                       at_ms)
    _append_status(conn, version, CHAMPION, reason, at_ms)
    conn.execute("INSERT INTO champion_log (version, previous_version, reason, at_ms) "
                 "VALUES (?, ?, ?, ?)", (version, previous, reason, at_ms))
