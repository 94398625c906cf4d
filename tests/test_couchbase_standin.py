"""The Couchbase stand-in behaves like the SDK where the store relies on it, across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from couchbase.durability import DurabilityLevel, ServerDurability
from couchbase.exceptions import (
    CollectionAlreadyExistsException,
    DocumentExistsException,
    DocumentNotFoundException,
    InvalidArgumentException,
    ScopeAlreadyExistsException,
    ScopeNotFoundException,
    TemporaryFailException,
    UnAmbiguousTimeoutException,
    ValueFormatException,
)
from couchbase.management.collections import CollectionSpec
from couchbase.options import GetMultiOptions, GetOptions, InsertMultiOptions, InsertOptions
from couchbase.transcoder import RawBinaryTranscoder

from tests.couchbase_standin import CRASH_EXIT_CODE, StandinCluster, StandinCollection

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 60.0  # generous bound on a child process; a healthy one takes well under 1 s

# A child process: opens the stand-in at argv[1], waits for a line on stdin (so racers start
# together), runs the body, prints what it reports as JSON.
_CHILD = """
import json, sys
from tests.couchbase_standin import StandinCluster
from couchbase.exceptions import DocumentExistsException
cluster = StandinCluster(sys.argv[1])
facts = cluster.bucket("rml").scope("store").collection("facts")
sys.stdin.readline()
{body}
"""


def child(root: Path, body: str) -> subprocess.Popen[str]:
    """Start a child process on the stand-in at ``root``; it runs ``body`` after a stdin line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return subprocess.Popen([sys.executable, "-c", _CHILD.format(body=body), str(root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)


def finish(*procs: subprocess.Popen[str]) -> list[tuple[int, str, str]]:
    """Let the children go, all at once, and wait for each: exit code, stdout and stderr."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=DEADLINE_S)
        outcomes.append((proc.returncode, out, err))
    return outcomes


@pytest.fixture
def cluster(tmp_path: Path) -> StandinCluster:
    return StandinCluster(tmp_path / "couchbase")


@pytest.fixture
def facts(cluster: StandinCluster) -> StandinCollection:
    bucket = cluster.bucket("rml")
    bucket.collections().create_scope("store")
    bucket.collections().create_collection("store", "facts")
    return bucket.scope("store").collection("facts")


def test_second_insert_of_a_key_raises_document_exists_and_keeps_the_first(
        facts: StandinCollection) -> None:
    first = facts.insert("r1", {"v": 1}, InsertOptions(timeout=timedelta(seconds=2)))
    with pytest.raises(DocumentExistsException):
        facts.insert("r1", {"v": 2})
    got = facts.get("r1")
    assert got.content_as[dict] == {"v": 1}
    assert (got.cas, got.key, first.key) == (first.cas, "r1", "r1")
    assert isinstance(first.cas, int) and first.cas > 0


def test_get_of_a_missing_key_raises_document_not_found(facts: StandinCollection) -> None:
    with pytest.raises(DocumentNotFoundException):
        facts.get("nope", GetOptions(timeout=timedelta(seconds=2)))
    assert facts.exists("nope").exists is False
    facts.insert("yes", "here")
    assert facts.exists("yes").exists is True


def test_insert_multi_returns_per_key_exceptions_unless_asked_to_raise(
        facts: StandinCollection) -> None:
    facts.insert("a", 1)
    done = facts.insert_multi({"a": 10, "b": 2, "c": 3}, InsertMultiOptions())
    assert not done.all_ok
    assert set(done.results) == {"b", "c"} and done.results["b"].key == "b"
    assert isinstance(done.exceptions["a"], DocumentExistsException)
    assert facts.get("a").value == 1
    # Like the SDK: every insert is tried, then the first failure is raised.
    with pytest.raises(DocumentExistsException):
        facts.insert_multi({"d": 4, "a": 11, "e": 5}, return_exceptions=False)
    assert facts.get_multi(["d", "e"]).all_ok
    assert facts.insert_multi({"f": 6}).all_ok


def test_get_multi_maps_missing_keys_to_document_not_found(facts: StandinCollection) -> None:
    facts.insert_multi({"a": {"x": 1}, "b": [1, 2]})
    got = facts.get_multi(["a", "b", "zz"], GetMultiOptions())
    assert not got.all_ok
    assert {k: r.value for k, r in got.results.items()} == {"a": {"x": 1}, "b": [1, 2]}
    assert list(got.exceptions) == ["zz"]
    assert isinstance(got.exceptions["zz"], DocumentNotFoundException)
    with pytest.raises(DocumentNotFoundException):
        facts.get_multi(["a", "zz"], GetMultiOptions(return_exceptions=False))


def test_bytes_round_trip_as_bytes_and_json_values_as_themselves(
        facts: StandinCollection) -> None:
    raw = RawBinaryTranscoder()
    facts.insert("blob", b"\x00\xffmodel", InsertOptions(transcoder=raw))
    facts.insert_multi({"doc": {"k": [1, "two"]}, "text": "héllo", "n": 7})
    assert facts.get("blob", GetOptions(transcoder=raw)).content_as[bytes] == b"\x00\xffmodel"
    assert facts.get_multi(["blob"], transcoder=raw).results["blob"].value == b"\x00\xffmodel"
    assert facts.get("doc").content_as[dict] == {"k": [1, "two"]}
    assert facts.get("text").content_as[str] == "héllo"
    assert facts.get("n").value == 7
    # The SDK's default JSON transcoder refuses binary both ways; so does the stand-in.
    with pytest.raises(ValueFormatException):
        facts.insert("blob2", b"x")
    with pytest.raises(ValueFormatException):
        _ = facts.get("blob").value


def test_options_of_the_wrong_type_are_refused(facts: StandinCollection) -> None:
    with pytest.raises(InvalidArgumentException):
        facts.insert("k", 1, timeout=5)
    with pytest.raises(InvalidArgumentException):
        facts.insert("k", 1, InsertOptions(durability=DurabilityLevel.MAJORITY))
    with pytest.raises(InvalidArgumentException):
        facts.get("k" * 251)
    facts.insert("k", 1, durability=ServerDurability(DurabilityLevel.MAJORITY))
    long_key = "é" * 125  # 250 bytes: longer than a file name once hex-encoded
    facts.insert(long_key, "long")
    assert facts.get(long_key).value == "long"


def test_collection_manager_creates_lists_and_refuses_duplicates(
        cluster: StandinCluster) -> None:
    manager = cluster.bucket("rml").collections()
    manager.create_scope("store")
    with pytest.raises(ScopeAlreadyExistsException):
        manager.create_scope("store")
    manager.create_collection("store", "facts", None)
    manager.create_collection(CollectionSpec("models", scope_name="store"))
    with pytest.raises(CollectionAlreadyExistsException):
        manager.create_collection("store", "facts")
    with pytest.raises(ScopeNotFoundException):
        manager.create_collection("elsewhere", "facts")
    scopes = {s.name: sorted(c.name for c in s.collections) for s in manager.get_all_scopes()}
    assert scopes == {"_default": ["_default"], "store": ["facts", "models"]}
    # As with the SDK, a collection nobody created cannot be reached.
    with pytest.raises(UnAmbiguousTimeoutException):
        cluster.bucket("rml").scope("store").collection("uncreated").insert("k", 1)


def test_two_processes_racing_on_the_same_keys_insert_each_exactly_once(
        cluster: StandinCluster, facts: StandinCollection) -> None:
    # Each writer takes the keys in its own order: in the same order, whoever starts first
    # stays ahead and the other only ever finds keys already there.
    body = """
import random
keys = [f"k{{i}}" for i in range(200)]
random.Random({writer!r}).shuffle(keys)
mine = []
for key in keys:
    try:
        facts.insert(key, {{"writer": {writer!r}}})
        mine.append(key)
    except DocumentExistsException:
        pass
print(json.dumps(mine))
"""
    procs = [child(cluster.root, body.format(writer=name)) for name in "AB"]
    outcomes = finish(*procs)
    assert [code for code, _, _ in outcomes] == [0, 0], [err for _, _, err in outcomes]
    won = [json.loads(out) for _, out, _ in outcomes]
    assert len(won[0]) + len(won[1]) == 200
    assert set(won[0]) | set(won[1]) == {f"k{i}" for i in range(200)}
    for writer, keys in zip("AB", won, strict=True):
        assert all(facts.get(k).value == {"writer": writer} for k in keys)
    assert cluster.mutations() == 400  # every attempt reached the store


def test_set_down_makes_every_operation_time_out_in_every_process(
        cluster: StandinCluster, facts: StandinCollection) -> None:
    facts.insert("a", 1)
    cluster.set_down(True)
    for call in (lambda: facts.get("a"), lambda: facts.insert("b", 2),
                 lambda: facts.exists("a"),
                 lambda: cluster.wait_until_ready(timedelta(seconds=1)),
                 lambda: cluster.bucket("rml").collections().get_all_scopes()):
        with pytest.raises(UnAmbiguousTimeoutException):
            call()
    batch = facts.insert_multi({"c": 3, "d": 4})
    assert not batch.all_ok
    assert all(isinstance(e, UnAmbiguousTimeoutException) for e in batch.exceptions.values())
    assert set(facts.get_multi(["a"]).exceptions) == {"a"}
    [(code, out, err)] = finish(child(cluster.root, """
try:
    facts.get("a")
except Exception as exc:
    print(type(exc).__name__)
"""))
    assert (code, out.strip()) == (0, "UnAmbiguousTimeoutException"), err
    cluster.set_down(False)
    cluster.wait_until_ready(timedelta(seconds=1))
    assert facts.get("a").value == 1
    assert facts.exists("c").exists is False and cluster.mutations() == 1


def test_fail_after_lets_exactly_n_mutations_through_even_inside_a_batch(
        cluster: StandinCluster, facts: StandinCollection) -> None:
    cluster.fail_after(3, "UnAmbiguousTimeoutException")
    facts.insert("a", 1)
    batch = facts.insert_multi({"b": 2, "c": 3, "d": 4, "e": 5})
    assert set(batch.results) == {"b", "c"}
    assert all(isinstance(batch.exceptions[k], UnAmbiguousTimeoutException) for k in "de")
    with pytest.raises(UnAmbiguousTimeoutException):
        facts.insert("f", 6)
    assert facts.get("a").value == 1  # reads are not mutations
    assert set(facts.get_multi(list("abcdef")).results) == {"a", "b", "c"}
    assert cluster.mutations() == 3
    cluster.fail_after(0)  # by default: a write the cluster refuses for now
    with pytest.raises(TemporaryFailException):
        facts.insert("f", 6)
    cluster.fail_after(None)
    facts.insert("f", 6)
    assert cluster.mutations() == 4


def test_fail_after_with_crash_exits_the_writer_leaving_the_first_n_documents(
        cluster: StandinCluster, facts: StandinCollection) -> None:
    cluster.fail_after(5, crash=True)
    [(code, out, _)] = finish(child(cluster.root, """
facts.insert_multi({f"k{i}": i for i in range(4)})
facts.insert_multi({f"k{i}": i for i in range(4, 10)})
print("survived")
"""))
    assert (code, out) == (CRASH_EXIT_CODE, "")
    cluster.fail_after(None)
    assert set(facts.get_multi([f"k{i}" for i in range(10)]).results) == {
        f"k{i}" for i in range(5)}


def test_a_batch_of_a_thousand_is_one_operation(
        cluster: StandinCluster, facts: StandinCollection) -> None:
    before = cluster.operations()
    assert facts.insert_multi({f"k{i}": i for i in range(1000)}).all_ok
    assert facts.get_multi([f"k{i}" for i in range(1000)]).all_ok
    assert (cluster.operations() - before, cluster.mutations()) == (2, 1000)


def test_a_closed_cluster_refuses_operations_as_the_sdk_does(
        cluster: StandinCluster, facts: StandinCollection) -> None:
    cluster.close()
    with pytest.raises(RuntimeError, match="closed cluster"):
        facts.get("a")
    assert StandinCluster(cluster.root).bucket("rml").scope("store").collection(
        "facts").exists("a").exists is False
