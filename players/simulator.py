"""The savanna simulator: field gateways with a hidden ground truth (the demo and the tests).

Per location a latent animal count drifts over time (a daily cycle times a slow random
walk on the log scale) and a zebra share drifts slowly. Sensors sample the latent count
every ~30 minutes: each has a bias factor (most are unbiased) and a noise level (some are
noisy), and reports an interval around its noisy estimate. Rangers report hunts at random
times; a hunt succeeds with probability

    sigmoid(1.6 * ln(mean true animals over the trailing window / 25)
            + 2.5 * (zebra share - 0.5) + 0.9 * cos(2 pi (hour - 18) / 24) - 0.2)

so the window features (animal estimate, zebra share, hour of day) can learn it, and the
best achievable AUC (that of the true probabilities) is known. Those constants are a
``Regime``; with ``regime_change_at_ms`` the savanna switches to another one at that time
(by default ``MIGRATION``: herds grow, the zebra share falls, and hunts now succeed where
herds are *small* for their new size), so both the feature distributions and the truth
behind the labels shift.

Everything is deterministic for a seed. ``traffic`` adds what real gateways send besides
clean facts: duplicates, late arrivals and malformed items, with counts for the tests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from learning.training.metrics import best_achievable_auc
from messages.codec import outcome_to_wire, reading_to_wire
from messages.facts import Outcome, Reading
from players.regime import MIGRATION, Regime

__all__ = [
    "MALFORMED_KINDS", "MIGRATION", "GatewayTraffic", "Regime", "Savanna", "outcome_item",
    "reading_item",
]

_MS_PER_HOUR = 3_600_000
_STEP_MS = 600_000  # the latent truth moves on a 10-minute grid
_DEFAULT_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z

#: Kinds of malformed reading items ``traffic`` produces; a strict decoder rejects each.
MALFORMED_KINDS = (
    "wrong_type",
    "lower_above_upper",
    "percent_out_of_range",
    "unknown_field",
    "nan",
    "future_timestamp",
    "missing_field",
)


#: A reading / an outcome as a gateway sends it: the codec's own wire form.
reading_item = reading_to_wire
outcome_item = outcome_to_wire


@dataclass(frozen=True, slots=True)
class GatewayTraffic:
    """Reading items in ingest order, and what a correct collector must make of them."""

    items: tuple[dict[str, Any], ...]
    n_unique_valid: int  # distinct valid readings: what the store should hold afterwards
    n_duplicates: int  # resent valid readings: reported as duplicates
    malformed: tuple[tuple[int, str], ...]  # (index in items, kind): rejected
    n_late: int  # valid readings sent after a newer reading of the same sensor


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Savanna:
    """A deterministic savanna: locations, sensors, rangers and the hidden truth behind them."""

    def __init__(
        self,
        seed: int = 7,
        n_locations: int = 40,
        n_sensors_per_location: int = 3,
        hours: int = 120,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        reading_interval_ms: int = 30 * 60_000,
        outcomes_per_hour: float = 0.6,
        window_ms: int = 6 * _MS_PER_HOUR,
        regime_change_at_ms: int | None = None,
        after: Regime = MIGRATION,
    ) -> None:
        """Simulate ``hours`` ending at ``end_ms`` (e.g. now) or starting at ``start_ms``.

        Every reading and outcome has ``start_ms <= timestamp < end_ms``. The default
        ``Regime()`` holds throughout, or until ``regime_change_at_ms`` and ``after`` from
        then on (the random draws are the same either way, so only the regime differs); the
        herds and zebra shares shift from the 10-minute step of the truth that contains it.
        """
        if start_ms is not None and end_ms is not None:
            raise ValueError("give start_ms or end_ms, not both")
        span = hours * _MS_PER_HOUR
        if end_ms is not None:
            start_ms = end_ms - span
        self.start_ms = _DEFAULT_START_MS if start_ms is None else start_ms
        self.end_ms = self.start_ms + span
        self.seed = seed
        self.n_locations = n_locations
        self.window_ms = window_ms
        self.before = Regime()
        self.after = after
        self.regime_change_at_ms = regime_change_at_ms
        self._rng = np.random.default_rng(seed)
        self._simulate_truth(n_locations, span)
        self._readings = self._simulate_readings(n_sensors_per_location, reading_interval_ms)
        self._outcomes, self._truth = self._simulate_outcomes(outcomes_per_hour * hours)

    # -- the hidden truth -------------------------------------------------------------

    def _simulate_truth(self, n_locations: int, span: int) -> None:
        rng = self._rng
        steps = span // _STEP_MS + 1
        grid_hours = (
            (self.start_ms + np.arange(steps) * _STEP_MS) % (24 * _MS_PER_HOUR) / _MS_PER_HOUR
        )
        base = np.exp(rng.uniform(math.log(6), math.log(90), n_locations))
        amplitude = rng.uniform(0.1, 0.5, n_locations)
        phase = rng.uniform(0, 24, n_locations)
        daily = 1 + amplitude[:, None] * np.sin(
            2 * np.pi * (grid_hours[None, :] - phase[:, None]) / 24
        )
        # A slow AR(1) walk on the log scale: herds come and go over days.
        shocks = rng.normal(0, 0.04, (n_locations, steps))
        walk = np.empty_like(shocks)
        walk[:, 0] = rng.normal(0, 0.3, n_locations)
        for t in range(1, steps):
            walk[:, t] = 0.995 * walk[:, t - 1] + shocks[:, t]
        self._animals = base[:, None] * daily * np.exp(walk)
        share_base = rng.beta(2, 2, n_locations)
        share_walk = np.cumsum(rng.normal(0, 0.004, (n_locations, steps)), axis=1)
        self._zebras = np.clip(share_base[:, None] + share_walk, 0.02, 0.98)
        if self.regime_change_at_ms is not None:
            changed = min(max((self.regime_change_at_ms - self.start_ms) // _STEP_MS, 0), steps)
            self._animals[:, changed:] *= self.after.animal_factor
            self._zebras[:, changed:] = np.clip(
                self._zebras[:, changed:] + self.after.zebra_shift, 0.02, 0.98)
        self._animals_cumsum = np.concatenate(
            (np.zeros((n_locations, 1)), np.cumsum(self._animals, axis=1)), axis=1
        )

    def _step(self, timestamps: np.ndarray) -> np.ndarray:
        return (timestamps - self.start_ms) // _STEP_MS

    def _true_probability(self, locations: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        loc = locations - 1
        hi = self._step(timestamps)  # grid points strictly before t ... up to t's own step
        lo = np.maximum(hi - self.window_ms // _STEP_MS, 0)
        hi = np.maximum(hi, lo + 1)
        mean_animals = (self._animals_cumsum[loc, hi] - self._animals_cumsum[loc, lo]) / (hi - lo)
        zebras = self._zebras[loc, self._step(timestamps)]
        hour = timestamps % (24 * _MS_PER_HOUR) / _MS_PER_HOUR
        logit = self.before.logit(mean_animals, zebras, hour)
        if self.regime_change_at_ms is not None:
            later = timestamps >= self.regime_change_at_ms
            logit = np.where(later, self.after.logit(mean_animals, zebras, hour), logit)
        return _sigmoid(logit)

    # -- what the field reports -------------------------------------------------------

    def _simulate_readings(self, per_location: int, interval_ms: int) -> tuple[Reading, ...]:
        rng = self._rng
        n_sensors = self.n_locations * per_location
        locations = np.repeat(np.arange(1, self.n_locations + 1), per_location)
        # Most sensors are honest; a third are biased, a fifth are noisy.
        bias = np.where(rng.random(n_sensors) < 0.33, rng.uniform(0.7, 1.3, n_sensors), 1.0)
        noise = np.where(rng.random(n_sensors) < 0.2, 0.45, rng.uniform(0.05, 0.2, n_sensors))
        per_sensor = (self.end_ms - self.start_ms) // interval_ms
        offsets = rng.integers(0, interval_ms, n_sensors)
        k = np.arange(per_sensor)
        times = (
            self.start_ms
            + offsets[:, None]
            + k[None, :] * interval_ms
            + rng.integers(-interval_ms // 10, interval_ms // 10, (n_sensors, per_sensor))
        )
        times = np.clip(times, self.start_ms, self.end_ms - 1)
        sensor_index = np.repeat(np.arange(n_sensors), per_sensor)
        ts = times.ravel()
        loc = locations[sensor_index]
        step = self._step(ts)
        truth = self._animals[loc - 1, step]
        observed = truth * bias[sensor_index] * np.exp(rng.normal(0, noise[sensor_index]))
        half = np.maximum(1.0, observed * rng.uniform(0.05, 0.3, ts.size))
        lower = np.maximum(0, np.round(observed - half)).astype(np.int64)
        upper = np.maximum(lower, np.round(observed + half)).astype(np.int64)
        zebras = np.clip(self._zebras[loc - 1, step] + rng.normal(0, 0.05, ts.size), 0.0, 1.0)
        zebras = np.round(zebras, 4)
        order = np.argsort(ts, kind="stable")
        sensor_names = [
            f"s{loc:03d}-{j}" for loc in range(1, self.n_locations + 1) for j in range(per_location)
        ]
        serial = np.tile(k, n_sensors)
        return tuple(
            Reading(
                sensor_id=sensor_names[s],
                location_id=int(lc),
                reading_id=f"r{n:06d}",
                timestamp=int(t),
                animals_lower=int(lo),
                animals_upper=int(up),
                percent_zebras=float(z),
            )
            for s, lc, n, t, lo, up, z in zip(
                sensor_index[order].tolist(),
                loc[order].tolist(),
                serial[order].tolist(),
                ts[order].tolist(),
                lower[order].tolist(),
                upper[order].tolist(),
                zebras[order].tolist(),
                strict=True,
            )
        )

    def _simulate_outcomes(
        self, expected_per_location: float
    ) -> tuple[tuple[Outcome, ...], dict[tuple[int, str], float]]:
        rng = self._rng
        counts = rng.poisson(expected_per_location, self.n_locations)
        locations = np.repeat(np.arange(1, self.n_locations + 1), counts)
        # Hunts start an hour in, so most have a trailing window with readings.
        first = min(self.start_ms + _MS_PER_HOUR, self.end_ms - 1)
        ts = rng.integers(first, self.end_ms, locations.size)
        probability = self._true_probability(locations, ts)
        labels = rng.random(locations.size) < probability
        order = np.lexsort((locations, ts))
        outcomes = []
        truth: dict[tuple[int, str], float] = {}
        for i, idx in enumerate(order.tolist()):
            outcome = Outcome(
                location_id=int(locations[idx]),
                outcome_id=f"o{i:06d}",
                timestamp=int(ts[idx]),
                label=bool(labels[idx]),
            )
            outcomes.append(outcome)
            truth[outcome.key] = float(probability[idx])
        return tuple(outcomes), truth

    # -- the public face --------------------------------------------------------------

    def readings(self) -> tuple[Reading, ...]:
        """Every clean reading, in timestamp order."""
        return self._readings

    def outcomes(self) -> tuple[Outcome, ...]:
        """Every outcome, in timestamp order."""
        return self._outcomes

    def true_probability(self, outcome: Outcome) -> float:
        """The hidden P(success) of a simulated hunt (``KeyError`` for any other outcome)."""
        return self._truth[outcome.key]

    def best_auc(self, outcomes: tuple[Outcome, ...] | list[Outcome]) -> float:
        """The AUC the true probabilities reach on these outcomes: the ceiling for any model."""
        labels = np.array([o.label for o in outcomes], dtype=bool)
        truth = np.array([self._truth[o.key] for o in outcomes], dtype=np.float64)
        return best_achievable_auc(labels, truth)

    def traffic(
        self,
        duplicate_rate: float = 0.03,
        late_rate: float = 0.05,
        malformed_rate: float = 0.01,
    ) -> GatewayTraffic:
        """The readings as gateways send them: some resent, some late, some malformed.

        Malformed items carry fresh reading ids, so each is rejected for its own fault.
        ``future_timestamp`` items are a week after ``end_ms``: build the savanna with
        ``end_ms`` near the collector's clock for them to count as future.
        """
        rng = np.random.default_rng([self.seed, 1])
        readings = self._readings
        n = len(readings)
        ts = np.array([r.timestamp for r in readings], dtype=np.int64)
        # Ingest time: most readings arrive as taken; late ones up to 6 hours later.
        late = rng.random(n) < late_rate
        arrival = ts + np.where(late, rng.integers(_STEP_MS, 6 * _MS_PER_HOUR, n), 0)
        entries: list[tuple[int, int, dict[str, Any], str | None]] = [
            (int(arrival[i]), i, reading_item(r), None) for i, r in enumerate(readings)
        ]
        n_dup = int(round(duplicate_rate * n))
        for j, i in enumerate(rng.choice(n, n_dup, replace=False).tolist()):
            resend = int(arrival[i] + rng.integers(1, 2 * _MS_PER_HOUR))
            entries.append((resend, n + j, reading_item(readings[i]), None))
        n_bad = int(round(malformed_rate * n))
        for j, i in enumerate(rng.choice(n, n_bad, replace=False).tolist()):
            kind = MALFORMED_KINDS[j % len(MALFORMED_KINDS)]
            item = reading_item(readings[i])
            item["reading_id"] = f"bad{j:06d}"
            _corrupt(item, kind, self.end_ms)
            entries.append((int(arrival[i]), 2 * n + j, item, kind))
        entries.sort(key=lambda e: (e[0], e[1]))
        items = tuple(e[2] for e in entries)
        malformed = tuple((pos, e[3]) for pos, e in enumerate(entries) if e[3] is not None)
        return GatewayTraffic(
            items=items,
            n_unique_valid=n,
            n_duplicates=n_dup,
            malformed=malformed,
            n_late=_count_late(items, malformed),
        )

    def gateway_batches(
        self,
        batch_size: int = 1000,
        fmt: Literal["dict", "json", "msgpack"] = "dict",
        **traffic: float,
    ) -> Iterator[list[dict[str, Any]] | bytes]:
        """``traffic(...)`` cut into POST bodies: item lists, or encoded ``{"readings": [...]}``."""
        items = self.traffic(**traffic).items
        for start in range(0, len(items), batch_size):
            batch = list(items[start : start + batch_size])
            if fmt == "dict":
                yield batch
            elif fmt == "json":
                yield json.dumps({"readings": batch}).encode()
            elif fmt == "msgpack":
                import msgpack

                yield msgpack.packb({"readings": batch})
            else:
                raise ValueError(f"unknown format {fmt!r}")

    def outcome_items(self) -> list[dict[str, Any]]:
        """Every outcome as a wire dict, in timestamp order."""
        return [outcome_item(o) for o in self._outcomes]


def _corrupt(item: dict[str, Any], kind: str, end_ms: int) -> None:
    if kind == "wrong_type":
        item["animals_lower"] = str(item["animals_lower"])
    elif kind == "lower_above_upper":
        item["animals_lower"] = item["animals_upper"] + 5
    elif kind == "percent_out_of_range":
        item["percent_zebras"] = 1.5
    elif kind == "unknown_field":
        item["colour"] = "tawny"
    elif kind == "nan":
        item["percent_zebras"] = float("nan")
    elif kind == "future_timestamp":
        item["timestamp"] = end_ms + 7 * 24 * _MS_PER_HOUR
    elif kind == "missing_field":
        del item["animals_upper"]
    else:  # pragma: no cover - MALFORMED_KINDS is closed
        raise AssertionError(kind)


def _count_late(items: tuple[dict[str, Any], ...], malformed: tuple[tuple[int, str], ...]) -> int:
    bad = {pos for pos, _ in malformed}
    newest: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    late = 0
    for pos, item in enumerate(items):
        if pos in bad:
            continue
        key = (item["sensor_id"], item["reading_id"])
        if key in seen:
            continue
        seen.add(key)
        sensor, ts = item["sensor_id"], item["timestamp"]
        if ts < newest.get(sensor, ts):
            late += 1
        newest[sensor] = max(ts, newest.get(sensor, ts))
    return late
