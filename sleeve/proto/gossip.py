"""Gossip channels: the contract between a channel's state and the router that moves it.

A *channel* (topology, IPAM ring, DNS names, ...) owns mergeable state and implements
``Gossiper``; the router (``sleeve.gossip.router.GossipRouter``) owns the control
connections and hands each channel a ``Gossip`` handle when it is registered. The
pattern is weaveworks/mesh's Gossiper, with three differences:

- ``on_gossip`` is told which neighbour sent the message (its identity was proven in
  the handshake), and ``on_broadcast``/``on_unicast`` are told the origin, whose
  signature over the envelope the router has already checked: a channel never sees a
  message whose claimed origin is not authenticated;
- a channel refuses a message by raising ``GossipRefused(reason)``; the router counts
  the reason per channel (``status``/metrics) and nothing else happens;
- ``now`` comes in as an argument: channels are sans-IO and run on fake clocks in tests.

All callbacks run on the event loop, one at a time: a channel needs no locks.

What the router does with each return value:

- ``gossip()``: the channel's complete state, sent to a new neighbour and, at the
  jittered anti-entropy period, to every neighbour; None when there is nothing. (A
  channel may send a digest instead and answer what the neighbour asks for through
  ``Gossip.reply``: the topology does, ``proto.topodigest``);
- ``on_gossip(src, msg, now)``: the delta (what was new to us); the router sends it to
  every neighbour but ``src``; None when nothing was new (gossip stops here, so a
  change crosses each link about once). A delta that is also ``PerNeighbour`` says,
  per neighbour, what of it that neighbour still needs (``for_neighbour``): the
  topology leaves out records their owner has already sent to that neighbour itself;
- ``on_broadcast(origin, msg, now)``: the router passes the origin's signed message
  on, verbatim, down the origin's broadcast tree whatever this returns; the return
  value says whether it changed anything (for counters);
- ``on_unicast(src, msg, now)``: a message addressed to us; replies go back with
  ``Gossip.unicast``;
- ``peer_gone(peer)``: the topology forgot ``peer`` (unreachable for a while).

``GossipData`` is what waits to be sent on one link: while a slow link's control
connection is backed up, newer data for the same (link, channel) is merged into what
is waiting, so the link gets one merged message instead of a growing queue.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable


class GossipRefused(Exception):
    """A channel refuses a message; ``reason`` is counted (short snake_case words)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class GossipData(Protocol):
    def encode(self) -> list[bytes]:
        """The data as one or more messages, each within the channel's size bound."""
        ...

    def merge(self, other: GossipData) -> GossipData:
        """This data and ``other`` together (may return self, updated)."""
        ...


@runtime_checkable
class PerNeighbour(Protocol):
    """Optional on a delta: the part of it neighbour ``peer`` needs (None: nothing)."""

    def for_neighbour(self, peer: bytes) -> GossipData | None: ...


class Gossiper(Protocol):
    def gossip(self) -> GossipData | None: ...

    def on_gossip(self, src: bytes, msg: bytes, now: float) -> GossipData | None: ...

    def on_broadcast(self, origin: bytes, msg: bytes, now: float) -> bool: ...

    def on_unicast(self, src: bytes, msg: bytes, now: float) -> None: ...

    def peer_gone(self, peer: bytes) -> None: ...


class Gossip(Protocol):
    """A channel's handle on the router (returned by ``GossipRouter.register``)."""

    def unicast(self, dst: bytes, msg: bytes) -> bool:
        """Send ``msg`` to peer ``dst`` hop by hop over the mesh; False: no route now."""
        ...

    def broadcast(self, msg: bytes) -> None:
        """Send ``msg`` (signed as ours) to every reachable peer down our broadcast tree."""
        ...

    def neighbours(self, data: GossipData) -> None:
        """Gossip ``data`` to every direct neighbour (merged with what waits for each)."""
        ...

    def reply(self, peer: bytes, data: GossipData) -> None:
        """Gossip ``data`` to the direct neighbour ``peer`` only (a digest's answer);
        nothing if it is no longer a neighbour."""
        ...


class Chunks:
    """The simplest GossipData: already-encoded messages; merge appends (bounded)."""

    __slots__ = ("msgs",)

    def __init__(self, msgs: Iterable[bytes]) -> None:
        self.msgs = list(msgs)

    def encode(self) -> list[bytes]:
        return list(self.msgs)

    def merge(self, other: GossipData) -> GossipData:
        self.msgs += other.encode()
        return self
