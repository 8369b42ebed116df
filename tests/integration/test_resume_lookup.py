"""resume=auto with no capture id over the real sshd: the job asks the server for unfinished
captures of the disks it captures. A loop device has no serial or WWN, so a capture of it is
only matched by name and size: it is named, with the key that resumes it, and never taken on
its own (another server booted from the ISO may have a disk of the same name and size)."""

import json
import os

import pytest

from tests.integration.test_resume import (  # noqa: F401 (source, source_img: fixtures)
    SIZE, capture, kill_receiver, same_image, sha256_of, source, source_img)
from tests.testbed.resume import image_bytes, wait_image

pytestmark = pytest.mark.root


def test_a_match_by_name_and_size_is_named_not_taken(sshd, rx_dir, source):  # noqa: F811
    before = sha256_of(source.dev)
    first = capture(sshd, rx_dir, source.dev, "--capture-id", "lk", "--reconnect", "0")
    wait_image(first, rx_dir, "lk", SIZE // 2)
    kill_receiver(sshd)
    first.communicate(timeout=120)
    held = image_bytes(rx_dir, "lk")
    assert first.returncode != 0 and held > 0

    second = capture(sshd, rx_dir, source.dev)          # no id, resume=auto (the default)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    said = out + err
    assert "not resumed: unfinished capture lk: " in said, said
    assert "matched by disk name and size only" in said
    assert "coldclone.resume=lk (coldclone capture --resume lk)" in said
    assert "resuming unfinished capture" not in said
    # A new capture with a new id, sent whole; the unfinished one is left as it was.
    made = [n for n in os.listdir(rx_dir) if not n.endswith(".partial") and n != "lk"]
    assert len(made) == 1, os.listdir(rx_dir)
    entry = json.load(open(os.path.join(rx_dir, made[0], "manifest.json")))["disks"][0]
    assert entry.get("resume") is None and entry["received"]["data_bytes"] == SIZE
    same_image(source.dev, rx_dir, made[0], entry)
    assert image_bytes(rx_dir, "lk") == held
    assert sha256_of(source.dev) == before
