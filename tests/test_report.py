"""The registry report: pure rendering from synthetic records, and ``rml report`` on a real
registry file (no daemon). The end-to-end run against a daemon is in test_report_e2e.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from learning.report.evaluation import parse_evaluation
from learning.report.page import MAX_PLOTTED_VERSIONS, RegistrySnapshot, is_rollback, render_report
from learning.report.plot import FRAME
from storage.registry import ChampionChange, ModelRecord, StatusChange
from storage.sqlite.registry import SQLiteModelRegistry

HASH = "b899080fa64c20253b9ffe2ad72f4bbc54dbab91d281be279574654cbf5229b1"
T0 = 1_795_782_141_916  # 2026-11-27 09:02:21 UTC

_VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr"})
# SVG elements the plot writes self-closed.
_SELF_CLOSED = frozenset({"rect", "line", "polyline", "path", "circle"})


class _Document(HTMLParser):
    """Parses the page, checks every element is closed in order, and keeps what tests read."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.svgs: list[list[tuple[str, dict[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "svg":
            self.svgs.append([])
        if "svg" in self.stack or tag == "svg":
            self.svgs[-1].append((tag, dict(attrs)))
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if "svg" in self.stack:
            self.svgs[-1].append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack[-1:] != ["style"]:
            self.text.append(data)


def parse(html: str) -> _Document:
    document = _Document()
    document.feed(html)
    document.close()
    assert document.errors == [] and document.stack == [], (document.errors, document.stack)
    return document


def curves(offset: float) -> dict[str, Any]:
    """A plausible evaluation record: an ROC curve bowed by ``offset`` and a PR curve."""
    fpr = [i / 10 for i in range(11)]
    tpr = [min(1.0, x + offset * (1 - x)) for x in fpr]
    recall = [i / 10 for i in range(11)]
    precision = [1.0 - (0.5 - offset / 2) * r for r in recall]
    return {"roc": {"fpr": fpr, "tpr": tpr, "thresholds": [1 - x for x in fpr]},
            "pr": {"precision": precision, "recall": recall},
            "holdout": {"rows": 700, "positives": 280}, "profile": {}}


def lineage(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "code_version": "0.1.0+f81c26b781f3dbe51c6c790c9378d4841aa6fd3d",
        "created_at_ms": T0,
        "facts": {"content_hash": HASH, "first_timestamp": 1_795_305_600_000,
                  "last_timestamp": 1_795_737_599_999, "outcomes": 2896, "readings": 28800},
        "feature_collection": {"id": 1, "features": ["animal_estimate", "zebra_share"]},
        "job": {"model_type": "decision_tree", "hyperparameters": {"max_depth": 6},
                "seed": 7, "test_fraction": 0.25, "window_ms": 21_600_000},
        "metrics": {},
    }
    data.update(overrides)
    return data


def record(version: int, status: str = "retired", *, evaluation: Any = None,
           lineage_text: str | None = None, reason: str = "registered",
           **metrics: float) -> ModelRecord:
    values = {"accuracy": 0.71, "precision": 0.68, "recall": 0.69, "f1": 0.688,
              "roc_auc": 0.78, "log_loss": 0.70, "n_train": 2175.0, "n_test": 721.0}
    values.update(metrics)
    text = lineage_text if lineage_text is not None else json.dumps(lineage())
    evaluation_text = evaluation if isinstance(evaluation, str) else json.dumps(evaluation or {})
    return ModelRecord(version, T0 + version * 60_000, status, 1,
                       json.dumps(lineage()["job"]), tuple(sorted(values.items())), text,
                       "0" * 64, reason, evaluation=evaluation_text)


def snapshot(*records: ModelRecord, history: tuple[ChampionChange, ...] = ()) -> RegistrySnapshot:
    logs = tuple((r.version, (StatusChange(r.version, "candidate", "registered",
                                           r.created_at_ms),)) for r in records)
    return RegistrySnapshot(records, history, logs, "/data/models.sqlite", T0 + 3_600_000)


