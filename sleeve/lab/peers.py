"""Reference tunnels between two lab hosts, for the end-to-end benchmark (test tooling only).

Each function below builds one point-to-point tunnel between hosts ``a`` and ``b`` of a
:class:`~sleeve.lab.netns.Lab` (underlay addresses given, overlay ``198.19.0.0/16``) with the
Debian-packaged daemon, and returns a :class:`Tunnel`: the daemon processes (tracked by the
lab, stopped by PID), the tunnel device on each host and its MTU.

- :func:`wireguard_go`: wireguard-go (userspace WireGuard, L3, TUN) configured with ``wg``;
- :func:`tinc`: tinc 1.0 ``Mode = switch`` (L2, TAP), RSA-2048 keys, default cipher;
- :func:`fastd`: fastd (L2, TAP), method ``salsa2012+umac``.

Each tunnel runs at its own largest MTU that does not fragment on a 1500-byte underlay
(see ``MTU``), so every subject is compared at its best packet size.  The daemons' config,
keys and logs live in a private work directory passed by the caller.

Pitfalls handled here (from the reference measurements on this kind of machine):

- wireguard-go keeps its control socket in ``/var/run/wireguard/<ifname>.sock``, which is
  *not* per network namespace: interface names carry the lab's run id so two hosts (or two
  labs) never share a socket.  It must run with ``-f`` (it forks otherwise, and the PID the
  lab tracks would not be the daemon).
- tinc 1.0 writes its PID file to ``/var/run/tinc.pid`` unless told otherwise, and sends
  frames larger than its discovered path MTU over its TCP meta connection until discovery
  converges: :func:`tinc` waits until the node dump (SIGUSR2) shows ``min == max``.
- fastd's first handshake can take many seconds; callers should wait for ping generously.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from sleeve.lab.guard import check_iface, check_ip
from sleeve.lab.netns import Host, LabError

KINDS: Final = ("wireguard-go", "tinc", "fastd")

# Largest MTU of the tunnel device that never fragments on a 1500-byte IPv4 underlay:
# wireguard-go: 1500 - 20 IP - 8 UDP - 16 header - 16 tag (L3: no Ethernet header);
# tinc 1.0: its PMTU discovery converges to a 1451-byte frame (aes-256-cbc padding,
#   4-byte seqno, 4-byte MAC), i.e. MTU 1437;
# fastd salsa2012+umac (TAP): 66 bytes of overhead including the 14-byte Ethernet header.
MTU: Final[dict[str, int]] = {"wireguard-go": 1440, "tinc": 1437, "fastd": 1434}

TOOLS: Final[dict[str, tuple[str, ...]]] = {
    "wireguard-go": ("wireguard-go", "wg"),
    "tinc": ("tincd",),
    "fastd": ("fastd",),
}
DEBIAN_PACKAGES: Final[dict[str, tuple[str, ...]]] = {
    "wireguard-go": ("wireguard-go", "wireguard-tools"),
    "tinc": ("tinc",),
    "fastd": ("fastd",),
}
COMM: Final[dict[str, str]] = {"wireguard-go": "wireguard-go", "tinc": "tincd", "fastd": "fastd"}
"""The daemons' process names (``/proc/PID/comm``)."""
WG_PORT: Final = 51820
TINC_PORT: Final = 655
FASTD_PORT: Final = 10000
WG_SOCKET_DIR: Final = pathlib.Path("/var/run/wireguard")


class PeerUnavailable(LabError):
    """The daemon of a reference tunnel is not installed (run ``bench/setup.sh``)."""


