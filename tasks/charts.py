"""Charts for artifacts: small SVG drawings the Prefect UI shows inline.

The UI renders a markdown artifact through its own sanitiser: an inline ``<svg>`` element is
dropped, but a markdown image whose source is a ``data:image/svg+xml;base64,...`` URI is kept and
shown at its natural size (checked in Chromium against Prefect 3.7's UI,
``tests/deployments/test_ui_artifacts.py``). So a chart here is an SVG document, and
:func:`markdown_image` wraps it for an artifact. Plain SVG needs no plotting library: no
matplotlib to install beside torch, nothing to import at flow start.

Every value drawn is finite: missing and non-finite points (``None``, ``nan``, ``inf``) are left
out, never drawn or printed. The drawing has its own white background, so it reads the same in the
UI's light and dark themes.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from html import escape

Point = tuple[float, float]

WIDTH = 760
LEFT, RIGHT, TOP, BOTTOM = 78, 24, 34, 46
FONT = 'font-family="DejaVu Sans, Arial, sans-serif"'
TRAIN, EVAL, RATE = "#1f77b4", "#d62728", "#2ca02c"
SERVING, CANDIDATE = "#7f7f7f", "#ff7f0e"


def finite_points(pairs: Iterable[Sequence[object]] | None) -> list[Point]:
    """``[[x, y], ...]`` as (x, y) floats, leaving out pairs with a missing or non-finite value."""
    out: list[Point] = []
    for pair in pairs or []:
        try:
            x, y = float(pair[0]), float(pair[1])  # type: ignore[arg-type]
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            out.append((x, y))
    return out


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi];
    ``integer``: whole numbers only (steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw and not (integer and (m * power) % 1))
    first = math.floor(lo / step) * step
    ticks, v = [], first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def tick_label(v: float, ticks: Sequence[float]) -> str:
    """A tick's text: as many decimals as the tick spacing needs (``2.0e-04``, ``1.5``, ``40``)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(v) or 1.0
    if v == 0:
        return "0"
    if step < 1e-3 or abs(v) >= 1e6:
        return f"{v:.1e}"
    decimals = max(0, -math.floor(math.log10(step)) + (0 if round(step / 10 ** math.floor(math.log10(step)), 6) in (1, 2, 5) else 1))
    return f"{v:.{decimals}f}"


def thin(points: list[Point], most: int = 600) -> list[Point]:
    """At most ``most`` points, evenly picked, the last one kept (a long run stays a small image)."""
    if len(points) <= most:
        return points
    stride = math.ceil(len(points) / most)
    kept = points[::stride]
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]


