"""The model registry as one self-contained HTML page: summary, metrics, curves, lineage.

Pure: the caller reads the registry into a ``RegistrySnapshot`` and writes the
string ``render_report`` returns. The page needs nothing else: CSS is inline, the
curves are inline SVG, there is no script and no external address. Every string
that came from the registry (lineage, reasons, job) is escaped: lineage text comes
from files and is not trusted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from learning.report.evaluation import Curve, Evaluation, parse_evaluation
from learning.report.lineage_row import LINEAGE_COLUMNS, lineage_cells, utc_text
from learning.report.plot import PALETTE, Series, line_chart
from storage.registry import CHAMPION, STATUSES, ChampionChange, ModelRecord, StatusChange

__all__ = ["MAX_PLOTTED_VERSIONS", "RegistrySnapshot", "is_rollback", "render_report"]

#: More lines than this make a chart unreadable: the champion and the newest are plotted.
MAX_PLOTTED_VERSIONS = 8

_METRICS = (("accuracy", "Accuracy"), ("precision", "Precision"), ("recall", "Recall"),
            ("f1", "F1"), ("roc_auc", "ROC AUC"), ("log_loss", "Log loss"))

_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1400px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.champion td { background: #eef6ee; }
tr.champion td:first-child { font-weight: bold; }
.nowrap { white-space: nowrap; }
code { font-size: 0.95em; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
.note { color: #555; }
.rollback { color: #b35900; font-weight: bold; }
"""


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """What the report shows, read from the registry: every version, the champion log,
    each version's status log, and where and when it was read."""

    records: tuple[ModelRecord, ...]
    champion_history: tuple[ChampionChange, ...]
    status_logs: tuple[tuple[int, tuple[StatusChange, ...]], ...]
    source: str
    generated_at_ms: int


def is_rollback(change: ChampionChange) -> bool:
    """A promotion back to an older version (or one whose reason says it is a rollback)."""
    older = change.previous_version is not None and change.version < change.previous_version
    return older or "rollback" in change.reason.lower()


