"""How long a capture will take, i.e. how long the server stays down: the estimate front ends show.

The capture is a pipeline (agent.source.capture.stream): one thread reads the source,
a small pool zero-tests, hashes and compresses, the caller's thread sends; so a
disk streams at the pace of its slowest stage:

    source read  ->  CPU (sha256, zstd)  ->  link to the target (+ the server taking it)

and after its last byte the receiver finishes re-reading and hashing the image (it follows
the stream, so one step of it is left); it writes the qcow2 itself as the records come, so
nothing after the last byte grows with the disk (it reads no more of the stream meanwhile, so
that time adds up disk by disk). Per disk:

    seconds = max(size / read_rate, size * cpu_per_byte / workers, wire_bytes / link_rate)
              + min(data_bytes, READBACK_STEP) / readback_rate

What the disk holds (share of non-zero blocks, compression, CPU per byte) is
sampled; the read rate and the link rate come from the table in links.py
unless calibration measured them (a timed read of the source, and a probe
through the real target: agent.source.estimate.calibrate).

A warm capture of the disks on the server (the lookup's READY.unfinished `warm` facts) adds the
predicted cutover (`predict_cutover`), next to the cold figure:

    seconds = sum(bytes_to_read / read_rate) + changed / link_rate + fixed costs
    changed = min(change_rate x seconds since the last sync, bytes read)   (one sync: its changed bytes)
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import time
from typing import Callable

from ... import devnames
from ... import protocol as P
from ...estimate_model import (Alternative, Calibration, CaptureEstimate, CutoverEstimate, DiskEstimate,
                               LinkEstimate, ReadTiming)
from ..capture.stream import StreamOptions
from ..capture.usedmap import maps_are_reused, plan_disk
from ...choices import CAPTURE_MODES as MODES
from ..discover.model import Inventory
from ...errors import ColdcloneError, SourceError, UsageError
from ...runcmd import run
from ..transport.url import parse_target
from ...units import human_bytes as hb
from ...units import human_minutes
from . import links as L
from .calibrate import probe_target
from .sample import ContentSample, measure_read_rate, sample_content

log = logging.getLogger("coldclone.estimate")

MB = L.MB

# After the last byte of a disk the receiver reads back the last step of its image (the read-back
# follows the writes) and flushes it; the qcow2 is written directly (issue 21: no conversion, no
# compare). Digest of a warm image measured at 1.2 GB/s on the development machine; the probe
# measures the read-back rate of the real server.
READBACK_RATE = 1200 * MB
# Once per capture: SSH handshake, read-only guard, the receiver's start, the verdict's round
# trip (0.6-0.9 s measured here over a 50 MB/s link).
SETUP_SECONDS = 1.0


# ----------------------------------------------------------------- target link

def _route_dev(host: str) -> str | None:
    """The interface the kernel would use to reach host (`ip route get`)."""
    try:
        addr = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0]
    except (socket.gaierror, IndexError):
        return None
    try:
        out = run(["ip", "route", "get", addr], check=False, quiet=True).stdout
    except ColdcloneError:
        return None
    words = out.split()
    if "dev" in words and words.index("dev") + 1 < len(words):
        return words[words.index("dev") + 1]
    return None


def _nic_speed(inventory: Inventory | None, dev: str) -> int | None:
    for n in inventory.nics if inventory is not None else []:
        if n.name == dev:
            return n.speed_mbps
    try:
        v = int(open(f"/sys/class/net/{dev}/speed").read().strip())
        return v if v > 0 else None
    except (OSError, ValueError):
        return None


def _disk_of_path(path: str) -> str | None:
    """Kernel name of the whole disk holding `path` (sda for a file on /dev/sda1)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    sys_dir = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    real = os.path.realpath(sys_dir)
    if not os.path.exists(real):
        return None
    if os.path.exists(os.path.join(real, "partition")):
        real = os.path.dirname(real)
    return os.path.basename(real)