def polylines(svg: list[tuple[str, dict[str, str | None]]]) -> dict[str, list[float]]:
    """Each polyline's points, back in data coordinates (x0, y0, x1, y1, ...), by its label."""
    lines = {}
    for tag, attrs in svg:
        if tag == "polyline":
            pairs = (p.split(",") for p in str(attrs["points"]).split())
            lines[str(attrs["data-label"])] = [
                value for x, y in pairs for value in FRAME.to_data(float(x), float(y))]
    return lines


def flat(xs: list[float], ys: list[float]) -> list[float]:
    return [value for pair in zip(xs, ys, strict=True) for value in pair]


def svg_title(svg: list[tuple[str, dict[str, str | None]]]) -> str:
    return str(svg[0][1]["aria-label"])


def test_report_is_one_well_formed_page_with_every_version_metric_and_lineage() -> None:
    records = (record(1, accuracy=0.6512, roc_auc=0.7101),
               record(2, "champion", accuracy=0.7345, roc_auc=0.8123, champion_roc_auc=0.7011,
                      champion_version=1.0),
               record(3, "rejected", roc_auc=0.6999, champion_roc_auc=0.8001,
                      champion_version=2.0))
    html = render_report(snapshot(*records, history=(
        ChampionChange(1, None, "first model", T0), ChampionChange(2, 1, "better", T0 + 1))))
    document = parse(html)
    text = " ".join(" ".join(document.text).split())
    assert html.startswith("<!DOCTYPE html>")
    assert "Champion: version 2 (holdout ROC AUC 0.8123" in text
    assert "3 model versions (1 champion, 1 rejected, 1 retired)" in text
    for value in ("0.6512", "0.7101", "0.7345", "0.8123", "0.6999", "0.7011 (v1)",
                  "0.8001 (v2)", "0.6880", "0.7000"):
        assert value in text, value
    rows = re.findall(r"<tr[^>]*>\s*<td class=\"num\">(\d+)</td>", html)
    assert rows.count("1") >= 2 and rows.count("2") >= 2 and rows.count("3") >= 2
    assert HASH[:12] in text and f'title="{HASH}"' in html
    assert "28,800 readings 2,896 outcomes" in text
    assert "2026-11-22 00:00 – 2026-11-26 23:59" in text
    assert "decision_tree; max_depth=6; seed=7; test_fraction=0.25; window 6 h" in text
    assert "0.1.0+f81c26b781f3" in text
    assert "rejected: registered" in text


def test_the_page_needs_nothing_from_outside() -> None:
    html = render_report(snapshot(record(1, "champion", evaluation=curves(0.5))))
    document = parse(html)
    assert not {"script", "link", "img", "iframe", "object"} & {t for t, _ in document.tags}
    assert "http:" not in html and "https:" not in html and "url(" not in html
    assert not any("src" in attrs or "href" in attrs for _, attrs in document.tags)


def test_each_curve_kind_is_an_svg_whose_polylines_are_the_recorded_points() -> None:
    first, second = curves(0.3), curves(0.6)
    html = render_report(snapshot(record(1, evaluation=first, roc_auc=0.65),
                                  record(2, "champion", evaluation=second, roc_auc=0.8)))
    svgs = {svg_title(svg): svg for svg in parse(html).svgs}
    assert set(svgs) == {"ROC curve", "Precision–recall curve"}
    roc = polylines(svgs["ROC curve"])
    assert set(roc) == {"v1 AUC 0.650", "v2 (champion) AUC 0.800"}
    for label, evaluation in (("v1 AUC 0.650", first), ("v2 (champion) AUC 0.800", second)):
        expected = flat(evaluation["roc"]["fpr"], evaluation["roc"]["tpr"])
        assert roc[label] == pytest.approx(expected, abs=1e-3)
    pr = polylines(svgs["Precision–recall curve"])
    assert set(pr) == {"v1", "v2 (champion)"}
    expected_pr = flat(second["pr"]["recall"], second["pr"]["precision"])
    assert pr["v2 (champion)"] == pytest.approx(expected_pr, abs=1e-3)


