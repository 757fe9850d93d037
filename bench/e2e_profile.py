"""The end-to-end bench's profiler: py-spy on the sleeve routers under one test's load.

Split from ``bench/e2e.py`` (``--profile-seconds``); ``bench.e2e`` re-exports its names.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, Final

from bench import e2e_report as report
from bench.e2e_env import _tool_version, say
from bench.e2e_measure import (
    IPERF_PORT,
    TESTS,
    _wait_listening,
    iperf_argv,
    measure_ping,
    parse_iperf,
)
from sleeve.lab import Host

if TYPE_CHECKING:
    from bench.e2e import Running

PYSPY_RATE: Final = 100


def pyspy() -> str | None:
    """py-spy's path: the one installed beside this interpreter (sleeve's venv, which need not
    be on PATH when run as /opt/sleeve/venv/bin/python -m bench.e2e), else PATH's."""
    beside = pathlib.Path(sys.executable).parent / "py-spy"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("py-spy")


def pyspy_available() -> str | None:
    """None if py-spy can be used, else why not."""
    if pyspy() is None:
        return "py-spy not installed (./install.sh --bench)"
    return None


def profile_sleeve(a: Host, b: Host, run: Running, seconds: int, out: pathlib.Path,
                   stamp: str, load: str = "tcp1") -> dict[str, Any]:
    """py-spy records both routers (raw collapsed stacks with native frames, idle samples
    included) during one test's load (``load``: an iperf3 test, or ``ping`` 100/s); returns
    the files and a summary (where the time goes: idle, syscalls, crypto, Python; the
    hottest functions)."""
    why, spy = pyspy_available(), pyspy()
    if why or spy is None:
        return {"status": "not available", "reason": why}
    test = TESTS[load]
    say(f"  profiling both routers with py-spy for {seconds} s under {test.label}")
    hosts = {"a": a, "b": b}
    if run.relay is not None:  # "sleeve-relayed": the router in the middle too
        hosts[run.relay.host.name] = run.relay.host
    files: dict[str, pathlib.Path] = {}
    spies: list[tuple[Host, subprocess.Popen[bytes], pathlib.Path]] = []
    server = b.popen("iperf3", "-s", "-1", "-B", run.dst, "-p", str(IPERF_PORT))
    try:
        _wait_listening(b, IPERF_PORT, server, 10.0)
        for host_name, pid in run.daemons:
            h = hosts[host_name]
            tag = "" if load == "tcp1" else f"-{load}"
            f = out / f"e2e-{stamp}-profile-{run.subject}{tag}-{host_name}.collapsed.txt"
            log = out / f".py-spy-{host_name}.log"
            with open(log, "wb") as lf:
                p = h.popen(spy, "record", "--pid", str(pid), "--rate", str(PYSPY_RATE),
                            "--duration", str(seconds + 1), "--format", "raw", "--native",
                            "--idle", "--output", str(f), stdout=lf, stderr=lf)
            files[host_name] = f
            spies.append((h, p, log))
        time.sleep(0.5)  # py-spy attaches
        if load == "ping":
            pinged = measure_ping(a, run.dst, seconds * 100)
        else:
            r = a.run(*iperf_argv(test, run.dst, seconds), check=False, timeout=seconds + 40)
        for h, p, _ in spies:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                h.stop(p)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=5)
    finally:
        for h, p, _ in spies:
            if p.returncode is None:
                h.stop(p)
        b.stop(server)
    res: dict[str, Any] = {"status": "ok", "tool": _tool_version([spy, "--version"]),
                           "seconds": seconds, "rate_hz": PYSPY_RATE, "load": test.label,
                           "files": {}, "summary": {}}
    if load == "ping":
        res["ping_while_profiled"] = pinged
    else:
        with contextlib.suppress(json.JSONDecodeError, KeyError, RuntimeError):
            got = parse_iperf(test, json.loads(r.stdout))
            res["bits_per_second_while_profiled"] = got["bits_per_second"]
            res["rx_pps_while_profiled"] = got.get("rx_pps")
    for (_h, p, log), (host_name, f) in zip(spies, files.items(), strict=True):
        role = {"a": "sender (encrypts)", "b": "receiver (decrypts)"}.get(host_name, "relay")
        if not f.exists() or f.stat().st_size == 0:
            res["files"][host_name] = None
            res["summary"][host_name] = {
                "role": role, "error": f"py-spy rc {p.returncode}: "
                + log.read_text(errors="replace")[-400:]}
        else:
            res["files"][host_name] = f.name
            res["summary"][host_name] = {"role": role,
                                         **report.summarize_collapsed(f.read_text())}
        with contextlib.suppress(OSError):
            log.unlink()
    if all(v is None for v in res["files"].values()):
        res["status"] = "failed"
    return res


