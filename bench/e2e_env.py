"""The end-to-end bench's view of the machine: environment stamp, background load, CPU
seconds of processes and of the box, nstat counters, progress lines (split from bench.e2e).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

from sleeve.lab import Host
from sleeve.lab import peers as peerlib

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
NSTAT_COUNTERS: Final = ("UdpRcvbufErrors", "UdpSndbufErrors", "UdpInErrors",
                         "TcpRetransSegs", "IpFragCreates")

_T0 = time.monotonic()


def say(msg: str) -> None:
    """Progress line on stderr."""
    print(f"[e2e {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- environment


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _tool_version(argv: Sequence[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=5,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (r.stdout or r.stderr).strip().splitlines()[:1]
    return first[0].strip() if first else None


def _os_release() -> str | None:
    try:
        text = pathlib.Path("/etc/os-release").read_text()
    except OSError:
        return None
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else None


def _proc_ticks() -> dict[int, tuple[int, int, str]]:
    """pid -> (utime+stime ticks, nice, comm) of every process."""
    out: dict[int, tuple[int, int, str]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(d)] = (int(fields[11]) + int(fields[12]), int(fields[16]), comm)
    return out


def background_load(sample: float = 1.0) -> dict[str, Any]:
    """What else keeps the machine busy: the load average and every process that used at
    least 10 % of a core over ``sample`` seconds (the benchmark shares the machine)."""
    with open("/proc/loadavg", encoding="ascii") as f:
        loadavg = " ".join(f.read().split()[:3])
    t0 = _proc_ticks()
    time.sleep(sample)
    t1 = _proc_ticks()
    busy = []
    for pid, (ticks, nice, comm) in t1.items():
        if pid == os.getpid() or pid not in t0:
            continue
        pct = 100.0 * (ticks - t0[pid][0]) / CLK_TCK / sample
        if pct >= 10.0:
            try:
                args = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                args = comm.encode()
            cmd = args.replace(b"\0", b" ").decode(errors="replace").strip()[:100]
            busy.append({"pid": pid, "cpu_percent": round(pct), "nice": nice, "cmd": cmd})
    return {"loadavg": loadavg, "busy_processes": busy}


def environment() -> dict[str, Any]:
    """Machine, kernel, Python and library versions: stamped on every output."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "machine": platform.machine(),
        "os": _os_release(),
        "kernel": platform.release(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "mem_gib": _mem_gib(),
        "python": platform.python_version(),
        "sleeve": _version("sleeve"),
        "pynacl": _version("pynacl"),
        "uvloop": _version("uvloop"),
        "msgpack": _version("msgpack"),
        "matplotlib": _version("matplotlib"),
        "py-spy": _version("py-spy"),
        "iperf3": _tool_version(["iperf3", "--version"]),
        "debian_packages": peerlib.package_versions(),
        "background_before": background_load(),
    }


# ---------------------------------------------------------------- counters


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime (all threads) of ``pid`` in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) onwards
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def box_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    total = sum(vals[:8])  # user nice system idle iowait irq softirq steal
    idle = vals[3] + vals[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK



def nstat(h: Host, counters: Sequence[str] = NSTAT_COUNTERS) -> dict[str, int]:
    """Absolute values of the given counters inside ``h`` (nstat -azs: no history update)."""
    r = h.run("nstat", "-azs", *counters, check=False, timeout=10)
    out = dict.fromkeys(counters, 0)
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in out:
            out[parts[0]] = int(parts[1])
    return out


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - v for k, v in before.items()}

