"""The explorer without a kernel: pre-rendered views behind three ``<select>`` menus (chapter 5).

The live explorer (:func:`batchcam.widgets.explorer`) needs a running Python kernel, and its widget
manager comes from a CDN, so it is blank in the HTML book and offline. This module turns views drawn by
:func:`batchcam.widgets.explorer_figure` into plain HTML: the PNGs inline (base64), menus for dataset,
model and class, and a few lines of JavaScript that swap the picture. Nothing is computed and nothing is
loaded from the network. Needs Pillow (matplotlib's dependency) for the 256-colour PNGs.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Mapping

__all__ = ["small_png", "static_explorer"]

_JS = """
(function () {
  const root = document.getElementById("IDENT");
  const json = root.querySelector("script[type='application/json']");
  const data = JSON.parse(json.textContent), img = root.querySelector("img");
  const menus = Array.from(root.querySelectorAll("select"));
  function show() {
    const [ds, m, c] = menus.map(s => s.value);
    const names = data.names[ds];
    Array.from(menus[2].options).forEach((o, k) => { o.text = `${k}: ${names[k]}`; });
    img.src = "data:image/png;base64," + data.views[[ds, m, c].join("|")];
    img.alt = `explorer view: ${ds}, ${m}, class ${c}`;
  }
  menus.forEach(s => s.addEventListener("change", show));
  show();
})();"""


def small_png(fig, colours: int = 256) -> bytes:
    """A matplotlib figure as PNG bytes with a palette of ``colours`` colours (chapter 5: 40 views of
    the explorer stay under a megabyte)."""
    from PIL import Image

    buf, out = io.BytesIO(), io.BytesIO()
    fig.savefig(buf, format="png")
    Image.open(buf).convert("RGB").quantize(colours).save(out, "PNG", optimize=True)
    return out.getvalue()


def _menu(key: str, options, selected) -> str:
    """A labelled ``<select>``; ``options``: [(value, text)]."""
    opts = "".join(f'<option value="{html.escape(str(v))}"' + (" selected" if v == selected else "")
                   + f">{html.escape(str(t))}</option>" for v, t in options)
    return f'<label style="margin-right: 1em">{key} <select>{opts}</select></label>'


def static_explorer(views: Mapping[tuple, bytes], entries: Mapping[str, Mapping], start: int,
                    ident: str = "explorer-static") -> str:
    """HTML of the offline explorer (chapter 5).

    Args:
        views: ``{(dataset, model, class): PNG bytes}`` for every combination (:func:`small_png`).
        entries: the live explorer's entries, ``{dataset: {"models": {name: model}, "class_names": [...]}}``
            (only the names are read).
        start: the class shown first (the first dataset and model).
        ident: the ``id`` of the ``<div>`` (unique on the page).
    Returns a ``<div>`` with the menus, one ``<img>``, the views as JSON and the script.
    """
    ds0 = next(iter(entries))
    m0 = next(iter(entries[ds0]["models"]))
    names = {d: [str(n) for n in e["class_names"]] for d, e in entries.items()}
    b64 = {"|".join(map(str, k)): base64.b64encode(png).decode() for k, png in views.items()}
    payload = json.dumps({"views": b64, "names": names}).replace("</", "<\\/")
    menus = (_menu("dataset", [(d, d) for d in entries], ds0)
             + _menu("model", [(m, m) for m in entries[ds0]["models"]], m0)
             + _menu("class", list(enumerate(f"{c}: {n}" for c, n in enumerate(names[ds0]))), start))
    return (f'<div id="{ident}"><p>{menus}</p><img alt="explorer view" '
            f'src="data:image/png;base64,{b64[f"{ds0}|{m0}|{start}"]}">'
            f'<script type="application/json">{payload}</script>'
            f'<script>{_JS.replace("IDENT", ident)}</script></div>')
