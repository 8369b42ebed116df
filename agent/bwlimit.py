"""A bandwidth cap: the one rate syntax and the one token bucket both ends pace with.

The syntax is what `coldclone.bwlimit=` and `coldclone capture --bwlimit` (an agent's own
rate), `coldclone-receive --bwlimit` (the total of a conversion server's sessions) and
`coldclone sync --bwlimit` take: a number and its unit, optionally followed by `/s`:

    100mbit  1gbit  500kbit     bits per second (x 1000), as network people and tc write it
    50M  50MB  800K  2G         bytes per second (x 1000), as the estimate's MB/s
    40MiB  512KiB               bytes per second (x 1024)

A bare number is refused (bits or bytes? a factor of 8 either way), and so is `mbps`, which
means megabits to some tools and megabytes to tc.

The token bucket lets a sender (or a receiver's reader) run `rate` bytes per second on average:
each transfer takes its size from the bucket, which refills at `rate` and holds at most
`burst` bytes; a transfer larger than what the bucket holds runs it into debt, and the next
one waits until the debt is paid. Callers cut their transfers into pieces of at most `burst`
(`paced`), so the link sees a steady stream, not a line-rate burst then a pause.
"""

import re
import threading
import time
from typing import Callable, Optional

# Standard library only, Python 3.6 syntax: the `coldclone sync` file carries this module.

from .errors import UsageError

# The least cap that still moves a capture along (1 kB/s); below it a typo is more likely.
MIN_RATE = 1000
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*(?:/s)?\s*$", re.I)
_UNITS = {
    "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8, "tbit": 1e12 / 8,
    "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30,
}
EXAMPLES = "100mbit, 1gbit, 50M (MB/s) or 40MiB"


def parse_rate(text: str, name: str = "rate") -> int:
    """Bytes per second from a rate as an operator writes it, or a UsageError naming `name`."""
    m = _RATE_RE.match(text or "")
    if not m:
        raise UsageError(f"{name}={text!r}: write a number and its unit, e.g. {EXAMPLES}")
    number, unit = float(m.group(1)), m.group(2).lower()
    if not unit:
        raise UsageError(f"{name}={text!r}: give the unit (bits or bytes?), e.g. {text}mbit or {text}M")
    if unit.endswith("bps"):
        raise UsageError(f"{name}={text!r}: {unit} means megabits to some tools and megabytes to "
                         f"others; write {m.group(1)}mbit (bits) or {m.group(1)}M (bytes per second)")
    factor = _UNITS.get(unit)
    if factor is None:
        raise UsageError(f"{name}={text!r}: unknown unit {unit!r}; use kbit, mbit, gbit (bits), "
                         f"K, M, G (kB, MB, GB) or KiB, MiB, GiB per second")
    rate = int(number * factor)
    if rate < MIN_RATE:
        raise UsageError(f"{name}={text!r} is {rate} bytes per second: less than {MIN_RATE} B/s "
                         f"(8kbit) moves no disk; check the unit")
    return rate


def human_rate(rate: float) -> str:
    """How a cap is shown back: Mbit/s, the unit a link's capacity is planned in."""
    return f"{rate * 8 / 1e6:.1f} Mbit/s" if rate * 8 >= 1e6 else f"{rate * 8 / 1e3:.0f} kbit/s"


class TokenBucket:
    """`rate` bytes per second on average, at most `burst` bytes at once after an idle spell.

    Safe to share between threads (a lock around the accounting, never around the sleep)."""

    def __init__(self, rate: float, burst: Optional[float] = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else self.default_burst(rate)
        self.tokens = self.burst
        self.t = clock()
        self.waited = 0.0         # seconds spent waiting for tokens, for the stats

    @staticmethod
    def default_burst(rate: float) -> float:
        """A tenth of a second of the rate, at least 64 KiB: smooth, and few wake-ups."""
        return max(64 << 10, rate / 10)

    def set_rate(self, rate: float) -> None:
        """A new rate from now on (a receiver's share changes as sessions come and go)."""
        with self._lock:
            self._refill()
            self.rate = float(rate)
            self.burst = self.default_burst(rate)
            self.tokens = min(self.tokens, self.burst)

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now

    def take(self, n: int) -> float:
        """Account for n bytes; sleep while the bucket is in debt. The seconds slept."""
        with self._lock:
            self._refill()
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)
            self.waited += wait
        return wait


def paced(send: Callable[[bytes], None], bucket: TokenBucket) -> Callable[[bytes], None]:
    """send() through the bucket, in pieces of at most its burst."""

    def send_paced(data: bytes) -> None:
        step = max(1, int(bucket.burst))
        if len(data) <= step:
            bucket.take(len(data))
            send(data)
            return
        view = memoryview(data)
        for i in range(0, len(view), step):
            piece = bytes(view[i:i + step])     # transports take bytes (paramiko's messages)
            bucket.take(len(piece))
            send(piece)

    return send_paced
