"""One authenticated peer: its control connection, its data session and its path state.

A ``Link`` is plain state shared by the parts that act on it; it does no I/O of its own
except writing control messages to its connection (``send_control``). Who writes what:

- ``links.table``: created, registered, unregistered; liveness (``confirmed``,
  ``told_ok``, ``over_tcp``, ``usable``, ``tcp_heard_at``);
- ``forward.underlay``: the endpoint's socket family, GSO proof state, tx counters;
- ``forward.ingress``: ``heard_at``, the learnt endpoint, reassembly and segment sets;
- ``forward.egress``: ``pending`` records, heartbeats, PMTU probes;
- ``gossip.router``: per-channel pending gossip and the anti-entropy deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from typing import Any, Protocol

from sleeve.config import Target
from sleeve.crypto.keys import format_peer_id
from sleeve.forward import superframe
from sleeve.forward.reassembly import Reassembler
from sleeve.forward.superframe import CAP_VNET
from sleeve.links.corked import CorkedWriter
from sleeve.proto import datagram as dg
from sleeve.proto import liveness
from sleeve.proto.control import ControlChannel, ControlError, Established, MessageTooLarge
from sleeve.proto.pmtu import PmtuProber, datagram_bounds
from sleeve.proto.session import REJECT_PREVIOUS_AFTER, DataSession
from sleeve.proto.stats import Counters

log = logging.getLogger("sleeve")

# The PMTU search's ceiling until the underlay reads the route's MTU (forward.underlay
# ``path_limit``): the usual interface MTU.
UNDERLAY_MTU = 1500
CONTROL_BUFFER_MAX = 4 << 20  # a peer that does not read its control connection is cut off
# A peer that dialled us may be behind a NAT that has no UDP mapping for it yet. Our
# datagram to its guessed endpoint (its NAT's address, its announced port) would then
# arrive first and leave a conntrack entry there, and its NAT would map the peer's own
# first datagram, and every later flow from that socket (Linux reuses one mapping per
# source), to a random port: the endpoint every other peer then learns and punches to
# is not the announced one. So on an inbound link we let the dialler's datagram come
# first, and send to the guess only after this long without one (a listener behind a
# NAT that forwards only TCP still opens its own mapping then).
GUESS_HOLD = 1.5  # s
# No authenticated datagram for this long (three slow heartbeats): the link stops
# carrying data and the mesh routes around it.
UDP_DEAD = 15.0


class ControlWriter(Protocol):
    """What a link writes its control stream to: an asyncio.StreamWriter or a RelayWriter."""

    @property
    def transport(self) -> Any: ...

    def write(self, data: bytes) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...


class Link:
    """One authenticated peer: its control connection and its data session."""

    def __init__(self, est: Established, writer: ControlWriter, channel: ControlChannel, *,
                 outbound: bool, remote: tuple[str, int], local_index: int, encrypt: bool,
                 addr: str, rekey_seconds: float, drops: Counters,
                 mediator: bytes | None = None) -> None:
        self.peer = est.remote_id
        self.name = format_peer_id(est.remote_id)
        self.nickname = est.hello.nickname
        self.uid = est.hello.uid
        self.sign_key = est.remote_key  # its Ed25519 key, certified in its handshake
        self.outbound = outbound
        self.addr = addr  # how the mesh can reach this peer (see mesh.LinkInfo)
        self.remote_tcp = remote
        # real connections gather a loop pass's writes into one send (links.corked)
        self.writer: ControlWriter = (CorkedWriter(writer) if isinstance(
            writer, asyncio.StreamWriter) else writer)
        self.channel = channel
        self.encrypted = encrypt
        self._drops = drops
        # Keys move on by fresh Diffie-Hellman every rekey_seconds (proto.rekey), which
        # replaces the session's time-based hash-chain step; the chain still steps on
        # volume. The previous key opens stragglers for at most one interval.
        self.session = DataSession(local_index, est.hello.index, est.data_send, est.data_recv,
                                   encrypt, rekey_after_seconds=float("inf"),
                                   reject_previous_after=min(REJECT_PREVIOUS_AFTER,
                                                             rekey_seconds))
        self.rekey = channel.enable_rekey(self.session, rekey_seconds)
        # Until a datagram authenticates we can only guess the peer's UDP endpoint:
        # the address it connected from (or we dialled) and the port it announced.
        self.endpoint: tuple[str, int] = (remote[0], est.hello.udp_port)
        self.v6 = ":" in remote[0]  # which of our UDP sockets reaches the endpoint
        self.hello_port = est.hello.udp_port
        self.fastdp_keys = (est.data_send, est.data_recv)  # fastdp heartbeat keys derive here
        floor, ceiling = datagram_bounds(":" in remote[0], UNDERLAY_MTU)
        self.pmtu = PmtuProber(ceiling, floor, time.monotonic())
        self._max_ceiling = ceiling
        self.reasm = Reassembler()
        self.frag_id = random.getrandbits(32)
        # Offloaded frames (virtio header + super-frame) go whole to a peer that takes them.
        self.peer_vnet = bool(est.hello.offloads & CAP_VNET)
        self.segsets = superframe.SegmentSets()
        self._pmtu_known = False
        self.endpoint_learnt = False
        self.created_at = time.monotonic()
        self.heard_at = 0.0  # last authenticated datagram
        self.confirmed = False  # the peer told us it hears our datagrams
        self.told_ok = False  # we told the peer we hear its datagrams
        self.over_tcp = False  # our data goes over the control connection (UDP blocked)
        self.mediator = mediator  # control relayed through this peer: hole punched
        self.virtual = mediator is not None
        self.tcp_heard_at = time.monotonic()  # last control message from the peer
        self.next_tcp_hb = 0.0
        # control.connections: the kernel watches this TCP connection (keepalive, user
        # timeout), so control heartbeats are needed only without UDP (proto.liveness)
        self.tcp_keepalive = False
        self.hb_asked_at = 0.0  # the peer's last control heartbeat marked "need"
        self.silenced = False  # links.table closed it: nothing over UDP or TCP for long
        self.usable = False  # state == established, refreshed every tick (hot path reads it)
        self.next_hb = 0.0
        self.rtt: float | None = None
        self._hb_token = 0
        self.hb_sent_at = 0.0  # our last UDP heartbeat (proto.liveness.heartbeat)
        self.hb_answered_at = 0.0  # our last answer to the peer's (forward.ingress)
        self.pending: list[bytes] = []  # records waiting for this event's flush
        # UDP GSO for this link (see forward.underlay): proven for (endpoint, datagram size)
        self.gso_ok = False
        self.gso_path: tuple[tuple[str, int], int] | None = None
        self.gso_proof_id = 0
        self.gso_next_proof = 0.0
        self.gso_retry = 0.0
        self.next_route_check = 0.0  # forward.underlay: when to read the route's MTU again
        # forward.underlay: the local address the peer's datagrams arrive on (pktinfo as
        # read, set by ingress once one authenticates) and the cmsg that makes our
        # datagrams leave from it (empty: the route picks the source)
        self.rx_src: bytes | None = None
        self.src_cmsg: list[tuple[int, int, bytes]] = []
        # gossip.router: the next anti-entropy round, and what waits per channel
        self.next_gossip = 0.0
        self.gossip_pending: dict[str, Any] = {}
        self.stats = Counters()
        self.established_at = time.monotonic()

    @property
    def state(self) -> str:
        return self.state_reason()[0]

    def state_reason(self) -> tuple[str, str]:
        """The link state and, in words, why (what `status` shows an operator).

        It describes our sending direction: we know it works when the peer says it
        hears our datagrams (or when we send over TCP); what the peer sends us is
        its own link state. Silence on both UDP and TCP means the link is dead.
        """
        if self.virtual and not self.heard_at:
            med = self.mediator
            return "pending", ("hole punching: no UDP datagram from the peer yet; control "
                               f"relayed via {format_peer_id(med) if med else 'a neighbour'}")
        return liveness.state(time.monotonic(), heard_at=self.heard_at,
                              tcp_heard_at=self.tcp_heard_at, over_tcp=self.over_tcp,
                              confirmed=self.confirmed, pmtu_known=self.pmtu_known(),
                              pmtu_reason=self.pmtu.reason, dead_after=UDP_DEAD)

    def pmtu_known(self) -> bool:
        """Whether the first answer about full-size datagrams is in (then stays true).

        Data waits for it so that a fresh link neither black-holes big frames on a
        small path nor shrinks every sender's MTU to the floor on a normal one. On a
        normal path that is one probe round trip; on a black hole, a few timeouts.
        """
        if not self._pmtu_known:
            p = self.pmtu
            self._pmtu_known = p.state != "base" and (p.current >= p.ceiling
                                                      or p.ceiling < self._max_ceiling)
        return self._pmtu_known

    def holding_guess(self, now: float) -> bool:
        """True while we wait for the dialler's first datagram (see GUESS_HOLD)."""
        return (not self.outbound and not self.endpoint_learnt and not self.virtual
                and now - self.created_at < GUESS_HOLD)

    def set_route_mtu(self, mtu: int, now: float) -> None:
        """The route to the endpoint has this MTU (the underlay read it): the search's limit."""
        try:
            _, ceiling = datagram_bounds(self.v6, mtu)
        except ValueError:
            return  # smaller than the family's minimum: keep what we have, EMSGSIZE rules
        self._max_ceiling = ceiling
        self.pmtu.set_limit(ceiling, now)

    def next_frag_id(self) -> int:
        self.frag_id = (self.frag_id + 1) & 0xFFFFFFFF
        return self.frag_id

    def send_control(self, msg: dict[str, Any]) -> None:
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > CONTROL_BUFFER_MAX:
            # Bounded memory: a peer that stopped reading gets cut off, not buffered for.
            log.warning("%s does not read its control connection; closing it", self.name)
            self._drops.inc("control_slow_reader")
            self.writer.close()
            return
        try:
            data = self.channel.seal(msg)
        except MessageTooLarge as e:
            # Our bug, not the peer's: the channel is untouched, so keep the connection.
            self._drops.inc("control_too_large")
            log.error("not sending to %s: %s", self.name, e)
            return
        # what each change costs on the wire (bench.scale reads these from status)
        self.stats.inc("control_tx_msgs")
        self.stats.inc("control_tx_bytes", len(data))
        self.writer.write(data)

    def rekey_tick(self, now: float) -> None:
        """Start or retry a key exchange when due; close the connection if it stalled."""
        try:
            data = self.channel.tick(now)
        except ControlError as e:
            log.warning("closing the connection to %s: %s", self.name, e.detail)
            self._drops.inc(e.reason)
            self.writer.close()
            return
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def write_backlog(self) -> int:
        """Bytes written to the control connection and not yet sent."""
        return int(self.writer.transport.get_write_buffer_size())

    def heartbeat_record(self, now: float) -> bytes:
        self._hb_token = random.getrandbits(64)
        self.hb_sent_at = now
        return dg.encode_record(dg.KIND_HEARTBEAT, self._hb_token.to_bytes(8, "big") + b"\x00")

    def on_heartbeat_reply(self, token: bytes, now: float) -> None:
        if int.from_bytes(token, "big") == self._hb_token and self.hb_sent_at:
            self.rtt = now - self.hb_sent_at

    def status(self) -> dict[str, Any]:
        """This link's own view; the parts that know more (path, offload) add to it."""
        state, reason = self.state_reason()
        return {
            "peer": self.name, "nickname": self.nickname,
            "direction": "outbound" if self.outbound else "inbound",
            "tcp": f"{self.remote_tcp[0]}:{self.remote_tcp[1]}",
            "udp": str(Target(*self.endpoint)),
            "udp_local": _local_address(self.rx_src),
            "state": state, "reason": reason, "endpoint_learnt": self.endpoint_learnt,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "encrypted": self.encrypted,
            **self.pmtu.status(),
            "counters": {**self.stats.snapshot(),
                         **{f"drop_{k}": v for k, v in self.reasm.drops.items()},
                         **{f"drop_{k}": v for k, v in self.segsets.drops.items()}},
            "reassembling": len(self.reasm) + len(self.segsets),
            "key_epoch": {"send": self.session.send_epoch, "recv": self.session.recv_epoch},
            "key_exchanges": self.rekey.exchanges,
            "rekey": {k: v for k, v in self.rekey.status().items() if k != "exchanges"},
        }



def _local_address(src: bytes | None) -> str | None:
    """Our address the peer's datagrams arrive on, from the pktinfo read with them."""
    if src is not None and len(src) == 12:  # in_pktinfo: ifindex, spec_dst, addr
        return socket.inet_ntop(socket.AF_INET, src[4:8])
    if src is not None and len(src) == 20:  # in6_pktinfo: addr, ifindex
        return socket.inet_ntop(socket.AF_INET6, src[:16])
    return None
