"""One row of the report's lineage table, read defensively from a model's lineage JSON.

Lineage text is untrusted (it comes from a file anyone with the data directory can
edit): each field is type-checked and shown as ``?`` when missing or wrong, and every
cell is escaped here. A broken lineage spoils its own cells, never the report.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any

from storage.registry import ModelRecord

__all__ = ["HASH_CHARS", "LINEAGE_COLUMNS", "lineage_cells", "utc_text"]

#: Characters of the facts' content hash shown; the whole hash is in the cell's tooltip.
HASH_CHARS = 12

LINEAGE_COLUMNS = ("Version", "Facts", "Facts' time range (UTC)",
                   "Content hash", "Feature collection", "Job configuration", "Code version",
                   "Created (UTC)", "Status")

_UNKNOWN = "?"


def _mapping(data: Any, key: str) -> dict[str, Any]:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def utc_text(ms: int | None, pattern: str) -> str:
    """A millisecond timestamp as UTC text in ``pattern``; ``?`` when there is none."""
    if ms is None:
        return _UNKNOWN
    try:
        return time.strftime(pattern, time.gmtime(ms / 1000))
    except (OverflowError, OSError, ValueError):
        return _UNKNOWN


def _scalar(value: Any) -> str:
    if isinstance(value, str | int | float | bool) or value is None:
        return json.dumps(value) if isinstance(value, str) else str(value)
    return json.dumps(value, sort_keys=True, default=str)


def _facts(facts: dict[str, Any]) -> tuple[str, str, str]:
    """The facts cell, the time range cell (both HTML, escaped) and the content hash."""
    readings, outcomes = _int(facts.get("readings")), _int(facts.get("outcomes"))
    count = (f"{readings:,} readings<br>{outcomes:,} outcomes"
             if readings is not None and outcomes is not None else _UNKNOWN)
    first, last = _int(facts.get("first_timestamp")), _int(facts.get("last_timestamp"))
    if first is None and last is None and readings == 0 and outcomes == 0:
        span = "no facts"
    else:
        span = (f"{escape(utc_text(first, '%Y-%m-%d %H:%M'))} –<br>"
                f"{escape(utc_text(last, '%Y-%m-%d %H:%M'))}")
    content = facts.get("content_hash")
    digest = content if isinstance(content, str) else _UNKNOWN
    return count, span, digest


def _collection(lineage: dict[str, Any], fallback_id: int) -> str:
    collection = _mapping(lineage, "feature_collection")
    ident = _int(collection.get("id"))
    features = collection.get("features")
    names = (", ".join(str(f) for f in features) if isinstance(features, list)
             else _UNKNOWN)
    return f"{fallback_id if ident is None else ident}: {names}"


def _job(job_text: str, lineage: dict[str, Any]) -> str:
    job = _mapping(lineage, "job")
    if not job:
        try:
            parsed = json.loads(job_text)
        except ValueError:
            parsed = None
        job = parsed if isinstance(parsed, dict) else {}
    if not job:
        return _UNKNOWN
    parts = [str(job.get("model_type", _UNKNOWN))]
    hyper = job.get("hyperparameters")
    if isinstance(hyper, dict) and hyper:
        parts.append(", ".join(f"{k}={_scalar(v)}" for k, v in sorted(hyper.items())))
    for key, value in sorted(job.items()):
        if key == "window_ms" and _int(value) is not None:
            parts.append(f"window {value / 3_600_000:g} h")
        elif key not in ("model_type", "hyperparameters"):
            parts.append(f"{key}={_scalar(value)}")
    return "; ".join(parts)


def _short_code_version(code: str) -> str:
    """``0.1.0+<40-hex commit>`` with the commit cut to 12 characters, as git shows it."""
    version, plus, commit = code.partition("+")
    return f"{version}+{commit[:12]}" if plus and len(commit) > 12 else code


def lineage_cells(record: ModelRecord) -> tuple[str, ...]:
    """The ``<td>`` cells of ``record``'s lineage row, in ``LINEAGE_COLUMNS`` order, escaped."""
    try:
        parsed = json.loads(record.lineage)
    except (ValueError, RecursionError):
        parsed = None
    lineage = parsed if isinstance(parsed, dict) else {}
    count, span, digest = _facts(_mapping(lineage, "facts"))
    short = digest if digest == _UNKNOWN else digest[:HASH_CHARS]
    code = lineage.get("code_version")
    code = code if isinstance(code, str) else _UNKNOWN
    status = f"{record.status}: {record.status_reason}"
    cells = (
        f'<td class="num">{record.version}</td>',
        f'<td class="nowrap">{count}</td>',  # built from integers only
        f'<td class="nowrap">{span}</td>',  # escaped in _facts
        f'<td><code title="{escape(digest)}">{escape(short)}</code></td>',
        f"<td>{escape(_collection(lineage, record.feature_collection_id))}</td>",
        f"<td>{escape(_job(record.job, lineage))}</td>",
        f'<td><code title="{escape(code)}">{escape(_short_code_version(code))}</code></td>',
        f'<td class="nowrap">{escape(utc_text(record.created_at_ms, "%Y-%m-%d %H:%M:%S"))}</td>',
        f"<td>{escape(status)}</td>",
    )
    return cells
