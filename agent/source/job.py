"""One capture job for every front end.

`coldclone capture`, `coldclone headless` and the TUI only build a CaptureConfig and render
the events this job posts; the order of a run lives here, once (as virt-p2v's GUI and kernel
command line both end in one start_conversion):

    pre hook -> network (ip=) -> identity (path or https URL) -> target -> iSCSI login
    -> discovery -> inspection (readiness, read-only) [-> the conversion server, of several]
    -> estimate -> capture -> post hook
    always, at the end: iSCSI logout, target closed, a fetched identity removed
    on any failure: the fail hook, with the exit code and the message

What happens after (power off, reboot, a shell, the TUI's Done screen) is the front end's:
only the live system may power the machine off, and only after its consoles have the last
line. A front end that already did a step interactively (the TUI logs in to iSCSI, takes
the inventory and estimates on its own screens) hands the result in (`Prepared`), and the
job skips that step.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Callable

from . import netsetup
from .capture import inuse, lookup, placement
from .capture.guard import device_tree
from .capture.session import CaptureRequest, CaptureResult, run_capture
from .capture.source import probe
from .capture.stream import StreamOptions, parse_compress
from .capture.usedmap import maps_reused
from .config import PREFIX, CaptureConfig, describe
from .discover.model import Inventory, Why, to_dict
from .discover.populate import discover
from .. import protocol as P
from ..bwlimit import human_rate
from ..errors import (
    EXIT_CANCELLED,
    EXIT_INTERNAL,
    EXIT_USAGE,
    ColdcloneError,
    ConnectionError_,
    SourceError,
    UsageError,
)
from .estimate import plan
from .estimate.plan import CaptureEstimate
from ..guestos.report import ReadinessReport
from .inspect.report import inspect_for_capture
from .iscsi import auto
from ..runcmd import run
from .transport.open import Target, open_target
from .transport.url import parse_target, redact, url_secrets
from ..units import human_bytes as hb

log = logging.getLogger("coldclone.job")

RUN_DIR = "/run/coldclone"


# ---- the events a front end renders --------------------------------------------------

@dataclass(frozen=True)
class Note:
    """A plain line for the operator (hooks, network, iSCSI, host-key advice)."""
    text: str


@dataclass(frozen=True)
class Inventoried:
    inventory: Inventory | None     # None: the front end discovered nothing (named devices)
    sources: list[str]      # the device paths that will be captured, inventory order


@dataclass(frozen=True)
class Inspected:
    report: ReadinessReport     # goes into the manifest


@dataclass(frozen=True)
class Estimated:
    estimate: CaptureEstimate


@dataclass(frozen=True)
class Captured:
    result: CaptureResult
    estimate: CaptureEstimate | None
    readiness: ReadinessReport | None = None


# The capture's own progress events (capture.events: CaptureStarted, DiskStarted, Progress,
# DiskFinished, ServerNote, CaptureFinished) reach the front end unchanged.


@dataclass
class Prepared:
    """Steps a front end has already done itself (the TUI's screens): the job takes their
    results as they are (an estimate the screen could not make stays None)."""
    target: Target | None = None
    discovered: bool = False
    inventory: Inventory | None = None
    sources: list[str] = field(default_factory=list)    # the operator's pick (device paths)
    estimated: bool = False
    estimate: CaptureEstimate | None = None
    iscsi_done: bool = False
    inspected: bool = False
    readiness: ReadinessReport | None = None    # the one the Inventory screen made


class HookError(ColdcloneError):
    exit_code = EXIT_USAGE


def describe_failure(e: BaseException) -> tuple[int, str]:
    """The exit code and the operator's message for whatever ended a run (one reading, used by
    the fail hook and by every front end's last line)."""
    if isinstance(e, ColdcloneError):
        return e.exit_code, str(e)
    if isinstance(e, KeyboardInterrupt):
        return EXIT_CANCELLED, "cancelled"
    if isinstance(e, OSError):
        # str() keeps the path ("[Errno 13] Permission denied: '/run/coldclone/locks'")
        return EXIT_INTERNAL, f"{e} (the log has the details)"
    return EXIT_INTERNAL, f"internal error: {e!r} (the log has the traceback; please report it)"


# ---- hooks and the identity: fetched over the network ----------------------------------

def fetch(url: str, dest: str, *, what: str, say: Callable[[str], None], mode: int = 0o600) -> str:
    """Download an http(s) URL to dest (private). Keys only ever come over https."""
    import requests

    shown = redact(url)
    if url.startswith("http://"):
        say(f"WARNING: fetching the {what} over plain http ({shown}); anyone on that network "
            f"could change it. Prefer https://")
    try:
        r = requests.get(url, timeout=30)
        r.raise_for_status()
    except requests.RequestException as e:
        # requests quotes the URL (or its path and query) in its own words
        reason = str(e)
        for secret in url_secrets(url):
            reason = reason.replace(secret, "****")
        raise ConnectionError_(f"could not fetch the {what} from {shown}: {reason}; check the URL, "
                               f"the network (ip=, DHCP) and the web server") from None
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(r.content)
    return dest


def run_hook(name: str, spec: str | None, env: dict[str, str], say: Callable[[str], None]) -> None:
    if not spec:
        return
    path = spec
    if spec.startswith(("http://", "https://")):
        os.makedirs(RUN_DIR, exist_ok=True)
        path = fetch(spec, os.path.join(RUN_DIR, f"hook-{name}"), what=f"{name} hook", say=say, mode=0o700)
    elif not os.path.isfile(spec):
        raise HookError(f"{PREFIX}{name}={spec}: no such file on the live system; put the script "
                        f"on the boot medium or serve it over http(s)")
    spec = redact(spec)
    say(f"running the {name} hook {spec}")
    res = run(["/bin/sh", path], check=False, env={**os.environ, **env}, timeout=3600)
    for line in (res.stdout or "").splitlines()[-20:]:
        say(f"  {name}: {line}")
    if res.returncode != 0:
        tail = " | ".join((res.stderr or "").strip().splitlines()[-5:])
        raise HookError(f"the {name} hook {spec} failed (exit {res.returncode})"
                        + (f": {tail}" if tail else "") + f"; fix it or remove {PREFIX}{name}=")


# ---- the job -------------------------------------------------------------------------

@dataclass
class CaptureJob:
    cfg: CaptureConfig
    notify: Callable[[object], None] = lambda ev: None
    cancel: threading.Event = field(default_factory=threading.Event)
    include_loop: bool = False          # offer loop devices (tests; implied by a named /dev/loopN)
    prepared: Prepared = field(default_factory=Prepared)
    # `coldclone capture --disk`: exactly the devices named are captured (a partition, an md
    # array, a disk discovery would not offer); discovery only describes them for the manifest.
    capture_named: bool = False

    # filled while running
    target: Target | None = None
    inventory: Inventory | None = None
    estimate: CaptureEstimate | None = None
    readiness: ReadinessReport | None = None
    sources: list[str] = field(default_factory=list)
    _attachment: auto.IscsiAttachment | None = None
    _fetched_identity: str | None = None
    # Several servers (a wave): one Target each, what each said, and the capture's way to the one
    # chosen (capture/placement.py). One server: the survey is the lookup of unfinished captures.
    servers: list[placement.Server] = field(default_factory=list)
    placement: placement.Placement | None = None
    _targets: list[Target] = field(default_factory=list)
    _survey: Future | None = None       # the servers, once each answered (or could not)
    _identities: tuple = ()             # the sources' disks as the survey asked about them

    def say(self, text: str) -> None:
        self.notify(Note(text))

    def run(self) -> CaptureResult | None:
        """The whole run; the CaptureResult, or None when only estimating."""
        cfg = self.cfg
        try:
            try:
                self.say("configuration: " + " ".join(describe(cfg)))
                run_hook("pre", cfg.pre, {**self._env(), "COLDCLONE_PHASE": "pre"}, self.say)
                self._network()
                self._identity()
                self._open_target()
                self._iscsi()
                self._discover()
                self._start_survey()
                self._inspect()
                self._choose()
                with maps_reused():   # mode=used: the estimate's map serves the capture
                    self._estimate()
                    if cfg.estimate_only:
                        self.say(f"{PREFIX}estimate_only: nothing captured")
                        return None
                    result = self._capture()
                run_hook("post", cfg.post, {**self._env(), "COLDCLONE_PHASE": "post",
                                            "COLDCLONE_CAPTURE_ID": result.capture_id,
                                            "COLDCLONE_LOCATION": result.location}, self.say)
                return result
            finally:
                self._close()
        except BaseException as e:
            if isinstance(e, (Exception, KeyboardInterrupt)) and not isinstance(e, ColdcloneError):
                log.exception("the capture job failed")
            self._fail_hook(e)
            raise

    # -- steps, in order
    def _env(self) -> dict[str, str]:
        if self.placement is not None:
            server = self.placement.current.url      # where the capture is (it may have moved)
        else:
            server = str(self.target.url) if self.target is not None else ",".join(self.cfg.server)
        return {"COLDCLONE_SERVER": server, "COLDCLONE_CAPTURE_ID": self.cfg.capture_id or ""}

    def _network(self) -> None:
        if not self.cfg.ip:
            return
        for line in netsetup.apply(netsetup.parse_ip_spec(self.cfg.ip)).lines:
            self.say(line)

    def _identity(self) -> None:
        cfg = self.cfg
        if cfg.identity and cfg.identity.startswith("https://"):
            os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
            url = cfg.identity
            path = fetch(url, os.path.join(RUN_DIR, f"identity-{os.getpid()}"),
                         what="identity (private key)", say=self.say)
            self._fetched_identity = path
            self.cfg = cfg = replace(cfg, identity=path)
            self.say(f"identity fetched from {redact(url)}")
        elif cfg.identity and not os.path.exists(cfg.identity):
            raise UsageError(f"identity {cfg.identity}: no such file; check the path (on the live "
                             f"system the boot medium is at /run/live/medium) or use an https:// URL")

    def _open_target(self) -> None:
        cfg = self.cfg
        self.target = self.prepared.target
        if self.target is None and cfg.server:
            targets = [open_target(url, identity=cfg.identity, hostkey=cfg.hostkey, known_hosts=cfg.known_hosts,
                                   password=cfg_password(cfg), timeout=cfg.timeout) for url in cfg.server]
            if len(targets) == 1:
                self.target = targets[0]
            else:
                # a wave: which one takes the capture is chosen once they have answered (_choose)
                self._targets = targets
                self.servers = [placement.Server(url, t.connect) for url, t in zip(cfg.server, targets)]
        if any(s.startswith("ssh://") for s in cfg.server) and not (cfg.hostkey or cfg.known_hosts):
            # said before the first connection (the calibration probe): the refusal would be
            # right but late
            self.say("no host key pin given: the server's key must be in known_hosts, or the "
                     "capture is refused; give coldclone.hostkey=SHA256:...")

    def _iscsi(self) -> None:
        if self.prepared.iscsi_done:
            return
        self._attachment = auto.auto_attach(self.cfg.iscsi, self.cfg.iscsi_ip, None, self.say)

    def _discover(self) -> None:
        cfg = self.cfg
        named = [d for d in (cfg.disks or []) if d.startswith("/")]
        for path in named:
            probe(path)     # a named device that is missing or no block device: said as such, first
        if named:
            # A named disk in use (mounted read-write, swap, open for writing) is refused by
            # name, with the override, before discovery quietly leaves it out.
            inuse.check(device_tree(named), what="capture " + ", ".join(named), allow=cfg.allow_mounted)
        if self.prepared.discovered:
            self.inventory, self.sources = self.prepared.inventory, list(self.prepared.sources)
            self.notify(Inventoried(self.inventory, list(self.sources)))
            return
        # A local target disk must never be offered as a source; an NFS mount is no disk.
        local = self.target.local_path if self.target and self.target.url.scheme == "file" else None
        include_loop = self.include_loop or any(os.path.basename(p).startswith("loop") for p in named)
        try:
            inv = discover(include_loop=include_loop, target=local, only=cfg.disks,
                           allow_mounted=cfg.allow_mounted)
        except Exception as e:
            if not self.capture_named:
                raise
            # on a machine discovery cannot read, the named devices are still captured
            log.warning("discovery failed (%s); capturing the named disks without an inventory", e)
            self.say(f"discovery failed ({e}); capturing {', '.join(named)} without an inventory")
            inv = None
        if self.capture_named:
            self.inventory, self.sources = inv, list(named)
            self.notify(Inventoried(inv, list(self.sources)))
            return
        if inv.unknown_selected:
            raise UsageError(f"{PREFIX}disks=: " + "; ".join(
                f"selected disk {spec} is not a known disk" for spec in inv.unknown_selected)
                + " (see the inventory above; names such as sda, md127, cciss/c0d0 or /dev paths)")
        for spec in cfg.exclude:
            disk = inv.resolve(spec)
            if disk is None:
                raise UsageError(f"{PREFIX}exclude={spec}: no such disk (see the inventory above)")
            disk.exclude(Why.EXCLUDED, f"excluded by {PREFIX}exclude=")
        self.inventory = inv
        disks = inv.capture_set()
        self.sources = [d.dev_path or "/dev/" + d.name for d in disks]
        self.notify(Inventoried(inv, list(self.sources)))
        if not disks:
            named_disks = [inv.resolve(spec) for spec in cfg.disks or []]
            why = [f"{d.name}: {d.exclude_reason}" for d in inv.disks
                   if d.exclude_reason and any(d is n for n in named_disks)]
            raise SourceError("no disk to capture: discovery found none that may be captured"
                              + (f" ({'; '.join(why)})" if why else "")
                              + f" (see the inventory; check {PREFIX}disks= / {PREFIX}exclude=, "
                              f"the RAID controller's logical drives, and iSCSI)")

    def _inspect(self) -> None:
        """The readiness report every capture carries (manifest `readiness`): the source OS
        inspected read-only. Advice, like the estimate: a failure is in the report, not raised."""
        if self.prepared.inspected and self.prepared.readiness is not None:
            self.readiness = self.prepared.readiness
        elif self.inventory is None:
            self.readiness = ReadinessReport(error="no inventory (discovery failed), so no "
                                                   "source OS was inspected")
        else:
            self.readiness = inspect_for_capture(self.inventory)
        self.notify(Inspected(self.readiness))

    def _estimate(self) -> None:
        if self.prepared.estimated:
            self.estimate = self.prepared.estimate
            return
        cfg, target = self.cfg, self.target
        cap, cap_source = self._rate_cap()
        try:
            self.estimate = plan.estimate_capture(
                self.inventory, self.sources, str(target.url) if target else None, cfg.mode,
                calibrate_seconds=cfg.calibrate, connect=target.connect if target else None,
                local_path=target.local_path if target else None, workers=cfg.workers,
                image_format=cfg.format, rate_cap=cap, rate_cap_source=cap_source)
        except ColdcloneError:
            raise
        except Exception as e:  # an estimate is advice: a bug in it must not stop a capture
            log.exception("estimate failed")
            self.say(f"estimate unavailable ({e!r}); capturing anyway")
            return
        self._predict_cutover()
        self.notify(Estimated(self.estimate))
        self._place_by_space()

    def _predict_cutover(self) -> None:
        """A warm capture of these disks on the server (the survey's lookup, the one this run
        would cut over): its cutover predicted next to the cold estimate (estimate/plan.py)."""
        est = self.estimate
        if est is None or est.cutover is not None:
            return
        warm = self._warm_capture()
        if warm is not None:
            try:
                est.cutover = plan.predict_cutover(est, warm)
            except Exception:  # advice, like the estimate it joins
                log.exception("cutover prediction failed")

    def _warm_capture(self) -> P.Unfinished | None:
        """The warm capture this run takes: the one named by resume=ID, else the one resume=auto
        takes (lookup.to_take), when the survey found it; None otherwise (a survey that failed is
        said where the capture asks it, `_unfinished`)."""
        if self._survey is None:
            return None
        try:
            servers = self._survey.result()
        except Exception:
            return None
        s = self.placement.current if self.placement is not None else servers[0]
        found = s.answer.unfinished if s.answer is not None else []
        fixed = self.cfg.resume if self.cfg.resume not in ("auto", "off") else None
        take = next((u for u in found if u.capture_id == fixed), None) if fixed else lookup.to_take(found)
        return take if take is not None and take.warm is not None else None

    def _capture(self) -> CaptureResult:
        cfg = self.cfg
        codec, level = parse_compress(cfg.compress)
        opts = StreamOptions(mode=cfg.mode, chunk_size=cfg.chunk_size, block_size=cfg.block_size,
                             codec=codec, level=level if codec == "zstd" else 1, workers=cfg.workers,
                             on_read_error=cfg.on_read_error)
        facts = {"inventory": to_dict(self.inventory)} if self.inventory is not None else {}
        est = self.estimate
        capture_id = cfg.resolved_capture_id()
        if capture_id is None and cfg.resume == "auto":
            capture_id = self._unfinished()
        if est is not None and est.cutover is not None and est.cutover.capture_id != capture_id:
            est = replace(est, cutover=None)   # a new capture, not the cutover that was predicted
        connect = self.placement.connect if self.placement is not None else self.target.connect
        result = run_capture(CaptureRequest(
            disks=list(self.sources), connect=connect, opts=opts, capture_id=capture_id,
            image_format=cfg.format, source_facts=facts, estimate=est, readiness=self.readiness,
            allow_mounted=cfg.allow_mounted, resume=cfg.resume != "off", reconnect_seconds=cfg.reconnect,
            stall_seconds=cfg.stall, wave=cfg.wave, bwlimit=cfg.bwlimit,
            failover=self.placement.moves_on if self.placement is not None else None),
            on_event=self.notify, cancel=self.cancel)
        self.notify(Captured(result, self.estimate, self.readiness))
        return result

    def _start_survey(self) -> None:
        """Ask the servers, while inspection runs (a session each: ~0.5 s here): with several, how
        busy each is and what it holds of these disks, to choose one; with one, only when
        resume=auto and no id is given, for an unfinished capture of these disks to continue."""
        cfg = self.cfg
        try:
            fixed = cfg.resolved_capture_id()
        except UsageError:
            return    # said where the capture needs its id
        servers = self.servers
        if not servers:
            # resume=auto without an id looks for an unfinished capture to continue; resume=ID
            # (a cutover names its warm capture) asks too, for the warm facts the estimate predicts
            # the cutover from
            lookup_wanted = fixed is None if cfg.resume == "auto" else cfg.resume != "off"
            if cfg.estimate_only or not lookup_wanted or self.target is None:
                return
            servers = [placement.Server(str(self.target.url), self.target.connect)]
        fut: Future = Future()
        sources = list(self.sources)

        def ask() -> None:
            try:
                self._identities = lookup.identities(sources)
                placement.survey(servers, self._identities)
                fut.set_result(servers)
            except BaseException as e:
                fut.set_exception(e)

        # A daemon thread: a job that fails before its capture does not wait for the answers to exit.
        threading.Thread(target=ask, name="cc-survey", daemon=True).start()
        self._survey = fut

    def _surveyed(self) -> list[placement.Server] | None:
        """The servers as they answered; None (said why) when the survey itself failed."""
        if self._survey is None:
            return None
        try:
            return self._survey.result()
        except Exception as e:  # a convenience: the capture still works without it
            if not isinstance(e, ColdcloneError):
                log.exception("asking the conversion servers failed")
            self.say(f"could not ask the conversion server(s) before the capture ({e})")
            return None

    def _choose(self) -> None:
        """Several servers: the one to capture to (capture/placement.py ranks them)."""
        if not self.servers:
            return
        cfg = self.cfg
        self._surveyed()
        for s in self.servers:
            self.say("conversion server " + s.describe())
        if all(s.error is not None for s in self.servers):
            raise ConnectionError_(f"none of the {len(self.servers)} conversion servers can be reached: "
                                   + "; ".join(f"{s.shown}: {s.error}" for s in self.servers))
        order = placement.rank(self.servers, self._source_key(), None)
        self.placement = placement.Placement(order, cfg.failover, say=self.say)
        self._place(why=("it holds an unfinished capture of these disks" if placement.resumable_on(order[0])
                         else "the least busy"))

    def _place(self, why: str) -> None:
        first = self.placement.current
        self.target = Target(parse_target(first.url), first.connect)
        self.say(f"capturing to {first.shown} ({why})")

    def _place_by_space(self) -> None:
        """Once the estimate knows the capture's data: a server without room for it goes last."""
        est = self.estimate
        if self.placement is None or est is None or self.placement.connected_once:
            return
        need = P.space_needed(sum(d.data_bytes for d in est.disks), self.cfg.format)
        order = placement.rank(self.servers, self._source_key(), need)
        if order[0] is not self.placement.current:
            self.placement.order, self.placement.index = order, 0
            self._place(why=f"the capture needs about {hb(need)}, which the first choice has not free")

    def _source_key(self) -> str:
        """This source as the rendezvous hash knows it: its disks' serials, WWIDs and first bytes
        (every source of a wave booted from one ISO has the same host name and disk names)."""
        if self._identities:
            return ",".join(f"{d.name}:{d.serial}:{d.wwid}:{d.head}" for d in self._identities)
        return socket.gethostname() + "|" + ",".join(self.sources)

    def _rate_cap(self) -> tuple[float | None, str]:
        """The least of the agent's bwlimit= and the chosen server's share of its total cap."""
        caps = []
        if self.cfg.bwlimit:
            caps.append((float(self.cfg.bwlimit), f"bwlimit={human_rate(self.cfg.bwlimit)}"))
        load = self.placement.current.load if self.placement is not None else None
        if load is not None and load.bwlimit:
            share = load.bwlimit / (load.running + 1)
            caps.append((share, f"the server's cap {human_rate(load.bwlimit)} over {load.running + 1} "
                                f"session(s)"))
        return min(caps) if caps else (None, "")

    def _unfinished(self) -> str | None:
        """The id of an unfinished capture of these very disks, when the server holds one proven by
        WWID/serial (the source server was rebooted mid-capture and its made-up id went with it).
        Weaker matches are named, not taken: another server booted from this ISO can have disks
        of the same names and sizes."""
        servers = self._surveyed()
        if not servers:
            return None
        s = self.placement.current if self.placement is not None else servers[0]
        if s.answer is None:
            self.say(f"could not ask {s.shown} for unfinished captures of these disks ({s.error}); "
                     f"starting a new capture")
            return None
        found = s.answer.unfinished
        take = lookup.to_take(found)
        for u in found:
            if u is not take:
                self.say(f"not resumed: unfinished capture {lookup.describe(u)}. To continue it: "
                         f"{PREFIX}resume={u.capture_id} (coldclone capture --resume {u.capture_id})")
        if take is None:
            return None
        self.say(f"resuming unfinished capture {lookup.describe(take)}")
        return take.capture_id

    def _close(self) -> None:
        if self._attachment is not None:
            try:
                self._attachment.logout()
            except ColdcloneError as e:
                self.say(f"iSCSI logout: {e}")
            self._attachment = None
        if self.target is not None and self.target is not self.prepared.target:
            self.target.close()
        for t in self._targets:
            t.close()
        if self._fetched_identity:
            os.unlink(self._fetched_identity)
            self._fetched_identity = None

    def _fail_hook(self, e: BaseException) -> None:
        if not self.cfg.fail:
            return
        code, msg = describe_failure(e)
        try:
            run_hook("fail", self.cfg.fail, {"COLDCLONE_PHASE": "fail", "COLDCLONE_EXIT": str(code),
                                             "COLDCLONE_MESSAGE": msg[:2000]}, self.say)
        except ColdcloneError as he:
            self.say(f"error: {he}")


def cfg_password(cfg: CaptureConfig) -> str | None:
    """An SSH password from the environment variable the CLI named (--password-env)."""
    if not cfg.password_env:
        return None
    password = os.environ.get(cfg.password_env)
    if password is None:
        raise UsageError(f"--password-env {cfg.password_env}: that environment variable is not set")
    return password
