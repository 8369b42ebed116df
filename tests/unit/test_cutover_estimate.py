"""The predicted cutover of a warm capture (issue 22): estimate/plan.py `predict_cutover` over the
cold estimate's own figures and the lookup's warm facts, on recorded figures (the warm syncs of
tests/fixtures/manifests/warm.json, the PERC server of tests/tui/recorded.py); how the job picks
the warm capture it predicts (the survey's answer, resume=auto or resume=ID) and keeps the
prediction out of HELLO when it starts a new capture instead; the lines the console prints and
the estimate as HELLO carries it into the manifest."""

import io
import json
from concurrent.futures import Future
from pathlib import Path

import pytest

from agent import protocol as P
from agent import records
from agent.estimate_model import CaptureEstimate
from agent.manifest import Manifest
from agent.source.capture import lookup, placement
from agent.source.config import CaptureConfig
from agent.source.console import JobConsole
from agent.source.estimate.plan import SETUP_SECONDS, predict_cutover
from agent.source.job import CaptureJob, Estimated
from tests.tui import recorded

GiB = 1 << 30
RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "manifests"


def warm_facts_of(manifest: dict) -> P.WarmFacts:
    """The lookup's warm facts of a warm manifest, as the contract defines them: the last sync's
    time and changed bytes, the interval between the last two."""
    syncs = manifest["syncs"]
    return P.WarmFacts(syncs=len(syncs), last_sync=syncs[-1]["epoch"], changed_bytes=syncs[-1]["bytes_changed"],
                       interval=syncs[-1]["epoch"] - syncs[-2]["epoch"] if len(syncs) > 1 else 0.0)


def warm(facts: P.WarmFacts, cid="srv01") -> P.Unfinished:
    return P.Unfinished(cid, (), updated=facts.last_sync, matched_by="wwid", warm=facts)


def test_the_cutover_reads_what_the_cold_capture_reads_and_sends_what_changed_since_the_last_sync():
    est = recorded.used_estimate()     # 52 + 402 GiB used, read at 300 and 290 MB/s, 117 MB/s link
    facts = P.WarmFacts(syncs=3, last_sync=1_000_000.0, changed_bytes=6 * GiB, interval=12 * 3600)
    c = predict_cutover(est, warm(facts), now=1_000_000.0 + 3 * 3600)
    read = 52 * GiB / 300e6 + 402 * GiB / 290e6
    assert c.change_rate == pytest.approx(6 * GiB / (12 * 3600))
    assert c.since_last_sync == 3 * 3600
    assert c.changed_bytes == int(1.5 * GiB)                        # 6 GiB / 12 h x 3 h
    assert c.bytes_to_read == 454 * GiB
    assert c.read_seconds == pytest.approx(read)
    assert c.send_seconds == pytest.approx(1.5 * GiB / 117e6)
    assert c.fixed_seconds == pytest.approx(SETUP_SECONDS + 0.2)     # setup + the server's last steps
    assert c.seconds == pytest.approx(read + 1.5 * GiB / 117e6 + SETUP_SECONDS + 0.2)
    assert round(c.seconds) == 1690 and est.total_seconds == 3223   # about half the cold downtime here
    assert "change rate between the last two syncs (6.0 GiB in 12.0 h) over the 3.0 h since the last" in c.basis