def _utc(ms: int) -> str:
    return utc_text(ms, "%Y-%m-%d %H:%M:%S UTC")


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _table(headers: Sequence[str], rows: Iterable[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + \
        "\n</tbody>\n</table>"


def _row(cells: Iterable[str], css_class: str = "") -> str:
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<tr{attribute}>" + "".join(cells) + "</tr>"


def _summary(snapshot: RegistrySnapshot) -> str:
    records = snapshot.records
    champion = next((r for r in records if r.status == CHAMPION), None)
    if champion is None:
        headline = "No champion: no model is being served."
    else:
        auc = champion.metrics_map.get("roc_auc")
        headline = (f"Champion: <strong>version {champion.version}</strong> "
                    f"(holdout ROC AUC {_number(auc)}, feature collection "
                    f"{champion.feature_collection_id}).")
    counts = {status: sum(r.status == status for r in records) for status in sorted(STATUSES)}
    breakdown = ", ".join(f"{n} {escape(status)}" for status, n in counts.items() if n)
    parts = ["<h2>Summary</h2>", f"<p>{headline}</p>",
             f"<p>{len(records)} model version{'s' if len(records) != 1 else ''}"
             f"{f' ({breakdown})' if breakdown else ''}.</p>"]
    history = snapshot.champion_history
    rollbacks = sum(is_rollback(change) for change in history)
    parts.append(f"<h3>Champion history</h3><p>{len(history)} promotion"
                 f"{'s' if len(history) != 1 else ''}, {rollbacks} rollback"
                 f"{'s' if rollbacks != 1 else ''}.</p>")
    if history:
        rows = []
        for change in history:
            kind = ('<span class="rollback">rollback</span>' if is_rollback(change)
                    else "first" if change.previous_version is None else "promotion")
            previous = "–" if change.previous_version is None else str(change.previous_version)
            rows.append(_row((f'<td class="nowrap">{_utc(change.at_ms)}</td>',
                              f"<td>{kind}</td>",
                              f'<td class="num">{change.version}</td>',
                              f'<td class="num">{previous}</td>',
                              f"<td>{escape(change.reason)}</td>")))
        parts.append(_table(("When", "Kind", "Champion", "Replaced", "Reason"), rows))
    return "\n".join(parts)


def _metrics_table(records: Sequence[ModelRecord],
                   evaluations: dict[int, Evaluation]) -> str:
    headers = ("Version", "Status", *(label for _, label in _METRICS),
               "Champion ROC AUC (same holdout)", "Train rows", "Holdout rows (positives)")
    rows = []
    for record in records:
        metrics = record.metrics_map
        cells = [f'<td class="num">{record.version}</td>', f"<td>{escape(record.status)}</td>"]
        cells += [f'<td class="num">{_number(metrics.get(name))}</td>' for name, _ in _METRICS]
        champion_auc = metrics.get("champion_roc_auc")
        against = metrics.get("champion_version")
        versus = "" if champion_auc is None or against is None else f" (v{int(against)})"
        cells.append(f'<td class="num">{_number(champion_auc)}{versus}</td>')
        train = metrics.get("n_train")
        cells.append(f'<td class="num">{"–" if train is None else int(train)}</td>')
        evaluation = evaluations[record.version]
        rows_seen = evaluation.holdout_rows
        if rows_seen is None and metrics.get("n_test") is not None:
            rows_seen = int(metrics["n_test"])
        holdout = "–" if rows_seen is None else str(rows_seen)
        if evaluation.holdout_positives is not None:
            holdout += f" ({evaluation.holdout_positives})"
        cells.append(f'<td class="num">{holdout}</td>')
        rows.append(_row(cells, "champion" if record.status == CHAMPION else ""))
    return "<h2>Metrics per version (holdout)</h2>\n" + _table(headers, rows)


def _plotted(records: Sequence[ModelRecord], evaluations: dict[int, Evaluation]
             ) -> list[ModelRecord]:
    """Versions with a curve, at most ``MAX_PLOTTED_VERSIONS``: the champion and the newest."""
    with_curves = [r for r in records
                   if evaluations[r.version].roc or evaluations[r.version].pr]
    if len(with_curves) <= MAX_PLOTTED_VERSIONS:
        return with_curves
    champions = [r for r in with_curves if r.status == CHAMPION]
    others = [r for r in with_curves if r.status != CHAMPION]
    chosen = champions + others[-(MAX_PLOTTED_VERSIONS - len(champions)):]
    return sorted(chosen, key=lambda r: r.version)


def _chart(records: Sequence[ModelRecord], curves: dict[int, Curve], title: str,
           x_label: str, y_label: str, roc: bool) -> str:
    """One chart of ``curves``; a version keeps its colour across charts (its index)."""
    series = []
    for index, record in enumerate(records):
        curve = curves.get(record.version)
        if curve is None:
            continue
        champion = record.status == CHAMPION
        auc = record.metrics_map.get("roc_auc")
        label = f"v{record.version}{' (champion)' if champion else ''}"
        if roc and auc is not None:  # on the PR chart "AUC" would read as the PR area
            label += f" AUC {auc:.3f}"
        series.append(Series(label, curve.xs, curve.ys, PALETTE[index % len(PALETTE)],
                             champion))
    if not series:
        return f'<p class="note">{escape(title)}: no curves recorded.</p>'
    return line_chart(series, title=title, x_label=x_label, y_label=y_label, diagonal=roc)


def _curves(records: Sequence[ModelRecord], evaluations: dict[int, Evaluation]) -> str:
    parts = ["<h2>ROC and precision–recall curves (holdout)</h2>"]
    plotted = _plotted(records, evaluations)
    with_curves = sum(1 for r in records if evaluations[r.version].roc
                      or evaluations[r.version].pr)
    if not plotted:
        parts.append('<p class="note">No curves recorded for any version.</p>')
    else:
        if len(plotted) < with_curves:
            parts.append(f'<p class="note">Showing {len(plotted)} of {with_curves} versions '
                         "with curves: the champion and the newest.</p>")
        roc = {r.version: c for r in plotted if (c := evaluations[r.version].roc)}
        pr = {r.version: c for r in plotted if (c := evaluations[r.version].pr)}
        parts.append('<div class="charts">')
        parts.append(_chart(plotted, roc, "ROC curve", "False positive rate",
                            "True positive rate", roc=True))
        parts.append(_chart(plotted, pr, "Precision–recall curve", "Recall", "Precision",
                            roc=False))
        parts.append("</div>")
    missing = []
    for record in records:
        evaluation = evaluations[record.version]
        if evaluation.roc is None and evaluation.pr is None:
            why = "; ".join(evaluation.problems) or "no curves recorded"
            missing.append(f"<li>Version {record.version}: {escape(why)}</li>")
        elif evaluation.problems:
            missing.append(f"<li>Version {record.version}: "
                           f"{escape('; '.join(evaluation.problems))}</li>")
    if missing:
        parts.append("<ul>\n" + "\n".join(missing) + "\n</ul>")
    return "\n".join(parts)


def _lineage(records: Sequence[ModelRecord]) -> str:
    rows = [_row(lineage_cells(record), "champion" if record.status == CHAMPION else "")
            for record in records]
    return "<h2>Lineage</h2>\n" + _table(LINEAGE_COLUMNS, rows)


def _status_log(snapshot: RegistrySnapshot) -> str:
    changes = sorted((change for _, log in snapshot.status_logs for change in log),
                     key=lambda c: (c.at_ms, c.version))
    rows = [_row((f'<td class="nowrap">{_utc(c.at_ms)}</td>', f'<td class="num">{c.version}</td>',
                  f"<td>{escape(c.status)}</td>", f"<td>{escape(c.reason)}</td>"))
            for c in changes]
    return ("<h2>Status log</h2>\n<details><summary>" + f"{len(rows)} status changes"
            "</summary>\n" + _table(("When", "Version", "Status", "Reason"), rows)
            + "\n</details>")


def render_report(snapshot: RegistrySnapshot) -> str:
    """The whole report as one HTML document (UTF-8 text, no external resource)."""
    records = snapshot.records
    body = [f"<h1>Model registry report</h1>\n<p class=\"note\">{escape(snapshot.source)}, "
            f"read {_utc(snapshot.generated_at_ms)}.</p>"]
    if not records:
        body.append("<p>No model has been registered yet.</p>")
    else:
        evaluations = {r.version: parse_evaluation(r.evaluation)
                       for r in records}
        body += [_summary(snapshot), _metrics_table(records, evaluations),
                 _curves(records, evaluations), _lineage(records), _status_log(snapshot)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>Model registry report</title>\n"
            f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")
