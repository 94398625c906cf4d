"""Chaos bench: ingest and predictions on a real daemon while its actors are killed.

    .venv/bin/python bench/chaos.py [--seconds 60] [--kill-every 1.0]

Prints readings acknowledged, lost (must be 0), stored twice (must be 0),
predictions answered and the share answered by a fallback, restarts, and three views
of the time from a kill to the replacement: until the root's status shows it running
(polled by the killer, in a process of its own; for a predictor, from when it answers
HTTP, so that the polls do not take the GIL from the probe); for a predictor, until its
replacement answers HTTP on the predict port (the goal's measure); and from the
supervisors' own log, exit to running, by how (a warm standby promoted, or a new actor
started).
Traffic goes to 127.0.0.1 only; the daemon runs in a temporary directory on
free ports and is always stopped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _daemon import bench_daemon  # noqa: E402

from daemon.chaos import run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--kill-every", type=float, default=1.0)
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (its logs) and print where it is")
    args = parser.parse_args()
    # run_chaos starts and stops the daemon itself: only the directory, ports and config here.
    with bench_daemon("[learning]\nmin_outcomes = 100\nretrain_every_outcomes = 100000\n",
                      prefix="rml-chaos-", keep=args.keep, keep_note="data and logs in",
                      start_daemon=False) as (settings, config):
        report = run_chaos(settings, str(config), duration_s=args.seconds,
                           kill_every_s=args.kill_every, gateways=args.gateways)
    print()
    for line in report.lines():
        print(line)
    predictor = report.kill_to_http_s
    median_ms = statistics.median(predictor) * 1000 if predictor else float("nan")
    print()
    print("goals: lost 0, stored twice 0, >= 99.9% of predictions answered, "
          "median predictor kill-to-answer < 50 ms")
    print(f"  lost {report.lost} | stored twice {report.stored_twice} | answered "
          f"{report.answered_share:.4%} ({report.answered_share / 0.999:.4f}x the goal) | "
          f"predictor kill-to-answer median {median_ms:.0f} ms ({median_ms / 50:.2f}x the goal)")
    return 0 if report.lost == 0 and report.stored_twice == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
