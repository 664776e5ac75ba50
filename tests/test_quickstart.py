"""The README's quick start runs as written, and ``import batchcam`` needs torch and numpy only."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

def _readme_quickstart() -> str:
    """The first ``python`` block of the README's library section, exactly as a reader copies it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The library in ten lines"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


#: The README's quick start (≤ 10 lines): maps of a batch, a loss on them, one backward.
QUICKSTART = _readme_quickstart()

EXTRAS = ("torchvision", "timm", "matplotlib", "ipywidgets", "torchmetrics", "tqdm", "scipy")


def test_quickstart_runs():
    pytest.importorskip("torchvision")
    assert len(QUICKSTART.strip().splitlines()) <= 10
    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(QUICKSTART, "<quickstart>", "exec"), ns)
    assert ns["maps"].shape == (8, 64, 64) and ns["logits"].shape == (8, 10)
    grad = ns["model"].conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_import_needs_no_extra():
    """A meta-path finder makes importing any extra fail; batchcam still imports and computes maps."""
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {EXTRAS!r}:
                    raise ImportError("blocked extra: " + name)
        sys.meta_path.insert(0, Blocker())
        import torch
        import batchcam
        model = batchcam.create_model("simplecnn", 10, 1, 28).eval()
        maps = batchcam.batch_cam(model, torch.rand(2, 1, 28, 28), "features", method="layercam")
        assert maps.shape == (2, 28, 28)
        assert not [m for m in sys.modules if m.split(".")[0] in {EXTRAS!r}]
        try:
            import tqdm  # noqa: F401
        except ImportError:
            print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
