"""Report writers (adapt3d.metrics.report): strict JSON and a self-contained HTML page."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from adapt3d.export.images import save_image
from adapt3d.metrics.report import (
    ReportFigure,
    ReportTable,
    json_safe,
    svg_bar_chart,
    svg_histogram,
    write_metrics_json,
    write_report_html,
)


class _Refs(HTMLParser):
    """Collects every src/href and counts inline svg elements."""

    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.svgs = 0

    def handle_starttag(self, tag, attrs):
        self.svgs += tag == "svg"
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def parse_refs(path: Path) -> _Refs:
    p = _Refs()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _strict_load(path: Path):
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(path.read_text(), parse_constant=reject)


def test_metrics_json_is_strict(tmp_path):
    import torch

    obj = {"a": float("nan"), "b": [1.0, float("inf"), (2, 3)], "c": torch.tensor(0.5), "p": Path("x/y")}
    path = write_metrics_json(tmp_path / "m.json", obj)
    assert _strict_load(path) == {"a": None, "b": [1.0, None, [2, 3]], "c": 0.5, "p": "x/y"}
    assert json_safe({"k": math.nan}) == {"k": None}


def test_report_references_existing_images_only(tmp_path):
    save_image(tmp_path / "images" / "grid.png", np.zeros((8, 8, 3), np.uint8))
    bar = svg_bar_chart("scores", ["a", "b"], {"source": [0.1, None], "adapted": [0.3, -0.2]})
    hist = svg_histogram("values", {"x": [0.1, 0.2, 0.2, float("nan")]})
    assert bar.startswith("<svg") and "n/a" in bar and "n=3" in hist
    page = write_report_html(
        tmp_path / "report.html", title="t <&>", warnings=["RANDOM weights"], notes=["a note"],
        tables=[ReportTable("Summary", ["metric", "value"], [["clip", 0.25], ["fid", None]])],
        figures=[("Samples", [ReportFigure("grid", image="images/grid.png")]),
                 ("Plots", [ReportFigure("bars", svg=bar), ReportFigure("hist", svg=hist)])],
        settings={"seed": 0, "bad": float("nan")})
    refs = parse_refs(page)
    assert refs.refs == ["images/grid.png"] and refs.svgs == 2
    assert all((page.parent / r).is_file() for r in refs.refs)
    text = page.read_text()
    assert "t &lt;&amp;&gt;" in text and "RANDOM weights" in text and "n/a" in text and "http://" not in \
        text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        write_report_html(tmp_path / "r2.html", title="x",
                          figures=[("S", [ReportFigure("m", image="images/missing.png")])])
    assert not (tmp_path / "r2.html").exists()
