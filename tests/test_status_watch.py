"""`sleeve status --watch`: the live table, Ctrl-C, and a router that is not there."""

from __future__ import annotations

import io
import os
import pathlib
import signal
import subprocess
import sys
import time

from rich.console import Console

from sleeve.status.watch import watch
from tests.fake_status import ServerThread, fake_status
from tests.test_status_api import free_port

ROOT = str(pathlib.Path(__file__).resolve().parent.parent)


def test_table_shows_every_local_link_with_its_path_and_rate() -> None:
    n = [0]

    def fetch() -> dict[str, object]:
        n[0] += 1
        return fake_status(8, direct=5, counter_base=100_000 * n[0])

    out = io.StringIO()
    t = time.monotonic()
    assert watch(fetch, "http://x/status", period=0.01,
                 console=Console(file=out, width=200, force_terminal=False),
                 max_frames=2) == 0
    assert time.monotonic() - t >= 2 * 0.5  # the period is bounded below: no storm
    text = out.getvalue()
    for word in ("host000", "host001", "tcp", "fastdp", "udp", "pending", "relayed",
                 "encryption enabled", "Mb/s"):
        assert word in text, word
    assert n[0] == 3


def test_unreachable_router_is_one_line() -> None:
    port = free_port()  # nothing listens there
    r = subprocess.run([sys.executable, "-m", "sleeve", "status", "--watch", "--http",
                        f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "no router answering" in r.stderr, r.stderr


def test_ctrl_c_exits_cleanly() -> None:
    srv = ServerThread(lambda: fake_status(5, direct=3))
    try:
        # SIGINT as a terminal's user has it: a run started in the background by a
        # non-interactive shell (`cmd &`, as a CI runner may) ignores SIGINT, exec keeps an
        # ignored signal, and Python then installs no KeyboardInterrupt handler at all
        # (both CI runs of branch suite2 failed so). A handler is reset to default by exec.
        ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            p = subprocess.Popen([sys.executable, "-m", "sleeve", "status", "--watch", "--http",
                                  srv.addr], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env={**os.environ, "PYTHONPATH": ROOT})
        finally:
            signal.signal(signal.SIGINT, ignored)
        try:
            time.sleep(2.5)  # started, drawn, a redraw or two
            assert p.poll() is None
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=10)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        assert p.returncode == 0, err
        assert b"Traceback" not in err and b"host000" in out and b"PEER" in out
    finally:
        srv.close()