def test_recorded_syncs_one_sync_only_and_the_cap():
    doc = json.loads((RECORDED / "warm.json").read_text())
    facts = warm_facts_of(doc)
    assert (facts.syncs, facts.changed_bytes, facts.interval) == (3, 262144, 43194.0)
    est = recorded.used_estimate()
    now = facts.last_sync + 43194.0          # as long again as between the last two syncs
    c = predict_cutover(est, warm(facts), now=now)
    assert c.changed_bytes == 262144 and c.syncs == 3
    # one sync only: its changed bytes (the whole first copy), no rate
    one = P.WarmFacts(syncs=1, last_sync=facts.last_sync, changed_bytes=4194304)
    c = predict_cutover(est, warm(one), now=now)
    assert (c.change_rate, c.changed_bytes) == (None, 4194304) and "the only sync's changed bytes" in c.basis
    # a source that changes faster than it can be read: never more than what is read
    fast = P.WarmFacts(syncs=2, last_sync=0.0, changed_bytes=400 * GiB, interval=60.0)
    c = predict_cutover(est, warm(fast), now=86400.0)
    assert c.changed_bytes == 454 * GiB and "capped at the 454.0 GiB read" in c.basis
    # no link limit (loopback, a local disk): nothing to wait for on the wire
    loop = CaptureEstimate(**{**est.__dict__, "link_rate": None})
    assert predict_cutover(loop, warm(facts), now=now).send_seconds == 0.0
    # an unfinished cold capture has no warm facts: no prediction
    assert predict_cutover(est, P.Unfinished("x", ()), now=now) is None


def test_the_console_prints_it_next_to_the_cold_figure_and_hello_carries_it_into_the_manifest():
    est = recorded.used_estimate()
    facts = P.WarmFacts(syncs=3, last_sync=1_000_000.0, changed_bytes=6 * GiB, interval=12 * 3600)
    est.cutover = predict_cutover(est, warm(facts, "srv01-w"), now=1_000_000.0 + 3 * 3600)
    out = io.StringIO()
    JobConsole(5.0, out=out)(Estimated(est))        # the headless and CLI lines
    lines = est.lines()
    at = next(i for i, l in enumerate(lines) if l.startswith("downtime: ~"))
    assert lines[at + 1] == ("cutover of warm capture srv01-w (3 syncs, the last 3.0 h ago): ~28:10 (28 min) of "
                             "downtime: read 454.0 GiB 27:55, send ~1.5 GiB changed 00:14, fixed 00:01")
    assert "cutover of warm capture srv01-w" in out.getvalue()
    # HELLO's estimate, as the receiver decodes it and keeps it in manifest.json
    hello = P.Hello(capture_id="srv01-w", agent_version="t", format="qcow2", estimate=est)
    back = P.Hello.decode(json.loads(json.dumps(hello.to_json())))
    doc = json.loads((RECORDED / "cutover.json").read_text())
    doc["estimate"] = records.encode(back.estimate)
    m = Manifest.load(doc)
    assert m.estimate.cutover == est.cutover
    assert (m.estimate.cutover.seconds, m.disks[0].cutover.seconds) == (est.cutover.seconds, 1.8)


def _job(resume: str, found: list[P.Unfinished]) -> CaptureJob:
    job = CaptureJob(CaptureConfig(server=["ssh://rx@conv/srv"], identity="/k", resume=resume))
    fut: Future = Future()
    fut.set_result([placement.Server("ssh://rx@conv/srv", None, answer=lookup.Answer(found, None))])
    job._survey = fut
    return job


def test_the_job_predicts_the_warm_capture_it_will_take():
    facts = P.WarmFacts(syncs=2, last_sync=1_000_000.0, changed_bytes=GiB, interval=3600.0)
    cold = P.Unfinished("cold-1", (), matched_by="wwid")
    w1, w2 = warm(facts, "warm-1"), warm(facts, "warm-2")
    assert _job("auto", [w1, w2])._warm_capture() is w1          # the one resume=auto takes
    assert _job("warm-2", [w1, w2])._warm_capture() is w2        # the one resume=ID names
    assert _job("auto", [cold, w1])._warm_capture() is None      # auto takes the cold one: no cutover
    weak = P.Unfinished("weak", (), matched_by=P.DiskIdentity.WEAK, warm=facts)
    assert _job("auto", [weak])._warm_capture() is None          # not taken unasked
    job = _job("warm-2", [w1, w2])
    job.estimate = recorded.used_estimate()
    job._predict_cutover()
    assert job.estimate.cutover.capture_id == "warm-2" and job.estimate.cutover.syncs == 2
