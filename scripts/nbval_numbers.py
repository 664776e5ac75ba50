"""Compare a notebook's stored text outputs with fresh ones made on another CPU model.

On one CPU model the book's notebooks are deterministic: ``pytest --nbval book/`` compares every
text output character for character. Another CPU model (an AMD EPYC against the Intel Xeon that
made most stored outputs) runs other kernels of the same libraries (MKL, oneDNN): a float32 sum
comes out one unit in the last place apart, and the few hundred optimiser steps of a notebook's
smoke-scale training carry that to the second digit of what the trained model prints (measured in
``CROSS_CPU``). So each notebook names the CPU model that made its stored outputs
(``metadata["batchcam"]["outputs_cpu"]``, written by ``scripts/refresh_notebooks.py``):

* on that CPU model, outputs are compared exactly, as nbval does;
* on another (or when the notebook names none), a text output passes when, after the sanitiser,
  its words and integers are the same and each decimal number agrees with the stored one within
  :data:`REL_TOL` of the larger, or :data:`ABS_TOL`. A sentence, a count, a ✓ or ✗, a line more
  or less, or a number that moved further than training noise still fails.

The repo-root ``conftest.py`` wires :func:`close` into nbval; ``scripts/refresh_notebooks.py
--check`` uses it too.
"""

from __future__ import annotations

import math
import re

__all__ = ["REL_TOL", "ABS_TOL", "CROSS_CPU", "close", "split", "outputs_cpu"]

#: Tolerances for decimals when the stored outputs come from another CPU model: above every
#: difference measured between the two CPU models (``CROSS_CPU``: at most 6.2 % relative away from
#: zero, 0.046 absolute near it), and no wider: an accuracy or correlation that moves by more is a
#: change of behaviour, not rounding.
REL_TOL, ABS_TOL = 0.10, 0.06

#: The largest differences measured on 2026-12-07 between the stored outputs (made on an Intel
#: Xeon) and a fresh run of every notebook on an AMD EPYC (both 2 cores, torch 2.14.1, the same
#: seeds and data; ``scripts/refresh_notebooks.py`` in a worktree at 701688b): (stored, fresh)
#: lines, each the worst of its chapter. Every other text output was identical.
CROSS_CPU: dict[str, tuple[str, str]] = {
    "03 method vs method, trained model": ("to layercam 6.8e-01", "to layercam 6.5e-01"),
    "03 against pytorch-grad-cam (float32 rounding)": ("max |difference| 3.0e-07", "max |difference| 4.2e-07"),
    "04 one map against its prototype": ("L1 0.364  L2 0.182", "L1 0.378  L2 0.194"),
    "04 and 05 trained model's accuracy": ("accuracy 77.9%", "accuracy 78.0%"),
    "05 coherence": ("dispersion 0.0248, corr(map, image) 0.328", "dispersion 0.0249, corr(map, image) 0.326"),
    "08 permuted-label test accuracy": ("test accuracy 11.9% (true labels)", "test accuracy 11.2% (true labels)"),
    "08 permuted-label maps vs trained (ρ near 0)": ("ρ permuted vs trained 0.156", "ρ permuted vs trained 0.202"),
    "08 second-class maps": ("ρ(true-class map, second-class map) = 0.748",
                             "ρ(true-class map, second-class map) = 0.733"),
}

# A number: not part of a word ("L1", "seed0", "s28") nor of a longer number; optional sign
# (ASCII or Unicode minus), decimals, exponent.
_NUMBER = re.compile(r"(?<![\w.])([-+\u2212]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)(?!\w|\.\d)")


def split(text: str) -> tuple[list[str], list[str]]:
    """The words between numbers and the numbers, in order: ``"L1 0.36 of 10"`` →
    (["L1 ", " of ", ""], ["0.36", "10"])."""
    parts = _NUMBER.split(text)
    return parts[0::2], parts[1::2]


def _value(token: str) -> float:
    return float(token.replace("\u2212", "-"))


def _is_integer(token: str) -> bool:
    return not any(c in token for c in ".eE")


def close(stored: str, fresh: str, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> tuple[bool, str]:
    """Whether ``fresh`` says what ``stored`` says up to decimal noise; and if not, why (one line).

    Words must be equal, integers equal, decimals within ``abs_tol`` or ``rel_tol`` of the larger
    magnitude (``math.isclose``).
    """
    if stored == fresh:
        return True, ""
    words_s, nums_s = split(stored)
    words_f, nums_f = split(fresh)
    if words_s != words_f:
        return False, "the words differ, not only the numbers"
    for a, b in zip(nums_s, nums_f):
        if _is_integer(a) and _is_integer(b):
            if a.lstrip("+") != b.lstrip("+"):
                return False, f"integer {a} became {b} (integers are compared exactly)"
        elif not math.isclose(_value(a), _value(b), rel_tol=rel_tol, abs_tol=abs_tol):
            return False, f"{a} became {b}: beyond {rel_tol:g} relative and {abs_tol:g} absolute"
    return True, ""


def outputs_cpu(nb) -> str | None:
    """The CPU model that made a notebook's stored outputs, from its metadata (None if unnamed)."""
    return (nb.metadata.get("batchcam") or {}).get("outputs_cpu")
