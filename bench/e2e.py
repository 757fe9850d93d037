"""End-to-end benchmark of sleeve against kernel and userspace tunnels: ``python3 -m bench.e2e``.

For each subject a fresh lab is built (hosts ``a`` and ``b`` plugged into one switch,
underlay 198.18.0.1/24 and .2/24; tunnels carry overlay 198.19.0.1/24 and .2/24), the
subject is measured and everything is torn down before the next one:

- ``veth``: no tunnel, traffic straight over the underlay: the machine's limit;
- ``vxlan``: kernel VXLAN (L2, clear text, MTU 1450);
- ``sleeve``: ``sleeve launch`` with a password (encrypted data plane);
- ``sleeve-plain``: ``sleeve launch --no-encryption`` (authenticated, clear text);
- ``sleeve-fast``: sleeve's fast datapath (unencrypted network: the link is handed to
  the kernel's VXLAN once heartbeats prove it); measured after the link reports it;
- ``sleeve-relayed``: encrypted sleeve through a third router ``r`` (198.18.0.3) with a
  and b blocked from each other by nft on a: the relayed path (``setup_relayed``);
- ``wireguard-go``, ``tinc`` (1.0, switch mode), ``fastd`` (salsa2012+umac): userspace
  reference tunnels from Debian packages (``--setup`` or ``bench/setup.sh`` installs them);
  see :mod:`sleeve.lab.peers`.

Each tunnel runs at its own largest non-fragmenting MTU (sleeve at its default), checked
with a don't-fragment ping and the underlay's IpFragCreates.  Encrypted tunnels are
checked for plaintext on the wire (tcpdump on the switch while pinging with a pattern).

Measured per subject (``--tests``): iperf3 TCP, one stream and 4 streams, a->b and b->a
(``-R``); iperf3 UDP as fast as possible with 64- and 512-byte payloads a->b (packets per
second received, loss); ping RTT (avg, p99); for each iperf3 run the CPU seconds of the
tunnel processes of both ends (utime+stime from /proc/PID/stat, all threads) per GB
received, and the whole box's busy CPU seconds.  With ``sleeve`` measured, its two router
processes are also profiled with py-spy under a single-stream load (``--profile``).

Results go to ``--out``: ``e2e-<stamp>.json``, ``.md``, ``.png`` (matplotlib) and the
profile files (``LATEST.md`` only with ``--latest``: the quoted figures come from
``bench.series``, interleaved repeats with medians).  Every process runs through
the lab (tracked, stopped by PID at teardown); only lab namespaces and 198.18/16,
198.19/16 addresses are used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bench import e2e_report as report
from bench.e2e_env import background_load, environment, say
from bench.e2e_measure import (
    TESTS,
    check_leak,
    check_mtu,
    measure_iperf,
    measure_ping,
)
from bench.e2e_profile import profile_sleeve, pyspy, pyspy_available  # noqa: F401
from sleeve.lab import Host, Lab, Switch
from sleeve.lab import peers as peerlib
from sleeve.lab.routers import Router, established_with, workdir

SUBJECTS: Final = ("veth", "vxlan", "sleeve", "sleeve-plain", "sleeve-fast", "sleeve-relayed",
                   "wireguard-go", "tinc", "fastd")
USERSPACE_PEERS: Final = peerlib.KINDS
SLEEVE_SUBJECTS: Final = ("sleeve", "sleeve-plain", "sleeve-fast", "sleeve-relayed")



SUBJECT_INFO: Final[dict[str, dict[str, Any]]] = {
    "veth": {"layer": "-", "encrypted": False, "kind": "kernel",
             "what": "no tunnel: the underlay itself (the machine's limit)"},
    "vxlan": {"layer": "L2", "encrypted": False, "kind": "kernel", "what": "kernel VXLAN"},
    "sleeve": {"layer": "L2", "encrypted": True, "kind": "sleeve",
               "what": "sleeve, ChaCha20-Poly1305 (PyNaCl)"},
    "sleeve-plain": {"layer": "L2", "encrypted": False, "kind": "sleeve",
                     "what": "sleeve --no-encryption (authenticated, clear text)"},
    "sleeve-fast": {"layer": "L2", "encrypted": False, "kind": "sleeve",
                    "what": "sleeve fast datapath (kernel VXLAN, clear text)"},
    "sleeve-relayed": {"layer": "L2", "encrypted": True, "kind": "sleeve",
                       "what": "sleeve encrypted, a -> r -> b through a third router (a-b "
                               "blocked by nft); CPU-s counts all three routers"},
    "wireguard-go": {"layer": "L3", "encrypted": True, "kind": "userspace",
                     "what": "wireguard-go + wg, ChaCha20-Poly1305"},
    "tinc": {"layer": "L2", "encrypted": True, "kind": "userspace",
             "what": "tinc 1.0 Mode=switch, aes-256-cbc + HMAC-SHA256/4 (defaults)"},
    "fastd": {"layer": "L2", "encrypted": True, "kind": "userspace",
              "what": "fastd TAP, salsa2012+umac"},
}

A_UL, B_UL = "198.18.0.1", "198.18.0.2"
A_OV, B_OV = "198.19.0.1", "198.19.0.2"
R_UL, R_OV = "198.18.0.3", "198.19.0.3"  # the relay of "sleeve-relayed"
# "sleeve-relayed" is not a result unless the relay carried the traffic: at least this
# many relayed frames per test run (a 1-second iperf3 run carries tens of thousands).
MIN_RELAYED_FRAMES: Final = 1000
VXLAN_MTU: Final = 1450
VETH_MTU: Final = 1500
# A fast-datapath-capable `sleeve launch` offers this flag to turn it off; "sleeve-plain"
# uses it (so it measures the userspace path) and "sleeve-fast" runs without it.
FAST_DATAPATH_FLAG: Final = "--no-fastdp"
ANCHOR_NOTE: Final = (
    "external anchors (shared/reference/anchors-2026-11-27.md, another VM of this kind, "
    "direct veth, not this run): veth 22.27, vxlan 17.92, wireguard-go 0.76, tinc 0.89, "
    "fastd 1.03 Gbit/s single-stream TCP"
)
DEFAULT_OUT: Final = pathlib.Path(__file__).resolve().parent / "results"
SETUP_SCRIPT: Final = pathlib.Path(__file__).resolve().parent / "setup.sh"
# py-spy samples the routers with native frames (so syscalls, libsodium and uvloop show),
# which needs it to pause the process per sample: a higher rate costs throughput.


def daemon_pid(proc: subprocess.Popen[bytes], comm: str, timeout: float = 5.0) -> int:
    """The PID of a daemon started as ``ip netns exec NS <daemon>`` (which execs), once
    /proc/PID/comm shows ``comm`` (a prefix: comm is at most 15 chars)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = pathlib.Path(f"/proc/{proc.pid}/comm").read_text().strip()
        except OSError as e:
            raise RuntimeError(f"pid {proc.pid} ({comm}) is gone") from e
        if got and comm.startswith(got[:15]):
            return proc.pid
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {proc.pid} is {got!r}, not {comm!r}")
        time.sleep(0.05)  # still `ip` before the exec


