"""Predictions: the project's ``POST /model`` against the floor, in one run, with wrk.

    .venv/bin/python bench/predict.py [--model-type decision_tree] [--rounds 3] [--seconds 5]

A real daemon (temporary directory, free ports on 127.0.0.1, 2 predict replicas, tokens
set, always stopped) learns a champion of ``--model-type`` (``decision_tree``,
``random_forest`` or ``gradient_boosting``, at the job's default hyperparameters: a forest
or boosting has 100 trees) from the simulator's data (``Savanna(seed=3, n_locations=10,
hours=48)``, as the chaos bench seeds it; 120 hours for boosting, whose 48-hour model the
publish gate rejects: ``--hours``). Once ``POST /model {"location_id": 7}`` answers
200, the floor (``bench/_floor.py``: asyncio + httptools in 2 processes on one port with
SO_REUSEPORT, the same champion and rows in memory) starts on another free port; both
must give the same answers for locations 1..10 (a warning is printed if not).

Then ``--rounds`` rounds, the servers' order alternating from one round to the next: for
each server, wrk for ``--seconds`` with 1 connection on 1 thread (p50, p99), then with 8
connections on 2 threads (requests/s, p99); every request is a keep-alive
``POST /model`` with a bearer token, for locations 1..10 in turn. Printed: each run as it
comes, then per server the medians over rounds and the project's ratios to the floor
against the goals. wrk runs on the same 2 cores as the servers (for both alike).

Exit 2 if wrk is not installed (``apt-get install -y wrk``); 1 if a server answered
anything but 200 under load; else 0 (the goals are reported, not enforced).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _daemon import bench_daemon  # noqa: E402
from _floor import running_floor  # noqa: E402

from config.job import HYPERPARAMETERS, ModelType  # noqa: E402
from config.settings import Settings  # noqa: E402
from daemon.gateway import HttpClient  # noqa: E402
from daemon.group import free_ports  # noqa: E402

TOKEN = "predict-bench-token-0123"
HOST = "127.0.0.1"
LOCATIONS = range(1, 11)
GOALS = "goals: p50 <= 1.1x, req/s >= 0.85x, p99 <= 1.5x the floor"

# No retraining while we measure: outcomes are sent once (min 100 to train, then never again)
# and the drift check is off (it would run in the learner, on the same 2 cores).
_LEARNING_TOML = ('[learning]\nmin_outcomes = 100\nretrain_every_outcomes = 100000\n'
                  'drift_check_interval_s = 0\nmodel_type = "{model_type}"\n')

_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
local requests = {{}}
local n = 0
init = function(args)
  for i = 1, 10 do
    requests[i] = wrk.format(nil, "/model", nil, '{{"location_id":' .. i .. '}}')
  end
end
request = function()
  n = n % 10 + 1
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


def seed_champion(settings: Settings, timeout_s: float, hours: int = 48) -> dict[str, Any]:
    """Send the simulator's readings and outcomes; wait until location 7 is answered (200)."""
    from daemon.demo import last_midnight_ms
    from daemon.gateway import send_items
    from learning.simulator import Savanna, reading_item

    savanna = Savanna(seed=3, n_locations=10, hours=hours, end_ms=last_midnight_ms())
    ingest = settings.ingest
    client = HttpClient(ingest.host, ingest.port, ingest.tokens[0])
    try:
        send_items(client, "readings", [reading_item(r) for r in savanna.readings()])
        send_items(client, "outcomes", savanna.outcome_items())
    finally:
        client.close()
    predict = HttpClient(settings.predict.host, settings.predict.port, TOKEN)
    try:
        deadline = time.monotonic() + timeout_s
        last: tuple[int, Any] = (0, None)
        while time.monotonic() < deadline:
            last = predict.post("/model", {"location_id": 7}, retries=2)
            if last[0] == 200:
                return dict(last[1])
            time.sleep(0.25)
    finally:
        predict.close()
    raise RuntimeError(f"no champion answered POST /model within {timeout_s:.0f} s (last "
                       f"answer: {last[0]} {last[1]}; a model the gate rejects is never "
                       "published: try more --hours)")


