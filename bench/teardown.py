"""Why predictors never import scikit-learn: the kernel's teardown of a killed process, measured.

After a SIGKILL the kernel unmaps the whole process before anyone hears of its death
(its parent's SIGCHLD, a pidfd): the more it maps, the longer, and under CPU load the
dying process gets only its share of a core to do it. A killed predictor's replacement
cannot be promoted before that.

Forks children as Thespian forks actors, from a parent that has imported what the child
runs: ``actors.predictor`` (numpy only, serving compiled forms) in one parent, and the same
plus scikit-learn (what every actor mapped before) in another. Each child is SIGKILLed and
the time until its pidfd reports the exit is taken, idle and with ``--busy`` processes
spinning on the two cores. Prints medians and the ratio, in one run.

    .venv/bin/python bench/teardown.py [--kills 30] [--busy 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import select
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_FORK = multiprocessing.get_context("fork")


def _spin() -> None:
    while True:
        pass


def _rss_mb() -> int:
    with open("/proc/self/status") as status:
        line = next(li for li in status if li.startswith("VmRSS"))
    return int(line.split()[1]) // 1024


def _kill_times(kills: int) -> list[float]:
    """Fork a child (idle, as a predictor between requests), SIGKILL it, time its exit."""
    times = []
    for _ in range(kills):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(ready_w, b"x")
            time.sleep(60)
            os._exit(0)
        os.read(ready_r, 1)
        time.sleep(0.02)
        pidfd = os.pidfd_open(pid)
        began = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        select.select([pidfd], [], [], 10.0)
        times.append(time.perf_counter() - began)
        os.waitpid(pid, 0)
        for fd in (pidfd, ready_r, ready_w):
            os.close(fd)
    return times


def _parent(heavy: bool, kills: int, out: Any) -> None:
    import actors.predictor  # noqa: F401

    if heavy:
        import learning.serving.inference  # noqa: F401  (scikit-learn, SciPy)
    out.put((_rss_mb(), _kill_times(kills)))


def _measure(heavy: bool, kills: int) -> tuple[int, list[float]]:
    out = _FORK.Queue()
    parent = _FORK.Process(target=_parent, args=(heavy, kills, out))
    parent.start()
    rss, times = out.get(timeout=300)
    parent.join()
    return int(rss), list(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--busy", type=int, default=4, help="spinning processes under load")
    args = parser.parse_args()
    print(f"SIGKILL -> exit reported (pidfd), median of {args.kills} kills each")
    results = {}
    for load in ("idle", "loaded"):
        spinners = []
        if load == "loaded":
            spinners = [_FORK.Process(target=_spin, daemon=True) for _ in range(args.busy)]
            for spinner in spinners:
                spinner.start()
        try:
            for heavy in (False, True):
                rss, times = _measure(heavy, args.kills)
                median = statistics.median(times) * 1000
                results[(load, heavy)] = median
                what = "with scikit-learn" if heavy else "predictor (numpy)"
                print(f"  {load:<6} {what:<18} maps {rss:4} MB: median {median:6.2f} ms, "
                      f"max {max(times) * 1000:6.2f} ms")
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.join()
    for load in ("idle", "loaded"):
        ratio = results[(load, True)] / results[(load, False)]
        print(f"  {load}: scikit-learn's process takes {ratio:.1f}x as long to die")
    return 0


if __name__ == "__main__":
    sys.exit(main())
