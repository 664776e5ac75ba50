"""Structural checks of the package's source: size, imports, docstrings, version.

- Every module under ``batchcam/`` has at most ``MAX_LINES`` lines of code: docstrings (of the module,
  its classes and functions), comments and blank lines do not count (:func:`code_lines`).
- The package modules import each other without a cycle. Every import counts, also one inside a
  function (a late import hides a cycle from Python, not from the reader); a failure prints the cycle.
- No module imports an underscore-prefixed name from another package module. The private *modules*
  (``_helpers``, ``_capture``, ``_idx``, ``_ssim``) are importable: their names are public to the
  package. Importing a ``_private`` function, class or constant from anywhere is what fails.
- Every public function and class (a name in a module's ``__all__``, defined in that module) has a
  docstring that names the book chapter explaining it; ``DOCSTRING_EXEMPT`` lists the known offenders.
- The version lives in one place: ``pyproject.toml`` declares it dynamic, and
  ``batchcam.__version__`` is the only version literal.

The size and import checks read files with ``ast`` (fast, nothing imported); the docstring and
version checks import the package.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "batchcam"
MAX_LINES = 300
#: Private modules: their names are public inside the package, so importing from them is fine.
PRIVATE_MODULES = {"batchcam._helpers", "batchcam._capture", "batchcam._idx", "batchcam._ssim"}
#: Public names whose docstrings do not name a chapter yet. Each entry is a known debt, fixed by the
#: owner of the file; the list may only shrink (a fixed name left here fails ``test_exempt_list_is_current``).
DOCSTRING_EXEMPT = {
    # batchcam/widgets.py: likewise.
    "batchcam.widgets.explorer_figure",
    "batchcam.widgets.explorer",
    "batchcam.widgets.first_live_class",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {_module_name(p): p for p in FILES}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of ``from <...> import``, relative to ``module``."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]  # a plain module's relative imports start from its package
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, source: str | None = None) -> list[tuple[str, str, int]]:
    """Every ``(imported module, imported name or "", line)`` of ``module`` (its file, or ``source``)
    inside the package, at any depth of the syntax tree (module level, functions, ``if`` blocks)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8") if source is None else source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "batchcam"]
        elif isinstance(node, ast.ImportFrom):
            origin = _resolve(module, node)
            if origin.split(".")[0] == "batchcam":
                out += [(origin, a.name, node.lineno) for a in node.names]
    return out


def _edges(module: str, source: str | None = None) -> dict[str, int]:
    """Package modules that ``module`` imports, with the line of the first such import.

    ``from pkg import name`` depends on ``pkg.name`` when that is a module, else on ``pkg`` (the
    package's ``__init__``); ``import a.b`` on ``a.b`` (not on the packages Python runs first).
    """
    edges: dict[str, int] = {}
    for origin, name, line in _imports(module, source):
        target = f"{origin}.{name}" if f"{origin}.{name}" in MODULES else origin
        if target in MODULES and target != module:
            edges.setdefault(target, line)
    return edges


def _private_imports(module: str, source: str | None = None) -> list[str]:
    """``"line: from X import _name"`` for each underscore name ``module`` imports (dunders and
    the private modules, e.g. ``from . import _helpers``, are fine)."""
    bad = []
    for origin, name, line in _imports(module, source):
        private = name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
        if private and f"{origin}.{name}" not in PRIVATE_MODULES:
            bad.append(f"{line}: from {origin} import {name}")
    return bad


def test_checks_see_what_they_check():
    """The parser on a made-up module: late and relative imports are edges, private names are caught."""
    assert "batchcam" in MODULES and "batchcam.bench.measure" in MODULES
    private = {m for m in MODULES if m.rsplit(".", 1)[-1].startswith("_") and not m.endswith("__")}
    assert private == PRIVATE_MODULES, f"private modules are {sorted(private)}: update PRIVATE_MODULES"
    src = ("import batchcam.cam\nfrom .. import results, __version__\nfrom . import config\n"
           "def f():\n    from .measure import run_benchmark\n    from .._helpers import set_seed, _UMASK\n"
           "    from ..train import _restore\n    from .. import _ssim\n")
    assert set(_edges("batchcam.bench", src)) == {
        "batchcam.cam", "batchcam.results", "batchcam", "batchcam.bench.config", "batchcam.bench.measure",
        "batchcam._helpers", "batchcam.train", "batchcam._ssim"}
    assert set(_edges("batchcam.bench.measure", "from .config import X\nfrom ..data import Y\n")) == {
        "batchcam.bench.config", "batchcam.data"}
    assert _private_imports("batchcam.bench", src) == ["6: from batchcam._helpers import _UMASK",
                                                       "7: from batchcam.train import _restore"]


_NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
             tokenize.ENCODING, tokenize.ENDMARKER}


