"""Text that is shown as written: disk models, labels and findings may contain '[...]',
which textual would otherwise take for markup and swallow."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class Plain(Static):
    def __init__(self, content: str = "", **kw) -> None:
        super().__init__(content, markup=False, **kw)


def cells(*values) -> list[Text]:
    """DataTable cells as literal text (a plain str cell is parsed as markup)."""
    return [Text(str(v)) for v in values]
