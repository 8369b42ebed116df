"""The one rate syntax (bwlimit= for the agent, coldclone-receive --bwlimit, coldclone sync) and the
one token bucket both ends pace with (agent/bwlimit.py), on a fake clock."""

import pytest

from agent.bwlimit import TokenBucket, human_rate, paced, parse_rate
from agent.errors import UsageError


@pytest.mark.parametrize("text,rate", [
    ("100mbit", 12_500_000), ("1gbit", 125_000_000), ("500kbit", 62_500), ("2.5gbit", 312_500_000),
    ("100Mbit/s", 12_500_000), ("50M", 50_000_000), ("50MB", 50_000_000), ("50mb/s", 50_000_000),
    ("800K", 800_000), ("2G", 2_000_000_000), ("40MiB", 40 << 20), ("512KiB", 512 << 10), ("1000B", 1000),
])
def test_rates_as_operators_write_them(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text,says", [
    ("100", "give the unit (bits or bytes?)"),
    ("100mbps", "means megabits to some tools and megabytes"),
    ("100MBps", "write 100mbit (bits) or 100M"),
    ("fast", "write a number and its unit"),
    ("-5M", "write a number and its unit"),
    ("10furlongs", "unknown unit 'furlongs'"),
    ("1kbit", "less than 1000 B/s"),
    ("", "write a number and its unit"),
])
def test_bad_rates_are_named(text, says):
    with pytest.raises(UsageError) as e:
        parse_rate(text, "coldclone.bwlimit")
    assert says in str(e.value) and "coldclone.bwlimit=" in str(e.value)


def test_human_rate():
    assert human_rate(12_500_000) == "100.0 Mbit/s"
    assert human_rate(62_500) == "500 kbit/s"


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.slept = []

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.slept.append(s)
        self.t += s


def test_bucket_holds_the_average_rate():
    clk = FakeClock()
    b = TokenBucket(1_000_000, burst=100_000, clock=clk, sleep=clk.sleep)
    for _ in range(50):
        b.take(100_000)            # 5 MB as fast as the bucket lets it
    # the first burst was free, the rest paid at 1 MB/s
    assert clk.t == pytest.approx(4.9, abs=1e-6)
    assert b.waited == pytest.approx(4.9, abs=1e-6)


def test_bucket_refills_no_more_than_its_burst_while_idle():
    clk = FakeClock()
    b = TokenBucket(1_000_000, burst=100_000, clock=clk, sleep=clk.sleep)
    b.take(100_000)
    clk.t += 60                     # idle for a minute: still only one burst's worth
    assert b.take(100_000) == 0
    assert b.take(100_000) == pytest.approx(0.1)


def test_bucket_rate_change_applies_from_now():
    clk = FakeClock()
    b = TokenBucket(1_000_000, burst=100_000, clock=clk, sleep=clk.sleep)
    b.take(100_000)
    b.set_rate(500_000)             # a second session joined: half each
    assert b.take(50_000) == pytest.approx(0.1)


def test_paced_sends_in_pieces_of_the_burst_and_keeps_the_bytes():
    clk = FakeClock()
    b = TokenBucket(1_000_000, burst=65536, clock=clk, sleep=clk.sleep)
    sent = []
    send = paced(sent.append, b)
    data = bytes(range(256)) * 1000          # 256000 bytes
    send(data)
    assert b"".join(sent) == data
    assert max(len(p) for p in sent) == 65536 and all(isinstance(p, bytes) for p in sent)
    assert clk.t == pytest.approx((256000 - 65536) / 1e6)
