"""Evaluation report: ``metrics.json`` (every number with its settings) and a self-contained ``report.html``.

The HTML page needs no network and no JavaScript: images are PNG files in ``images/`` next to it (relative links),
plots are inline SVG drawn here (no matplotlib). Non-finite numbers are written as ``null`` in the JSON.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adapt3d.utils.io import atomic_write_json, atomic_write_text

__all__ = [
    "json_safe",
    "svg_bar_chart",
    "svg_histogram",
    "ReportTable",
    "ReportFigure",
    "write_metrics_json",
    "write_report_html",
]

_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1")


def json_safe(obj):
    """Recursively convert to JSON-able values: non-finite floats -> None, tuples -> lists, Paths -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return json_safe(obj.item())
    return obj


def write_metrics_json(path: str | Path, metrics: dict) -> Path:
    path = Path(path)
    atomic_write_json(path, json_safe(metrics))
    return path


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _svg_text(x: float, y: float, text: str, size: int = 11, anchor: str = "start", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-family="sans-serif"{extra}>{html.escape(text)}</text>')


def svg_bar_chart(title: str, categories: Sequence[str], series: Mapping[str, Sequence[float | None]],
                  unit: str = "", width: int = 520, height: int = 240) -> str:
    """Grouped bar chart as an inline ``<svg>`` string; None values are drawn as missing."""
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    top = max([0.0] + values)
    bottom = min([0.0] + values)
    span = (top - bottom) or 1.0
    left, right, head, foot = 50, 10, 28, 40
    plot_w, plot_h = width - left - right, height - head - foot
    y_of = lambda v: head + (top - v) / span * plot_h  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             _svg_text(width / 2, 16, title + (f" ({unit})" if unit else ""), 13, "middle", ' font-weight="bold"'),
             f'<line x1="{left}" y1="{y_of(0):.1f}" x2="{width - right}" y2="{y_of(0):.1f}" stroke="#333"/>',
             _svg_text(left - 4, head + 4, _fmt(top, 3), 10, "end"),
             _svg_text(left - 4, head + plot_h, _fmt(bottom, 3), 10, "end")]
    n_cat, n_ser = max(len(categories), 1), max(len(series), 1)
    group_w = plot_w / n_cat
    bar_w = group_w * 0.8 / n_ser
    for ci, cat in enumerate(categories):
        x0 = left + ci * group_w + group_w * 0.1
        for si, (name, vs) in enumerate(series.items()):
            v = vs[ci] if ci < len(vs) else None
            x = x0 + si * bar_w
            if v is None or not math.isfinite(v):
                parts.append(_svg_text(x + bar_w / 2, y_of(0) - 3, "n/a", 9, "middle"))
                continue
            y1, y2 = sorted((y_of(v), y_of(0)))
            parts.append(f'<rect x="{x:.1f}" y="{y1:.1f}" width="{bar_w * 0.95:.1f}" height="{max(y2 - y1, 0.5):.1f}" '
                         f'fill="{_COLORS[si % len(_COLORS)]}"><title>{html.escape(f"{name} {cat}: {v:.6g}")}'
                         "</title></rect>")
        parts.append(_svg_text(left + ci * group_w + group_w / 2, height - foot + 14, cat[:24], 10, "middle"))
    for si, name in enumerate(series):
        x = left + si * 120
        parts.append(f'<rect x="{x}" y="{height - 16}" width="10" height="10" fill="{_COLORS[si % len(_COLORS)]}"/>')
        parts.append(_svg_text(x + 14, height - 7, name, 10))
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(title: str, series: Mapping[str, Sequence[float]], bins: int = 20, width: int = 520,
                  height: int = 240) -> str:
    """Overlaid histograms (outlined) of one or more value lists as an inline ``<svg>`` string."""
    finite = {k: [float(v) for v in vs if v is not None and math.isfinite(v)] for k, vs in series.items()}
    everything = [v for vs in finite.values() for v in vs]
    lo, hi = (min(everything), max(everything)) if everything else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = {}
    for k, vs in finite.items():
        c = [0] * bins
        for v in vs:
            c[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
        counts[k] = c
    peak = max([1] + [max(c) for c in counts.values()])
    left, right, head, foot = 40, 10, 28, 40
    plot_w, plot_h = width - left - right, height - head - foot
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             _svg_text(width / 2, 16, title, 13, "middle", ' font-weight="bold"'),
             f'<line x1="{left}" y1="{head + plot_h}" x2="{width - right}" y2="{head + plot_h}" stroke="#333"/>',
             _svg_text(left, head + plot_h + 14, _fmt(lo, 3), 10, "start"),
             _svg_text(width - right, head + plot_h + 14, _fmt(hi, 3), 10, "end"),
             _svg_text(left - 4, head + 8, str(peak), 10, "end")]
    for si, (k, c) in enumerate(counts.items()):
        color = _COLORS[si % len(_COLORS)]
        pts = []
        for b, n in enumerate(c):
            x0, x1 = left + b * plot_w / bins, left + (b + 1) * plot_w / bins
            y = head + plot_h - n / peak * plot_h
            pts += [f"{x0:.1f},{y:.1f}", f"{x1:.1f},{y:.1f}"]
        parts.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{color}" stroke-width="2"/>')
        x = left + si * 140
        parts.append(f'<rect x="{x}" y="{height - 16}" width="10" height="10" fill="{color}"/>')
        parts.append(_svg_text(x + 14, height - 7, f"{k} (n={len(finite[k])})", 10))
    parts.append("</svg>")
    return "".join(parts)


