"""The ``adapt3d eval`` report page: sample grids, a summary table and per-metric SVG plots from metrics.json.

Files written next to ``report.html``: ``images/grid_source_vs_adapted.png`` (rows = seeds, columns = the grid
yaws for the source then the adapted generator), ``images/samples_{source,adapted}.png`` (the first 16 samples at
their evaluation cameras) and ``images/view_example_{source,adapted}.png`` (view A, view B, B warped into A, the
error map).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from adapt3d.export.images import contact_sheet, make_grid, save_image, to_uint8

from .report import ReportFigure, ReportTable, svg_bar_chart, svg_histogram, write_report_html

__all__ = ["write_eval_report", "summary_rows"]


def _get(d: dict | None, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def summary_rows(m: dict) -> list[list]:
    """[metric, source, adapted, meaning] rows from the ``metrics`` section of metrics.json."""
    rows = []
    cs = m.get("clip_score")
    if cs:
        rows.append(["CLIP score (cos, prompt)", _get(cs, "source", "mean"), _get(cs, "adapted", "mean"),
                     "cos(E_I(x), E_T(prompt)); higher = closer to the prompt"])
    dc = m.get("directional_clip")
    if dc:
        rows.append(["Directional CLIP", None, dc.get("mean"),
                     "cos(E_I(adapted) - E_I(source), E_T(prompt) - E_T(source prompt)); 0 if images are equal"])
    dv = m.get("diversity")
    if dv:
        rows.append(["Intra-cluster LPIPS", _get(dv, "source", "intra_cluster_lpips", "mean"),
                     _get(dv, "adapted", "intra_cluster_lpips", "mean"),
                     "mean over k-means clusters of the mean pairwise LPIPS; higher = more diverse"])
        rows.append(["Mean pairwise CLIP distance", _get(dv, "source", "mean_pairwise_clip_distance"),
                     _get(dv, "adapted", "mean_pairwise_clip_distance"), "mean |f_i - f_j| of unit CLIP embeddings"])
    vc = m.get("view_consistency")
    if vc:
        for kind in ("raw", "final"):
            rows.append([f"Reprojection error ({kind}, mean abs)", _get(vc, "source", kind, "mean_abs"),
                         _get(vc, "adapted", kind, "mean_abs"), "mean |I_A - warp(I_B)| on co-visible pixels, "
                         "[0, 1] units; lower = more consistent"])
            rows.append([f"Reprojection PSNR ({kind}, dB)", _get(vc, "source", kind, "psnr"),
                         _get(vc, "adapted", kind, "psnr"), "10 log10(1 / MSE) on co-visible pixels"])
        rows.append(["CLIP view agreement", _get(vc, "source", "clip_view_agreement", "mean"),
                     _get(vc, "adapted", "clip_view_agreement", "mean"), "mean cosine between views of one latent"])
    fd = m.get("fid")
    if fd:
        ref = fd.get("reference")
        rows.append([f"FD ({_get(fd, 'adapted', 'feature')}) vs {ref}", _get(fd, "source", "fid"),
                     _get(fd, "adapted", "fid"), "Frechet distance of feature Gaussians; lower = closer"])
        rows.append([f"KID vs {ref}", _get(fd, "source", "kid_mean"), _get(fd, "adapted", "kid_mean"),
                     "unbiased MMD^2, cubic kernel, mean over subsets"])
    return rows


def _save(folder: Path, name: str, image: np.ndarray) -> str:
    save_image(folder / "images" / name, image)
    return f"images/{name}"


def _hwc(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, 3, H, W) tensor -> (N, H, W, 3) array."""
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def _grid_figures(folder: Path, grids: dict | None, samples: dict) -> list[ReportFigure]:
    figs = []
    if grids and "source" in grids and "adapted" in grids:
        src, ad = grids["source"], grids["adapted"]  # (S, Y, H, W, 3)
        yaws = grids.get("yaws_deg", [])
        rows = [[*src[i], *ad[i]] for i in range(src.shape[0])]
        caps = [[f"src {y:+g}" for y in yaws] + [f"adapted {y:+g}" for y in yaws]] + [None] * (len(rows) - 1)
        path = _save(folder, "grid_source_vs_adapted.png", contact_sheet(rows, captions=caps))
        figs.append(ReportFigure("Source vs adapted", image=path,
                                 caption="same seeds (rows) and cameras (columns: yaw offsets in degrees)"))
    for name in ("source", "adapted"):
        if samples.get(name) is not None:
            path = _save(folder, f"samples_{name}.png", make_grid(_hwc(samples[name][:16]), padding=2))
            figs.append(ReportFigure(f"{name} samples", image=path, caption="first 16 seeds at their cameras"))
    return figs


