"""Figures of a report: plain numbers in, matplotlib ``Figure`` out.

Every function takes plain data (lists, dicts, floats) read from an :class:`~traits.results.AuditResult`
and returns a Figure drawn under :func:`style` (a bare ``matplotlib.figure.Figure``, rendered by Agg;
pyplot's global state is never touched); :func:`encode` turns a Figure into an SVG (for the HTML report)
and/or a PNG (for the PDF) and clears it. Figures are sized for an A4
page (:data:`PAGE_WIDTH` inches of text width) so that their fonts print at 8-10 pt.

Missing values (``None``: the loss was NaN or infinite there) are masked, never interpolated: grid
cells are left hatched grey, curves get a gap.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from traits.results import SPLIT_LABELS, nan_array

#: Text width of an A4 page with 2 cm margins, in inches: figures are drawn at this width.
PAGE_WIDTH = 6.7
#: Split colours, the same in every figure (colour-blind safe seaborn palette).
_PALETTE = sns.color_palette("colorblind")
SPLIT_COLORS = {"train": _PALETTE[2], "val": _PALETTE[4], "id": _PALETTE[0], "ood": _PALETTE[3]}
_EXTRA_COLORS = [_PALETTE[i] for i in (1, 5, 6, 7, 8, 9)]
#: Above this max/min ratio a loss colour scale is logarithmic.
LOG_SCALE_SPAN = 10.0
#: Largest number of direction panels drawn for the 1D curves.
MAX_DIRECTIONS = 4


def _rc() -> dict:
    return {
        "font.family": "DejaVu Sans",
        "font.size": 9,
        "axes.titlesize": 9.5,
        "axes.labelsize": 9,
        "xtick.labelsize": 8,
        "ytick.labelsize": 8,
        "legend.fontsize": 8,
        "legend.title_fontsize": 8,
        "figure.dpi": 100,
        "text.parse_math": False,  # user strings (units, split names) are never read as mathtext
        "svg.fonttype": "path",  # text as outlines: the SVG needs no font
        "axes.unicode_minus": True,
        "hatch.color": "#9a9a9a",
        "hatch.linewidth": 0.6,
    }


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The report's plotting style, scoped so that other matplotlib users are not affected."""
    with sns.axes_style("ticks"), matplotlib.rc_context(_rc()):
        yield


def split_label(split: str) -> str:
    return SPLIT_LABELS.get(split, split)


def split_color(split: str, index: int = 0):
    return SPLIT_COLORS.get(split, _EXTRA_COLORS[index % len(_EXTRA_COLORS)])


def loss_unit(unit: str, loss: str) -> str:
    """Unit of the loss (and of Hessian eigenvalues, the weights being dimensionless)."""
    if not unit:
        return "target units²" if loss == "mse" else "target units"
    return f"({unit})²" if loss == "mse" else unit


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _power_of_ten(value: float, _pos=None) -> str:
    """A log-axis tick as plain Unicode (10⁻³): mathtext is off, so user strings are never parsed."""
    if value <= 0 or not math.isfinite(value):
        return ""
    exponent = math.log10(value)
    if abs(exponent - round(exponent)) > 1e-6:
        return ""
    exponent = int(round(exponent))
    if exponent == 0:
        return "1"
    if exponent == 1:
        return "10"
    return "10" + str(exponent).translate(_SUPERSCRIPT)


def _log_y(ax) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=8))
    ax.yaxis.set_major_formatter(FuncFormatter(_power_of_ten))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _new_figure(height: float, width: float = PAGE_WIDTH) -> Figure:
    # Figure() rather than pyplot: no global backend or figure registry is touched (safe inside a
    # notebook), savefig renders with Agg, and nothing outlives the figure once it is cleared
    return Figure(figsize=(width, height), layout="constrained")


# ----------------------------------------------------------------------------------------------
# Accuracy


@dataclass(frozen=True)
class ParityData:
    split: str
    targets: Sequence[float]
    predictions: Sequence[float | None]
    mae: float | None = None
    r2: float | None = None


#: Residual histograms stop at this quantile of the pooled |residuals| (the few beyond are counted in the panel).
RESIDUAL_QUANTILE = 0.995


def parity_figure(panels: Sequence[ParityData], unit: str, target: str, residuals: bool = True) -> Figure:
    """Predicted vs DFT target, one panel per split side by side, with the same axis limits and y = x; with
    ``residuals``, under each the histogram of its residuals (predicted − DFT) on bins shared by every split, as a
    share of the split's compounds, so that the ID and OOD error distributions compare directly."""
    n = max(len(panels), 1)
    width = min(PAGE_WIDTH, 3.35 * n + 0.25)
    square = width / n * 0.92 + 0.2
    cleaned = []
    for p in panels:
        t, y = nan_array(p.targets), nan_array(p.predictions)
        size = min(len(t), len(y))
        t, y = t[:size], y[:size]
        ok = np.isfinite(t) & np.isfinite(y)
        cleaned.append((t[ok], y[ok], int((~ok).sum())))
    if residuals:
        fig = _new_figure(square + 1.55, width)
        grid = np.atleast_2d(fig.subplots(2, len(panels), squeeze=False,
                                          gridspec_kw={"height_ratios": [square, 1.35]}))
        axes, hist_axes = grid[0], grid[1]
    else:
        fig = _new_figure(square, width)
        axes, hist_axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, sharey=True)), []
    values = np.concatenate([np.concatenate([t, y]) for t, y, _ in cleaned] or [np.zeros(0)])
    if values.size:
        lo, hi = float(values.min()), float(values.max())
    else:
        lo, hi = 0.0, 1.0
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    name = target.replace("_", " ")
    for i, (ax, p, (t, y, dropped)) in enumerate(zip(axes, panels, cleaned)):
        color = split_color(p.split, i)
        ax.plot([lo, hi], [lo, hi], color="0.35", lw=0.9, ls="--", zorder=1, label="y = x")
        ax.scatter(t, y, s=9, alpha=0.55, color=color, edgecolors="none", zorder=2, rasterized=len(t) > 4000)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(f"DFT {name} ({unit})")
        if i == 0:
            ax.set_ylabel(f"predicted ({unit})")
        elif residuals:
            ax.tick_params(labelleft=False)
        title = f"{split_label(p.split)} (n = {len(t)})"
        ax.set_title(title)
        lines = []
        if p.mae is not None:
            lines.append(f"MAE {p.mae:.3g} {unit}")
        if p.r2 is not None:
            lines.append(f"R² {p.r2:.3f}")
        if dropped:
            lines.append(f"{dropped} non-finite omitted")
        if lines:
            ax.text(0.04, 0.96, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", fontsize=8,
                    bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.8", "alpha": 0.9})
        ax.grid(True, lw=0.4, alpha=0.5)
    if residuals:
        _residual_histograms(hist_axes, panels, [y - t for t, y, _ in cleaned], unit)
    return fig


def _residual_histograms(axes, panels: Sequence[ParityData], residuals: Sequence[np.ndarray], unit: str) -> None:
    """One histogram of residuals per split on common bins symmetric about 0 (share of the split's compounds)."""
    pooled = np.concatenate([np.abs(r) for r in residuals] or [np.zeros(0)])
    limit = float(np.quantile(pooled, RESIDUAL_QUANTILE)) if pooled.size else 1.0
    limit = limit if limit > 0 else (float(pooled.max()) if pooled.size and pooled.max() > 0 else 1.0)
    edges = np.linspace(-limit, limit, 31)
    top = 0.0
    for i, (ax, p, r) in enumerate(zip(axes, panels, residuals)):
        color = split_color(p.split, i)
        inside = r[np.abs(r) <= limit]
        if r.size:
            weights = np.full(inside.size, 100.0 / r.size)
            counts, _, _ = ax.hist(inside, bins=edges, weights=weights, color=color, alpha=0.55,
                                   edgecolor=color, linewidth=0.6)
            top = max(top, float(counts.max()) if counts.size else 0.0)
            mean = float(r.mean())
            ax.axvline(mean, color="0.15", lw=1.0, label="mean residual")
            beyond = int((np.abs(r) > limit).sum())
            note = f"mean {mean:+.3g} {unit}".replace("-", "−")
            if beyond:
                note += f"\n{beyond} beyond ±{limit:.3g} not shown"
            ax.text(0.02, 0.95, note, transform=ax.transAxes, ha="left", va="top", fontsize=7, color="0.25",
                    bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "none", "alpha": 0.85}, zorder=5)
        else:
            ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.axvline(0.0, color="0.35", lw=0.9, ls="--")
        ax.set_xlim(-limit, limit)
        ax.set_xlabel(f"residual, predicted − DFT ({unit})")
        if i == 0:
            ax.set_ylabel("compounds (%)")
        ax.grid(True, lw=0.4, alpha=0.5)
        ax.xaxis.set_major_locator(MaxNLocator(5, symmetric=True))
    for ax in axes:
        ax.set_ylim(0, top * 1.3 if top > 0 else 1.0)
        if ax is not axes[0]:
            ax.tick_params(labelleft=False)