@dataclass
class ReportTable:
    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""


@dataclass
class ReportFigure:
    """An image file (path relative to the report folder) or an inline SVG string, with a caption."""

    title: str
    image: str | None = None
    svg: str | None = None
    caption: str = ""


@dataclass
class _Page:
    title: str
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


_CSS = """body{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
font-size:13px}th{background:#f3f3f3}.warn{background:#fde2e1;border:2px solid #c0392b;padding:10px;
margin:10px 0;font-weight:bold}.note{color:#555;font-size:13px}figure{display:inline-block;margin:8px;
vertical-align:top}figcaption{font-size:12px;color:#444;max-width:520px}img{image-rendering:pixelated;
max-width:100%}pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto}"""


def _table_html(t: ReportTable) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in t.rows)
    cap = f'<p class="note">{html.escape(t.caption)}</p>' if t.caption else ""
    return f"<h3>{html.escape(t.title)}</h3><table><tr>{head}</tr>{body}</table>{cap}"


def _figure_html(f: ReportFigure) -> str:
    inner = f.svg if f.svg is not None else f'<img src="{html.escape(f.image or "")}" alt="{html.escape(f.title)}">'
    return (f"<figure>{inner}<figcaption><b>{html.escape(f.title)}</b>"
            f"{(' - ' + html.escape(f.caption)) if f.caption else ''}</figcaption></figure>")


def write_report_html(path: str | Path, *, title: str, warnings: Sequence[str] = (), notes: Sequence[str] = (),
                      tables: Sequence[ReportTable] = (), figures: Sequence[tuple[str, Sequence[ReportFigure]]] = (),
                      settings: dict | None = None) -> Path:
    """Write the report page. ``figures``: (section title, figures) pairs. Image paths must be relative to the
    report folder and exist there (checked)."""
    path = Path(path)
    for _, figs in figures:
        for f in figs:
            if f.image is not None and not (path.parent / f.image).is_file():
                raise FileNotFoundError(f"report image {f.image} does not exist next to {path}")
    parts = ["<!DOCTYPE html><html><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    parts += [f'<div class="warn">{html.escape(w)}</div>' for w in warnings]
    parts += [_table_html(t) for t in tables]
    for section, figs in figures:
        parts.append(f"<h2>{html.escape(section)}</h2>")
        parts += [_figure_html(f) for f in figs]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if settings is not None:
        parts.append("<h2>Settings</h2><pre>" + html.escape(json.dumps(json_safe(settings), indent=2)) + "</pre>")
    parts.append("</body></html>\n")
    atomic_write_text(path, "\n".join(parts))
    return path
