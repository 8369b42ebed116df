"""Per-disk progress bars and the throughput sparkline."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widget import Widget

from ....units import human_bytes
from .glyphs import glyphs


def bar(fraction: float, width: int, g: dict) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    n = int(round(fraction * width))
    return g["full"] * n + g["empty"] * (width - n)


class DiskBar(Widget):
    """`sda  [#####.....]  42.0%  1.2 GiB / 2.8 GiB  reading` in one line."""

    DEFAULT_CSS = "DiskBar { height: 1; }"
    done: reactive[int] = reactive(0)
    state: reactive[str] = reactive("waiting")

    def __init__(self, name: str, size: int, ascii_only: bool, **kw):
        super().__init__(**kw)
        self.disk_name = name
        self.disk_size = size
        self.g = glyphs(ascii_only)

    def render(self) -> str:
        frac = self.done / self.disk_size if self.disk_size else 1.0
        # name 10, pct 7, bytes 22, state 9: the bar gets what is left
        width = max((self.content_region.width or 78) - 51, 8)
        return (f"{self.disk_name[:10]:<10} {bar(frac, width, self.g)} {100 * frac:5.1f}% "
                f"{human_bytes(self.done):>10}/{human_bytes(self.disk_size):<10} {self.state[:9]}")


class Spark(Widget):
    """Throughput history, newest on the right; the scale is the highest value shown."""

    DEFAULT_CSS = "Spark { height: 1; }"
    values: reactive[tuple] = reactive(tuple)

    def __init__(self, ascii_only: bool, **kw):
        super().__init__(**kw)
        self.g = glyphs(ascii_only)

    def push(self, value: float) -> None:
        self.values = (self.values + (value,))[-200:]

    def render(self) -> str:
        width = max(self.content_region.width, 1)
        vals = self.values[-width:]
        if not vals:
            return ""
        top = max(vals) or 1.0
        levels = self.g["spark"]
        return "".join(levels[min(int(v / top * (len(levels) - 1) + 0.5), len(levels) - 1)] for v in vals)
