"""The accept board (``actors.accept_board``): each new connection goes to the replica that
holds the fewest, and a replica that does not take its turn only delays one.

Every replica is a process (slots are claimed with ``lockf``, which is per process): the
test's own, and children started here, each holding the same board.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

import actors.edge
from actors.accept_board import PASS_OVER_MISSES, SLOTS, AcceptBoard
from actors.edge import HttpEdge, Request, Response, Route
from actors.listeners import EdgeListeners, borrow_edge, listeners_path
from config.settings import Settings
from runtime.logs import get_logger
from tests.e2e_support import stopped, wait_for
from tests.test_listeners import HOST, node_settings

ROOT = Path(__file__).resolve().parent.parent
# A replica holding a slot: `holding N` sets its open connections, `accepted` counts one
# accept, `looked` one wakeup for the listener; it answers each command with its slot, and
# exits when its stdin closes.
_HOLDER = """
import sys
from actors.accept_board import AcceptBoard
board = AcceptBoard(int(sys.argv[1]))
assert board.claim()
print(board.slot, flush=True)
for line in sys.stdin:
    word, *rest = line.split()
    if word == "holding":
        board.holding(int(rest[0]))
    elif word == "accepted":
        board.accepted()
    elif word == "looked":
        board.looked()
    print(board.slot, flush=True)
"""


class Holder:
    """A child process holding a slot of the board ``fd``."""

    def __init__(self, fd: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(fd)], pass_fds=[fd], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.slot = int(self._line())

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the holder ended (exit {self.process.wait(10)})"
        return line

    def tell(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        self._line()  # done

    def end(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.kill()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def board_fd() -> Iterator[int]:
    fd = AcceptBoard.create()
    yield fd
    os.close(fd)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.end()


def test_each_process_takes_its_own_slot_and_a_dead_ones_is_freed(
        board_fd: int, holders: list[Holder]) -> None:
    mine = AcceptBoard(os.dup(board_fd))
    try:
        assert mine.claim()
        other = Holder(board_fd)
        holders.append(other)
        assert other.slot != mine.slot
        mine.holding(3)
        assert mine.less_loaded() == (other.slot, 0)  # it holds none
        other.tell("holding 5")
        assert mine.less_loaded() is None  # it holds more
        other.tell("holding 0")
        other.end()  # killed: the kernel drops its lock
        assert mine.less_loaded() is None, "a dead replica is waited for"
        again = Holder(board_fd)
        holders.append(again)
        assert again.slot == other.slot  # the freed slot is taken again
    finally:
        mine.close()


def test_a_replica_that_lets_connections_wait_is_passed_over_until_it_runs_again(
        board_fd: int, holders: list[Holder]) -> None:
    mine = AcceptBoard(os.dup(board_fd))
    try:
        assert mine.claim()
        mine.holding(2)
        slow = Holder(board_fd)
        holders.append(slow)
        for _ in range(PASS_OVER_MISSES):
            turn = mine.less_loaded()
            assert turn == (slow.slot, 0), "a miss or two is not enough to pass it over"
            mine.missed(turn[0])
        assert mine.less_loaded() is None
        # Woken for the listener, it runs again (a resumed replica whose rival won the
        # race for that connection): it is back, before it accepts anything.
        slow.tell("looked")
        assert mine.less_loaded() == (slow.slot, 0)
    finally:
        mine.close()


def test_two_edges_of_one_process_take_two_slots_and_see_each_other(board_fd: int) -> None:
    # Locks do not conflict within a process: the pid in a slot is what keeps them apart.
    first, second = AcceptBoard(os.dup(board_fd)), AcceptBoard(os.dup(board_fd))
    try:
        assert first.claim() and second.claim() and first.slot != second.slot
        first.holding(1)
        assert first.less_loaded() == (second.slot, 0)  # alive, though its lock is ours
    finally:
        second.close()
        first.close()


def test_every_slot_held_is_said(board_fd: int, holders: list[Holder]) -> None:
    boards = []
    try:
        for _ in range(SLOTS):
            boards.append(AcceptBoard(os.dup(board_fd)))
            assert boards[-1].claim()
        late = AcceptBoard(os.dup(board_fd))
        boards.append(late)
        assert not late.claim() and late.slot == -1
        late.holding(3)
        assert late.less_loaded() is None  # without a slot, it accepts as it comes
    finally:
        for board in boards:
            board.close()


# --- edges sharing the keeper's listener and board ----------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return node_settings(tmp_path / "data")


@pytest.fixture
def keeper(settings: Settings) -> Iterator[EdgeListeners]:
    listeners = EdgeListeners.open(settings, get_logger())
    yield listeners
    listeners.close()


class Replica:
    """``tests.edge_replica`` in a child process: an edge named ``name``."""

    def __init__(self, settings: Settings, name: str, defer_s: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.edge_replica", str(listeners_path(settings)), HOST,
             str(settings.predict.port), name, str(defer_s)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        assert ready.startswith("ready"), f"the replica did not start: {ready!r}"

    def stop(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.send_signal(signal.SIGCONT)
        self.process.stdin.close()
        try:
            assert self.process.wait(20) == 0
        finally:
            self.process.kill()
            self.process.wait(10)
            self.process.stdout.close()


def here(settings: Settings) -> HttpEdge:
    """An edge in this process, named ``here``, accepting from the keeper's listener."""
    def who(request: Request) -> Response:
        return Response.json(200, {"edge": "here"})

    edge = HttpEdge(host=HOST, port=0, routes=[Route("GET", "/who", who, public=True)],
                    tokens=[], name="here")
    edge.prepare()
    sock, board = borrow_edge(listeners_path(settings), HOST, settings.predict.port)
    assert board is not None
    edge.listen(sock, board)
    return edge


def keep_open(stack: ExitStack, port: int) -> str:
    """A new keep-alive connection, left open: which edge answered ``GET /who`` on it."""
    connection = stack.enter_context(contextlib.closing(
        http.client.HTTPConnection(HOST, port, timeout=30)))
    connection.request("GET", "/who")
    answer = connection.getresponse()
    assert answer.status == 200
    return str(json.loads(answer.read())["edge"])


def test_connections_opened_one_after_another_alternate_between_replicas(
        settings: Settings, keeper: EdgeListeners, monkeypatch: pytest.MonkeyPatch) -> None:
    # Long deferrals: a replica that is merely slow to wake (a busy test machine) still
    # takes its turn, so the split is exact.
    monkeypatch.setattr(actors.edge, "DEFER_S", 2.0)
    edge = here(settings)
    replica = Replica(settings, "there", 2.0)
    try:
        with ExitStack() as stack:
            served = collections.Counter(keep_open(stack, settings.predict.port)
                                         for _ in range(8))
    finally:
        replica.stop()
        edge.stop()
    # Without the board each connection goes to whichever edge runs first: 4 and 4 in
    # about 1 run in 4.
    assert served == {"here": 4, "there": 4}


def test_a_stopped_replica_only_delays_the_connections_left_to_it(
        settings: Settings, keeper: EdgeListeners) -> None:
    edge = here(settings)
    replica = Replica(settings, "stopped", actors.edge.DEFER_S)
    try:
        os.kill(replica.process.pid, signal.SIGSTOP)
        wait_for("the replica to be stopped", lambda: stopped(replica.process.pid), 10.0)
        with ExitStack() as stack:
            # It holds none, so each of these is left to it first, then taken here.
            served = [keep_open(stack, settings.predict.port) for _ in range(12)]
    finally:
        replica.stop()
        edge.stop()
    assert served == ["here"] * 12