def test_roc_chart_has_the_chance_diagonal_and_a_legend_entry_per_version() -> None:
    html = render_report(snapshot(record(1, evaluation=curves(0.3)),
                                  record(2, "champion", evaluation=curves(0.6))))
    svgs = {svg_title(svg): svg for svg in parse(html).svgs}
    chance = [a for t, a in svgs["ROC curve"] if t == "line" and a.get("class") == "chance"]
    assert len(chance) == 1
    start = FRAME.to_data(float(str(chance[0]["x1"])), float(str(chance[0]["y1"])))
    end = FRAME.to_data(float(str(chance[0]["x2"])), float(str(chance[0]["y2"])))
    assert start == pytest.approx((0, 0), abs=1e-3) and end == pytest.approx((1, 1), abs=1e-3)
    assert not [a for t, a in svgs["Precision–recall curve"] if a.get("class") == "chance"]
    legend = re.findall(r"<text[^>]*>(v\d[^<]*)</text>", html)
    assert legend == ["v1 AUC 0.780", "v2 (champion) AUC 0.780", "v1", "v2 (champion)"]


def test_a_version_without_curves_says_so_instead_of_an_image() -> None:
    html = render_report(snapshot(record(1), record(2, "champion", evaluation=curves(0.5))))
    text = " ".join(parse(html).text)
    assert "Version 1: no curves recorded" in text
    svgs = {svg_title(svg): polylines(svg) for svg in parse(html).svgs}
    assert set(svgs["ROC curve"]) == {"v2 (champion) AUC 0.780"}

    only_old = render_report(snapshot(record(1, "champion")))
    assert "<svg" not in only_old
    assert "No curves recorded for any version." in only_old


def test_hostile_strings_from_the_registry_are_escaped() -> None:
    attack = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    hostile = lineage(code_version=attack,
                      feature_collection={"id": 1, "features": [attack]},
                      job={"model_type": attack, "hyperparameters": {attack: attack}},
                      facts={"content_hash": f'"><b>{attack}', "readings": 1, "outcomes": 1,
                             "first_timestamp": T0, "last_timestamp": T0})
    records = (record(1, "champion", lineage_text=json.dumps(hostile), reason=attack,
                      evaluation={"roc": {"fpr": attack, "tpr": []}}),)
    html = render_report(snapshot(*records, history=(ChampionChange(1, None, attack, T0),)))
    document = parse(html)
    assert not {"script", "img", "b"} & {t for t, _ in document.tags}
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert attack in " ".join(document.text)  # shown as text, never as markup


def test_unreadable_lineage_and_evaluation_spoil_only_their_own_cells() -> None:
    html = render_report(snapshot(
        record(1, lineage_text="{not json", evaluation="[1, 2"),
        record(2, lineage_text='["a list"]', evaluation={"roc": {"fpr": [0, 1], "tpr": [0]}}),
        record(3, "champion", evaluation=curves(0.5))))
    text = " ".join(parse(html).text)
    assert "Version 1: evaluation is not valid JSON" in text
    assert "Version 2: roc.fpr and roc.tpr differ in length" in text
    assert HASH[:12] in text  # version 3's lineage is intact
    assert text.count("?") >= 8  # versions 1 and 2: facts, range, hash, code, ... unknown


@pytest.mark.parametrize(("text", "problem"), [
    ('{"roc": {"fpr": [0, 0.5, 1.5], "tpr": [0, 1, 1]}}', "roc.fpr has a value outside [0, 1]"),
    ('{"roc": {"fpr": [0, true], "tpr": [0, 1]}}', "roc.fpr holds a non-number"),
    ('{"roc": {"fpr": [0, 1], "tpr": "01"}}', "roc.tpr is not a list"),
    ('{"pr": {"precision": [1], "recall": [0]}}', "pr has fewer than two points"),
    ('{"pr": [1, 2]}', "pr is not an object"),
    ('{"roc": {"fpr": [], "tpr": [], "thresholds": []}}', "roc curve is empty"),
    ('"roc"', "evaluation is not a JSON object"),
])
def test_malformed_evaluation_is_a_named_problem_not_an_exception(text: str,
                                                                  problem: str) -> None:
    evaluation = parse_evaluation(text)
    assert evaluation.problems == (problem,)
    assert evaluation.roc is None and evaluation.pr is None