# ----------------------------------------------------------------------------------------------
# Error by element: a periodic-table heatmap

def _table_positions() -> dict[str, tuple[float, int]]:
    """(row, column) of each element on the periodic table: rows 0-6 the periods, 7.4 and 8.4 the lanthanides
    and actinides set below (La and Ac in column 2), columns 0-17 the groups."""
    symbols = (
        "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y "
        "Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W "
        "Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt "
        "Ds Rg Cn Nh Fl Mc Lv Ts Og").split()
    starts = [(1, 2), (3, 10), (11, 18), (19, 36), (37, 54), (55, 86), (87, 118)]
    pos: dict[str, tuple[float, int]] = {}
    for period, (first, last) in enumerate(starts):
        for z in range(first, last + 1):
            sym = symbols[z - 1]
            if period == 0:
                col = 0 if z == 1 else 17
            elif period in (1, 2):
                offset = z - first
                col = offset if offset < 2 else offset + 10
            elif period in (3, 4):
                col = z - first
            else:
                offset = z - first
                if offset < 2:
                    col = offset
                elif 2 <= offset <= 16:  # La..Lu / Ac..Lr go to the f-block rows below
                    pos[sym] = (period + 2.4, offset)
                    continue
                else:
                    col = offset - 14
            pos[sym] = (float(period), col)
    return pos


PERIODIC_POSITIONS = _table_positions()


#: An element's cell counts as noisy (hatched, and left out of the colour scale's top) below this many compounds.
MIN_ELEMENT_COMPOUNDS = 3


#: A periodic-table cell's side and the height of its symbol strip (table units: one cell per column).
_CELL_SIZE, _CELL_TOP = 0.94, 0.4


def _element_scale(panels: Mapping[str, Mapping[str, tuple[float, int]]], min_n: int):
    """The heatmap's colour norm (0 to the top of the well-sampled values), colour map and whether any clips."""
    from matplotlib.colors import Normalize

    entries = [(v, n) for d in panels.values() for v, n in d.values() if v is not None and math.isfinite(v)]
    solid = [v for v, n in entries if n >= min_n] or [v for v, _ in entries]
    vmax = max(solid) if solid else 1.0
    clipped = any(v > vmax for v, _ in entries)
    norm = Normalize(vmin=0.0, vmax=vmax if vmax > 0 else 1.0, clip=True)
    cmap = sns.color_palette("rocket_r", as_cmap=True)
    return norm, cmap, clipped


def _element_block(ax, col: float, row: float, j: int, entry, width: float, norm, cmap, min_n: int,
                   text_size: float = 5.0) -> None:
    """Split ``j``'s coloured block of one element cell (grey without a value, hatched when noisy)."""
    size, top = _CELL_SIZE, _CELL_TOP
    x, y, h = col + j * width, row + top, size - top
    value = entry[0] if entry is not None else None
    if value is None or not math.isfinite(value):
        ax.add_patch(Rectangle((x, y), width, h, facecolor="#e4e4e4", edgecolor="white", linewidth=0.3))
        return
    ink = "white" if norm(value) > 0.55 else "black"
    ax.add_patch(Rectangle((x, y), width, h, facecolor=cmap(norm(value)), edgecolor="white", linewidth=0.3))
    if entry[1] < min_n:
        ax.add_patch(Rectangle((x, y), width, h, facecolor="none", edgecolor=ink, hatch="/////", linewidth=0,
                               alpha=0.4))
    ax.text(x + width / 2, y + h / 2, f"{value:.2g}".lstrip("0") if value < 1 else f"{value:.2g}",
            ha="center", va="center", fontsize=text_size, color=ink)


def _element_cells(ax, panels: Mapping[str, Mapping[str, tuple[float, int]]], splits: Sequence[str],
                   width: float, norm, cmap, min_n: int) -> None:
    """Every element's cell: its symbol strip and one block per split, or a faint cell where no split has it."""
    size, top = _CELL_SIZE, _CELL_TOP
    for sym, (row, col) in PERIODIC_POSITIONS.items():
        present = [panels[s].get(sym) for s in splits]
        if all(e is None for e in present):
            ax.add_patch(Rectangle((col, row), size, size, facecolor="#f1f1f1", edgecolor="none"))
            ax.text(col + size / 2, row + size / 2, sym, ha="center", va="center", fontsize=6.5, color="#b0b0b0")
            continue
        ax.add_patch(Rectangle((col, row), size, top, facecolor="white", edgecolor="#c8c8c8", linewidth=0.4))
        ax.text(col + size / 2, row + top / 2 + 0.02, sym, ha="center", va="center", fontsize=7,
                fontweight="bold", color="#1d2129")
        for j, entry in enumerate(present):
            _element_block(ax, col, row, j, entry, width, norm, cmap, min_n)