def code_lines(source: str) -> int:
    """The lines of ``source`` that hold code: every line a token other than a comment touches (a
    multi-line string counts all its lines), except the docstrings of the module, classes and functions."""
    docs = []
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body and \
                isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
                isinstance(body[0].value.value, str):
            docs.append(((body[0].lineno, body[0].col_offset), (body[0].end_lineno, body[0].end_col_offset)))
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in _NOT_CODE or (tok.type == tokenize.STRING and any(a <= tok.start and tok.end <= b
                                                                         for a, b in docs)):
            continue
        lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines)


def test_code_lines_counts_code_only():
    src = ('''"""Module docstring,\n\nover three lines."""\n\n# a comment\nimport os  # code with a comment\n\n\n'''
           '''class A:\n    """Class docstring."""\n\n'''
           '''    x = """a string that is not a docstring,\n    on two lines"""\n\n'''
           '''    def f(self):\n        """Function\n        docstring."""\n        # comment\n        return (1 +\n'''
           '''                2)\n\n\nasync def g(): "one-line docstring"; return 3\n\n\ndef h():\n    pass\n''')
    # import os; class A:; x = ... (2 lines); def f; return (2 lines); async def g (its code); def h; pass
    assert code_lines(src) == 10
    assert code_lines("") == 0 and code_lines('"""Only a docstring."""\n# and a comment\n') == 0
    assert code_lines('x = 1\n"""not a docstring: an expression after code"""\n') == 2


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_length(path):
    n = code_lines(path.read_text(encoding="utf-8"))
    assert n <= MAX_LINES, (f"{path.relative_to(ROOT)} has {n} lines of code (docstrings, comments and blank "
                            f"lines not counted) > {MAX_LINES}: split it or tighten it")


def _find_cycle(graph: dict[str, dict[str, int]]) -> list[str]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or [] (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return []


def test_find_cycle_finds_one():
    assert _find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b": 1}, "b": {}, "c": {"b": 1}}) == []


def test_no_import_cycle():
    graph = {m: _edges(m) for m in MODULES}
    cycle = _find_cycle(graph)
    where = [f"{a} imports {b} ({MODULES[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    assert not cycle, "import cycle: " + " -> ".join(cycle) + "\n  " + "\n  ".join(where)


def test_no_private_name_imported():
    bad = [f"{MODULES[m].relative_to(ROOT)}:{b}" for m in sorted(MODULES) for b in _private_imports(m)]
    assert not bad, "underscore names imported from another module (make them public or move them):\n" + \
        "\n".join(bad)


def _names_chapter(obj) -> bool:
    return "chapter" in (inspect.getdoc(obj) or "").lower()


def _public_objects():
    for module in sorted(MODULES):
        if module.endswith("__main__"):
            continue
        mod = importlib.import_module(module)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module:
                yield f"{module}.{name}", obj


def test_public_docstrings_name_a_chapter():
    missing = [name for name, obj in _public_objects() if not _names_chapter(obj)]
    new = sorted(set(missing) - DOCSTRING_EXEMPT)
    assert not new, "public names whose docstring names no book chapter (say which one explains them):\n" + \
        "\n".join(new)


def test_exempt_list_is_current():
    names = dict(_public_objects())
    gone = sorted(n for n in DOCSTRING_EXEMPT if n not in names)
    fixed = sorted(n for n in DOCSTRING_EXEMPT if n in names and _names_chapter(names[n]))
    assert not gone and not fixed, f"remove from DOCSTRING_EXEMPT: no longer public {gone}, fixed {fixed}"


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def test_version_in_one_place():
    pyproject = _load_toml(ROOT / "pyproject.toml")
    project = pyproject["project"]
    assert "version" in project.get("dynamic", []) and "version" not in project, \
        'pyproject.toml: the version must be dynamic = ["version"], not a literal'
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "batchcam.__version__"}

    init = ast.parse(MODULES["batchcam"].read_text(encoding="utf-8"))
    literals = [n.value for n in init.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
                and any(isinstance(t, ast.Name) and t.id == "__version__" for t in n.targets)]
    assert len(literals) == 1 and re.fullmatch(r"\d+\.\d+\.\d+\S*", str(literals[0].value)), \
        f"batchcam/__init__.py must assign __version__ one literal, got {[c.value for c in literals]}"
    version, version_line = literals[0].value, literals[0].lineno
    import batchcam

    assert batchcam.__version__ == version

    elsewhere = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if module != "batchcam" and isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
                    isinstance(t, ast.Name) and t.id == "__version__" for t in targets):
                elsewhere.append(f"{where}: assigns __version__")
            if isinstance(node, ast.Constant) and node.value == version:
                elsewhere.append(f"{where}: the literal {version!r}")
    elsewhere.remove(f"batchcam/__init__.py:{version_line}: the literal {version!r}")
    for name in ("pyproject.toml", "setup.py", "setup.cfg", "_config.yml"):
        path = ROOT / name
        if path.is_file() and re.search(rf"(?<![\w.]){re.escape(version)}(?![\w.])", path.read_text(encoding="utf-8")):
            elsewhere.append(f"{name}: the literal {version!r}")
    assert not elsewhere, "the version must live only in batchcam/__init__.py:\n" + "\n".join(elsewhere)
