"""Small hand-made SVG charts for the HTML report: lines (CDFs, series over time), columns
(histograms, stacked counts over time), horizontal stacked bars (cost by model or tag) and
marked curves (a bench's saturation curve: latency against achieved throughput per stage).

Why not matplotlib: the report must stay self-contained and the install light (matplotlib and
its dependencies add ~40 MB and ~1 s of import for a handful of simple charts), and inline SVG
is crisp at any zoom, searchable, and carries hover text (``<title>``) for exact values. Each
function returns one ``<svg>`` element as a string; text is escaped; no scripts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["PALETTE", "CurvePoint", "bar_chart", "column_chart", "curve_chart", "line_chart",
           "nice_ticks"]

#: Colour-blind-friendly categorical colours (Okabe-Ito, then greys).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000", "#999999", "#666666")

_W, _H = 600, 300
_M = {"left": 64, "right": 16, "top": 34, "bottom": 44}
Fmt = Callable[[float], str]


def _default_fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:.4g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About *count* round tick values (1, 2 or 5 x 10^k apart) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else [0.0]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    k = 0
    while first + k * step <= hi + step * 1e-9 and k < 100:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def _frame(title: str, x_label: str, y_label: str, width: int, height: int) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{_M["left"]}" y="20" font-size="14" font-weight="600" fill="#222">'
        f"{escape(title)}</text>",
        f'<text x="{(_M["left"] + width - _M["right"]) / 2:.1f}" y="{height - 6}" font-size="11" '
        f'text-anchor="middle" fill="#444">{escape(x_label)}</text>',
        f'<text transform="translate(12,{(_M["top"] + height - _M["bottom"]) / 2:.1f}) '
        f'rotate(-90)" font-size="11" text-anchor="middle" fill="#444">{escape(y_label)}</text>',
    ]


def _legend(labels: Sequence[str], width: int, x0: float, y0: float) -> tuple[list[str], float]:
    """Legend items laid out left to right under the title, wrapping; returns its height."""
    out = []
    x, y = x0, y0
    for i, label in enumerate(labels):
        text = label if len(label) <= 40 else label[:39] + "…"
        item_w = 22 + 6.2 * len(text)
        if x + item_w > width - 8 and x > x0:
            x, y = x0, y + 14
        out.append(f'<rect x="{x:.1f}" y="{y}" width="10" height="10" '
                   f'fill="{PALETTE[i % len(PALETTE)]}"/>')
        out.append(f'<text x="{x + 14:.1f}" y="{y + 9}" font-size="10" fill="#222">'
                   f"{escape(text)}</text>")
        x += item_w
    return out, (y - y0 + 16) if labels else 0.0


def _empty(title: str, message: str, width: int = _W, height: int = 80) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" class="chart"><title>{escape(title)}</title>'
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
            f'<text x="{_M["left"]}" y="20" font-size="14" font-weight="600" fill="#222">'
            f'{escape(title)}</text><text x="{_M["left"]}" y="48" font-size="12" fill="#666">'
            f"{escape(message)}</text></svg>")


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], *, title: str,
               x_label: str, y_label: str, x_fmt: Fmt = _default_fmt,
               y_fmt: Fmt = _default_fmt, log_x: bool | None = None, step: bool = False,
               y_max: float | None = None, width: int = _W, height: int = _H) -> str:
    """Lines, one per ``(label, xs, ys)``.

    :param log_x: logarithmic x axis; None chooses it when positive x values span over 50x.
    :param step: draw steps (for bucketed series) instead of straight segments.
    :param y_max: fixed top of the y axis (e.g. 1 for CDFs).
    """
    pts = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys, strict=True)
           if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return _empty(title, "no data")
    xs_all = [p[0] for p in pts]
    positive = [x for x in xs_all if x > 0]
    if log_x is None:
        log_x = bool(positive) and min(positive) > 0 and max(positive) / min(positive) > 50
    if log_x and not positive:
        log_x = False
    x_lo = min(positive) if log_x else min(xs_all)
    x_hi = max(xs_all)
    if x_hi <= x_lo:
        x_hi = x_lo + (abs(x_lo) or 1.0)
    y_lo = min(0.0, min(p[1] for p in pts))
    y_hi = y_max if y_max is not None else max(p[1] for p in pts)
    if y_hi <= y_lo:
        y_hi = y_lo + 1.0
    y_ticks = nice_ticks(y_lo, y_hi)
    y_hi = max(y_hi, y_ticks[-1])
    legend, legend_h = _legend([s[0] for s in series], width, _M["left"], 28) \
        if len(series) > 1 else ([], 0.0)
    top = _M["top"] + legend_h
    height += int(legend_h)
    pw = width - _M["left"] - _M["right"]
    ph = height - top - _M["bottom"]

    def sx(x: float) -> float:
        if log_x:
            x = max(x, x_lo)
            return _M["left"] + pw * (math.log10(x) - math.log10(x_lo)) / (
                math.log10(x_hi) - math.log10(x_lo))
        return _M["left"] + pw * (x - x_lo) / (x_hi - x_lo)

    def sy(y: float) -> float:
        return top + ph * (1 - (y - y_lo) / (y_hi - y_lo))

    out = _frame(title, x_label + (" (log scale)" if log_x else ""), y_label, width, height)
    out += legend
    for t in y_ticks:
        y = sy(t)
        out.append(f'<line x1="{_M["left"]}" x2="{width - _M["right"]}" y1="{y:.1f}" y2="{y:.1f}"'
                   ' stroke="#e5e5e5"/>')
        out.append(f'<text x="{_M["left"] - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end" '
                   f'fill="#444">{escape(y_fmt(t))}</text>')
    x_ticks = _log_ticks(x_lo, x_hi) if log_x else nice_ticks(x_lo, x_hi, 6)
    for t in x_ticks:
        if t < x_lo or t > x_hi:
            continue
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - _M["bottom"]}"'
                   ' stroke="#f0f0f0"/>')
        out.append(f'<text x="{x:.1f}" y="{height - _M["bottom"] + 14}" font-size="10" '
                   f'text-anchor="middle" fill="#444">{escape(x_fmt(t))}</text>')
    out.append(f'<rect x="{_M["left"]}" y="{top}" width="{pw}" height="{ph}" fill="none" '
               'stroke="#999"/>')
    for i, (label, xs, ys) in enumerate(series):
        coords = [(sx(x), sy(y)) for x, y in zip(xs, ys, strict=True)
                  if math.isfinite(x) and math.isfinite(y) and (not log_x or x > 0)]
        if not coords:
            continue
        if step:
            stepped = [coords[0]]
            for (_x0, y0), (x1, y1) in itertools.pairwise(coords):
                stepped += [(x1, y0), (x1, y1)]
            coords = stepped
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        colour = PALETTE[i % len(PALETTE)]
        # With several lines the first is the whole (e.g. all rows): drawn heavier.
        stroke = 2.8 if i == 0 and len(series) > 1 else 1.6
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{stroke}" '
                   f'points="{path}"><title>{escape(label)}</title></polyline>')
    out.append("</svg>")
    return "\n".join(out)


def column_chart(edges: Sequence[float], stacks: Sequence[tuple[str, Sequence[float]]], *,
                 title: str, x_label: str, y_label: str, x_fmt: Fmt = _default_fmt,
                 y_fmt: Fmt = _default_fmt, width: int = _W, height: int = _H) -> str:
    """Stacked columns over bins ``[edges[k], edges[k+1])`` (histograms, counts over time).

    :param stacks: ``(label, values per bin)``, drawn bottom-up in order.
    """
    bins = len(edges) - 1
    if bins <= 0 or not stacks:
        return _empty(title, "no data")
    totals = [sum(s[1][k] for s in stacks) for k in range(bins)]
    top = max(totals) if totals else 0
    if top <= 0:
        return _empty(title, "nothing to show (all zero)")
    y_ticks = nice_ticks(0, top)
    y_hi = max(top, y_ticks[-1])
    legend, legend_h = _legend([s[0] for s in stacks], width, _M["left"], 28) \
        if len(stacks) > 1 else ([], 0.0)
    top_px = _M["top"] + legend_h
    height += int(legend_h)
    pw = width - _M["left"] - _M["right"]
    ph = height - top_px - _M["bottom"]
    x_lo, x_hi = edges[0], edges[-1]
    span = (x_hi - x_lo) or 1.0

    def sx(x: float) -> float:
        return _M["left"] + pw * (x - x_lo) / span

    def sy(y: float) -> float:
        return top_px + ph * (1 - y / y_hi)

    out = _frame(title, x_label, y_label, width, height)
    out += legend
    for t in y_ticks:
        y = sy(t)
        out.append(f'<line x1="{_M["left"]}" x2="{width - _M["right"]}" y1="{y:.1f}" y2="{y:.1f}"'
                   ' stroke="#e5e5e5"/>')
        out.append(f'<text x="{_M["left"] - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end" '
                   f'fill="#444">{escape(y_fmt(t))}</text>')
    for t in nice_ticks(x_lo, x_hi, 6):
        if x_lo <= t <= x_hi:
            out.append(f'<text x="{sx(t):.1f}" y="{height - _M["bottom"] + 14}" font-size="10" '
                       f'text-anchor="middle" fill="#444">{escape(x_fmt(t))}</text>')
    for k in range(bins):
        base = 0.0
        x0, x1 = sx(edges[k]), sx(edges[k + 1])
        w = max(x1 - x0 - (1 if x1 - x0 > 3 else 0), 0.6)
        for i, (label, values) in enumerate(stacks):
            v = values[k]
            if v <= 0:
                continue
            y0, y1 = sy(base), sy(base + v)
            out.append(f'<rect x="{x0:.1f}" y="{y1:.1f}" width="{w:.1f}" height="{y0 - y1:.1f}" '
                       f'fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(label)} '
                       f"[{escape(x_fmt(edges[k]))}, {escape(x_fmt(edges[k + 1]))}): "
                       f"{escape(y_fmt(v))}</title></rect>")
            base += v
    out.append(f'<rect x="{_M["left"]}" y="{top_px}" width="{pw}" height="{ph}" fill="none" '
               'stroke="#999"/>')
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(categories: Sequence[str], stacks: Sequence[tuple[str, Sequence[float]]], *,
              title: str, value_fmt: Fmt = _default_fmt, width: int = _W,
              totals_text: Sequence[str] | None = None) -> str:
    """Horizontal stacked bars, one per category (e.g. cost by model, split by cost category).

    :param stacks: ``(label, value per category)``, drawn left to right in order.
    :param totals_text: what to write after each bar instead of its formatted sum (a cost that
        is a lower bound, or unknown); with it, bars of zero are drawn too.
    """
    if not categories or not stacks:
        return _empty(title, "no data")
    totals = [sum(s[1][k] for s in stacks) for k in range(len(categories))]
    top = max(totals)
    if top <= 0 and totals_text is None:
        return _empty(title, "nothing to show (all zero)")
    top = top if top > 0 else 1.0
    left = int(min(max(len(c) for c in categories) * 6.4 + 16, 330))
    bar_h, gap = 18, 8
    height = _M["top"] + 26 + len(categories) * (bar_h + gap) + 30
    pw = width - left - 90
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="10" y="20" font-size="14" font-weight="600" fill="#222">{escape(title)}</text>',
    ]
    out += _legend([s[0] for s in stacks], width, 10, 30)[0]
    y = _M["top"] + 26
    for k, cat in enumerate(categories):
        name = cat if len(cat) <= 50 else cat[:49] + "…"
        out.append(f'<text x="{left - 6}" y="{y + 13}" font-size="11" text-anchor="end" '
                   f'fill="#222">{escape(name)}<title>{escape(cat)}</title></text>')
        x = float(left)
        for i, (label, values) in enumerate(stacks):
            v = values[k]
            if v <= 0:
                continue
            w = pw * v / top
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{max(w, 0.6):.1f}" height="{bar_h}" '
                       f'fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(cat)}: '
                       f"{escape(label)} {escape(value_fmt(v))}</title></rect>")
            x += w
        shown = totals_text[k] if totals_text is not None else value_fmt(totals[k])
        out.append(f'<text x="{x + 6:.1f}" y="{y + 13}" font-size="11" fill="#222">'
                   f"{escape(shown)}</text>")
        y += bar_h + gap
    out.append("</svg>")
    return "\n".join(out)


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """One point of a :func:`curve_chart` (a bench stage), with one y per series.

    :param line: points with the same value are joined, in the order given.
    :param square: a square marker instead of a circle.
    :param hollow: a hollow marker: the point is flagged (a client-bound stage).
    """

    label: str
    x: float
    ys: tuple[float | None, ...]
    line: str = ""
    square: bool = False
    hollow: bool = False
    hover: str = ""


def _marker(x: float, y: float, colour: str, square: bool, hollow: bool, attrs: str = "",
            size: float = 4.0) -> str:
    fill = "#ffffff" if hollow else colour
    width = 2.0 if hollow else 1.0
    if square:
        return (f'<rect x="{x - size:.1f}" y="{y - size:.1f}" width="{2 * size:.1f}" '
                f'height="{2 * size:.1f}" fill="{fill}" stroke="{colour}" '
                f'stroke-width="{width}"{attrs}')
    return (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{size + 0.5:.1f}" fill="{fill}" '
            f'stroke="{colour}" stroke-width="{width}"{attrs}')


def curve_chart(points: Sequence[CurvePoint], series: Sequence[str], *, title: str,
                x_label: str, y_label: str, x_fmt: Fmt = _default_fmt, y_fmt: Fmt = _default_fmt,
                hlines: Sequence[tuple[str, float, int | None]] = (),
                vlines: Sequence[tuple[str, float]] = (),
                key: Sequence[tuple[str, str]] = (), width: int = _W, height: int = 340) -> str:
    """Points joined by lines, one coloured line per series, each point labelled (a saturation
    curve: x = achieved throughput, y = latency percentiles, one point per stage).

    Every marker carries ``class="pt"``, ``data-point`` (its label) and ``data-series``, so the
    chart can be checked as text.

    :param series: one label per y of the points (colours in :data:`PALETTE` order).
    :param hlines: dashed horizontal lines ``(label, y, series index or None)`` (SLO limits); a
        line far above the data is named in the key instead of flattening the plot.
    :param vlines: dashed vertical lines ``(label, x)`` (the saturation result).
    :param key: marker legend ``(kind, text)``, kind ``circle``, ``square`` or ``hollow``.
    """
    pts = [(p.x, y) for p in points for y in p.ys
           if y is not None and math.isfinite(p.x) and math.isfinite(y)]
    if not pts:
        return _empty(title, "no stage with ok rows")
    x_hi = max([p[0] for p in pts] + [x for _, x in vlines]) * 1.05 or 1.0
    data_hi = max(p[1] for p in pts) or 1.0
    notes = []
    shown = []
    for label, y, idx in hlines:
        # An SLO far above every stage would squash the curve into the floor: named instead.
        if y <= 3 * data_hi:
            shown.append((label, y, idx))
        else:
            notes.append(f"{label}: above the plotted range")
    y_hi = max([data_hi] + [y for _, y, _ in shown]) * 1.08
    x_ticks = nice_ticks(0.0, x_hi, 6)
    y_ticks = nice_ticks(0.0, y_hi)
    x_hi, y_hi = max(x_hi, x_ticks[-1]), max(y_hi, y_ticks[-1])
    legend, legend_h = _legend(list(series), width, _M["left"], 28)
    key_y = 28 + legend_h
    key_items = [*key, *(("note", n) for n in notes)]
    key_h = 16.0 if key_items else 0.0
    top = _M["top"] + legend_h + key_h
    height += int(legend_h + key_h)
    pw = width - _M["left"] - _M["right"]
    ph = height - top - _M["bottom"]

    def sx(x: float) -> float:
        return _M["left"] + pw * x / x_hi

    def sy(y: float) -> float:
        return top + ph * (1 - y / y_hi)

    out = _frame(title, x_label, y_label, width, height)
    out[0] = out[0].replace('class="chart"', 'class="chart curve"')
    out += legend
    kx = float(_M["left"])
    for kind, text in key_items:
        if kind != "note":
            out.append(_marker(kx + 5, key_y + 5, "#444", kind == "square", kind == "hollow",
                               size=3.5) + "/>")
            kx += 13
        out.append(f'<text x="{kx:.1f}" y="{key_y + 9:.1f}" font-size="10" fill="#222">'
                   f"{escape(text)}</text>")
        kx += 6.0 * len(text) + 14
    for t in y_ticks:
        y = sy(t)
        out.append(f'<line x1="{_M["left"]}" x2="{width - _M["right"]}" y1="{y:.1f}" y2="{y:.1f}"'
                   ' stroke="#e5e5e5"/>')
        out.append(f'<text x="{_M["left"] - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end" '
                   f'fill="#444">{escape(y_fmt(t))}</text>')
    for t in x_ticks:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - _M["bottom"]}"'
                   ' stroke="#f0f0f0"/>')
        out.append(f'<text x="{x:.1f}" y="{height - _M["bottom"] + 14}" font-size="10" '
                   f'text-anchor="middle" fill="#444">{escape(x_fmt(t))}</text>')
    out.append(f'<rect x="{_M["left"]}" y="{top}" width="{pw}" height="{ph}" fill="none" '
               'stroke="#999"/>')
    for label, y, idx in shown:
        colour = PALETTE[idx % len(PALETTE)] if idx is not None else "#444"
        out.append(f'<line x1="{_M["left"]}" x2="{width - _M["right"]}" y1="{sy(y):.1f}" '
                   f'y2="{sy(y):.1f}" stroke="{colour}" stroke-width="1.4" '
                   f'stroke-dasharray="6 4" class="hline"><title>{escape(label)}</title></line>')
        # Labelled at the left, where the light stages are (usually well under the limit).
        out.append(f'<text x="{_M["left"] + 4}" y="{sy(y) - 4:.1f}" font-size="10" '
                   f'fill="{colour}">{escape(label)}</text>')
    for label, x in vlines:
        out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" '
                   f'y2="{height - _M["bottom"]}" stroke="#222" stroke-width="1.2" '
                   f'stroke-dasharray="3 3" class="vline"><title>{escape(label)}</title></line>')
        anchor = "end" if sx(x) > _M["left"] + pw * 0.6 else "start"
        dx = -4 if anchor == "end" else 4
        out.append(f'<text x="{sx(x) + dx:.1f}" y="{top + 12:.1f}" font-size="10" '
                   f'text-anchor="{anchor}" fill="#222">{escape(label)}</text>')
    lines = list(dict.fromkeys(p.line for p in points))
    for i, name in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        for line in lines:
            coords = [(sx(p.x), sy(v)) for p in points if p.line == line
                      and (v := p.ys[i]) is not None and math.isfinite(p.x) and math.isfinite(v)]
            if len(coords) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
                out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                           f'points="{path}"><title>{escape(name)}</title></polyline>')
    for p in points:
        if not math.isfinite(p.x):
            continue
        ys = [(i, y) for i, y in enumerate(p.ys) if y is not None and math.isfinite(y)]
        for i, y in ys:
            name = series[i]
            tip = f"{p.label}: {name} {y_fmt(y)} at {x_fmt(p.x)}" + (
                f"; {p.hover}" if p.hover else "")
            attrs = (f' class="pt" data-point="{escape(p.label)}" data-series="{escape(name)}">'
                     f"<title>{escape(tip)}</title>")
            out.append(_marker(sx(p.x), sy(y), PALETTE[i % len(PALETTE)], p.square, p.hollow,
                               attrs) + ("</rect>" if p.square else "</circle>"))
        if ys:
            top_y = min(sy(y) for _, y in ys)
            out.append(f'<text x="{sx(p.x):.1f}" y="{top_y - 8:.1f}" font-size="9" '
                       f'text-anchor="middle" fill="#333" class="pt-label">'
                       f"{escape(p.label)}</text>")
    out.append("</svg>")
    return "\n".join(out)
