"""The model registry as one HTML page (``rml report``): the page, its charts, its tables.

``page`` renders the page from a snapshot of the registry; ``plot`` draws the ROC and
precision–recall curves as SVG; ``evaluation`` and ``lineage_row`` read a model's recorded
evaluation and lineage defensively. The names ``learning.report`` had as one module are
re-exported here.
"""

from learning.report.page import MAX_PLOTTED_VERSIONS, RegistrySnapshot, is_rollback, render_report

__all__ = ["MAX_PLOTTED_VERSIONS", "RegistrySnapshot", "is_rollback", "render_report"]
