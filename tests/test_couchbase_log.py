"""AppendLog: entries numbered without holes or a counter, shared by several writers."""

from __future__ import annotations

import threading
from pathlib import Path

from storage.couchbase.kv import KeyValue
from storage.couchbase.log import AppendLog
from tests.couchbase_standin import StandinCluster


def keyvalue(tmp_path: Path) -> KeyValue:
    bucket = StandinCluster(tmp_path / "cb").bucket("rml")
    bucket.collections().create_scope("s")
    bucket.collections().create_collection("s", "c")
    return KeyValue(bucket.scope("s").collection("c"), "test")


def test_entries_are_numbered_from_one_and_read_back_in_order(tmp_path: Path) -> None:
    kv = keyvalue(tmp_path)
    log = AppendLog(kv, "l", "a")
    assert (log.length(), log.entries(), log.newest()) == (0, [], [])
    assert [log.append({"i": i}) for i in range(70)] == list(range(1, 71))
    other = AppendLog(kv, "l", "a")  # another reader starts from nothing
    assert other.length() == 70
    assert other.entries() == [{"i": i} for i in range(70)]
    assert other.newest(3) == [{"i": 69}, {"i": 68}, {"i": 67}]
    assert other.get(5) == {"i": 4} and other.get(71) is None
    assert AppendLog(kv, "l", "b").length() == 0  # another log


def test_concurrent_writers_share_a_log_without_losing_an_entry(tmp_path: Path) -> None:
    kv = keyvalue(tmp_path)
    numbers: list[int] = []

    def write(w: int) -> None:
        log = AppendLog(kv, "l", "shared")  # each writer its own instance, as processes
        numbers.extend(log.append({"w": w, "i": i}) for i in range(25))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(1, 101))
    entries = AppendLog(kv, "l", "shared").entries()
    assert sorted((e["w"], e["i"]) for e in entries) == [(w, i) for w in range(4)
                                                        for i in range(25)]