def target_link(target: str | None, inventory: Inventory | None = None, local_path: str | None = None) -> LinkEstimate | None:
    """Which link the capture's bytes leave through, for a target URL."""
    if not target:
        return None
    url = parse_target(target)
    if url.scheme in ("ssh", "nfs"):
        dev = _route_dev(url.host)
        if dev == "lo":
            return LinkEstimate("loopback", f"{url.scheme.upper()} to this machine (loopback)", None,
                                  "no link: the server is this machine")
        return L.nic_link(dev or "", _nic_speed(inventory, dev) if dev else None, url.scheme)
    path = local_path or url.path
    kname = _disk_of_path(path)
    disk = inventory.resolve(kname) if (inventory is not None and kname) else None
    if disk is not None and disk.link is not None:
        link = L.classify_disk_link(disk.link)
        if link is not None:
            if link.kind == "sata" and (disk.removable or "esata" in " ".join(disk.by_path).lower()):
                link.label = "e-SATA" + link.label[4:]
            return link
    what = f"/dev/{kname}" if kname else path
    return LinkEstimate("local", f"local disk {what}", None, "no link limit known (the probe measures it)")


# ------------------------------------------------------------------ the estimate

def _per_disk(path: str, inv_disk, sample: ContentSample, read_rate: float, read_src: str,
              link_rate: float | None, readback_rate: float, workers: int, image_format: str,
              mode: str, pipe_rate: float | None = None, shared_cpu: float | None = None,
              write_rate: float | None = None, map_seconds: float = 0.0,
              colocated_read_share: float | None = None) -> DiskEstimate:
    size = sample.size
    to_read = int(size * sample.read_fraction)   # mode=used reads only its map's sent extents
    data = int(size * sample.nonzero_fraction)
    # DATA records carry a 50-byte head per run; ZERO records 21 bytes: a fraction of a percent.
    to_send = int(data * sample.compress_ratio) + (size // (4 << 20) + 1) * 80
    stages = {
        "read": to_read / read_rate if read_rate else 0.0,
        "cpu": size * sample.cpu_per_byte / max(1, workers),
        "link": to_send / link_rate if link_rate else 0.0,
    }
    if pipe_rate:
        # The probe ran this content through processing, link and server together: its pace in
        # source bytes bounds the disk too.
        stages["link"] = max(stages["link"], to_read / pipe_rate)
    if write_rate:
        # The target's disk, measured by the probe's syncs: it writes the non-zero data.
        stages["write"] = data / write_rate
    if shared_cpu:
        # Reading, hashing, compressing and sending were timed apart, but in the capture they
        # share this machine's CPUs: all their CPU seconds, spread over every core, bound it too.
        stages["cpu"] = max(stages["cpu"], to_read * shared_cpu / (os.cpu_count() or 1))
    if colocated_read_share is not None:
        # The receiver runs on this machine (loopback, a file, USB or NFS target) and the probe
        # timed the pipeline it ends: that pace is this machine's CPU, and reading the source
        # takes the same CPUs for its CPU share (a loop device over a cached file copies memory;
        # a real disk mostly waits for the device), so the two add up instead of overlapping.
        # Measured on `make demo` (loopback, 2 cores): the overlap model said 5.0-12.9 s where
        # the capture took 8.5-16.1 s (+24 to +69 %).
        stages["shared"] = stages["read"] * colocated_read_share + stages["link"]
    # The receiver reads its image back while the stream runs (receive/readback.py): after the
    # last byte at most one step of it is left, whatever the format (a qcow2 is written directly).
    post = min(data, P.READBACK_STEP) / readback_rate
    stream_key = max(stages, key=stages.get)
    seconds = stages[stream_key] + post + map_seconds
    stages["server"] = post
    if map_seconds:
        stages["map"] = map_seconds   # mode=used: partclone maps the filesystems before reading
    return DiskEstimate(
        # The disk id the capture streams it under (cciss/c0d0 -> cciss-c0d0): the live ETA
        # finds this disk's model by it.
        path=path, name=devnames.stream_name(devnames.kernel_name(path)), size=size, bytes_to_read=to_read,
        bytes_to_send=to_send,
        data_bytes=data, seconds=seconds, bottleneck=stream_key if stages[stream_key] >= post else "server",
        stages=stages, nonzero_fraction=sample.nonzero_fraction, compress_ratio=sample.compress_ratio,
        read_rate=read_rate, read_rate_source=read_src, sample=sample.facts())


def _used_ranges(path: str) -> tuple[list[tuple[int, int]], float]:
    """The sent extents of the capture's own used map of path (agent.source.capture.usedmap), and the
    seconds the capture will spend building it again: none inside a job, which hands the
    capture this very map (usedmap.maps_reused), else what building it took here."""
    t0 = time.monotonic()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    umap = plan_disk(path, size, P.DEFAULT_BLOCK_SIZE)
    again = 0.0 if maps_are_reused() else time.monotonic() - t0
    return [(e.offset, e.length) for e in umap.extents if e.sent], again


def default_disks(inventory: Inventory | None) -> list[str]:
    if inventory is None:
        return []
    return [d.dev_path for d in inventory.capture_set() if d.dev_path]


ALTERNATIVE_KEYS = ("usb2", "usb3", "esata", "nfs1g")


def estimate_capture(inventory: Inventory | None, disk_paths: list[str], target: str | None, mode: str = "nonzero", *,
                     calibrate_seconds: float = 3.0, connect: Callable | None = None,
                     local_path: str | None = None, workers: int = 2, image_format: str = "qcow2",
                     level: int = 1, codec: str = "zstd", samples: int = 256,
                     on_note: Callable[[str], None] | None = None, rate_cap: float | None = None,
                     rate_cap_source: str = "") -> CaptureEstimate:
    """The estimate a front end shows before the capture (and puts in the manifest).

    calibrate_seconds bounds the measuring: the source is read for a third of it and, with
    `connect` (a Target.connect), the target is probed for the rest (without a target the
    reads take it all); 0 measures nothing and uses the table. Content sampling (64 MiB per disk, spread
    over it) always runs. rate_cap: bytes per second the capture may use on the wire (bwlimit=, or
    a server's share of its total cap), with what set it: the link runs no faster than that.
    """
    if mode not in MODES:
        raise UsageError(f"mode {mode!r}: choose used (only the blocks filesystems use), "
                         f"nonzero (skip all-zero blocks) or full (every byte)")
    notes: list[str] = []
    # Used mode reads what the capture's own used map sends; within it zero blocks go as in nonzero.
    sample_mode = "nonzero" if mode == "used" else mode
    disk_paths = list(disk_paths) or default_disks(inventory)
    if not disk_paths:
        raise UsageError("no disk to estimate: name one with --disk /dev/X (coldclone discover lists them)")
    say = on_note or (lambda text: None)
    eff_workers = max(1, min(workers, os.cpu_count() or 1))
    link = target_link(target, inventory, local_path)
    calibration = Calibration()
    calibrated = False
    # Where the receiver runs on this machine: a local target (file, USB, NFS: coldclone-receive
    # as a child process) or SSH over loopback.
    colocated = bool(target) and (parse_target(target).scheme in ("file", "nfs")
                                  or (link is not None and link.kind == "loopback"))
    caveat = ""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if colocated and load > cores:
        # With the receiver here the pace is this machine's CPU, and other work takes it as it
        # comes and goes (a live ISO runs nothing else; a shared test machine does).
        caveat = (f"not meaningful here: the receiver shares this machine, which was busy with other "
                  f"work (load {load:.1f} on {cores} cores)")
        notes.append(f"the estimate is {caveat}")

    samples_by_path: dict[str, ContentSample] = {}
    map_seconds: dict[str, float] = {}
    for p in disk_paths:
        try:
            ranges = None
            if mode == "used":
                say(f"mapping the filesystems' used blocks on {p}")
                ranges, map_seconds[p] = _used_ranges(p)
            samples_by_path[p] = sample_content(p, mode=sample_mode, samples=samples, level=level, codec=codec,
                                                ranges=ranges)
        except OSError as e:
            raise SourceError(f"cannot sample {p} for the estimate: {e.strerror or e}") from None

    # Source read rates: timed when calibrating, else what such a disk usually reads.
    probing = connect is not None and calibrate_seconds > 0
    read_rates: dict[str, tuple[float, str]] = {}
    read_cpu: dict[str, float] = {}
    read_share: dict[str, float] = {}
    read_total = calibrate_seconds / 3 if probing else calibrate_seconds
    read_budget = read_total / len(disk_paths)
    if read_budget >= 0.2:
        for p in disk_paths:
            say(f"timing reads of {p} ({read_budget:.1f} s)")
            rate, got, cpu_b, share = measure_read_rate(p, read_budget)
            read_rates[p] = (rate, f"measured: {hb(got)} read in {read_budget:.1f} s")
            read_cpu[p] = cpu_b
            read_share[p] = share
            calibration.read[p] = ReadTiming(rate=round(rate), bytes=got, cpu_per_byte=cpu_b,
                                             cpu_share=round(share, 3))

    # The link: a probe through the real target, else the table.
    link_rate = link.rate if link else None
    link_src = link.source if link else "no target: link not counted"
    readback = READBACK_RATE
    pipe_rate = None
    pipe_cpu = None
    write_rate = None
    if probing:
        budget = calibrate_seconds - read_total
        buffers = [b for s in samples_by_path.values() for b in s.buffers]
        say(f"probing the target for {budget:.1f} s")
        try:
            opts = StreamOptions(mode="full" if sample_mode == "full" else "nonzero", codec=codec,
                                 level=level if codec == "zstd" else 1, workers=workers)
            pr = probe_target(connect, buffers, budget, opts)
            link_rate, pipe_rate, write_rate, calibrated = pr.rate, pr.disk_rate, pr.write_rate, True
            pipe_cpu = pr.cpu_seconds / pr.disk_bytes if pr.disk_bytes else None
            link_src = f"measured by a {pr.seconds:.1f} s probe: {hb(pr.wire_bytes)} to the target"
            if pr.readback_rate:
                readback = pr.readback_rate
            calibration.probe = pr
        except ColdcloneError as e:
            notes.append(f"calibration probe failed ({e}); rates from the table")
            calibration.probe_error = str(e)
    capped = False
    if rate_cap and (link_rate is None or rate_cap < link_rate):
        # the sender's token bucket (or the server's) holds the wire to this, whatever the link
        link_rate, capped = float(rate_cap), True
        link_src = f"capped by {rate_cap_source or 'a bandwidth cap'} (uncapped: {link_src})"
    inv_disks = {p: inventory.resolve(p) if inventory is not None else None for p in disk_paths}
    for p in disk_paths:
        if p not in read_rates:
            read_rates[p] = L.source_read_default(inv_disks[p])

    disks = []
    for p in disk_paths:
        rate, src = read_rates[p]
        shared_cpu = (read_cpu.get(p, 0.0) + pipe_cpu) if pipe_cpu is not None else None
        disks.append(_per_disk(p, inv_disks[p], samples_by_path[p], rate, src, link_rate,
                               readback, eff_workers, image_format, sample_mode, pipe_rate, shared_cpu,
                               write_rate, map_seconds.get(p, 0.0),
                               # only the probe's pace is this machine's CPU (a table rate is a link)
                               colocated_read_share=read_share.get(p, 0.0) if colocated and calibrated else None))
    total = SETUP_SECONDS + sum(d.seconds for d in disks)

    # The overall bottleneck: the stage that costs the most time over all disks.
    by_stage: dict[str, float] = {}
    for d in disks:
        key = d.bottleneck
        by_stage[key] = by_stage.get(key, 0.0) + d.stages[key]
    key = max(by_stage, key=by_stage.get)
    bottleneck = _bottleneck_text(key, link, link_rate, calibrated, disks, eff_workers, write_rate)
    if capped and key == "link":
        bottleneck = f"limited by the bandwidth cap ({rate_cap_source or 'bwlimit'}, ~{link_rate / MB:.1f} MB/s)"


    alternatives = []
    for k in ALTERNATIVE_KEYS:
        spec = L.TABLE[k]
        t = SETUP_SECONDS + sum(_per_disk(d.path, None, samples_by_path[d.path], d.read_rate, "", spec.effective, readback,
                          eff_workers, image_format, sample_mode,
                          map_seconds=map_seconds.get(d.path, 0.0)).seconds for d in disks)
        alternatives.append(Alternative(spec.label, spec.effective, t))

    now = time.time()
    finish = _dt.datetime.fromtimestamp(now + total).astimezone()
    return CaptureEstimate(
        mode=mode, target=target, link=link, link_rate=link_rate, link_rate_source=link_src, disks=disks,
        total_seconds=total, finish_time=finish.isoformat(timespec="seconds"), bottleneck=bottleneck,
        calibrated=calibrated, calibration=calibration, workers=eff_workers,
        made_at=_dt.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
        alternatives=alternatives, notes=notes, caveat=caveat)


def predict_cutover(est: CaptureEstimate, warm: P.Unfinished, now: float | None = None) -> CutoverEstimate | None:
    """The cold phase of cutting over `warm` (a warm capture of these disks, as a lookup found it),
    from the cold estimate's own figures: the cutover reads what the cold capture reads (it
    compares every segment's digest with the receiver's held map) at each disk's read rate, sends
    what changed since the last sync over the link, and pays the same fixed costs. None when the
    capture holds no warm facts (an unfinished cold capture)."""
    w = warm.warm
    if w is None:
        return None
    now = time.time() if now is None else now
    since = max(0.0, now - w.last_sync)
    to_read = sum(d.bytes_to_read for d in est.disks)
    rate = w.change_rate()
    if rate is None:
        changed = float(w.changed_bytes)
        basis = (f"the only sync's changed bytes ({hb(w.changed_bytes)}: a first sync sends everything, so "
                 f"an upper bound; a second sync gives the change rate)")
    else:
        changed = rate * since
        basis = (f"the change rate between the last two syncs ({hb(w.changed_bytes)} in "
                 f"{human_minutes(w.interval)}) over the {human_minutes(since)} since the last")
    if changed > to_read:
        changed = to_read
        basis += f", capped at the {hb(to_read)} read"
    read = sum(d.bytes_to_read / d.read_rate for d in est.disks if d.read_rate)
    send = changed / est.link_rate if est.link_rate else 0.0
    fixed = SETUP_SECONDS + sum(d.stages.get("server", 0.0) + d.stages.get("map", 0.0) for d in est.disks)
    return CutoverEstimate(
        capture_id=warm.capture_id, syncs=w.syncs, last_sync=w.last_sync, since_last_sync=since,
        change_rate=rate, changed_bytes=int(changed), bytes_to_read=to_read, read_seconds=read,
        send_seconds=send, fixed_seconds=fixed, seconds=read + send + fixed, basis=basis)


def _bottleneck_text(key: str, link: LinkEstimate | None, link_rate: float | None, calibrated: bool,
                     disks: list[DiskEstimate], workers: int, write_rate: float | None = None) -> str:
    if key == "write":
        rate = f"measured ~{(write_rate or 0) / MB:.0f} MB/s"
        if link is not None and link.kind in ("usb", "sata"):
            return f"limited by {link.label} ({rate} to the disk behind it)"
        return f"limited by the target's disk ({rate})"
    if key == "link":
        rate = f"~{link_rate / MB:.0f} MB/s" if link_rate else "?"
        if link is None:
            return f"limited by the link ({rate})"
        if not calibrated:
            return f"limited by {link.label} ({rate})"
        if link.rate and link_rate < 0.6 * link.rate:
            return (f"limited by the conversion server or the path to it (measured {rate}; "
                    f"the {link.label} could carry ~{link.rate / MB:.0f} MB/s)")
        if link.rate is None:
            return f"limited by the target (measured {rate} over {link.label})"
        return f"limited by {link.label} (measured {rate})"
    if key == "read":
        slow = min(disks, key=lambda d: d.read_rate)
        return f"limited by reading the source disks (~{slow.read_rate / MB:.0f} MB/s from {slow.path})"
    if key == "shared":
        return ("limited by this machine's CPUs: reading the source, sending and the receiver "
                "(which runs here too) share them")
    if key == "cpu":
        return f"limited by this machine's CPU (reading, hashing, compressing, sending; {workers} workers)"
    return "limited by the server verifying and converting the images after the transfer"
