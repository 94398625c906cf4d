"""What every SQLite store shares: connection settings, transactions and error mapping.

Each process (actor) opens its own connection; several processes write the
same file. So: WAL (readers never wait for the writer), ``synchronous=FULL``
(a commit is on disk before the caller acknowledges anything), a busy timeout
instead of failing on the first lock, and ``BEGIN IMMEDIATE`` for writes so a
writer takes the lock up front rather than failing on upgrade. One lock per
connection lets an actor's HTTP thread and its message thread share a store.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

import structlog

from storage.errors import StoreError, StoreTimeout, StoreUnavailable

__all__ = ["Migration", "SQLiteBacked", "SQLiteDatabase", "schema_version", "translate_errors"]

_log = structlog.get_logger()

_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_UNAVAILABLE = frozenset({
    sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH, sqlite3.SQLITE_NOLFS,
    sqlite3.SQLITE_PROTOCOL,
})

_SCHEMA_OBJECT = re.compile(r"CREATE (TABLE|INDEX) IF NOT EXISTS (\w+)")


def _schema_objects(schema: str) -> tuple[set[str], set[str]]:
    """The names a schema creates: every object, and the tables among them."""
    objects = _SCHEMA_OBJECT.findall(schema)
    return {name for _, name in objects}, {name for kind, name in objects if kind == "TABLE"}


def _found(conn: sqlite3.Connection, names: Iterable[str], kind: str | None = None) -> set[str]:
    """Which of ``names`` the file holds (only objects of ``kind``, e.g. "table", if given).
    Reading ``sqlite_master`` fails if the file is not a database."""
    wanted = tuple(names)
    sql = f"SELECT name FROM sqlite_master WHERE name IN ({', '.join('?' * len(wanted))})"
    if kind is not None:
        sql += " AND type = ?"
        wanted += (kind,)
    return {str(row[0]) for row in conn.execute(sql, wanted)}


def _store_error(exc: sqlite3.Error | OSError, path: Path, busy_timeout_s: float) -> StoreError:
    """The project's error for a backend exception."""
    if isinstance(exc, OSError):
        return StoreUnavailable(f"{path}: {exc}")
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in _BUSY:
        return StoreTimeout(f"{path}: still locked after the {busy_timeout_s:g} s busy timeout")
    if primary in _UNAVAILABLE:
        return StoreUnavailable(f"{path}: {exc}")
    return StoreError(f"{path}: {exc}")


@contextmanager
def translate_errors(path: Path, busy_timeout_s: float) -> Iterator[None]:
    """Raise the project's ``StoreError`` family instead of sqlite3 or OS errors."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise _store_error(exc, path, busy_timeout_s) from exc


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of a store's schema: applied once to a file written before it, in one
    transaction with the file's ``user_version`` set to ``version`` (a fresh file is made
    with the newest schema and only stamped)."""

    version: int
    description: str
    statements: tuple[str, ...]


def schema_version(migrations: Sequence[Migration]) -> int:
    """The version a file has once every migration is applied (0: none)."""
    return max((m.version for m in migrations), default=0)


