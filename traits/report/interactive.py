"""``report-interactive.html``: the audit's loss surfaces in 3D and its tables sortable, in one offline page.

The opt-in companion of the script-free ``report.html`` and the PDF (``report: {interactive: true}`` in a spec):
those remain the reference record of an audit; this page is for exploring the same numbers. It reads nothing but
the :class:`~traits.results.AuditResult` and holds everything it needs: plotly's JavaScript bundle is inlined once
(about 4.8 MB, most of the file), the figures travel as JSON in ``<script type="application/json">`` blocks and a
Content-Security-Policy forbids the page to load anything, so it works with networking disabled.

Every string from the result (names, descriptions, compound ids, formulas, units, split names) is escaped: by
Jinja's autoescape in the page, by :func:`plot_text` where plotly typesets it (plotly reads a subset of HTML in
titles and labels), and the JSON blocks escape ``<``, ``>`` and ``&`` so that no string can close its block.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from traits.errors import OutputError
from traits.files import ensure_dir, write_text_atomic
from traits.report.figures import loss_unit
from traits.report.formatting import (
    fmt_interval,
    fmt_num,
    formula_html,
    interval_kind,
    kind_marker,
    ordered_splits,
    split_label,
)
from traits.report.headline import finite as _finite
from traits.results import SPLIT_LABELS, AuditResult

#: The file :func:`write_interactive` writes in the output directory.
INTERACTIVE_NAME = "report-interactive.html"
TEMPLATE = "interactive.html.j2"
#: Most compounds listed per split (the largest absolute errors first); the rest are counted, not listed.
MAX_COMPOUND_ROWS = 5000
#: Above this max/min ratio of the finite positive losses a surface's colour scale and z axis are logarithmic
#: (the same rule as the static report's figures).
LOG_SPAN = 10.0
#: Split colours of the static report's figures (seaborn's colour-blind palette), as CSS colours.
SPLIT_COLOURS = {"train": "#029e73", "val": "#cc78bc", "id": "#0173b2", "ood": "#d55e00"}
_EXTRA_COLOURS = ("#de8f05", "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9")
LEVEL_WORDS = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}
#: Height in pixels of one row of 3D panels (two panels a row).
PANEL_HEIGHT = 480
#: Longest split name shown in a figure (a results file may name splits freely).
_MAX_LABEL = 40
#: Significant digits of the numbers in the figures' JSON (the hover shows 4).
_DIGITS = 6

#: The page's own script: draws each figure from its JSON block (the 3D panels of one figure turn together) and
#: sorts a table by the column whose header is clicked (missing values last).
PAGE_SCRIPT = r"""
(function () {
  "use strict";
  var config = {displaylogo: false, responsive: true, toImageButtonOptions: {format: "png", scale: 2}};
  function syncCameras(div, scenes) {
    var busy = false;
    div.on("plotly_relayout", function (ev) {
      if (busy || !ev) { return; }
      var source = null, camera = null;
      Object.keys(ev).forEach(function (k) {
        var m = /^(scene\d*)\.camera$/.exec(k);
        if (m) { source = m[1]; camera = ev[k]; }
      });
      if (!camera) { return; }
      var update = {};
      scenes.forEach(function (s) { if (s !== source) { update[s + ".camera"] = camera; } });
      busy = true;
      var done = function () { busy = false; };
      Promise.resolve(window.Plotly.relayout(div, update)).then(done, done);
    });
  }
  document.querySelectorAll("script.figure-data").forEach(function (block) {
    var div = document.getElementById(block.getAttribute("data-target"));
    if (!div) { return; }
    if (!window.Plotly) { div.textContent = "The plotting library did not load."; return; }
    var fig = JSON.parse(block.textContent);
    window.Plotly.newPlot(div, fig.data, fig.layout, config).then(function () {
      var scenes = Object.keys(fig.layout).filter(function (k) { return /^scene\d*$/.test(k); });
      if (scenes.length > 1) { syncCameras(div, scenes); }
    });
  });
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      var numeric = th.getAttribute("data-type") === "num";
      function key(cell) {
        var v = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent.trim();
        if (v === "") { return null; }
        return numeric ? parseFloat(v) : v;
      }
      function sort() {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === null || (numeric && isNaN(x))) { return (y === null || (numeric && isNaN(y))) ? 0 : 1; }
          if (y === null || (numeric && isNaN(y))) { return -1; }
          var c = numeric ? x - y : String(x).localeCompare(String(y), undefined, {numeric: true});
          return ascending ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.tabIndex = 0;
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
      });
    });
  });
}());
"""


def script_hash(script: str) -> str:
    """A CSP source allowing exactly this inline script ('sha256-…' of its text)."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") + "'"


