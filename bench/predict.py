"""Predictions: the project's ``POST /model`` against the floor, in one run, with wrk.

    .venv/bin/python bench/predict.py [--model-type decision_tree] [--rounds 3] [--seconds 5]
                                      [--body {location,features,both}]

A real daemon (temporary directory, free ports on 127.0.0.1, 2 predict replicas, tokens
set, always stopped) learns a champion of ``--model-type`` (``decision_tree``,
``random_forest`` or ``gradient_boosting``, at the job's default hyperparameters: a forest
or boosting has 100 trees) from the simulator's data (``Savanna(seed=3, n_locations=10,
hours=48)``, as the chaos bench seeds it; 120 hours for boosting, whose 48-hour model the
publish gate rejects: ``--hours``). Once ``POST /model {"location_id": 7}`` answers
200, the floor (``bench/_floor.py``: asyncio + httptools in 2 processes on one port with
SO_REUSEPORT, the same champion and rows in memory; on asyncio's own event loop, or with
``--floor-loop uvloop`` on uvloop's, as the project's edges) starts on another free port;
both must give the same answers for locations 1..10 (a warning is printed if not).

Two request bodies (``--body``, default ``both``): ``{"location_id": n}`` and
``{"features": {name: value, ...}}`` with location n's latest feature row on the
champion's collection, read from the daemon's store (read-only) before the rounds, so
its answers equal location n's. The codec takes no null or NaN, so a location whose row
holds one is skipped (and said so). Before the rounds, each server must answer the
features bodies as it answers location_id (a warning is printed if not).

Then ``--rounds`` rounds, the servers' order alternating from one round to the next: for
each body and server, wrk for ``--seconds`` with 1 connection on 1 thread (p50, p99),
then with 8 connections on 2 threads (requests/s, p99); every request is a keep-alive
``POST /model`` with a bearer token, for locations 1..10 in turn. During the project's
runs, a light ingest keeps its rows changing (a batch of 10 readings, one per location,
once a second, stamped on the simulated data's clock: its end plus the time since, so the
features' 6-hour windows still hold the simulated sensors) and a thread samples
``GET /metrics`` every 100 ms on a fresh connection (so every replica): the age of the
predictors' in-memory rows since last confirmed complete, and how many location_id rows
were read from memory or from the store (each replica's counters against its own
earlier values).

Printed: each run as it comes; per body, each server's medians over rounds and the
project's ratios to the floor against the goals; the project's features / location_id
ratios (p50 at 1 connection, requests/s at 8: the goal is the same speed); the rows'
confirmed age (p50, p99, max over the samples), the share of rows from memory and the
readings sent. wrk runs on the same 2 cores as the servers (for both alike). Each 8-connection
run also says how many rescheduling interrupts the machine sent per 1,000 requests (Linux's
``RES`` count: wakeups across CPUs): the runs in which wrk's threads and a server came to
share a CPU have few, and are the fast ones, for either server.

Exit 2 if wrk is not installed (``apt-get install -y wrk``); 1 if a server answered
anything but 200 under load; else 0 (the goals are reported, not enforced).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _daemon import bench_daemon  # noqa: E402
from _floor import running_floor  # noqa: E402

from config.job import HYPERPARAMETERS, ModelType  # noqa: E402
from config.settings import Settings  # noqa: E402
from players.demo import last_midnight_ms  # noqa: E402
from players.gateway import HttpClient  # noqa: E402
from rml_client import GatewayClient, HttpStatusError, PredictionClient  # noqa: E402
from runtime.group import free_ports  # noqa: E402

TOKEN = "predict-bench-token-0123"
HOST = "127.0.0.1"
LOCATIONS = range(1, 11)
GOALS = "goals: p50 <= 1.1x, req/s >= 0.85x, p99 <= 1.5x the floor"

# No retraining while we measure: outcomes are sent once (min 100 to train, then never again)
# and the drift check is off (it would run in the learner, on the same 2 cores).
_LEARNING_TOML = ('[learning]\nmin_outcomes = 100\nretrain_every_outcomes = 100000\n'
                  'drift_check_interval_s = 0\nmodel_type = "{model_type}"\n')

BODIES = {"location": '{"location_id": n}', "features": '{"features": {...}}'}

# The bodies are Lua long strings: JSON never holds "]==]".
_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
local bodies = {{{bodies}}}
local requests = {{}}
local n = 0
init = function(args)
  for i, body in ipairs(bodies) do
    requests[i] = wrk.format(nil, "/model", nil, body)
  end
end
request = function()
  n = n % #requests + 1
  return requests[n]
end
"""

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_PERCENTILE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                            r"timeout (\d+)")


