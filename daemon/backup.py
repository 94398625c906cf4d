"""Backups of a data directory: ``rml backup DIR`` (daemon running or not) and
``rml restore DIR`` (daemon stopped).

Owns what a data directory's durable state is: its SQLite stores (``*.sqlite``; model
artifacts and compiled forms live in ``models.sqlite``, so there are no other files),
never the logs or the run directory. A backup copies each store with SQLite's online
backup API from a read transaction of its own, so each copy is one consistent snapshot
whatever the daemon writes meanwhile (WAL readers never wait for writers). The
snapshots are all opened before the first copy starts, in ``STORE_FILES`` order: a store
that refers to another's data is read first (the feature generator's cursors point into
the fact log, a model names its feature collection, a training run its model), and since
every store only grows, the later snapshot holds whatever the earlier one refers to.
Each copy is switched to a rollback journal (a single file, no ``-wal``), checked with
``PRAGMA integrity_check`` and listed in ``manifest.json`` (size, sha256, schema version),
written last: a directory without a manifest is not a backup.

A restore checks the whole backup (manifest, sizes, checksums, integrity, schema
versions this release can open) before touching the data directory, stages every file
beside its final name and only then renames them into place. With the Couchbase backend
both verbs refuse: the cluster's own ``cbbackupmgr`` backs it up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from config.settings import Settings
from daemon.process import DaemonError, RunRecord, read_record
from runtime.group import group_members
from storage import FACTS_FILE, FEATURES_FILE, MODELS_FILE, SYSTEM_FILE
from storage.drift_log import DRIFT_FILE

__all__ = [
    "MANIFEST_NAME", "STORE_FILES", "BackupError", "BackupFile", "Manifest", "RestoreReport",
    "backup", "integrity_problems", "restore", "running_daemons", "verify_backup",
]

MANIFEST_NAME = "manifest.json"
FORMAT = "rml-backup"
FORMAT_VERSION = 1
#: The stores, in the order their snapshots are opened: referrers before what they refer to.
STORE_FILES = (SYSTEM_FILE, DRIFT_FILE, MODELS_FILE, FEATURES_FILE, FACTS_FILE)
_SIDE_FILES = ("-wal", "-shm", "-journal")
_STAGED = ".rml-restore-"  # a restore's staged copies: hidden, removed when it ends
_PARTIAL = ".rml-backup-"  # a backup's copies before they are checked
_CHUNK = 1 << 20
_COUCHBASE = ("the {verb} verb copies SQLite data directories; this configuration uses "
              "the Couchbase backend: back it up with Couchbase's own cbbackupmgr "
              "(https://docs.couchbase.com/server/current/backup-restore/cbbackupmgr.html)")


class BackupError(DaemonError):
    """A backup or restore was refused or failed (the message says why); nothing half done
    is left behind."""


@dataclass(frozen=True, slots=True)
class BackupFile:
    """One store file of a backup."""

    name: str
    size: int
    sha256: str
    schema_version: int  # the file's PRAGMA user_version (storage/sqlite/connection.py migrations)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What ``manifest.json`` says: the files and where, when and by what they were made;
    the counts are read from the copies, for the operator."""

    created_at: str  # UTC, ISO 8601
    created_at_ms: int
    project_version: str
    source: str
    seconds: float
    files: tuple[BackupFile, ...]
    readings: int | None = None
    outcomes: int | None = None
    champion: int | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def size(self) -> int:
        """Bytes in every file."""
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        """The manifest's text."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> Manifest:
        """Parse a manifest strictly; ``BackupError`` names what is wrong."""
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
            if data.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {data.get('format_version')!r} is not "
                                 f"{FORMAT_VERSION} (written by another release?)")
            files = tuple(BackupFile(**f) for f in data.pop("files"))
            manifest = cls(files=files, **data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BackupError(f"{where}: not a valid backup manifest: {exc}") from None
        for f in files:
            # A name is a plain file name: a manifest must never steer a restore elsewhere.
            if (not isinstance(f.name, str) or Path(f.name).name != f.name
                    or not f.name.endswith(".sqlite") or f.name.startswith(".")):
                raise BackupError(f"{where}: not a valid backup manifest: file name {f.name!r}")
            if not (isinstance(f.size, int) and isinstance(f.sha256, str)
                    and isinstance(f.schema_version, int)):
                raise BackupError(f"{where}: not a valid backup manifest: entry {f!r}")
        return manifest


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What a restore installed, and where the stores it replaced went (``--force``)."""

    manifest: Manifest
    data_dir: Path
    replaced: Path | None
    seconds: float


