"""The savanna simulator: deterministic, clean facts in the past, and realistic gateway traffic."""

from __future__ import annotations

import json
import math
from collections import Counter

import msgpack
import numpy as np
import pytest

from players.simulator import MALFORMED_KINDS, Savanna

END = 1_750_000_000_000


def test_same_seed_gives_the_same_savanna_and_another_seed_does_not() -> None:
    a, b = Savanna(seed=1, n_locations=5, hours=24), Savanna(seed=1, n_locations=5, hours=24)
    assert a.readings() == b.readings() and a.outcomes() == b.outcomes()
    assert Savanna(seed=2, n_locations=5, hours=24).readings() != a.readings()


def test_facts_are_clean_time_ordered_and_before_end() -> None:
    savanna = Savanna(seed=4, n_locations=10, hours=24, end_ms=END)
    readings, outcomes = savanna.readings(), savanna.outcomes()
    assert all(savanna.start_ms <= r.timestamp < END for r in readings)
    assert all(savanna.start_ms <= o.timestamp < END for o in outcomes)
    assert [r.timestamp for r in readings] == sorted(r.timestamp for r in readings)
    assert [o.timestamp for o in outcomes] == sorted(o.timestamp for o in outcomes)
    assert all(0 <= r.animals_lower <= r.animals_upper for r in readings)
    assert all(0.0 <= r.percent_zebras <= 1.0 for r in readings)
    assert len({r.key for r in readings}) == len(readings)
    assert len({o.key for o in outcomes}) == len(outcomes)
    assert {r.location_id for r in readings} == set(range(1, 11))


def test_default_savanna_is_big_enough() -> None:
    savanna = Savanna(seed=7)
    assert len(savanna.readings()) >= 28_000 and 2_500 <= len(savanna.outcomes()) <= 3_500


def test_hidden_truth_is_known_and_informative() -> None:
    savanna = Savanna(seed=7, n_locations=20, hours=72)
    outcomes = savanna.outcomes()
    p = np.array([savanna.true_probability(o) for o in outcomes])
    labels = np.array([o.label for o in outcomes])
    assert ((p > 0) & (p < 1)).all()
    assert 0.25 < labels.mean() < 0.75
    assert abs(labels.mean() - p.mean()) < 0.05  # labels are drawn from the truth
    assert savanna.best_auc(outcomes) > 0.75


def test_traffic_has_duplicates_late_and_malformed_items_with_counts() -> None:
    savanna = Savanna(seed=6, n_locations=10, hours=48, end_ms=END)
    traffic = savanna.traffic(duplicate_rate=0.03, late_rate=0.05, malformed_rate=0.01)
    n = len(savanna.readings())
    assert len(traffic.items) == n + traffic.n_duplicates + len(traffic.malformed)
    assert traffic.n_unique_valid == n
    assert traffic.n_duplicates == round(0.03 * n)
    assert traffic.n_late > 0
    kinds = Counter(kind for _, kind in traffic.malformed)
    assert set(kinds) == set(MALFORMED_KINDS)
    bad = {pos for pos, _ in traffic.malformed}
    valid_keys = Counter(
        (item["sensor_id"], item["reading_id"])
        for pos, item in enumerate(traffic.items)
        if pos not in bad
    )
    assert len(valid_keys) == n
    assert sum(valid_keys.values()) - n == traffic.n_duplicates
    for pos, kind in traffic.malformed:
        item = traffic.items[pos]
        if kind == "nan":
            assert math.isnan(item["percent_zebras"])
        elif kind == "future_timestamp":
            assert item["timestamp"] > END
        elif kind == "lower_above_upper":
            assert item["animals_lower"] > item["animals_upper"]
    assert json.dumps(savanna.traffic().items) == json.dumps(traffic.items)  # deterministic


@pytest.mark.parametrize("fmt", ["dict", "json", "msgpack"])
def test_gateway_batches_cut_the_traffic_into_bodies(fmt: str) -> None:
    savanna = Savanna(seed=6, n_locations=4, hours=12, end_ms=END)
    total = len(savanna.traffic().items)
    batches = list(savanna.gateway_batches(batch_size=100, fmt=fmt))  # type: ignore[arg-type]
    if fmt == "dict":
        sizes = [len(b) for b in batches]
    elif fmt == "json":
        sizes = [len(json.loads(b)["readings"]) for b in batches]  # type: ignore[arg-type]
    else:
        sizes = [len(msgpack.unpackb(b)["readings"]) for b in batches]
    assert sum(sizes) == total and max(sizes) == 100


def test_outcome_items_are_wire_dicts() -> None:
    savanna = Savanna(seed=6, n_locations=4, hours=12)
    items = savanna.outcome_items()
    assert set(items[0]) == {"location_id", "outcome_id", "timestamp", "label"}
    assert len(items) == len(savanna.outcomes())