def content_security_policy(scripts: Sequence[str]) -> str:
    """The page's Content-Security-Policy: only the inline scripts given (by hash) may run (so no event-handler
    attribute or injected script would, were a string ever to slip through escaping), styles inline only, images
    from data: and blob: URLs only (plotly's "download as PNG"); nothing may be fetched, whatever the page says."""
    sources = " ".join(script_hash(s) for s in scripts)
    return (f"default-src 'none'; script-src {sources}; style-src 'unsafe-inline'; img-src data: blob:; "
            "font-src data:; base-uri 'none'; form-action 'none'")


# ----------------------------------------------------------------------------------------------
# Strings and numbers for plotly


def plot_text(value: Any) -> str:
    """A string from the result as literal plotly text: plotly typesets a subset of HTML (``<b>``, ``<a href>``,
    entities) in titles, labels and legends, so ``<``, ``>``, ``&`` and quotes are written as entities, which it
    shows as the characters; line breaks and control characters become spaces."""
    text = re.sub(r"[\x00-\x1f\x7f\u2028\u2029]+", " ", str(value))
    return html.escape(text, quote=True)


def _label(split: str, longest: int = _MAX_LABEL) -> str:
    """A split's name for a figure, as plotly text, cut to ``longest`` characters."""
    label = SPLIT_LABELS.get(split, split)
    if len(label) > longest:
        label = label[: longest - 1] + "…"
    return plot_text(label)


def _colour(split: str, index: int) -> str:
    return SPLIT_COLOURS.get(split, _EXTRA_COLOURS[index % len(_EXTRA_COLOURS)])


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _round(x: Any) -> float | None:
    x = _finite(x)
    return None if x is None else float(f"{x:.{_DIGITS}g}")


def _json_block(payload: Any) -> Markup:
    """``payload`` as JSON to sit inside ``<script type="application/json">``: NaN and ±inf refused (they are
    None before this), and ``<``, ``>``, ``&`` and the JavaScript line separators escaped, so that no string in it
    can end the block or be read as markup."""
    text = json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return Markup(text)


@functools.lru_cache(maxsize=1)
def plotly_bundle() -> str:
    """plotly's JavaScript bundle (the copy the installed plotly package ships), safe to inline in a script."""
    try:
        import plotly.offline
    except ImportError as exc:  # pymatgen brings plotly; a trimmed environment may not have it
        raise OutputError("the interactive report needs the plotly package (pip install plotly), whose "
                          f"JavaScript bundle it inlines ({exc})") from exc
    js = plotly.offline.get_plotlyjs()
    # the bundle never holds "</script" (plotly inlines it the same way); a script block ends at one regardless
    return re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)


def plotly_version() -> str:
    match = re.search(r"plotly\.js v([0-9][0-9A-Za-z.\-+]*)", plotly_bundle()[:400])
    return match.group(1) if match else ""


# ----------------------------------------------------------------------------------------------
# Figures (plotly figure dicts)


def _centre(alphas: Sequence[float]) -> int:
    return min(range(len(alphas)), key=lambda k: abs(alphas[k]))


def _grid_at_theta(alphas: Sequence[float], grid: Sequence[Sequence[Any]]) -> float | None:
    i = _centre(alphas)
    try:
        return _finite(grid[i][i])
    except IndexError:
        return None


def _loss_range(grids: Mapping[str, Sequence[Sequence[Any]]]) -> tuple[float, float, bool] | None:
    """(low, high, log) of the finite losses of every grid: one scale shared by every split's surface."""
    values = [v for grid in grids.values() for row in grid for v in (_finite(x) for x in row) if v is not None]
    if not values:
        return None
    low, high = min(values), max(values)
    positive = [v for v in values if v > 0]
    log = bool(positive) and min(positive) > 0 and max(positive) / min(positive) > LOG_SPAN
    if log:
        low, high = min(positive), max(positive)
    if high <= low:
        pad = abs(high) * 0.05 or 1e-12
        low, high = low - pad, high + pad
    return low, high, log


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _tick_text(v: float) -> str:
    """A log-axis tick label: 0.05, 2, 100, and 10ⁿ (or m×10ⁿ) beyond four digits."""
    exponent = math.floor(math.log10(v) + 1e-9)
    if -3 <= exponent <= 3:
        return f"{v:g}"
    mantissa = round(v / 10.0**exponent)
    power = "10" + str(exponent).translate(_SUPERSCRIPT)
    return power if mantissa == 1 else f"{mantissa}×{power}"


