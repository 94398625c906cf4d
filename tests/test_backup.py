"""``rml backup DIR`` and ``rml restore DIR``: consistent, checked copies of a data
directory's SQLite stores, taken under writes, and restores that refuse anything doubtful
and leave nothing half done. The last test backs up a real daemon under ingest and serves
the same champion and facts from a new one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings, load_settings
from daemon.backup import MANIFEST_NAME, STORE_FILES, BackupError, backup, restore
from daemon.process import RunRecord
from messages.facts import Reading
from players.demo import last_midnight_ms
from players.gateway import HttpClient, send_items
from players.simulator import Savanna
from run_system import main
from storage.backend import StoreBackend
from storage.sqlite.facts import SQLITE_LOG, SQLiteFactStore
from storage.sqlite.registry import SQLiteModelRegistry
from tests.e2e_support import TOKEN, _env, running_daemon, wait_for, write_config
from tests.test_migrate import fill, snapshot


def _settings(data: Path) -> Settings:
    return Settings(data_dir=str(data))


def _config(tmp: Path, data: Path, backend: str = "sqlite") -> str:
    config = tmp / f"rml-{backend}.toml"
    config.write_text(f'data_dir = "{data}"\n[storage]\nbackend = "{backend}"\n')
    return str(config)


def _filled(data: Path) -> Settings:
    """A data directory as a daemon leaves it (every store), closed."""
    settings = _settings(data)
    stores = StoreBackend(settings)
    try:
        fill(stores)
    finally:
        stores.close()
    return settings


def _read(settings: Settings) -> dict[str, object]:
    backend = StoreBackend(settings, read_only=True)
    try:
        return snapshot(backend)
    finally:
        backend.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its sha256."""
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _corrupt_index(path: Path) -> None:
    """Change one reading id in place in the file's bytes: the file still opens and reads,
    but its unique index no longer matches its table (only an integrity check sees it)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"r1234")
    assert at > 0
    data[at:at + 5] = b"r1239"
    path.write_bytes(bytes(data))


def _rewrite_manifest(folder: Path, name: str) -> None:
    """Make the manifest agree with ``name``'s present bytes (as a careless edit would)."""
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    for entry in manifest["files"]:
        if entry["name"] == name:
            entry.update(size=(folder / name).stat().st_size, sha256=_sha256(folder / name))
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_backup_copies_every_store_checked_and_a_restore_reads_as_the_source(
        tmp_path: Path) -> None:
    source = _filled(tmp_path / "data")
    manifest = backup(source, tmp_path / "backup")
    folder = tmp_path / "backup"
    assert {f.name for f in manifest.files} == set(STORE_FILES)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*STORE_FILES, MANIFEST_NAME])
    written = json.loads((folder / MANIFEST_NAME).read_text())
    assert written["format"] == "rml-backup" and written["project_version"].startswith("0.1.0+")
    assert written["source"] == str(source.data_path) and written["created_at_ms"] > 0
    for entry in written["files"]:
        copy = folder / entry["name"]
        assert (entry["size"], entry["sha256"]) == (copy.stat().st_size, _sha256(copy))
    versions = {e["name"]: e["schema_version"] for e in written["files"]}
    assert versions["facts.sqlite"] == max(m.version for m in SQLiteFactStore.MIGRATIONS)
    assert (written["readings"], written["outcomes"], written["champion"]) == (2_500, 300, 3)

    target = _settings(tmp_path / "restored")
    report = restore(target, folder)
    assert report.replaced is None
    assert _read(target) == _read(source)