@dataclass(frozen=True, slots=True)
class WrkResult:
    p50_s: float
    p99_s: float
    rate: float
    errors: str  # empty when every answer was a 2xx and no socket failed


def parse_wrk(output: str) -> WrkResult:
    """p50, p99 (s) and requests/s from ``wrk --latency``'s output; ``ValueError`` if absent."""
    percentiles = {int(p): float(v) * _UNITS[unit] for p, v, unit in _PERCENTILE.findall(output)}
    rate = _RATE.search(output)
    if 50 not in percentiles or 99 not in percentiles or rate is None:
        raise ValueError(f"unexpected wrk output:\n{output}")
    problems = []
    non_2xx = _NON_2XX.search(output)
    if non_2xx:
        problems.append(f"{non_2xx.group(1)} non-2xx answers")
    sockets = _SOCKET_ERRORS.search(output)
    if sockets and any(int(n) for n in sockets.groups()):
        problems.append(sockets.group(0))
    return WrkResult(percentiles[50], percentiles[99], float(rate.group(1)), "; ".join(problems))


def run_wrk(script: Path, port: int, connections: int, threads: int, seconds: float) -> WrkResult:
    """One wrk run against ``127.0.0.1:port/model``; wrk is always gone when this returns."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
               "--latency", "--timeout", "5s", "-s", str(script), f"http://{HOST}:{port}/model"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=seconds + 30.0)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10.0)
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited {process.returncode}:\n{output}")
    return parse_wrk(output)


def seed_champion(settings: Settings, timeout_s: float, hours: int,
                  end_ms: int) -> dict[str, Any]:
    """Send the simulator's readings and outcomes (ending at ``end_ms``); wait until
    location 7 is answered (200)."""
    from players.simulator import Savanna, reading_item

    savanna = Savanna(seed=3, n_locations=10, hours=hours, end_ms=end_ms)
    ingest = settings.ingest
    with GatewayClient(host=ingest.host, port=ingest.port, token=ingest.tokens[0]) as gateway:
        gateway.send([reading_item(r) for r in savanna.readings()])
        gateway.send_outcomes(savanna.outcome_items())
    last = "none"
    with PredictionClient(host=settings.predict.host, port=settings.predict.port, token=TOKEN,
                          retries=2) as predict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                return asdict(predict.predict(location_id=7))
            except HttpStatusError as exc:
                last = f"{exc.status} {exc.reason}"
            time.sleep(0.25)
    raise RuntimeError(f"no champion answered POST /model within {timeout_s:.0f} s (last "
                       f"answer: {last}; a model the gate rejects is never published: try "
                       "more --hours)")


def lua_script(token: str, bodies: dict[int, dict[str, Any]]) -> str:
    """wrk's script: keep-alive ``POST /model`` with each of ``bodies`` in turn."""
    texts = (json.dumps(body, separators=(",", ":")) for body in bodies.values())
    return _LUA.format(token=token, bodies=", ".join(f"[==[{t}]==]" for t in texts))


def feature_bodies(settings: Settings) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """Each location's ``{"features": ...}`` body, its latest row on the champion's
    collection (read-only from the daemon's store); and the locations skipped: no row, or a
    value that is not a finite number (the codec takes no null, NaN or infinity)."""
    from learning.models.lineage import feature_names_of
    from storage.backend import StoreBackend

    backend = StoreBackend(settings, read_only=True)
    try:
        stores = backend.stores()
        record = stores.registry.champion()
        if record is None:
            raise LookupError("the daemon has no champion")
        names = feature_names_of(record.lineage)
        bodies, skipped = {}, []
        for loc in LOCATIONS:
            row = stores.features.latest_row(record.feature_collection_id, loc)
            if row is None or not all(type(v) in (int, float) and math.isfinite(v)
                                      for v in row.values):
                skipped.append(loc)
                continue
            values = (float(v) for v in row.values)
            bodies[loc] = {"features": dict(zip(names, values, strict=True))}
        return bodies, skipped
    finally:
        backend.close()


