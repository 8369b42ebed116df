"""Which characters the console can show: Unicode blocks on a VGA/UTF-8 console,
plain ASCII on a serial vt100 (iDRAC / iLO serial-over-LAN often is one)."""

from __future__ import annotations

import os

UNICODE = {"full": "█", "empty": "░", "spark": " ▁▂▃▄▅▆▇█"}
ASCII = {"full": "#", "empty": ".", "spark": " .:-=+*#%@"}
PLAIN_TERMS = ("vt100", "vt102", "vt220", "vt52", "dumb", "ansi")


def ascii_console(env=None) -> bool:
    env = os.environ if env is None else env
    term = env.get("TERM", "")
    if term.split("-")[0] in PLAIN_TERMS:
        return True
    lang = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or ""
    # The Linux VGA console has a Unicode font even in the C locale; a serial line does not.
    return term != "linux" and "utf" not in lang.lower().replace("-", "")


def glyphs(ascii_only: bool) -> dict:
    return ASCII if ascii_only else UNICODE
