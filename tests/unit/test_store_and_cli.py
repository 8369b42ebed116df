"""Receiver confinement rules, CLI value parsing, progress arithmetic."""

import os

import pytest

from agent.source.capture.stream import parse_compress
from agent.source.cli import parse_size
from agent.errors import ServerError, UsageError
from agent.source.estimate.rate import RateMeter
from agent.units import human_bytes, human_seconds
from agent.server.receive.store import resolve_root, validate_name
from agent.source.capture.source import stream_name
from agent.source.capture.stream import StreamOptions


@pytest.mark.parametrize("name", ["sda", "cciss-c0d0", "md127", "nvme0n1", "host-20261123T093000-ab12", "a.b_c-d"])
def test_good_names(name):
    assert validate_name(name, "disk name") == name


@pytest.mark.parametrize("name", ["", "..", "../x", "a/b", "/abs", ".hidden", "a b", "x" * 129, "a..b",
                                  "cap.partial", None, 5, "sda\n", "é"])
def test_bad_names(name):
    with pytest.raises(ServerError) as e:
        validate_name(name, "disk name")
    assert e.value.code == "bad_name"


def test_resolve_root_confines(tmp_path):
    root = tmp_path / "root"
    (root / "batch").mkdir(parents=True)
    assert resolve_root(str(root), None) == str(root)
    assert resolve_root(str(root), "/") == str(root)
    assert resolve_root(str(root), str(root)) == str(root)
    assert resolve_root(str(root), "batch") == str(root / "batch")
    assert resolve_root(str(root), str(root / "batch")) == str(root / "batch")
    for bad in ("/etc", "../", str(root) + "/../x", str(root) + "-other"):
        with pytest.raises(ServerError, match="confined"):
            resolve_root(str(root), bad)
    os.symlink("/etc", root / "link")
    with pytest.raises(ServerError, match="confined"):
        resolve_root(str(root), "link")


def test_stream_names_from_kernel_names():
    assert stream_name("cciss!c0d0") == "cciss-c0d0"
    assert stream_name("sda") == "sda"
    # never a '.': the receiver refuses dotted disk names (store.validate_disk_name)
    assert stream_name("odd.name") == "odd-name"


def test_sizes_and_compression():
    assert parse_size("4M") == 4 << 20 and parse_size("64K") == 65536 and parse_size("1G") == 1 << 30
    assert parse_size("512") == 512 and parse_size("4MiB") == 4 << 20
    assert parse_compress("zstd") == ("zstd", 1) and parse_compress("zstd:9") == ("zstd", 9)
    assert parse_compress("none") == ("none", 0)
    for bad in ("4X", "-1", ""):
        with pytest.raises(UsageError):
            parse_size(bad)
    with pytest.raises(UsageError, match="zstd"):
        parse_compress("gzip")
    with pytest.raises(UsageError, match="choose 1 .fast. to 19"):
        parse_compress("zstd:22")


@pytest.mark.parametrize("kw,match", [
    (dict(mode="sparse"), "choose used .* nonzero .* or full"),
    (dict(block_size=3000), "power of two"),
    (dict(chunk_size=100 << 20), "at most"),
    (dict(chunk_size=(4 << 20) + 4096), "multiple"),
    (dict(codec="lz4"), "compression"),
    (dict(level=22), "zstd level"),
])
def test_stream_options_validated(kw, match):
    with pytest.raises(UsageError, match=match):
        StreamOptions(**kw).validate()


def test_rate_meter_converges_on_steady_rate():
    m = RateMeter(half_life=5)
    v = 0
    for i in range(200):
        # 100 MB/s with jitter in the sampling interval
        t = i * 0.5 + (0.1 if i % 3 == 0 else 0)
        v = int(t * 100e6)
        m.update(t, v)
    assert abs(m.rate - 100e6) / 100e6 < 0.02
    assert abs(m.eta(1_000_000_000) - 10) < 0.3


def test_human_units():
    assert human_bytes(0) == "0 B" and human_bytes(1536) == "1.5 KiB" and human_bytes(3 << 30) == "3.0 GiB"
    assert human_seconds(None) == "--:--" and human_seconds(65) == "01:05" and human_seconds(3725) == "1:02:05"
