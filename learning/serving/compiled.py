"""A fitted model as plain arrays: all a predictor needs to answer, without scikit-learn.

The learner compiles each candidate it registers
(``learning.serving.inference.checked_compiled_form``: only a form that answers as
``predict_proba`` does) and the registry keeps the bytes beside the artifact. A predictor
loads this form, so its process imports numpy, not scikit-learn or SciPy (only a version
without a form is loaded from its artifact): it maps a third of the memory, and when it is
killed the kernel tears it down 3-4x faster, which was most of the time a predictor took to
come back under load (see ``bench/teardown.py``).

The walks are the fast paths of ``learning.serving.inference``: the imputer's statistics
fill NaN, then a decision tree is walked in pure Python, a forest or boosting level by level
over all its trees at once with numpy, and logistic regression is a dot product. Inputs to
trees are rounded to float32 first, as scikit-learn does.

The bytes are msgpack, arrays as raw little-endian bytes with their dtype and shape (no
pickle). ``CompiledModel.from_bytes`` checks every index before a walk could follow it, and
that thresholds and values are numbers (a tree's leaves probabilities), so a corrupt form is
a ``CompiledFormError`` at load, never an endless walk or a NaN answer.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

__all__ = [
    "CompiledFormError",
    "CompiledModel",
    "EnsembleWalk",
    "FeatureInputError",
    "InvalidFeatureValue",
    "LinearWalk",
    "MissingFeature",
    "TreeWalk",
    "UnknownFeature",
    "Walk",
    "features_from_mapping",
    "sigmoid",
]

FORMAT = 1
#: The deepest ensemble walk a form may ask for (scikit-learn's trees here are far shallower).
MAX_DEPTH = 512


class FeatureInputError(KeyError):
    """Features given for a prediction do not match the model's; ``reason`` says how."""

    def __init__(self, reason: str, names: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.names = names

    def __str__(self) -> str:
        return self.reason


class MissingFeature(FeatureInputError):
    """A feature the model needs was not given."""


class UnknownFeature(FeatureInputError):
    """A feature was given that the model does not use."""


class InvalidFeatureValue(FeatureInputError):
    """A feature value is not a number (null stands for a missing value and is allowed)."""


class CompiledFormError(ValueError):
    """Bytes that are not a well-formed compiled model; the message says what is wrong."""


def features_from_mapping(
    feature_names: Sequence[str], mapping: Mapping[str, object]
) -> tuple[float, ...]:
    """The values of ``mapping`` in ``feature_names`` order; ``None`` becomes NaN (imputed).

    Raises ``MissingFeature``, ``UnknownFeature`` or ``InvalidFeatureValue`` naming the features.
    """
    missing = tuple(name for name in feature_names if name not in mapping)
    if missing:
        raise MissingFeature(f"missing features: {', '.join(missing)}", missing)
    if len(mapping) != len(feature_names):
        known = set(feature_names)
        unknown = tuple(sorted(str(name) for name in mapping if name not in known))
        raise UnknownFeature(f"unknown features: {', '.join(unknown)}", unknown)
    values = []
    for name in feature_names:
        value = mapping[name]
        if value is None:
            values.append(math.nan)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values.append(float(value))
        else:
            raise InvalidFeatureValue(
                f"feature {name} must be a number or null, got {type(value).__name__}", (name,)
            )
    return tuple(values)


def sigmoid(z: float) -> float:
    """The logistic function, without overflow for large ``|z|``."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True, slots=True)
class TreeWalk:
    """One tree as flat lists (a leaf has ``left == -1``) with a value per node."""

    left: list[int]
    right: list[int]
    feature: list[int]
    threshold: list[float]
    value: list[float]

    def predict_one(self, x: Sequence[float]) -> float:
        left, right, feature, threshold = self.left, self.right, self.feature, self.threshold
        node = 0
        while left[node] != -1:
            node = left[node] if x[feature[node]] <= threshold[node] else right[node]
        return self.value[node]

    def _encode(self) -> dict[str, Any]:
        return {"left": _array(np.asarray(self.left, np.int64)),
                "right": _array(np.asarray(self.right, np.int64)),
                "feature": _array(np.asarray(self.feature, np.int64)),
                "threshold": _array(np.asarray(self.threshold, np.float64)),
                "value": _array(np.asarray(self.value, np.float64))}

    @classmethod
    def _decode(cls, body: Mapping[str, Any], n_features: int) -> TreeWalk:
        left, right = _field(body, "left", np.int64), _field(body, "right", np.int64)
        feature = _field(body, "feature", np.int64)
        threshold, value = _field(body, "threshold", np.float64), _field(body, "value", np.float64)
        n = len(left)
        if n == 0 or any(len(a) != n for a in (right, feature, threshold, value)):
            raise CompiledFormError("a tree's node arrays must be non-empty and of one length")
        nodes = np.arange(n)
        leaf = left == -1
        if not np.array_equal(leaf, right == -1):
            raise CompiledFormError("a tree node must have both children or neither")
        inner = ~leaf
        # Children after their parent (scikit-learn numbers nodes depth first): every walk
        # ends at a leaf.
        if ((left[inner] <= nodes[inner]) | (left[inner] >= n) | (right[inner] <= nodes[inner])
                | (right[inner] >= n)).any():
            raise CompiledFormError("a tree's children must follow their node, within the tree")
        _check_features(feature[inner], n_features)
        if not np.isfinite(threshold).all() or not ((value >= 0.0) & (value <= 1.0)).all():
            raise CompiledFormError("a tree's thresholds must be finite and its values "
                                    "probabilities")
        return cls(left.tolist(), right.tolist(), feature.tolist(), threshold.tolist(),
                   value.tolist())


@dataclass(frozen=True, slots=True)
class EnsembleWalk:
    """Trees whose leaf values are summed, then linked: a forest (mean) or boosting.

    All trees are walked at once, level by level, in one node table. The walk itself uses
    the table laid out for ``ndarray.take`` (a third cheaper than fancy indexing at 100
    trees): node ``k`` is slot ``2k``, its children are ``_next[2k + went_left]`` and its
    feature, threshold and value are repeated at ``2k`` and ``2k + 1``.
    """

    children: np.ndarray  # (nodes, 2): [right, left]; a leaf points at itself
    feature: np.ndarray
    threshold: np.ndarray  # +inf at leaves, so every step from a leaf stays there
    value: np.ndarray
    roots: np.ndarray
    depth: int
    offset: float  # added to the sum of leaf values before the link
    logistic: bool  # link: sigmoid (boosting) or identity (a forest's mean)
    _next: np.ndarray = field(init=False, repr=False, compare=False)
    _feature: np.ndarray = field(init=False, repr=False, compare=False)
    _threshold: np.ndarray = field(init=False, repr=False, compare=False)
    _value: np.ndarray = field(init=False, repr=False, compare=False)
    _roots: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        slots = {"_next": (np.asarray(self.children, np.intp) * 2).ravel(),
                 "_feature": np.repeat(np.asarray(self.feature, np.intp), 2),
                 "_threshold": np.repeat(np.asarray(self.threshold, np.float64), 2),
                 "_value": np.repeat(np.asarray(self.value, np.float64), 2),
                 "_roots": np.asarray(self.roots, np.intp) * 2}
        for name, table in slots.items():
            table.flags.writeable = False
            object.__setattr__(self, name, table)

    def predict_one(self, x: Sequence[float]) -> float:
        xs = np.asarray(x, dtype=np.float64)  # already float32-rounded values
        step, feature, threshold = self._next, self._feature, self._threshold
        node = self._roots
        for _ in range(self.depth):
            node = step.take(node + (xs.take(feature.take(node)) <= threshold.take(node)))
        total = self.offset + float(self._value.take(node).sum())
        return sigmoid(total) if self.logistic else total

    def _encode(self) -> dict[str, Any]:
        return {"children": _array(self.children.astype(np.int64)),
                "feature": _array(self.feature.astype(np.int64)),
                "threshold": _array(self.threshold.astype(np.float64)),
                "value": _array(self.value.astype(np.float64)),
                "roots": _array(self.roots.astype(np.int64)),
                "depth": self.depth, "offset": self.offset, "logistic": self.logistic}

    @classmethod
    def _decode(cls, body: Mapping[str, Any], n_features: int) -> EnsembleWalk:
        children = _field(body, "children", np.int64, ndim=2)
        feature, roots = _field(body, "feature", np.int64), _field(body, "roots", np.int64)
        threshold, value = _field(body, "threshold", np.float64), _field(body, "value", np.float64)
        n = len(children)
        if n == 0 or children.shape[1] != 2 or any(len(a) != n for a in (feature, threshold,
                                                                          value)):
            raise CompiledFormError("an ensemble's node arrays must be non-empty and of one "
                                    "length, its children two per node")
        if len(roots) == 0 or ((children < 0) | (children >= n)).any() or (
                (roots < 0) | (roots >= n)).any():
            raise CompiledFormError("an ensemble's children and roots must be nodes of it")
        _check_features(feature, n_features)
        if np.isnan(threshold).any() or not np.isfinite(value).all():
            raise CompiledFormError("an ensemble's thresholds must be numbers (+inf at leaves) "
                                    "and its values finite")
        depth, offset, logistic = body.get("depth"), body.get("offset"), body.get("logistic")
        if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= MAX_DEPTH:
            raise CompiledFormError(f"an ensemble's depth must be an integer in 0..{MAX_DEPTH}")
        if not isinstance(offset, float) or not math.isfinite(offset):
            raise CompiledFormError("an ensemble's offset must be a finite number")
        if not isinstance(logistic, bool):
            raise CompiledFormError("an ensemble's link must be true (logistic) or false")
        return cls(children, feature, threshold, value, roots, depth, offset, logistic)


@dataclass(frozen=True, slots=True)
class LinearWalk:
    """Logistic regression with its scaling folded in: sigmoid(w . x + b)."""

    weights: list[float]
    bias: float

    def predict_one(self, x: Sequence[float]) -> float:
        z = self.bias
        for w, v in zip(self.weights, x, strict=True):
            z += w * v
        return sigmoid(z)

    def _encode(self) -> dict[str, Any]:
        return {"weights": _array(np.asarray(self.weights, np.float64)), "bias": self.bias}

    @classmethod
    def _decode(cls, body: Mapping[str, Any], n_features: int) -> LinearWalk:
        weights, bias = _field(body, "weights", np.float64), body.get("bias")
        if len(weights) != n_features or not np.isfinite(weights).all():
            raise CompiledFormError("a linear model needs one finite weight per feature")
        if not isinstance(bias, float) or not math.isfinite(bias):
            raise CompiledFormError("a linear model's bias must be a finite number")
        return cls(weights.tolist(), bias)


Walk = TreeWalk | EnsembleWalk | LinearWalk
_KINDS: dict[str, type[TreeWalk] | type[EnsembleWalk] | type[LinearWalk]] = {
    "tree": TreeWalk, "ensemble": EnsembleWalk, "linear": LinearWalk}


@dataclass(frozen=True, slots=True)
class CompiledModel:
    """``predict_one`` gives P(label is True) for one row in the model's feature order."""

    walk: Walk
    statistics: tuple[float, ...]  # per feature, what NaN becomes (float32-rounded for trees)
    float32_inputs: bool  # trees compare float32 inputs, as scikit-learn does

    @property
    def n_features(self) -> int:
        return len(self.statistics)

    def predict_one(self, values: Sequence[float]) -> float:
        """P(True) for one feature vector; NaN means missing.

        Raises ``ValueError`` for a wrong length or an infinite value.
        """
        return self.walk.predict_one(self.prepare(values))

    def prepare(self, values: Sequence[float]) -> Any:
        """The walk's input for ``values``: NaN imputed, float32-rounded for trees (a row's
        input may be kept: ``walk.predict_one(prepare(v))`` is ``predict_one(v)``).

        Raises ``ValueError`` for a wrong length or an infinite value.
        """
        if len(values) != len(self.statistics):
            raise ValueError(f"expected {len(self.statistics)} values, got {len(values)}")
        x = array("f", values).tolist() if self.float32_inputs else list(values)
        total = sum(x)
        if total != total:  # a NaN among them (or infinities of both signs): imputed
            x = [v if v == v else s for v, s in zip(x, self.statistics, strict=True)]
            total = sum(x)
        if not math.isfinite(total):
            raise ValueError("feature values must be finite numbers or NaN")
        if type(self.walk) is EnsembleWalk:  # walked with numpy: kept as the array it takes
            return np.asarray(x, dtype=np.float64)
        return x

    def to_bytes(self) -> bytes:
        kind = next(name for name, cls in _KINDS.items() if isinstance(self.walk, cls))
        document = {"format": FORMAT, "kind": kind, "float32_inputs": self.float32_inputs,
                    "statistics": _array(np.asarray(self.statistics, np.float64)),
                    "walk": self.walk._encode()}
        return bytes(msgpack.packb(document, use_bin_type=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> CompiledModel:
        """Decode and check a form made by ``to_bytes``; ``CompiledFormError`` otherwise."""
        try:
            document = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as exc:
            raise CompiledFormError(f"not a compiled model: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise CompiledFormError(f"not a compiled model of format {FORMAT}")
        float32_inputs, body = document.get("float32_inputs"), document.get("walk")
        kind = document.get("kind")
        walk_class = _KINDS.get(kind) if isinstance(kind, str) else None
        if walk_class is None or not isinstance(float32_inputs, bool) or not isinstance(body,
                                                                                        dict):
            raise CompiledFormError("a compiled model needs a known kind, its walk and its "
                                    "input type")
        statistics = _field(document, "statistics", np.float64)
        if len(statistics) == 0 or not np.isfinite(statistics).all():
            raise CompiledFormError("a compiled model needs one finite statistic per feature")
        walk = walk_class._decode(body, len(statistics))
        return cls(walk, tuple(statistics.tolist()), float32_inputs)


def _array(values: np.ndarray) -> dict[str, Any]:
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    return {"dtype": little.dtype.str, "shape": list(values.shape),
            "data": np.ascontiguousarray(little).tobytes()}


def _field(body: Mapping[str, Any], name: str, dtype: type[np.generic],
           ndim: int = 1) -> np.ndarray:
    """``body[name]``, an array as ``_array`` wrote it, of ``dtype`` and ``ndim`` dimensions."""
    item = body.get(name)
    expected = np.dtype(dtype).newbyteorder("<")
    if not isinstance(item, dict) or item.get("dtype") != expected.str:
        raise CompiledFormError(f"{name} must be an array of {expected.str}")
    shape, data = item.get("shape"), item.get("data")
    if (not isinstance(shape, list) or len(shape) != ndim or not isinstance(data, bytes)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                       for d in shape)):
        raise CompiledFormError(f"{name} must have {ndim} dimension(s) and its bytes")
    if math.prod(shape) * expected.itemsize != len(data) or any(d > len(data) for d in shape):
        raise CompiledFormError(f"{name}'s bytes do not match its shape")
    return np.frombuffer(data, dtype=expected).reshape(shape).astype(dtype)


def _check_features(feature: np.ndarray, n_features: int) -> None:
    if ((feature < 0) | (feature >= n_features)).any():
        raise CompiledFormError(f"a node tests a feature outside 0..{n_features - 1}")