def _element_key(ax, panels: Mapping[str, Mapping[str, tuple[float, int]]], splits: Sequence[str],
                 width: float, what: str, min_n: int) -> None:
    """The key: one enlarged cell naming its blocks, the counts and the grey and hatched swatches."""
    size, top = _CELL_SIZE, _CELL_TOP
    kx, ky, scale = 2.6, 0.05, 1.9
    ax.add_patch(Rectangle((kx, ky), size * scale, top * scale, facecolor="white", edgecolor="#c8c8c8",
                           linewidth=0.4))
    ax.text(kx + size * scale / 2, ky + top * scale / 2, "symbol", ha="center", va="center", fontsize=6.5,
            color="0.3")
    for j, split in enumerate(splits):
        x = kx + j * width * scale
        ax.add_patch(Rectangle((x, ky + top * scale), width * scale, (size - top) * scale,
                               facecolor="#f7f7f7", edgecolor="#c8c8c8", linewidth=0.4))
        ax.text(x + width * scale / 2, ky + top * scale + (size - top) * scale / 2, split_label(split),
                ha="center", va="center", fontsize=6, color="0.15")
    counts = ", ".join(f"{split_label(s)} {sum(1 for v, _ in panels[s].values() if v is not None)}" for s in splits)
    ax.text(kx + size * scale + 0.25, ky + 0.15, f"{what} of the compounds containing each element\n"
            f"elements per split: {counts}", ha="left", va="top", fontsize=7, color="0.2", linespacing=1.5)
    ax.add_patch(Rectangle((kx + size * scale + 0.25, ky + 1.05), 0.45, 0.32, facecolor="#e4e4e4",
                           edgecolor="none"))
    ax.text(kx + size * scale + 0.8, ky + 1.21, "no compound of the split holds it", ha="left", va="center",
            fontsize=6, color="0.3")
    ax.add_patch(Rectangle((kx + size * scale + 0.25, ky + 1.5), 0.45, 0.32, facecolor="#f3c3a6",
                           edgecolor="0.3", hatch="/////", linewidth=0))
    ax.text(kx + size * scale + 0.8, ky + 1.66, f"fewer than {min_n} compounds", ha="left", va="center",
            fontsize=6, color="0.3")


def element_heatmap_figure(panels: Mapping[str, Mapping[str, tuple[float, int]]], unit: str,
                           what: str = "MAE", min_n: int = MIN_ELEMENT_COMPOUNDS) -> Figure:
    """One periodic table for every split (``panels[split][symbol] = (value, n compounds)``): each element's cell
    holds its symbol and, side by side in split order (ID left, OOD right), one block per split coloured by
    ``what`` (the MAE of the split's compounds containing the element) with the value printed in it, on one colour
    scale from 0. A block is grey where the split has no compound with the element.

    The scale's top is the largest value of an element with at least ``min_n`` compounds (a single compound's
    error would otherwise wash out every other cell); blocks of fewer compounds are hatched, and a value above the
    top shows in the darkest colour (the colour bar's arrow). The key and the colour bar sit in the table's empty
    top middle.

    Args:
        panels: per split, each element's ``(value, number of compounds)``.
        unit: the unit of the values (empty for none).
        what: what the values are (the colour bar's and the key's label).
        min_n: the fewest compounds of a cell that is not hatched and sets the colour scale's top.

    Returns:
        The periodic-table figure.
    """
    from matplotlib.colors import Normalize

    splits = list(panels)
    k = max(len(splits), 1)
    cell = PAGE_WIDTH / 18.3
    fig = Figure(figsize=(PAGE_WIDTH, 9.55 * cell + 0.1))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    norm, cmap, clipped = _element_scale(panels, min_n)
    width = _CELL_SIZE / k
    _element_cells(ax, panels, splits, width, norm, cmap, min_n)
    # the key: one enlarged cell naming its blocks, in the empty top middle of the table
    _element_key(ax, panels, splits, width, what, min_n)
    ax.set_xlim(-0.05, 18.0)
    ax.set_ylim(9.4, -0.05)
    ax.set_aspect("equal", anchor="N")
    ax.axis("off")
    bar_ax = ax.inset_axes((8.3, 1.55, 3.6, 0.22), transform=ax.transData)
    mappable = matplotlib.cm.ScalarMappable(norm=Normalize(vmin=norm.vmin, vmax=norm.vmax), cmap=cmap)
    bar = fig.colorbar(mappable, cax=bar_ax, orientation="horizontal", extend="max" if clipped else "neither")
    bar.ax.tick_params(labelsize=6, length=2, pad=1)
    bar.ax.xaxis.set_major_locator(MaxNLocator(5))
    bar.set_label(f"{what} ({unit})" if unit else what, fontsize=6.5, labelpad=1)
    return fig


# ----------------------------------------------------------------------------------------------
# Domain shift

SPACE_TITLES = {"composition": "composition", "embedding": "embedding"}


#: Distance histograms stop at this quantile of the pooled values (a long tail would squash the bulk).
TAIL_QUANTILE = 0.99


def _histograms(ax, values: Mapping[str, Sequence[float]], bins: int = 30, clip_tail: bool = False) -> None:
    """Step histograms (density, each split normalised on its own) on common bins. With ``clip_tail`` the
    axis stops at the pooled :data:`TAIL_QUANTILE` and the values beyond are counted in a note."""
    arrays = {s: nan_array(v) for s, v in values.items()}
    arrays = {s: a[np.isfinite(a)] for s, a in arrays.items()}
    pooled = np.concatenate([a for a in arrays.values() if a.size] or [np.zeros(0)])
    if pooled.size == 0:
        ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="0.4")
        return
    lo, hi = float(pooled.min()), float(pooled.max())
    note = ""
    if clip_tail and pooled.size >= 20:
        cut = float(np.quantile(pooled, TAIL_QUANTILE))
        if cut > lo and hi > cut * 1.2:
            hi = cut
            note = f"{int((pooled > hi).sum())} values beyond {hi:.3g} not shown"
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-9, bins + 1)
    for i, (split, a) in enumerate(arrays.items()):
        a = a[a <= edges[-1]]
        if a.size == 0:
            continue
        sns.histplot(x=a, bins=edges, stat="density", element="step", fill=True, alpha=0.18, linewidth=1.3,
                     color=split_color(split, i), ax=ax, label=split_label(split))
    if note:  # in headroom above the bars, so it never covers them
        ax.set_ylim(0, ax.get_ylim()[1] * 1.18)
        ax.text(0.98, 0.98, note, transform=ax.transAxes, ha="right", va="top", fontsize=6.5, color="0.35")


