"""Figures for the book (used from every chapter). Every function returns a ``matplotlib.figure.Figure`` (nothing
is shown or saved) and its docstring names the chapter and figure. One style, set here only (:func:`book_style`):

- PNGs at :data:`DPI` (150) dots per inch, at most :data:`MAX_WIDTH` (8) inches wide (the book's text column
  shows them at about two thirds of their pixel size); text of at least :data:`FONT_SIZE` (9) points;
- perceptually uniform :data:`CAM_CMAP` (viridis) for Grad-CAM maps, reconstructions and prototypes, grey for
  images; every heatmap figure has a colour bar;
- one fixed colour per training objective (:data:`OBJECTIVE_COLORS`); the colour-blind-safe Okabe–Ito cycle
  otherwise.
"""

from __future__ import annotations

import functools
import re
from contextlib import contextmanager
from typing import Mapping, Optional, Sequence

import matplotlib as mpl
import numpy as np
import torch
from cycler import cycler
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = ["subplots", "image_grid", "cam_overlays", "reconstruction_rows", "protocol_diagram", "timing_plot",
           "history_plot", "false_positive_plot", "overlay", "book_style", "objective_color", "OBJECTIVE_COLORS",
           "CAM_CMAP", "DPI", "MAX_WIDTH", "FONT_SIZE"]

#: Resolution of every figure, hence of the PNGs stored in the notebooks.
DPI = 150
#: Widest figure, in inches (about the book's text column at 150 dpi, shown at ~2/3 size).
MAX_WIDTH = 8.0
#: Smallest font size (points) of any text in a figure; titles are one point larger.
FONT_SIZE = 9
TITLE_SIZE = 10
#: Colour map of Grad-CAM maps, reconstructions and prototypes (perceptually uniform).
CAM_CMAP = "viridis"
#: One colour per training objective of the paper (Okabe–Ito, colour-blind safe), in every plot of objectives.
OBJECTIVE_COLORS = {
    "ce": "#555555",                 # grey: the baseline
    "ce+proto": "#0072B2",           # blue
    "ce+batchcam": "#E69F00",        # orange
    "ce+proto+batchcam": "#009E73",  # bluish green
}
_CYCLE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]

#: The rcParams of :func:`book_style`.
BOOK_RC = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "figure.figsize": (6.0, 3.6),
    "font.size": FONT_SIZE,
    "axes.titlesize": TITLE_SIZE,
    "axes.labelsize": FONT_SIZE,
    "xtick.labelsize": FONT_SIZE,
    "ytick.labelsize": FONT_SIZE,
    "legend.fontsize": FONT_SIZE,
    "legend.title_fontsize": FONT_SIZE,
    "figure.titlesize": TITLE_SIZE + 1,
    "image.cmap": CAM_CMAP,
    "axes.prop_cycle": cycler(color=_CYCLE),
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
}


@contextmanager
def book_style():
    """Context manager: the book's matplotlib style (:data:`BOOK_RC`) for the figures made inside it (chapters 4
    and 5 draw their own figures of maps, [H, W] each, in it). Every function here already draws inside it; for a
    one-off figure: ``with plots.book_style(): fig, ax = plots.subplots(); ax.plot(...)``."""
    with mpl.rc_context(BOOK_RC):
        yield


def _styled(fn):
    """Draw the whole figure of ``fn`` inside :func:`book_style` (rcParams are read when artists are made)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with book_style():
            return fn(*args, **kwargs)
    return wrapper


def objective_color(name: str, default: Optional[str] = None) -> Optional[str]:
    """The fixed colour of a training objective (``"ce"``, ``"ce+proto"``, ...), else ``default`` (chapters 4–7)."""
    return OBJECTIVE_COLORS.get(str(name), default)


def _fit(width: float, height: float) -> tuple[float, float]:
    """Scale a figure size down (keeping its aspect) so that it is at most :data:`MAX_WIDTH` wide,
    rounded to whole pixels at :data:`DPI` (so that the ``<Figure size WxH>`` text is stable)."""
    scale = min(1.0, MAX_WIDTH / width)
    return round(width * scale * DPI) / DPI, round(height * scale * DPI) / DPI


def _wrap(text: str, width_in: float, fontsize: float = FONT_SIZE) -> str:
    """Break a panel title after spaces or slashes when it is wider than its panel (``width_in`` inches)."""
    chars = max(4, int(width_in * 72 / (0.6 * fontsize)))
    lines = [""]
    for word in re.findall(r"[^ /]+/?|/", text):
        if lines[-1] and len(lines[-1]) + 1 + len(word) > chars:
            lines.append("")
        sep = "" if not lines[-1] or lines[-1].endswith("/") else " "
        lines[-1] += sep + word
    return "\n".join(lines)


def subplots(nrows: int = 1, ncols: int = 1, figsize=None, squeeze: bool = True, layout=None):
    """Like ``plt.subplots`` but the Figure is not registered with pyplot: a notebook shows it once, as the
    cell's value, and a script never leaks open figures. The book's resolution (:data:`DPI`); ``layout`` is
    matplotlib's (``None``, ``"constrained"``, ``"tight"``). Chapters 4, 5 and 7 draw their own figures with it."""
    fig = Figure(figsize=figsize, dpi=DPI, layout=layout)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def to_numpy(img) -> np.ndarray:
    """[H, W] or [1, H, W] tensor/array (uint8 or float) → float [H, W] in [0, 1]."""
    a = img.detach().cpu().float().numpy() if isinstance(img, torch.Tensor) else np.asarray(img, dtype=float)
    a = a.squeeze()
    return a / 255.0 if a.max() > 1.0 else a


