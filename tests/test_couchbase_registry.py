"""The Couchbase model registry's own promises, beyond the shared contract: artifacts of
megabytes travel in a few calls, versions are unique across instances, a reader sees
exactly one champion whatever a promoter is doing (or dies doing), and a registration
cut short never leaves a record naming chunks that are not there.

Run against the SDK stand-in (``tests/couchbase_standin.py``), which can fail the n-th
mutation or end the writing process there.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config.settings import CouchbaseSettings
from storage.couchbase.cluster import CouchbaseConnection, connect
from storage.couchbase.registry import CHUNK_BYTES, CouchbaseModelRegistry, chunk_key
from storage.errors import StoreError, StoreTimeout
from tests.couchbase_standin import CRASH_EXIT_CODE, StandinCluster
from tests.test_store_contract import DEADLINE_S, REPO, child_env


def blob(size: int, seed: str = "a") -> bytes:
    """``size`` deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


ARTIFACT = blob(3 * 1024 * 1024)  # six chunks
FORM = blob(CHUNK_BYTES + 10, "form")  # two chunks
# A registration with both: the chunks (one call), the record, status entry 1.
REGISTRATION_WRITES = 6 + 2 + 1 + 1


@pytest.fixture
def open_registry(cluster: StandinCluster
                  ) -> Iterator[Callable[..., CouchbaseModelRegistry]]:
    """Opens registries on the stand-in, each on a connection of its own (as processes)."""
    connections: list[CouchbaseConnection] = []

    def opener(*, read_only: bool = False) -> CouchbaseModelRegistry:
        connection = connect_to(cluster.root, read_only=read_only)
        connections.append(connection)
        return CouchbaseModelRegistry(connection.keyvalue("models"))

    yield opener
    for connection in connections:
        connection.close()


def connect_to(root: Path, *, read_only: bool = False) -> CouchbaseConnection:
    connection = connect(CouchbaseSettings(), read_only=read_only,
                         cluster_factory=lambda _: StandinCluster(root))
    if not read_only:
        connection.ensure_collections()
    return connection


def register(registry: CouchbaseModelRegistry, *, artifact: bytes = b"model",
             compiled: bytes | None = None, job: dict[str, int] | None = None,
             status: str = "candidate") -> int:
    return registry.register(feature_collection_id=0, job=job or {}, metrics={"auc": 0.5},
                             lineage={}, artifact=artifact, created_at_ms=1, status=status,
                             compiled=compiled)


def chunk_files(cluster: StandinCluster) -> list[Path]:
    models = cluster.root / "data" / "rml" / "rml" / "models"
    return [p for p in models.iterdir() if bytes.fromhex(p.name).startswith(b"blob:")]


def champions(registry: CouchbaseModelRegistry) -> list[int]:
    return [r.version for r in registry.versions() if r.status == "champion"]


def test_a_3_mb_artifact_round_trips_in_chunks_at_a_bounded_cost(
        cluster: StandinCluster, open_registry: Callable[..., CouchbaseModelRegistry]) -> None:
    registry = open_registry()
    before = cluster.operations()
    version = register(registry, artifact=ARTIFACT)
    # chunks (one call), the end of the model log, the record, status entry 1
    assert cluster.operations() - before <= 4
    chunks = chunk_files(cluster)
    assert len(chunks) == 6
    assert all(p.stat().st_size <= 12 + CHUNK_BYTES for p in chunks)
    reader = open_registry(read_only=True)
    before = cluster.operations()
    assert reader.artifact(version) == ARTIFACT
    assert cluster.operations() - before <= 2  # the record, every chunk in one call
    assert reader.get(version).artifact_sha256 == hashlib.sha256(ARTIFACT).hexdigest()
    # The same artifact again shares its chunks: they are keyed by content.
    again = register(registry, artifact=ARTIFACT)
    assert len(chunk_files(cluster)) == 6
    assert reader.artifact(again) == ARTIFACT


def test_an_artifact_missing_a_chunk_is_refused(
        cluster: StandinCluster, open_registry: Callable[..., CouchbaseModelRegistry]) -> None:
    registry = open_registry()
    version = register(registry, artifact=ARTIFACT)
    key = chunk_key(hashlib.sha256(ARTIFACT).hexdigest(), 3)
    (cluster.root / "data" / "rml" / "rml" / "models" / key.encode().hex()).unlink()
    with pytest.raises(StoreError, match="missing"):
        open_registry().artifact(version)


def test_two_registering_instances_never_get_the_same_version(
        open_registry: Callable[..., CouchbaseModelRegistry]) -> None:
    registries = [open_registry() for _ in range(3)]
    got: dict[int, list[int]] = {w: [] for w in range(3)}

    def work(w: int) -> None:
        got[w].extend(register(registries[w], job={"w": w, "i": i}) for i in range(8))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(v for versions in got.values() for v in versions) == list(range(1, 25))
    reader = open_registry()
    for w, versions in got.items():
        assert [reader.get(v).job for v in versions] == [f'{{"i":{i},"w":{w}}}'
                                                          for i in range(8)]