def shift_figure(targets: Mapping[str, Sequence[float]], distances: Mapping[str, Mapping[str, Sequence[float]]],
                 unit: str, target: str, k: int, band: tuple[float | None, float | None] | None = None) -> Figure:
    """Histograms (density, one outline per split) of the targets and of each distance space's kNN distances.

    ``distances[space][split]``: the per-compound mean distance to the ``k`` nearest training compounds.
    ``band``: the training 1st and 99th percentiles of the targets, drawn as dashed lines. Each panel is
    half the page wide (two per row) so that its axis text prints at 8-9 pt.
    """
    panels = 1 + len(distances)
    ncols = 1 if panels == 1 else 2
    nrows = math.ceil(panels / ncols)
    fig = _new_figure(2.75 * nrows + 0.35, PAGE_WIDTH)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    axes = axes[:panels]
    _histograms(axes[0], targets)
    if band is not None:
        for x in band:
            if x is not None and math.isfinite(x):
                axes[0].axvline(x, color="0.25", ls="--", lw=0.9)
    name = target.replace("_", " ")
    axes[0].set_xlabel(f"{name} ({unit})" if unit else name)
    axes[0].set_title("targets")
    for ax, (space, by_split) in zip(axes[1:], distances.items()):
        _histograms(ax, by_split, clip_tail=True)
        ax.set_xlabel("mean distance to the k nearest training\ncompounds (dimensionless)")
        ax.set_title(f"{SPACE_TITLES.get(space, space)} distance, k = {k}")
    for ax in axes:
        ax.set_ylabel("density (per x unit)")
        ax.grid(True, lw=0.4, alpha=0.5)
        ax.xaxis.set_major_locator(MaxNLocator(5))
    splits = list(dict.fromkeys([*targets, *(s for d in distances.values() for s in d)]))
    handles = [Patch(facecolor=(*split_color(s, i)[:3], 0.25), edgecolor=split_color(s, i), label=split_label(s))
               for i, s in enumerate(splits)]
    if band is not None:
        handles.append(Line2D([], [], color="0.25", ls="--", lw=0.9, label="training 1st / 99th percentile"))
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), frameon=False)
    return fig


def grad_norm_figure(norms: Mapping[str, Sequence[float]], unit: str) -> Figure:
    """Histograms (each split's share of structures per bin, one outline per split, common log-spaced bins) of the
    per-structure gradient norms ‖∇θ f_i‖ of the predictions, with each split's median as a dashed line."""
    fig = _new_figure(2.6, PAGE_WIDTH * 0.62)
    ax = fig.subplots()
    arrays = {s: nan_array(v) for s, v in norms.items()}
    arrays = {s: a[np.isfinite(a) & (a > 0)] for s, a in arrays.items()}
    pooled = np.concatenate([a for a in arrays.values() if a.size] or [np.zeros(0)])
    if pooled.size == 0:
        ax.text(0.5, 0.5, "no finite gradient norm", transform=ax.transAxes, ha="center", va="center", color="0.4")
        return fig
    lo, hi = float(pooled.min()), float(pooled.max())
    edges = np.geomspace(lo, hi if hi > lo else lo * 1.001, int(np.clip(np.sqrt(pooled.size / 2), 8, 30)) + 1)
    for i, (split, a) in enumerate(arrays.items()):
        if a.size == 0:
            continue
        color = split_color(split, i)
        share = np.full(a.size, 1.0 / a.size)
        ax.hist(a, bins=edges, weights=share, histtype="stepfilled", alpha=0.18, color=color)
        ax.hist(a, bins=edges, weights=share, histtype="step", lw=1.3, color=color,
                label=f"{split_label(split)} (median {float(np.median(a)):.3g}, n = {a.size})")
        ax.axvline(float(np.median(a)), color=color, ls="--", lw=0.9)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _pos=None: f"{v:.3g}")  # mathtext is off: never a $...$ label
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain if hi / lo < 10 else NullFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(f"gradient norm ‖∇θ f‖ per structure ({unit or 'target units'})")
    ax.set_ylabel("share of the split's structures")
    ax.grid(True, lw=0.4, alpha=0.5)
    fig.legend(loc="outside upper center", ncol=len(arrays), frameon=False, fontsize=7.5)
    return fig


# ----------------------------------------------------------------------------------------------
# Hessian


def density_figure(densities: Mapping[str, tuple[Sequence[float], Sequence[float]]], unit: str,
                   floor_fraction: float = 1e-6) -> Figure:
    """Spectral densities (grid, density) per split overlaid on a log y-axis.

    A density is floored at ``floor_fraction`` of the largest density so that empty stretches of the
    spectrum stay on the log scale.
    """
    fig = _new_figure(2.9)
    ax = fig.subplots()
    peaks = [np.nanmax(nan_array(d)) for _, d in densities.values() if len(d)]
    peak = max([p for p in peaks if np.isfinite(p) and p > 0] or [1.0])
    floor = peak * floor_fraction
    for i, (split, (grid, dens)) in enumerate(densities.items()):
        x, d = nan_array(grid), nan_array(dens)
        n = min(len(x), len(d))
        x, d = x[:n], np.where(np.isfinite(d[:n]), np.maximum(d[:n], floor), np.nan)
        color = split_color(split, i)
        ax.plot(x, d, color=color, lw=1.4, label=split_label(split))
        ax.fill_between(x, floor, d, color=color, alpha=0.12, lw=0)
    _log_y(ax)
    ax.set_ylim(floor, peak * 3)
    ax.set_xlabel(f"Hessian eigenvalue λ ({unit})")
    ax.set_ylabel(f"spectral density (per {unit})")
    ax.legend(frameon=False, loc="upper right")
    ax.grid(True, which="major", lw=0.4, alpha=0.5)
    return fig


def eigenvalue_figure(eigenvalues: Mapping[str, Sequence[float]], unit: str) -> Figure:
    """Top Hessian eigenvalues per split as grouped bars (index k on x, λ_k on y)."""
    fig = _new_figure(2.4)
    ax = fig.subplots()
    k = max((len(v) for v in eigenvalues.values()), default=0)
    width = 0.8 / max(len(eigenvalues), 1)
    for i, (split, values) in enumerate(eigenvalues.items()):
        x = np.arange(1, len(values) + 1) - 0.4 + width * (i + 0.5)
        ax.bar(x, values, width=width * 0.95, color=split_color(split, i), label=split_label(split))
    ax.set_xticks(np.arange(1, k + 1))
    ax.set_xlabel("eigenvalue rank k (dimensionless)")
    ax.set_ylabel(f"λ_k ({unit})")
    ax.legend(frameon=False)
    ax.grid(True, axis="y", lw=0.4, alpha=0.5)
    return fig


# ----------------------------------------------------------------------------------------------
# Loss surfaces


@dataclass(frozen=True)
class SurfaceScale:
    """The one colour scale shared by every 2D surface panel."""

    log: bool
    vmin: float
    vmax: float


#: The decades below its largest value a label-free surface's log colour scale spans (it is 0 at θ).
LABEL_FREE_DECADES = 4.0


