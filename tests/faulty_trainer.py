"""Deliberately bad external trainers: the real service
(``learning.training.trainer_service``) with its fit step replaced, run as a process of its
own like the real one::

    python -m tests.faulty_trainer --mode slow --sleep-s 30 --port P --token T

Modes: ``slow`` sleeps past any deadline, then trains properly; ``error`` fails the fit (the
service answers 500); ``garbage`` answers bytes that are no skops artifact; ``disallowed``
answers a real skops pipeline holding a ``FunctionTransformer`` (a type that can carry any
function, outside the allow-list); ``real`` trains properly. Hostile artifacts (each also a
function here, for ``tests/test_artifacts.py``): ``pipeline_schema`` a zip whose schema names
only ``Pipeline`` (skops itself raises ``TypeError`` on it), ``bomb`` a real pipeline plus a
member declaring 600 MiB, ``empty_zip`` a zip with no member, ``bad_classes`` a real pipeline
whose ``classes_`` is a 2-D array (checking it raises ``ValueError``). With ``--mode-file PATH``
instead of ``--mode``, each job reads its mode from that file, so a test can change the
behaviour behind one URL without another process taking the port meanwhile.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import struct
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import skops.io as sio
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

from learning.training.external import TrainingJob
from learning.training.trainer_service import add_arguments, run, train_artifact

MODES = ("real", "slow", "error", "garbage", "disallowed", "pipeline_schema", "bomb",
         "empty_zip", "bad_classes")
#: What the ``bomb`` artifact's extra member declares it unpacks to.
BOMB_DECLARED_BYTES = 600 * 1024 * 1024


def _error(job: TrainingJob) -> bytes:
    raise RuntimeError("this trainer fails on purpose")


def _garbage(job: TrainingJob) -> bytes:
    return b"PK\x03\x04 certainly not a skops archive"


def _disallowed(job: TrainingJob) -> bytes:
    pipeline = Pipeline([("log", FunctionTransformer(np.log1p)),
                         ("model", DecisionTreeClassifier(max_depth=2))])
    pipeline.fit(np.nan_to_num(np.abs(job.X)), job.y)
    return sio.dumps(pipeline)


def pipeline_schema_artifact() -> bytes:
    """A zip whose ``schema.json`` names only allowed types but is no skops schema."""
    return _zip({"schema.json": json.dumps({"__class__": "Pipeline",
                                            "__module__": "sklearn.pipeline"})})


def empty_zip_artifact() -> bytes:
    """A well-formed zip with no member at all."""
    return _zip({})


def bomb_artifact(declared: int = BOMB_DECLARED_BYTES) -> bytes:
    """A real, loadable pipeline with one more member whose headers declare ``declared``
    bytes (a zip bomb as the reader sees it before unpacking anything)."""
    archive = bytearray(_zip({"bomb.bin": b"\0" * 1024}, base=sio.dumps(_dummy())))
    with zipfile.ZipFile(io.BytesIO(bytes(archive))) as opened:
        local = opened.getinfo("bomb.bin").header_offset
    struct.pack_into("<I", archive, local + 22, declared)  # the local header's size field
    for found in re.finditer(rb"PK\x01\x02", bytes(archive)):  # central directory entries
        start = found.start()
        (name_length,) = struct.unpack_from("<H", archive, start + 28)
        if archive[start + 46:start + 46 + name_length] == b"bomb.bin":
            struct.pack_into("<I", archive, start + 24, declared)
    return bytes(archive)


def bad_classes_artifact() -> bytes:
    """A real pipeline of allowed types whose classifier's ``classes_`` is a 2-D array."""
    pipeline = _dummy()
    pipeline.steps[-1][1].classes_ = np.array([[False, True], [True, False]])
    return bytes(sio.dumps(pipeline))


def _dummy() -> Pipeline:
    X = np.zeros((4, 3))
    return Pipeline([("model", DummyClassifier())]).fit(X, np.array([False, True] * 2))


def _zip(members: dict[str, str | bytes], base: bytes = b"") -> bytes:
    buffer = io.BytesIO(base)
    with zipfile.ZipFile(buffer, "a" if base else "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


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
             "disallowed": _disallowed,
             "pipeline_schema": lambda job: pipeline_schema_artifact(),
             "bomb": lambda job: bomb_artifact(), "empty_zip": lambda job: empty_zip_artifact(),
             "bad_classes": lambda job: bad_classes_artifact()}

    def produce(job: TrainingJob) -> bytes:
        mode = args.mode or args.mode_file.read_text(encoding="utf-8").strip()
        return modes[mode](job)

    return run(args, produce)


if __name__ == "__main__":
    sys.exit(main())