class _Panel:
    """One plotting area: x and y scales, axes with ticks and labels."""

    def __init__(self, top: float, height: float, xs: Sequence[float], ys: Sequence[float], x_label: str, y_label: str,
                 x_ticks: Sequence[float] | None = None) -> None:
        self.top, self.height = top, height
        self.x_ticks = list(x_ticks) if x_ticks is not None else nice_ticks(min(xs), max(xs), 6)
        self.y_ticks = nice_ticks(min(ys), max(ys), 5)
        self.x0, self.x1 = self.x_ticks[0], self.x_ticks[-1]
        self.y0, self.y1 = self.y_ticks[0], self.y_ticks[-1]
        self.x_label, self.y_label = x_label, y_label
        self.plot_w = WIDTH - LEFT - RIGHT

    def x(self, v: float) -> float:
        return LEFT + (v - self.x0) / ((self.x1 - self.x0) or 1) * self.plot_w

    def y(self, v: float) -> float:
        return self.top + self.height - (v - self.y0) / ((self.y1 - self.y0) or 1) * self.height

    def axes(self) -> list[str]:
        bottom, parts = self.top + self.height, []
        for t in self.y_ticks:
            y = self.y(t)
            parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#e6e6e6"/>')
            parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" {FONT}>'
                         f'{escape(tick_label(t, self.y_ticks))}</text>')
        for t in self.x_ticks:
            x = self.x(t)
            parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#333"/>')
            parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11" {FONT}>'
                         f'{escape(tick_label(t, self.x_ticks))}</text>')
        parts.append(f'<rect x="{LEFT}" y="{self.top}" width="{self.plot_w}" height="{self.height}" fill="none" stroke="#333"/>')
        parts.append(f'<text x="{LEFT + self.plot_w / 2:.1f}" y="{bottom + 32}" text-anchor="middle" font-size="12" {FONT}>'
                     f'{escape(self.x_label)}</text>')
        cy = self.top + self.height / 2
        parts.append(f'<text x="16" y="{cy:.1f}" transform="rotate(-90 16 {cy:.1f})" text-anchor="middle" font-size="12" {FONT}>'
                     f'{escape(self.y_label)}</text>')
        return parts

    def line(self, points: Sequence[Point], colour: str, dots: bool = False) -> list[str]:
        path = " ".join(f"{self.x(px):.1f},{self.y(py):.1f}" for px, py in points)
        parts = [f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'] if len(points) > 1 else []
        if dots or len(points) == 1:
            parts += [f'<circle cx="{self.x(px):.1f}" cy="{self.y(py):.1f}" r="3.5" fill="{colour}"/>' for px, py in points]
        return parts


def _legend(items: Sequence[tuple[str, str]], x: float, y: float) -> list[str]:
    parts = []
    for label, colour in items:
        parts.append(f'<line x1="{x}" y1="{y - 4}" x2="{x + 18}" y2="{y - 4}" stroke="{colour}" stroke-width="3"/>')
        parts.append(f'<text x="{x + 24}" y="{y}" font-size="12" {FONT}>{escape(label)}</text>')
        x += 34 + 7 * len(label)
    return parts


def _document(height: float, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" viewBox="0 0 {WIDTH} {height:.0f}">'
            f'<title>{escape(title)}</title><rect width="100%" height="100%" fill="#ffffff"/>'
            f'<text x="{LEFT}" y="20" font-size="14" font-weight="bold" {FONT}>{escape(title)}</text>'
            + "".join(body) + "</svg>")


def loss_chart(title: str, loss: Iterable[Sequence[object]] | None, eval_loss: Iterable[Sequence[object]] | None = None,
               learning_rate: Iterable[Sequence[object]] | None = None) -> str | None:
    """An SVG of a tuning run: training loss (and eval loss) per step above, the learning rate per
    step below, on one step axis. None when there is no finite loss to draw."""
    train, evals, rate = thin(finite_points(loss)), finite_points(eval_loss), thin(finite_points(learning_rate))
    if not train and not evals:
        return None
    xs = [p[0] for p in (*train, *evals, *rate)]
    x_ticks = nice_ticks(min(0.0, min(xs)), max(xs), 6, integer=True)
    top = _Panel(TOP + 14, 260, xs, [p[1] for p in (*train, *evals)], "step", "loss (nats per token)", x_ticks)
    body = top.axes() + top.line(train, TRAIN) + top.line(evals, EVAL, dots=True)
    body += _legend([("training loss", TRAIN)] + ([("eval loss", EVAL)] if evals else []), LEFT + 8, TOP + 6)
    height = top.top + top.height + BOTTOM
    if rate:
        low = _Panel(height + 8, 110, xs, [0.0, *[p[1] for p in rate]], "step", "learning rate", x_ticks)
        body += low.axes() + low.line(rate, RATE)
        height = low.top + low.height + BOTTOM
    return _document(height, title, body)


def scores_chart(title: str, metrics: Sequence[tuple[str, float | None, float | None]],
                 names: tuple[str, str] = ("serving", "candidate")) -> str | None:
    """An SVG with one panel per metric, two bars side by side in each (``names``: serving, then
    candidate). A metric with a missing or non-finite value is left out; None when none is left."""
    shown = [(label, float(a), float(b)) for label, a, b in metrics
             if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))]
    if not shown:
        return None
    gap, height = 40, 230
    panel_w = (WIDTH - LEFT - RIGHT - gap * (len(shown) - 1)) / len(shown)
    base = TOP + 20 + height
    body = _legend([(names[0], SERVING), (names[1], CANDIDATE)], LEFT + 8, TOP + 6)
    for i, (label, a, b) in enumerate(shown):
        x0 = LEFT + i * (panel_w + gap)
        ticks = nice_ticks(min(0.0, a, b), max(a, b, 1e-12), 5)
        lo, hi = ticks[0], ticks[-1]

        def y(v: float, lo: float = lo, hi: float = hi) -> float:
            return base - (v - lo) / ((hi - lo) or 1) * height

        for t in ticks:
            body.append(f'<line x1="{x0:.1f}" y1="{y(t):.1f}" x2="{x0 + panel_w:.1f}" y2="{y(t):.1f}" stroke="#e6e6e6"/>')
            body.append(f'<text x="{x0 - 6:.1f}" y="{y(t) + 4:.1f}" text-anchor="end" font-size="11" {FONT}>'
                        f'{escape(tick_label(t, ticks))}</text>')
        bar_w = panel_w / 5
        for j, (value, colour, name) in enumerate(((a, SERVING, names[0]), (b, CANDIDATE, names[1]))):
            bx = x0 + panel_w * (0.2 + 0.4 * j)
            top, bottom = sorted((y(value), y(0.0)))
            body.append(f'<rect x="{bx:.1f}" y="{top:.1f}" width="{bar_w:.1f}" height="{max(bottom - top, 0.5):.1f}" fill="{colour}"/>')
            body.append(f'<text x="{bx + bar_w / 2:.1f}" y="{top - 5:.1f}" text-anchor="middle" font-size="12" {FONT}>'
                        f'{value:.4g}</text>')
            body.append(f'<text x="{bx + bar_w / 2:.1f}" y="{base + 16}" text-anchor="middle" font-size="11" {FONT}>'
                        f'{escape(name)}</text>')
        body.append(f'<rect x="{x0:.1f}" y="{base - height}" width="{panel_w:.1f}" height="{height}" fill="none" stroke="#333"/>')
        body.append(f'<text x="{x0 + panel_w / 2:.1f}" y="{base + 34}" text-anchor="middle" font-size="12" {FONT}>'
                    f'{escape(label)}</text>')
    return _document(base + BOTTOM, title, body)


def markdown_image(svg: str, alt: str) -> str:
    """A markdown image of ``svg`` as a base64 data URI: what the Prefect UI's sanitiser keeps."""
    return f"![{alt}](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})"