def router_pid(r: Router) -> int:
    """The PID of a router's python process (``ip netns exec`` execs python)."""
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
        time.sleep(0.05)



# ---------------------------------------------------------------- subjects


@dataclass
class Running:
    """A subject set up in a lab, ready to be measured."""

    subject: str
    dst: str  # b's address the traffic goes to
    mtu: int | None
    daemons: list[tuple[str, int]] = field(default_factory=list)  # (host, pid)
    routers: list[Router] = field(default_factory=list)
    tunnel: peerlib.Tunnel | None = None
    relay: Router | None = None  # "sleeve-relayed": the router in the middle
    notes: list[str] = field(default_factory=list)
    ping_timeout: float = 20.0

    def dead(self) -> list[str]:
        """Hosts whose tunnel process has exited."""
        out = [r.host.name for r in self.routers if not r.running]
        if self.tunnel is not None:
            out += [h.name for h, p in self.tunnel.procs if p.poll() is not None]
        return out


class Unavailable(Exception):
    """The subject cannot run on this machine (tool not installed, feature not built)."""


def sleeve_fast_unavailable() -> str | None:
    """Why the ``sleeve-fast`` subject cannot run (None once it can).

    The fast datapath exists once ``sleeve launch --help`` lists
    :data:`FAST_DATAPATH_FLAG`; the subject then runs unencrypted sleeve with it on.
    """
    try:
        r = subprocess.run([sys.executable, "-m", "sleeve", "launch", "--help"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not ask `sleeve launch --help`: {e}"
    if FAST_DATAPATH_FLAG in r.stdout:
        return None
    return (f"sleeve has no fast datapath yet (`sleeve launch --help` has no "
            f"{FAST_DATAPATH_FLAG}); no number is reported")


def unavailable_reason(subject: str) -> str | None:
    """None if ``subject`` can run here, else why not (checked before building a lab)."""
    if subject == "sleeve-fast":
        return sleeve_fast_unavailable()
    if subject in USERSPACE_PEERS:
        try:
            peerlib.check_available(subject)
        except peerlib.PeerUnavailable as e:
            return str(e)
    if subject == "vxlan" and shutil.which("ip") is None:
        return "ip (iproute2) not installed"
    return None


def _setup_vxlan(h: Host, ul_if: str, local: str, remote: str, overlay: str) -> None:
    h.run("ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "remote", remote,
          "local", local, "dstport", "4789", "dev", ul_if, timeout=15)
    h.set_mtu("vx0", VXLAN_MTU)
    h.addr("vx0", overlay)


def _link_mtu(h: Host, ifname: str) -> int | None:
    r = h.run("ip", "-o", "link", "show", "dev", ifname, check=False, timeout=10)
    m = re.search(r"\bmtu (\d+)", r.stdout)
    return int(m.group(1)) if m else None


def setup_relayed(a: Host, b: Host, relay: Host, wd: pathlib.Path,
                  sleeve_mtu: int | None) -> Running:
    """Encrypted sleeve with a's and b's underlay addresses blocked from each other (nft on
    a: every protocol, both ways), both linked to a third router ``relay``: a's frames to
    b go a -> relay -> b (sealed per hop, with the source's origin proof) and punching
    never succeeds. Ready once a's route to b has 2 hops."""
    a.block(B_UL)
    pw = "bench-" + os.urandom(8).hex()
    extra = ["--mtu", str(sleeve_mtu)] if sleeve_mtu is not None else []
    rr = Router(relay, ["--ip", f"{R_OV}/24", *extra], wd, pw)
    rb = Router(b, ["--ip", f"{B_OV}/24", *extra, R_UL], wd, pw)
    ra = Router(a, ["--ip", f"{A_OV}/24", *extra, R_UL], wd, pw)
    run = Running("sleeve-relayed", B_OV, None, routers=[ra, rb, rr], relay=rr)
    rr.wait(established_with(2), 30, "relay linked to a and b")
    b_name = rb.wait(lambda st: bool(st["name"]), 20, "b's name")["name"]
    r_name = rr.wait(lambda st: bool(st["name"]), 20, "r's name")["name"]
    ra.wait(lambda st: any(r["destination"] == b_name and r["hops"] == 2
                           and r["via"] == r_name for r in st["routes"]),
            30, "a's route to b via the relay")
    run.daemons = [(r.host.name, router_pid(r)) for r in (ra, rb, rr)]
    mtus = {_link_mtu(h, "sleeve0") for h in (a, b)}
    run.mtu = mtus.pop() if len(mtus) == 1 else None
    run.ping_timeout = 30.0
    return run


def setup_subject(subject: str, a: Host, b: Host, ifs: tuple[str, str],
                  wd: pathlib.Path, sleeve_mtu: int | None) -> Running:
    if subject == "veth":
        return Running(subject, B_UL, VETH_MTU)
    if subject == "vxlan":
        _setup_vxlan(a, ifs[0], A_UL, B_UL, f"{A_OV}/24")
        _setup_vxlan(b, ifs[1], B_UL, A_UL, f"{B_OV}/24")
        return Running(subject, B_OV, VXLAN_MTU)
    if subject in SLEEVE_SUBJECTS:
        plain = subject in ("sleeve-plain", "sleeve-fast")
        pw = None if plain else "bench-" + os.urandom(8).hex()
        extra = [FAST_DATAPATH_FLAG] if subject == "sleeve-plain" else []
        if sleeve_mtu is not None:
            extra += ["--mtu", str(sleeve_mtu)]
        rb = Router(b, ["--ip", f"{B_OV}/24", *extra], wd, pw)
        ra = Router(a, ["--ip", f"{A_OV}/24", *extra, B_UL], wd, pw)
        run = Running(subject, B_OV, None, routers=[ra, rb])
        ra.wait(established_with(1), 30, "link a-b")
        rb.wait(established_with(1), 30, "link b-a")
        if subject == "sleeve-fast":
            for r in (ra, rb):
                r.wait(lambda st: all(c["path"] == "fastdp" for c in st["connections"]),
                       30, "link on the fast datapath")
        run.daemons = [(r.host.name, router_pid(r)) for r in (ra, rb)]
        mtus = {_link_mtu(h, "sleeve0") for h in (a, b)}
        run.mtu = mtus.pop() if len(mtus) == 1 else None
        return run
    if subject in USERSPACE_PEERS:
        t = peerlib.SETUP[subject](a, b, A_UL, B_UL, f"{A_OV}/24", f"{B_OV}/24", wd)
        run = Running(subject, B_OV, t.mtu, tunnel=t, notes=list(t.notes))
        # a fastd handshake that went unanswered is retried only after ~20 s
        run.ping_timeout = 60.0
        run.daemons = [(h.name, daemon_pid(p, peerlib.COMM[subject])) for h, p in t.procs]
        return run
    raise ValueError(f"unknown subject {subject!r}")


def teardown_subject(run: Running) -> None:
    """Stop the tunnel processes (the lab would kill them anyway); never raises."""
    for r in run.routers:
        if r.running:
            try:
                r.stop()
            except Exception as e:
                run.notes.append(f"stopping the router on {r.host.name}: {e}")
    if run.tunnel is not None:
        run.tunnel.stop()



# ---------------------------------------------------------------- one subject


def estimate_seconds(subjects: Sequence[str], tests: Sequence[str], seconds: int,
                     profile_seconds: int) -> float:
    """A rough wall-time estimate, for the progress lines."""
    per = sum(seconds + 1.5 for t in tests if t != "ping") + (3 if "ping" in tests else 0)
    total = sum(per + 8 for s in subjects if s != "sleeve-fast")
    if "sleeve" in subjects and profile_seconds:
        total += profile_seconds + 3
    return total


@dataclass
class Config:
    seconds: int
    tests: list[str]
    ping_count: int
    profile_seconds: int  # 0: no profile
    sleeve_mtu: int | None
    out: pathlib.Path
    stamp: str
    profile_test: str = "tcp1"  # the load while profiled: tcp1, udp64, udp512 or ping


def run_subject(subject: str, cfg: Config) -> dict[str, Any]:
    result: dict[str, Any] = {"subject": subject, **SUBJECT_INFO[subject]}
    why = unavailable_reason(subject)
    if why is not None:
        say(f"=== {subject}: not available: {why}")
        result.update(status="not available", reason=why)
        return result
    say(f"=== {subject}: building lab")
    wd = workdir(f"sleeve-bench-{subject}-")
    ok = False
    try:
        with Lab() as lab:
            sw = lab.switch()
            a, b = lab.host("a"), lab.host("b")
            ifs = (lab.connect(a, sw, f"{A_UL}/24"), lab.connect(b, sw, f"{B_UL}/24"))
            if subject == "sleeve-relayed":
                relay = lab.host("r")
                lab.connect(relay, sw, f"{R_UL}/24")
                run = setup_relayed(a, b, relay, wd, cfg.sleeve_mtu)
            else:
                run = setup_subject(subject, a, b, ifs, wd, cfg.sleeve_mtu)
            try:
                ok = _measure_subject(result, run, a, b, sw, wd, cfg)
            finally:
                teardown_subject(run)
        if lab.errors:
            result["teardown_errors"] = list(lab.errors)
    except Exception as e:
        say(f"=== {subject}: FAILED: {e!r}")
        result.update(status="failed", error=f"{type(e).__name__}: {e}")
    finally:
        if ok:  # logs, keys and password files; kept for a look if the subject failed
            shutil.rmtree(wd, ignore_errors=True)
        else:
            result["workdir_kept"] = str(wd)
            say(f"{subject}: work directory kept: {wd} (removed at exit unless "
                "SLEEVE_LAB_KEEP=1)")
    return result


def _relayed_frames(run: Running) -> int | None:
    """Frames the relay of "sleeve-relayed" has passed on so far (None for the others)."""
    if run.relay is None:
        return None
    return int(run.relay.status()["counters"].get("relayed_frames", 0))


def _check_relayed(res: dict[str, Any], name: str, frames: int) -> None:
    """A relayed figure must come from relayed traffic: an iperf3 run whose frames did not
    pass through the relay (a direct path found after all) is an error, not a result."""
    res["relayed_frames"] = frames
    if name != "ping" and frames < MIN_RELAYED_FRAMES:
        raise RuntimeError(f"the relay passed on only {frames} frames during {name}: "
                           "the path was not relayed")


def _measure_subject(result: dict[str, Any], run: Running, a: Host, b: Host, sw: Switch,
                     wd: pathlib.Path, cfg: Config) -> bool:
    subject = run.subject
    result["mtu"] = run.mtu
    result["target"] = run.dst
    result["daemon_pids"] = {h: pid for h, pid in run.daemons}
    say(f"{subject}: waiting for ping {run.dst} (up to {run.ping_timeout:.0f} s)")
    t0 = time.monotonic()
    if not a.wait_ping(run.dst, timeout=run.ping_timeout):
        extra = run.tunnel.log() if run.tunnel else "\n".join(r.log()[-2000:]
                                                              for r in run.routers)
        raise RuntimeError(f"{subject}: no ping reply from {run.dst}\n{extra}")
    result["ping_ready_seconds"] = round(time.monotonic() - t0, 2)
    if subject in USERSPACE_PEERS:  # let handshakes and PMTU settle before measuring
        time.sleep(1.0)
    result["mtu_check"] = check_mtu(a, b, run.dst, run.mtu,
                                    relayed=run.subject == "sleeve-relayed")
    if subject != "veth":
        result["leak_check"] = check_leak(sw, a, run.dst, wd)
        leak = result["leak_check"]
        if leak.get("checked") and result["encrypted"] and leak["plaintext_seen"]:
            run.notes.append("PLAINTEXT SEEN ON THE UNDERLAY although the subject encrypts")
    tests: dict[str, Any] = {}
    result["tests"] = tests
    n = len(cfg.tests)
    for i, name in enumerate(cfg.tests, 1):
        test = TESTS[name]
        say(f"{subject}: test {i}/{n}: {test.label}")
        try:
            relayed0 = _relayed_frames(run)
            if name == "ping":
                tests[name] = measure_ping(a, run.dst, cfg.ping_count)
            else:
                tests[name] = measure_iperf(a, b, run.dst, test, cfg.seconds, run.daemons)
            if relayed0 is not None:
                _check_relayed(tests[name], name, (_relayed_frames(run) or 0) - relayed0)
        except Exception as e:
            say(f"{subject}: {name} FAILED: {e!r}")
            tests[name] = {"error": f"{type(e).__name__}: {e}"}
        dead = run.dead()
        if dead:
            raise RuntimeError(f"{subject}: tunnel process on {dead} died during {name}")
    if subject in ("sleeve", "sleeve-relayed") and cfg.profile_seconds > 0:
        try:
            result["profile"] = profile_sleeve(a, b, run, cfg.profile_seconds, cfg.out,
                                               cfg.stamp, cfg.profile_test)
        except Exception as e:
            say(f"{subject}: profile FAILED: {e!r}")
            result["profile"] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    for r in run.routers:
        try:
            st = r.status()
            result.setdefault("router_drops", {})[r.host.name] = st.get("drops", {})
        except RuntimeError as e:
            result.setdefault("router_drops", {})[r.host.name] = {"error": str(e)}
    result["notes"] = run.notes
    failed = [k for k, v in tests.items() if "error" in v]
    result["status"] = "failed" if failed else "ok"
    if failed:
        result["error"] = f"tests failed: {', '.join(failed)}"
    t1 = tests.get("tcp1", {})
    summary = (f"{t1['bits_per_second'] / 1e9:.3f} Gbit/s TCP 1 stream"
               if "bits_per_second" in t1 else "done")
    say(f"=== {subject}: {summary}; tearing down")
    return not failed


# ---------------------------------------------------------------- main


def run_setup() -> None:
    say(f"set-up: {SETUP_SCRIPT}")
    subprocess.run(["sh", str(SETUP_SCRIPT)], check=True, timeout=1800)


def _csv(value: str, allowed: Sequence[str], what: str,
         error: Callable[[str], Any]) -> list[str]:
    items = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        error(f"unknown {what} {bad}; choose from {','.join(allowed)}")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.e2e",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--seconds", type=int, default=10, help="each iperf3 run (default 10)")
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT,
                   help="output directory (default bench/results/)")
    p.add_argument("--subjects", default=",".join(SUBJECTS),
                   help=f"comma-separated subset of {','.join(SUBJECTS)}")
    p.add_argument("--tests", default=",".join(TESTS),
                   help=f"comma-separated subset of {','.join(TESTS)}")
    p.add_argument("--ping-count", type=int, default=200, help="pings 10 ms apart (200)")
    p.add_argument("--profile-seconds", type=int, default=None,
                   help="py-spy profile of the encrypted sleeve routers (default: --seconds; "
                   "0: none)")
    p.add_argument("--profile-test", default="tcp1",
                   choices=("tcp1", "tcp1r", "udp64", "udp512", "ping"),
                   help="the load while profiling (default tcp1; ping: 100 pings/s)")
    p.add_argument("--sleeve-mtu", type=int, default=None,
                   help="run sleeve with this --mtu (default: its own default)")
    p.add_argument("--setup", action="store_true",
                   help="first install the reference tunnels and the bench extra "
                   "(bench/setup.sh: apt-get + pip; needs the package registries)")
    # LATEST.md is what gets quoted: it comes from an interleaved series (bench.series),
    # not from one run, so a single run writes it only when asked.
    p.add_argument("--latest", action="store_true",
                   help="also write LATEST.md (normally bench.series writes it)")
    p.add_argument("--no-latest", action="store_true", help="(the default; kept for old "
                   "command lines)")
    args = p.parse_args(argv)
    subjects = _csv(args.subjects, SUBJECTS, "subjects", p.error)
    tests = _csv(args.tests, tuple(TESTS), "tests", p.error)
    if not 1 <= args.seconds <= 600:
        p.error("--seconds must be 1..600")
    if not 1 <= args.ping_count <= 10000:
        p.error("--ping-count must be 1..10000")
    profile_seconds = args.seconds if args.profile_seconds is None else args.profile_seconds
    if not 0 <= profile_seconds <= 600:
        p.error("--profile-seconds must be 0..600")
    if args.setup:
        run_setup()
    out: pathlib.Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    cfg = Config(args.seconds, tests, args.ping_count, profile_seconds, args.sleeve_mtu,
                 out, stamp, args.profile_test)
    env = environment()
    say(f"environment: {json.dumps(env)}")
    est = estimate_seconds(subjects, tests, args.seconds, profile_seconds)
    say(f"{len(subjects)} subjects x {len(tests)} tests; estimated {est / 60:.1f} min")
    t_start = time.monotonic()
    results: list[dict[str, Any]] = []
    for i, s in enumerate(subjects, 1):
        left = estimate_seconds(subjects[i - 1:], tests, args.seconds, profile_seconds)
        say(f"--- subject {i}/{len(subjects)}: {s} (about {left / 60:.1f} min left)")
        try:
            results.append(run_subject(s, cfg))
        except Exception as e:
            say(f"=== {s}: FAILED: {e!r}")
            results.append({"subject": s, **SUBJECT_INFO[s], "status": "failed",
                            "error": f"{type(e).__name__}: {e}"})
    doc: dict[str, Any] = {
        "schema": 2,
        "environment": env,
        "config": {"seconds": args.seconds, "tests": tests, "subjects": subjects,
                   "ping_count": args.ping_count, "profile_seconds": profile_seconds,
                   "sleeve_mtu": args.sleeve_mtu,
                   "test_labels": {k: TESTS[k].label for k in tests}},
        "wall_seconds": round(time.monotonic() - t_start, 1),
        "background_after": background_load(),
        "anchor_note": ANCHOR_NOTE,
        "results": results,
    }
    doc["ratios"] = report.ratios(doc)
    paths = report.write_all(doc, out, stamp, latest=args.latest and not args.no_latest)
    say("wrote " + ", ".join(str(v) for v in paths.values()))
    print(paths["md"].read_text())
    return 1 if any(r.get("status") == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