def colorbar(fig: Figure, axes, cmap: str, label: str, vmin: float = 0.0, vmax: float = 1.0):
    """One colour bar for a block of panels drawn with ``cmap`` on [vmin, vmax]."""
    sm = ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap)
    cb = fig.colorbar(sm, ax=axes, fraction=0.04, pad=0.02, aspect=25)
    cb.set_label(label, fontsize=FONT_SIZE)
    cb.ax.tick_params(labelsize=FONT_SIZE)
    cb.set_ticks([vmin, (vmin + vmax) / 2, vmax])
    return cb


_add_colorbar = colorbar  # for functions whose ``colorbar`` argument shadows the name


def overlay(ax, image, cam, alpha: float = 0.5, title: Optional[str] = None):
    """Draw ``image`` [H, W] or [1, H, W] in grey, ``cam`` [H, W] in [0, 1] on top in :data:`CAM_CMAP` (chapter 2;
    chapter 5's explorer). Returns the map's ``AxesImage`` (for a colour bar)."""
    ax.imshow(to_numpy(image), cmap="gray", vmin=0, vmax=1)
    im = ax.imshow(to_numpy(cam), cmap=CAM_CMAP, alpha=alpha, vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=FONT_SIZE)
    return im


@_styled
def image_grid(images, titles: Optional[Sequence[str]] = None, ncols: int = 10, cmap: str = "gray",
               size: float = 1.1, suptitle: Optional[str] = None, colorbar: Optional[bool] = None) -> Figure:
    """Grid of greyscale images [N, 1, H, W] or [N, H, W] (chapter 1: samples, prototypes). With a colour map
    other than grey the images are heatmaps and get a colour bar (``colorbar`` forces it on or off)."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    heat = colorbar if colorbar is not None else cmap not in ("gray", "grey", "Greys", "gray_r", "Greys_r")
    fig, axes = subplots(nrows, ncols, squeeze=False, layout="constrained",
                         figsize=_fit(size * ncols + (0.6 if heat else 0),
                                      (size + (0.25 if titles is not None else 0)) * nrows
                                      + (0.3 if suptitle else 0)))
    panel = fig.get_figwidth() / ncols
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(to_numpy(images[i]), cmap=cmap, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(_wrap(str(titles[i]), panel), fontsize=FONT_SIZE)
    if heat:
        _add_colorbar(fig, list(axes.flat), cmap, "value")
    if suptitle:
        fig.suptitle(suptitle, fontsize=TITLE_SIZE)
    return fig


@_styled
def cam_overlays(images, cams, titles: Optional[Sequence[str]] = None, ncols: int = 8,
                 rows: Optional[Mapping[str, torch.Tensor]] = None, size: float = 1.3) -> Figure:
    """Images [N, 1, H, W] with their Grad-CAM maps on top (chapter 2), and a colour bar for the maps. ``cams``
    [N, H, W]; or ``rows={"label": cams, ...}`` stacks several methods, one row each, below the plain images."""
    rows = dict(rows) if rows is not None else {"Grad-CAM": cams}
    n = min(len(images), ncols)
    label_in = 0.12 * max(len(str(label)) for label in rows) if rows else 0
    fig, axes = subplots(1 + len(rows), n, squeeze=False, layout="constrained",
                         figsize=_fit(size * n + label_in + 0.7, (size + 0.1) * (1 + len(rows)) + 0.2))
    panel = (fig.get_figwidth() - label_in - 0.7) / n
    for j in range(n):
        axes[0, j].imshow(to_numpy(images[j]), cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_axis_off()
        if titles is not None:
            axes[0, j].set_title(_wrap(str(titles[j]), panel), fontsize=FONT_SIZE)
        for i, maps in enumerate(rows.values(), start=1):
            overlay(axes[i, j], images[j], maps[j])
    for i, label in enumerate(rows, start=1):
        axes[i, 0].text(-0.08, 0.5, label, transform=axes[i, 0].transAxes, ha="right", va="center",
                        fontsize=FONT_SIZE, color=objective_color(label, "black"))
    if rows:
        colorbar(fig, list(axes[1:].flat), CAM_CMAP, "Grad-CAM")
    return fig


@_styled
def reconstruction_rows(rows: Mapping[str, torch.Tensor], class_names: Sequence[str], size: float = 1.0,
                        cmap: str = CAM_CMAP) -> Figure:
    """One row per entry of ``rows`` ({"label": [C, H, W] maps}): average reconstruction per class,
    prototypes, … (the paper's Figures 2–7; chapters 4–7), with a colour bar. A row whose label is an
    objective has its label in that objective's colour (:data:`OBJECTIVE_COLORS`)."""
    c = len(class_names)
    label_in = 0.085 * FONT_SIZE / 9 * max(len(str(label)) for label in rows) + 0.1
    fig, axes = subplots(len(rows), c, squeeze=False, layout="constrained",
                         figsize=_fit(size * c + label_in + 0.7, (size + 0.05) * len(rows) + 0.45))
    panel = (fig.get_figwidth() - label_in - 0.7) / c
    for i, (label, maps) in enumerate(rows.items()):
        for j in range(c):
            ax = axes[i, j]
            ax.imshow(to_numpy(maps[j]), cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(_wrap(str(class_names[j]), panel), fontsize=FONT_SIZE)
        axes[i, 0].set_ylabel(label, fontsize=FONT_SIZE, rotation=0, ha="right", va="center",
                              color=objective_color(label, "black"))
    colorbar(fig, list(axes.flat), cmap, "map value")
    return fig


@_styled
def protocol_diagram() -> Figure:
    """The training protocol with both losses (the paper's Figure 1; chapter 1)."""
    fig, ax = subplots(figsize=(MAX_WIDTH, 3.6))
    ax.set_xlim(0, 10), ax.set_ylim(0, 4.2), ax.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.99)

    def box(x, y, w, h, text, color):
        ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="black", linewidth=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=FONT_SIZE, linespacing=1.15)

    def arrow(x0, y0, x1, y1, text="", style="-|>"):
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle=style, lw=1.2))
        if text:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.14, text, ha="center", fontsize=FONT_SIZE)

    box(0.0, 2.35, 1.35, 1.0, "batch\n$x$ [B,1,H,W]\nlabels $y$", "#eeeeee")
    box(1.8, 2.4, 1.6, 0.9, "conv layers\nup to layer $\\ell$", "#cfe2f3")
    box(3.9, 2.4, 1.4, 0.9, "head\n(pool, linear)", "#cfe2f3")
    box(5.8, 2.95, 1.75, 0.7, "logits $z$ → CE", "#fce5cd")
    box(3.35, 0.75, 2.5, 1.1, "Batch Grad-CAM:\none autograd.grad of\n$\\Sigma_b\\, z_b[y_b]$ w.r.t. $A$", "#d9ead3")
    box(6.3, 1.4, 1.85, 0.8, "Prototype loss\n$d(R_b, P_{y_b})$", "#fff2cc")
    box(6.3, 0.25, 1.85, 0.8, "Batch-CAM loss\n$d(R_b, \\bar R_{y_b})$", "#fff2cc")
    box(8.6, 1.3, 1.4, 2.0, "$L = CE$\n$+ \\lambda_P L_P$\n$+ \\lambda_B L_B$", "#f4cccc")
    box(6.3, 2.35, 1.85, 0.45, "prototypes $P_c$", "#eeeeee")
    arrow(1.35, 2.85, 1.8, 2.85)
    arrow(3.4, 2.85, 3.9, 2.85, "$A$")
    arrow(5.3, 3.1, 5.8, 3.25)
    arrow(2.6, 2.4, 3.6, 1.85, "$A$")
    arrow(4.6, 2.4, 4.6, 1.85)
    arrow(5.85, 1.5, 6.3, 1.8, "$R$")
    arrow(5.85, 1.1, 6.3, 0.65, "$R$")
    arrow(7.55, 3.3, 8.6, 2.95)
    arrow(7.2, 2.35, 7.2, 2.2)
    arrow(8.15, 1.8, 8.6, 2.1)
    arrow(8.15, 0.65, 8.6, 1.55)
    ax.text(5.0, 4.0, "one forward pass; the Grad-CAM gradient is kept in the graph (create_graph=True)",
            ha="center", fontsize=FONT_SIZE, style="italic")
    return fig


