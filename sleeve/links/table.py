"""The link table: which peers we have a link to, by peer id and by session index.

It decides which of two connections to the same peer survives (both ends must choose
the same one), and it tells the other parts when a link comes up or goes down through
subscribed callbacks, so nobody needs to poll it. It also owns each link's liveness:
every tick it tells the peer whether we hear its datagrams, moves our data to TCP and
back, keeps a control heartbeat going and refreshes ``link.usable`` (which the hot
path reads instead of computing the state per frame).

Control messages it handles: ``udp_ok`` / ``udp_lost`` (the peer does / no longer does
hear our datagrams) and ``hb`` (control heartbeat; its arrival is what counts, and
``"n": 1`` asks for ours while the sender lacks UDP, ``proto.liveness``). A connection the
kernel watches (``link.tcp_keepalive``) is closed here after ``CONTROL_SILENCE`` without a
datagram or a control message; the others by control.connections' read timeout.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

from sleeve.links.link import UDP_DEAD, Link
from sleeve.proto import liveness
from sleeve.proto.stats import Counters

log = logging.getLogger("sleeve")

TCP_HEARTBEAT = liveness.CONTROL_HEARTBEAT  # while needed (proto.liveness.control_heartbeat)
TCP_FALLBACK_AFTER = 3.0  # peer still hears no UDP from us: carry data over TCP

LinkEvent = Callable[[Link], None]


class LinkTable:
    def __init__(self, me: bytes, stats: Counters) -> None:
        self.me = me
        self.stats = stats
        self.links: dict[bytes, Link] = {}
        self.by_index: dict[int, Link] = {}
        self._up: list[LinkEvent] = []
        self._down: list[LinkEvent] = []

    # -- subscriptions ------------------------------------------------------------------
    def on_up(self, fn: LinkEvent) -> None:
        """``fn(link)`` after a link is registered (in subscription order)."""
        self._up.append(fn)

    def on_down(self, fn: LinkEvent) -> None:
        """``fn(link)`` after a link left the table (it may be replaced by a newer one)."""
        self._down.append(fn)

    # -- lookups ------------------------------------------------------------------------
    def get(self, peer: bytes) -> Link | None:
        return self.links.get(peer)

    def __contains__(self, peer: object) -> bool:
        return peer in self.links

    def __iter__(self) -> Iterator[Link]:
        return iter(list(self.links.values()))

    def __len__(self) -> int:
        return len(self.links)

    def new_index(self) -> int:
        """A fresh receiver index for a new data session (never 0, never in use)."""
        while True:
            i = random.getrandbits(32)
            if i and i not in self.by_index:
                return i

    # -- registration -------------------------------------------------------------------
    def register(self, link: Link) -> bool:
        """Add ``link``; False when an existing connection to the same peer wins."""
        old = self.links.get(link.peer)
        if old is not None:
            # Both ends must make the same choice. A restarted peer (new uid) or the same
            # side dialling again means the old connection is stale; a direct connection
            # beats a relayed (hole-punching) one; of two simultaneous connections, keep
            # the one dialled by the peer with the smaller id.
            def initiator_id(lk: Link) -> bytes:
                return self.me if lk.outbound else lk.peer
            if link.uid != old.uid or initiator_id(link) == initiator_id(old):
                keep_new = True
            elif link.virtual != old.virtual:
                keep_new = old.virtual
            else:
                keep_new = initiator_id(link) < initiator_id(old)
            if not keep_new:
                log.info("duplicate connection to %s dropped", link.name)
                return False
            log.info("duplicate connection to %s replaces the older one", link.name)
            self.unregister(old)
            old.writer.close()
        self.links[link.peer] = link
        self.by_index[link.session.local_index] = link
        for fn in self._up:
            fn(link)
        return True

    def unregister(self, link: Link) -> None:
        self.by_index.pop(link.session.local_index, None)
        if self.links.get(link.peer) is link:
            del self.links[link.peer]
            for fn in self._down:
                fn(link)

    def close_all(self) -> None:
        for link in list(self.links.values()):
            link.writer.close()

    # -- liveness -----------------------------------------------------------------------
    def on_control(self, link: Link, m: dict[str, Any]) -> None:
        t = m["t"]
        if t == "udp_ok":
            link.confirmed = True
        elif t == "udp_lost":
            link.confirmed = False

    def tick(self, now: float) -> None:
        for link in list(self.links.values()):
            self._udp_or_tcp(link, now)
            link.usable = link.state == "established"
            if (link.tcp_keepalive and not link.silenced and now - max(
                    link.heard_at, link.tcp_heard_at) >= liveness.CONTROL_SILENCE):
                # without a kernel-watched connection, control.connections' read timeout does this
                log.warning("closing the connection to %s: nothing over UDP or TCP for %.0fs",
                            link.name, liveness.CONTROL_SILENCE)
                self.stats.inc("control_silent")
                link.silenced = True
                link.writer.transport.abort()  # close() would wait for a peer that hangs

    def _udp_or_tcp(self, link: Link, now: float) -> None:
        """Tell the peer whether we hear its UDP; fall back to TCP while it hears none of ours."""
        t = liveness.transport(now, heard_at=link.heard_at, told_ok=link.told_ok,
                               confirmed=link.confirmed, established_at=link.established_at,
                               virtual=link.virtual, dead_after=UDP_DEAD,
                               tcp_after=TCP_FALLBACK_AFTER)
        if t.send_udp_lost:
            link.told_ok = False
            link.send_control({"t": "udp_lost"})
        fallback = t.over_tcp
        if fallback != link.over_tcp:
            link.over_tcp = fallback
            log.info("link to %s: data now over %s", link.name, "TCP" if fallback else "UDP")
            self.stats.inc("tcp_fallbacks" if fallback else "udp_recoveries")
        if now >= link.next_tcp_hb:  # then re-asked each tick until one is sent
            beat = liveness.control_heartbeat(now, kernel_keepalive=link.tcp_keepalive,
                                              heard_at=link.heard_at, confirmed=link.confirmed,
                                              over_tcp=link.over_tcp, asked_at=link.hb_asked_at)
            if beat.send:
                link.next_tcp_hb = now + TCP_HEARTBEAT
                link.send_control({"t": "hb", "n": 1} if beat.need else {"t": "hb"})
        link.rekey_tick(now)

    def heard(self, link: Link, now: float) -> None:
        """An authenticated datagram arrived on ``link``: tell the peer once that we hear it."""
        link.heard_at = now
        if not link.told_ok:
            link.told_ok = True
            link.send_control({"t": "udp_ok"})

    def status(self) -> list[dict[str, Any]]:
        return [lk.status() for lk in self.links.values()]

