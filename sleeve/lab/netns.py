"""Test hosts as Linux network namespaces (test tooling, never imported by the router).

Every namespace and device name carries the prefix ``slv`` plus a short random run id,
so several labs (and leftovers of crashed runs) never collide.  Everything a :class:`Lab`
creates is torn down by :meth:`Lab.close`: on leaving the ``with`` block, at interpreter
exit (``atexit``) and on SIGTERM.  Teardown is idempotent and never raises.

Only addresses from 198.18.0.0/16 (underlay) and 198.19.0.0/16 (overlay) are accepted.
Namespaces get no default route; the root namespace is never touched (veth pairs are
created inside the namespaces, not in the root namespace).
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import IO, Any, Final

from sleeve.lab.filters import Filters
from sleeve.lab.guard import (
    ANY_LAB_NET,
    UNDERLAY,
    check_iface,
    check_ifname,
    check_ip,
    check_net,
    close_streams,
    terminate,
)

log = logging.getLogger("sleeve.lab")

AUTO: Final = "auto"
"""Default for :meth:`Lab.connect`: allocate ``198.18.<switch index>.<N>/24``."""

TERM_GRACE: Final = 3.0  # seconds between SIGTERM and SIGKILL during teardown
CMD_TIMEOUT: Final = 15.0  # default bound for lab plumbing commands
IFNAMSIZ: Final = 15

_RUN_ID_RE: Final = re.compile(r"^[0-9a-z]{1,6}$")
_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,15}$")

_SigHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
_Stream = int | IO[Any] | None


class LabError(RuntimeError):
    """The lab could not be set up (not root, ``ip`` missing, a plumbing command failed)."""


class LabCommandError(subprocess.CalledProcessError):
    """A command run in a namespace failed; ``str()`` includes its stderr."""

    def __str__(self) -> str:
        err = self.stderr.strip() if isinstance(self.stderr, str) else ""
        return f"{super().__str__().rstrip('.')}{': ' + err if err else ''}"


# ---------------------------------------------------------------- hosts


class Host(Filters):
    """A network namespace. Created by :meth:`Lab.host`; do not instantiate directly."""

    def __init__(self, lab: Lab, name: str, netns: str) -> None:
        self.lab = lab
        self.name = name
        self.netns = netns
        self._blocks: set[str] = set()
        self._block_seq = 0
        self._loss: set[str] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, netns={self.netns!r})"

    # -- processes

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 30,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace and wait (bounded by ``timeout``), capturing text.

        On timeout the whole process group is killed and TimeoutExpired raised; with
        ``check`` a non-zero exit raises :class:`LabCommandError` (which shows stderr).
        """
        return self.lab._exec(
            ["ip", "netns", "exec", self.netns, *argv], check=check, timeout=timeout, input=input
        )

    def popen(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        stdin: _Stream = subprocess.DEVNULL,
        stdout: _Stream = subprocess.DEVNULL,
        stderr: _Stream = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the namespace in its own session; tracked and killed at teardown.

        ``env`` is merged over the current environment.
        """
        self.lab._check_open()
        full_env = {**os.environ, **env} if env is not None else None
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *argv],
            env=full_env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        self.lab._track(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
        """SIGTERM the process group of ``proc``, SIGKILL after ``timeout`` s; return exit code."""
        errors = terminate([proc], timeout)
        self.lab._untrack(proc)
        close_streams(proc)
        if errors or proc.returncode is None:
            raise LabError(f"could not stop pid {proc.pid}: {'; '.join(errors)}")
        return proc.returncode

    # -- addressing

    def _ip(self, *args: str) -> None:
        self.lab._exec(["ip", "-n", self.netns, *args], check=True, timeout=CMD_TIMEOUT)

    def addr(self, ifname: str, cidr: str) -> None:
        """Add an address (lab ranges only, else ValueError) and bring ``ifname`` up."""
        cidr = check_iface(cidr, ANY_LAB_NET)
        # IPv6: no duplicate address detection, so the address is usable at once
        extra = ("nodad",) if ":" in cidr else ()
        self._ip("addr", "add", cidr, "dev", check_ifname(ifname), *extra)
        self._ip("link", "set", "dev", ifname, "up")

    def set_mtu(self, ifname: str, mtu: int) -> None:
        """Set the MTU of ``ifname``."""
        if not 68 <= mtu <= 65535:
            raise ValueError(f"bad MTU {mtu}")
        self._ip("link", "set", "dev", check_ifname(ifname), "mtu", str(mtu))

    def route(self, dst: str, via: str) -> None:
        """Add/replace a route to ``dst`` (a lab network, never default) via a lab address."""
        self._ip("route", "replace", check_net(dst), "via", check_ip(via))

    def sysctl(self, key: str, value: str | int) -> None:
        """Set a sysctl inside the namespace (only namespaced keys make sense: net.*)."""
        if not re.match(r"^net\.[A-Za-z0-9_.\-/]+$", key):
            raise ValueError(f"refusing non-net sysctl {key!r}")
        self.run("sysctl", "-qw", f"{key}={value}", timeout=CMD_TIMEOUT)

    def ipv4(self, ifname: str) -> list[str]:
        """The IPv4 addresses (CIDR) on ``ifname``."""
        out = self.run("ip", "-4", "-o", "addr", "show", "dev", check_ifname(ifname)).stdout
        return re.findall(r"inet (\S+)", out)

    # -- nftables

    def nft(self, ruleset: str) -> None:
        """Load an nft script inside the namespace (``nft -f -``)."""
        self.run("nft", "-f", "-", input=ruleset.encode(), timeout=CMD_TIMEOUT)

    # -- reachability

    def ping(
        self,
        dst: str,
        count: int = 3,
        size: int | None = None,
        timeout: float = 10,
        dont_fragment: bool = False,
    ) -> bool:
        """Ping ``dst`` ``count`` times (0.2 s apart, 1 s reply wait); True if any reply came.

        ``size`` is the ICMP payload (``-s``); ``dont_fragment`` sets ``-M do``.
        """
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1"]
        if size is not None:
            argv += ["-s", str(size)]
        if dont_fragment:
            argv += ["-M", "do"]
        argv.append(check_ip(dst))
        try:
            res = self.run(*argv, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return res.returncode == 0

    def wait_ping(self, dst: str, timeout: float = 15.0) -> bool:
        """Single pings until one is answered (True) or ``timeout`` s pass (False)."""
        check_ip(dst)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.ping(dst, count=1, timeout=min(3.0, left + 0.5)):
                return True
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


class Switch(Host):
    """A namespace holding one bridge (an L2 segment, STP off). Created by :meth:`Lab.switch`.

    It is also a :class:`Host`, so e.g. ``sw.loss(port, 10)`` or ``sw.popen("tcpdump", ...)``
    work on its ports.
    """

    def __init__(self, lab: Lab, name: str, netns: str, bridge: str, index: int) -> None:
        super().__init__(lab, name, netns)
        self.bridge = bridge
        self.index = index
        self.subnet = ipaddress.IPv4Network(f"198.18.{index}.0/24")
        self.ports: list[str] = []
        self._next_host = 1

    def next_addr(self) -> str:
        """The next free automatic address on this segment, ``198.18.<index>.<N>/24``."""
        n = self._next_host
        if n > 254:
            raise LabError(f"switch {self.name}: out of automatic addresses")
        self._next_host += 1
        return f"{self.subnet.network_address + n}/{self.subnet.prefixlen}"


# ---------------------------------------------------------------- the lab


class Lab:
    """Creates namespaces, switches and links; tears everything down on close.

    Use as a context manager.  Teardown also runs at interpreter exit and on SIGTERM
    (the previous SIGTERM handler is restored and then invoked).
    """

    def __init__(self, run_id: str | None = None) -> None:
        if run_id is None:
            run_id = secrets.token_hex(3)
        if not _RUN_ID_RE.match(run_id):
            raise ValueError("run_id must be 1-6 chars of [0-9a-z]")
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces)")
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise LabError(f"the lab needs `{tool}` on PATH")
        self.run_id = run_id
        self.prefix = f"slv-{run_id}-"
        self.hosts: dict[str, Host] = {}
        self.errors: list[str] = []
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.RLock()
        self._dev_seq = 0
        self._switches = 0
        self._closed = False
        self._closing = False
        self._prev_sigterm: _SigHandler = None
        self._sig_installed = False
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread():
            self._prev_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
            self._sig_installed = True
        else:
            log.warning("lab %s: not in the main thread, no SIGTERM teardown", run_id)

    # -- context manager

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise LabError(f"lab {self.run_id} is closed")

    def _track(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.append(proc)

    def _untrack(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def _exec(
        self,
        argv: list[str],
        *,
        check: bool,
        timeout: float,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in its own session (tracked while it runs), bounded by ``timeout``."""
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._track(proc)
        try:
            try:
                out, err = proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired as e:
                terminate([proc], 0.5)
                raise subprocess.TimeoutExpired(argv, timeout) from e
            except BaseException:
                terminate([proc], 0.5)
                raise
        finally:
            self._untrack(proc)
            close_streams(proc)
        res = subprocess.CompletedProcess(
            argv, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )
        if check and res.returncode != 0:
            raise LabCommandError(res.returncode, argv, res.stdout, res.stderr)
        return res

    def _ifname(self, suffix: str) -> str:
        self._dev_seq += 1
        name = f"slv{self.run_id}-{self._dev_seq}{suffix}"
        if len(name) > IFNAMSIZ:
            raise LabError(f"interface name {name!r} longer than {IFNAMSIZ}")
        return name

    def _new_ns(self, name: str) -> str:
        self._check_open()
        if not _NAME_RE.match(name):
            raise ValueError(f"bad name {name!r}: 1-16 chars of [a-z0-9_], starting with a letter")
        if name in self.hosts:
            raise ValueError(f"name {name!r} already used in this lab")
        netns = f"{self.prefix}{name}"
        with self._lock:
            self._namespaces.append(netns)  # registered first: teardown covers partial setup
        self._exec(["ip", "netns", "add", netns], check=True, timeout=CMD_TIMEOUT)
        self._exec(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, timeout=CMD_TIMEOUT)
        return netns

    def _veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str, mtu: int) -> None:
        if not 68 <= mtu <= 65535:
            raise ValueError(f"bad MTU {mtu}")
        # Created inside ns_a with the peer placed straight into ns_b: never in the root ns.
        self._exec(
            ["ip", "-n", ns_a, "link", "add", if_a, "mtu", str(mtu), "type", "veth",
             "peer", "name", if_b, "mtu", str(mtu), "netns", ns_b],
            check=True, timeout=CMD_TIMEOUT,
        )  # fmt: skip

    # -- public API

    def host(self, name: str, forward: bool = False) -> Host:
        """Create a namespace ``slv-<run>-<name>`` with lo up and ip_forward=``forward``."""
        h = Host(self, name, self._new_ns(name))
        self.hosts[name] = h
        h.sysctl("net.ipv4.ip_forward", int(forward))
        return h

    def router(self, name: str) -> Host:
        """A host with ip_forward=1, to sit between segments."""
        return self.host(name, forward=True)

    def switch(self, name: str = "sw") -> Switch:
        """Create an L2 segment: a bridge (STP off) in its own namespace; its automatic
        addresses are 198.18.<k>.0/24 where k counts switches from 0."""
        if self._switches > 255:
            raise LabError("too many switches")
        netns = self._new_ns(name)
        br = self._ifname("br")
        sw = Switch(self, name, netns, br, self._switches)
        self._switches += 1
        self.hosts[name] = sw
        sw._ip("link", "add", br, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        sw._ip("link", "set", br, "up")
        return sw

    def connect(self, host: Host, sw: Switch, addr: str | None = AUTO, mtu: int = 1500) -> str:
        """Plug ``host`` into ``sw`` with a veth pair; return the host-side ifname.

        ``addr``: a 198.18/16 CIDR, :data:`AUTO` (next ``198.18.<k>.N/24`` of the switch) or
        None (interface up, no address).
        """
        if addr == AUTO:
            addr = sw.next_addr()
        elif addr is not None:
            addr = check_iface(addr, (UNDERLAY,))
        h_if, s_if = self._ifname("h"), self._ifname("s")
        self._veth(host.netns, h_if, sw.netns, s_if, mtu)
        sw._ip("link", "set", s_if, "master", sw.bridge)
        sw._ip("link", "set", s_if, "up")
        sw.ports.append(s_if)
        if addr is not None:
            host.addr(h_if, addr)
        else:
            host._ip("link", "set", h_if, "up")
        return h_if

    def link(self, a: Host, b: Host, addr_a: str, addr_b: str, mtu: int = 1500) -> tuple[str, str]:
        """A direct veth pair between ``a`` and ``b`` with 198.18/16 addresses; returns ifnames."""
        addr_a = check_iface(addr_a, (UNDERLAY,))
        addr_b = check_iface(addr_b, (UNDERLAY,))
        if_a, if_b = self._ifname("a"), self._ifname("b")
        self._veth(a.netns, if_a, b.netns, if_b, mtu)
        a.addr(if_a, addr_a)
        b.addr(if_b, addr_b)
        return if_a, if_b

    def nat(self, gw: Host, inside_if: str, outside_if: str, fully_random: bool = False) -> None:
        """Make ``gw`` a masquerading NAT: forwarding on, ``masquerade`` out of ``outside_if``,
        and only established/related traffic forwarded from outside to inside (table
        ``ip slv_nat``).  ``fully_random`` randomises source ports (symmetric-NAT-like)."""
        check_ifname(inside_if)
        check_ifname(outside_if)
        gw.sysctl("net.ipv4.ip_forward", 1)
        masq = "masquerade fully-random" if fully_random else "masquerade"
        gw.nft(
            "add table ip slv_nat\n"
            "add chain ip slv_nat nat_post { type nat hook postrouting priority srcnat; }\n"
            "add chain ip slv_nat nat_forward { type filter hook forward priority 0; }\n"
            f'add rule ip slv_nat nat_post oifname "{outside_if}" {masq}\n'
            f'add rule ip slv_nat nat_forward iifname "{outside_if}" oifname "{inside_if}" '
            "ct state established,related accept\n"
            f'add rule ip slv_nat nat_forward iifname "{outside_if}" oifname "{inside_if}" drop\n'
        )

    def namespaces(self) -> list[str]:
        """Namespaces of this lab that currently exist (per ``ip netns list``)."""
        res = self._exec(["ip", "netns", "list"], check=False, timeout=CMD_TIMEOUT)
        names = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
        return [n for n in names if n.startswith(self.prefix)]

    # -- teardown

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        log.warning("lab %s: SIGTERM, tearing down", self.run_id)
        prev = self._prev_sigterm
        self.close()  # restores the previous handler
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_DFL or prev is None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    def close(self) -> None:
        """Kill tracked processes, delete all namespaces of this run. Idempotent, never raises."""
        if self._closed or self._closing:
            return
        self._closing = True
        errors: list[str] = []
        try:
            with self._lock:
                procs = list(self._procs)
            try:
                errors += terminate(procs, TERM_GRACE)
            except Exception as e:
                errors.append(f"terminate: {e!r}")
            for p in procs:
                self._untrack(p)
                close_streams(p)
            with self._lock:
                namespaces = list(reversed(self._namespaces))
            try:
                namespaces += [n for n in self.namespaces() if n not in namespaces]
            except Exception as e:
                errors.append(f"ip netns list: {e!r}")
            for ns in namespaces:
                err = self._del_ns(ns)
                if err:
                    errors.append(err)
                with self._lock, contextlib.suppress(ValueError):
                    self._namespaces.remove(ns)
            if self._sig_installed:
                try:
                    if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                        signal.signal(signal.SIGTERM, self._prev_sigterm)
                    self._sig_installed = False
                except Exception as e:
                    errors.append(f"restore SIGTERM handler: {e!r}")
            with contextlib.suppress(Exception):
                atexit.unregister(self.close)
            self._closed = True
        except BaseException as e:  # never raise out of teardown
            errors.append(f"teardown interrupted: {e!r}")
        finally:
            self._closing = False
        for msg in errors:
            log.error("lab %s teardown: %s", self.run_id, msg)
        self.errors += errors

    def _del_ns(self, ns: str) -> str | None:
        last = ""
        for _ in range(5):
            try:
                res = self._exec(["ip", "netns", "del", ns], check=False, timeout=CMD_TIMEOUT)
            except Exception as e:
                last = repr(e)
            else:
                if res.returncode == 0 or not os.path.exists(f"/run/netns/{ns}"):
                    return None
                last = res.stderr.strip()
            time.sleep(0.2)
        return f"could not delete netns {ns}: {last}"
