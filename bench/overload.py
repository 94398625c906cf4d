"""Overload bench: the collectors at ~10x their sustainable ingest rate.

    .venv/bin/python bench/overload.py [--sustain-s 5] [--overload-s 10] [--factor 10]
                                       [--connections 160] [--batch 1000]

Against a real daemon (temporary directory, free ports on 127.0.0.1, always stopped):

1. sustainable rate: ``--clients`` closed-loop clients send batches of ``--batch`` unique
   readings for ``--sustain-s`` seconds; readings acknowledged (200) per second;
2. overload: ``--factor`` x that rate offered open-loop (a pacer hands one batch per tick
   to a bounded pool of ``--connections`` keep-alive connections; a tick that finds every
   connection busy is counted as "not offered: client saturated") for ``--overload-s``;
   counted: offered, 200, 503 with / without ``Retry-After``, other statuses, errors;
3. the collectors' VmRSS sampled every 100 ms (pids from the root's status): peak during
   the overload vs idle and vs the sustainable phase, as ratios;
4. every acknowledged batch is sent again: each must come back all duplicates (lost = 0).

Nothing here retries a refused batch: a 503 is counted and dropped, as the point is what
the collectors acknowledge and refuse, not a gateway's backoff.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _daemon import bench_daemon  # noqa: E402

from config.settings import Settings  # noqa: E402
from daemon.process import ask_root  # noqa: E402
from messages.protocol import StatusReport, StatusRequest  # noqa: E402
from rml_client import BatchResult, GatewayClient, HttpStatusError, RmlError  # noqa: E402

TOKEN = "overload-bench-token-0123"
_PLACEHOLDER = b"BBBBBBBB"




class Batches:
    """Batch ``n`` is always the same bytes (so it can be sent again), unique across ``n``."""

    def __init__(self, size: int, run: str) -> None:
        now_ms = int(time.time() * 1000) - 60_000
        readings = [
            {"sensor_id": f"ovl-{run}", "location_id": 1 + i % 10,
             "reading_id": f"{_PLACEHOLDER.decode()}-{i:05d}", "timestamp": now_ms + i,
             "animals_lower": 3 + i % 5, "animals_upper": 9 + i % 7,
             "percent_zebras": (i % 10) / 10}
            for i in range(size)
        ]
        self.size = size
        self._template = json.dumps({"readings": readings}).encode()
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def body(self, n: int) -> bytes:
        return self._template.replace(_PLACEHOLDER, b"%08d" % n)


class Client:
    """One keep-alive connection (``rml_client.GatewayClient``) sending batches already
    encoded; with ``retries=0`` a refused batch is counted, not sent again."""

    def __init__(self, port: int, timeout_s: float = 30.0, retries: int = 0) -> None:
        self.gateway = GatewayClient(port=port, token=TOKEN, timeout_s=timeout_s,
                                     retries=retries, deadline_s=None)

    def post(self, body: bytes) -> tuple[int, bool, BatchResult | None, str]:
        """(status, whether a 503 came with Retry-After, the answer, the error); status 0
        when no answer came (the error names why)."""
        try:
            return 200, False, self.gateway.send_encoded(body), ""
        except HttpStatusError as exc:
            return exc.status, exc.retry_after_s is not None, None, ""
        except RmlError as exc:
            return 0, False, None, type(exc.__cause__ or exc).__name__

    def close(self) -> None:
        self.gateway.close()


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    refused: int = 0  # 503 with Retry-After
    refused_bare: int = 0  # 503 without Retry-After
    other: Counter[str] = field(default_factory=Counter)
    acked: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, n: int, status: int, retry_after: bool, answer: BatchResult | None,
               error: str, size: int) -> None:
        with self.lock:
            self.sent += 1
            if answer is not None:
                if answer.accepted + answer.duplicates != size:
                    self.other[f"200 with {answer}"[:80]] += 1
                self.ok += 1
                self.acked.append(n)
            elif status == 503 and retry_after:
                self.refused += 1
            elif status == 503:
                self.refused_bare += 1
            elif status == 0:
                self.other[f"error {error}"] += 1
            else:
                self.other[str(status)] += 1


class RssSampler(threading.Thread):
    """VmRSS (kB) of each pid every ``interval_s``, tagged with the current phase."""

    def __init__(self, pids: list[int], interval_s: float = 0.1) -> None:
        super().__init__(daemon=True, name="rss")
        self.pids, self.interval_s = pids, interval_s
        self.phase = "idle"
        self.samples: list[tuple[str, int, int]] = []  # (phase, pid, kB)
        self.stop_flag = threading.Event()

    @staticmethod
    def rss_kb(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def run(self) -> None:
        while not self.stop_flag.wait(self.interval_s):
            for pid in self.pids:
                kb = self.rss_kb(pid)
                if kb is not None:
                    self.samples.append((self.phase, pid, kb))

    def peak(self, phase: str) -> int:
        """The highest per-collector sample in ``phase`` (kB)."""
        return max((kb for p, _, kb in self.samples if p == phase), default=0)

    def total_peak(self, phase: str) -> int:
        """Per pid peak in ``phase``, summed (kB): an upper bound of the collectors together."""
        peaks: dict[int, int] = {}
        for p, pid, kb in self.samples:
            if p == phase:
                peaks[pid] = max(peaks.get(pid, 0), kb)
        return sum(peaks.values())


def collectors(settings: Settings) -> list[tuple[str, int, int]]:
    """(name, pid, restarts) of every collector, from the root's status."""
    answer = ask_root(settings, StatusRequest(uuid.uuid4().hex), 10.0)
    if not isinstance(answer, StatusReport):
        raise RuntimeError("the root did not answer status")
    return [(a.name, a.pid, a.restarts) for a in answer.actors
            if a.name.startswith("collector-") and a.state == "running"]


