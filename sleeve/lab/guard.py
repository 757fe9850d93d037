"""Guards for the lab: address checks that keep every packet inside the lab ranges, and
process-group teardown that signals only processes the lab started (never by name).

Split from ``netns`` so that each fits in a head; ``netns`` re-exports nothing of it,
callers import from here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import time
from typing import Final

UNDERLAY: Final = ipaddress.IPv4Network("198.18.0.0/16")
OVERLAY: Final = ipaddress.IPv4Network("198.19.0.0/16")
# IPv6: inside 2001:2::/48, the IPv6 benchmarking range (RFC 5180), as 198.18/15 is for IPv4.
UNDERLAY6: Final = ipaddress.IPv6Network("2001:2:0:1800::/56")
OVERLAY6: Final = ipaddress.IPv6Network("2001:2:0:1900::/56")
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
ANY_LAB_NET: Final[tuple[_Net, ...]] = (UNDERLAY, OVERLAY, UNDERLAY6, OVERLAY6)
_IFNAME_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")


# ---------------------------------------------------------------- validation


def check_iface(cidr: str, allowed: tuple[_Net, ...]) -> str:
    """Return ``cidr`` normalised; ValueError unless the whole prefix is inside ``allowed``."""
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError as e:
        raise ValueError(f"not an address/prefix: {cidr!r}") from e
    if "/" not in cidr:
        raise ValueError(f"address needs a prefix length: {cidr!r}")
    if not any(iface.version == net.version and iface.network.subnet_of(net)  # type: ignore[arg-type]
               for net in allowed):
        raise ValueError(f"{cidr} is outside the lab ranges {', '.join(map(str, allowed))}")
    return str(iface)


def check_ip(ip: str, allowed: tuple[_Net, ...] = ANY_LAB_NET) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError as e:
        raise ValueError(f"not an IP address: {ip!r}") from e
    if not any(addr in n for n in allowed):
        raise ValueError(f"{ip} is outside the lab ranges {', '.join(map(str, allowed))}")
    return str(addr)


def check_net(dst: str) -> str:
    try:
        net = ipaddress.ip_network(dst, strict=False)
    except ValueError as e:
        raise ValueError(f"not a network: {dst!r}") from e
    if not any(net.version == n.version and net.subnet_of(n)  # type: ignore[arg-type]
               for n in ANY_LAB_NET):
        raise ValueError(f"route {dst} is outside the lab ranges (no routes to the outside)")
    return str(net)


def check_ifname(ifname: str) -> str:
    if not _IFNAME_RE.match(ifname):
        raise ValueError(f"bad interface name {ifname!r}")
    return ifname


def nft_ident(ifname: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", ifname)


# ---------------------------------------------------------------- processes


def killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def exited_nowait(pid: int) -> bool:
    """True once ``pid`` has exited; leaves it a zombie (so its PID/PGID is not reused)."""
    try:
        res = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return res is not None


def terminate(procs: list[subprocess.Popen[bytes]], grace: float) -> list[str]:
    """SIGTERM each process group, wait up to ``grace`` s, then SIGKILL. Never raises.

    Only processes not yet reaped are signalled: while unreaped, their PID (= PGID, as
    they were started with ``start_new_session=True``) cannot belong to anyone else.
    """
    errors: list[str] = []
    live = [p for p in procs if p.returncode is None]
    for p in live:
        killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    pending = list(live)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if not exited_nowait(p.pid)]
        if pending:
            time.sleep(0.02)
    for p in live:  # leader alive or a zombie: the group id is still ours
        killpg(p.pid, signal.SIGKILL)
    for p in live:
        try:
            p.wait(timeout=3.0)
        except subprocess.TimeoutExpired:
            errors.append(f"pid {p.pid} survived SIGKILL")
        except Exception as e:  # pragma: no cover - defensive
            errors.append(f"pid {p.pid}: {e!r}")
    return errors


def close_streams(p: subprocess.Popen[bytes]) -> None:
    for s in (p.stdin, p.stdout, p.stderr):
        if s is not None:
            with contextlib.suppress(Exception):
                s.close()
