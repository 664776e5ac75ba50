"""Figures for the book. Every function returns a ``matplotlib.figure.Figure`` (nothing is shown or saved).

Used from every chapter; the figure each function draws is named in its docstring.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = ["subplots", "image_grid", "cam_overlays", "reconstruction_rows", "protocol_diagram", "timing_plot", "history_plot",
           "overlay"]


def subplots(nrows: int = 1, ncols: int = 1, figsize=None, squeeze: bool = True):
    """Like ``plt.subplots`` but the Figure is not registered with pyplot: a notebook shows it once,
    as the cell's value, and a script never leaks open figures."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _np(img) -> np.ndarray:
    """[H, W] or [1, H, W] tensor/array (uint8 or float) → float [H, W] in [0, 1]."""
    a = img.detach().cpu().float().numpy() if isinstance(img, torch.Tensor) else np.asarray(img, dtype=float)
    a = a.squeeze()
    return a / 255.0 if a.max() > 1.0 else a


def overlay(ax, image, cam, alpha: float = 0.5, title: Optional[str] = None) -> None:
    """Draw ``image`` in grey with ``cam`` ([H, W] in [0, 1]) on top in the 'jet' colour map."""
    ax.imshow(_np(image), cmap="gray", vmin=0, vmax=1)
    ax.imshow(_np(cam), cmap="jet", alpha=alpha, vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def image_grid(images, titles: Optional[Sequence[str]] = None, ncols: int = 10, cmap: str = "gray",
               size: float = 1.1, suptitle: Optional[str] = None) -> Figure:
    """Grid of greyscale images [N, 1, H, W] or [N, H, W] (chapter 1: samples, prototypes)."""
    n = len(images)
    nrows = (n + ncols - 1) // ncols
    fig, axes = subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.3 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(_np(images[i]), cmap=cmap, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def cam_overlays(images, cams, titles: Optional[Sequence[str]] = None, ncols: int = 8,
                 rows: Optional[Mapping[str, torch.Tensor]] = None, size: float = 1.3) -> Figure:
    """Images with their Grad-CAM maps on top (chapter 2).

    ``cams`` [N, H, W]; or pass ``rows={"label": cams, ...}`` to stack several methods, one row each,
    below a first row of the plain images.
    """
    rows = dict(rows) if rows is not None else {"Grad-CAM": cams}
    n = min(len(images), ncols)
    fig, axes = subplots(1 + len(rows), n, figsize=(size * n, size * (1 + len(rows))), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(_np(images[j]), cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_axis_off()
        if titles is not None:
            axes[0, j].set_title(titles[j], fontsize=8)
        for i, maps in enumerate(rows.values(), start=1):
            overlay(axes[i, j], images[j], maps[j])
    for i, label in enumerate(rows, start=1):
        axes[i, 0].text(-0.1, 0.5, label, transform=axes[i, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def reconstruction_rows(rows: Mapping[str, torch.Tensor], class_names: Sequence[str], size: float = 1.0,
                        cmap: str = "jet") -> Figure:
    """One row per entry of ``rows`` ({"label": [C, H, W] maps}): average reconstruction per class,
    prototypes, … (the paper's Figures 2–7; chapters 4–6)."""
    c = len(class_names)
    fig, axes = subplots(len(rows), c, figsize=(size * c + 1.2, size * len(rows) + 0.3), squeeze=False)
    for i, (label, maps) in enumerate(rows.items()):
        for j in range(c):
            ax = axes[i, j]
            ax.imshow(_np(maps[j]), cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(class_names[j], fontsize=8)
        axes[i, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def protocol_diagram() -> Figure:
    """The training protocol with both losses (the paper's Figure 1; chapter 1)."""
    fig, ax = subplots(figsize=(9, 3.6))
    ax.set_xlim(0, 10), ax.set_ylim(0, 4.2), ax.set_axis_off()

    def box(x, y, w, h, text, color):
        ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="black", linewidth=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)

    def arrow(x0, y0, x1, y1, text="", style="-|>"):
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle=style, lw=1.2))
        if text:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, text, ha="center", fontsize=7.5)

    box(0.1, 2.4, 1.2, 0.9, "batch\n$x$ [B,1,H,W]\nlabels $y$", "#eeeeee")
    box(1.8, 2.4, 1.6, 0.9, "conv layers\nup to layer $\\ell$", "#cfe2f3")
    box(3.9, 2.4, 1.4, 0.9, "head\n(pool, linear)", "#cfe2f3")
    box(5.8, 2.9, 1.6, 0.7, "logits $z$ → CE", "#fce5cd")
    box(3.6, 0.9, 2.2, 0.9, "Batch Grad-CAM\none autograd.grad of\n$\\sum_b z_b[y_b]$ w.r.t. $A$", "#d9ead3")
    box(6.3, 1.45, 1.7, 0.75, "Prototype loss\n$d(R_b, P_{y_b})$", "#fff2cc")
    box(6.3, 0.35, 1.7, 0.75, "Batch-CAM loss\n$d(R_b, \\bar R_{y_b})$", "#fff2cc")
    box(8.5, 1.4, 1.4, 1.9, "$L = CE$\n$+ \\lambda_P L_P$\n$+ \\lambda_B L_B$", "#f4cccc")
    box(6.3, 2.35, 1.7, 0.45, "prototypes $P_c$ (class means)", "#eeeeee")
    arrow(1.3, 2.85, 1.8, 2.85)
    arrow(3.4, 2.85, 3.9, 2.85, "$A$")
    arrow(5.3, 3.1, 5.8, 3.2)
    arrow(2.6, 2.4, 3.9, 1.8, "$A$")
    arrow(4.6, 2.4, 4.6, 1.8)
    arrow(5.8, 1.5, 6.3, 1.8, "$R$")
    arrow(5.8, 1.2, 6.3, 0.75, "$R$")
    arrow(7.4, 3.25, 8.5, 2.9)
    arrow(7.15, 2.35, 7.15, 2.2)
    arrow(8.0, 1.8, 8.5, 2.1)
    arrow(8.0, 0.7, 8.5, 1.6)
    ax.text(5.0, 4.0, "one forward pass; the Grad-CAM gradient is kept in the graph (create_graph=True)",
            ha="center", fontsize=8.5, style="italic")
    fig.tight_layout()
    return fig


def timing_plot(rows: Sequence[Mapping], x: str = "batch_size", y: str = "ms", by: str = "method",
                title: str = "", ylabel: str = "time per batch (ms)") -> Figure:
    """Log–log lines of ``y`` against ``x``, one line per value of ``by`` (chapter 3's speed plot).

    ``rows`` is a list of dicts such as ``{"method": "batch", "batch_size": 64, "ms": 3.1}``.
    """
    fig, ax = subplots(figsize=(5.5, 3.6))
    for key in dict.fromkeys(r[by] for r in rows):
        pts = sorted((r[x], r[y]) for r in rows if r[by] == key)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=str(key))
    ax.set_xscale("log", base=2), ax.set_yscale("log")
    ax.set_xlabel(x.replace("_", " ")), ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def history_plot(histories: Mapping[str, Sequence[Mapping]], keys: Sequence[str] = ("test_accuracy", "l1")) -> Figure:
    """Per-epoch curves of several runs side by side, one panel per metric key (chapter 5)."""
    fig, axes = subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, hist in histories.items():
            ax.plot([h["epoch"] for h in hist], [h[key] for h in hist], marker="o", label=label)
        ax.set_xlabel("epoch"), ax.set_title(key.replace("_", " "), fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig
