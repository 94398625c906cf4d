"""`AcceptBoard`: the replicas of one edge port say how many connections each holds.

The cut is here because this is what the replicas of a shared listener know of each other,
and nothing else. The kernel wakes every replica waiting on the listener when a client
connects, and whichever runs first accepts; a replica that is not scheduled during a burst of
connections (a client opening its pool) gets none of them, and keep-alive clients stay where
they landed: 8 connections opened at once to 2 idle replicas all went to one in about 1 run
in 6, and that run served a fifth fewer requests. With the board, a replica that holds more
connections than a live one lets it take the next (see `HttpEdge`): it waits `DEFER_S`, and
accepts anyway if that one did not, so a replica that is stopped or busy only delays a
connection; one that lets `PASS_OVER_MISSES` in a row wait is passed over until it wakes for
the listener again (or for `PASS_OVER_S`).

The board is a small shared memory file the node's keeper creates for each port it lends
(`actors.listeners`) and hands out with the listener. Each replica claims a slot by locking
its bytes (``lockf``), so the kernel frees a slot whose replica dies however it dies, and
writes its pid, its open connections, its accepts and its wakeups for the listener there.
Only the holder writes its slot; readers see whole 8-byte words.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import time

__all__ = ["DEFER_S", "AcceptBoard"]

#: How long a replica leaves a connection to a less loaded one before it accepts it anyway.
DEFER_S = 0.001
#: A replica that let this many connections in a row wait (accepting none meanwhile) ...
PASS_OVER_MISSES = 3
#: ... is passed over for this long, or until it wakes for the listener again.
PASS_OVER_S = 1.0
#: Slots on a board: replicas of one port on one node (at most 32) and their replacements.
SLOTS = 64
_WORDS = 4  # a slot: pid, open connections, accepts so far, looks at the listener so far
_SLOT_BYTES = _WORDS * 8
_SIZE = SLOTS * _SLOT_BYTES
_PID, _OPEN, _ACCEPTS, _LOOKS = 0, 1, 2, 3


class AcceptBoard:
    """One replica's view of its port's board (see the module docstring), from a file
    descriptor of the board (its own: closed by `close`).

    One per port and process, as in a daemon: closing any descriptor of the board drops
    every lock this process holds on it (POSIX), so where a process has two (a test's
    edges), the other's slot may look free and be cleared by another process; that edge
    then accepts as it comes, unseen.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._map = mmap.mmap(fd, _SIZE)
        self._words = memoryview(self._map).cast("q")
        self._slot = -1
        self._open = 0
        self._accepts = 0
        self._looks = 0
        # Slots that let connections wait: slot -> (its looks then, how many in a row,
        # until when it is passed over once that is PASS_OVER_MISSES).
        self._missed: dict[int, tuple[int, int, float]] = {}

    @classmethod
    def create(cls) -> int:
        """A new, empty board's file descriptor (the keeper's, one per lent listener)."""
        fd = os.memfd_create("rml-accept-board", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, _SIZE)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @property
    def slot(self) -> int:
        """This replica's slot (-1: none claimed)."""
        return self._slot

    def claim(self) -> bool:
        """Take a free slot for this process; False when every slot is held."""
        if self._slot >= 0:
            return True
        pid, words = os.getpid(), self._words
        for slot in range(SLOTS):
            # Locks do not conflict within a process: another edge of this one (a test's)
            # holds a slot with our pid in it.
            if words[slot * _WORDS + _PID] != pid and self._lock(slot):
                base = slot * _WORDS
                words[base + _OPEN] = self._open
                words[base + _ACCEPTS] = self._accepts
                words[base + _LOOKS] = self._looks
                words[base + _PID] = pid
                self._slot = slot
                return True
        return False

    def release(self) -> None:
        """Leave the board (this replica accepts no more): no one waits for it from now."""
        slot, self._slot = self._slot, -1
        if slot < 0:
            return
        base = slot * _WORDS
        self._words[base + _PID] = 0
        self._words[base + _OPEN] = 0
        with contextlib.suppress(OSError):
            fcntl.lockf(self._fd, fcntl.LOCK_UN, _SLOT_BYTES, slot * _SLOT_BYTES)

    def close(self) -> None:
        """Release the slot and unmap the board."""
        self.release()
        self._words.release()
        self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def accepted(self) -> None:
        """This replica accepted a connection (its count held follows, by `holding`)."""
        self._accepts += 1
        if self._slot >= 0:
            self._words[self._slot * _WORDS + _ACCEPTS] = self._accepts

    def looked(self) -> None:
        """This replica woke for a queued connection (it runs: see `missed`)."""
        self._looks += 1
        if self._slot >= 0:
            self._words[self._slot * _WORDS + _LOOKS] = self._looks

    def holding(self, count: int) -> None:
        """This replica holds ``count`` connections (accepted and not yet closed)."""
        self._open = count
        if self._slot >= 0:
            self._words[self._slot * _WORDS + _OPEN] = count

    def less_loaded(self) -> tuple[int, int] | None:
        """``(slot, its accepts so far)`` of a live replica holding fewer connections than
        this one (the fewest), which should take the next; None: this one should."""
        mine = self._open
        if mine == 0 or self._slot < 0:
            return None
        words = self._words
        pids = words[_PID::_WORDS].tolist()
        opens = words[_OPEN::_WORDS].tolist()
        while True:
            best, fewest = -1, mine
            for slot, pid in enumerate(pids):
                if pid and opens[slot] < fewest and slot != self._slot:
                    missed = self._missed.get(slot)
                    if missed is not None:
                        looks, misses, until = missed
                        if words[slot * _WORDS + _LOOKS] != looks:
                            del self._missed[slot]  # it runs again
                        elif misses >= PASS_OVER_MISSES and time.monotonic() < until:
                            continue
                    best, fewest = slot, opens[slot]
            if best < 0:
                return None
            if self._alive(best):
                return best, words[best * _WORDS + _ACCEPTS]
            pids[best] = 0  # its replica is gone (the slot is cleared): look again

    def accepts(self, slot: int) -> int:
        """The accepts so far of the replica in ``slot``."""
        return self._words[slot * _WORDS + _ACCEPTS]

    def missed(self, slot: int) -> None:
        """The replica in ``slot`` let a connection wait: after `PASS_OVER_MISSES` in a row
        (it did not even wake for the listener in between), `less_loaded` leaves it out
        until it wakes for one again (`looked`: a replica stopped or hung does not), or for
        `PASS_OVER_S` (then one more miss passes it over again)."""
        looks = self._words[slot * _WORDS + _LOOKS]
        seen, misses, _ = self._missed.get(slot, (looks, 0, 0.0))
        misses = misses + 1 if seen == looks else 1
        self._missed[slot] = (looks, misses, time.monotonic() + PASS_OVER_S)

    def _lock(self, slot: int) -> bool:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, _SLOT_BYTES,
                        slot * _SLOT_BYTES)
        except OSError:  # EAGAIN or EACCES: held by a live process
            return False
        return True

    def _alive(self, slot: int) -> bool:
        """Whether a process holds ``slot``; a slot left by a dead one is cleared."""
        if self._words[slot * _WORDS + _PID] == os.getpid() or not self._lock(slot):
            return True  # held by another process, or by another edge of this one
        base = slot * _WORDS
        self._words[base + _PID] = 0
        self._words[base + _OPEN] = 0
        with contextlib.suppress(OSError):
            fcntl.lockf(self._fd, fcntl.LOCK_UN, _SLOT_BYTES, slot * _SLOT_BYTES)
        return False
