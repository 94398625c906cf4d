"""Learning bench: training time per model type on the demo data, and a regime change on a
real daemon (AUCs before and after, time from drift to a new champion).

    .venv/bin/python bench/learn.py [--repeats 3] [--model-type random_forest]
                                    [--skip-daemon]

Part 1 fits each model type on the demo's savanna (seed 7, 40 locations, 120 hours), in
this process, and prints the fit time (median of the repeats) beside the holdout ROC AUC
and the best achievable AUC on the same holdout.
Part 2 starts a daemon (temporary directory, free ports, always stopped), feeds 72 hours
of regime A, then 72 hours of regime B (``players.regime.MIGRATION``): readings first,
then, once drift is detected, B's outcomes; it prints when drift was detected, when the
drift retrain started and when its model became champion, and each champion's AUC on
each regime's holdout beside the best achievable.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _daemon import bench_daemon  # noqa: E402

from config.job import JobConfiguration, ModelType  # noqa: E402
from config.settings import Settings  # noqa: E402
from learning.features.compute import default_collections  # noqa: E402
from learning.training.pipeline import split_by_location, train  # noqa: E402
from learning.training.sets import build_training_set  # noqa: E402
from learning.training.triggers import DriftCheck  # noqa: E402
from players.demo import last_midnight_ms  # noqa: E402
from players.regime_change import RegimeChange, holdout_auc  # noqa: E402
from players.simulator import Savanna, outcome_item, reading_item  # noqa: E402
from rml_client import GatewayClient  # noqa: E402
from storage.backend import StoreBackend  # noqa: E402
from storage.errors import StoreError  # noqa: E402
from storage.registry import ModelRecord  # noqa: E402

_TOKEN = "bench-learning-token"
T = TypeVar("T")


def training_times(repeats: int) -> None:
    """Part 1: fit time and holdout AUC per model type on the demo data."""
    savanna = Savanna(seed=7)
    _, collection = default_collections(0)
    started = time.perf_counter()
    training_set = build_training_set(savanna.readings(), savanna.outcomes(), collection,
                                      JobConfiguration().window_ms)
    built = time.perf_counter() - started
    print(f"demo data: {len(savanna.readings())} readings, {len(training_set)} outcomes, "
          f"{len(collection.features)} features; training set built in {built:.2f} s")
    ordered = sorted(savanna.outcomes(), key=lambda o: (o.timestamp, o.location_id,
                                                        o.outcome_id))
    print(f"{'model type':<22}{'fit s (median)':>15}{'holdout AUC':>13}{'best AUC':>10}")
    for model_type in ModelType:
        job = JobConfiguration(model_type=model_type)
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            model = train(training_set, job)
            seconds.append(time.perf_counter() - started)
        _, test = split_by_location(training_set.location_ids, job.seed, job.test_fraction,
                                    training_set.y)
        best = savanna.best_auc([o for o, keep in zip(ordered, test, strict=True) if keep])
        print(f"{model_type.value:<22}{statistics.median(seconds):>15.3f}"
              f"{model.metric('roc_auc'):>13.3f}{best:>10.3f}")
    print("(fit s: fitting the pipeline and scoring the holdout; one process, one core)")


def _wait(what: str, predicate: Callable[[], T | None], timeout_s: float = 120.0) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"gave up waiting for {what}")


def regime_change(model_type: str) -> None:
    """Part 2: a regime change on a real daemon."""
    scenario = RegimeChange.build(end_ms=last_midnight_ms())
    learning = ('[learning]\nmin_outcomes = 500\nretrain_every_outcomes = 1000000\n'
                'check_interval_s = 0.5\ndrift_check_interval_s = 0.5\n'
                f'drift_threshold = 0.25\nmodel_type = "{model_type}"\n')
    with bench_daemon(learning, prefix="rml-learning-", tokens=(_TOKEN,),
                      warn_leftovers=True) as (settings, _):
        _play(settings, scenario)


def _play(settings: Settings, scenario: RegimeChange) -> None:
    client = GatewayClient(port=settings.ingest.port, token=_TOKEN, batch_size=5000)

    def champion() -> ModelRecord | None:
        backend = StoreBackend(settings, read_only=True)
        try:
            return backend.registry().champion()
        finally:
            backend.close()

    client.send([reading_item(r) for r in scenario.readings(False)])
    client.send_outcomes([outcome_item(o) for o in scenario.outcomes(False)])
    first = _wait("a champion on regime A", champion)
    print(f"regime A: champion version {first.version} ({first.metrics_map['roc_auc']:.3f} "
          "holdout AUC)")
    sent_at = time.time()
    client.send([reading_item(r) for r in scenario.readings(True)])

    def drifting() -> DriftCheck | None:
        backend = StoreBackend(settings, read_only=True)
        try:
            check = backend.drift_log().latest_check()
        except StoreError:  # before the learner's first drift check there is no drift log
            return None
        finally:
            backend.close()
        return check if check is not None and check.above else None

    detected = _wait("drift", drifting)
    client.send_outcomes([outcome_item(o) for o in scenario.outcomes(True)])  # one batch
    stored_at = time.time()
    client.close()
    def replaced() -> ModelRecord | None:
        now = champion()
        return now if now is not None and now.version != first.version else None

    second = _wait("a new champion", replaced)
    backend = StoreBackend(settings, read_only=True)
    try:
        registry = backend.registry()
        promoted = registry.champion_history()[-1].at_ms
        a_before = holdout_auc(first, registry.artifact(first.version), scenario, False)
        b_before = holdout_auc(first, registry.artifact(first.version), scenario, True)
        b_after = holdout_auc(second, registry.artifact(second.version), scenario, True)
        a_after = holdout_auc(second, registry.artifact(second.version), scenario, False)
        run = next(r for r in backend.training_runs().runs() if r.trigger.kind == "drift")
    finally:
        backend.close()
    drifting_features = ", ".join(f"{k} {v:.2f}"
                                  for k, v in sorted(detected.drifting().items()))
    print(f"regime B readings sent at t=0; drift detected at "
          f"{detected.at_ms / 1000 - sent_at:.1f} s (max PSI {detected.max_psi:.2f}: "
          f"{drifting_features})")
    print(f"regime B outcomes stored {stored_at - detected.at_ms / 1000:.1f} s after detection; "
          f"drift retrain started {run.started_at_ms / 1000 - stored_at:.2f} s later; "
          f"version {second.version} champion {(promoted - run.started_at_ms) / 1000:.2f} s "
          "after that")
    print(f"time from drift detected to the new champion: {(promoted - detected.at_ms) / 1000:.1f}"
          " s (waiting for the regime's outcomes included)")
    print(f"{'holdout AUC (model / best)':<30}{'regime A':>18}{'regime B':>18}")
    for name, a, b in ((f"version {first.version} (before)", a_before, b_before),
                       (f"version {second.version} (after drift)", a_after, b_after)):
        print(f"{name:<30}{a[0]:>10.3f} / {a[1]:.3f}{b[0]:>10.3f} / {b[1]:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-type", default="random_forest",
                        choices=[m.value for m in ModelType])
    parser.add_argument("--skip-daemon", action="store_true")
    args = parser.parse_args()
    training_times(args.repeats)
    if not args.skip_daemon:
        print()
        regime_change(args.model_type)
    return 0


if __name__ == "__main__":
    sys.exit(main())
