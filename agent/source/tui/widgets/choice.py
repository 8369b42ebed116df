"""A radio button that says which one is chosen in text, "(*)" or "( )":
the stock one tells them apart by colour only, which a monochrome console loses."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import RadioButton


class Choice(RadioButton):
    @property
    def _button(self) -> Content:
        return Content("(*)" if self.value else "( )")