def answers(port: int, bodies: dict[int, dict[str, Any]]) -> dict[int, tuple[int, Any]]:
    """Each location's (status, answer) from the server on ``port``, for its body."""
    out: dict[int, tuple[int, Any]] = {}
    with PredictionClient(host=HOST, port=port, token=TOKEN, retries=2) as client:
        for loc, body in bodies.items():
            try:
                out[loc] = (200, asdict(client.predict(location_id=body.get("location_id"),
                                                       features=body.get("features"))))
            except HttpStatusError as exc:
                out[loc] = (exc.status, {"error": exc.reason})
    return out


def compare(project: dict[int, tuple[int, Any]], floor: dict[int, tuple[int, Any]]) -> list[str]:
    """Where two sets of answers differ (empty: the same, probabilities within 1e-9), for
    the locations of the first."""
    differences = []
    for loc in project:
        (ps, pa), (fs, fa) = project[loc], floor[loc]
        if ps != 200 or fs != 200:
            differences.append(f"location {loc}: status {ps} vs {fs} ({pa} vs {fa})")
            continue
        same = (abs(pa["probability"] - fa["probability"]) <= 1e-9
                and all(pa[k] == fa[k] for k in ("label", "model_version",
                                                 "feature_collection_id", "fallback")))
        if not same:
            differences.append(f"location {loc}: {json.dumps(pa)} vs {json.dumps(fa)}")
    return differences


_METRIC = re.compile(r'^(rml_prediction_rows_total|rml_feature_rows_confirmed_age_seconds)'
                     r'\{predictor="([^"]+)"(?:,source="(\w+)")?\} (\S+)$', re.M)