def label_free_scale(grids: Mapping[str, Sequence[Sequence[float | None]]]) -> SurfaceScale | None:
    """The shared colour scale of label-free surfaces, which are 0 at θ (up to rounding): log10 from
    :data:`LABEL_FREE_DECADES` below the largest finite value (smaller values drawn at that floor) to it; linear
    when nothing is positive."""
    finite = np.concatenate([a[np.isfinite(a)] for a in (nan_array(g).ravel() for g in grids.values())] or [[]])
    if finite.size == 0:
        return None
    hi = float(finite.max())
    if hi <= 0:
        return SurfaceScale(False, float(finite.min()), hi + 1e-12)
    return SurfaceScale(True, math.log10(hi) - LABEL_FREE_DECADES, math.log10(hi))


def surface_scale(grids: Mapping[str, Sequence[Sequence[float | None]]]) -> SurfaceScale | None:
    """Shared colour scale: log10 when the finite positive losses span more than :data:`LOG_SCALE_SPAN`."""
    finite = np.concatenate([a[np.isfinite(a)] for a in (nan_array(g).ravel() for g in grids.values())] or [[]])
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    if lo > 0 and hi / lo > LOG_SCALE_SPAN:
        return SurfaceScale(True, math.log10(lo), math.log10(hi))
    if hi == lo:
        hi = lo + (abs(lo) * 1e-3 or 1e-12)
    return SurfaceScale(False, lo, hi)


def _tolerance_outline(ax, a, masked, level: float) -> None:
    """The tolerance contour 1 + τ, white under black so that it shows on any colour."""
    for color, width, z_order in (("white", 1.8, 2), ("black", 0.7, 3)):
        ax.contour(a, a, masked, levels=[level], colors=color, linewidths=width, linestyles="solid", zorder=z_order)


def _panel_frame(ax, split: str, finite) -> None:
    """θ marked at the origin, equal axes, the split as title (with its non-finite count), symmetric ticks."""
    ax.plot([0], [0], marker="+", color="red", ms=9, mew=1.6, zorder=4)
    ax.set_aspect("equal", adjustable="box")
    n_bad = int((~finite).sum())
    ax.set_title(split_label(split) + (f" ({n_bad} non-finite)" if n_bad else ""))
    ax.xaxis.set_major_locator(MaxNLocator(5, symmetric=True))
    ax.yaxis.set_major_locator(MaxNLocator(5, symmetric=True))


def surface_2d_figure(alphas: Sequence[float], grids: Mapping[str, Sequence[Sequence[float | None]]],
                      loss0: Mapping[str, float | None], tolerance: float, unit: str,
                      band: float | None = None, *, outline: bool = True, quantity: str = "loss") -> Figure:
    """Filled contours of the loss over (α, β) per split side by side on one colour scale.

    ``grids[split][i][j]`` is the loss at (α_i, β_j): α is drawn on x, β on y. Non-finite points are
    masked and show the hatched grey background. The solid white line is the tolerance contour of each
    split, L(θ) + δ with the audit's absolute ``band`` δ (results before schema 1.5: (1 + τ)·L(θ)); the
    cross marks θ itself. Without ``outline`` (a label-free surface, 0 at θ) no tolerance contour is drawn or
    named; ``quantity`` names what the colour bar shows.
    """
    scale = surface_scale(grids) if outline else label_free_scale(grids)
    n = len(grids)
    fig = _new_figure(PAGE_WIDTH / max(n, 1) * 0.85 + 0.45)
    axes = np.atleast_1d(fig.subplots(1, n, sharex=True, sharey=True))
    a = nan_array(alphas)
    levels = np.linspace(scale.vmin, scale.vmax, 16) if scale else None
    mappable = None
    for i, (ax, (split, grid)) in enumerate(zip(axes, grids.items())):
        z = nan_array(grid).T  # rows = β (y), columns = α (x)
        finite = np.isfinite(z)
        if scale and scale.log and not outline:  # 0 at θ: clipped to the scale's floor, never masked
            shown = np.where(finite, np.log10(np.maximum(z, 10**scale.vmin)), np.nan)
        elif scale and scale.log:
            shown = np.full_like(z, np.nan)
            positive = finite & (z > 0)
            shown[positive] = np.log10(z[positive])
        else:
            shown = z
        masked = np.ma.masked_invalid(shown)
        ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, facecolor="#e6e6e6", edgecolor="none",
                               hatch="////", zorder=0))
        if scale and masked.count() >= 4:
            mappable = ax.contourf(a, a, masked, levels=levels, cmap="viridis", extend="neither", zorder=1)
            l0 = loss0.get(split) if outline else None
            if l0 is not None and math.isfinite(l0) and l0 > 0:
                level = l0 + band if band is not None else (1 + tolerance) * l0
                level = math.log10(level) if scale.log else level
                if np.nanmin(shown) < level < np.nanmax(shown):
                    _tolerance_outline(ax, a, masked, level)
        _panel_frame(ax, split, finite)
        if i == 0:
            ax.set_ylabel("β, direction 2 (dimensionless)")
    fig.supxlabel("α, direction 1 (dimensionless)", fontsize=9)
    if mappable is not None:
        bar = fig.colorbar(mappable, ax=list(axes), shrink=0.9, pad=0.02, aspect=25)
        ticks = MaxNLocator(6).tick_values(scale.vmin, scale.vmax)
        bar.set_ticks([t for t in ticks if scale.vmin - 1e-12 <= t <= scale.vmax + 1e-12])
        bar.set_label(f"log₁₀ of {quantity} in {unit}" if scale.log else f"{quantity} ({unit})")
    handles = [
        Line2D([], [], color="black", lw=1.2, label=f"tolerance contour L(θ) + δ, δ = {band:.3g}" if band is not None
               else f"tolerance contour (1+τ)·L(θ), τ = {tolerance:g}"),
        Line2D([], [], color="red", marker="+", lw=0, ms=8, mew=1.6, label="θ (trained weights)"),
        Patch(facecolor="#e6e6e6", edgecolor="#9a9a9a", hatch="////", label=f"non-finite {quantity.split()[-1]}"
              if not outline else "non-finite loss"),
    ][0 if outline else 1:]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), frameon=False)
    return fig


@dataclass(frozen=True)
class PlaneScale:
    """Colour scale of the eigenvector plane, in :func:`plane_colour` units of L/L(θ)."""

    vmin: float
    vmax: float


def plane_colour(log_ratio):
    """The plane's colour coordinate: sign(x)·log10(1 + |x|) of x = log10 L/L(θ). Doubly logarithmic, so
    that a rise of a few percent (the flat β axis) and one of ten orders of magnitude (along the top
    eigenvector) both show on one scale; 0 is L = L(θ)."""
    x = np.asarray(log_ratio, dtype=float)
    return np.sign(x) * np.log10(1.0 + np.abs(x))


