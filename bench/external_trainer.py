"""What fitting through the external trainer costs beside fitting in the learner.

Starts ``learning.training.trainer_service`` as its own process on loopback, then fits the same
training rows (random, the shape of a real training set: 9 features, NaN in some windows)
both ways, per model type. The external figure includes the msgpack request, the HTTP hop,
the skops dump in the trainer and the allow-list load and checks in the learner.

    .venv/bin/python bench/external_trainer.py [--rows 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from config.job import JobConfiguration, ModelType
from learning.training.external import ExternalTrainer, encode_job
from learning.training.pipeline import fit_locally

TOKEN = "bench-trainer-token"
REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    X = rng.normal(size=(args.rows, 9))
    X[rng.random(X.shape) < 0.02] = np.nan
    y = np.nan_to_num(X[:, 0]) + rng.normal(size=args.rows) > 0
    names = tuple(f"f{i}" for i in range(9))

    process = subprocess.Popen([sys.executable, "-m", "learning.training.trainer_service",
                                "--port", "0", "--token", TOKEN], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        found = re.search(r":(\d+)$", process.stdout.readline().strip())
        assert found, "the trainer did not start"
        trainer = ExternalTrainer(f"http://127.0.0.1:{found.group(1)}", TOKEN, 110.0)
        print(f"{args.rows} rows x 9 features; request body "
              f"{len(encode_job(JobConfiguration(), names, X, y)) / 1e6:.1f} MB; "
              f"median of {args.repeat}")
        print(f"{'model':<22} {'local fit':>10} {'external':>10} {'overhead':>10}")
        for model_type in ModelType:
            job = JobConfiguration(model_type)
            local, external = [], []
            for _ in range(args.repeat):
                began = time.perf_counter()
                fit_locally(X, y, names, job)
                local.append(time.perf_counter() - began)
                began = time.perf_counter()
                trainer(X, y, names, job)
                external.append(time.perf_counter() - began)
            a, b = statistics.median(local), statistics.median(external)
            print(f"{model_type.value:<22} {a:>9.3f}s {b:>9.3f}s {b - a:>9.3f}s")
    finally:
        process.terminate()
        process.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