def log_ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    """Ticks of a log axis over [low, high] as (values, labels): 1, 2 and 5 × 10ⁿ over up to 2.5 decades, 1 and
    3 × 10ⁿ up to four, each decade up to six, fewer beyond (plotly's own log ticks label every minor tick on a
    short axis)."""
    lo, hi = math.floor(math.log10(low)), math.ceil(math.log10(high))
    span = math.log10(high / low)
    steps = (1, 2, 5) if span <= 2.5 else (1, 3) if span <= 4 else (1,)
    every = 1 if span <= 6 else math.ceil(span / 6)
    vals, text = [], []
    for e in range(lo, hi + 1):
        if e % every:
            continue
        for m in steps:
            v = m * 10.0**e
            if low * (1 - 1e-9) <= v <= high * (1 + 1e-9):
                vals.append(float(f"{v:.6g}"))
                text.append(_tick_text(v))
    return vals, text


def _scene_axis(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title, "font": {"size": 12}}, "backgroundcolor": "#f4f6f9", "showbackground": True,
            "gridcolor": "#d5d9e0", "zerolinecolor": "#8a93a3", **extra}


def _z_axis(low: float, high: float, log: bool, unit: str) -> tuple[dict, list[float], dict, float, float, float]:
    """(colour bar, z range, z tick settings, colour min, colour max, top of the θ stick) for one loss range."""
    bar_title = {"text": f"loss<br>({plot_text(unit)})", "side": "top"}
    if log:
        ticks, ticktext = log_ticks(low, high)
        colorbar = {"title": bar_title, "tickvals": [_round(math.log10(t)) for t in ticks], "ticktext": ticktext,
                    "len": 0.8}
        cmin, cmax = math.log10(low), math.log10(high)
        z_range = [cmin - 0.02 * (cmax - cmin), cmax + 0.02 * (cmax - cmin)]  # plotly: a log range is in log10
        z_ticks: dict[str, Any] = {"tickmode": "array", "tickvals": ticks, "ticktext": ticktext}
        return colorbar, z_range, z_ticks, cmin, cmax, 10 ** z_range[1]
    colorbar = {"title": bar_title, "len": 0.8, "exponentformat": "power"}
    z_range = [low - 0.02 * (high - low), high + 0.02 * (high - low)]
    return colorbar, z_range, {"nticks": 6, "exponentformat": "power"}, low, high, z_range[1]


def _surface_values(alphas: Sequence[float], grid: Sequence[Sequence[Any]], log: bool):
    """(z, colour) in plotly's [β index][α index] order from a grid stored [α][β]; gaps for non-finite losses
    (and for non-positive ones on a log axis)."""
    z: list[list[float | None]] = []
    colour: list[list[float | None]] = []
    for j in range(len(alphas)):
        row, crow = [], []
        for i in range(len(alphas)):
            v = _finite(grid[i][j])
            if log and v is not None and v <= 0:
                v = None
            row.append(_round(v))
            crow.append(None if v is None else _round(math.log10(v) if log else v))
        z.append(row)
        colour.append(crow)
    return z, colour


def _theta_trace(alphas, grid, theta: float | None, log: bool, top: float, scene: str, label: str) -> dict | None:
    """The red cross at θ with a stick up from it (None when θ's loss is unknown, or not positive on a log axis)."""
    if theta is None:
        theta = _grid_at_theta(alphas, grid)
    if theta is None or (log and theta <= 0):
        return None
    return {"type": "scatter3d", "mode": "lines+markers", "x": [0.0, 0.0], "y": [0.0, 0.0],
            "z": [_round(theta), _round(top)], "scene": scene, "name": "θ", "showlegend": False,
            "line": {"color": "#d62728", "width": 4}, "marker": {"symbol": "x", "size": [7, 0], "color": "#d62728"},
            "hovertemplate": f"θ (trained weights)<br>loss at θ {theta:.4g}<extra>{label}</extra>"}