class Watch:
    """While ``active``: the project's ``/health`` (its replica's confirmed age) sampled
    every 100 ms from a thread (a fresh connection each time, so every replica), the
    node's ``/metrics`` (row lookups) before and after, and a batch of readings (one for each of
    locations 1..10) posted to its ingest once a second from another.

    The readings are stamped on the simulated data's clock (``end_ms`` when the watch is
    made, then running): stamped with today's time, hours past the data's end, their
    feature windows would hold one sensor, so sensor_disagreement would be NaN for every
    location, judged invalid once ``[features] nan_rate_rows`` rows had come, and the
    daemon would switch to its fallback collection."""

    def __init__(self, settings: Settings, end_ms: int) -> None:
        self.settings = settings
        self._clock = (end_ms, time.monotonic())
        self.ages: list[float] = []  # confirmed age (s), one per sample
        self.rows: dict[str, dict[str, int]] = {}  # predictor -> source -> rows looked up
        self._last: dict[str, dict[str, int]] = {}  # predictor -> source -> last counter
        self.sent = self.accepted = self.failed_batches = self.failed_scrapes = 0

    def _get(self, port: int, path: str) -> tuple[int, bytes]:
        """``GET path`` on a fresh connection (so any replica); a failure is counted."""
        client = HttpClient(HOST, port, TOKEN, timeout_s=5.0)
        try:
            status, _, body = client.request("GET", path, retries=0)
        except ConnectionError:
            status, body = 0, b""
        finally:
            client.close()
        if status != 200:
            self.failed_scrapes += 1
        return status, body

    def sample_age(self) -> None:
        """One replica's confirmed age, from its ``/health`` on a fresh connection (cheap:
        a scrape of ``/metrics`` merges every process's files, ~10 ms of a core)."""
        status, body = self._get(self.settings.predict.port, "/health")
        if status != 200:
            return
        age = json.loads(body).get("rows_confirmed_age_s")
        if age is not None:
            self.ages.append(float(age))

    def scrape(self, keep_age: bool = False) -> set[str] | None:
        """One ``/metrics`` of the node (its metrics port): note its figures, return the
        predictors it shows."""
        status, body = self._get(self.settings.metrics.port, "/metrics")
        if status != 200:
            return None
        found = _METRIC.findall(body.decode())
        if not found:
            return None
        counters: dict[str, dict[str, int]] = {}
        for metric, name, source, value in found:  # every predictor's figures (one view)
            if metric == "rml_prediction_rows_total":
                counters.setdefault(name, {})[source] = int(float(value))
            elif keep_age and value != "+Inf":
                self.ages.append(float(value))
        for name, by_source in counters.items():
            last, rows = self._last.setdefault(name, {}), self.rows.setdefault(name, {})
            for source, value in by_source.items():
                if source in last:  # counters never fall (the node's view sums restarts)
                    rows[source] = rows.get(source, 0) + value - min(value, last[source])
                last[source] = value
        return set(counters)

    def scrape_all(self) -> None:
        """Scrape until every replica has answered (the counters' bounds), within 5 s."""
        seen: set[str] = set()
        deadline = time.monotonic() + 5.0
        while len(seen) < self.settings.predict.replicas and time.monotonic() < deadline:
            seen |= self.scrape(keep_age=False) or set()

    def _sample(self, stop: threading.Event) -> None:
        while not stop.wait(0.1):
            self.sample_age()

    def _ingest(self, stop: threading.Event) -> None:
        ingest = self.settings.ingest
        client = HttpClient(ingest.host, ingest.port, ingest.tokens[0], timeout_s=5.0)
        try:
            while True:
                now = self._clock[0] + int((time.monotonic() - self._clock[1]) * 1000)
                batch = [{"sensor_id": "predict-bench", "location_id": loc,
                          "reading_id": f"predict-bench-{self.sent + i}", "timestamp": now,
                          "animals_lower": 5 + (self.sent + i) % 7,
                          "animals_upper": 15 + (self.sent + i) % 7, "percent_zebras": 0.5}
                         for i, loc in enumerate(LOCATIONS)]
                self.sent += len(batch)
                try:
                    status, answer = client.post("/readings", {"readings": batch}, retries=1)
                except ConnectionError:
                    status = 0
                if status == 200:
                    self.accepted += int(answer["accepted"])
                else:
                    self.failed_batches += 1
                if stop.wait(1.0):
                    return
        finally:
            client.close()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.scrape_all()
        stop = threading.Event()
        threads = [threading.Thread(target=self._sample, args=(stop,), daemon=True),
                   threading.Thread(target=self._ingest, args=(stop,), daemon=True)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            for thread in threads:
                thread.join(10.0)
            time.sleep(1.1)  # predictors add their counts to the metrics once a second
            self.scrape_all()

    def report(self) -> list[str]:
        lines = [f"project freshness over its runs: {len(self.ages)} /health samples "
                 f"({self.failed_scrapes} failed); {self.sent} readings sent in batches of "
                 f"{len(LOCATIONS)} once a second, {self.accepted} accepted"
                 + (f", {self.failed_batches} batches failed" if self.failed_batches else "")]
        if self.ages:
            ages = sorted(self.ages)
            p50, p99 = (ages[min(len(ages) - 1, int(q * len(ages)))] for q in (0.5, 0.99))
            lines.append(f"  rows confirmed age: p50 {p50 * 1e3:,.0f} ms, p99 {p99 * 1e3:,.0f} "
                         f"ms, max {ages[-1] * 1e3:,.0f} ms (answers read the store past "
                         f"{self.settings.predict.row_freshness_s:g} s)")
        memory = sum(r.get("memory", 0) for r in self.rows.values())
        store = sum(r.get("store", 0) for r in self.rows.values())
        share = f"{memory / (memory + store):.1%}" if memory + store else "-"
        per = ", ".join(f"{n} {r.get('memory', 0):,}/{r.get('store', 0):,}"
                        for n, r in sorted(self.rows.items()))
        lines.append(f"  location_id rows from memory: {share} ({memory:,} from memory, "
                     f"{store:,} from the store; memory/store by predictor: {per or '-'})")
        return lines


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} us"


