"""Lineage: a facts fingerprint independent of arrival order, and a JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np

from config.job import JobConfiguration, ModelType
from learning.models.lineage import Lineage, code_version, facts_fingerprint
from players.simulator import Savanna


def facts() -> tuple[list, list]:
    savanna = Savanna(seed=2, n_locations=5, hours=12)
    return list(savanna.readings()), list(savanna.outcomes())


def test_content_hash_is_independent_of_arrival_order() -> None:
    readings, outcomes = facts()
    rng = np.random.default_rng(0)
    shuffled = [readings[i] for i in rng.permutation(len(readings))]
    assert facts_fingerprint(readings, outcomes) == facts_fingerprint(shuffled, outcomes[::-1])


def test_content_hash_changes_when_any_fact_changes() -> None:
    readings, outcomes = facts()
    base = facts_fingerprint(readings, outcomes).content_hash
    changed_reading = [*readings[:-1], dataclasses.replace(readings[-1], percent_zebras=0.123456)]
    changed_label = [dataclasses.replace(outcomes[0], label=not outcomes[0].label), *outcomes[1:]]
    assert facts_fingerprint(changed_reading, outcomes).content_hash != base
    assert facts_fingerprint(readings, changed_label).content_hash != base
    assert facts_fingerprint(readings[1:], outcomes).content_hash != base


def test_fingerprint_counts_facts_and_their_time_range() -> None:
    readings, outcomes = facts()
    fp = facts_fingerprint(readings, outcomes)
    stamps = [r.timestamp for r in readings] + [o.timestamp for o in outcomes]
    assert (fp.readings, fp.outcomes) == (len(readings), len(outcomes))
    assert (fp.first_timestamp, fp.last_timestamp) == (min(stamps), max(stamps))
    assert re.fullmatch(r"[0-9a-f]{64}", fp.content_hash)
    empty = facts_fingerprint([], [])
    assert empty.first_timestamp is None and empty.readings == 0


def test_lineage_round_trips_through_json() -> None:
    readings, outcomes = facts()
    lineage = Lineage(
        facts=facts_fingerprint(readings, outcomes),
        feature_collection_id=1,
        feature_names=("animal_estimate", "zebra_share"),
        job=JobConfiguration(model_type=ModelType.RANDOM_FOREST, seed=3),
        metrics=(("accuracy", 0.75), ("roc_auc", 0.8125)),
        code_version=code_version(),
        created_at_ms=1_704_067_200_000,
    )
    text = lineage.to_json()
    assert Lineage.from_json(text) == lineage
    data = json.loads(text)
    assert data["job"]["model_type"] == "random_forest"
    assert data["feature_collection"] == {"id": 1, "features": ["animal_estimate", "zebra_share"]}


def test_code_version_names_the_package_version_and_commit() -> None:
    version, _, commit = code_version().partition("+")
    assert version
    assert commit == "unknown" or re.fullmatch(r"[0-9a-f]{40}", commit)
