"""`coldclone-server web` in a real browser (Debian's chromium through selenium), on 127.0.0.1:
the page shows the root's captures grouped by wave with their totals, failures first, refreshes
itself while a capture runs (the browser sees its row go from streaming to verified), and stays
what it says it is: read-only (every other method is refused), nothing loaded from elsewhere, and
an agent's text (a source host name sent in HELLO) shown as text, never run as markup.

The wave test (tests/vm/test_wave.py) watches the page of two servers during a real wave.
"""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from agent import protocol as P
from tests.conftest import BIN, ssh_args
from tests.streams import disk_records
from tests.testbed import browser
from tests.testbed.loop import LoopDevice
from tests.testbed.procs import Spooled, free_port, start_daemon, stop_process

pytestmark = pytest.mark.root
MiB = 1 << 20
EVIL = '<img src=x onerror="document.title=\'owned\'">'


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    img = tmp_path_factory.mktemp("page") / "src.img"
    with open(img, "wb") as f:
        f.write(os.urandom(12 * MiB))
    with LoopDevice(str(img)) as loop:
        yield loop


def evil_capture(sshd, rx_dir):
    """A capture whose HELLO names its source host with markup (any agent key can send that),
    through the real receiver."""
    data = os.urandom(1 * MiB)
    parts = []
    w = P.StreamWriter(parts.append)
    w.hello(P.Hello(capture_id="pg-evil", agent_version="test", disks=("d0",), source={"hostname": EVIL},
                    wave="page-wave"))
    w.disk(P.DiskHeader(name="d0", size=len(data), mode="nonzero"))
    recs, digest = disk_records(data)
    parts += recs
    w.end(P.DiskEnd(digest, bytes_read=len(data)))
    w.finish()
    argv = [os.path.join(BIN, "coldclone-receive"), "--root", rx_dir]
    r = subprocess.run(argv, input=b"".join(parts), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_the_page_in_a_browser(sshd, rx_dir, source, tmp_path):
    why = browser.missing()
    if why:
        pytest.skip(why)
    evil_capture(sshd, rx_dir)
    # a failed one: stopped by its operator (failures come first on the page)
    p = Spooled([os.path.join(BIN, "coldclone"), "capture", "--disk", source.dev, *ssh_args(sshd, rx_dir),
                 "--compress", "none", "--calibrate", "0", "--capture-id", "pg-failed", "--wave", "page-wave",
                 "--bwlimit", "16mbit", "--resume", "off"])
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(rx_dir, "pg-failed.partial", os.path.basename(source.dev) + ".journal")):
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.1)
    time.sleep(0.5)
    p.send_signal(2)
    p.communicate(timeout=60)

    port = free_port()
    log = str(tmp_path / "web.log")
    web = start_daemon([os.path.join(BIN, "coldclone-server"), "web", "--listen", f"127.0.0.1:{port}",
                        "--root", rx_dir, "--name", "cc-page", "--refresh", "0.5"], "coldclone-server web",
                       ("127.0.0.1", port), log, output=log)
    url = f"http://127.0.0.1:{port}"
    running = None
    try:
        with browser.Browser() as b:
            b.driver.get(url + "/")
            assert b.driver.title.startswith("coldclone wave: cc-page")
            rows = b.rows()
            assert rows["pg-evil@cc-page"][0] == "verified" and rows["pg-failed@cc-page"][0] == "failed"
            # the agent's markup is text on the page, and ran nowhere
            assert any(EVIL in t for t in b.texts('table.wave tr[data-capture-id="pg-evil"]'))
            assert b.texts("img") == [] and b.driver.title != "owned"
            # failures first: the failures table leads the page
            assert b.driver.execute_script("return document.querySelector('main table').id") == "failures"
            assert "pg-failed" in b.texts("table#failures")[0]
            assert any("servers done 1 of 2, failed 1" in t for t in b.totals()), b.totals()

            # a capture runs: the page follows it without a reload
            running = Spooled([os.path.join(BIN, "coldclone"), "capture", "--disk", source.dev,
                               *ssh_args(sshd, rx_dir), "--compress", "none", "--calibrate", "0",
                               "--capture-id", "pg-live", "--wave", "page-wave", "--bwlimit", "16mbit"])
            seen = []
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                r = b.rows().get("pg-live@cc-page")
                if r and (not seen or seen[-1][:2] != r[:2]):
                    seen.append(r)
                if r and r[0] == "verified":
                    break
                time.sleep(0.3)
            states = [s for s, _, _ in seen]
            assert states[0] == "streaming" and states[-1] == "verified", seen
            assert len({d for s, d, _ in seen if s == "streaming"}) >= 2, f"no progress seen: {seen}"
            assert any("servers done 2 of 3, failed 1" in t for t in b.totals()), b.totals()
            b.driver.save_screenshot(str(tmp_path / "page.png"))
        out, err = running.communicate(timeout=60)
        assert running.returncode == 0, err

        # read-only, nothing from elsewhere, the same JSON at the API
        for method in ("POST", "PUT", "DELETE"):
            req = urllib.request.Request(url + "/api/status", data=b"{}", method=method)
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=10)
            assert e.value.code == 405
        with urllib.request.urlopen(url + "/", timeout=10) as r:
            assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
            html = r.read().decode()
        assert "http://" not in html and "https://" not in html
        with urllib.request.urlopen(url + "/api/status", timeout=10) as r:
            api = json.load(r)
        cli = json.loads(subprocess.run([os.path.join(BIN, "coldclone-server"), "status", "--root", rx_dir,
                                         "--json", "--name", "cc-page"], capture_output=True, text=True).stdout)
        strip = lambda xs: sorted((x["capture_id"], x["state"], x["done"]) for x in xs)  # noqa: E731
        assert strip(api) == strip(cli)
    finally:
        if running is not None and running.poll() is None:
            running.kill()
        stop_process(web)