def test_a_reader_sees_exactly_one_champion_while_another_instance_promotes(
        open_registry: Callable[..., CouchbaseModelRegistry]) -> None:
    promoter, reader = open_registry(), open_registry(read_only=True)
    versions = [register(promoter) for _ in range(4)]
    promoter.promote(versions[0], "first", 1)
    done = threading.Event()
    seen: list[tuple[list[int], int | None]] = []

    def promote() -> None:
        try:
            for step in range(40):
                promoter.promote(versions[(step + 1) % 4], f"step {step}", step + 2)
        finally:
            done.set()

    thread = threading.Thread(target=promote)
    thread.start()
    while not done.is_set():
        champion = reader.champion()
        seen.append((champions(reader), None if champion is None else champion.version))
    thread.join()
    assert len(seen) > 5
    assert all(len(listed) == 1 and champion is not None for listed, champion in seen), seen
    assert [c.version for c in reader.champion_history()][-1] == versions[0]
    assert champions(reader) == [versions[0]]
    for version in versions[1:]:
        assert reader.get(version).status == "retired"


@pytest.mark.parametrize("writes", range(3))
def test_a_promotion_cut_short_leaves_exactly_one_champion(
        cluster: StandinCluster, open_registry: Callable[..., CouchbaseModelRegistry],
        writes: int) -> None:
    registry = open_registry()
    old, new = register(registry), register(registry)
    registry.promote(old, "first", 10)
    cluster.fail_after(writes)  # crown the new one; commit; retire the old one
    with pytest.raises(StoreTimeout):
        registry.promote(new, "better", 20)
    cluster.fail_after(None)
    reader = open_registry(read_only=True)
    champion = reader.champion()
    assert champion is not None
    assert champions(reader) == [champion.version] == [new if writes == 2 else old]
    if writes == 2:  # committed: the old one reads as retired though that was not written
        assert [(s.status, s.reason) for s in reader.status_history(old)] == [
            ("candidate", "registered"), ("champion", "first"),
            ("retired", "replaced by version 2: better")]
    else:
        assert [s.status for s in reader.status_history(new)] == ["candidate"]
    registry.promote(old if writes == 2 else new, "again", 30)
    assert len(champions(reader)) == 1
    assert [s.status for s in reader.status_history(old)][-1] == (
        "champion" if writes == 2 else "retired")


def assert_every_record_is_whole(registry: CouchbaseModelRegistry) -> None:
    for record in registry.versions():
        assert registry.artifact(record.version) == ARTIFACT
        assert registry.compiled_form(record.version) == FORM
        assert record.status == "candidate"


@pytest.mark.parametrize("writes", range(REGISTRATION_WRITES))
def test_a_registration_that_fails_leaves_no_record_naming_missing_chunks(
        cluster: StandinCluster, open_registry: Callable[..., CouchbaseModelRegistry],
        writes: int) -> None:
    registry = open_registry()
    cluster.fail_after(writes)
    with pytest.raises(StoreTimeout):
        register(registry, artifact=ARTIFACT, compiled=FORM)
    cluster.fail_after(None)
    reader = open_registry(read_only=True)
    stored = len(reader.versions())
    assert stored == (1 if writes == REGISTRATION_WRITES - 1 else 0)  # only the last write
    assert_every_record_is_whole(reader)
    assert register(registry, artifact=ARTIFACT, compiled=FORM) == stored + 1
    assert_every_record_is_whole(reader)


_CRASH_IN_CHILD = """
import sys
from pathlib import Path
from storage.couchbase.registry import CouchbaseModelRegistry
from tests.couchbase_standin import StandinCluster
from tests.test_couchbase_registry import ARTIFACT, FORM, connect_to, register
root = Path(sys.argv[1])
registry = CouchbaseModelRegistry(connect_to(root).keyvalue("models"))
StandinCluster(root).fail_after(int(sys.argv[2]), crash=True)
print(register(registry, artifact=ARTIFACT, compiled=FORM), flush=True)
"""


@pytest.mark.parametrize("writes", [0, 3, 7, 8, 9, REGISTRATION_WRITES])
def test_a_registrar_dying_mid_registration_leaves_no_record_naming_missing_chunks(
        cluster: StandinCluster, open_registry: Callable[..., CouchbaseModelRegistry],
        writes: int) -> None:
    done = subprocess.run([sys.executable, "-c", _CRASH_IN_CHILD, str(cluster.root),
                           str(writes)], capture_output=True, text=True, env=child_env(),
                          cwd=REPO, timeout=DEADLINE_S)
    cluster.fail_after(None)
    finished = writes == REGISTRATION_WRITES
    assert done.returncode == (0 if finished else CRASH_EXIT_CODE), done.stderr
    reader = open_registry(read_only=True)
    assert len(reader.versions()) == (1 if writes >= REGISTRATION_WRITES - 1 else 0)
    assert_every_record_is_whole(reader)
    version = register(open_registry(), artifact=ARTIFACT, compiled=FORM)
    assert version == len(reader.versions())
    assert_every_record_is_whole(reader)


def test_a_read_only_registry_reads_and_refuses_writes_and_a_closed_one_refuses_all(
        open_registry: Callable[..., CouchbaseModelRegistry]) -> None:
    writer = open_registry()
    version = register(writer, compiled=b"form")
    reader = open_registry(read_only=True)
    assert reader.get(version).status == "candidate"
    assert reader.compiled_form(version) == b"form"
    for write in (lambda: register(reader), lambda: reader.promote(version, "no", 2),
                  lambda: reader.set_status(version, "rejected", "no", 2),
                  lambda: reader.add_compiled_form(version, b"x")):
        with pytest.raises(StoreError, match="read-only"):
            write()
    reader.close()
    reader.close()
    with pytest.raises(StoreError, match="closed"):
        reader.get(version)
    assert writer.get(version).version == version  # the connection is not the store's