@_styled
def timing_plot(rows: Sequence[Mapping], x: str = "batch_size", y: str = "ms", by: str = "method",
                title: str = "", ylabel: str = "time per batch (ms)") -> Figure:
    """Log–log lines of ``y`` against ``x``, one line per value of ``by`` (chapter 3's speed plot). ``rows``:
    dicts such as ``{"method": "batch", "batch_size": 64, "ms": 3.1}``. Lines keyed by an objective take its
    colour from :data:`OBJECTIVE_COLORS`."""
    fig, ax = subplots(figsize=(6.0, 3.8), layout="constrained")
    for key in dict.fromkeys(r[by] for r in rows):
        pts = sorted((r[x], r[y]) for r in rows if r[by] == key)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=str(key),
                color=objective_color(key))
    ax.set_xscale("log", base=2), ax.set_yscale("log")
    ax.set_xlabel(x.replace("_", " ")), ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=FONT_SIZE)
    return fig


@_styled
def history_plot(histories: Mapping[str, Sequence[Mapping]], keys: Sequence[str] = ("test_accuracy", "l1")) -> Figure:
    """Per-epoch curves of several runs side by side, one panel per metric key (chapter 6). A run
    named after an objective is drawn in that objective's colour (:data:`OBJECTIVE_COLORS`)."""
    fig, axes = subplots(1, len(keys), squeeze=False, layout="constrained",
                         figsize=_fit(4.0 * len(keys), 3.2))
    for ax, key in zip(axes[0], keys):
        for label, hist in histories.items():
            ax.plot([h["epoch"] for h in hist], [h[key] for h in hist], marker="o", label=label,
                    color=objective_color(label))
        ax.set_xlabel("epoch"), ax.set_title(key.replace("_", " "), fontsize=TITLE_SIZE)
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=FONT_SIZE)
    return fig


