"""Building frozen, slotted dataclasses fast, for the prediction's hot path.

A frozen dataclass's ``__init__`` pays ``object.__setattr__`` for every field; setting each
slot through its descriptor builds the very same object (equal, same hash, same repr) in
about half the time: 0.37 against 0.69 us for a ``Prediction`` on this machine. Only for
classes without ``__post_init__`` and without defaults the caller would rely on: the
builder takes every field, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["builder"]


def builder(cls: type[T]) -> Callable[..., T]:
    """A function taking every field of ``cls`` positionally, in order, that returns the
    object ``cls(...)`` would (without running ``__init__``)."""
    if not is_dataclass(cls) or not hasattr(cls, "__slots__"):
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__ that the builder would skip")
    names = [f.name for f in fields(cls)]
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for i, name in enumerate(names):
        scope[f"_set{i}"] = getattr(cls, name).__set__
    lines = [f"def build({', '.join(names)}):", "    obj = _new(_cls)"]
    lines += [f"    _set{i}(obj, {name})" for i, name in enumerate(names)]
    lines.append("    return obj")
    exec("\n".join(lines), scope)  # names are the dataclass's own identifiers  # noqa: S102
    build: Callable[..., T] = scope["build"]
    build.__qualname__ = f"build_{cls.__name__}"
    build.__doc__ = f"``{cls.__name__}(...)`` without its ``__init__`` (see messages._build)."
    return build
