"""Lineage: what a model saw (facts, features, job), how well it did, and which code built it."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from config.job import JobConfiguration
from messages.facts import Outcome, Reading

__all__ = ["FactsFingerprint", "Lineage", "code_version", "facts_fingerprint", "feature_names_of",
           "outcomes_seen"]

_PACKAGE = "reactive-ml"


@dataclass(frozen=True, slots=True)
class FactsFingerprint:
    """How many facts, their time range and a content hash independent of arrival order."""

    readings: int
    outcomes: int
    first_timestamp: int | None  # None when there are no facts
    last_timestamp: int | None
    content_hash: str  # sha256 hex


def facts_fingerprint(readings: Iterable[Reading], outcomes: Iterable[Outcome]) -> FactsFingerprint:
    """Fingerprint the facts: sha256 over every field of every fact, sorted by key.

    Changing any field of any fact changes the hash; the order facts arrived in does not.
    """
    reading_rows = sorted(
        (
            r.sensor_id,
            r.reading_id,
            r.location_id,
            r.timestamp,
            r.animals_lower,
            r.animals_upper,
            r.percent_zebras,
        )
        for r in readings
    )
    outcome_rows = sorted((o.location_id, o.outcome_id, o.timestamp, o.label) for o in outcomes)
    digest = hashlib.sha256()
    # repr of a tuple of str/int/float/bool is unambiguous (quotes escaped, floats round-trip).
    digest.update(f"readings {len(reading_rows)}\n".encode())
    for row in reading_rows:
        digest.update(repr(row).encode())
        digest.update(b"\n")
    digest.update(f"outcomes {len(outcome_rows)}\n".encode())
    for outcome_row in outcome_rows:
        digest.update(repr(outcome_row).encode())
        digest.update(b"\n")
    stamps = [row[3] for row in reading_rows] + [row[2] for row in outcome_rows]
    return FactsFingerprint(
        readings=len(reading_rows),
        outcomes=len(outcome_rows),
        first_timestamp=min(stamps) if stamps else None,
        last_timestamp=max(stamps) if stamps else None,
        content_hash=digest.hexdigest(),
    )


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+<git commit>``; the commit is ``unknown`` outside a git checkout."""
    try:
        version = metadata.version(_PACKAGE)
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
        commit = result.stdout.strip() if result.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit or 'unknown'}"


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a model came from: facts, feature collection, job, holdout metrics, code, time."""

    facts: FactsFingerprint
    feature_collection_id: int
    feature_names: tuple[str, ...]
    job: JobConfiguration
    metrics: tuple[tuple[str, float], ...]  # (name, value), sorted by name
    code_version: str
    created_at_ms: int

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal lineages give equal strings."""
        data: dict[str, Any] = {
            "facts": {
                "readings": self.facts.readings,
                "outcomes": self.facts.outcomes,
                "first_timestamp": self.facts.first_timestamp,
                "last_timestamp": self.facts.last_timestamp,
                "content_hash": self.facts.content_hash,
            },
            "feature_collection": {
                "id": self.feature_collection_id,
                "features": list(self.feature_names),
            },
            "job": self.job.to_mapping(),
            "metrics": dict(self.metrics),
            "code_version": self.code_version,
            "created_at_ms": self.created_at_ms,
        }
        return json.dumps(data, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Lineage:
        """Parse ``to_json`` output (``ValueError``/``KeyError`` on anything else)."""
        data = json.loads(text)
        facts: Mapping[str, Any] = data["facts"]
        return cls(
            facts=FactsFingerprint(
                readings=int(facts["readings"]),
                outcomes=int(facts["outcomes"]),
                first_timestamp=facts["first_timestamp"],
                last_timestamp=facts["last_timestamp"],
                content_hash=str(facts["content_hash"]),
            ),
            feature_collection_id=int(data["feature_collection"]["id"]),
            feature_names=tuple(data["feature_collection"]["features"]),
            job=JobConfiguration.from_mapping(data["job"]),
            metrics=tuple(sorted((str(k), float(v)) for k, v in data["metrics"].items())),
            code_version=str(data["code_version"]),
            created_at_ms=int(data["created_at_ms"]),
        )


def feature_names_of(lineage: str | bytes) -> tuple[str, ...]:
    """The features a model was trained on, read from its lineage JSON (only that part:
    an old lineage whose job no longer validates still serves)."""
    return tuple(json.loads(lineage)["feature_collection"]["features"])


def outcomes_seen(lineage: str | bytes) -> int:
    """How many outcomes a model was trained on, read from its lineage JSON."""
    return int(json.loads(lineage)["facts"]["outcomes"])
