"""Start time and memory: ``rml start`` to ready, and the idle daemon's summed PSS.

    .venv/bin/python bench/startup_memory.py [--rounds 3] [--idle-s 3]

Each round starts a daemon on the embedded defaults (a temporary data directory, free
ports on 127.0.0.1), times ``start`` until every actor answers, lets it idle for
``--idle-s``, sums the proportional set size (``Pss`` of ``/proc/<pid>/smaps_rollup``: shared
pages split between the processes sharing them) of every process of its process group,
lists the largest, and stops it. Printed: medians, and each as a ratio to the goals
(start to ready <= 1.5 s, summed PSS <= 250 MB).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _daemon import bench_daemon  # noqa: E402

from daemon.process import read_record, start  # noqa: E402
from runtime.group import group_members, process_name  # noqa: E402

GOAL_START_S = 1.5
GOAL_PSS_MB = 250.0


def pss_kb(pid: int) -> int:
    """``pid``'s proportional set size in kB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def one_round(idle_s: float) -> tuple[float, float, list[tuple[str, float]]]:
    with bench_daemon(start_daemon=False) as (settings, config):
        began = time.monotonic()
        start(settings, str(config))
        took = time.monotonic() - began
        try:
            time.sleep(idle_s)
            record = read_record(settings)
            assert record is not None
            sizes = [(f"{process_name(pid) or '?'} ({pid})", pss_kb(pid) / 1024)
                     for pid in group_members(record.pgid)]
        finally:
            from daemon.process import stop

            stop(settings)
    return took, sum(mb for _, mb in sizes), sorted(sizes, key=lambda s: -s[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=3.0)
    args = parser.parse_args()
    starts, totals = [], []
    largest: list[tuple[str, float]] = []
    for _ in range(args.rounds):
        took, total, sizes = one_round(args.idle_s)
        starts.append(took)
        totals.append(total)
        largest = sizes
        print(f"  start to ready {took:.2f} s, summed PSS {total:.0f} MB "
              f"over {len(sizes)} processes")
    start_s, pss_mb = statistics.median(starts), statistics.median(totals)
    print("largest processes (last round): "
          + ", ".join(f"{name} {mb:.0f} MB" for name, mb in largest[:6]))
    print(f"median of {args.rounds}: start to ready {start_s:.2f} s "
          f"({start_s / GOAL_START_S:.2f}x the {GOAL_START_S} s goal), summed PSS "
          f"{pss_mb:.0f} MB ({pss_mb / GOAL_PSS_MB:.2f}x the {GOAL_PSS_MB:.0f} MB goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