def plane_scale(grids: Mapping[str, Sequence[Sequence[float | None]]],
                loss0: Mapping[str, float | None]) -> PlaneScale | None:
    """Shared scale over every split: the range of :func:`plane_colour` of L/L(θ) (at least up to 2 L(θ))."""
    pooled = []
    for split, grid in grids.items():
        l0 = loss0.get(split)
        if l0 is None or not math.isfinite(l0) or l0 <= 0:
            continue
        z = nan_array(grid) / l0
        pooled.append(plane_colour(np.log10(z[np.isfinite(z) & (z > 0)])))
    values = np.concatenate(pooled) if pooled else np.zeros(0)
    if values.size == 0:
        return None
    lo = float(max(min(values.min(), 0.0), float(plane_colour(-2.0))))
    hi = float(max(values.max(), float(plane_colour(math.log10(2.0))), lo + 1e-6))
    return PlaneScale(lo, hi)


def _ratio_label(ratio: float) -> str:
    if ratio >= 1e3 or ratio < 0.01:
        return _power_of_ten(ratio)
    return f"{ratio:g}"


def _plane_ticks(scale: PlaneScale) -> tuple[list[float], list[str]]:
    """Colour-bar ticks at round values of L/L(θ) (0.01 ... 1e16), placed in plane-colour units."""
    ratios = [0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 100.0, 1e4, 1e8, 1e16, 1e32]
    ticks, labels = [], []
    for r in ratios:
        t = float(plane_colour(math.log10(r)))
        if scale.vmin - 1e-9 <= t <= scale.vmax + 1e-9:
            ticks.append(t)
            labels.append(_ratio_label(r))
    return ticks, labels


def plane_2d_figure(alphas: Sequence[float], grids: Mapping[str, Sequence[Sequence[float | None]]],
                    loss0: Mapping[str, float | None], tolerance: float, band: float | None = None) -> Figure:
    """The Hessian-eigenvector plane per split, coloured by L/L(θ) on one doubly logarithmic scale.

    The outlined contour is each split's tolerance, L = L(θ) + δ (the audit's absolute ``band``; before schema
    1.5, L/L(θ) = 1 + τ).

    Relative to each split's own L(θ), so that the shape near θ shows and not the split's loss level;
    :func:`plane_colour` compresses the orders-of-magnitude rise along the top eigenvector so that the
    slight one along the bottom eigenvector shows too (the colour bar is labelled in L/L(θ)). α runs along
    the top eigenvector, β along the bottom one.
    """
    scale = plane_scale(grids, loss0)
    n = len(grids)
    fig = _new_figure(PAGE_WIDTH / max(n, 1) * 0.85 + 0.45)
    axes = np.atleast_1d(fig.subplots(1, n, sharex=True, sharey=True))
    a = nan_array(alphas)
    mappable = None
    for i, (ax, (split, grid)) in enumerate(zip(axes, grids.items())):
        z = nan_array(grid).T  # rows = β (y), columns = α (x)
        finite = np.isfinite(z)
        l0 = loss0.get(split)
        shown = np.full_like(z, np.nan)
        if l0 is not None and math.isfinite(l0) and l0 > 0:
            ok = finite & (z > 0)
            shown[ok] = plane_colour(np.log10(z[ok] / l0))
        ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, facecolor="#e6e6e6", edgecolor="none",
                               hatch="////", zorder=0))
        masked = np.ma.masked_invalid(np.clip(shown, scale.vmin, scale.vmax) if scale else shown)
        if scale and masked.count() >= 4:
            levels = np.linspace(scale.vmin, scale.vmax, 21)
            mappable = ax.contourf(a, a, masked, levels=levels, cmap="viridis", zorder=1)
            rel = 1 + (band / l0 if band is not None and l0 else tolerance)
            level = float(plane_colour(math.log10(rel)))
            if np.nanmin(masked) < level < np.nanmax(masked):
                _tolerance_outline(ax, a, masked, level)
        _panel_frame(ax, split, finite)
        if i == 0:
            ax.set_ylabel("β along v_min (dimensionless)")
    fig.supxlabel("α along v_max, the top eigenvector (dimensionless)", fontsize=9)
    if mappable is not None:
        bar = fig.colorbar(mappable, ax=list(axes), shrink=0.9, pad=0.02, aspect=25)
        ticks, labels = _plane_ticks(scale)
        bar.set_ticks(ticks)
        bar.set_ticklabels(labels)
        bar.set_label("L/L(θ) (dimensionless, doubly log scale)")
    handles = [
        Line2D([], [], color="black", lw=1.2, label=f"tolerance L = L(θ) + δ, δ = {band:.3g}" if band is not None
               else f"tolerance L/L(θ) = 1 + τ, τ = {tolerance:g}"),
        Line2D([], [], color="red", marker="+", lw=0, ms=8, mew=1.6, label="θ (trained weights)"),
        Patch(facecolor="#e6e6e6", edgecolor="#9a9a9a", hatch="////", label="non-finite loss"),
    ]
    fig.legend(handles=handles, loc="outside upper center", ncol=3, frameon=False)
    return fig


@dataclass(frozen=True)
class CurveSet:
    """One split's 1D curves (one per direction), the loss at θ and its robust radii."""

    split: str
    curves: Sequence[Sequence[float | None]]
    loss0: float | None
    radius: float | None = None
    censored: bool = False
    radius_per_direction: Sequence[float | None] = ()
    jumps: Sequence[Sequence[float]] = ()


PLANE_TITLES = {"grids": "random plane", "plane_grids": "eigenvector plane"}


def persistence_figure(topology: Mapping[str, Mapping[str, Mapping]]) -> Figure | None:
    """The persistence of every local minimum of each 2D surface, as a share of that surface's loss range:
    one panel per plane ("grids", "plane_grids"), one row per split, one tick per minimum that merges
    into an older basin (log x axis), the global minimum (which never merges) as a triangle at the right
    edge. The dotted line is the threshold of the "persistent minima" count. A surface without a topology
    (a diverged point) has an empty row."""
    panels = [(name, splits) for name, splits in topology.items() if any("pairs" in t for t in splits.values())]
    if not panels:
        return None
    values = [(d - b) / t["loss_range"] for _, splits in panels for t in splits.values()
              if t.get("loss_range") for b, d in t.get("pairs", ()) if d > b]
    lo = min([*values, 1e-3]) / 2
    fig = _new_figure(0.9 + 0.45 * max(len(splits) for _, splits in panels))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, splits) in zip(axes, panels):
        names = list(splits)
        for row, split in enumerate(names):
            t = splits[split]
            color = split_color(split, row)
            if t.get("loss_range"):
                p = [(d - b) / t["loss_range"] for b, d in t.get("pairs", ()) if d > b]
                ax.scatter(p, [row] * len(p), marker="|", s=120, color=color, lw=1.2)
                ax.scatter([1.0], [row], marker=">", s=30, color=color)
                ax.text(1.0, row + 0.32, f"{t['n_minima']} minima", ha="right", va="bottom", fontsize="small")
            threshold = t.get("threshold")
        if threshold:
            ax.axvline(threshold, color="0.3", ls=":", lw=1.0)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=8))
        ax.xaxis.set_major_formatter(FuncFormatter(_power_of_ten))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(lo, 1.6)
        ax.set_ylim(-0.6, len(names) - 0.1)
        ax.set_yticks(range(len(names)), [split_label(s) for s in names])
        ax.set_title(PLANE_TITLES.get(name, name))
        ax.set_xlabel("persistence / loss range")
        ax.grid(True, axis="x", lw=0.4, alpha=0.5)
    return fig


