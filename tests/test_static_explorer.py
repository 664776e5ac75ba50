"""The offline explorer's HTML (chapter 5): every view inline, menus for dataset, model and class."""

from __future__ import annotations

import base64
import json
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from batchcam import static_explorer as S  # noqa: E402


def test_the_html_holds_every_view_and_the_menus():
    fig = plt.figure(figsize=(1, 1))
    png = S.small_png(fig)
    plt.close(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    entries = {"mnist": {"models": {"trained": None, "random": None}, "class_names": list(range(3))},
               "fashion-mnist": {"models": {"trained": None, "random": None},
                                 "class_names": ["T-shirt", "</script>", "bag"]}}
    views = {(d, m, c): png for d in entries for m in ("trained", "random") for c in range(3)}
    out = S.static_explorer(views, entries, start=2, ident="x1")
    assert out.count("<select>") == 3 and '<option value="2" selected>' in out
    payload = json.loads(re.search(r"<script type=\"application/json\">(.*?)</script>", out, re.S).group(1))
    assert len(payload["views"]) == 12 and base64.b64decode(payload["views"]["mnist|random|1"]) == png
    assert payload["names"]["fashion-mnist"][1] == "</script>"  # escaped in the HTML, intact in the data
    assert out.count("</script>") == 2  # the JSON cannot close its own script element
    assert 'getElementById("x1")' in out and f'src="data:image/png;base64,{payload["views"]["mnist|trained|2"]}"' in out