def surface_figure(alphas: Sequence[float], grids: Mapping[str, Sequence[Sequence[Any]]], *, unit: str,
                   x_title: str, y_title: str, loss0: Mapping[str, float | None] | None = None) -> dict | None:
    """One 3D scene per split, two a row, on one colour scale and one z range; None without a finite point.

    ``grids[split][i][j]`` is the loss at (α_i, β_j); None (a non-finite loss) is a gap in the surface. A red
    cross marks θ (α = β = 0) at its loss (``loss0[split]``, else the grid's centre), with a red stick up from it
    so that it shows above the basin's walls; contour lines are projected on the floor. With losses over more than
    :data:`LOG_SPAN` the z axis and the colours are logarithmic (non-positive losses are then gaps too)."""
    splits = [s for s in ordered_splits(grids) if grids[s]]
    scale = _loss_range({s: grids[s] for s in splits})
    if scale is None or len(alphas) < 2:
        return None
    low, high, log = scale
    a = [_round(x) for x in alphas]
    traces: list[dict[str, Any]] = []
    cols = 1 if len(splits) == 1 else 2
    rows = math.ceil(len(splits) / cols)
    height = PANEL_HEIGHT * rows
    layout: dict[str, Any] = {"margin": {"l": 24, "r": 0, "t": 36, "b": 0}, "height": height,
                              "paper_bgcolor": "white", "font": {"family": "DejaVu Sans, Arial, sans-serif"},
                              "showlegend": False, "annotations": []}
    z_title = f"loss ({plot_text(unit)})"
    colorbar, z_range, z_ticks, cmin, cmax, top = _z_axis(low, high, log, unit)
    layout["coloraxis"] = {"colorscale": "Viridis", "cmin": _round(cmin), "cmax": _round(cmax),
                           "colorbar": colorbar}
    gap = 0.06
    width = (1.0 - gap * (cols - 1)) / cols
    for k, split in enumerate(splits):
        scene = "scene" if k == 0 else f"scene{k + 1}"
        row_index, col_index = divmod(k, cols)
        x0 = col_index * (width + gap)
        y_top = 1.0 - row_index / rows - (30 / height if row_index else 0.0)  # below rows: room for a title
        y_bottom = 1.0 - (row_index + 1) / rows
        z, colour = _surface_values(alphas, grids[split], log)
        label = _label(split)
        traces.append({
            "type": "surface", "x": a, "y": a, "z": z, "surfacecolor": colour, "coloraxis": "coloraxis",
            "scene": scene, "name": label, "connectgaps": False,
            "hovertemplate": "α %{x:.3g}<br>β %{y:.3g}<br>loss %{z:.4g}<extra>" + label + "</extra>",
            "contours": {"z": {"show": True, "usecolormap": True, "project": {"z": True}, "width": 1}},
            "lighting": {"ambient": 0.75, "diffuse": 0.5, "specular": 0.05, "roughness": 0.9},
        })
        theta = _theta_trace(alphas, grids[split], _finite((loss0 or {}).get(split)), log, top, scene, label)
        if theta is not None:
            traces.append(theta)
        layout[scene] = {
            "domain": {"x": [x0, x0 + width], "y": [y_bottom, y_top]},
            "xaxis": _scene_axis(x_title), "yaxis": _scene_axis(y_title),
            "zaxis": _scene_axis(z_title, type="log" if log else "linear", range=[_round(v) for v in z_range],
                                 **z_ticks),
            "aspectmode": "manual", "aspectratio": {"x": 1, "y": 1, "z": 0.7},
            "camera": {"eye": {"x": -1.9, "y": -2.1, "z": 1.05}},
        }
        layout["annotations"].append({"text": f"<b>{_label(split, 28)}</b>", "x": x0 + width / 2, "y": y_top,
                                      "xref": "paper", "yref": "paper", "yanchor": "bottom", "showarrow": False,
                                      "font": {"size": 14, "color": _colour(split, k)}})
    return {"data": traces, "layout": layout}