def _refuse_couchbase(settings: Settings, verb: str) -> None:
    if settings.storage.backend == "couchbase":
        raise BackupError(_COUCHBASE.format(verb=verb))


def _store_names(data: Path) -> list[str]:
    """The store files in ``data``: the known ones in snapshot order, then any other
    ``*.sqlite`` (a store added later is copied too, read first as it may refer to any)."""
    present = {p.name for p in data.glob("*.sqlite") if p.is_file() and not p.name.startswith(".")}
    return sorted(present - set(STORE_FILES)) + [n for n in STORE_FILES if n in present]


def _uri(path: Path, mode: str) -> str:
    return f"file:{quote(str(path.absolute()))}?mode={mode}"


def integrity_problems(path: Path) -> list[str]:
    """What ``PRAGMA integrity_check`` finds wrong with the database at ``path`` (empty:
    "ok"). Opened read-only; a file that is no database is a problem too."""
    try:
        with contextlib.closing(sqlite3.connect(_uri(path, "ro"), uri=True)) as conn:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.Error as exc:
        return [str(exc)]
    return [] if rows == [("ok",)] else [str(row[0]) for row in rows]


def _user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(_uri(path, "ro"), uri=True)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _known_schema(name: str) -> int | None:
    """The newest schema version this release writes for a store file (None: unknown)."""
    from storage.sqlite.connection import schema_version
    from storage.sqlite.deadletters import SQLiteDeadLetters
    from storage.sqlite.drift_log import SQLiteDriftLog
    from storage.sqlite.facts import SQLiteFactStore
    from storage.sqlite.features import SQLiteFeatureStore
    from storage.sqlite.registry import SQLiteModelRegistry
    from storage.sqlite.shadow import SQLiteShadowTrials
    from storage.sqlite.training_runs import SQLiteTrainingRuns

    classes: dict[str, tuple[Any, ...]] = {
        FACTS_FILE: (SQLiteFactStore,), FEATURES_FILE: (SQLiteFeatureStore,),
        MODELS_FILE: (SQLiteModelRegistry, SQLiteShadowTrials),
        SYSTEM_FILE: (SQLiteDeadLetters, SQLiteTrainingRuns), DRIFT_FILE: (SQLiteDriftLog,)}
    if name not in classes:
        return None
    return max(schema_version(cls.MIGRATIONS) for cls in classes[name])


# -- backup ------------------------------------------------------------------------------


@contextlib.contextmanager
def _snapshots(data: Path, names: list[str], busy_timeout_s: float
               ) -> Iterator[list[tuple[str, sqlite3.Connection]]]:
    """A read transaction on each store, all opened (in ``names`` order) before any copy."""
    opened: list[tuple[str, sqlite3.Connection]] = []
    try:
        for name in names:
            # mode=rw as the stores' own read-only opens: a WAL reader may need the -shm.
            conn = sqlite3.connect(_uri(data / name, "rw"), uri=True, timeout=busy_timeout_s,
                                   isolation_level=None)
            opened.append((name, conn))
            conn.execute("PRAGMA query_only = ON")
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot
        yield opened
    finally:
        for _, conn in opened:
            conn.close()


def _copy(source: sqlite3.Connection, target: Path) -> None:
    """Copy ``source``'s snapshot into ``target`` in one step (a stepped copy restarts
    whenever the source changes), as a single rollback-journal file."""
    with contextlib.closing(sqlite3.connect(target, isolation_level=None)) as conn:
        source.backup(conn)
        conn.execute("PRAGMA journal_mode = DELETE")
    source.execute("COMMIT")  # the other snapshots are already fixed