@dataclass
class Figures:
    """One server's runs: 1 connection (p50, p99, rate) and 8 connections (rate, p99)."""

    one: list[WrkResult]
    eight: list[WrkResult]

    def medians(self) -> tuple[float, float, float, float, float]:
        med = statistics.median
        return (med(r.p50_s for r in self.one), med(r.p99_s for r in self.one),
                med(r.rate for r in self.one), med(r.rate for r in self.eight),
                med(r.p99_s for r in self.eight))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="decision_tree",
                        choices=[ModelType.DECISION_TREE.value, ModelType.RANDOM_FOREST.value,
                                 ModelType.GRADIENT_BOOSTING.value])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run (whole s)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="s of 8-connection load on each server before the rounds")
    parser.add_argument("--train-timeout", type=float, default=300.0)
    parser.add_argument("--hours", type=int, default=None,
                        help="of simulated data to learn from (default 48; 120 for "
                             "gradient_boosting, whose 48-hour model the gate rejects)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (its logs) and print where it is")
    parser.add_argument("--body", choices=["location", "features", "both"], default="both",
                        help="the request bodies measured")
    parser.add_argument("--floor-loop", choices=["asyncio", "uvloop"], default="asyncio",
                        help="the floor's event loop: asyncio's own (the floor as defined, "
                             "the default), or uvloop's (as the project's edges)")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed (apt-get install -y wrk): cannot run this bench")
        return 2
    version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    model_type = ModelType(args.model_type)
    hours = args.hours or (120 if model_type is ModelType.GRADIENT_BOOSTING else 48)
    trees = dict(HYPERPARAMETERS[model_type]).get("n_estimators")
    hyper = ", ".join(f"{n}={s.default}" for n, s in HYPERPARAMETERS[model_type].items())
    print(f"{model_type.value} ({hyper}: the job's defaults"
          + (f", {trees.default} trees" if trees else "") + f"); {hours} h of simulated data; "
          f"{version.strip()}")
    kinds = list(BODIES) if args.body == "both" else [args.body]
    bad = False
    with bench_daemon(_LEARNING_TOML.format(model_type=model_type.value),
                      prefix="rml-bench-predict-", tokens=(TOKEN,), keep=args.keep,
                      keep_note="data and logs in", warn_leftovers=True) as (settings, config):
        began, end_ms = time.monotonic(), last_midnight_ms()
        first = seed_champion(settings, args.train_timeout, hours, end_ms)
        print(f"daemon: {settings.predict.replicas} predict replicas on port "
              f"{settings.predict.port}; champion {first['model_version']} answers "
              f"({time.monotonic() - began:.1f} s after the first reading)")
        bodies = {"location": {loc: {"location_id": loc} for loc in LOCATIONS}}
        if "features" in kinds:
            bodies["features"], skipped = feature_bodies(settings)
            if skipped:
                print(f"features bodies: locations {skipped} skipped (no row, or a value "
                      "that is null, NaN or infinite: the codec takes none)")
            if not bodies["features"]:
                print("no location has a features body: only location_id is measured")
                kinds.remove("features")
        floor_port = free_ports(1)[0]
        with running_floor(config, floor_port, TOKEN, loop_name=args.floor_loop) as ready:
            print(ready)
            servers = {"project": settings.predict.port, "floor": floor_port}
            got = {(name, kind): answers(port, bodies[kind])
                   for name, port in servers.items() for kind in ["location", *kinds]}
            differences = compare(got["project", "location"], got["floor", "location"])
            if differences:
                print("WARNING: the project and the floor answer differently:")
                for line in differences:
                    print(f"  {line}")
            else:
                print("same answers for locations 1..10 (probabilities within 1e-9)")
            if "features" in kinds:
                differences = [f"{name} {line}" for name in servers for line in compare(
                    got[name, "features"], got[name, "location"])]
                if differences:
                    print("WARNING: features bodies answered unlike location_id:")
                    for line in differences:
                        print(f"  {line}")
                else:
                    print(f"same answers for features bodies as for location_id on both "
                          f"servers (locations {', '.join(map(str, bodies['features']))})")
            scripts = {}
            for kind in kinds:
                scripts[kind] = Path(config).parent / f"predict-{kind}.lua"
                scripts[kind].write_text(lua_script(TOKEN, bodies[kind]))
            for port in servers.values():
                for kind in kinds:
                    if args.warmup > 0:
                        run_wrk(scripts[kind], port, 8, 2, args.warmup)
            figures = {(kind, name): Figures([], []) for kind in kinds for name in servers}
            watch = Watch(settings, end_ms)
            for r in range(args.rounds):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for kind in kinds:
                    for name in order:
                        with watch.active() if name == "project" else contextlib.nullcontext():
                            one = run_wrk(scripts[kind], servers[name], 1, 1, args.seconds)
                            before = rescheduling_interrupts()
                            eight = run_wrk(scripts[kind], servers[name], 8, 2, args.seconds)
                            after = rescheduling_interrupts()
                        figures[kind, name].one.append(one)
                        figures[kind, name].eight.append(eight)
                        problems = "; ".join(p for p in (one.errors, eight.errors) if p)
                        bad = bad or bool(problems)
                        wakeups = ("" if before is None or after is None or not eight.rate else
                                   f", {(after - before) / (eight.rate * args.seconds) * 1000:.0f}"
                                   " cross-CPU wakeups/1000 req")
                        print(f"round {r + 1} {kind:<8} {name:<8} 1 conn: p50 {_us(one.p50_s)}"
                              f", p99 {_us(one.p99_s)}, {one.rate:,.0f} req/s | 8 conns: "
                              f"{eight.rate:,.0f} req/s, p99 {_us(eight.p99_s)}{wakeups}"
                              + (f"  ERRORS: {problems}" if problems else ""), flush=True)
    medians = {key: f.medians() for key, f in figures.items()}
    for kind in kinds:
        print()
        print(f"medians over {args.rounds} rounds of {args.seconds:g} s ({model_type.value}), "
              f"body {BODIES[kind]}:")
        print(f"{'':<9}{'1 conn p50':>12}{'1 conn p99':>12}{'1 conn req/s':>14}"
              f"{'8 conns req/s':>15}{'8 conns p99':>13}")
        for name in servers:
            p50, p99_1, rate_1, rate_8, p99_8 = medians[kind, name]
            print(f"{name:<9}{_us(p50):>12}{_us(p99_1):>12}{rate_1:>14,.0f}{rate_8:>15,.0f}"
                  f"{_us(p99_8):>13}")
        project, floor = medians[kind, "project"], medians[kind, "floor"]
        p50_ratio, rate_ratio, p99_ratio = (project[0] / floor[0], project[3] / floor[3],
                                            project[4] / floor[4])
        print(f"project / floor: p50 (1 conn) {p50_ratio:.2f}x {_mark(p50_ratio <= 1.1)}, "
              f"req/s (8 conns) {rate_ratio:.2f}x {_mark(rate_ratio >= 0.85)}, "
              f"p99 (8 conns) {p99_ratio:.2f}x {_mark(p99_ratio <= 1.5)}")
    print()
    print(GOALS)
    if len(kinds) == 2:
        feat, loc = ({n: medians[k, n] for n in servers} for k in ("features", "location"))
        line = ", ".join(f"{n} p50 (1 conn) {feat[n][0] / loc[n][0]:.2f}x, req/s (8 conns) "
                         f"{feat[n][3] / loc[n][3]:.2f}x" for n in servers)
        print(f"features / location_id: {line} (goal: the project's at 1.0x)")
    for line in watch.report():
        print(line)
    return 1 if bad else 0


def rescheduling_interrupts() -> int | None:
    """The machine's rescheduling interrupts so far (``RES`` in ``/proc/interrupts``, all
    CPUs): one is sent when a task is woken on another CPU. None where there is no such
    line. At 8 connections a server and wrk's threads wake each other for every request;
    the rounds in which they came to share CPUs (few of these) are the fast ones."""
    try:
        with open("/proc/interrupts") as lines:
            for line in lines:
                name, _, rest = line.strip().partition(":")
                if name == "RES":
                    return sum(int(field) for field in rest.split() if field.isdigit())
    except OSError:
        return None
    return None


def _mark(met: bool) -> str:
    return "(met)" if met else "(missed)"


if __name__ == "__main__":
    sys.exit(main())