def curves_figure(alphas: Sequence[float], curves: Mapping[str, Sequence[Sequence[Any]]], *, unit: str,
                  max_directions: int = 4) -> dict | None:
    """The 1D curves: one panel per direction (at most ``max_directions``), one line per split, one loss axis
    for all (log when every loss is positive and they span more than :data:`LOG_SPAN`; two buttons switch);
    None without a finite point."""
    splits = [s for s in ordered_splits(curves) if curves[s]]
    n_dir = min(max((len(curves[s]) for s in splits), default=0), max_directions)
    if n_dir == 0 or len(alphas) < 2:
        return None
    values = [v for s in splits for c in curves[s][:n_dir] for v in (_finite(x) for x in c) if v is not None]
    if not values:
        return None
    positive = [v for v in values if v > 0]
    log = bool(positive) and len(positive) == len(values) and max(positive) / min(positive) > LOG_SPAN
    log_axis: dict[str, Any] = {"type": "log"}
    if positive:
        vals, text = log_ticks(min(positive), max(positive))
        log_axis.update(tickmode="array", tickvals=vals, ticktext=text)
    linear_axis = {"type": "linear", "tickmode": "auto", "tickvals": None, "ticktext": None}
    a = [_round(x) for x in alphas]
    gap = 0.05
    width = (1.0 - gap * (n_dir - 1)) / n_dir
    layout: dict[str, Any] = {"height": 380, "margin": {"l": 70, "r": 20, "t": 60, "b": 50},
                              "paper_bgcolor": "white", "plot_bgcolor": "white",
                              "font": {"family": "DejaVu Sans, Arial, sans-serif"},
                              "legend": {"orientation": "h", "x": 0.25, "xanchor": "left", "y": 1.16,
                                         "yanchor": "bottom"},
                              "hovermode": "closest"}
    traces: list[dict[str, Any]] = []
    axis_style = {"showline": True, "linecolor": "#5b6270", "mirror": True, "ticks": "outside",
                  "gridcolor": "#e6e9ee", "zeroline": False}
    y_names = []
    for d in range(n_dir):
        xa, ya = ("x", "y") if d == 0 else (f"x{d + 1}", f"y{d + 1}")
        xkey, ykey = ("xaxis", "yaxis") if d == 0 else (f"xaxis{d + 1}", f"yaxis{d + 1}")
        y_names.append(ykey)
        x0 = d * (width + gap)
        layout[xkey] = {"domain": [x0, x0 + width], "anchor": ya, "title": {"text": f"α, direction {d + 1}"},
                        **axis_style}
        layout[ykey] = {"anchor": xa, "exponentformat": "power", **axis_style,
                        **(log_axis if log else {"type": "linear"})}
        if d == 0:
            layout[ykey]["title"] = {"text": f"loss ({plot_text(unit)})"}
        else:
            layout[ykey]["matches"] = "y"
        for k, split in enumerate(splits):
            if d >= len(curves[split]):
                continue
            label = _label(split)
            traces.append({"type": "scatter", "mode": "lines+markers", "x": a,
                           "y": [_round(v) for v in curves[split][d]], "xaxis": xa, "yaxis": ya,
                           "name": label, "legendgroup": split, "showlegend": d == 0, "connectgaps": False,
                           "line": {"color": _colour(split, k), "width": 2}, "marker": {"size": 4},
                           "hovertemplate": f"α %{{x:.3g}}<br>loss %{{y:.4g}}<extra>{label}, direction {d + 1}"
                                            "</extra>"})

    def relayout(axis: dict[str, Any]) -> list[dict[str, Any]]:
        return [{f"{y}.{key}": value for y in y_names for key, value in axis.items()}]

    layout["updatemenus"] = [{
        "type": "buttons", "direction": "right", "x": 0.0, "xanchor": "left", "y": 1.16, "yanchor": "bottom",
        "showactive": True, "active": 1 if log else 0, "pad": {"r": 0, "t": 0},
        "buttons": [{"label": "linear loss", "method": "relayout", "args": relayout(linear_axis)},
                    {"label": "log loss", "method": "relayout", "args": relayout(log_axis)}],
    }]
    return {"data": traces, "layout": layout}


# ----------------------------------------------------------------------------------------------
# Tables


def _metric_labels() -> dict[str, tuple[str, str]]:
    """ratio name → (label, the direction that is worse), from the metric catalogue."""
    try:
        from traits import catalogue

        return {m.name: (m.report_label or m.label, m.worse) for m in catalogue.catalogue()}
    except Exception:  # noqa: BLE001 - the labels are a courtesy; the keys always show
        return {}


_COMPARISON = {"<=": "≤", ">=": "≥"}


_COMPARISON = {"<=": "≤", ">=": "≥"}


