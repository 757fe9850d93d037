"""Birthday-style spray: the last resort for a NAT that picks a random port per flow.

Prediction (``traversal.predict``) needs a NAT that counts; one that draws each new
flow's port at random (Linux ``masquerade fully-random``, ``docs/nat-behaviour.md``)
leaves nothing to predict. But when only one side's NAT does it, a birthday bound
still works: the hard side opens many mappings, the easy side (whose NAT keeps its
port, so its probes all leave from one known endpoint) probes many random ports of
the hard NAT, and one hit is enough::

    hard side (random NAT)                          easy side (port-keeping NAT)
    SOCKETS extra UDP sockets, each sends a
    hop-limited keepalive to the easy side's
    endpoint: SOCKETS random mappings open on
    our NAT, and the datagrams die before the      PROBES sealed heartbeats from our one
    far NAT (nothing there to spoil)               socket to random ports of the hard
                                                   NAT, PER_TICK a tick, from OPEN_TIME
          a probe that hits mapping j arrives on socket j: authenticated, the link
          keeps socket j (forward.underlay pins it); the others are closed

    P(hit) = 1 - (1 - SOCKETS / PORTS) ** PROBES      (128, 4096, 64512 ports: 0.9997)

Who is which comes from the ``cand`` messages: each side announces what its NAT is
(``"nat": kind`` from ``predict.classify``); a side whose NAT is ``random`` opens when
the other's keeps its port (``preserving`` or ``cone``), and the other sprays. Two
random NATs are not tried (the easy side's probes would each get a new random port).

Bounded: at most ``MAX_SPRAYS`` attempts spray or open at once per router, each
hard side holds ``SOCKETS`` sockets for at most one attempt (closed when it ends),
each easy side sends at most ``PROBES`` probes per attempt, ``PER_TICK`` per tick.
Every probe leaves a conntrack entry on the hard NAT (unreplied, 30 s) and one on the
easy NAT: ``PROBES`` each, well under a NAT's table (``nf_conntrack_max``).

Sans-IO: which ports, how many and when; ``traversal.punch`` and ``forward.underlay``
send and hold the sockets.
"""

from __future__ import annotations

import random

SOCKETS = 128  # hard side: extra sockets (fds, NAT mappings) per attempt
PROBES = 4096  # easy side: probes per attempt
PER_TICK = 512  # easy side: probes per 0.25 s tick (2048/s, 2 s for all)
KEEP_EVERY = 4.0  # s: the hard side refreshes its mappings (conntrack keeps them 30 s)
PORT_LO, PORT_HI = 1024, 65535  # where Linux NAT draws a random port for a port >= 1024
MAX_SPRAYS = 1  # attempts spraying or opening at once per router
EASY = ("preserving", "cone")
KINDS = ("unknown", "preserving", "cone", "sequential", "random")


def hit_chance(sockets: int = SOCKETS, probes: int = PROBES,
               ports: int = PORT_HI - PORT_LO + 1) -> float:
    """The chance that one of ``probes`` distinct random ports is one of ``sockets``."""
    miss = 1.0
    for i in range(probes):  # without replacement: each probe rules one port out
        left = ports - i
        if left <= sockets:
            return 1.0
        miss *= (left - sockets) / left
    return 1.0 - miss


def role(ours: str, theirs: str) -> str:
    """"open" (we are behind the random NAT), "probe" (the peer is) or "" (no spray)."""
    if ours == "random" and theirs in EASY:
        return "open"
    if ours in EASY and theirs == "random":
        return "probe"
    return ""


class Sprayer:
    """The easy side's probes in one attempt: distinct random ports, at a bounded rate."""

    def __init__(self, host: str, rng: random.Random | None = None) -> None:
        self.host = host
        self._ports = (rng or random.SystemRandom()).sample(range(PORT_LO, PORT_HI + 1),
                                                            PROBES)
        self.sent = 0

    def next(self) -> list[int]:
        """The ports to probe this tick (none once all PROBES went)."""
        out = self._ports[self.sent:self.sent + PER_TICK]
        self.sent += len(out)
        return out

    def probed(self, port: int) -> bool:
        return port in self._ports[:self.sent]

    def describe(self) -> str:
        return f"sprayed {self.sent} of {PROBES} probes to random ports of {self.host}"
