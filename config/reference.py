"""The configuration reference, generated from the settings definitions themselves.

Each key's meaning is the ``doc`` metadata of its dataclass field (``config/settings.py``,
``config/supervision.py``) and its default is the field's default, so a key cannot be added,
renamed or given a new default without the reference following. ``docs/generate.py`` splices
``render_markdown()`` into ``docs/configuration.md``; ``tests/test_docs.py`` fails when a key
has no documentation or the committed page is stale. ``python -m config.reference`` prints it.
"""

from __future__ import annotations

import json
import sys
import typing
from collections.abc import Iterator
from dataclasses import MISSING, Field, dataclass, fields, is_dataclass
from typing import Any

from config.settings import Settings
from config.supervision import POLICY_KEYS

__all__ = ["Key", "keys", "render_markdown", "toml_value"]

_MIB = 1024 * 1024
#: How a default reads when there is none: a key every table must set, or one left unset.
REQUIRED, NOT_SET = "required", "not set"
_HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Key:
    """One documented setting: where it lives, its default as TOML, its variable, its meaning."""

    dotted: str  # "ingest.port", "storage.couchbase.password", "features.collections[].id"
    table: str  # its TOML table: "" (top level), "ingest", "storage.couchbase", ...
    default: str  # as TOML, else REQUIRED or NOT_SET
    env: str  # its RML_* variable, or "" when it can be set in the file only
    doc: str


@dataclass(frozen=True, slots=True)
class _Table:
    """A TOML table of the settings and what it is for (a section's field ``doc``)."""

    name: str
    heading: str
    doc: str


def _doc(field: Any, where: str) -> str:
    """A field's one-line documentation; a field without one is an error naming it."""
    text = field.metadata.get("doc", "")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"setting {where} has no documentation (metadata={{'doc': ...}})")
    return " ".join(text.split())


def _is_pairs(hint: Any) -> bool:
    """``tuple[tuple[str, Any], ...]``: a table of overrides such as ``[supervision.serving]``."""
    args = typing.get_args(hint)
    return (typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis
            and typing.get_origin(args[0]) is tuple)


def _array_item(hint: Any) -> type | None:
    """The dataclass of an array of tables (``tuple[ConfiguredCollection, ...]``), else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis \
            and isinstance(args[0], type) and is_dataclass(args[0]):
        return args[0]
    return None


def _dataclass_hint(hint: Any) -> type | None:
    """The dataclass a field holds (a nested table such as ``[storage.couchbase]``)."""
    return hint if isinstance(hint, type) and is_dataclass(hint) else None


def _walk(cls: type, instance: Any, prefix: str, env: str | None,
          tables: list[_Table]) -> Iterator[Key]:
    """Every key of ``cls`` (its defaults read from ``instance``, or from the fields when an
    array's items have none), depth first; ``env`` is the variable prefix (None: file only)."""
    hints = typing.get_type_hints(cls)
    table = prefix.rstrip(".")
    for f in fields(cls):
        dotted, hint = f"{prefix}{f.name}", hints[f.name]
        doc = _doc(f, dotted)
        value = getattr(instance, f.name) if instance is not None else _field_default(f)
        var = f"{env}_{f.name.upper()}" if env is not None else ""
        nested = _dataclass_hint(hint)
        item = _array_item(hint)
        if nested is not None:
            tables.append(_Table(dotted, f"[{dotted}]", doc))
            yield from _walk(nested, value, f"{dotted}.", var, tables)
        elif item is not None:
            yield Key(dotted, table, toml_value(value, dotted), "", doc)
            tables.append(_Table(f"{dotted}[]", f"[[{dotted}]]", f"each `[[{dotted}]]` table"))
            yield from _walk(item, None, f"{dotted}[].", None, tables)
        elif _is_pairs(hint):
            yield Key(dotted, table, toml_value(value, dotted) if value else "{}",
                      f"{var}_<KEY>" if var else "", f"{doc}: {_overrides(cls, dotted)}")
        else:
            yield Key(dotted, table, REQUIRED if value is MISSING else toml_value(value, dotted),
                      var, doc)


def _field_default(f: Field[Any]) -> Any:
    """A field's own default (MISSING when it has none: the key is required)."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def _overrides(cls: type, dotted: str) -> str:
    """What a table of overrides (``[supervision.serving]``) may set: the policy keys, said as
    the section's own keys it may not set, or as a list if some are not the section's."""
    own = [f.name for f in fields(cls) if not _is_pairs(typing.get_type_hints(cls)[f.name])]
    if set(POLICY_KEYS) <= set(own):
        left_out = ", ".join(f"`{k}`" for k in own if k not in POLICY_KEYS)
        section = dotted.rpartition(".")[0]
        return (f"a `[{dotted}]` table of any flat `[{section}]` key"
                + (f" but {left_out}" if left_out else ""))
    return f"a `[{dotted}]` table of any of " + ", ".join(f"`{k}`" for k in POLICY_KEYS)


def _inventory() -> tuple[tuple[Key, ...], tuple[_Table, ...]]:
    """Every setting, in the order the dataclasses define them, and every TOML table."""
    tables = [_Table("", "Top level", "")]
    found = tuple(_walk(Settings, Settings(), "", "RML", tables))
    return found, tuple(tables)


def keys() -> tuple[Key, ...]:
    """Every setting, in the order the dataclasses define them."""
    return _inventory()[0]


def toml_value(value: Any, dotted: str = "") -> str:
    """``value`` as TOML (``None``: not set, which TOML cannot write)."""
    if value is None:
        return NOT_SET
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        if value and all(isinstance(p, tuple) and len(p) == 2 for p in value):
            return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value) + " }"
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"{dotted}: no TOML form for {value!r}")


def _readable(key: Key) -> str:
    """A large default in units people read, beside its TOML (``16777216`` is 16 MiB)."""
    try:
        number = int(key.default)
    except ValueError:
        return ""
    if key.dotted.endswith("_bytes") and number >= 1024 and number % 1024 == 0:
        return f"{number // _MIB} MiB" if number % _MIB == 0 else f"{number // 1024} KiB"
    if key.dotted.endswith("_ms") and number >= _HOUR_MS and number % _HOUR_MS == 0:
        return f"{number // _HOUR_MS} h"
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """The reference's tables, one per TOML table, as Markdown."""
    found, tables = _inventory()
    by_table: dict[str, list[Key]] = {}
    for key in found:
        by_table.setdefault(key.table, []).append(key)
    out: list[str] = []
    for table in tables:
        rows = by_table.get(table.name, [])
        if not rows:
            continue
        out.append(f"### {table.heading if table.name == '' else '`' + table.heading + '`'}")
        out.append("")
        if table.doc:
            out.append(table.doc[0].upper() + table.doc[1:] + (
                ":" if table.heading.startswith("[[") else "."))
            out.append("")
        out.append("| key | default | environment | meaning |")
        out.append("|---|---|---|---|")
        for key in rows:
            default = key.default if key.default in (REQUIRED, NOT_SET) else f"`{key.default}`"
            if readable := _readable(key):
                default += f" ({readable})"
            env = f"`{key.env}`" if key.env else "file only"
            out.append(f"| `{key.dotted}` | {_cell(default)} | {env} | {_cell(key.doc)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """Print the reference's tables."""
    if argv:
        print("usage: python -m config.reference  (prints the configuration reference; "
              "docs/generate.py writes it into docs/configuration.md)", file=sys.stderr)
        return 2
    sys.stdout.write(render_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