def ratio_rows(result: AuditResult) -> list[dict[str, Any]]:
    labels = _metric_labels()
    gates = {g.name: g for g in result.gates}
    rows = []
    for key, value in result.ratios.items():
        iv = result.ratio_intervals.get(key)
        kind = interval_kind(iv) if iv is not None else ""
        gate = gates.get(key)
        label, worse = labels.get(key, (key.removesuffix("_ratio").replace("_", " "), ""))
        rows.append({
            "key": key, "label": label, "worse": worse, "value": _finite(value),
            "low": _finite(iv.low) if iv is not None else None,
            "high": _finite(iv.high) if iv is not None else None,
            "status": iv.status if iv is not None else "",
            "kind": kind, "marker": kind_marker(kind),
            "gate": f"{_COMPARISON.get(gate.comparison, gate.comparison)} {fmt_num(gate.threshold, 3)}"
                    if gate is not None else "",
            "level": gate.level if gate is not None else "",
        })
    return rows


def gate_rows(result: AuditResult) -> list[dict[str, Any]]:
    order = {"fail": 0, "warn": 1, "pass": 2}
    return [{"name": g.name, "level": g.level, "rank": order.get(g.level, 3), "value": _finite(g.value),
             "threshold": _finite(g.threshold), "comparison": _COMPARISON.get(g.comparison, g.comparison),
             "interval": fmt_interval(g.low, g.high) if (g.low is not None or g.high is not None) else "",
             "determined": g.determined, "statement": g.statement} for g in result.gates]


def compound_tables(result: AuditResult, max_rows: int = MAX_COMPOUND_ROWS) -> list[dict[str, Any]]:
    """Per labelled split: its compounds (id, formula, target, prediction, error), the largest absolute errors
    first, at most ``max_rows``, with the per-compound values stored elsewhere in the result joined by id
    (:func:`traits.report.compounds.per_compound_columns`: embedding distance, σ, ‖∇θ f‖; a column only where some
    listed compound has a value); none for a label-free audit."""
    from traits.report.compounds import per_compound_columns

    if result.mode == "label-free":
        return []
    tables = []
    for split in ordered_splits(result.accuracy):
        acc = result.accuracy[split]
        n = len(acc.targets)
        if n == 0:
            continue
        columns = per_compound_columns(result, split)
        rows = []
        for i in range(n):
            target = _finite(acc.targets[i])
            pred = _finite(acc.predictions[i]) if i < len(acc.predictions) else None
            err = pred - target if pred is not None and target is not None else None
            cid = acc.ids[i] if i < len(acc.ids) else None
            rows.append({"id": cid if cid is not None else f"#{i + 1}",
                         "formula": acc.formulas[i] if i < len(acc.formulas) else "",
                         "target": target, "prediction": pred, "error": err,
                         "abs_error": abs(err) if err is not None else None,
                         "extra": [_finite(values.get(str(cid))) if cid is not None else None
                                   for values in columns.values()]})
        rows.sort(key=lambda r: -r["abs_error"] if r["abs_error"] is not None else math.inf)
        shown = rows[:max_rows]
        keep = [j for j in range(len(columns)) if any(r["extra"][j] is not None for r in shown)]
        for r in shown:
            r["extra"] = [r["extra"][j] for j in keep]
        labels = list(columns)
        tables.append({"split": split, "label": split_label(split), "n": n, "rows": shown,
                       "shown": min(n, max_rows), "mae": _finite(acc.mae), "extra": [labels[j] for j in keep],
                       "has_formulas": any(r["formula"] for r in rows), "open": split in ("id", "ood")})
    return tables


# ----------------------------------------------------------------------------------------------
# The page


def _num_attr(value: float | None) -> str:
    """A sort key for a ``data-v`` attribute: the number, or '' (sorted last) when missing."""
    return "" if value is None else f"{float(value):.7g}"