def _summary(files: dict[str, Path]) -> dict[str, int | None]:
    """Fact counts and the champion, read from the copies with the stores' own classes
    (None where a store does not have them yet)."""
    from storage.errors import StoreError
    from storage.sqlite.facts import SQLiteFactStore
    from storage.sqlite.registry import SQLiteModelRegistry

    summary: dict[str, int | None] = {"readings": None, "outcomes": None, "champion": None}
    if FACTS_FILE in files:
        with contextlib.suppress(StoreError):
            facts = SQLiteFactStore(files[FACTS_FILE], read_only=True)
            try:
                counts = facts.counts()
                summary.update(readings=counts.readings, outcomes=counts.outcomes)
            finally:
                facts.close()
    if MODELS_FILE in files:
        with contextlib.suppress(StoreError):
            registry = SQLiteModelRegistry(files[MODELS_FILE], read_only=True)
            try:
                champion = registry.champion()
                summary["champion"] = None if champion is None else champion.version
            finally:
                registry.close()
    return summary


def _prepare_target(target: Path) -> bool:
    """Make sure ``target`` is an empty directory; True when this call created it."""
    if target.exists() and not target.is_dir():
        raise BackupError(f"{target} exists and is not a directory")
    if target.is_dir():
        if any(target.iterdir()):
            what = "a previous backup" if (target / MANIFEST_NAME).exists() else "not empty"
            raise BackupError(f"{target} is {what}: a backup goes into a new or empty "
                              "directory (none is ever overwritten)")
        return False
    target.mkdir(parents=True)
    return True


def backup(settings: Settings, target: Path) -> Manifest:
    """Copy every store of ``settings``' data directory into ``target`` (new or empty),
    check each copy and write the manifest last. On failure nothing is left in ``target``."""
    from learning.models.lineage import code_version
    from storage.errors import StoreError

    _refuse_couchbase(settings, "backup")
    data, target = settings.data_path, Path(target).absolute()
    names = _store_names(data) if data.is_dir() else []
    if not names:
        raise BackupError(f"no stores in {data}: nothing to back up")
    began, at_ms = time.monotonic(), int(time.time() * 1000)
    created = _prepare_target(target)
    written: list[Path] = []
    try:
        partial = {name: target / f"{_PARTIAL}{name}" for name in names}
        with _snapshots(data, names, settings.storage.busy_timeout_s) as sources:
            for name, conn in sources:
                written.append(partial[name])
                _copy(conn, partial[name])
        files = []
        for name in names:
            problems = integrity_problems(partial[name])
            if problems:
                raise BackupError(f"{name}: PRAGMA integrity_check failed on the copy: "
                                  + "; ".join(problems[:5]) + " (the source store may be "
                                  "damaged; the backup was discarded)")
            files.append(BackupFile(name, partial[name].stat().st_size,
                                    _sha256(partial[name]), _user_version(partial[name])))
        summary = _summary(partial)
        for name in names:
            _fsync(partial[name])
            written.append(target / name)
            os.replace(partial[name], target / name)
        manifest = Manifest(
            created_at=datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="seconds"),
            created_at_ms=at_ms, project_version=code_version(), source=str(data),
            seconds=round(time.monotonic() - began, 3), files=tuple(files),
            readings=summary["readings"], outcomes=summary["outcomes"],
            champion=summary["champion"])
        staged = target / f"{_PARTIAL}{MANIFEST_NAME}"
        written += [staged, target / MANIFEST_NAME]
        staged.write_text(manifest.to_json(), encoding="utf-8")
        _fsync(staged)
        os.replace(staged, target / MANIFEST_NAME)
        _fsync(target)
        return manifest
    except BaseException as exc:
        for path in written:
            for side in ("", *_SIDE_FILES):
                Path(f"{path}{side}").unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                target.rmdir()
        if isinstance(exc, (OSError, sqlite3.Error, StoreError)):
            raise BackupError(f"backup failed: {exc}") from exc
        raise


# -- restore -----------------------------------------------------------------------------


