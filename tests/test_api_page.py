"""The API reference page (book/api.md) documents every public name of ``import batchcam``.

The page lists its entries by hand (grouped, with one intro sentence per group), so a name added to
``batchcam.__all__`` would be missing from the reference without anyone noticing; this test fails
instead. A name counts as documented when an autodoc directive (``.. autofunction::``,
``.. autoclass::``, ...) inside a ```` ```{eval-rst} ```` block of the page names it as
``batchcam.NAME`` or ``batchcam.<module>.NAME``. Every directive must also name an object that
exists, so a renamed function fails here, not only in ``jupyter-book build -W``.
Reads the page and imports the package: fast, no build.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import batchcam

PAGE = Path(__file__).resolve().parents[1] / "book" / "api.md"
EVAL_RST = re.compile(r"^(`{3,})\{eval-rst\}[^\n]*\n(.*?)^\1\s*$", re.MULTILINE | re.DOTALL)
AUTODOC = re.compile(r"^\s*\.\. auto(?:function|class|exception|data|attribute|method)::\s+([\w.]+)",
                     re.MULTILINE)


def documented_targets(text: str) -> list[str]:
    """Dotted names of the autodoc directives inside the ```{eval-rst} blocks of a MyST page."""
    return [name for block in EVAL_RST.finditer(text) for name in AUTODOC.findall(block.group(2))]


def missing_names(names, targets) -> list[str]:
    """The names that no target documents as ``batchcam.NAME`` or ``batchcam.<module>.NAME``."""
    short = {t.removeprefix("batchcam.") for t in targets if t.startswith("batchcam.")}
    documented = {t for t in short if "." not in t} | {t.split(".", 1)[1] for t in short if "." in t}
    return [n for n in names if n not in documented]


def _resolve(target: str):
    """Import the longest module prefix of ``target`` and get the rest as attributes."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name and not target.startswith(e.name):  # a missing dependency, not a missing module
                pytest.skip(f"{target}: needs {e.name}")
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(target)


def test_every_public_name_is_on_the_page():
    targets = documented_targets(PAGE.read_text(encoding="utf-8"))
    missing = missing_names(batchcam.__all__, targets)
    assert not missing, (f"names in batchcam.__all__ without an autodoc entry in {PAGE.name}: {missing}; "
                         "add e.g. `.. autofunction:: batchcam.NAME` to the matching section")


@pytest.mark.parametrize("target", documented_targets(PAGE.read_text(encoding="utf-8")))
def test_every_entry_exists(target):
    try:
        _resolve(target)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"{PAGE.name} documents {target}, which does not exist ({e})")


def test_the_check_catches_a_missing_name():
    page = ("# API\n\n```{eval-rst}\n.. autofunction:: batchcam.batch_cam\n"
            ".. autoclass:: batchcam.losses.Objective(**kw)\n   :members:\n```\n\n"
            ".. autofunction:: batchcam.fit\n\n```python\n.. autofunction:: batchcam.set_seed\n```\n")
    targets = documented_targets(page)
    assert targets == ["batchcam.batch_cam", "batchcam.losses.Objective"]
    assert missing_names(["batch_cam", "Objective", "fit", "set_seed"], targets) == ["fit", "set_seed"]