def test_recorded_evaluation_is_read_with_its_holdout() -> None:
    evaluation = parse_evaluation(json.dumps(curves(0.5)))
    assert evaluation.problems == ()
    assert evaluation.roc is not None and evaluation.roc.xs[:3] == (0.0, 0.1, 0.2)
    assert evaluation.pr is not None and evaluation.pr.xs[-1] == 1.0
    assert (evaluation.holdout_rows, evaluation.holdout_positives) == (700, 280)
    assert parse_evaluation("{}").roc is None and parse_evaluation("{}").problems == ()


def test_rollbacks_are_counted_and_marked_in_the_champion_history() -> None:
    history = (ChampionChange(1, None, "first model", T0),
               ChampionChange(2, 1, "ROC AUC 0.81 >= champion 0.78", T0 + 1000),
               ChampionChange(1, 2, "operator request", T0 + 2000))
    assert [is_rollback(c) for c in history] == [False, False, True]
    assert is_rollback(ChampionChange(3, 2, "Rollback to a known good model", T0))
    html = render_report(snapshot(record(1, "champion"), record(2), history=history))
    text = " ".join(" ".join(parse(html).text).split())
    assert "3 promotions, 1 rollback." in text
    assert html.count('<span class="rollback">rollback</span>') == 1


def test_many_versions_plot_the_champion_and_the_newest() -> None:
    count = MAX_PLOTTED_VERSIONS + 4
    records = [record(v, "champion" if v == 2 else "retired", evaluation=curves(0.5))
               for v in range(1, count + 1)]
    html = render_report(snapshot(*records))
    svgs = {svg_title(svg): polylines(svg) for svg in parse(html).svgs}
    plotted = {label.split()[0] for label in svgs["Precision–recall curve"]}
    newest = {f"v{v}" for v in range(count - MAX_PLOTTED_VERSIONS + 2, count + 1)}
    assert plotted == {"v2"} | newest
    assert f"Showing {MAX_PLOTTED_VERSIONS} of {count} versions with curves" in html


def test_an_empty_registry_gives_a_page_that_says_so() -> None:
    html = render_report(snapshot())
    assert "No model has been registered yet." in " ".join(parse(html).text)


# -- the CLI, on a real registry file, without a daemon ------------------------------------

def _rml(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RML_")}
    env["RML_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "run_system", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def _register(registry: SQLiteModelRegistry, evaluation: dict[str, Any] | None,
              status: str, at_ms: int) -> int:
    return registry.register(feature_collection_id=1, job=lineage()["job"],
                             metrics={"roc_auc": 0.8, "accuracy": 0.7}, lineage=lineage(),
                             artifact=b"not a model", created_at_ms=at_ms, status=status,
                             evaluation=evaluation)


def test_rml_report_writes_the_registry_to_the_default_path_and_to_output(
        tmp_path: Path) -> None:
    registry = SQLiteModelRegistry(tmp_path / "models.sqlite")
    _register(registry, None, "champion", T0)
    _register(registry, curves(0.5), "champion", T0 + 1000)
    registry.close()

    done = _rml(tmp_path, "report")
    assert done.returncode == 0, done.stderr
    default = tmp_path / "report.html"
    assert done.stdout.strip() == f"wrote {default} (2 model versions)"
    page = parse(default.read_text(encoding="utf-8"))
    assert [svg_title(svg) for svg in page.svgs] == ["ROC curve", "Precision–recall curve"]
    assert "Version 1: no curves recorded" in " ".join(page.text)

    output = tmp_path / "elsewhere" / "r.html"
    assert _rml(tmp_path, "report", "--output", str(output)).returncode == 0
    assert output.read_text(encoding="utf-8") .count("<svg") == 2
    assert [p.name for p in output.parent.iterdir()] == ["r.html"]  # no temporary left


def test_rml_report_without_a_registry_is_a_clear_error(tmp_path: Path) -> None:
    done = _rml(tmp_path, "report")
    assert done.returncode == 1
    assert "no model registry to report on" in done.stderr
    assert not (tmp_path / "report.html").exists()
