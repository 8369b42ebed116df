"""The wave page: what `coldclone-server web` shows a migration team, rendered here from the same
CaptureStatus list its API serves (status.py), so the page and `status --json` cannot disagree.

Failures first (and stalled captures), then one table per wave with its totals: servers done,
bytes moved, the rate, the projected end. Every text that came from an agent (a host name, a
wave label, a failure message) is escaped. No script or style from anywhere but this server
(page.js refreshes the <main> part every few seconds from /fragment).
"""

from __future__ import annotations

import html
import time

from ...units import human_bytes, human_minutes
from .status import CaptureStatus, State, ordered, totals

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em 2em; color: #1d2430; background: #f7f8fa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
h2 { font-size: 1.15em; margin: 1.4em 0 .3em; }
.meta, .totals { color: #4a5568; margin: .2em 0 .6em; }
.totals b { color: #1d2430; }
table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px #0002; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #e2e6ec; white-space: nowrap; }
th { background: #eef1f5; font-weight: 600; }
td.detail { white-space: normal; color: #4a5568; }
progress { width: 9em; height: .9em; vertical-align: middle; accent-color: #3b82f6; }
tr.done progress { accent-color: #16a34a; }
tr.failed progress, tr.stalled progress { accent-color: #dc2626; }
.state { font-weight: 600; }
tr.failed .state, tr.stalled .state { color: #b91c1c; }
tr.done .state { color: #15803d; }
tr.superseded { color: #9aa3af; }
tr.warm .state { color: #b45309; }
.phase { font-weight: normal; color: #92400e; }
section.failures { border-left: 4px solid #dc2626; padding-left: .8em; }
.peer-down { color: #b91c1c; }
"""

JS = """
(function () {
  var every = Number(document.body.dataset.refresh || 3) * 1000;
  function refresh() {
    fetch('/fragment', {cache: 'no-store'}).then(function (r) {
      if (!r.ok) { throw new Error(r.status); }
      return r.text();
    }).then(function (text) {
      document.getElementById('wave').innerHTML = text;
    }).catch(function () {
      document.getElementById('updated').textContent = 'this page lost its server; retrying';
    });
  }
  setInterval(refresh, every);
})();
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _row(s: CaptureStatus, now: float) -> str:
    frac = s.fraction
    pct = f"{100 * frac:.1f}%" if frac is not None else "?"
    classes = [s.state.value] + (["done"] if s.migrated else []) + (["stalled"] if s.stalled else []) + (
        ["superseded"] if s.superseded_by else []) + ([s.phase] if s.phase else [])
    state = s.state.value + (" (stalled)" if s.stalled else "")
    phase = f'<br><span class="phase">{_e(s.phase_text(now))}</span>' if s.phase else ""
    rate = f"{s.rate / 1e6:.1f} MB/s" if s.rate else ""
    eta = human_minutes(s.eta_seconds) if s.eta_seconds is not None else ""
    detail = s.reason if s.state is State.FAILED and s.reason else s.detail
    if s.superseded_by:
        detail = f"taken over by {s.superseded_by}; this copy: {detail}"
    size = human_bytes(s.size) if s.size is not None else "?"
    return (f'<tr class="{" ".join(classes)}" data-capture-id="{_e(s.capture_id)}" data-state="{s.state.value}" '
            f'data-phase="{_e(s.phase or "")}" data-done="{s.done}">'
            f'<td>{_e(s.server or "?")}</td><td>{_e(s.capture_id)}</td><td>{_e(s.conversion_server)}</td>'
            f'<td class="state">{_e(state)}{phase}</td>'
            f'<td><progress max="1" value="{frac if frac is not None else 0:.4f}"></progress> {pct}</td>'
            f'<td>{human_bytes(s.done)} of {size}</td><td>{rate}</td><td>{eta}</td>'
            f'<td class="detail">{_e(detail)}</td></tr>')


HEAD = ("<tr><th>source server</th><th>capture</th><th>conversion server</th><th>state</th><th>progress</th>"
        "<th>moved</th><th>rate</th><th>ETA</th><th>detail</th></tr>")


def fragment(statuses: list[CaptureStatus], peers_down: dict[str, str], now: float | None = None) -> str:
    """The <main> part: failures, then each wave with its totals."""
    now = time.time() if now is None else now
    out = [f'<p class="meta" id="updated">updated {_clock(now)}: {len(statuses)} capture(s) on '
           f'{len({s.conversion_server for s in statuses})} conversion server(s)</p>']
    for peer, why in sorted(peers_down.items()):
        out.append(f'<p class="peer-down">conversion server {_e(peer)} does not answer: {_e(why)}</p>')
    bad = [s for s in ordered(statuses) if (s.state is State.FAILED or s.stalled) and not s.superseded_by]
    if bad:
        out.append(f'<section class="failures"><h2>Failures and stalls ({len(bad)})</h2>'
                   f'<table id="failures">{HEAD}{"".join(_row(s, now) for s in bad)}</table></section>')
    for t in totals(statuses, now):
        rows = [s for s in ordered(statuses) if s.wave == t.wave]
        name = t.wave if t.wave is not None else "(no wave)"
        out.append(f'<h2>Wave {_e(name)}</h2><p class="totals" data-wave="{_e(name)}">'
                   f'<b>servers done {t.done} of {t.captures}</b>, failed {t.failed}; {_e(t.progress_text(now))}'
                   f'</p><table class="wave" data-wave="{_e(name)}">{HEAD}{"".join(_row(s, now) for s in rows)}</table>')
    if not statuses:
        out.append('<p class="meta">no capture yet</p>')
    return "\n".join(out)


def page(statuses: list[CaptureStatus], peers_down: dict[str, str], title: str, refresh: float,
         now: float | None = None) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)}</title><link rel="stylesheet" href="/page.css"></head>'
            f'<body data-refresh="{refresh:g}"><h1>{_e(title)}</h1>'
            f'<main id="wave">{fragment(statuses, peers_down, now)}</main>'
            f'<script src="/page.js"></script></body></html>')