def _jump_heights(a: np.ndarray, y: np.ndarray, positions: Sequence[float]) -> np.ndarray:
    """Where to draw jump markers: the curve's value just inside each jump (nearer θ), or NaN."""
    ok = np.isfinite(y)
    out = np.full(len(positions), np.nan)
    for k, p in enumerate(positions):
        inside = ok & (np.abs(a) <= abs(p)) & (np.sign(a) * np.sign(p) >= 0)
        if inside.any():
            out[k] = y[inside][np.argmax(np.abs(a[inside]))]
    return out


def _normalised(curve: np.ndarray, loss0: float | None) -> np.ndarray:
    if loss0 is None or not math.isfinite(loss0) or loss0 <= 0:
        return np.full_like(curve, np.nan)
    return curve / loss0


def _curve_threshold(s: CurveSet, tolerance: float, band: float | None) -> float:
    """A split's tolerance line: 1 + δ/L(θ) with an absolute band δ, else 1 + τ."""
    if band is not None and s.loss0 is not None and math.isfinite(s.loss0) and s.loss0 > 0:
        return 1 + band / s.loss0
    return 1 + tolerance


def _draw_curve(ax, d: int, a: np.ndarray, i: int, s: CurveSet, tolerance: float,
                band: float | None) -> tuple[bool, bool]:
    """Split ``s``'s curve along direction ``d`` with its non-finite points, radius and jumps; returns
    whether it drew a non-finite point and whether it drew a jump."""
    any_bad = any_jump = False
    color = split_color(s.split, i)
    y = _normalised(nan_array(s.curves[d]), s.loss0)
    ax.plot(a, y, color=color, lw=1.5, marker="o", ms=2.5, label=split_label(s.split))
    bad = ~np.isfinite(nan_array(s.curves[d]))
    if bad.any():
        any_bad = True
        ax.plot(a[bad], np.full(bad.sum(), 1.0), lw=0, marker="x", color=color, ms=6)
    r = s.radius_per_direction[d] if d < len(s.radius_per_direction) else s.radius
    if r is not None and math.isfinite(r):
        for sign in (-1, 1):
            ax.axvline(sign * r, color=color, ls=":", lw=1.3)
        if s.censored and r == s.radius:
            ax.plot([r], [_curve_threshold(s, tolerance, band)], marker=">", color=color, ms=6, lw=0)
    positions = [p for p in (s.jumps[d] if d < len(s.jumps) else ()) if p is not None and math.isfinite(p)]
    if positions:
        any_jump = True
        heights = _jump_heights(a, y, positions)
        drawn = np.isfinite(heights)
        ax.plot(np.asarray(positions)[drawn], heights[drawn], lw=0, marker="*", ms=9, color=color,
                markeredgecolor="0.15", markeredgewidth=0.5, zorder=5)
        ax.axvline(min(positions, key=abs), color=color, ls="-.", lw=1.2)
    return any_bad, any_jump


def _curves_legend(fig: Figure, sets: Sequence[CurveSet], tolerance: float, band: float | None,
                   any_bad: bool, any_jump: bool) -> None:
    """The 1D curves' legend below the panels: splits, tolerance, radius, and jumps and gaps when drawn."""
    handles = [Line2D([], [], color=split_color(s.split, i), lw=1.5, marker="o", ms=3,
                          label=split_label(s.split)) for i, s in enumerate(sets)]
    handles += [
        Line2D([], [], color="0.2", ls="--", lw=1.0, label=f"tolerance 1 + τ = {1 + tolerance:g}" if band is None
               else f"tolerance 1 + δ/L(θ), δ = {band:.3g}"),
        Line2D([], [], color="0.3", ls=":", lw=1.3, label="± robust radius"),
    ]
    if any_jump:
        handles += [
            Line2D([], [], color="0.3", lw=0, marker="*", ms=8, label="loss jump"),
            Line2D([], [], color="0.3", ls="-.", lw=1.2, label="first jump"),
        ]
    if any_bad:
        handles.append(Line2D([], [], color="0.3", lw=0, marker="x", ms=6, label="non-finite loss (drawn at 1)"))
    ncol = len(handles) if len(handles) <= 5 else math.ceil(len(handles) / 2)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False)


def curves_1d_figure(alphas: Sequence[float], sets: Sequence[CurveSet], tolerance: float,
                     band: float | None = None) -> Figure:
    """L(α)/L(0) per direction (one panel each, at most :data:`MAX_DIRECTIONS`), splits overlaid.

    The dashed line is the tolerance 1 + τ, or with the audit's absolute ``band`` δ each split's own
    1 + δ/L(θ) in its colour (the same rise δ for every split); the dotted vertical lines at ±r mark each split's robust
    radius along that direction (a triangle marks a censored radius: the curve never left tolerance).
    Loss jumps (``CurveSet.jumps``, signed α per direction) are drawn as stars on the curve, and the jump
    nearest θ of each split gets a dash-dot vertical line: its discontinuity scale along that direction.

    Args:
        alphas: the step sizes α of every curve.
        sets: one :class:`CurveSet` per split.
        tolerance: the relative tolerance τ.
        band: the absolute band δ, when the audit used one (then each split gets its own line).

    Returns:
        The figure of up to :data:`MAX_DIRECTIONS` direction panels.
    """
    n_dir = min(max((len(s.curves) for s in sets), default=1), MAX_DIRECTIONS)
    ncols = min(n_dir, 2)
    nrows = math.ceil(n_dir / ncols)
    fig = _new_figure(2.6 * nrows + 0.35)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    a = nan_array(alphas)
    ratios = np.concatenate([
        _normalised(nan_array(c), s.loss0) for s in sets for c in s.curves[:n_dir]
    ] or [np.ones(1)])
    finite = ratios[np.isfinite(ratios) & (ratios > 0)]
    use_log = finite.size > 0 and finite.max() / max(finite.min(), 1e-300) > 20
    any_bad = any_jump = False
    for d, ax in enumerate(axes):
        if d >= n_dir:
            ax.set_visible(False)
            continue
        for i, s in enumerate(sets):
            if d >= len(s.curves):
                continue
            bad, jump = _draw_curve(ax, d, a, i, s, tolerance, band)
            any_bad, any_jump = any_bad or bad, any_jump or jump
        if band is None:
            ax.axhline(1 + tolerance, color="0.2", ls="--", lw=1.0)
        else:
            for i, s in enumerate(sets):
                ax.axhline(_curve_threshold(s, tolerance, band), color=split_color(s.split, i), ls="--", lw=1.0)
        ax.set_title(f"direction {d + 1}")
        ax.set_xlabel("α along the direction (dimensionless)")
        if d % ncols == 0:
            ax.set_ylabel("L(α) / L(0) (ratio, dimensionless)")
        if use_log:
            _log_y(ax)
        ax.xaxis.set_major_locator(MaxNLocator(5, symmetric=True))
        ax.grid(True, lw=0.4, alpha=0.5)
    _curves_legend(fig, sets, tolerance, band, any_bad, any_jump)
    return fig


