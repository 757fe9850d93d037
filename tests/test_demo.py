"""`sleeve demo` (the README's main job) runs, exits 0 and leaves nothing behind."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab


def _sleeve_processes() -> set[int]:
    out = set()
    for p in pathlib.Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"sleeve" in cmd and b"launch" in cmd and any(b"sleeve-demo-" in c for c in cmd):
                out.add(int(p.name))
    return out


def _netns() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                              check=True).stdout.split())


def test_demo_runs_and_cleans_up() -> None:
    if os.geteuid() != 0:
        pytest.fail("the demo needs root")
    ns_before, procs_before = _netns(), _sleeve_processes()
    r = subprocess.run([sys.executable, "-m", "sleeve", "demo"], capture_output=True, text=True,
                       timeout=120)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checksum matches" in r.stdout
    assert "namespaces left: 0" in r.stdout and "TAP devices left: 0" in r.stdout
    assert "c: established" in r.stdout
    assert "mesh converged" in r.stdout and "FAILED" not in r.stdout
    # d's direct path to b is firewalled: a relays, or c once d has hole punched to it
    assert "-> b: relayed via a" in r.stdout or "-> b: relayed via c" in r.stdout
    assert "path MTU 1252 bytes" in r.stdout  # d sits behind a 1280-byte link
    assert _netns() == ns_before
    assert _sleeve_processes() == procs_before
