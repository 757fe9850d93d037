"""The end-to-end bench's measurements inside a lab: iperf3 tests, ping, the MTU check, the
plaintext leak check (split from bench.e2e).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from bench.e2e_env import _delta, box_cpu_seconds, nstat, proc_cpu_seconds, say
from sleeve.lab import Host, Switch

IPERF_PORT: Final = 5201
LEAK_PATTERN: Final = "5c1eeb0b5c1eeb0b5c1eeb0b5c1eeb0b"  # 16 bytes, ping -p


@dataclass(frozen=True)
class Test:
    name: str
    label: str
    proto: str  # tcp, udp or icmp
    streams: int = 1
    reverse: bool = False
    length: int | None = None  # UDP payload bytes


TESTS: Final[dict[str, Test]] = {t.name: t for t in (
    Test("tcp1", "TCP 1 stream a->b", "tcp"),
    Test("tcp1r", "TCP 1 stream b->a", "tcp", reverse=True),
    Test("tcp4", "TCP 4 streams a->b", "tcp", streams=4),
    Test("tcp4r", "TCP 4 streams b->a", "tcp", streams=4, reverse=True),
    Test("udp64", "UDP 64 B a->b", "udp", length=64),
    Test("udp512", "UDP 512 B a->b", "udp", length=512),
    Test("ping", "ping", "icmp"),
)}


def measure_ping(a: Host, dst: str, count: int) -> dict[str, Any]:
    say(f"  ping -c {count} -i 0.01 {dst}")
    r = a.run("ping", "-n", "-c", str(count), "-i", "0.01", "-W", "1", dst,
              check=False, timeout=30 + count * 0.05)
    times = sorted(float(m) for m in re.findall(r"time=([0-9.]+) ms", r.stdout))
    res: dict[str, Any] = {"sent": count, "received": len(times)}
    m = re.search(r"= ([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+) ms", r.stdout)
    res["avg_ms"] = float(m.group(2)) if m else None
    res["min_ms"] = float(m.group(1)) if m else None
    res["max_ms"] = float(m.group(3)) if m else None
    res["p99_ms"] = times[max(0, math.ceil(0.99 * len(times)) - 1)] if times else None
    res["p50_ms"] = times[len(times) // 2] if times else None
    res["loss_percent"] = round(100.0 * (count - len(times)) / count, 2)
    return res


def check_mtu(a: Host, b: Host, dst: str, mtu: int | None,
              relayed: bool = False) -> dict[str, Any]:
    """A don't-fragment ping filling the tunnel MTU must pass without any underlay IP
    fragmentation (IpFragCreates of both hosts unchanged).

    A relayed path carries less than the interface MTU (each relayed record names its source
    and destination), so there the first ping must instead teach ``a`` the path MTU (the
    router answers ICMP "too big"), and a DF ping filling the learnt MTU must pass."""
    if mtu is None:
        return {"mtu": None, "ok": None, "note": "MTU unknown"}
    size = mtu - 28
    before = [nstat(h, ("IpFragCreates",)) for h in (a, b)]
    ok = a.ping(dst, count=3, size=size, dont_fragment=True, timeout=15)
    out: dict[str, Any] = {"mtu": mtu, "df_ping_payload": size, "df_ping_ok": ok}
    if relayed and not ok:
        learnt = _route_mtu(a, dst)
        out["learnt_pmtu"] = learnt
        if learnt is not None and learnt < mtu:
            out["learnt_df_ping_payload"] = learnt - 28
            ok = a.ping(dst, count=3, size=learnt - 28, dont_fragment=True, timeout=15)
            out["learnt_df_ping_ok"] = ok
    after = [nstat(h, ("IpFragCreates",)) for h in (a, b)]
    frags = sum(x["IpFragCreates"] - y["IpFragCreates"] for x, y in zip(after, before,
                                                                        strict=True))
    out.update(underlay_frag_creates=frags, ok=bool(ok and frags == 0))
    return out


def _route_mtu(h: Host, dst: str) -> int | None:
    """The path MTU the kernel of ``h`` learnt for ``dst`` (its route cache), if any."""
    r = h.run("ip", "-o", "route", "get", dst, check=False)
    m = re.search(r"\bmtu (\d+)", r.stdout)
    return int(m.group(1)) if m else None


def check_leak(sw: Switch, a: Host, dst: str, wd: pathlib.Path) -> dict[str, Any]:
    """Ping ``dst`` with a 16-byte pattern while tcpdump records the switch's bridge; report
    whether the pattern appears in clear on the underlay."""
    pcap = wd / f"leak-{os.urandom(3).hex()}.pcap"
    errf = wd / "tcpdump.err"
    with open(errf, "wb") as err:
        # --immediate-mode: else packets wait in the capture ring for up to 1 s and are lost
        # when tcpdump is stopped
        td = sw.popen("tcpdump", "-i", sw.bridge, "-n", "-s", "0", "-U", "--immediate-mode",
                      "-Z", "root", "-w", str(pcap), stderr=err)
    try:
        deadline = time.monotonic() + 5.0
        while b"listening on" not in errf.read_bytes() and time.monotonic() < deadline:
            if td.poll() is not None:
                return {"checked": False, "note": f"tcpdump exited {td.returncode}"}
            time.sleep(0.05)
        a.run("ping", "-n", "-q", "-c", "5", "-i", "0.05", "-W", "1", "-p", LEAK_PATTERN,
              dst, check=False, timeout=15)
        time.sleep(0.2)
    finally:
        sw.stop(td)
    try:
        data = pcap.read_bytes()
    except OSError as e:
        return {"checked": False, "note": f"no capture: {e}"}
    finally:
        with contextlib.suppress(OSError):
            pcap.unlink()
    if len(data) <= 24:  # the pcap file header alone: nothing was captured
        return {"checked": False, "note": "tcpdump captured nothing"}
    return {"checked": True, "capture_bytes": len(data),
            "plaintext_seen": bytes.fromhex(LEAK_PATTERN) in data}


def _wait_listening(h: Host, port: int, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"iperf3 server exited early ({server.returncode})")
        out = h.run("ss", "-Hltn", f"sport = :{port}", check=False, timeout=5).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise TimeoutError(f"iperf3 server on {h.name} not listening after {timeout}s")


def iperf_argv(test: Test, dst: str, seconds: int) -> list[str]:
    argv = ["iperf3", "-c", dst, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    if test.streams > 1:
        argv += ["-P", str(test.streams)]
    if test.reverse:
        argv.append("-R")
    if test.proto == "udp":
        argv += ["-u", "-b", "0", "-l", str(test.length)]
    return argv


def parse_iperf(test: Test, data: dict[str, Any]) -> dict[str, Any]:
    """The figures of one iperf3 ``-J`` result (client side, which also carries the
    receiver's totals)."""
    if "error" in data:
        raise RuntimeError(f"iperf3 failed: {data['error']}")
    end = data["end"]
    recv, sent = end["sum_received"], end["sum_sent"]
    res: dict[str, Any] = {
        "bits_per_second": recv["bits_per_second"],
        "bytes_received": recv["bytes"],
        "sender_bits_per_second": sent["bits_per_second"],
        "seconds": recv.get("seconds"),
        "iperf_cpu_percent": end.get("cpu_utilization_percent"),
    }
    if test.proto == "tcp":
        res["retransmits"] = sent.get("retransmits")
    else:
        assert test.length is not None
        secs = sent.get("seconds") or recv.get("seconds") or 0.0
        n_sent = int(sent.get("packets", 0))
        n_recv = int(recv["bytes"]) // test.length
        res.update({
            "payload_bytes": test.length,
            "packets_sent": n_sent,
            "packets_received": n_recv,
            "tx_pps": n_sent / secs if secs else None,
            "rx_pps": n_recv / secs if secs else None,
            "loss_percent": 100.0 * (n_sent - n_recv) / n_sent if n_sent else None,
            "iperf_lost_percent": recv.get("lost_percent"),
        })
    return res


def measure_iperf(a: Host, b: Host, dst: str, test: Test, seconds: int,
                  daemons: Sequence[tuple[str, int]]) -> dict[str, Any]:
    say(f"  iperf3 {test.label} for {seconds} s")
    server = b.popen("iperf3", "-s", "-1", "-B", dst, "-p", str(IPERF_PORT))
    try:
        _wait_listening(b, IPERF_PORT, server, 10.0)
        ns0 = {h.name: nstat(h) for h in (a, b)}
        cpu0 = [proc_cpu_seconds(pid) for _, pid in daemons]
        box0 = box_cpu_seconds()
        t0 = time.monotonic()
        r = a.run(*iperf_argv(test, dst, seconds), check=False, timeout=seconds + 40)
        wall = time.monotonic() - t0
        box1 = box_cpu_seconds()
        cpu1 = [proc_cpu_seconds(pid) for _, pid in daemons]
        ns1 = {h.name: nstat(h) for h in (a, b)}
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=5)
    finally:
        b.stop(server)  # untracks it; SIGTERM/SIGKILL only if still running
    try:
        data: dict[str, Any] = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"iperf3 gave no JSON (rc {r.returncode}): {r.stderr[-500:]}") from e
    res = parse_iperf(test, data)
    res["wall_seconds"] = round(wall, 3)
    res["box_busy_cpu_seconds"] = round(box1[0] - box0[0], 3)
    res["box_total_cpu_seconds"] = round(box1[1] - box0[1], 3)
    res["nstat_delta"] = {h: _delta(ns0[h], ns1[h]) for h in ns0}
    if daemons:
        used = [c1 - c0 for c0, c1 in zip(cpu0, cpu1, strict=True)]
        gb = res["bytes_received"] / 1e9
        res["daemon_cpu_seconds"] = {h: round(u, 3) for (h, _), u in zip(daemons, used,
                                                                         strict=True)}
        res["daemon_cpu_seconds_total"] = round(sum(used), 3)
        res["daemon_cpu_s_per_gb"] = round(sum(used) / gb, 3) if gb > 0 else None
    return res

