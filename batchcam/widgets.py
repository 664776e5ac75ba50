"""Interactive explorer of images, Grad-CAM maps, reconstructions and prototypes (chapter 5).

The HTML book cannot run Python, so every widget has a static twin: :func:`explorer_figure` draws
exactly what the widget shows for one choice of the controls. The explorer opens on a class whose
map is live (:func:`first_live_class`): a blank first view would hide what it is for.
"""

from __future__ import annotations

from typing import Mapping

import torch
from matplotlib.figure import Figure
from torch import nn

from ._capture import candidate_layers
from .cam import batch_gradcam, normalize_cam
from .losses import distance
from .models import default_target_layer
from .plots import CAM_CMAP, book_style, colorbar, overlay, subplots, to_numpy

__all__ = ["explorer_figure", "explorer", "first_live_class"]


def explorer_figure(model: nn.Module, image: torch.Tensor, label: int, prototypes: torch.Tensor,
                    class_names, layer: str | None = None, title: str = "") -> Figure:
    """Image, Grad-CAM map (target = true label), overlay, class prototype and their distances.

    ``image`` [1, H, W] uint8 or float; ``prototypes`` [C, H, W] at the same size. The map is
    computed in eval mode (the model's mode is restored); a dead map (all zero) says so in its title.
    """
    layer = layer or default_target_layer(model)
    x = image.float().unsqueeze(0)
    x = x / 255.0 if image.dtype == torch.uint8 else x
    was_training = model.training
    try:
        raw = batch_gradcam(model.eval(), x, layer, [label], normalize=None)
    finally:
        model.train(was_training)
    cam = normalize_cam(raw)
    proto = prototypes[label:label + 1].to(cam)
    d = {k: distance(cam, proto, k).item() for k in ("l1", "l2", "ssim")}
    with book_style():
        fig, axes = subplots(1, 4, figsize=(8.0, 2.4))
        axes[0].imshow(to_numpy(x[0]), cmap="gray", vmin=0, vmax=1)
        axes[0].set_title(f"image ({class_names[label]})")
        axes[1].imshow(to_numpy(cam[0]), cmap=CAM_CMAP, vmin=0, vmax=1)
        axes[1].set_title(f"Grad-CAM @ {layer}" + (" (dead)" if raw.amax() <= 0 else ""))
        overlay(axes[2], x[0], cam[0], title="overlay")
        axes[3].imshow(to_numpy(proto[0]), cmap=CAM_CMAP, vmin=0, vmax=1)
        axes[3].set_title("class prototype")
        for ax in axes:
            ax.set_axis_off()
        fig.suptitle((title + "   " if title else "") + f"L1 {d['l1']:.3f}   L2 {d['l2']:.3f}   "
                     f"1−SSIM {d['ssim']:.3f}")
        colorbar(fig, list(axes), CAM_CMAP, "map value")
    return fig


def first_live_class(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     layer: str | None = None, sample: int = 0) -> int:
    """The first class whose ``sample``-th image has a live Grad-CAM map (not all zero) for its true
    label, else 0. ``images`` uint8 [N, 1, H, W] (or float in [0, 1]), ``labels`` [N]."""
    layer = layer or default_target_layer(model)
    was_training = model.training
    model.eval()
    try:
        for c in torch.unique(labels).tolist():
            where = torch.nonzero(labels == c).flatten()
            i = int(where[min(sample, len(where) - 1)])
            x = images[i:i + 1].float()
            x = x / 255.0 if images.dtype == torch.uint8 else x
            if batch_gradcam(model, x, layer, [c], normalize=None).amax() > 0:
                return int(c)
    finally:
        model.train(was_training)
    return 0


def explorer(entries: Mapping[str, Mapping], start_class: int | None = None):
    """An ipywidgets explorer: dataset, model, layer, class and sample → :func:`explorer_figure`.

    ``entries`` maps a dataset name to ``{"images": uint8 [N,1,H,W], "labels": [N], "prototypes":
    [C,H,W], "class_names": [...], "models": {name: model}}``. It opens on the first dataset and
    model, sample 0 of ``start_class`` (default: :func:`first_live_class`). Returns the widget
    (a ``VBox``).
    """
    import ipywidgets as W
    from IPython.display import display

    first = next(iter(entries.values()))
    if start_class is None:
        start_class = first_live_class(next(iter(first["models"].values())), first["images"],
                                       first["labels"])
    ds = W.Dropdown(options=list(entries), description="dataset")
    mdl = W.Dropdown(options=list(first["models"]), description="model")
    lay = W.Dropdown(description="layer")
    cls = W.IntSlider(value=start_class, min=0, max=len(first["class_names"]) - 1, description="class")
    idx = W.IntSlider(min=0, max=19, description="sample")
    out = W.Output()

    def sync_layers(*_):
        model = entries[ds.value]["models"][mdl.value]
        default = default_target_layer(model)
        lay.options = list(dict.fromkeys([default] + candidate_layers(model)))
        lay.value = default

    def sync_models(*_):
        mdl.options = list(entries[ds.value]["models"])
        sync_layers()

    def draw(*_):
        e = entries[ds.value]
        where = torch.nonzero(e["labels"] == cls.value).flatten()
        i = int(where[min(idx.value, len(where) - 1)])
        with out:
            out.clear_output(wait=True)
            fig = explorer_figure(e["models"][mdl.value], e["images"][i], cls.value, e["prototypes"],
                                  e["class_names"], lay.value, title=f"{ds.value} #{i}")
            display(fig)

    ds.observe(sync_models, "value")
    mdl.observe(sync_layers, "value")
    sync_layers()
    for w in (ds, mdl, lay, cls, idx):
        w.observe(draw, "value")
    draw()
    return W.VBox([W.HBox([ds, mdl, lay]), W.HBox([cls, idx]), out])