def test_backups_under_concurrent_writes_are_each_one_snapshot_in_dependency_order(
        tmp_path: Path) -> None:
    """A writer commits batches of 100 readings and then advances a consumer's cursor over
    them in the feature store (as the feature generator does). Every copy holds whole
    batches only, and never a cursor past the facts it holds."""
    settings = _filled(tmp_path / "data")
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        backend = StoreBackend(settings)
        facts, features = backend.facts(), backend.features()
        cursor, batch = features.cursor("consumer"), 0
        try:
            while not stop.is_set():
                facts.insert_readings([Reading("w", 1, f"w{batch}-{i}", 5_000_000 + i, 1, 2, 0.5)
                                       for i in range(100)])
                batch += 1
                while (page := facts.readings_since(cursor, 1_000)).items:
                    cursor = page.cursor
                features.advance_cursor("consumer", cursor, batch)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
        finally:
            backend.close()

    def count() -> int:
        facts = SQLiteFactStore(settings.data_path / "facts.sqlite", read_only=True)
        try:
            return facts.counts().readings
        finally:
            facts.close()

    thread = threading.Thread(target=writer)
    thread.start()
    copies: list[tuple[int, int, int]] = []  # (count before, in the copy, after)
    try:
        def overlapped() -> bool:  # five backups during which the writer committed
            before = count()
            folder = tmp_path / f"backup-{len(copies)}"
            backup(settings, folder)
            copy = StoreBackend(_settings(folder), read_only=True)
            try:
                held = copy.facts().counts().readings
                consumed = copy.features().cursor("consumer").position(SQLITE_LOG)[0]
            finally:
                copy.close()
            assert consumed <= held, "a cursor in the copy points past the copied facts"
            copies.append((before, held, count()))
            return sum(before < after for before, _, after in copies) >= 5

        wait_for("five backups taken while the writer committed", overlapped, 60.0, 0.0)
    finally:
        stop.set()
        thread.join(30.0)
    assert not errors, errors
    for before, held, after in copies:
        assert before <= held <= after
        assert (held - 2_500) % 100 == 0, "a copy holds part of a committed batch"


