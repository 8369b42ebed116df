"""zstd:auto: the level goes up while sends take the time and the machine has idle CPU, never
when the CPU is busy (a loopback: the send time is CPU), and down as soon as the sender waits
for compressed chunks."""

import pytest

from agent.source.capture.stream import AUTO, AUTO_LEVELS, LevelControl, StreamOptions, _Codec, parse_compress
from agent.errors import UsageError


class Machine:
    """/proc/stat as jiffies: each window adds 100, `idle` of them idle."""

    def __init__(self):
        self.idle, self.total = 0.0, 0.0

    def window(self, idle: float) -> None:
        self.idle += idle
        self.total += 100.0

    def __call__(self):
        return self.idle, self.total


def control():
    m = Machine()
    codec = _Codec("zstd", AUTO)
    return LevelControl(codec, 0.0, cpu=m), codec, m


def test_parse_and_label():
    assert parse_compress("zstd:auto") == ("zstd", AUTO)
    assert StreamOptions(level=AUTO).codec_label() == "zstd:auto"
    StreamOptions(level=AUTO).validate()
    with pytest.raises(UsageError, match="zstd:auto"):
        parse_compress("lz4:auto")


def test_link_bound_with_idle_cpu_climbs_the_ladder_and_stops_at_its_top():
    lc, codec, m = control()
    assert codec.level == AUTO_LEVELS[0] == 1
    seen = []
    for t in range(1, 6):
        m.window(idle=70)
        lc.account(float(t), wait_chunks=0.0, wait_send=0.9)
        seen.append(codec.level)
    assert seen == [3, 4, 4, 4, 4]


def test_busy_cpu_never_raises():
    lc, codec, m = control()
    for t in range(1, 6):
        m.window(idle=10)           # a loopback: both ends share the cores
        lc.account(float(t), wait_chunks=0.0, wait_send=0.95)
    assert codec.level == 1


def test_waiting_for_chunks_steps_down_at_once():
    lc, codec, m = control()
    for t in (1, 2):
        m.window(idle=80)
        lc.account(float(t), 0.0, 0.9)
    assert codec.level == 4
    m.window(idle=80)
    lc.account(3.0, wait_chunks=0.3, wait_send=0.5)
    assert codec.level == 3


def test_decisions_wait_for_a_whole_window():
    lc, codec, m = control()
    m.window(idle=90)
    lc.account(0.5, 0.0, 0.45)      # half a window: nothing decided yet
    assert codec.level == 1
    lc.account(1.0, 0.0, 0.45)
    assert codec.level == 3


def test_unreadable_proc_stat_keeps_the_level():
    def broken():
        raise OSError("no /proc")
    codec = _Codec("zstd", AUTO)
    lc = LevelControl(codec, 0.0, cpu=broken)
    lc.account(1.0, 0.0, 1.0)
    assert codec.level == 1


def test_a_level_that_does_not_make_the_data_smaller_is_left_and_not_retried_meanwhile():
    """Random-looking text: level 3 gives more bytes than level 1 (measured on synthetic logs)."""
    lc, codec, m = control()
    m.window(idle=80)
    lc.account(1.0, 0.0, 0.9, level=1, data_bytes=4 << 20, payload_bytes=991_180)
    assert codec.level == 3
    m.window(idle=80)
    lc.account(2.0, 0.0, 0.9, level=3, data_bytes=4 << 20, payload_bytes=1_038_300)
    assert codec.level == 1                 # 3 did not pay: back down, though the link is the limit
    for t in (3.0, 4.0, 5.0):
        m.window(idle=80)
        lc.account(t, 0.0, 0.9, level=1, data_bytes=4 << 20, payload_bytes=991_180)
        assert codec.level == 1             # and not tried again while that measurement is recent
    m.window(idle=80)
    later = 2.0 + LevelControl.RECENT + 1
    lc.account(later, 0.0, 0.9 * (later - 5.0), level=1, data_bytes=4 << 20, payload_bytes=991_180)
    assert codec.level == 3                 # the data may have changed: worth another try


def test_a_level_that_pays_is_kept():
    lc, codec, m = control()
    m.window(idle=80)
    lc.account(1.0, 0.0, 0.9, level=1, data_bytes=4 << 20, payload_bytes=1_180_937)
    m.window(idle=80)
    lc.account(2.0, 0.0, 0.9, level=3, data_bytes=4 << 20, payload_bytes=1_073_065)   # /usr/lib/python3.11
    assert codec.level == 4
    m.window(idle=80)
    lc.account(3.0, 0.0, 0.9, level=4, data_bytes=4 << 20, payload_bytes=1_067_149)   # 0.6 % less: no
    assert codec.level == 3