def answers(port: int) -> dict[int, tuple[int, Any]]:
    """Each location's (status, answer) from the server on ``port``."""
    client = HttpClient(HOST, port, TOKEN)
    try:
        return {loc: client.post("/model", {"location_id": loc}, retries=2) for loc in LOCATIONS}
    finally:
        client.close()


def compare(project: dict[int, tuple[int, Any]], floor: dict[int, tuple[int, Any]]) -> list[str]:
    """Where the two servers' answers differ (empty: the same, probabilities within 1e-9)."""
    differences = []
    for loc in LOCATIONS:
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
    bad = False
    with bench_daemon(_LEARNING_TOML.format(model_type=model_type.value),
                      prefix="rml-bench-predict-", tokens=(TOKEN,), keep=args.keep,
                      keep_note="data and logs in", warn_leftovers=True) as (settings, config):
        began = time.monotonic()
        first = seed_champion(settings, args.train_timeout, hours)
        print(f"daemon: {settings.predict.replicas} predict replicas on port "
              f"{settings.predict.port}; champion {first['model_version']} answers "
              f"({time.monotonic() - began:.1f} s after the first reading)")
        floor_port = free_ports(1)[0]
        with running_floor(config, floor_port, TOKEN) as ready:
            print(ready)
            differences = compare(answers(settings.predict.port), answers(floor_port))
            if differences:
                print("WARNING: the project and the floor answer differently:")
                for line in differences:
                    print(f"  {line}")
            else:
                print("same answers for locations 1..10 (probabilities within 1e-9)")
            script = Path(config).parent / "predict.lua"
            script.write_text(_LUA.format(token=TOKEN))
            servers = {"project": settings.predict.port, "floor": floor_port}
            for port in servers.values():
                if args.warmup > 0:
                    run_wrk(script, port, 8, 2, args.warmup)
            figures = {name: Figures([], []) for name in servers}
            for r in range(args.rounds):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in order:
                    one = run_wrk(script, servers[name], 1, 1, args.seconds)
                    eight = run_wrk(script, servers[name], 8, 2, args.seconds)
                    figures[name].one.append(one)
                    figures[name].eight.append(eight)
                    problems = "; ".join(p for p in (one.errors, eight.errors) if p)
                    bad = bad or bool(problems)
                    print(f"round {r + 1} {name:<8} 1 conn: p50 {_us(one.p50_s)}, p99 "
                          f"{_us(one.p99_s)}, {one.rate:,.0f} req/s | 8 conns: "
                          f"{eight.rate:,.0f} req/s, p99 {_us(eight.p99_s)}"
                          + (f"  ERRORS: {problems}" if problems else ""), flush=True)
    print()
    print(f"medians over {args.rounds} rounds of {args.seconds:g} s ({model_type.value}):")
    print(f"{'':<9}{'1 conn p50':>12}{'1 conn p99':>12}{'1 conn req/s':>14}"
          f"{'8 conns req/s':>15}{'8 conns p99':>13}")
    medians = {name: f.medians() for name, f in figures.items()}
    for name, (p50, p99_1, rate_1, rate_8, p99_8) in medians.items():
        print(f"{name:<9}{_us(p50):>12}{_us(p99_1):>12}{rate_1:>14,.0f}{rate_8:>15,.0f}"
              f"{_us(p99_8):>13}")
    project, floor = medians["project"], medians["floor"]
    p50_ratio, rate_ratio, p99_ratio = (project[0] / floor[0], project[3] / floor[3],
                                        project[4] / floor[4])
    print(f"project / floor: p50 (1 conn) {p50_ratio:.2f}x {_mark(p50_ratio <= 1.1)}, "
          f"req/s (8 conns) {rate_ratio:.2f}x {_mark(rate_ratio >= 0.85)}, "
          f"p99 (8 conns) {p99_ratio:.2f}x {_mark(p99_ratio <= 1.5)}")
    print(GOALS)
    return 1 if bad else 0


def _mark(met: bool) -> str:
    return "(met)" if met else "(missed)"


if __name__ == "__main__":
    sys.exit(main())
