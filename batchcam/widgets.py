"""Interactive explorer of images, Grad-CAM maps, reconstructions and prototypes (chapter 4).

The HTML book cannot run Python, so every widget has a static twin: :func:`explorer_figure` draws
exactly what the widget shows for one choice of the controls.
"""

from __future__ import annotations

from typing import Mapping

import torch
from matplotlib.figure import Figure
from torch import nn

from ._capture import candidate_layers
from .cam import batch_gradcam
from .losses import distance
from .models import default_target_layer
from .plots import CAM_CMAP, colorbar, overlay, subplots, to_numpy

__all__ = ["explorer_figure", "explorer"]


def explorer_figure(model: nn.Module, image: torch.Tensor, label: int, prototypes: torch.Tensor,
                    class_names, layer: str | None = None, title: str = "") -> Figure:
    """Image, Grad-CAM map (target = true label), overlay, class prototype and their distances.

    ``image`` [1, H, W] uint8 or float; ``prototypes`` [C, H, W] at the same size.
    """
    layer = layer or default_target_layer(model)
    x = image.float().unsqueeze(0)
    x = x / 255.0 if image.dtype == torch.uint8 else x
    cam = batch_gradcam(model.eval(), x, layer, [label])
    proto = prototypes[label:label + 1].to(cam)
    d = {k: distance(cam, proto, k).item() for k in ("l1", "l2", "ssim")}
    fig, axes = subplots(1, 4, figsize=(8.4, 2.5))
    axes[0].imshow(to_numpy(x[0]), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(f"image ({class_names[label]})")
    axes[1].imshow(to_numpy(cam[0]), cmap=CAM_CMAP, vmin=0, vmax=1)
    axes[1].set_title(f"Grad-CAM @ {layer}")
    overlay(axes[2], x[0], cam[0], title="overlay")
    axes[3].imshow(to_numpy(proto[0]), cmap=CAM_CMAP, vmin=0, vmax=1)
    axes[3].set_title("class prototype")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle((title + "   " if title else "") + f"L1 {d['l1']:.3f}   L2 {d['l2']:.3f}   "
                 f"1−SSIM {d['ssim']:.3f}")
    colorbar(fig, list(axes), CAM_CMAP, "map value")
    return fig


def explorer(entries: Mapping[str, Mapping]):
    """An ipywidgets explorer: dataset, model, layer, class and sample → :func:`explorer_figure`.

    ``entries`` maps a dataset name to ``{"images": uint8 [N,1,H,W], "labels": [N], "prototypes":
    [C,H,W], "class_names": [...], "models": {name: model}}``. Returns the widget (a ``VBox``).
    """
    import ipywidgets as W
    from IPython.display import display

    first = next(iter(entries.values()))
    ds = W.Dropdown(options=list(entries), description="dataset")
    mdl = W.Dropdown(options=list(first["models"]), description="model")
    lay = W.Dropdown(description="layer")
    cls = W.IntSlider(min=0, max=len(first["class_names"]) - 1, description="class")
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
