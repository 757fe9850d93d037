"""Measured hop limits for hole punching (issue 24): how far our NAT is, how far theirs.

The punch's opener sends a datagram that must cross its own NAT (to open a mapping)
and must die before the far NAT (where, arriving unexpected, it would leave an
unreplied conntrack entry that moves the far side's mapping: ``docs/nat-behaviour.md``).
Two numbers decide it, both measured rather than guessed:

``k_min``: the smallest TTL that crosses our NAT. A Linux NAT n hops away forwards
(and maps) only a datagram that arrives with TTL >= 2, so k_min = n + 1. Measured
with a public peer we have a link with (the mediator) on a port-preserving NAT:

    us: socket k (k = 1..PROBE_TTLS) sends a datagram with TTL k to the mediator's
        UDP endpoint (a socket filter there drops it in the kernel: it is too short);
        only the ones with k >= k_min open a mapping on our NAT (public port = the
        socket's port: the NAT keeps ports)
    us -> mediator, control (authenticated):  {"t": "hopq", "n": nonce16, "p": [port_k...]}
    mediator -> our public address, port_k, from its UDP socket: ECHO(nonce, k)
        arrives only on sockets whose mapping exists; the smallest such k is k_min

``d_far``: the TTL at which a datagram reaches the far NAT's public address. Measured
traceroute-style from one more socket, to ports of the far NAT that are NOT the punch
port (``FAR_PORT`` + ttl: the punch tuple is never touched), with IP_RECVERR: routers
before it say "time exceeded" (ICMP 11), the NAT itself says "port unreachable" (ICMP
3) or nothing (a gateway that filters its input); d_far is the TTL of its answer, or
one past the last router that answered when it stays silent, provided a router beyond
our own NAT (TTL >= k_min) answered at all: where ICMP from beyond is filtered or rate
limited, silence says nothing about the far NAT's distance. A report is matched to its
probe by the destination port it was about (``FAR_PORT`` + ttl, the address the error
queue returns): routers that quote only the IP and UDP headers (RFC 792's minimum)
carry no payload to read it from.

A k_min of 1 (the echo crossed no NAT: a mediator on our own LAN, although the
mediator is chosen among the peers that see our public address) is not a
measurement: TTL 1 dies at a NAT, and the opener's TTL k_min - 1 would be 0.

The opener's TTL is then k_min when k_min < d_far. When d_far <= k_min (two NAT
gateways on one segment), no TTL that crosses our NAT stops before theirs: the plan
says so and its crosser waits until the entry the opener's datagram left on its NAT
expired (``UDP_UNREPLIED`` after the opening) instead of crossing into it at once.

Echo datagram (mediator -> us, UDP, unauthenticated transport: the nonce, sent over
the authenticated control channel, is what makes it believable)::

     0               4                              20      21
    +---------------+------------------------------+-------+
    | magic "SLHE"  |  nonce (16 bytes, per probe)  |   k   |
    +---------------+------------------------------+-------+

Sans-IO: codecs, bounds and the verdict; ``traversal.hopsock`` owns the sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAGIC = b"SLHE"
ECHO_LEN = 21
NONCE_LEN = 16
PROBE_TTLS = 4  # k_min probe sockets: our NAT within 3 hops (a deeper one is left unmeasured)
MAX_FAR = 8  # d_far probes: TTL 1..MAX_FAR
MAX_FAR_PROBES = 4  # d_far measurements (one socket each) at once; more attempts go unmeasured
FAR_PORT = 33434  # traceroute's base port: d_far probes go to FAR_PORT + ttl, never the punch port
MEASURE_TIME = 0.75  # s: answers later than this do not count (the opener waits this long)
KMIN_TIME = 1.5  # s: the mediator's echo (one control message + one datagram each way)
REMEASURE = 600.0  # s: k_min is re-measured this often (a host may move behind another NAT)
HOPQ_EVERY = 5.0  # s: a mediator answers one hopq per link this often (bounded echoes)
# Linux conntrack keeps an unreplied UDP entry nf_conntrack_udp_timeout = 30 s (the
# kernel default). The router cannot read the far NAT's value, so it assumes the
# default; the lab reads it from the far NAT's namespace and checks it.
UDP_UNREPLIED = 30.0
MARGIN = 2.0  # s: clock skew between the two sides' attempt starts, and a tick


def echo(nonce: bytes, k: int) -> bytes:
    return MAGIC + nonce + bytes([k])


def decode_echo(data: bytes, nonce: bytes) -> int | None:
    """k from an echo datagram with our nonce, None for anything else (to be counted)."""
    if len(data) != ECHO_LEN or data[:4] != MAGIC or data[4:20] != nonce:
        return None
    k = data[20]
    return k if 1 <= k <= PROBE_TTLS else None


def decode_hopq(m: dict[str, Any]) -> tuple[bytes, list[int]] | None:
    """(nonce, ports) of a ``hopq`` control message, None when malformed."""
    n, p = m.get("n"), m.get("p")
    if not (isinstance(n, bytes) and len(n) == NONCE_LEN and isinstance(p, list)
            and 1 <= len(p) <= PROBE_TTLS
            and all(type(x) is int and 1024 <= x < 65536 for x in p)):
        return None
    return n, p


@dataclass(frozen=True)
class Verdict:
    """What the measurement says for one attempt, and the TTL chosen from it."""

    k_min: int | None  # None: not measured (no mediator, not a port-keeping NAT, no echo)
    d_far: int | None  # None: not measured
    why: str

    @property
    def measured(self) -> bool:
        return self.k_min is not None

    @property
    def adjacent(self) -> bool:
        """No TTL that crosses our NAT stops before the far one."""
        return self.k_min is not None and self.d_far is not None and self.d_far <= self.k_min

    @property
    def ttl(self) -> int | None:
        return self.k_min

    def status(self) -> dict[str, Any]:
        return {"k_min": self.k_min, "d_far": self.d_far, "ttl": self.ttl, "why": self.why}


def verdict(k_min: int | None, k_why: str, d_far: int | None, far_why: str) -> Verdict:
    if k_min is not None and k_min <= 1:  # crossed no NAT: nothing to keep short of one
        k_min, k_why = None, f"TTL {k_min} reached the mediator: no NAT between"
    if k_min is None:
        return Verdict(None, d_far, f"not measured ({k_why}): hop limit guessed")
    if d_far is None:
        return Verdict(k_min, None, f"TTL {k_min} crosses our NAT; far NAT distance not "
                                    f"measured ({far_why})")
    if d_far <= k_min:
        return Verdict(k_min, d_far, f"far NAT adjacent: low TTL cannot avoid it (TTL {k_min} "
                                     f"crosses ours, theirs is {d_far} away); crossing after "
                                     f"its stale entry expires")
    return Verdict(k_min, d_far, f"TTL {k_min} crosses our NAT and expires before the far NAT "
                                 f"({d_far} hops, {far_why})")


def far_distance(answers: dict[int, tuple[str, int]], host: str,
                 sent: int, k_min: int | None) -> tuple[int | None, str]:
    """d_far from the ICMP answers to TTL 1..``sent`` probes: {ttl: (offender, type)}.

    The far NAT's own answer (any type: port unreachable, or a time exceeded sent by
    the NAT itself) gives it; else one past the last router that said time exceeded,
    provided nothing answered beyond it (a silent, filtering NAT) and that router is
    beyond our own NAT (TTL >= ``k_min``): answers from our side only say nothing
    about where the far NAT is (ICMP beyond may be filtered or rate limited).
    """
    own = [t for t, (src, _) in answers.items() if src == host]
    if own:
        return min(own), "it answered"
    te = [t for t, (_, typ) in answers.items() if typ == 11]
    if te and max(te) < sent and k_min is not None and max(te) >= k_min:
        return max(te) + 1, "silent; one past the last router that answered"
    if te and (k_min is None or max(te) < k_min):
        return None, "no answer from beyond our NAT"
    return None, "no answer" if not answers else "answers did not show it"
