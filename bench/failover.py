"""Predictor failover on an idle daemon: a warm standby promoted vs. a cold restart.

    .venv/bin/python bench/failover.py [--kills 15]

Two real daemons in turn (temporary directories, free ports on 127.0.0.1, always
stopped), the first with ``[supervision.serving] standby = 1`` (the default), the second
with ``standby = 0``. In each, a predictor is SIGKILLed ``--kills`` times (alternating
predictor-1 and -2, each time once a standby is warm again, when there is one, and the
victim has run longer than ``backoff_reset_s``: independent failures, not a crash loop) and
the time from the kill until its replacement answers ``GET /health`` on the predict port is
taken (``players.chaos.answered_by``). Prints the median and max of each, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _daemon import bench_daemon  # noqa: E402

from daemon.process import RootClient  # noqa: E402
from messages.protocol import StatusReport, StatusRequest  # noqa: E402
from players.chaos import answered_by  # noqa: E402


def _actors(client: RootClient) -> dict[str, tuple[int, str]]:
    answer = client.ask(StatusRequest(uuid.uuid4().hex), 5.0)
    assert isinstance(answer, StatusReport), answer
    return {a.name: (a.pid, a.state) for a in answer.actors}


def _ready(client: RootClient, standby: int,
           deadline_s: float = 30.0) -> dict[str, tuple[int, str]]:
    """Every predictor running and, with standbys, the spare warm again."""
    deadline = time.monotonic() + deadline_s
    while True:
        actors = _actors(client)
        running = all(actors.get(f"predictor-{i}", (0, ""))[1] == "running" for i in (1, 2))
        warm = not standby or actors.get("predictor-standby-1", (0, ""))[1] == "standby"
        if running and warm:
            return actors
        if time.monotonic() > deadline:
            raise RuntimeError(f"daemon not ready: {actors}")
        time.sleep(0.02)


def run(standby: int, kills: int) -> list[float]:
    """Kill-to-answer times (s) on a daemon with ``standby`` warm spare predictors."""
    with bench_daemon(f"[supervision.serving]\nstandby = {standby}\n",
                      prefix="rml-failover-") as (settings, _):
        times: list[float] = []
        client = RootClient(settings)
        for n in range(kills):
            name = f"predictor-{1 + n % 2}"
            actors = _ready(client, standby)
            # Idle, and a stable run: a kill sooner than backoff_reset_s after the
            # victim's start (as its supervisor saw it alive: Pongs every heartbeat
            # interval) is a crash loop, which the supervisor backs off on purpose.
            time.sleep(settings.supervision.backoff_reset_s
                       + settings.supervision.heartbeat_interval_s + 0.2)
            killed_at = time.monotonic()
            os.kill(actors[name][0], signal.SIGKILL)
            answered = answered_by(settings, name)
            if answered is None:
                raise RuntimeError(f"{name} never answered again")
            times.append(answered - killed_at)
        return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=15)
    args = parser.parse_args()
    warm = run(1, args.kills)
    cold = run(0, args.kills)

    def line(what: str, values: list[float]) -> str:
        return (f"  {what:<24} median {statistics.median(values) * 1000:6.1f} ms, "
                f"max {max(values) * 1000:6.1f} ms over {len(values)}")

    print(f"predictor SIGKILL -> its replacement answers GET /health (idle daemon, "
          f"{args.kills} kills each)")
    print(line("warm standby promoted:", warm))
    print(line("cold restart:", cold))
    ratio = statistics.median(cold) / statistics.median(warm)
    print(f"  cold / warm (median):    {ratio:.1f}x; goal < 50 ms: "
          f"{statistics.median(warm) * 1000 / 50:.2f}x the goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