def closed_loop(port: int, batches: Batches, clients: int, seconds: float,
                tally: Tally) -> float:
    """``clients`` threads send back to back for ``seconds``; returns the elapsed time."""
    stop_at = time.monotonic() + seconds

    def loop() -> None:
        client = Client(port)
        while time.monotonic() < stop_at:
            n = batches.take()
            tally.record(n, *client.post(batches.body(n)), batches.size)
        client.close()

    began = time.monotonic()
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return time.monotonic() - began


def open_loop(port: int, batches: Batches, connections: int, seconds: float,
              batches_per_s: float, tally: Tally) -> tuple[float, int, float]:
    """Offer ``batches_per_s`` for ``seconds`` through at most ``connections`` connections.

    Returns (elapsed, ticks not offered because every connection was busy, worst pacer lag s).
    """
    jobs: queue.Queue[int | None] = queue.Queue(maxsize=connections)
    idle = threading.Semaphore(connections)

    def worker() -> None:
        client = Client(port)
        while (n := jobs.get()) is not None:
            tally.record(n, *client.post(batches.body(n)), batches.size)
            idle.release()
        client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    saturated, worst_lag = 0, 0.0
    interval = 1.0 / batches_per_s
    began = time.monotonic()
    ticks = int(seconds * batches_per_s)
    for i in range(ticks):
        due = began + i * interval
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            worst_lag = max(worst_lag, now - due)
        if idle.acquire(blocking=False):
            jobs.put(batches.take())
        else:
            saturated += 1
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join(60)
    return time.monotonic() - began, saturated, worst_lag


def verify(port: int, acked: list[int], batches: Batches, clients: int = 4) -> tuple[int, int]:
    """Send every acknowledged batch again; returns (readings accepted again = lost, unanswered)."""
    todo: queue.Queue[int] = queue.Queue()
    for n in acked:
        todo.put(n)
    lost, unanswered = [0], [0]
    lock = threading.Lock()

    def loop() -> None:
        client = Client(port, retries=60)
        while True:
            try:
                n = todo.get_nowait()
            except queue.Empty:
                break
            answer = client.post(batches.body(n))[2]  # a refused resend is retried, bounded
            with lock:
                if answer is not None:
                    lost[0] += answer.accepted
                else:
                    unanswered[0] += 1
        client.close()

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return lost[0], unanswered[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sustain-s", type=float, default=5.0)
    parser.add_argument("--overload-s", type=float, default=10.0)
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--connections", type=int, default=160)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--max-pending", type=int, default=None,
                        help="[ingest] max_pending (default: the embedded default)")
    args = parser.parse_args()
    command = "$ .venv/bin/python " + " ".join(sys.argv)
    pending = f"max_pending = {args.max_pending}\n" if args.max_pending else ""
    with bench_daemon(prefix="rml-overload-", tokens=(TOKEN,), ingest_toml=pending,
                      keep=args.keep, keep_note="data kept in") as (settings, _):
        return run(settings, args, command)


