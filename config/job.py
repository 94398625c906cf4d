"""What to learn: the model type, its hyperparameters and the split, validated on the way in.

The TOML form is one table with a nested hyperparameter table (flat hyperparameter keys
under ``[job]`` are refused as unknown keys, so a typo cannot pass for a setting)::

    [job]
    model_type = "random_forest"
    test_fraction = 0.25
    seed = 7
    window_ms = 21600000

    [job.hyperparameters]
    n_estimators = 200
    max_depth = 8

Every key is optional; the default job is a decision tree with its default hyperparameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from config.errors import ConfigError

__all__ = [
    "DEFAULT_WINDOW_MS",
    "HYPERPARAMETERS",
    "Hyperparameter",
    "JobConfiguration",
    "ModelType",
]

DEFAULT_WINDOW_MS = 6 * 3_600_000
_MAX_WINDOW_MS = 30 * 24 * 3_600_000


class ModelType(StrEnum):
    """The model families a job may train."""

    DECISION_TREE = "decision_tree"
    RANDOM_FOREST = "random_forest"
    LOGISTIC_REGRESSION = "logistic_regression"
    GRADIENT_BOOSTING = "gradient_boosting"


@dataclass(frozen=True, slots=True)
class Hyperparameter:
    """One hyperparameter's type, default and range (``low_open`` excludes ``low``)."""

    name: str
    kind: type  # int or float
    default: int | float
    low: float
    high: float
    low_open: bool = False

    def check(self, value: object, key: str) -> int | float:
        """The value as this hyperparameter's type, or ``ConfigError`` naming ``key``."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected {self.kind.__name__}, got {type(value).__name__}")
        if self.kind is int:
            if isinstance(value, float):
                raise ConfigError(key, f"expected int, got float {value!r}")
            checked: int | float = int(value)
        else:
            checked = float(value)
            if not math.isfinite(checked):
                raise ConfigError(key, f"expected a finite number, got {value!r}")
        below = checked <= self.low if self.low_open else checked < self.low
        if below or checked > self.high:
            opening = "(" if self.low_open else "["
            raise ConfigError(key, f"{checked!r} is outside {opening}{self.low}, {self.high}]")
        return checked


def _params(*specs: Hyperparameter) -> Mapping[str, Hyperparameter]:
    return {spec.name: spec for spec in specs}


#: Per model type: the hyperparameters it accepts, with defaults and ranges.
HYPERPARAMETERS: Mapping[ModelType, Mapping[str, Hyperparameter]] = {
    ModelType.DECISION_TREE: _params(
        Hyperparameter("max_depth", int, 6, 1, 32),
        Hyperparameter("min_samples_leaf", int, 20, 1, 1000),
    ),
    ModelType.RANDOM_FOREST: _params(
        Hyperparameter("n_estimators", int, 100, 1, 500),
        Hyperparameter("max_depth", int, 8, 1, 32),
        Hyperparameter("min_samples_leaf", int, 10, 1, 1000),
    ),
    ModelType.LOGISTIC_REGRESSION: _params(
        Hyperparameter("C", float, 1.0, 0.0, 1e6, low_open=True),
        Hyperparameter("max_iter", int, 200, 10, 10_000),
    ),
    ModelType.GRADIENT_BOOSTING: _params(
        Hyperparameter("n_estimators", int, 100, 1, 1000),
        Hyperparameter("learning_rate", float, 0.1, 0.0, 1.0, low_open=True),
        Hyperparameter("max_depth", int, 3, 1, 16),
    ),
}

_TOP_LEVEL_KEYS = ("model_type", "hyperparameters", "test_fraction", "seed", "window_ms")


def _defaults(model_type: ModelType) -> tuple[tuple[str, int | float], ...]:
    return tuple((name, spec.default) for name, spec in HYPERPARAMETERS[model_type].items())


@dataclass(frozen=True, slots=True)
class JobConfiguration:
    """A valid training job: model type, hyperparameters (name, value pairs), split and window.

    Build it with ``from_mapping`` (validates) or directly with trusted values; the
    hyperparameters of a directly built job are completed with defaults and checked too.
    """

    model_type: ModelType = ModelType.DECISION_TREE
    hyperparameters: tuple[tuple[str, int | float], ...] = field(default=())
    test_fraction: float = 0.25
    seed: int = 7
    window_ms: int = DEFAULT_WINDOW_MS

    def __post_init__(self) -> None:
        model_type = _check_model_type(self.model_type, "job.model_type")
        object.__setattr__(self, "model_type", model_type)
        given = dict(self.hyperparameters)
        if len(given) != len(self.hyperparameters):
            raise ConfigError("job.hyperparameters", "a hyperparameter is given twice")
        object.__setattr__(self, "hyperparameters", _check_hyperparameters(model_type, given))
        object.__setattr__(self, "test_fraction", _check_test_fraction(self.test_fraction))
        object.__setattr__(self, "seed", _check_int(self.seed, "job.seed", 0, 2**32 - 1))
        object.__setattr__(
            self, "window_ms", _check_int(self.window_ms, "job.window_ms", 60_000, _MAX_WINDOW_MS)
        )

    @property
    def params(self) -> dict[str, int | float]:
        """The hyperparameters as a fresh dict (for building an estimator)."""
        return dict(self.hyperparameters)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> JobConfiguration:
        """Parse a ``[job]`` table; ``ConfigError`` names the offending key (``job.seed``)."""
        if not isinstance(data, Mapping):
            raise ConfigError("job", f"expected a table, got {type(data).__name__}")
        for key in data:
            if key not in _TOP_LEVEL_KEYS:
                raise ConfigError(f"job.{key}", "unknown key")
        raw = data.get("hyperparameters", {})
        if not isinstance(raw, Mapping):
            raise ConfigError("job.hyperparameters", f"expected a table, got {type(raw).__name__}")
        # Only what is given: the defaults are the dataclass's, checked once in __post_init__.
        given = {key: value for key, value in data.items() if key != "hyperparameters"}
        return cls(hyperparameters=tuple(raw.items()), **given)

    def to_mapping(self) -> dict[str, Any]:
        """A JSON-able dict that ``from_mapping`` turns back into an equal job."""
        return {
            "model_type": self.model_type.value,
            "hyperparameters": dict(self.hyperparameters),
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "window_ms": self.window_ms,
        }


def _check_model_type(value: object, key: str) -> ModelType:
    if isinstance(value, ModelType):
        return value
    if isinstance(value, str):
        try:
            return ModelType(value)
        except ValueError:
            pass
    choices = ", ".join(m.value for m in ModelType)
    raise ConfigError(key, f"unknown model type {value!r}; expected one of {choices}")


def _check_hyperparameters(
    model_type: ModelType, given: Mapping[str, object]
) -> tuple[tuple[str, int | float], ...]:
    specs = HYPERPARAMETERS[model_type]
    for name in given:
        if name not in specs:
            known = ", ".join(specs)
            raise ConfigError(
                f"job.hyperparameters.{name}",
                f"unknown hyperparameter for {model_type.value}; expected one of {known}",
            )
    return tuple(
        (
            name,
            spec.check(given[name], f"job.hyperparameters.{name}")
            if name in given
            else spec.default,
        )
        for name, spec in specs.items()
    )


def _check_test_fraction(value: object) -> float:
    key = "job.test_fraction"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number, got {type(value).__name__}")
    fraction = float(value)
    if not (0.05 < fraction <= 0.5):
        raise ConfigError(key, f"{value!r} is outside (0.05, 0.5]")
    return fraction


def _check_int(value: object, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected int, got {type(value).__name__}")
    if not (low <= value <= high):
        raise ConfigError(key, f"{value!r} is outside [{low}, {high}]")
    return value
