"""End-to-end throughput/latency/CPU across two lab hosts: ``python3 -m bench.e2e``.

For each subject a fresh lab is built (hosts ``a`` and ``b`` on one switch, underlay
198.18.0.1/24 and .2/24), measured and torn down:

- ``veth``: iperf3 straight over the underlay (no tunnel): the machine's limit;
- ``vxlan``: a hand-made kernel VXLAN link (overlay 198.19.0.x/24, MTU 1450);
- ``sleeve``: ``sleeve launch`` with a password (encrypted data plane);
- ``sleeve-plain``: ``sleeve launch --no-encryption``.

Measured: iperf3 single-stream TCP a->b (received bit/s, retransmits), ping RTT (avg, p99
of 200 pings 10 ms apart) and the CPU seconds the two router processes used during the
iperf3 run (utime+stime from /proc/PID/stat) per GB received.  Results go to
``--out`` as ``e2e-<stamp>.json`` and ``e2e-<stamp>.md`` plus a ``LATEST.md`` copy.

Every process runs through the lab (tracked, killed by PID at teardown); only lab
namespaces and 198.18/16, 198.19/16 addresses are used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
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

from sleeve.lab import Host, Lab
from sleeve.lab.routers import Router, established_with, workdir

SUBJECTS: Final = ("veth", "vxlan", "sleeve", "sleeve-plain")
A_UL, B_UL = "198.18.0.1", "198.18.0.2"
A_OV, B_OV = "198.19.0.1", "198.19.0.2"
IPERF_PORT: Final = 5201
VXLAN_MTU: Final = 1450
PING_COUNT: Final = 200
ANCHOR_BPS: Final = 1.03e9
ANCHOR_NOTE: Final = (
    "best userspace-tunnel anchor: fastd, 1.03 Gbit/s, measured on this kind of machine; "
    "an external reference figure, NOT measured in this run"
)
DEFAULT_OUT: Final = pathlib.Path(__file__).resolve().parent / "results"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")

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


def _iperf3_version() -> str | None:
    if shutil.which("iperf3") is None:
        return None
    try:
        r = subprocess.run(["iperf3", "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = r.stdout.splitlines()[:1]
    return first[0].strip() if first else None


def environment() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "pynacl": _version("pynacl"),
        "uvloop": _version("uvloop"),
        "sleeve": _version("sleeve"),
        "iperf3": _iperf3_version(),
    }


# ---------------------------------------------------------------- measurements


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime (all threads) of ``pid`` in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) onwards
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def router_pid(r: Router) -> int:
    """The PID of the router's python process.

    ``Router.proc`` is ``ip netns exec NS python -m sleeve ...``; ``ip netns exec`` execs the
    command, so the PID is the python process. Verified here via /proc/PID/cmdline.
    """
    assert r.proc is not None
    pid = r.proc.pid
    deadline = time.monotonic() + 5.0
    while True:
        try:
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError as e:
            raise RuntimeError(f"router on {r.host.name} (pid {pid}) is gone") from e
        if argv and b"python" in os.path.basename(argv[0]) and b"sleeve" in argv:
            return pid
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {pid} is not the router's python process: {argv!r}")
        time.sleep(0.05)  # still `ip` before the exec


def measure_ping(a: Host, dst: str) -> dict[str, Any]:
    say(f"ping -c {PING_COUNT} -i 0.01 {dst}")
    r = a.run("ping", "-n", "-c", str(PING_COUNT), "-i", "0.01", "-W", "1", dst,
              check=False, timeout=30)
    times = sorted(float(m) for m in re.findall(r"time=([0-9.]+) ms", r.stdout))
    res: dict[str, Any] = {"sent": PING_COUNT, "received": len(times)}
    m = re.search(r"= ([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+) ms", r.stdout)
    res["avg_ms"] = float(m.group(2)) if m else None
    res["min_ms"] = float(m.group(1)) if m else None
    res["max_ms"] = float(m.group(3)) if m else None
    res["p99_ms"] = times[max(0, math.ceil(0.99 * len(times)) - 1)] if times else None
    res["p50_ms"] = times[len(times) // 2] if times else None
    return res


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


def measure_iperf(a: Host, b: Host, dst: str, seconds: int,
                  routers: Sequence[Router]) -> dict[str, Any]:
    pids = [router_pid(r) for r in routers]
    say(f"iperf3 server on {b.name}")
    server = b.popen("iperf3", "-s", "-1", "-B", dst, "-p", str(IPERF_PORT))
    try:
        _wait_listening(b, IPERF_PORT, server, 10.0)
        cpu0 = [proc_cpu_seconds(p) for p in pids]
        t0 = time.monotonic()
        say(f"iperf3 -c {dst} -t {seconds} (single TCP stream a->b)")
        r = a.run("iperf3", "-c", dst, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
                  check=False, timeout=seconds + 30)
        wall = time.monotonic() - t0
        cpu1 = [proc_cpu_seconds(p) for p in pids]
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    finally:
        b.stop(server)  # untracks it; SIGTERM/SIGKILL only if still running
    try:
        data: dict[str, Any] = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"iperf3 gave no JSON (rc {r.returncode}): {r.stderr[-500:]}") from e
    if "error" in data:
        raise RuntimeError(f"iperf3 failed: {data['error']}")
    end = data["end"]
    recv, sent = end["sum_received"], end["sum_sent"]
    res: dict[str, Any] = {
        "bits_per_second": recv["bits_per_second"],
        "bytes_received": recv["bytes"],
        "retransmits": sent.get("retransmits"),
        "sender_bits_per_second": sent["bits_per_second"],
        "seconds": recv.get("seconds"),
        "wall_seconds": round(wall, 3),
        "iperf_cpu_percent": end.get("cpu_utilization_percent"),
    }
    if pids:
        used = [c1 - c0 for c0, c1 in zip(cpu0, cpu1, strict=True)]
        gb = recv["bytes"] / 1e9
        res["router_cpu_seconds"] = {r.host.name: round(u, 3)
                                     for r, u in zip(routers, used, strict=True)}
        res["router_cpu_seconds_total"] = round(sum(used), 3)
        res["router_cpu_s_per_gb"] = round(sum(used) / gb, 3) if gb > 0 else None
        res["router_pids"] = pids
    return res


def nstat(h: Host, *counters: str) -> dict[str, int]:
    """Absolute values of the given counters inside ``h`` (nstat -azs: no history update)."""
    r = h.run("nstat", "-azs", *counters, check=False, timeout=10)
    out: dict[str, int] = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in counters:
            out[parts[0]] = int(parts[1])
    return out


# ---------------------------------------------------------------- subjects


def _setup_vxlan(h: Host, ul_if: str, local: str, remote: str, overlay: str) -> None:
    h.run("ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "remote", remote,
          "local", local, "dstport", "4789", "dev", ul_if, timeout=15)
    h.set_mtu("vx0", VXLAN_MTU)
    h.addr("vx0", overlay)


def run_subject(subject: str, seconds: int) -> dict[str, Any]:
    say(f"=== {subject}: building lab")
    result: dict[str, Any] = {"subject": subject}
    with Lab() as lab:
        sw = lab.switch()
        a, b = lab.host("a"), lab.host("b")
        if_a = lab.connect(a, sw, f"{A_UL}/24")
        if_b = lab.connect(b, sw, f"{B_UL}/24")
        routers: list[Router] = []
        dst = B_UL
        if subject == "vxlan":
            say("vxlan: vx0 on both hosts")
            _setup_vxlan(a, if_a, A_UL, B_UL, f"{A_OV}/24")
            _setup_vxlan(b, if_b, B_UL, A_UL, f"{B_OV}/24")
            dst = B_OV
        elif subject in ("sleeve", "sleeve-plain"):
            pw = "bench" if subject == "sleeve" else None
            wd = workdir("sleeve-bench-")
            result["workdir"] = str(wd)
            say(f"{subject}: launching routers (password={'yes' if pw else 'none'})")
            rb = Router(b, ["--ip", f"{B_OV}/24"], wd, pw)
            ra = Router(a, ["--ip", f"{A_OV}/24", B_UL], wd, pw)
            routers = [ra, rb]
            ra.wait(established_with(1), 30, "link a-b")
            rb.wait(established_with(1), 30, "link b-a")
            say(f"{subject}: established on both routers")
            dst = B_OV
        elif subject != "veth":
            raise ValueError(f"unknown subject {subject!r}")
        say(f"{subject}: waiting for ping {dst}")
        if not a.wait_ping(dst, timeout=20):
            raise RuntimeError(f"{subject}: no ping reply from {dst}")
        result["target"] = dst
        result["ping"] = measure_ping(a, dst)
        result["iperf"] = measure_iperf(a, b, dst, seconds, routers)
        result["nstat_b"] = nstat(b, "UdpRcvbufErrors", "UdpInErrors", "UdpSndbufErrors",
                                  "TcpRetransSegs")
        result["nstat_a"] = nstat(a, "UdpRcvbufErrors", "UdpInErrors", "UdpSndbufErrors",
                                  "TcpRetransSegs")
        for r in routers:
            try:
                st = r.status()
                result.setdefault("router_drops", {})[r.host.name] = st.get("drops", {})
            except RuntimeError as e:
                result.setdefault("router_drops", {})[r.host.name] = {"error": str(e)}
            result.setdefault("router_alive", {})[r.host.name] = r.running
        for r in routers:
            if r.running:
                r.stop()
        say(f"=== {subject}: {result['iperf']['bits_per_second'] / 1e9:.3f} Gbit/s, "
            f"ping avg {result['ping']['avg_ms']} ms; tearing down")
    if lab.errors:
        result["teardown_errors"] = list(lab.errors)
    wd_done = result.pop("workdir", None)
    if wd_done is not None:  # logs, state and password file; kept only if the subject failed
        shutil.rmtree(wd_done, ignore_errors=True)
    return result


# ---------------------------------------------------------------- report


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    lines = [
        f"# sleeve end-to-end benchmark ({env['date']})",
        "",
        f"- kernel {env['kernel']}, CPU {env['cpu_model']} x{env['cpus']}, "
        f"Python {env['python']}, pynacl {env['pynacl']}, uvloop {env['uvloop']}, "
        f"{env['iperf3']}",
        f"- iperf3 single TCP stream a->b for {doc['seconds']} s; ping {PING_COUNT} x 10 ms; "
        "router CPU = utime+stime of both router processes during the iperf3 run",
        f"- anchor: {ANCHOR_NOTE}",
        "",
        "| subject | Gbit/s | vs veth | vs anchor (1.03 Gbit/s) | retransmits "
        "| ping avg ms | ping p99 ms | router CPU-s | CPU-s/GB | UdpRcvbufErrors (b) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    veth_bps = next((r["iperf"]["bits_per_second"] for r in doc["results"]
                     if r["subject"] == "veth" and "iperf" in r), None)
    for r in doc["results"]:
        if "error" in r:
            lines.append(f"| {r['subject']} | FAILED: {r['error'][:80]} |||||||||")
            continue
        ip, pg = r["iperf"], r["ping"]
        bps = ip["bits_per_second"]
        lines.append(
            f"| {r['subject']} | {bps / 1e9:.3f} "
            f"| {_fmt(bps / veth_bps if veth_bps else None, '.3f')} "
            f"| {bps / ANCHOR_BPS:.3f} | {_fmt(ip['retransmits'], 'd')} "
            f"| {_fmt(pg['avg_ms'], '.3f')} | {_fmt(pg['p99_ms'], '.3f')} "
            f"| {_fmt(ip.get('router_cpu_seconds_total'), '.2f')} "
            f"| {_fmt(ip.get('router_cpu_s_per_gb'), '.2f')} "
            f"| {_fmt(r['nstat_b'].get('UdpRcvbufErrors'), 'd')} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.e2e", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=10, help="iperf3 duration (default 10)")
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT,
                   help="output directory (default bench/results/)")
    p.add_argument("--subjects", default=",".join(SUBJECTS),
                   help=f"comma-separated subset of {','.join(SUBJECTS)}")
    args = p.parse_args(argv)
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    bad = [s for s in subjects if s not in SUBJECTS]
    if bad or not subjects:
        p.error(f"unknown subjects {bad}; choose from {','.join(SUBJECTS)}")
    if not 1 <= args.seconds <= 600:
        p.error("--seconds must be 1..600")
    env = environment()
    say(f"environment: {json.dumps(env)}")
    results: list[dict[str, Any]] = []
    for s in subjects:
        try:
            results.append(run_subject(s, args.seconds))
        except Exception as e:
            say(f"=== {s}: FAILED: {e!r}")
            results.append({"subject": s, "error": f"{type(e).__name__}: {e}"})
    doc: dict[str, Any] = {
        "environment": env,
        "seconds": args.seconds,
        "anchor": {"bits_per_second": ANCHOR_BPS, "note": ANCHOR_NOTE},
        "results": results,
    }
    veth = next((r for r in results if r["subject"] == "veth" and "iperf" in r), None)
    for r in results:
        if "iperf" in r:
            bps = r["iperf"]["bits_per_second"]
            r["ratio_to_veth"] = bps / veth["iperf"]["bits_per_second"] if veth else None
            r["ratio_to_anchor"] = bps / ANCHOR_BPS
    out: pathlib.Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    jpath, mpath = out / f"e2e-{stamp}.json", out / f"e2e-{stamp}.md"
    jpath.write_text(json.dumps(doc, indent=2) + "\n")
    md = markdown(doc)
    mpath.write_text(md)
    (out / "LATEST.md").write_text(md)
    say(f"wrote {jpath}, {mpath}, {out / 'LATEST.md'}")
    print(md)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
