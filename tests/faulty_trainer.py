"""Deliberately bad external trainers: the real service (``learning.trainer_service``) with its
fit step replaced, run as a process of its own like the real one::

    python -m tests.faulty_trainer --mode slow --sleep-s 30 --port P --token T

Modes: ``slow`` sleeps past any deadline, then trains properly; ``error`` fails the fit (the
service answers 500); ``garbage`` answers bytes that are no skops artifact; ``disallowed``
answers a real skops pipeline holding a ``FunctionTransformer`` (a type that can carry any
function, outside the allow-list); ``real`` trains properly. With ``--mode-file PATH``
instead of ``--mode``, each job reads its mode from that file, so a test can change the
behaviour behind one URL without another process taking the port meanwhile.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import skops.io as sio
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

from learning.external import TrainingJob
from learning.trainer_service import add_arguments, run, train_artifact

MODES = ("real", "slow", "error", "garbage", "disallowed")


def _error(job: TrainingJob) -> bytes:
    raise RuntimeError("this trainer fails on purpose")


def _garbage(job: TrainingJob) -> bytes:
    return b"PK\x03\x04 certainly not a skops archive"


def _disallowed(job: TrainingJob) -> bytes:
    pipeline = Pipeline([("log", FunctionTransformer(np.log1p)),
                         ("model", DecisionTreeClassifier(max_depth=2))])
    pipeline.fit(np.nan_to_num(np.abs(job.X)), job.y)
    return sio.dumps(pipeline)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer service with the chosen bad behaviour."""
    parser = argparse.ArgumentParser(prog="faulty-trainer")
    add_arguments(parser)
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--mode", choices=MODES)
    how.add_argument("--mode-file", type=Path, help="a file holding the mode, read per job")
    parser.add_argument("--sleep-s", type=float, default=60.0)
    args = parser.parse_args(argv)

    def slow(job: TrainingJob) -> bytes:
        time.sleep(args.sleep_s)
        return train_artifact(job)

    modes = {"real": train_artifact, "slow": slow, "error": _error, "garbage": _garbage,
             "disallowed": _disallowed}

    def produce(job: TrainingJob) -> bytes:
        mode = args.mode or args.mode_file.read_text(encoding="utf-8").strip()
        return modes[mode](job)

    return run(args, produce)


if __name__ == "__main__":
    sys.exit(main())
