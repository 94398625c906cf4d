"""Why collectors flow-control their hints: Thespian's shared transmit window, measured.

A Thespian process has at most 20 transmits in flight (``THESPIAN_MAX_PENDING_TRANSMITS``)
to all receivers together, and a transmit stays in flight until its receiver's process
reads it, between two of its handlers. A hinter sends a hint every 0.25 s to a busy actor
(one handler of ``--busy`` seconds, like the learner training); meanwhile we ask the
hinter for a pong every 0.2 s, as a supervisor's heartbeat does. Run twice in one go,
with Thespian's default window: hints sent every tick, then hints sent only once the
last one was noted (``actors.hints.HintWindow``, what collectors do). Prints the worst
pong latency of each and their ratio.

    .venv/bin/python bench/transmit_window.py [--busy 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.pop("THESPIAN_MAX_PENDING_TRANSMITS", None)  # Thespian's default: 20

from thespian.actors import ActorSystem  # noqa: E402

import runtime.loopback  # noqa: E402,F401  (Thespian on loopback only)
from runtime.group import free_ports  # noqa: E402


def run(windowed: bool, busy_s: float) -> tuple[float, int]:
    """Worst pong latency (s) and hints sent while the receiver was busy."""
    port = free_ports(1)[0]
    system = ActorSystem("multiprocTCPBase", {"Admin Port": port}, logDefs=None)
    try:
        busy = system.createActor("_window_actors.Busy")
        hinter = system.createActor("_window_actors.Hinter")
        system.tell(hinter, ("target", busy, windowed))
        system.tell(busy, ("work", busy_s))
        began, worst, sent = time.monotonic(), 0.0, 0
        while time.monotonic() - began < busy_s + 2.0:
            asked = time.monotonic()
            answer = system.ask(hinter, "ping", busy_s + 10)
            worst = max(worst, time.monotonic() - asked)
            sent = answer[1] if isinstance(answer, tuple) else sent
            time.sleep(0.2)
        return worst, sent
    finally:
        system.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=float, default=8.0, help="the busy handler's seconds")
    args = parser.parse_args()
    every, every_sent = run(False, args.busy)
    windowed, windowed_sent = run(True, args.busy)
    print(f"receiver busy for {args.busy:.0f} s in one handler; Thespian's default window (20)")
    print(f"  a hint every 0.25 s:        worst pong {every * 1000:8.1f} ms "
          f"({every_sent} hints sent)")
    print(f"  one unacknowledged hint:    worst pong {windowed * 1000:8.1f} ms "
          f"({windowed_sent} hints sent)")
    print(f"  ratio (every / windowed):   {every / max(windowed, 1e-6):.0f}x")


if __name__ == "__main__":
    main()
