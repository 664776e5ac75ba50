"""Source checks of the book that neither nbval nor `jupyter-book build -W` make.

- Display math: a `$$ … $$` block starts and ends on its own lines and is set off by a blank
  line above and below. MyST renders a block glued to a text line as stray `$` and run-together
  italics, without any warning (only a browser shows it: tests/browser/).
- Inline math: every paragraph has an even number of unescaped `$` (no stray dollar).
- Code: no line of a notebook code cell is longer than 88 characters (the HTML code boxes and
  Colab show about that much without scrolling).
- Every notebook opens with an H1 title (the first heading; `myst.header` otherwise) and has a
  Colab badge that opens this very notebook from the repository and branch in `_config.yml`.
- Every notebook with stored outputs names the CPU model that made them (`metadata.batchcam.outputs_cpu`,
  written by scripts/refresh_notebooks.py): nbval compares exactly on that CPU model and within training
  noise on another (scripts/nbval_numbers.py); without a name it could only do the latter.

Failures list file, cell (0-based index, as in `nbformat.read(...).cells[i]`) and line (1-based).
Reads files only: fast, no kernel, no build.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
PAGES = sorted(BOOK.glob("*.md"))
MAX_CODE_LINE = 88

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+).*?\1")
LABEL_AFTER_MATH = re.compile(r"^\s*(\([\w:.-]+\))?\s*$")


def _markdown_blocks(path: Path):
    """(cell index or None, markdown source) of a notebook's markdown cells or of a .md page."""
    if path.suffix == ".ipynb":
        nb = nbformat.read(path, as_version=4)
        return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]
    return [(None, path.read_text(encoding="utf-8"))]


def _prose_lines(source: str):
    """Lines of a markdown source with fenced code blocks blanked out (numbering kept) and inline
    code spans removed, so that `$` inside code is never read as math."""
    out, fence = [], None
    for line in source.split("\n"):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            out.append("")
        else:
            out.append(INLINE_CODE.sub("", line))
    return out


def _rel(path: Path, root: Path = ROOT) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _where(path: Path, cell, line: int) -> str:
    rel = _rel(path)
    return f"{rel} cell {cell} line {line}" if cell is not None else f"{rel} line {line}"


def math_problems(path: Path) -> list[str]:
    """Display math not set off by blank lines, text glued to `$$`, and odd `$` counts."""
    problems = []
    for cell, source in _markdown_blocks(path):
        lines = _prose_lines(source)
        n, i = len(lines), 0
        display = set()  # line indices inside display blocks
        while i < n:
            line = lines[i]
            if "$$" not in line:
                i += 1
                continue
            start = line.index("$$")
            if line[:start].strip():
                problems.append(f"{_where(path, cell, i + 1)}: text before the opening `$$` "
                                f"(a display block must start its own line): {line.strip()[:60]!r}")
            rest = line[start + 2:]
            if "$$" in rest:
                j, after = i, rest.split("$$", 1)[1]
            else:
                j = next((k for k in range(i + 1, n) if "$$" in lines[k]), None)
                if j is None:
                    problems.append(f"{_where(path, cell, i + 1)}: `$$` is never closed")
                    break
                after = lines[j].split("$$", 1)[1]
            if not LABEL_AFTER_MATH.match(after):
                problems.append(f"{_where(path, cell, j + 1)}: text after the closing `$$` "
                                f"(put it on the next paragraph): {after.strip()[:60]!r}")
            if i > 0 and lines[i - 1].strip():
                problems.append(f"{_where(path, cell, i + 1)}: no blank line above the display "
                                f"math (glued to {lines[i - 1].strip()[:50]!r})")
            if j < n - 1 and lines[j + 1].strip():
                problems.append(f"{_where(path, cell, j + 1)}: no blank line below the display "
                                f"math (glued to {lines[j + 1].strip()[:50]!r})")
            display.update(range(i, j + 1))
            i = j + 1
        # Inline math: per paragraph, an even number of unescaped single `$`.
        para, first = [], 0
        for k, line in enumerate(lines + [""]):
            if k in display or not line.strip():
                text = " ".join(para).replace("\\$", "")
                if text.count("$") % 2:
                    problems.append(f"{_where(path, cell, first + 1)}: odd number of `$` in this "
                                    f"paragraph (stray inline math delimiter): {text.strip()[:70]!r}")
                para = []
                continue
            if not para:
                first = k
            para.append(line)
    return problems


