"""Reading a model's recorded holdout evaluation (ROC and precision–recall curves) defensively.

The registry keeps, per version, JSON text of the shape::

    {"roc": {"fpr": [...], "tpr": [...], "thresholds": [...]},
     "pr": {"precision": [...], "recall": [...]},
     "holdout": {"rows": n, "positives": k}, "profile": {...}}

Older versions have ``{}``. A report must render whatever it finds, so nothing here
raises: a missing curve is ``None``, a malformed one is ``None`` with a named problem.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Curve", "Evaluation", "parse_evaluation"]


@dataclass(frozen=True, slots=True)
class Curve:
    """A curve on the unit square: equal-length x and y coordinates, at least two points."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A version's holdout curves (``roc``: x = FPR, y = TPR; ``pr``: x = recall,
    y = precision), holdout size, and what could not be read."""

    roc: Curve | None
    pr: Curve | None
    holdout_rows: int | None
    holdout_positives: int | None
    problems: tuple[str, ...]


def _unit_values(value: Any, name: str) -> tuple[float, ...] | str:
    """The list as floats in [0, 1], or why not."""
    if not isinstance(value, list):
        return f"{name} is not a list"
    numbers: list[float] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float):
            return f"{name} holds a non-number"
        number = float(item)
        if not math.isfinite(number) or not -1e-9 <= number <= 1.0 + 1e-9:
            return f"{name} has a value outside [0, 1]"
        numbers.append(number)
    return tuple(numbers)


def _curve(data: Any, kind: str, x_name: str, y_name: str) -> tuple[Curve | None, str | None]:
    """The curve ``data[x_name]`` / ``data[y_name]``, or None and a problem (None: absent)."""
    if data is None:
        return None, None
    if not isinstance(data, dict):
        return None, f"{kind} is not an object"
    xs = _unit_values(data.get(x_name), f"{kind}.{x_name}")
    ys = _unit_values(data.get(y_name), f"{kind}.{y_name}")
    for problem in (xs, ys):
        if isinstance(problem, str):
            return None, problem
    assert isinstance(xs, tuple) and isinstance(ys, tuple)
    if not xs and not ys:  # what a holdout with one class only records
        return None, f"{kind} curve is empty"
    if len(xs) != len(ys):
        return None, f"{kind}.{x_name} and {kind}.{y_name} differ in length"
    if len(xs) < 2:
        return None, f"{kind} has fewer than two points"
    return Curve(xs, ys), None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def parse_evaluation(text: str | None) -> Evaluation:
    """The evaluation recorded for a version; never raises (problems are listed instead)."""
    if not text:
        return Evaluation(None, None, None, None, ())
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return Evaluation(None, None, None, None, ("evaluation is not valid JSON",))
    if not isinstance(data, dict):
        return Evaluation(None, None, None, None, ("evaluation is not a JSON object",))
    roc, roc_problem = _curve(data.get("roc"), "roc", "fpr", "tpr")
    pr, pr_problem = _curve(data.get("pr"), "pr", "recall", "precision")
    holdout = data.get("holdout")
    rows = positives = None
    if isinstance(holdout, dict):
        rows, positives = _count(holdout.get("rows")), _count(holdout.get("positives"))
    problems = tuple(p for p in (roc_problem, pr_problem) if p is not None)
    return Evaluation(roc, pr, rows, positives, problems)