def test_a_corrupted_store_fails_the_backup_loudly_and_leaves_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _filled(tmp_path / "data")
    _corrupt_index(settings.data_path / "facts.sqlite")
    target = tmp_path / "backup"
    code = main(["--config", _config(tmp_path, settings.data_path), "backup", str(target)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("rml: facts.sqlite: PRAGMA integrity_check failed on the copy: ")
    assert "missing from index" in err and len(err.splitlines()) == 1
    assert not target.exists()  # the directory it made is gone with every partial copy


def test_a_non_empty_directory_or_a_previous_backup_is_never_overwritten(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _filled(tmp_path / "data")
    config = _config(tmp_path, settings.data_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["--config", config, "backup", str(other)]) == 1
    assert "is not empty" in capsys.readouterr().err
    assert _tree(other) == {"notes.txt": _sha256(other / "notes.txt")}
    previous = tmp_path / "previous"
    assert main(["--config", config, "backup", str(previous)]) == 0
    assert "every copy passed PRAGMA integrity_check" in capsys.readouterr().out
    kept = _tree(previous)
    assert main(["--config", config, "backup", str(previous)]) == 1
    assert "is a previous backup" in capsys.readouterr().err
    assert _tree(previous) == kept


def test_a_checksum_mismatch_is_refused_before_anything_is_touched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backup(_filled(tmp_path / "data"), tmp_path / "backup")
    copy = tmp_path / "backup" / "models.sqlite"
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    target = tmp_path / "restored"
    assert main(["--config", _config(tmp_path, target), "restore", str(tmp_path / "backup")]) == 1
    err = capsys.readouterr().err
    assert "models.sqlite: checksum mismatch" in err and len(err.splitlines()) == 1
    assert not target.exists()


def test_an_integrity_failure_is_refused_even_when_the_checksums_agree(tmp_path: Path) -> None:
    backup(_filled(tmp_path / "data"), tmp_path / "backup")
    _corrupt_index(tmp_path / "backup" / "facts.sqlite")
    _rewrite_manifest(tmp_path / "backup", "facts.sqlite")
    with pytest.raises(BackupError, match=r"facts.sqlite: PRAGMA integrity_check failed: row "):
        restore(_settings(tmp_path / "restored"), tmp_path / "backup")
    assert not (tmp_path / "restored").exists()


def test_a_newer_schema_a_folder_without_manifest_or_a_path_in_it_is_refused(
        tmp_path: Path) -> None:
    backup(_filled(tmp_path / "data"), tmp_path / "backup")
    with contextlib.closing(sqlite3.connect(tmp_path / "backup" / "facts.sqlite")) as conn:
        conn.execute("PRAGMA user_version = 99")
    _rewrite_manifest(tmp_path / "backup", "facts.sqlite")
    manifest = json.loads((tmp_path / "backup" / MANIFEST_NAME).read_text())
    for entry in manifest["files"]:
        if entry["name"] == "facts.sqlite":
            entry["schema_version"] = 99
    (tmp_path / "backup" / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="schema version 99 is newer than this release's"):
        restore(_settings(tmp_path / "restored"), tmp_path / "backup")
    with pytest.raises(BackupError, match="is not a backup: no manifest.json"):
        restore(_settings(tmp_path / "restored"), tmp_path / "data")
    manifest["files"][0]["name"] = "../elsewhere.sqlite"  # never steers a restore elsewhere
    (tmp_path / "backup" / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="not a valid backup manifest: file name"):
        restore(_settings(tmp_path / "restored"), tmp_path / "backup")
    assert not (tmp_path / "restored").exists()


def test_a_data_directory_with_stores_needs_force_which_moves_them_aside(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _filled(tmp_path / "data")
    backup(source, tmp_path / "backup")
    target = _settings(tmp_path / "target")
    stores = StoreBackend(target)
    stores.facts().insert_readings([Reading("old", 1, "o1", 1, 1, 2, 0.5)])
    stores.close()
    before = _tree(target.data_path)
    config = _config(tmp_path, target.data_path)
    assert main(["--config", config, "restore", str(tmp_path / "backup")]) == 1
    assert "already holds stores" in capsys.readouterr().err
    assert _tree(target.data_path) == before
    assert main(["--config", config, "restore", str(tmp_path / "backup"), "--force"]) == 0
    out = capsys.readouterr().out
    aside = next(target.data_path.glob("replaced-*"))
    assert f"the stores it replaced are in {aside}" in out
    assert _tree(aside) == before  # moved aside whole, not deleted
    assert _read(target) == _read(source)


def test_a_restore_that_fails_midway_leaves_the_directory_as_it_was(tmp_path: Path) -> None:
    """The last rename fails (a directory stands where facts.sqlite goes): the stores
    already renamed in are taken out again and the replaced ones put back."""
    backup(_filled(tmp_path / "data"), tmp_path / "backup")
    target = _settings(tmp_path / "target")
    stores = StoreBackend(target)
    stores.registry()
    stores.deadletters().record(at_ms=1, actor="old", message="m", error="e")
    stores.close()
    (target.data_path / "facts.sqlite").mkdir()
    before = _tree(target.data_path)
    with pytest.raises(BackupError, match="restore failed, .* is as it was"):
        restore(target, tmp_path / "backup", force=True)
    assert _tree(target.data_path) == before
    assert sorted(p.name for p in target.data_path.iterdir()) == [
        "facts.sqlite", "models.sqlite", "system.sqlite"]


def test_a_stale_run_record_does_not_block_a_restore(tmp_path: Path) -> None:
    """A record left by a crashed daemon (its process group gone) is no running daemon."""
    backup(_filled(tmp_path / "data"), tmp_path / "backup")
    target = _settings(tmp_path / "target")
    gone = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    gone.wait()
    target.run_dir.mkdir(parents=True)
    record = RunRecord(gone.pid, gone.pid, 1, 2, 3, target.data_dir, 0, "ready")
    (target.run_dir / "daemon.json").write_text(json.dumps(asdict(record)))
    restore(target, tmp_path / "backup")
    assert (target.data_path / "facts.sqlite").exists()


def test_both_verbs_point_a_couchbase_backend_at_cbbackupmgr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, tmp_path / "data", backend="couchbase")
    assert load_settings(config, environ={}).storage.backend == "couchbase"
    for verb in ("backup", "restore"):
        assert main(["--config", config, verb, str(tmp_path / "dir")]) == 1
        err = capsys.readouterr().err
        assert "Couchbase backend" in err and "cbbackupmgr" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "dir").exists()


# -- end to end ---------------------------------------------------------------------------

SAVANNA = Savanna(seed=13, n_locations=10, hours=48, end_ms=last_midnight_ms())


def _rml(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "run_system", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=300, env=_env())


@pytest.mark.e2e
def test_a_backup_under_ingest_restores_into_a_new_daemon_with_the_same_champion_and_facts(
        tmp_path: Path) -> None:
    for name in ("first", "second", "restore"):
        (tmp_path / name).mkdir()
    folder = tmp_path / "backup"
    acked: list[tuple[str, str]] = []  # keys of readings acknowledged, in order
    failures: list[BaseException] = []
    # No drift checks: only readings arrive during the backup, so no retraining can change
    # the champion after it.
    learning: dict[str, Any] = {"min_outcomes": 200, "drift_check_interval_s": 0}
    with running_daemon(tmp_path / "first", **learning) as first:
        client = HttpClient("127.0.0.1", first.settings.ingest.port, TOKEN)
        assert send_items(client, "readings", SAVANNA.traffic().items, 1000).failed_batches == 0
        send_items(client, "outcomes", SAVANNA.outcome_items(), 5000)
        client.close()
        wait_for("a champion", first.champion, 120.0, 0.2)
        stop = threading.Event()

        def gateway() -> None:  # posts batches until told to stop, as a field gateway does
            sender = HttpClient("127.0.0.1", first.settings.ingest.port, TOKEN)
            batch, now = 0, int(time.time() * 1000)
            try:
                while not stop.is_set():
                    items: list[dict[str, Any]] = [
                        {"sensor_id": "backup-gw", "location_id": 1 + i % 10,
                         "reading_id": f"b{batch}-{i}", "timestamp": now - 1000 - i,
                         "animals_lower": 2, "animals_upper": 5, "percent_zebras": 0.4}
                        for i in range(200)]
                    status, answer = sender.post("/readings", {"readings": items})
                    if status != 200 or answer["accepted"] != len(items):
                        raise AssertionError(f"batch {batch}: {status} {answer}")
                    acked.extend(("backup-gw", item["reading_id"]) for item in items)
                    batch += 1
            except BaseException as exc:  # reported by the test
                failures.append(exc)
            finally:
                sender.close()

        thread = threading.Thread(target=gateway)
        thread.start()
        try:
            wait_for("ingest under way", lambda: len(acked) >= 600, 60.0)
            before_backup = list(acked)
            done = first.rml("backup", str(folder))
            after_backup = len(acked)
            wait_for("ingest still going after the backup", lambda: len(acked) > after_backup,
                     60.0)
        finally:
            stop.set()
            thread.join(60.0)
        assert not failures, failures
        assert done.returncode == 0, done.stderr
        assert "every copy passed PRAGMA integrity_check" in done.stdout
        serving = first.champion()
        refused = first.rml("restore", str(folder), "--force")
        assert refused.returncode == 1
        assert "a daemon is running on" in refused.stderr and "`rml stop` first" in refused.stderr
    copy = SQLiteFactStore(folder / "facts.sqlite", read_only=True)
    registry = SQLiteModelRegistry(folder / "models.sqlite", read_only=True)
    try:
        counts = copy.counts()
        in_copy = {r.key for r in copy.all_readings()}
        champion = registry.champion()
    finally:
        copy.close()
        registry.close()
    assert champion is not None and serving is not None
    assert champion.version == serving.version
    assert set(before_backup) <= in_copy  # every fact acknowledged before the backup began
    restore_config = write_config(tmp_path / "restore", store=tmp_path / "restored")
    restored = _rml(restore_config, "restore", str(folder))
    assert restored.returncode == 0, restored.stderr
    with running_daemon(tmp_path / "second", store=tmp_path / "restored", **learning) as second:
        with second.stores() as stores:
            assert stores.facts.counts() == counts
            assert set(before_backup) <= {r.key for r in stores.facts.all_readings()}
        served = second.champion()
        assert served is not None and served.version == champion.version
        predictor = HttpClient("127.0.0.1", second.settings.predict.port, TOKEN)
        try:
            status, answer = wait_for("a prediction", lambda: (
                r if (r := predictor.post("/model", {"location_id": 1}))[0] == 200 else None),
                60.0, 0.1)
        finally:
            predictor.close()
        assert answer["model_version"] == champion.version and answer["fallback"] is False
