"""Freed heap memory goes back to the system (sleeve.memtrim)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

from sleeve.memtrim import Trimmer

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_trimmer_runs_once_per_period() -> None:
    t = Trimmer(100.0, period=30.0)
    calls: list[int] = []
    t._fn = calls.append  # type: ignore[assignment]
    assert not t.tick(129.0)
    assert t.tick(130.0) and calls == [0]
    assert not t.tick(150.0)
    assert t.tick(160.5) and t.trims == 2


def test_a_trim_returns_freed_heap_pages_to_the_system() -> None:
    """A start-up-like burst: 64 KB buffers (heap, below glibc's mmap threshold), one in
    ten kept: RSS stays at the burst's mark until the trim gives the free pages back."""
    code = textwrap.dedent("""
        import re
        from sleeve.memtrim import Trimmer
        def rss():
            return int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())[1])
        bufs = [bytearray(64 * 1024) for _ in range(2000)]
        kept = bufs[::10]
        del bufs
        before = rss()
        assert Trimmer(0.0).trim()
        print(before - rss(), len(kept))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    freed_kb = int(r.stdout.split()[0])
    assert freed_kb > 60_000, f"trim gave back only {freed_kb} KiB of ~112 MiB free"
