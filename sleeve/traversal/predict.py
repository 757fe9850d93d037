"""Port prediction for NATs that change ports: what peers see of us, and what follows.

A NAT that allocates a new public port for every new flow (many consumer NATs count
up: ``docs/nat-behaviour.md``) gives the mapping a punch needs a port nobody has
seen yet. But the ports it gave our earlier flows tell where it is counting. Every
peer that hears an authenticated datagram from us tells us, over its (encrypted,
authenticated) control connection, the UDP source it sees::

    {"t": "seen", "ep": [host str, port int]}
         host: an IPv4/IPv6 address literal; port 1..65535
         sent once a link's endpoint is learnt, and again when it moves

With at least two observers at different addresses, ``classify`` tells our NAT's
behaviour apart::

    an observer (one is enough) sees our own port ......... "preserving"
    all see one other port ................................ "cone" (one mapping)
    distinct ports, consecutive in steps of at most MAX_DELTA "sequential" -> Prediction
    anything else ......................................... "random"

Behind a sequential NAT we announce the prediction in the punching attempt's
``cand`` message (end-to-end encrypted over the relayed control connection)::

    "pred": [host str, last int, delta int]
         last: the highest port an observer saw (1..65535); delta: 1..MAX_DELTA

and open our NAT first (the plan's opener: hop-limited, so nothing reaches the far
NAT); the other side crosses to every port of ``Prediction.ports()``: the next
``WINDOW`` steps past ``last`` (and each port in between, since other flows through
the NAT, ours or our neighbours', take ports too), at most ``MAX_PROBES``. A bad
``seen`` or ``pred`` is dropped and counted (``bad_seen``, ``bad_cand``).

Sans-IO: no sockets, no clock; ``traversal.punch`` sends and receives.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any

from sleeve.traversal import candidates
from sleeve.traversal.candidates import Endpoint

MAX_DELTA = 16  # larger steps between observed ports are not a counter we can follow
WINDOW = 8  # steps past the last observed port the far side probes
MAX_PROBES = 32  # ports probed per crossing round (each is one datagram per tick)
MAX_OBSERVERS = 16  # observations kept: the newest links' (bounded memory)


@dataclass(frozen=True)
class Prediction:
    """Where our NAT's next mappings will be: ``last`` + ``delta`` * k on ``host``."""

    host: str
    last: int
    delta: int

    def ports(self) -> list[int]:
        """The ports the far side probes, most likely first (never past 65535)."""
        span = min(self.delta * WINDOW, MAX_PROBES)
        steps = [self.last + self.delta * k for k in range(1, WINDOW + 1)]
        between = [self.last + i for i in range(1, span + 1)]
        out = list(dict.fromkeys(p for p in steps + between if p <= 65535))
        return out[:MAX_PROBES]

    def endpoints(self) -> list[Endpoint]:
        return [(self.host, p) for p in self.ports()]

    def describe(self) -> str:
        ports = self.ports()
        span = f"{ports[0]}..{max(ports)}" if ports else "none"
        return f"{self.host} ports {span} (last seen {self.last}, step {self.delta})"

    def encode(self) -> list[Any]:
        return [self.host, self.last, self.delta]


@dataclass(frozen=True)
class NatKind:
    """Our NAT's behaviour as the observations show it."""

    kind: str  # "unknown", "preserving", "cone", "sequential", "random"
    prediction: Prediction | None = None
    observed: tuple[Endpoint, ...] = ()

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind,
                "observed": [f"{h}:{p}" for h, p in self.observed],
                "prediction": self.prediction.describe() if self.prediction else None}