@functools.lru_cache(maxsize=2)
def _environment(directory: str) -> Environment:
    env = Environment(loader=FileSystemLoader(directory),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt_num
    env.filters["formula"] = formula_html
    env.filters["split"] = split_label
    env.filters["sortkey"] = _num_attr
    return env


def _templates_dir() -> Path:
    from traits.report.render import templates_dir

    return templates_dir()


def interactive_context(result: AuditResult) -> dict[str, Any]:
    """What the template shows: the header, the figures (as escaped JSON) and the table rows."""
    surf = result.surface
    unit = loss_unit(result.unit if len(result.unit) <= 40 else result.unit[:39] + "…", result.loss)
    figures = []
    if surf is not None:
        loss0 = {s: _finite(m.loss) for s, m in result.metrics.items()}
        grids = {s: g for s, g in surf.grids.items() if g}
        if grids and len(surf.alphas_2d) >= 2:
            fig = surface_figure(surf.alphas_2d, grids, unit=unit, x_title="α, filter-normalised",
                                 y_title="β, filter-normalised",
                                 loss0={s: _first(_grid_at_theta(surf.alphas_2d, g), loss0.get(s))
                                        for s, g in grids.items()})
            if fig is not None:
                figures.append({"id": "surfaces", "kind": "3d", "title": "Loss surfaces on two random directions",
                                "caption": "The loss over the plane of two random filter-normalised directions "
                                "through the trained weights θ (the red cross, with a red stick up from it), one "
                                "panel per split on one colour scale and one loss axis. Drag to turn a surface (the "
                                "other panels follow), scroll to zoom, hover for values; gaps are points where the "
                                "loss was not finite.",
                                "json": _json_block(fig)})
        planes = {s: g for s, g in surf.plane_grids.items() if g}
        if planes and len(surf.alphas_2d) >= 2:
            fig = surface_figure(surf.alphas_2d, planes, unit=unit, x_title="α along v_max",
                                 y_title="β along v_min",
                                 loss0={s: _grid_at_theta(surf.alphas_2d, g) for s, g in planes.items()})
            if fig is not None:
                figures.append({"id": "plane", "kind": "3d", "title": "Loss surfaces on the Hessian-eigenvector plane",
                                "caption": "The loss over the plane of the Hessian's top (v_max) and bottom (v_min) "
                                "eigenvectors at θ (dimensionless steps along unit directions); the rise along v_max "
                                "is usually orders of magnitude steeper, so zoom into the β direction to see its "
                                "curvature.", "json": _json_block(fig)})
        curves = {s: c for s, c in surf.curves.items() if c}
        if curves and len(surf.alphas_1d) >= 2:
            fig = curves_figure(surf.alphas_1d, curves, unit=unit)
            if fig is not None:
                figures.append({"id": "curves", "kind": "2d", "title": "1D loss curves",
                                "caption": "The loss along each random filter-normalised direction, one line per "
                                "split; α = 0 is θ. The buttons switch the loss axis between linear and log; drag "
                                "to zoom, double-click to reset.", "json": _json_block(fig)})
    ratios = ratio_rows(result)
    return {
        "r": result,
        "level_word": LEVEL_WORDS.get(result.status, str(result.status).upper()),
        "unit": unit,
        "figures": figures,
        "has_surface": surf is not None,
        "ratios": ratios,
        "ratio_kinds": sorted({q["kind"] for q in ratios if q["kind"]}),
        "gates": gate_rows(result),
        "compounds": compound_tables(result),
        "label_free": result.mode == "label-free",
        "max_rows": MAX_COMPOUND_ROWS,
        "target_unit": result.unit,
        "csp": Markup(content_security_policy([plotly_bundle(), PAGE_SCRIPT] if figures else [PAGE_SCRIPT])),
        "page_script": Markup(PAGE_SCRIPT),
        "plotly_js": Markup(plotly_bundle()) if figures else Markup(""),
        "plotly_version": plotly_version() if figures else "",
        "fmt_interval": fmt_interval,
        "kind_marker": kind_marker,
    }


def render_interactive(result: AuditResult) -> str:
    """The interactive page of ``result`` as one self-contained HTML string."""
    env = _environment(str(_templates_dir()))
    return env.get_template(TEMPLATE).render(**interactive_context(result))


def write_interactive(result: AuditResult, out_dir: Path) -> Path:
    """Write ``out_dir/report-interactive.html`` (atomically) and return its path: the audit's 2D loss surfaces
    (random directions and, when measured, the Hessian-eigenvector plane) as 3D surfaces to turn, the 1D curves,
    and sortable tables of the ratios with their intervals, the gates and, for each labelled split, every compound's
    prediction and error. Self-contained and offline; the PDF and ``report.html`` stay the reference."""
    out_dir = ensure_dir(Path(out_dir))
    return write_text_atomic(out_dir / INTERACTIVE_NAME, render_interactive(result))
