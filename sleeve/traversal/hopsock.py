"""The sockets of the hop-limit measurement (``traversal.hops``): probes, echoes, ICMP.

Everything here is bounded: ``hops.PROBE_TTLS`` k_min sockets and at most
``hops.MAX_FAR_PROBES`` d_far sockets per router at a time, a fixed number of
datagrams per measurement, each read drained only until EAGAIN and at most
``MAX_READS`` datagrams, every socket closed when its measurement ends (or the
router stops: ``HopMeter.close``). What arrives is untrusted: an echo without our
nonce, or from elsewhere than the mediator, is dropped and counted (``hop_bad_echo``,
``hop_echo_wrong_source``); an ICMP report that is not about one of our probes is
ignored (``hop_bad_icmp``). A far host that is not an IPv4 literal (``relay``, or
whatever a mediator put in a ``via`` message's ``ep``) is never probed: a name would
be resolved on the loop (``hop_far_not_an_address``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from sleeve.forward.underlay import is_ip_literal
from sleeve.proto.stats import Counters
from sleeve.traversal import hops
from sleeve.traversal.candidates import Endpoint
from sleeve.traversal.predict import NatKind

log = logging.getLogger("sleeve")

IP_RECVERR = 11  # linux/in.h (Python's socket module lacks it)
MSG_ERRQUEUE = 0x2000
SO_EE_ORIGIN_ICMP = 2
_EE = struct.Struct("=IBBBBII")  # struct sock_extended_err, then the offender's sockaddr_in
FAR_MAGIC = b"SLHF"
MAX_READS = 32  # datagrams or error reports read per socket per poll
RECHECK = 1.0  # s: how often an unmeasurable k_min (no public peer, NAT kind) is re-checked


class Control(Protocol):
    peer: bytes
    endpoint: tuple[str, int]
    endpoint_learnt: bool
    virtual: bool
    usable: bool

    def send_control(self, m: dict[str, Any]) -> None: ...


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("0.0.0.0", 0))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def _send_ttl(s: socket.socket, data: bytes, ep: tuple[str, int], ttl: int) -> None:
    cmsg = [(socket.IPPROTO_IP, socket.IP_TTL, struct.pack("i", ttl))]
    # With IP_RECVERR an ICMP answer to the previous probe (it can come back before the
    # next send: one hop away, or namespaces on one host) is also reported as the
    # socket's pending error, which fails the next send instead of sending it (every
    # second probe went missing in the lab). That failure consumed it: send again.
    for _ in range(2):
        try:
            s.sendmsg([data], cmsg, 0, ep)
            return
        except OSError:
            continue  # a pending error, or unreachable now: that probe gets no answer


class KminProbe:
    """One k_min measurement: PROBE_TTLS sockets, one echo request to the mediator."""

    def __init__(self, mediator: Control, now: float, drops: Counters) -> None:
        self.mediator = mediator.peer
        self.host = mediator.endpoint[0]
        self.started = now
        self.drops = drops
        self.nonce = os.urandom(hops.NONCE_LEN)
        self.socks: list[socket.socket] = []
        self.got: set[int] = set()
        try:
            for _ in range(hops.PROBE_TTLS):
                self.socks.append(_udp())
        except OSError:
            self.close()
            raise
        for k, s in enumerate(self.socks, 1):
            _send_ttl(s, b"\0" * 8, mediator.endpoint, k)  # too short: dropped there, in-kernel
        self.ports = [s.getsockname()[1] for s in self.socks]
        self.asked = False

    def ask(self, mediator: Control) -> None:
        """After a tick (the probes crossed our NAT first): ask for the echoes."""
        mediator.send_control({"t": "hopq", "n": self.nonce, "p": self.ports})
        self.asked = True

    def poll(self) -> None:
        for k, s in enumerate(self.socks, 1):
            for _ in range(MAX_READS):
                try:
                    data, src = s.recvfrom(64)
                except OSError:  # EAGAIN (drained) or a queued error: nothing more now
                    break
                if src[0] != self.host:
                    self.drops.inc("hop_echo_wrong_source")
                elif hops.decode_echo(data, self.nonce) != k:
                    self.drops.inc("hop_bad_echo")
                else:
                    self.got.add(k)

    def done(self, now: float) -> bool:
        return now - self.started >= hops.KMIN_TIME or (
            bool(self.got) and now - self.started >= hops.MEASURE_TIME)

    def result(self) -> tuple[int | None, str]:
        if self.got:
            return min(self.got), f"echo from the mediator on TTL {sorted(self.got)}"
        return None, "no echo from the mediator"

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []


class FarProbe:
    """One d_far measurement: TTL 1..MAX_FAR to the far NAT, ICMP read via IP_RECVERR."""

    def __init__(self, host: str, now: float, drops: Counters) -> None:
        self.host = host
        self.started = now
        self.drops = drops
        self.answers: dict[int, tuple[str, int]] = {}
        self.sock = _udp()
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        except OSError:
            self.close()
            raise
        for t in range(1, hops.MAX_FAR + 1):
            _send_ttl(self.sock, FAR_MAGIC + bytes([t]), (host, hops.FAR_PORT + t), t)

    def poll(self) -> None:
        if self.sock.fileno() < 0:
            return
        for _ in range(MAX_READS):
            try:
                _data, anc, _flags, addr = self.sock.recvmsg(64, 512, MSG_ERRQUEUE)
            except OSError:
                break
            # the probe it is about, from the destination port the error queue returns:
            # a router may quote only the IP and UDP headers (no payload to read it from)
            t = addr[1] - hops.FAR_PORT if isinstance(addr, tuple) and len(addr) >= 2 \
                and addr[0] == self.host else 0
            rep = next((d for lvl, typ, d in anc
                        if lvl == socket.IPPROTO_IP and typ == IP_RECVERR), b"")
            if not 1 <= t <= hops.MAX_FAR or len(rep) < _EE.size + 8:
                self.drops.inc("hop_bad_icmp")
                continue
            _errno, origin, typ, _code, _pad, _info, _data = _EE.unpack_from(rep)
            if origin != SO_EE_ORIGIN_ICMP:
                continue  # a local error (e.g. no route): no hop answered
            src = socket.inet_ntoa(rep[_EE.size + 4:_EE.size + 8])
            self.answers.setdefault(t, (src, typ))
        for _ in range(MAX_READS):  # a datagram back (something listens there): not used
            try:
                self.sock.recv(64)
            except OSError:
                break

    def result(self, k_min: int | None) -> tuple[int | None, str]:
        return hops.far_distance(self.answers, self.host, hops.MAX_FAR, k_min)

    @property
    def open(self) -> bool:
        return self.sock.fileno() >= 0

    def close(self) -> None:
        self.sock.close()


class Echoer:
    """The mediator's side: echo a linked peer's probes to the address we see it at."""

    def __init__(self, drops: Counters, stats: Counters) -> None:
        self.drops, self.stats = drops, stats
        self.last: dict[bytes, float] = {}  # peer -> when we last echoed (bounded below)

    def on_hopq(self, link: Control, m: dict[str, Any], sock: socket.socket | None,
                now: float | None = None) -> None:
        q = hops.decode_hopq(m)
        if q is None:
            self.drops.inc("bad_hopq")
            return
        now = time.monotonic() if now is None else now
        if now - self.last.get(link.peer, -hops.HOPQ_EVERY) < hops.HOPQ_EVERY:
            self.drops.inc("hopq_rate")
            return
        if len(self.last) >= 256:  # forget the quiet ones: one entry per recent asker
            self.last = {p: t for p, t in self.last.items() if now - t < hops.HOPQ_EVERY}
        self.last[link.peer] = now
        host = link.endpoint[0]
        if sock is None or ":" in host or not link.endpoint_learnt:
            self.drops.inc("hopq_no_socket")
            return
        nonce, ports = q
        # only to the address this (authenticated) peer's datagrams come from: a member
        # cannot aim echoes at another host
        for k, port in enumerate(ports, 1):
            with contextlib.suppress(OSError):
                sock.sendto(hops.echo(nonce, k), (host, port))
        self.stats.inc("hopq_echoed")


class HopMeter:
    """Our k_min, measured now and then with a linked public peer; d_far per attempt.

    Measures only behind a NAT that keeps ports (``predict``: "preserving"), with a
    mediator whose ``seen`` report shows our public NAT address (the one the NAT
    classification goes by: a peer on our LAN sees us without the NAT, and its echo
    would give k_min 1). The mediator echoes to the probe sockets' own port numbers.
    Elsewhere (no such peer, another NAT kind, an old mediator that does not echo)
    k_min stays unknown and the punch keeps its guessed hop limits. A k_min belongs to
    the NAT it was measured on: when the NAT's kind or our public address changes, or
    a re-measurement fails, it is forgotten (and measured again where it can be).
    """

    def __init__(self, drops: Counters, stats: Counters,
                 udp: Any = lambda: None) -> None:
        self.drops, self.stats = drops, stats
        self.echoer = Echoer(drops, stats)
        self._udp = udp  # () -> our IPv4 UDP socket (the echoes leave from it)
        self.k_min: int | None = None
        self.why = "no measurement yet"
        self.next_at = 0.0
        self.check_at = 0.0  # when a measured k_min's NAT is next compared with ours
        self.basis: tuple[str, str] | None = None  # (NAT kind, public address) of k_min
        self._probe_basis: tuple[str, str] = ("", "")
        self.probe: KminProbe | None = None
        self.fars: list[FarProbe] = []  # open d_far probes (at most hops.MAX_FAR_PROBES)

    @property
    def measuring(self) -> bool:
        return self.probe is not None

    def on_hopq(self, link: Any, m: dict[str, Any]) -> None:
        self.echoer.on_hopq(link, m, self._udp())

    def tick(self, now: float, nat: Callable[[], NatKind], links: Any,
             seen: Mapping[bytes, tuple[str, Endpoint]]) -> None:
        """Follow a measurement in progress; start one when due (``nat`` is asked only
        then, or every RECHECK while a k_min is held: classifying walks the links).
        ``seen``: peer -> (its address, where it sees our UDP endpoint)."""
        p = self.probe
        if p is not None:
            med = next((lk for lk in links if lk.peer == p.mediator), None)
            if med is None:
                self._finish(now, None, "the mediator's link went away")
            elif not p.asked:
                p.ask(med)
            else:
                p.poll()
                if p.done(now):
                    self._finish(now, *p.result())
            return
        if now < self.next_at and (self.k_min is None or now < self.check_at):
            return
        kind = nat()
        basis = (kind.kind, kind.observed[0][0] if kind.observed else "")
        if self.k_min is not None:
            self.check_at = now + RECHECK
            if basis == self.basis and now < self.next_at:
                return
            if basis != self.basis:  # measured on another NAT (or address): not ours now
                self.stats.inc("hop_nat_changed")
                self.k_min, self.basis = None, None
        if kind.kind != "preserving":
            self.why = f"our NAT is {kind.kind}, not port-keeping"
            self.next_at = now + RECHECK
            return
        med = next((lk for lk in sorted(links, key=lambda lk: lk.peer) if not lk.virtual
                    and lk.usable and lk.endpoint_learnt and ":" not in lk.endpoint[0]
                    and (s := seen.get(lk.peer)) is not None and s[1][0] == basis[1]), None)
        if med is None:
            self.why = "no public peer linked to echo our probes"
            self.next_at = now + RECHECK
            return
        try:
            self.probe = KminProbe(med, now, self.drops)
        except OSError as e:
            self.stats.inc("hop_socket_errors")
            self._finish(now, None, f"cannot open probe sockets: {e.strerror}")
            return
        self._probe_basis = basis
        self.stats.inc("hop_measurements")

    def _finish(self, now: float, k: int | None, why: str) -> None:
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        if k is not None and k <= 1:  # the echo crossed no NAT: not our NAT's distance
            k, why = None, f"TTL {k} reached the mediator: no NAT between"
        # a failed re-measurement forgets the last value: it may be another NAT's
        self.k_min, self.why = k, why
        self.basis = self._probe_basis if k is not None else None
        self.check_at = now + RECHECK
        # a failure is retried sooner; both bounded: one probe set per REMEASURE / 60 s
        self.next_at = now + (hops.REMEASURE if k is not None else 60.0)

    def decide(self, far: FarProbe | None, age: float) -> hops.Verdict | None:
        """An attempt's verdict ``age`` s in, from k_min and its d_far probe; None: wait
        (at most hops.MEASURE_TIME: for the far NAT's answer, or our k_min echo)."""
        if far is not None:
            far.poll()
            if far.host not in (a[0] for a in far.answers.values()) and (
                    age < hops.MEASURE_TIME):
                return None  # the far NAT may yet answer (or stay quiet: a filtering one)
        elif self.probe is not None and age < hops.MEASURE_TIME:
            return None
        d, dwhy = far.result(self.k_min) if far is not None else (
            None, "no k_min to compare with")
        if far is not None:
            log.info("hop limit: far NAT %s answers %s", far.host, sorted(far.answers.items()))
        v = hops.verdict(self.k_min, self.why, d, dwhy)
        if v.k_min is not None:
            self.stats.inc("punch_hops_measured")
            if v.adjacent:
                self.stats.inc("punch_far_nat_adjacent")
        return v

    def start_far(self, host: str, now: float) -> FarProbe | None:
        """A d_far probe toward the far NAT, when there is a k_min to compare it with."""
        if self.k_min is None and self.probe is None:
            return None
        if ":" in host or not is_ip_literal(host):
            # "relay" (the mediator never saw the peer's UDP) or whatever a mediator put
            # in "ep": a name would be resolved (blocking the loop) and probed
            self.drops.inc("hop_far_not_an_address")
            return None
        self.fars = [f for f in self.fars if f.open]
        if len(self.fars) >= hops.MAX_FAR_PROBES:
            self.stats.inc("hop_far_busy")  # this attempt goes without d_far
            return None
        try:
            far = FarProbe(host, now, self.drops)
        except OSError:
            self.stats.inc("hop_socket_errors")
            return None
        except Exception as e:  # never out of the timer: every later per-tick job would stop
            self.drops.inc("hop_far_failed")
            log.warning("hop limit: cannot probe %r: %s", host, type(e).__name__)
            return None
        self.fars.append(far)
        return far

    def close(self) -> None:
        """The router stops: every probe socket closes."""
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        for f in self.fars:
            f.close()
        self.fars = []

    def status(self) -> dict[str, Any]:
        return {"k_min": self.k_min, "why": self.why, "measuring": self.measuring}