@dataclass
class Tunnel:
    """A running reference tunnel between two lab hosts."""

    kind: str
    hosts: tuple[Host, Host]
    ifnames: tuple[str, str]
    mtu: int
    procs: list[tuple[Host, subprocess.Popen[bytes]]] = field(default_factory=list)
    workdir: pathlib.Path | None = None
    notes: list[str] = field(default_factory=list)
    cleanup: list[pathlib.Path] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        """PIDs of the tunnel daemons (``ip netns exec`` execs, so these are the daemons)."""
        return [p.pid for _, p in self.procs]

    @property
    def running(self) -> bool:
        return all(p.poll() is None for _, p in self.procs)

    def log(self, limit: int = 3000) -> str:
        """The tail of the daemons' log files (for error messages)."""
        if self.workdir is None:
            return ""
        parts = []
        for f in sorted(self.workdir.glob("*.log")):
            with contextlib.suppress(OSError):
                parts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-limit:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop the daemons (SIGTERM, SIGKILL after 5 s) and remove files left outside
        the work directory (wireguard-go's control sockets)."""
        for host, proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(LabError):
                    host.stop(proc)
        for path in self.cleanup:
            with contextlib.suppress(OSError):
                path.unlink()


def missing_tools(kind: str) -> list[str]:
    """The executables of ``kind`` that are not on PATH (empty: it can run)."""
    if kind not in TOOLS:
        raise ValueError(f"unknown reference tunnel {kind!r}; choose from {', '.join(KINDS)}")
    return [t for t in TOOLS[kind] if shutil.which(t) is None]


def check_available(kind: str) -> None:
    """Raise :class:`PeerUnavailable` unless ``kind``'s daemon and tools are installed."""
    missing = missing_tools(kind)
    if missing:
        pkgs = " ".join(DEBIAN_PACKAGES[kind])
        raise PeerUnavailable(
            f"{kind}: {', '.join(missing)} not installed (Debian: {pkgs}; run bench/setup.sh "
            "or `python3 -m bench.e2e --setup`)"
        )


def package_versions(kinds: Sequence[str] = KINDS) -> dict[str, str | None]:
    """Installed Debian package versions of the reference tunnels (None: not installed)."""
    out: dict[str, str | None] = {}
    for kind in kinds:
        for pkg in DEBIAN_PACKAGES[kind]:
            try:
                r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg],
                                   capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                out[pkg] = None
                continue
            out[pkg] = r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None
    return out


# ---------------------------------------------------------------- helpers


def _ifname(a: Host, tag: str) -> str:
    """A device name unique to this lab run: ``slv<run id><tag>`` (at most 15 chars)."""
    name = f"slv{a.lab.run_id}{tag}"
    if len(name) > 15:
        raise LabError(f"interface name {name!r} too long")
    return name