class SQLiteDatabase:
    """One connection to one database file, with short write and read transactions."""

    def __init__(self, path: Path, schema: str, *, busy_timeout_s: float = 10.0,
                 read_only: bool = False, migrations: Sequence[Migration] = ()) -> None:
        if busy_timeout_s < 0:
            raise ValueError("busy_timeout_s must be >= 0")
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.read_only = read_only
        self._lock = threading.Lock()
        self._closed = False
        # Tables known to be in the file (replaced, never mutated, so read without the
        # lock). None is ever dropped (a rebuild swaps one in within its transaction), so
        # a table once seen is never looked for again.
        self._tables: set[str] = set()
        self._migrations = tuple(sorted(migrations, key=lambda m: m.version))
        with translate_errors(self.path, busy_timeout_s):
            self._conn = self._connect()
            try:
                self._prepare(schema)
            except BaseException:
                self._conn.close()
                raise

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            # mode=rw: never create a missing file; query_only refuses writes.
            uri = f"file:{quote(str(self.path.absolute()))}?mode=rw"
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s,
                                   isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s,
                                   isolation_level=None, check_same_thread=False)
        return conn

    def _prepare(self, schema: str) -> None:
        conn = self._conn
        if self.read_only:
            conn.execute("PRAGMA query_only = ON")
            # An older file may lack some of the schema's tables (fails if not a db).
            self._tables = _found(conn, _schema_objects(schema)[1], "table")
            return
        # Several processes may open a fresh file at once; switching to WAL can
        # report BUSY without waiting, so retry until the busy deadline.
        deadline = time.monotonic() + self.busy_timeout_s
        names, tables = _schema_objects(schema)
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreUnavailable(f"{self.path}: WAL journal refused (got {mode!r})")
                conn.execute("PRAGMA synchronous = FULL")
                self._migrate(conn, tables)
                if _found(conn, names) != names:  # skip the write lock when already there
                    conn.executescript(f"BEGIN IMMEDIATE;\n{schema}\nCOMMIT;")
                self._tables = tables
                return
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                if code not in _BUSY or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        """Bring a file written by an earlier release to the newest schema, one versioned
        step at a time, under the write lock (another process may be doing it: the version
        is read again once the lock is held). A fresh file is only stamped."""
        newest = schema_version(self._migrations)
        if conn.execute("PRAGMA user_version").fetchone()[0] >= newest:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            written_before = bool(_found(conn, tables, "table"))
            for migration in self._migrations:
                if migration.version <= version:
                    continue
                if written_before:
                    began = time.perf_counter()
                    for statement in migration.statements:
                        conn.execute(statement)
                    _log.info("sqlite_migrated", path=str(self.path), version=migration.version,
                              description=migration.description,
                              seconds=round(time.perf_counter() - began, 3))
                conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def version(self) -> int:
        """The file's schema version (``PRAGMA user_version``)."""
        with self.read() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def has_tables(self, *names: str) -> bool:
        """Whether the file has every one of these tables. Known at open (a writable open
        makes its schema's tables; a read-only one looks for them), so usually no query;
        a table still missing is looked for again on each call, since a read-only store
        may outlive another process's writable open that creates it. Not inside
        ``read``/``write`` (it may take the connection's lock)."""
        wanted = set(names)
        if wanted <= self._tables:
            return True
        with self.read() as conn:
            self._tables = self._tables | _found(conn, wanted - self._tables, "table")
        return wanted <= self._tables

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        with self._lock, translate_errors(self.path, self.busy_timeout_s):
            if self._closed:
                raise StoreError(f"{self.path}: the store is closed")
            conn = self._conn
            conn.execute(begin)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def write(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction: takes the file's write lock now; commits (durably) on exit."""
        return self._transaction("BEGIN IMMEDIATE")

    def read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction: one consistent snapshot; never waits for a writer (WAL)."""
        return self._transaction("BEGIN DEFERRED")

    def close(self) -> None:
        """Close the connection; later calls raise ``StoreError``. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


class SQLiteBacked:
    """What every SQLite backend shares: one ``SQLiteDatabase`` on its own file, opened
    with the subclass's ``SCHEMA``; ``path`` and ``close``."""

    SCHEMA: ClassVar[str] = ""
    #: Versioned changes to ``SCHEMA`` since files were first written (``Migration``).
    MIGRATIONS: ClassVar[tuple[Migration, ...]] = ()

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0,
                 read_only: bool = False) -> None:
        self._db = SQLiteDatabase(path, self.SCHEMA, busy_timeout_s=busy_timeout_s,
                                  read_only=read_only, migrations=self.MIGRATIONS)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._db.path

    def close(self) -> None:
        """Close the connection; idempotent."""
        self._db.close()
