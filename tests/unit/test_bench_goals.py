"""make bench's verdict lines (tests/testbed/bench.py goals): ratios against the baselines, the
run's own floor, met or MISSED."""

import os

from tests.testbed.bench import goals
from tests.testbed.cutoverbench import goals as cutover_goals

MiB = 1 << 20


def rows(cc_time: float, cc_busy: float):
    return [dict(name="cc-used", to_qcow2=cc_time, wire=600e6, busy=cc_busy, rss=150 * MiB),
            dict(name="cc-nonzero", to_qcow2=80.0, wire=1.6e9, busy=50.0, rss=250 * MiB),
            dict(name="dd|zstd|ssh", to_qcow2=84.0, wire=1.7e9, busy=40.0, rss=22 * MiB),
            dict(name="partclone", to_qcow2=45.0, wire=620e6, busy=30.0, rss=22 * MiB)]


def test_goal_lines_at_a_link_name_the_link_floor():
    out = goals(rows(29.0, 20.0), link_rate=25e6)
    assert "goal cc-used <= 0.35x dd|zstd|ssh: 0.35x  met  (its link floor 24.0 s is 0.29x)" in out
    assert "goal cc-used <= 0.50x partclone: 0.64x  MISSED  (its link floor 24.0 s is 0.53x)" in out
    assert "goal cc-used <= 2.0x the link floor: 1.21x  met" in out
    # 1.6e9 bytes at 25 MB/s: 64 s, more than its CPU floor of 25 s on two cores or fewer
    assert any(line.startswith("goal cc-nonzero <= 0.60x dd|zstd|ssh: 0.95x  MISSED  (its link floor 64.0 s")
               for line in out)
    assert "goal cc-nonzero agent RSS <= 200.0 MiB: 250.0 MiB  MISSED" in out


def test_goal_lines_on_loopback_name_the_cpu_floor():
    out = goals(rows(12.0, 19.2))
    cores = os.cpu_count() or 1
    floor = 19.2 / cores
    assert (f"goal cc-used <= 0.35x dd|zstd|ssh: 0.14x  met  (its CPU floor {floor:.1f} s is "
            f"{floor / 84.0:.2f}x)") in out
    assert not any("link floor" in line for line in out)


def cutover_rows(cut_s: float, cold_s: float, floor_s: float) -> dict:
    row = dict(cutover=dict(wall=cut_s), cold=dict(wall=cold_s), floor=dict(seconds=floor_s))
    return {"links": {"127.0.0.1": dict(cutover=dict(wall=1.0), cold=dict(wall=100.0), floor=dict(seconds=0.5)),
                      "200 Mbit/s": row}}


def test_cutover_goal_is_the_ratio_to_a_cold_capture_at_200_mbit():
    assert cutover_goals(cutover_rows(16.0, 80.0, 8.0)) == [
        "goal cutover <= 0.20x cold mode=used at 200 Mbit/s: 0.20x  met  (its read floor 8.0 s is 0.10x)"]
    assert cutover_goals(cutover_rows(30.0, 80.0, 8.0)) == [
        "goal cutover <= 0.20x cold mode=used at 200 Mbit/s: 0.38x  MISSED  (its read floor 8.0 s is 0.10x)"]
    # loopback alone (--link-mbit 0), or another link: no verdict, the goal is at 200 Mbit/s
    row = cutover_rows(16.0, 80.0, 8.0)["links"]["200 Mbit/s"]
    assert cutover_goals({"links": {"127.0.0.1": row}}) == []
    assert cutover_goals({"links": {"100 Mbit/s": row}}) == []