def code_line_problems(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [f"{_where(path, i, k)}: {len(line)} characters > {MAX_CODE_LINE}: {line.strip()[:50]!r}…"
            for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for k, line in enumerate(c.source.split("\n"), start=1) if len(line) > MAX_CODE_LINE]


def _colab_url(path: Path, root: Path = ROOT) -> str:
    cfg = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    repo = cfg["repository"]["url"].rstrip("/").removeprefix("https://github.com/")
    branch = cfg["repository"].get("branch", "master")
    return (f"https://colab.research.google.com/github/{repo}/blob/{branch}/"
            f"{_rel(path, root)}")


def title_and_badge_problems(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    cells = _markdown_blocks(path)
    heading = next(((cell, k, line) for cell, source in cells
                    for k, line in enumerate(_prose_lines(source), start=1)
                    if re.match(r"^#{1,6}\s", line)), None)
    if heading is None:
        problems.append(f"{_rel(path)}: no heading at all (the first must be an H1 title)")
    elif not heading[2].startswith("# "):
        problems.append(f"{_where(path, heading[0], heading[1])}: the first heading is not an H1 "
                        f"title: {heading[2].strip()!r}")
    url = _colab_url(path, root)
    badge = re.compile(r"\[!\[[^\]]*\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
                       r"\(" + re.escape(url) + r"\)")
    first = cells[0][1] if cells else ""
    if not badge.search(first):
        found = re.findall(r"https://colab\.research\.google\.com/github/\S+?\.ipynb",
                           "\n".join(s for _, s in cells))
        problems.append(f"{_rel(path)}: the first markdown cell has no Colab badge "
                        f"[![Open In Colab](…/colab-badge.svg)]({url})"
                        + (f"; links found instead: {found}" if found else ""))
    return problems


def _ids(paths):
    return [p.name for p in paths]


def test_book_has_notebooks():
    assert NOTEBOOKS, f"no notebooks in {BOOK}"


@pytest.mark.parametrize("path", NOTEBOOKS + PAGES, ids=_ids(NOTEBOOKS + PAGES))
def test_math_is_set_off(path):
    problems = math_problems(path)
    assert not problems, "math that MyST renders as raw TeX:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_code_lines_fit(path):
    problems = code_line_problems(path)
    assert not problems, "code lines to wrap:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_title_and_colab_badge(path):
    problems = title_and_badge_problems(path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_stored_outputs_name_their_cpu(path):
    nb = nbformat.read(path, as_version=4)
    if any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        cpu = (nb.metadata.get("batchcam") or {}).get("outputs_cpu")
        assert cpu, f"{path.name}: run scripts/refresh_notebooks.py {path.relative_to(ROOT)} (names the CPU)"


# The checks check something: each catches the mistake it is written for.
def test_checks_catch_known_mistakes(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("## Not a title\n\ntext"),
        nbformat.v4.new_markdown_cell("Text\n$$a = b$$\nmore text"),
        nbformat.v4.new_markdown_cell("- item:\n  $$x$$\n  with $1-\\mathrm{SSIM}$$ here"),
        nbformat.v4.new_markdown_cell("a stray $x dollar, and `$code$` is fine\n\n$$\ny\n$$ and text"),
        nbformat.v4.new_markdown_cell("Fine:\n\n$$\nz = 1\n$$ (label-ok)\n\n```python\n$$ in code\n```"),
        nbformat.v4.new_code_cell("x = 1\n" + "y = " + "1 + " * 30 + "1"),
    ]
    path = tmp_path / "book" / "bad.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    (tmp_path / "_config.yml").write_text("repository: {url: https://github.com/o/r, branch: main}\n")
    math = "\n".join(math_problems(path))
    code = code_line_problems(path)
    title = "\n".join(title_and_badge_problems(path, root=tmp_path))
    assert "cell 1 line 2: no blank line above" in math and "cell 1 line 2: no blank line below" in math
    assert "cell 2 line 2: no blank line above" in math and "cell 2 line 3: text before the opening" in math
    assert "cell 3 line 1: odd number of `$`" in math and "cell 3 line 5: text after the closing" in math
    assert "cell 4" not in math
    assert len(code) == 1 and "cell 5 line 2" in code[0]
    assert "first heading is not an H1" in title and "no Colab badge" in title


def _notation_symbols() -> list[str]:
    """The first column of the notation page's table, as written (LaTeX source)."""
    rows = [line for line in (BOOK / "notation.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| $") or line.startswith("| \\")]
    return [row.split(" | ")[0].removeprefix("| ").strip() for row in rows]


def test_notation_lists_each_symbol_once():
    """One row per symbol on the notation page (a second row would be a second meaning)."""
    symbols = _notation_symbols()
    assert len(symbols) > 40, "the notation table was not found"
    assert sorted(s for s in set(symbols) if symbols.count(s) > 1) == []


#: Uses that gave one letter two meanings, retired: the test level (written 0.05, since α is the
#: Grad-CAM weight), SSIM's C₁/C₂ (κ₁/κ₂: C is the number of classes), the training-image index i in
#: the prototype formula (i is a map row) and the ink count k (k is a channel).
RETIRED = {"α = 0.05": "write 'level 0.05'", "C_1}": "SSIM's constant is \\kappa_1",
           "C_1/C_1": "write \\kappa_1/\\kappa_1", "C_2}": "SSIM's constant is \\kappa_2",
           "\\sum_{i:": "sum over \\mathcal{X}_c",
           "first $k$": "the ink count is n_{\\text{ink}}", "stage $i$": "the cascade stage is q"}


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS + PAGES if p.name != "notation.md"], ids=lambda p: p.name)
def test_retired_notation_is_gone(path):
    """The book's prose no longer uses a symbol in the meaning the notation page retired."""
    found = [f"cell {i}: {old!r} ({fix})" for i, src in _markdown_blocks(path)
             for old, fix in RETIRED.items() if old in src]
    assert found == [], f"{path.name}: " + "; ".join(found)
