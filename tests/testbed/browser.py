"""A real browser for the tests of a page: Debian's chromium, headless, driven through its
chromium-driver by selenium.

Started the way a closed test machine needs it: no sandbox (root), no GPU, nothing fetched from
the network on its own (updates, sync, safe browsing), a fresh profile of its own each time.
"""

from __future__ import annotations

import os
import shutil
import tempfile

CHROMIUM = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
DRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--window-size=1400,900")


def missing() -> str | None:
    """Why no browser can run here (for pytest.skip), or None."""
    if not any(os.path.exists(p) for p in CHROMIUM):
        return "chromium is not installed (apt-get install chromium)"
    if not any(os.path.exists(p) for p in DRIVER):
        return "chromium-driver is not installed (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the test extra: pip install -e '.[test]')"
    return None


class Browser:
    """`with Browser() as b: b.driver.get(url)`; the profile goes with it."""

    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="ccw-chromium-")
        self.driver = None

    def __enter__(self) -> "Browser":
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = next(p for p in CHROMIUM if os.path.exists(p))
        for flag in FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={self.profile}")
        service = Service(executable_path=next(p for p in DRIVER if os.path.exists(p)),
                          log_output=os.path.join(self.profile, "chromedriver.log"))
        self.driver = webdriver.Chrome(options=opts, service=service)
        return self

    def rows(self) -> dict[str, tuple[str, int, str]]:
        """The wave tables' rows as the browser has them now: "capture id@conversion server" ->
        (state, bytes done, state text). One script call, so a refresh cannot land half way."""
        got = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('table.wave tr[data-capture-id]')).map("
            "tr => [tr.dataset.captureId, tr.dataset.state, tr.dataset.done, tr.cells[2].textContent,"
            " tr.cells[3].textContent]);")
        return {f"{cid}@{server}": (state, int(done), text) for cid, state, done, server, text in got}

    def texts(self, css: str) -> list[str]:
        """The text of every element matching css, now (one script call)."""
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent);", css)

    def totals(self) -> list[str]:
        return self.texts("p.totals")

    def __exit__(self, *exc) -> None:
        if self.driver is not None:
            self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)