def verify_backup(source: Path) -> Manifest:
    """The manifest of the backup in ``source``, once every file in it is checked: present,
    of its size and sha256, passing ``PRAGMA integrity_check``, of a schema this release
    can open. ``BackupError`` names the first problem."""
    source = Path(source).absolute()
    path = source / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BackupError(f"{source} is not a backup: no {MANIFEST_NAME}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupError(f"cannot read {path}: {exc}") from None
    manifest = Manifest.from_json(text, path)
    if not manifest.files:
        raise BackupError(f"{path}: the backup lists no store")
    for entry in manifest.files:
        file = source / entry.name
        try:
            size, sha = file.stat().st_size, _sha256(file)
        except OSError as exc:
            raise BackupError(f"{file}: cannot read it: {exc}") from None
        if size != entry.size or sha != entry.sha256:
            raise BackupError(f"{file}: checksum mismatch (size {size:,}, sha256 {sha[:12]}..., "
                              f"manifest says {entry.size:,}, {entry.sha256[:12]}...): the "
                              "backup was changed or damaged; refusing to restore it")
        problems = integrity_problems(file)
        if problems:
            raise BackupError(f"{file}: PRAGMA integrity_check failed: "
                              + "; ".join(problems[:5]))
        known = _known_schema(entry.name)
        if known is not None and entry.schema_version > known:
            raise BackupError(f"{file}: schema version {entry.schema_version} is newer than "
                              f"this release's {known}: restore it with a newer release")
    return manifest


def running_daemons(settings: Settings) -> list[RunRecord]:
    """The daemons whose run records in the data directory name a live process group (the
    single node's, and each named node's: nodes may share a data directory)."""
    run = settings.data_path / "run"
    nodes = [""]
    if run.is_dir():
        nodes += sorted(p.name for p in run.iterdir() if p.is_dir())
    live = []
    for node in nodes:
        record = read_record(replace(settings, cluster=replace(settings.cluster, node_name=node)))
        if record is not None and group_members(record.pgid):
            live.append(record)
    return live


def _present_stores(data: Path) -> list[Path]:
    """The store files (and their journals) already in ``data``."""
    if not data.is_dir():
        return []
    return sorted(p for p in data.iterdir() if p.is_file() and not p.name.startswith(".")
                  and any(p.name.endswith(".sqlite" + s) for s in ("", *_SIDE_FILES)))


def _stage(source: Path, staged: Path, sha256: str) -> None:
    """Copy ``source`` to ``staged``, durably, checking the bytes written against ``sha256``."""
    digest = hashlib.sha256()
    with source.open("rb") as src, staged.open("xb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    if digest.hexdigest() != sha256:
        raise BackupError(f"{source} changed while it was being restored")


def restore(settings: Settings, source: Path, *, force: bool = False) -> RestoreReport:
    """Install the backup in ``source`` as ``settings``' data directory's stores. Refused
    while a daemon runs there, for a backup that does not verify, and (unless ``force``,
    which moves them to ``replaced-<time>/``) when the directory already holds stores."""
    _refuse_couchbase(settings, "restore")
    began = time.monotonic()
    data, source = settings.data_path, Path(source).absolute()
    if source.resolve() == data:
        raise BackupError(f"{source} is the data directory itself")
    live = running_daemons(settings)
    if live:
        groups = ", ".join(str(record.pgid) for record in live)
        raise BackupError(f"a daemon is running on {data} (process group {groups}): "
                          "`rml stop` first, then restore")
    manifest = verify_backup(source)
    present = _present_stores(data)
    if present and not force:
        raise BackupError(f"{data} already holds stores ({', '.join(p.name for p in present)}): "
                          "restore into an empty data directory, or add --force to replace "
                          "them (they are moved aside, not deleted)")
    staged: list[Path] = []
    moved: list[Path] = []
    installed: list[Path] = []
    replaced: Path | None = None
    created = not data.exists()
    try:
        data.mkdir(parents=True, exist_ok=True)
        for stale in data.glob(f"{_STAGED}*"):  # left by a restore that was killed
            stale.unlink()
        for entry in manifest.files:
            staged.append(data / f"{_STAGED}{entry.name}")
            _stage(source / entry.name, staged[-1], entry.sha256)
        if present:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            replaced = data / f"replaced-{stamp}"
            replaced.mkdir()
            for path in present:
                os.replace(path, replaced / path.name)
                moved.append(path)
        for entry, path in zip(manifest.files, staged, strict=True):
            os.replace(path, data / entry.name)
            installed.append(data / entry.name)
        _fsync(data)
    except BaseException as exc:
        for path in installed + staged:
            path.unlink(missing_ok=True)
        if replaced is not None:  # put back what was moved aside
            for path in moved:
                with contextlib.suppress(OSError):
                    os.replace(replaced / path.name, path)
            with contextlib.suppress(OSError):
                replaced.rmdir()
        if created:
            with contextlib.suppress(OSError):
                data.rmdir()
        if isinstance(exc, OSError):
            raise BackupError(f"restore failed, {data} is as it was: {exc}") from exc
        raise
    return RestoreReport(manifest, data, replaced, round(time.monotonic() - began, 3))