# ----------------------------------------------------------------------------------------------
# Summary: every OOD/ID ratio against its gate


@dataclass(frozen=True)
class RatioPoint:
    """One OOD/ID ratio of one audit: value, interval (or None), gate threshold (or None) and level."""

    label: str
    value: float
    low: float | None = None
    high: float | None = None
    threshold: float | None = None
    level: str = ""  # "pass" | "warn" | "fail" | "" (no gate)
    series: str = ""  # which audit, when several are compared


LEVEL_COLORS = {"pass": "#1b7f3b", "warn": "#b07800", "fail": "#b3261e", "": "#3a4a5c"}
_SERIES_MARKERS = ("o", "s", "D", "^")


def ratio_figure(points: Sequence[RatioPoint]) -> Figure:
    """OOD/ID ratios on one logarithmic axis: a dot per ratio (coloured by its gate's level), its interval
    as a bar, its gate threshold as a grey tick, and the line ratio = 1 (OOD like ID). With several
    series (``RatioPoint.series``: two audits compared), each series gets its own marker, offset."""
    labels = list(dict.fromkeys(p.label for p in points))
    series = list(dict.fromkeys(p.series for p in points))
    fig = _new_figure(0.2 * len(labels) + 0.75)
    ax = fig.subplots()
    values = [v for p in points for v in (p.value, p.low, p.high, p.threshold)
              if v is not None and math.isfinite(v) and v > 0]
    lo, hi = (min(values + [1.0]), max(values + [1.0])) if values else (0.5, 2.0)
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.6, hi * 1.6)
    ax.axvline(1.0, color="0.45", lw=1.0, zorder=1)
    step = 0.32 if len(series) > 1 else 0.0
    for p in points:
        if p.value is None or not math.isfinite(p.value) or p.value <= 0:
            continue
        row = labels.index(p.label)
        k = series.index(p.series)
        y = row + (k - (len(series) - 1) / 2) * step
        color = LEVEL_COLORS.get(p.level, LEVEL_COLORS[""])
        if p.low is not None and p.high is not None and p.low > 0 and p.high > 0:
            ax.plot([p.low, p.high], [y, y], color=color, lw=2.2, alpha=0.55, solid_capstyle="butt", zorder=2)
        ax.plot([p.value], [y], marker=_SERIES_MARKERS[k % len(_SERIES_MARKERS)], color=color, ms=6.5, lw=0,
                markeredgecolor="white", markeredgewidth=0.6, zorder=3)
    for label in labels:
        row = labels.index(label)
        thresholds = {p.threshold for p in points if p.label == label and p.threshold}
        for t in thresholds:
            ax.plot([t], [row], marker="|", color="0.25", ms=14, mew=1.8, lw=0, zorder=2)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    decades = math.log10(hi * 1.6) - math.log10(lo / 1.6)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 3 else (1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())  # mathtext is off: default minor labels would be raw TeX
    ax.set_xlabel("OOD / ID ratio (dimensionless, log scale)")
    ax.grid(True, axis="x", which="major", lw=0.4, alpha=0.5)
    handles = [Line2D([], [], color=LEVEL_COLORS[lv], marker="o", lw=0, ms=6, label=name)
               for lv, name in (("pass", "gate passed"), ("warn", "gate warns"), ("fail", "gate failed"),
                                ("", "no gate"))
               if any(p.level == lv for p in points)]
    handles.append(Line2D([], [], color="0.25", marker="|", lw=0, ms=10, mew=1.8, label="gate threshold"))
    if any(p.low is not None and p.high is not None for p in points):
        handles.append(Line2D([], [], color="0.4", lw=2.2, alpha=0.55, label="95% interval"))
    if len(series) > 1:
        handles += [Line2D([], [], color="0.3", marker=_SERIES_MARKERS[k % len(_SERIES_MARKERS)], lw=0, ms=6,
                           label=name) for k, name in enumerate(series)]
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 6 if len(series) < 2 else 4),
               frameon=False,
               fontsize=7.5, handletextpad=0.4, columnspacing=1.2)
    return fig


# ----------------------------------------------------------------------------------------------
# Encoding


@dataclass(frozen=True)
class EncodedFigure:
    """A figure as embeddable data URIs: ``svg`` for screens, ``png`` for print (either may be empty),
    and its drawn width in inches (the report shows it at that size, or narrower on a small screen)."""

    svg: str = ""
    png: str = ""
    width_in: float = PAGE_WIDTH


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure_to_svg(fig: Figure, salt: str = "traits") -> str:
    """SVG text of a figure, byte-for-byte reproducible (fixed id salt, no date)."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return buf.getvalue()


def figure_to_png(fig: Figure, dpi: int = 200) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def freeze_layout(fig: Figure) -> bool:
    """Keep the layout of the figure's last draw for its later ones, where that layout is settled: the layout
    engine (constrained layout, which every ``savefig`` runs again) is replaced by a placeholder that lays nothing
    out. Axes positions are fractions of the figure, so the layout computed while drawing one format serves
    another format and dpi (measured on the quickstart's figures: the two layouts differ by at most 0.025 inch,
    from the renderers' text metrics). Not where an Axes has a fixed aspect ratio (2D surfaces, parity plots):
    constrained layout does not settle in one pass around those (the panels of a 2D surface move by up to half an
    inch from one pass to the next), so each format is laid out again, as before. True if the layout was kept."""
    if fig.get_layout_engine() is None or any(ax.get_aspect() != "auto" for ax in fig.axes):
        return False
    fig.set_layout_engine("none")
    return True


def encode(fig: Figure, *, svg: bool = True, png_dpi: int | None = None, salt: str = "traits") -> EncodedFigure:
    """Data URIs of a figure (SVG and/or PNG at ``png_dpi``); the figure is closed afterwards. With both formats
    the PNG reuses the layout computed while the SVG was drawn where that layout is settled (:func:`freeze_layout`)."""
    try:
        svg_uri = _data_uri("image/svg+xml", figure_to_svg(fig, salt).encode("utf-8")) if svg else ""
        if svg and png_dpi:
            freeze_layout(fig)
        png_uri = _data_uri("image/png", figure_to_png(fig, png_dpi)) if png_dpi else ""
        width = float(fig.get_figwidth())
    finally:
        fig.clear()
    return EncodedFigure(svg=svg_uri, png=png_uri, width_in=round(width, 3))
