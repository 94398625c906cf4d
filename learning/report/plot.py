"""A small SVG line chart on the unit square: ROC and precision–recall curves for the report.

Why our own: the report must be one self-contained file with no script and no new
dependency, and the curves only ever live on [0, 1] x [0, 1]; a fixed frame with
ticks, a grid, an optional diagonal and a legend beside the plot is ~100 lines.
Every string is escaped here, so callers may pass untrusted labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["FRAME", "PALETTE", "Frame", "Series", "line_chart"]

#: Okabe–Ito colours (distinguishable with the common colour-vision deficiencies), then grey.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#7F7F7F")

_TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
_LEGEND_CHARS = 26  # a longer legend label is cut, so it never runs off the image


@dataclass(frozen=True, slots=True)
class Series:
    """One line: its legend label, its points (same length) and colour; ``emphasis`` draws it
    thicker (the champion)."""

    label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    color: str
    emphasis: bool = False


@dataclass(frozen=True, slots=True)
class Frame:
    """Where the unit square sits in the image (pixels), and the image's size."""

    width: int = 600
    height: int = 400
    left: int = 62
    top: int = 34
    size: int = 300  # the plot area is a size x size square: equal scales on both axes

    def to_pixels(self, x: float, y: float) -> tuple[float, float]:
        """Data (x, y) in [0, 1]² to image pixels (y grows downwards in SVG)."""
        return self.left + x * self.size, self.top + (1.0 - y) * self.size

    def to_data(self, px: float, py: float) -> tuple[float, float]:
        """Image pixels back to data: the inverse of ``to_pixels``."""
        return (px - self.left) / self.size, 1.0 - (py - self.top) / self.size


FRAME = Frame()


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def _points(series: Series, frame: Frame) -> str:
    pairs = (frame.to_pixels(_clip(x), _clip(y)) for x, y in zip(series.xs, series.ys,
                                                                  strict=True))
    return " ".join(f"{px:.1f},{py:.1f}" for px, py in pairs)


def _axes(frame: Frame, x_label: str, y_label: str) -> list[str]:
    left, top, size = frame.left, frame.top, frame.size
    bottom, right = top + size, left + size
    parts = [f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="#ffffff" '
             'stroke="#333333" stroke-width="1"/>']
    for tick in _TICKS:
        px, py = frame.to_pixels(tick, tick)
        label = f"{tick:g}"
        if 0.0 < tick < 1.0:  # grid lines inside the frame only
            parts.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{bottom}" '
                         'stroke="#e3e3e3" stroke-width="1"/>')
            parts.append(f'<line x1="{left}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" '
                         'stroke="#e3e3e3" stroke-width="1"/>')
        parts.append(f'<line x1="{px:.1f}" y1="{bottom}" x2="{px:.1f}" y2="{bottom + 5}" '
                     'stroke="#333333"/>')
        parts.append(f'<text x="{px:.1f}" y="{bottom + 18}" text-anchor="middle">{label}</text>')
        parts.append(f'<line x1="{left - 5}" y1="{py:.1f}" x2="{left}" y2="{py:.1f}" '
                     'stroke="#333333"/>')
        parts.append(f'<text x="{left - 8}" y="{py + 4:.1f}" text-anchor="end">{label}</text>')
    middle = left + size / 2
    parts.append(f'<text x="{middle:.1f}" y="{bottom + 40}" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    # translate-then-rotate rather than rotate(angle cx cy): some SVG renderers ignore the centre.
    parts.append(f'<text x="0" y="0" text-anchor="middle" transform="translate({left - 44} '
                 f'{top + size / 2:.1f}) rotate(-90)">{escape(y_label)}</text>')
    return parts


def _legend(series: Sequence[Series], frame: Frame) -> list[str]:
    x = frame.left + frame.size + 20
    parts = []
    for index, line in enumerate(series):
        y = frame.top + 12 + index * 22
        width = 4 if line.emphasis else 2
        label = line.label if len(line.label) <= _LEGEND_CHARS else (
            line.label[: _LEGEND_CHARS - 1] + "…")
        parts.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" '
                     f'stroke="{escape(line.color)}" stroke-width="{width}"/>')
        parts.append(f'<text x="{x + 30}" y="{y + 4}">{escape(label)}</text>')
    return parts


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
               diagonal: bool = False, frame: Frame = FRAME) -> str:
    """An ``<svg>`` element: the unit square with ticks, one polyline per series (points
    clipped to [0, 1]), an optional dashed chance diagonal, and a legend on the right."""
    parts = [f'<svg class="chart" width="{frame.width}" height="{frame.height}" '
             f'viewBox="0 0 {frame.width} {frame.height}" role="img" '
             f'aria-label="{escape(title)}" font-family="sans-serif" font-size="12" '
             'fill="#222222">',
             f'<title>{escape(title)}</title>',
             f'<rect width="{frame.width}" height="{frame.height}" fill="#ffffff"/>',
             f'<text x="{frame.left + frame.size / 2:.1f}" y="{frame.top - 14}" '
             f'text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>']
    parts += _axes(frame, x_label, y_label)
    if diagonal:
        (x0, y0), (x1, y1) = frame.to_pixels(0.0, 0.0), frame.to_pixels(1.0, 1.0)
        parts.append(f'<line class="chance" x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" '
                     f'y2="{y1:.1f}" stroke="#999999" stroke-width="1" '
                     'stroke-dasharray="5,4"/>')
    # Emphasised lines last, so the champion is drawn on top of the others.
    for line in sorted(series, key=lambda s: s.emphasis):
        width = 3 if line.emphasis else 1.6
        parts.append(f'<polyline data-label="{escape(line.label)}" fill="none" '
                     f'stroke="{escape(line.color)}" stroke-width="{width}" '
                     f'stroke-linejoin="round" points="{_points(line, frame)}"/>')
    parts += _legend(series, frame)
    parts.append("</svg>")
    return "\n".join(parts)
