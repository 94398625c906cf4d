"""Throughput and latency of HttpEdge beside a bare asyncio + httptools server, same run.

Both servers run in a thread of this process and answer one small JSON route under keep-alive;
the load comes from separate client processes (so the client does not share the servers' GIL),
each an asyncio loop driving its share of the connections, one request in flight per connection.
Traffic stays on 127.0.0.1; every run is bounded by --seconds.

    .venv/bin/python bench/edge.py --connections 8 --rounds 5 --seconds 1.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import threading
import time
from typing import Any

import httptools

from actors.edge import HttpEdge, Request, Response, Route

HOST = "127.0.0.1"
TOKEN = "bench-token"
PAYLOAD = {"prediction": 0.42, "model": "tree-7"}
REQUEST = (
    f"GET /predict HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
).encode()


# the bare server: the least an asyncio + httptools server can do for this route


class _BareProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        assert self.transport is not None
        body = json.dumps(PAYLOAD, separators=(",", ":")).encode()
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.transport.write(head.encode() + body)


class BareServer:
    """A bare asyncio + httptools server in a thread, started and stopped like HttpEdge."""

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        server = self._loop.run_until_complete(
            self._loop.create_server(_BareProtocol, HOST, 0, backlog=1024)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.close()

    def start(self) -> None:
        self.thread.start()
        self._ready.wait(5)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self.thread.join(5)


# the load: one client process drives `connections` keep-alive connections


class _ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answered: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() != 200:
            raise RuntimeError(f"unexpected status {self.parser.get_status_code()}")
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(None)


async def _drive(
    port: int, connections: int, seconds: float, warmup: float
) -> tuple[list[float], int]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    total = 0
    start = loop.time()
    measure_from, end = start + warmup, start + warmup + seconds

    async def one() -> None:
        nonlocal total
        _, protocol = await loop.create_connection(_ClientProtocol, HOST, port)
        assert protocol.transport is not None
        while (now := time.perf_counter()) and loop.time() < end:
            protocol.answered = loop.create_future()
            protocol.transport.write(REQUEST)
            await protocol.answered
            total += 1
            if loop.time() >= measure_from:
                latencies.append(time.perf_counter() - now)
        protocol.transport.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return latencies, total


def _client(port: int, connections: int, seconds: float, warmup: float, out: Any) -> None:
    out.put(asyncio.run(_drive(port, connections, seconds, warmup)))


def load(
    port: int, thread: threading.Thread, connections: int, procs: int, seconds: float, warmup: float
) -> dict[str, float]:
    """Drive `port` from `procs` processes; requests/s, latency (ms), server CPU per request."""
    assert thread.ident is not None
    clock = time.pthread_getcpuclockid(thread.ident)
    cpu_before = time.clock_gettime(clock)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    shares = [connections // procs + (i < connections % procs) for i in range(procs)]
    workers = [
        context.Process(target=_client, args=(port, share, seconds, warmup, out))
        for share in shares
        if share
    ]
    for worker in workers:
        worker.start()
    latencies: list[float] = []
    total = 0
    for _ in workers:
        measured, count = out.get(timeout=seconds + warmup + 30)
        latencies.extend(measured)
        total += count
    cpu = time.clock_gettime(clock) - cpu_before
    for worker in workers:
        worker.join(10)
    latencies.sort()
    return {
        "rps": len(latencies) / seconds,
        "median_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "cpu_us": cpu / total * 1e6,
    }


def _predict(request: Request) -> Response:
    return Response.json(200, PAYLOAD)


def _line(name: str, figures: dict[str, float]) -> str:
    return (
        f"{name:<9} {figures['rps']:>9,.0f} req/s   median {figures['median_ms']:.3f} ms"
        f"   p99 {figures['p99_ms']:.3f} ms   server CPU {figures['cpu_us']:.1f} us/req"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--client-procs", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.5, help="per round and server")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=0.3)
    args = parser.parse_args()
    seconds = min(args.seconds, 30.0)
    connections = min(args.connections, 256)
    print(
        f"{connections} keep-alive connections from {args.client_procs} client process(es), "
        f"{args.rounds} alternating rounds of {seconds:g} s (after {args.warmup:g} s warm-up), "
        "GET /predict -> small JSON"
    )
    edge = HttpEdge(
        host=HOST,
        port=0,
        routes=[Route("GET", "/predict", _predict)],
        tokens=[TOKEN],
        name="bench-edge",
    )
    bare = BareServer()
    edge.start()
    bare.start()
    # The edge's serving thread carries its name; its CPU clock is what the edge costs.
    [edge_thread] = [t for t in threading.enumerate() if t.name == "bench-edge"]
    results: dict[str, list[dict[str, float]]] = {"bare": [], "HttpEdge": []}
    try:
        # Alternate the servers so drift on a shared machine hits both alike.
        for round_ in range(args.rounds):
            for name, port, thread in (
                ("bare", bare.port, bare.thread),
                ("HttpEdge", edge.port, edge_thread),
            ):
                figures = load(port, thread, connections, args.client_procs, seconds, args.warmup)
                results[name].append(figures)
                print(f"round {round_ + 1}  " + _line(name, figures))
    finally:
        edge.stop()
        bare.stop()
    # The median round is the typical figure; the best round is the least disturbed one
    # (other work on a shared machine only ever makes a round slower).
    summaries = {
        "median": {
            name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            for name, runs in results.items()
        },
        "best": {
            name: {
                "rps": max(r["rps"] for r in runs),
                "median_ms": min(r["median_ms"] for r in runs),
                "p99_ms": min(r["p99_ms"] for r in runs),
                "cpu_us": min(r["cpu_us"] for r in runs),
            }
            for name, runs in results.items()
        },
    }
    for summary, figures_by_name in summaries.items():
        print(f"{summary} of rounds:")
        for name, figures in figures_by_name.items():
            print("          " + _line(name, figures))
        edge_f, bare_f = figures_by_name["HttpEdge"], figures_by_name["bare"]
        print(
            f"          ratio HttpEdge/bare: throughput {edge_f['rps'] / bare_f['rps']:.2f}, "
            f"median latency {edge_f['median_ms'] / bare_f['median_ms']:.2f}, "
            f"p99 {edge_f['p99_ms'] / bare_f['p99_ms']:.2f}, "
            f"server CPU per request {edge_f['cpu_us'] / bare_f['cpu_us']:.2f}"
        )


if __name__ == "__main__":
    main()