def run(settings: Settings, args: argparse.Namespace, command: str) -> int:
    port = settings.ingest.port
    batches = Batches(args.batch, uuid.uuid4().hex[:8])
    before = collectors(settings)
    sampler = RssSampler([pid for _, pid, _ in before])
    sampler.start()
    time.sleep(1.0)  # idle samples
    print(f"collectors: {', '.join(f'{n} (pid {p})' for n, p, _ in before)}; "
          f"max_pending {settings.ingest.max_pending} each, "
          f"max_body_bytes {settings.ingest.max_body_bytes}")

    sampler.phase = "sustained"
    sustained = Tally()
    elapsed = closed_loop(port, batches, args.clients, args.sustain_s, sustained)
    rate = sustained.ok * args.batch / elapsed
    print(f"sustainable: {args.clients} closed-loop clients x {args.batch} readings, "
          f"{elapsed:.1f} s: {sustained.ok * args.batch} readings acknowledged = "
          f"{rate:,.0f} readings/s ({sustained.refused} refused, {dict(sustained.other)})")

    sampler.phase = "overload"
    overload = Tally()
    target_bps = args.factor * rate / args.batch
    elapsed, saturated, lag = open_loop(port, batches, args.connections, args.overload_s,
                                        target_bps, overload)
    sampler.phase = "after"
    offered = overload.sent * args.batch
    print(f"overload: target {args.factor:g}x = {target_bps * args.batch:,.0f} readings/s "
          f"open loop through <= {args.connections} connections for {elapsed:.1f} s")
    print(f"  offered:       {offered:,} readings in {overload.sent} batches = "
          f"{offered / elapsed:,.0f} readings/s ({offered / elapsed / rate:.1f}x sustainable); "
          f"ticks not offered (every connection busy): {saturated}; worst pacer lag "
          f"{lag * 1000:.0f} ms")
    print(f"  acknowledged:  {overload.ok * args.batch:,} readings ({overload.ok} batches, "
          f"{overload.ok * args.batch / elapsed:,.0f} readings/s)")
    share = overload.refused / overload.sent if overload.sent else 0.0
    print(f"  refused 503 + Retry-After: {overload.refused} batches ({share:.1%})")
    print(f"  503 without Retry-After: {overload.refused_bare}; other: "
          f"{dict(overload.other) or 'none'}")

    time.sleep(0.5)
    sampler.stop_flag.set()
    sampler.join()
    idle, sus, peak = (sampler.peak(p) for p in ("idle", "sustained", "overload"))
    print(f"collector VmRSS (max of any one collector): idle {idle / 1024:.1f} MiB, "
          f"sustained {sus / 1024:.1f} MiB, overload peak {peak / 1024:.1f} MiB "
          f"-> peak/idle {peak / idle:.2f}x, peak/sustained {peak / sus:.2f}x")
    print(f"  summed per-collector peaks: idle {sampler.total_peak('idle') / 1024:.1f} MiB, "
          f"sustained {sampler.total_peak('sustained') / 1024:.1f} MiB, overload "
          f"{sampler.total_peak('overload') / 1024:.1f} MiB "
          f"({len(sampler.samples)} samples)")

    acked = sustained.acked + overload.acked
    began = time.monotonic()
    lost, unanswered = verify(port, acked, batches)
    print(f"verify: {len(acked)} acknowledged batches ({len(acked) * args.batch:,} readings) "
          f"sent again in {time.monotonic() - began:.1f} s: lost {lost}, unanswered {unanswered}")
    after = collectors(settings)
    restarted = [n for n, _, r in after if r]
    if {p for _, p, _ in before} != {p for _, p, _ in after}:
        restarted.append("(collector pids changed)")
    print(f"collector restarts: {restarted or 'none'}")
    print(command)
    bad = lost or unanswered or overload.refused_bare or overload.other or restarted
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
