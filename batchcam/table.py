"""``Table``: the tables of the book's chapters, as HTML in a notebook and as text for nbval (chapters 6–8)."""

from __future__ import annotations

import html
from typing import Sequence

__all__ = ["Table"]


class Table:
    """A table that shows as HTML in a notebook (right-aligned numbers, scrolls on a phone) and
    as aligned text elsewhere (nbval compares that); chapters 6, 7 and 8 show their numbers in it."""

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence], caption: str = "") -> None:
        self.header, self.rows, self.caption = list(header), [[str(c) for c in r] for r in rows], caption

    def __repr__(self) -> str:
        widths = [max(len(str(c)) for c in col) for col in zip(self.header, *self.rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        body = [line(self.header), "  ".join("-" * w for w in widths)] + [line(r) for r in self.rows]
        return "\n".join(([self.caption] if self.caption else []) + body)

    def _repr_html_(self) -> str:
        def td(c: str, tag: str = "td") -> str:
            num = c[:1].isdigit() or c[:1] in "−-+." and c[1:2].isdigit()
            style = "padding:2px 8px;white-space:nowrap;text-align:" + ("right" if num else "left")
            return f'<{tag} style="{style}">{html.escape(c)}</{tag}>'
        head = "".join(td(c, "th") for c in self.header)
        body = "".join("<tr>" + "".join(td(c) for c in r) + "</tr>" for r in self.rows)
        cap = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return (f'<div style="overflow-x:auto;max-width:100%"><table style="border-collapse:collapse">'
                f"{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