def classify(local_port: int, observations: Iterable[tuple[str, Endpoint]],
             own: Container[str] = ()) -> NatKind:
    """Our NAT's behaviour from (observer's address, the endpoint it saw for us) pairs.

    Only the public address most observers saw counts, and only one observation per
    observer address (a new flow needs a new destination). Fewer than two: unknown,
    unless the one kept our own port. Observations of one of our ``own`` addresses (a
    peer on our LAN sees us without a NAT) and IPv6 ones (no NAT; spray and prediction
    are IPv4) are left out: they would outvote the public observers.
    """
    by_host: dict[str, dict[str, int]] = {}
    for observer, (host, port) in observations:
        if host in own or ":" in host:
            continue
        by_host.setdefault(host, {})[observer] = port
    if not by_host:
        return NatKind("unknown")
    host, seen = max(by_host.items(), key=lambda kv: (len(kv[1]), kv[0]))
    observed = tuple(sorted((host, p) for p in seen.values()))
    ports = sorted(set(seen.values()))
    if local_port in ports:
        # A NAT that kept our own port for one flow keeps ports (a random or counting
        # one would hit ours once in 64512); Linux moves a kept port only where the
        # tuple clashes, e.g. a peer's datagram reached the NAT first (one observer
        # then sees another port), and keeps it for new destinations.
        return NatKind("preserving", None, observed)
    if len(seen) < 2:  # one flow says nothing about the next
        return NatKind("unknown", None, observed)
    if len(ports) == 1:
        return NatKind("cone", None, observed)
    steps = [b - a for a, b in itertools.pairwise(ports)]
    if max(steps) > MAX_DELTA:
        return NatKind("random", None, observed)
    return NatKind("sequential", Prediction(host, ports[-1], min(steps)), observed)


def decode_seen(m: dict[str, Any]) -> Endpoint | None:
    """The endpoint of a ``seen`` message, or None when it is malformed.

    Any address literal is well formed (peers on one host see loopback); only the
    public ones tell something about a NAT, and ``classify`` groups them by address.
    """
    e = m.get("ep")
    if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and len(e[0]) <= 45
            and type(e[1]) is int and 0 < e[1] < 65536):
        return None
    try:
        return (str(ipaddress.ip_address(e[0])), e[1])
    except ValueError:
        return None


def decode_pred(m: dict[str, Any]) -> Prediction | bool | None:
    """A ``cand`` message's prediction: None when absent, False when malformed."""
    if "pred" not in m:
        return None
    p = m["pred"]
    if not (isinstance(p, list) and len(p) == 3 and type(p[1]) is int and type(p[2]) is int
            and 0 < p[1] < 65536 and 0 < p[2] <= MAX_DELTA):
        return False
    eps = candidates.decode({"eps": [[p[0], p[1]]]})
    if not eps:
        return False
    return Prediction(eps[0][0], p[1], p[2])


class Observations:
    """What each linked peer says it sees of our UDP endpoint, and what we told each."""

    def __init__(self) -> None:
        self.seen: dict[bytes, tuple[str, Endpoint]] = {}  # peer -> (its address, our ep)
        self.told: dict[bytes, Endpoint] = {}  # peer -> the endpoint we last told it

    def on_seen(self, peer: bytes, observer: str, ep: Endpoint) -> None:
        self.seen.pop(peer, None)
        self.seen[peer] = (observer, ep)
        while len(self.seen) > MAX_OBSERVERS:  # the oldest goes
            del self.seen[next(iter(self.seen))]

    def to_tell(self, peer: bytes, endpoint: Endpoint) -> bool:
        """Whether ``peer`` must hear (again) where we see it; notes that it will."""
        if self.told.get(peer) == endpoint:
            return False
        self.told[peer] = endpoint
        return True

    def forget(self, peer: bytes, still_linked: bool = False) -> None:
        """A link to ``peer`` went; ``still_linked``: another link to it replaced it."""
        if not still_linked:
            self.seen.pop(peer, None)
        self.told.pop(peer, None)  # the new link (if any) hears it again

    def nat(self, local_port: int, own: Container[str] = ()) -> NatKind:
        return classify(local_port, self.seen.values(), own)