def _view_figures(folder: Path, examples: dict) -> list[ReportFigure]:
    figs = []
    for name, ex in examples.items():
        if not ex:
            continue
        err = ex["error"].clamp(0, 1)  # (1, H, W), [0, 1] units
        warped = torch.where(ex["valid"], ex["warped"], -1.0)  # black where not visible in both views
        cells = [to_uint8(ex["view_a"]), to_uint8(ex["view_b"]), to_uint8(warped),
                 to_uint8(err.expand(3, -1, -1) * 2 - 1)]
        a, b = ex["pair"][1], ex["pair"][0]
        sheet = contact_sheet([cells], captions=[[f"A: {a}", f"B: {b}", "B warped to A", "|A - warp(B)|"]])
        figs.append(ReportFigure(f"View consistency example ({name})", image=_save(folder, f"view_example_{name}.png",
                                                                                    sheet),
                                 caption="first latent; warped pixels not visible in both views are black"))
    return figs


def _plots(m: dict) -> list[ReportFigure]:
    figs = []
    cs = m.get("clip_score")
    if cs:
        figs.append(ReportFigure("CLIP score per sample", svg=svg_histogram(
            "CLIP score (cosine) per sample", {"source": _get(cs, "source", "per_sample", default=[]),
                                               "adapted": _get(cs, "adapted", "per_sample", default=[])})))
    dc = m.get("directional_clip")
    if dc:
        figs.append(ReportFigure("Directional CLIP per sample", svg=svg_histogram(
            "Directional CLIP similarity per sample", {"adapted": dc.get("per_sample", [])})))
    dv = m.get("diversity")
    if dv:
        pc = {k: _get(dv, k, "intra_cluster_lpips", "per_cluster", default=[]) for k in ("source", "adapted")}
        n = max(len(v) for v in pc.values())
        figs.append(ReportFigure("Intra-cluster LPIPS per cluster", svg=svg_bar_chart(
            "Mean pairwise LPIPS per cluster", [f"c{i}" for i in range(n)], pc)))
    vc = m.get("view_consistency")
    if vc and _get(vc, "adapted", "per_pair"):
        pairs = _get(vc, "adapted", "per_pair")
        cats = [f"{p['from']}>{p['to']}" for p in pairs]
        series = {k: [_get(p, "raw", "mean_abs") for p in _get(vc, k, "per_pair", default=[])]
                  for k in ("source", "adapted")}
        figs.append(ReportFigure("Reprojection error per view pair", svg=svg_bar_chart(
            "Reprojection error (raw render, mean abs)", cats, series)))
    return figs


def write_eval_report(folder: str | Path, metrics: dict, *, grids: dict | None = None, samples: dict | None = None,
                      view_examples: dict | None = None) -> Path:
    """Write ``report.html`` (and its images) for a metrics.json dict; returns the page's path."""
    folder = Path(folder)
    m = metrics.get("metrics", {})
    models = metrics.get("models", {})
    table = ReportTable("Summary", ["metric", "source", "adapted", "meaning"], summary_rows(m),
                        caption=f"adapted: {models.get('adapted')}; source: {models.get('source')}; CLIP: "
                                f"{models.get('clip')}; LPIPS: {models.get('lpips')}")
    sections = [("Samples", _grid_figures(folder, grids, samples or {})),
                ("View consistency", _view_figures(folder, view_examples or {})),
                ("Plots", _plots(m))]
    settings = {"settings": metrics.get("settings"), "versions": metrics.get("versions"),
                "seeds": metrics.get("seeds"), "cameras": metrics.get("cameras")}
    return write_report_html(folder / "report.html", title="adapt3d evaluation report",
                             warnings=metrics.get("warnings", []), notes=metrics.get("notes", []), tables=[table],
                             figures=[(s, f) for s, f in sections if f], settings=settings)