@_styled
def false_positive_plot(rates: Mapping[tuple[str, int], float], trials: int, nominal: float = 0.05) -> Figure:
    """How often each decision rule says "supported" for two groups drawn from one distribution, by group
    size n (chapter 7's figure of false positives). ``rates``: ``{(rule label, n): fraction}``, e.g. from
    ``batchcam.stats.simulate_false_positive_rate``; ``trials``: the experiments behind each rate. Bars in
    percent, grouped by n, with the Monte-Carlo 95 % Wilson interval of each rate, its value printed above
    it, and a dashed line at the ``nominal`` level."""
    rules, ns = list(dict.fromkeys(r for r, _ in rates)), sorted({n for _, n in rates})
    fig, ax = subplots(figsize=(5.5, 3.2), layout="constrained")
    width, z2 = 0.8 / len(rules), 1.96 ** 2
    for i, rule in enumerate(rules):
        pos = [j for j, n in enumerate(ns) if (rule, n) in rates]
        p = np.array([rates[rule, ns[j]] for j in pos])
        centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)  # Wilson score interval
        half = np.sqrt(z2 * p * (1 - p) / trials + z2 ** 2 / (4 * trials ** 2)) / (1 + z2 / trials)
        lo, hi = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
        xs = np.array(pos) + (i - (len(rules) - 1) / 2) * width
        ax.bar(xs, 100 * p, width * 0.9, color=_CYCLE[i], label=rule,
               yerr=100 * np.array([p - np.minimum(lo, p), np.maximum(hi, p) - p]), capsize=3)
        for x, v, top in zip(xs, p, hi):
            ax.text(x, 100 * top + 0.3, f"{100 * v:.1f} %", ha="center", va="bottom", fontsize=FONT_SIZE)
    ax.axhline(100 * nominal, color="black", linestyle="--", linewidth=1, label=f"nominal {100 * nominal:g} %")
    ax.set_xticks(range(len(ns)), [f"n = {n} per group" for n in ns])
    ax.set_ylabel('"supported" with no true effect (%)')
    ax.set_ylim(0, max(100 * nominal, 100 * max(rates.values())) * 1.3)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=FONT_SIZE, loc="upper right")
    return fig