def _wait_link(h: Host, ifname: str, procs: Sequence[subprocess.Popen[bytes]],
               timeout: float, what: str) -> None:
    """Wait until ``ifname`` exists in ``h`` (bounded); fail early if a daemon died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise LabError(f"{what}: daemon pid {p.pid} exited with {p.returncode}")
        r = h.run("ip", "link", "show", "dev", ifname, check=False, timeout=10)
        if r.returncode == 0:
            return
        time.sleep(0.1)
    raise LabError(f"{what}: device {ifname} did not appear in {h.name} within {timeout}s")


def _up(h: Host, ifname: str, mtu: int, overlay: str) -> None:
    h.set_mtu(ifname, mtu)
    h.addr(ifname, overlay)  # also sets the link up


def _write(path: pathlib.Path, text: str, mode: int = 0o600) -> None:
    path.write_text(text)
    path.chmod(mode)


def _checked(a_ul: str, b_ul: str, a_ov: str, b_ov: str) -> tuple[str, str, str, str]:
    from sleeve.lab.guard import OVERLAY, UNDERLAY

    return (check_ip(a_ul, (UNDERLAY,)), check_ip(b_ul, (UNDERLAY,)),
            check_iface(a_ov, (OVERLAY,)), check_iface(b_ov, (OVERLAY,)))


# ---------------------------------------------------------------- wireguard-go


def wireguard_go(a: Host, b: Host, a_ul: str, b_ul: str, a_ov: str, b_ov: str,
                 workdir: pathlib.Path, timeout: float = 20.0) -> Tunnel:
    """wireguard-go on both hosts, keys and peers set with ``wg set``; overlay /24 on the
    TUN devices, each peer allowed the other's overlay /32."""
    check_available("wireguard-go")
    a_ul, b_ul, a_ov, b_ov = _checked(a_ul, b_ul, a_ov, b_ov)
    mtu = MTU["wireguard-go"]
    names = (_ifname(a, "wga"), _ifname(a, "wgb"))
    t = Tunnel("wireguard-go", (a, b), names, mtu, workdir=workdir)
    keys: list[tuple[pathlib.Path, str]] = []
    for h in (a, b):
        priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
        pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        kf = workdir / f"wg-{h.name}.key"
        _write(kf, priv + "\n")
        keys.append((kf, pub))
    env = {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error",
           "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
    try:
        for h, ifn in zip((a, b), names, strict=True):
            sock = WG_SOCKET_DIR / f"{ifn}.sock"
            if sock.exists():
                raise LabError(f"wireguard-go: {sock} already exists (another run?)")
            t.cleanup.append(sock)
            with open(workdir / f"wg-{h.name}.log", "ab") as log:
                p = h.popen("wireguard-go", "-f", ifn, env=env, stdout=log, stderr=log)
            t.procs.append((h, p))
        for (h, p), ifn in zip(t.procs, names, strict=True):
            _wait_link(h, ifn, [p], timeout, "wireguard-go")
            sock = WG_SOCKET_DIR / f"{ifn}.sock"
            deadline = time.monotonic() + timeout
            while not sock.exists():
                if time.monotonic() > deadline or p.poll() is not None:
                    raise LabError(f"wireguard-go: no control socket {sock}")
                time.sleep(0.05)
        ends = ((a, names[0], keys[0][0], keys[1][1], b_ul, b_ov),
                (b, names[1], keys[1][0], keys[0][1], a_ul, a_ov))
        for h, ifn, kf, peer_pub, peer_ul, peer_ov in ends:
            h.run("wg", "set", ifn, "listen-port", str(WG_PORT), "private-key", str(kf),
                  "peer", peer_pub, "endpoint", f"{peer_ul}:{WG_PORT}",
                  "allowed-ips", f"{peer_ov.split('/')[0]}/32", timeout=15)
        _up(a, names[0], mtu, a_ov)
        _up(b, names[1], mtu, b_ov)
    except BaseException:
        t.stop()
        raise
    return t


# ---------------------------------------------------------------- tinc 1.0


def _tinc_pmtu(log_path: pathlib.Path, peer: str) -> tuple[int, int, int] | None:
    """The last ``pmtu N (min A max B)`` tinc dumped for node ``peer`` (SIGUSR2), or None."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    found = re.findall(rf"\b{re.escape(peer)} at .*?pmtu (\d+) \(min (\d+) max (\d+)\)", text)
    if not found:
        return None
    p, lo, hi = found[-1]
    return int(p), int(lo), int(hi)


def tinc(a: Host, b: Host, a_ul: str, b_ul: str, a_ov: str, b_ov: str,
         workdir: pathlib.Path, timeout: float = 30.0) -> Tunnel:
    """tinc 1.0 in switch mode (TAP) on both hosts, ``a`` connecting to ``b``.

    Returns once both daemons' path-MTU discovery to the other converged (so no frame is
    carried over the TCP meta connection during a measurement) or, if it did not within
    ``timeout``, with a note saying so.
    """
    check_available("tinc")
    a_ul, b_ul, a_ov, b_ov = _checked(a_ul, b_ul, a_ov, b_ov)
    mtu = MTU["tinc"]
    names = (_ifname(a, "tca"), _ifname(a, "tcb"))
    t = Tunnel("tinc", (a, b), names, mtu, workdir=workdir)
    nodes = ("a", "b")
    dirs = {n: workdir / f"tinc-{n}" for n in nodes}
    pubs: dict[str, str] = {}
    for n, ul, ifn in zip(nodes, (a_ul, b_ul), names, strict=True):
        d = dirs[n]
        (d / "hosts").mkdir(parents=True, mode=0o700)
        conf = [f"Name = {n}", "Mode = switch", "DeviceType = tap", f"Interface = {ifn}",
                "AddressFamily = ipv4", f"BindToAddress = {ul}"]
        if n == "a":
            conf.append("ConnectTo = b")
        _write(d / "tinc.conf", "\n".join(conf) + "\n")
        subprocess.run(["tincd", "-c", str(d), "-K2048"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60, check=True)
        pubs[n] = (d / "hosts" / n).read_text()
        host_file = f"Address = {ul}\nPort = {TINC_PORT}\n"
        pubs[n] = host_file + pubs[n]
    for n in nodes:
        for m in nodes:
            _write(dirs[n] / "hosts" / m, pubs[m], 0o644)
    logs = {n: workdir / f"tinc-{n}.log" for n in nodes}
    try:
        for h, n in ((b, "b"), (a, "a")):
            d = dirs[n]
            p = h.popen("tincd", "-c", str(d), "-D", "-d0", f"--pidfile={d / 'tinc.pid'}",
                        f"--logfile={logs[n]}")
            t.procs.append((h, p))
        by_host = {h.name: (h, p) for h, p in t.procs}
        for h, ifn in ((a, names[0]), (b, names[1])):
            _wait_link(h, ifn, [by_host[h.name][1]], timeout, "tinc")
        _up(a, names[0], mtu, a_ov)
        _up(b, names[1], mtu, b_ov)
        # PMTU discovery starts once the meta connection is up; wait for min == max.
        deadline = time.monotonic() + timeout
        done: dict[str, tuple[int, int, int] | None] = {"a": None, "b": None}
        while time.monotonic() < deadline:
            for h, p in t.procs:
                if p.poll() is not None:
                    raise LabError(f"tinc on {h.name} exited with {p.returncode}:\n{t.log()}")
                os.kill(p.pid, signal.SIGUSR2)  # dump nodes (with pmtu min/max) to the log
            time.sleep(0.5)
            for n, peer in (("a", "b"), ("b", "a")):
                done[n] = _tinc_pmtu(logs[n], peer)
            if all(v is not None and v[1] == v[2] and v[1] > 0 for v in done.values()):
                break
        t.notes.append("tinc pmtu (frame) " + ", ".join(
            f"{n}->{'b' if n == 'a' else 'a'}: "
            + (f"{v[0]} (min {v[1]} max {v[2]})" if v else "unknown")
            for n, v in done.items()))
        if not all(v is not None and v[1] == v[2] for v in done.values()):
            t.notes.append(f"tinc PMTU discovery had not converged after {timeout}s")
    except BaseException:
        t.stop()
        raise
    return t


# ---------------------------------------------------------------- fastd


def _fastd_keypair() -> tuple[str, str]:
    out = subprocess.run(["fastd", "--generate-key"], capture_output=True, text=True,
                         timeout=30, check=True, stdin=subprocess.DEVNULL).stdout
    sec = re.search(r"Secret: ([0-9a-f]{64})", out)
    pub = re.search(r"Public: ([0-9a-f]{64})", out)
    if not sec or not pub:
        raise LabError("fastd --generate-key: unexpected output")
    return sec.group(1), pub.group(1)


def fastd(a: Host, b: Host, a_ul: str, b_ul: str, a_ov: str, b_ov: str,
          workdir: pathlib.Path, method: str = "salsa2012+umac",
          timeout: float = 20.0) -> Tunnel:
    """fastd in TAP mode on both hosts, each configured with the other as a static peer."""
    check_available("fastd")
    a_ul, b_ul, a_ov, b_ov = _checked(a_ul, b_ul, a_ov, b_ov)
    if not re.match(r"^[a-z0-9+\-]+$", method):
        raise ValueError(f"bad fastd method {method!r}")
    mtu = MTU["fastd"]
    names = (_ifname(a, "fda"), _ifname(a, "fdb"))
    t = Tunnel("fastd", (a, b), names, mtu, workdir=workdir)
    ka, kb = _fastd_keypair(), _fastd_keypair()
    # b first, and a only once b's device exists: a handshake sent before the other end
    # listens is retried only after many seconds (~20 s seen on this kind of machine).
    ends = (("b", b, names[1], b_ul, b_ov, kb[0], "a", ka[1], a_ul),
            ("a", a, names[0], a_ul, a_ov, ka[0], "b", kb[1], b_ul))
    try:
        for n, h, ifn, ul, ov, secret, peer, peer_pub, peer_ul in ends:
            conf = workdir / f"fastd-{n}.conf"
            _write(conf, "\n".join([
                "log level warn;",
                f'interface "{ifn}";',
                "mode tap;",
                f'method "{method}";',
                f"bind {ul}:{FASTD_PORT};",
                f'secret "{secret}";',
                f"mtu {mtu};",
                f'peer "{peer}" {{',
                f'  key "{peer_pub}";',
                f"  remote {peer_ul}:{FASTD_PORT};",
                "}",
                "",
            ]))
            with open(workdir / f"fastd-{n}.log", "ab") as log:
                p = h.popen("fastd", "--config", str(conf), stdout=log, stderr=log)
            t.procs.append((h, p))
            _wait_link(h, ifn, [p], timeout, "fastd")
            _up(h, ifn, mtu, ov)
        t.procs.reverse()  # (a, b), like the other tunnels
    except BaseException:
        t.stop()
        raise
    return t


SetupFn = Callable[[Host, Host, str, str, str, str, pathlib.Path], Tunnel]
SETUP: Final[dict[str, SetupFn]] = {"wireguard-go": wireguard_go, "tinc": tinc, "fastd": fastd}
"""kind -> set-up function ``(a, b, a_underlay, b_underlay, a_overlay_cidr, b_overlay_cidr,
workdir)``."""
