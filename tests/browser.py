"""Headless Chromium through Selenium, with Debian's chromium + chromium-driver (no downloads).

Two ways to use it:

- in-process: ``with chromium() as driver:`` (the loopback tests);
- inside a lab namespace: ``Agent(host)`` runs ``python -m tests.browser`` there
  (``ip netns exec``), so the browser, its driver and the page's requests all live in
  that namespace and reach the router's API on the namespace's own 127.0.0.1. The
  agent takes one JSON command per line on stdin and answers one JSON line:
  ``{"op": "get", "url": ..}``, ``{"op": "js", "script": ..}`` (the script's return
  value), ``{"op": "shot", "path": ..}``, ``{"op": "logs"}`` (browser console
  entries), ``{"op": "quit"}``.

Missing packages fail loudly (never skip): the tests need ``apt-get install -y chromium
chromium-driver`` and ``pip install selenium``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1400,1000")


def missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    gone = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if gone:
        return (f"{', '.join(gone)} missing: the /ui browser tests need Debian's chromium and "
                "chromium-driver (apt-get install -y chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing: pip install selenium (a test dependency)"
    return None


def require() -> None:
    import pytest

    why = missing()
    if why:
        pytest.fail(why)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium WebDriver with a fresh profile that is removed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download anything
    profile = tempfile.mkdtemp(prefix="sleeve-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        driver.set_page_load_timeout(20)
        driver.set_script_timeout(20)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        _remove(profile)


def _remove(profile: str) -> None:
    """Remove the profile; Chromium's helpers may still write to it just after quit()."""
    for _ in range(50):  # bounded: 5 s
        shutil.rmtree(profile, ignore_errors=True)
        if not os.path.exists(profile):
            return
        time.sleep(0.1)
    raise RuntimeError(f"could not remove the browser profile {profile}")


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]


class Agent:
    """The browser running inside a lab host's namespace (see the module docstring)."""

    def __init__(self, host: Any) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.host = host
        self.proc: subprocess.Popen[bytes] = host.popen(
            sys.executable, "-m", "tests.browser", env={"PYTHONPATH": root},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.call({"op": "ping"})

    def call(self, cmd: dict[str, Any]) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # the agent answers every command, bounded by
        if not line:                        # the driver's page-load and script timeouts
            raise RuntimeError(f"browser agent exited ({self.proc.poll()})")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"browser agent: {out['error']}")
        return out.get("result")

    def get(self, url: str) -> None:
        self.call({"op": "get", "url": url})

    def js(self, script: str) -> Any:
        return self.call({"op": "js", "script": script})

    def shot(self, path: str) -> None:
        self.call({"op": "shot", "path": path})

    def logs(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.call({"op": "logs"})
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call({"op": "quit"})
            self.proc.wait(15)  # let it quit the browser and remove its profile
        self.host.stop(self.proc)


def _agent() -> int:
    why = missing()
    with chromium() as driver:
        for line in sys.stdin:
            cmd = json.loads(line)
            out: dict[str, Any] = {}
            try:
                if why:
                    raise RuntimeError(why)
                op = cmd["op"]
                if op == "get":
                    driver.get(cmd["url"])
                elif op == "js":
                    out["result"] = driver.execute_script(cmd["script"])
                elif op == "shot":
                    driver.save_screenshot(cmd["path"])
                elif op == "logs":
                    out["result"] = driver.get_log("browser")
                elif op == "quit":
                    print(json.dumps(out), flush=True)
                    return 0
            except Exception as e:
                out["error"] = f"{type(e).__name__}: {e}"
            print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_agent())
