"""The node: composition root. Builds everything and runs the hot loop.

Pipeline, per readiness event:

1. port readable -> ``read_batch`` (<= 64 frames) -> for each frame: learn the
   source MAC as local, classify the destination (local: drop; known remote
   peer: its direct link when established, else the next hop towards it with
   source and destination peer ids in the record; group/unknown: our children
   in our own broadcast tree) -> records queued per link
2. per link with queued records: pack into datagrams up to the path MTU,
   seal (one counter per datagram), send to the link's learnt endpoint: runs of
   equal-size datagrams in one ``sendmsg`` with UDP GSO once the link's path has
   carried a GSO run of probes, else one ``sendto`` each (issue 9)
3. UDP readable -> ``recvfrom``, or with UDP GRO ``recvmsg`` split at the
   cmsg's segment size (<= 64 datagrams) -> header -> session by
   receiver index -> open (authenticate) -> replay check -> learn endpoint
   -> records: frames for us are learnt (src MAC -> source peer) and written
   to the port; frames for another peer are relayed to its next hop;
   broadcasts are delivered and passed on to our children in the source's
   tree (the hop limit bounds any loop while views disagree); heartbeats
   answered; then the relayed records are flushed like in 2.
4. one periodic tick: heartbeats, our mesh record (links and their state),
   gossip anti-entropy, topology GC, discovery, dialling targets with backoff,
   MAC expiry

Control connections (TCP) run as tasks owned by the node's TaskGroup; each
runs the sans-IO ``ControlChannel`` and, once authenticated, registers a
``Link``. Untrusted input is counted in ``self.drops`` with a reason and never
raises out of a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import pathlib
import random
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sleeve.capture.base import BATCH, Port
from sleeve.config import Config, Target, check_host_port, parse_target
from sleeve.crypto.keys import Signer, format_peer_id, load_or_create_static_key
from sleeve.crypto.noise import KeyPair
from sleeve.fastdp.agent import FastdpAgent
from sleeve.forward import superframe
from sleeve.forward.batcher import pack
from sleeve.forward.oversize import record_source, shrink
from sleeve.forward.reassembly import KIND_FRAGMENT, Reassembler, fragment
from sleeve.forward.superframe import CAP_VNET, KIND_VNET, KIND_VNET_SEG, SALVAGE_AFTER
from sleeve.mesh import ANTI_ENTROPY, LinkInfo, Mesh, jitter
from sleeve.proto import datagram as dg
from sleeve.proto import liveness, vnet
from sleeve.proto.control import (
    ControlChannel,
    ControlError,
    Established,
    Hello,
    MessageTooLarge,
    error_frame,
)
from sleeve.proto.mactable import LOCAL, MacTable
from sleeve.proto.pmtu import COMPLETE as PMTU_COMPLETE
from sleeve.proto.pmtu import (
    PmtuProber,
    Probe,
    ack_record,
    datagram_bounds,
    parse_probe,
    probe_record,
)
from sleeve.proto.session import DataSession
from sleeve.proto.stats import Counters
from sleeve.status.http import Route, json_action, json_route, start_http
from sleeve.status.metrics import metrics_route
from sleeve.virtual import RelayWriter

log = logging.getLogger("sleeve")

HANDSHAKE_TIMEOUT = 10.0
TCP_HEARTBEAT = 5.0  # a control message at least this often, so silence means dead
TCP_FALLBACK_AFTER = 3.0  # peer still hears no UDP from us: carry data over TCP
TCP_MAX_BODY = 65000  # records per control message when data goes over TCP
# Unauthenticated work is bounded: accepts per second (token bucket) and handshakes in
# progress; each handshake must finish within HANDSHAKE_TIMEOUT. A flood of connections
# then costs a few closes, and established links keep running.
ACCEPT_RATE = 20.0
ACCEPT_BURST = 40.0
MAX_HANDSHAKES = 32
TCP_READ_TIMEOUT = 20.0  # four missed control heartbeats: the connection is dead
UDP_FAST_HEARTBEAT = 0.5  # until the peer confirmed it hears us
UDP_SLOW_HEARTBEAT = 5.0  # also keeps NAT mappings open (UDP timeouts are >= 30 s)
# No authenticated datagram for this long (three slow heartbeats): the link stops
# carrying data and the mesh routes around it.
UDP_DEAD = 15.0
MESH_PERIOD = 1.0  # topology GC and discovery
PUNCH_GRACE = 2.0  # a newly seen peer gets this long to be dialled directly first
PUNCH_BACKOFF_MAX = 60.0
MAX_VIRTUAL = 64  # relayed control connections in progress or up
# Hole punching: first open our own NAT's mapping with datagrams that die one hop past it
# (they must not reach the peer's NAT before the peer's own mapping exists: a NAT that
# saw an unsolicited datagram on a port keeps that conntrack entry and moves the peer's
# mapping to a random port), then send normally. As in low-TTL punching elsewhere.
PUNCH_TTL = 2
PUNCH_PHASE = 1.0
PUNCH_TIME = 20.0  # punch datagrams this long, then give up (the mesh relays)
CONTROL_BUFFER_MAX = 4 << 20  # a peer that does not read its control connection is cut off
ICMP_PER_SECOND = 100  # too-big replies we generate, like the kernel's icmp_ratelimit
UNDERLAY_MTU = 1500  # the PMTU search's ceiling: the usual interface MTU
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2  # <linux/in.h>; Python 3.11's socket lacks them
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO = 23, 2  # <linux/in6.h>
TICK = 0.25
BACKOFF_START = 2.0
BACKOFF_MAX = 60.0
UDP_BUFFER = 4 << 20  # the anchors show loss happens where the receiver's UDP buffer overflows
# UDP segmentation offloads (<linux/udp.h>; Python 3.11's socket lacks the names). GSO: one
# sendmsg carries a run of equal-size datagrams (the last may be shorter), split by the
# kernel (or the NIC) as late as possible. GRO: one recvmsg returns a run of datagrams of
# the same flow and size, with the size in a cmsg.
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS before Linux 6.9 (128 since)
GSO_MAX_BYTES = 65000  # all segments' UDP payload together: an IP packet is at most 64 KiB
GRO_READ = 65535  # largest coalesced payload the kernel hands over in one read
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)  # the gso_size int
# A GSO run crosses every hop inside this kernel (veth, bridge, a router namespace) as one
# super-packet, so a middlebox there judges it by its total length: a firewall dropping
# "UDP longer than N" (a PMTU black hole) drops the whole run although each datagram fits.
# So a link uses GSO only once a full-size run of PMTU probes got an ack over its current
# path (endpoint and path MTU); until then, and after either changes, one send per datagram.
GSO_PROOF_ID = 0x80000000  # probe ids with the top bit: never the PMTU prober's (from 1 up)
GSO_PROOF_RETRY = 2.0  # first retry of an unanswered proof; doubles up to the max
GSO_PROOF_RETRY_MAX = 60.0
_BYTEORDER = sys.byteorder  # cmsg ints (UDP_SEGMENT u16, UDP_GRO int) are native
_REC_UNPACK = dg.REC.unpack_from  # _on_body's hot path: module constants, no attribute lookups
_REC_LEN = dg.REC_LEN
_KIND_FRAME = dg.KIND_FRAME
# Records parsed inline when sent directly by the link's peer (no flags): frames and
# offloaded frames; offloaded ones with flags (relayed) are refused.
_HOT_KINDS = frozenset((dg.KIND_FRAME, KIND_VNET, KIND_VNET_SEG))
_VNET_HDR_LEN = vnet.HDR_LEN
_VNET_MIN = vnet.HDR_LEN + 14
_NEEDS_CSUM = vnet.F_NEEDS_CSUM
STP_PREFIX = b"\x01\x80\xc2\x00\x00"  # IEEE 802.1D link-local group: never forwarded by a bridge


class Link:
    """One authenticated peer: its control connection and its data session."""

    def __init__(self, node: Node, est: Established, writer: asyncio.StreamWriter,
                 channel: ControlChannel, outbound: bool, remote: tuple[str, int],
                 local_index: int, encrypt: bool, addr: str) -> None:
        self.peer = est.remote_id
        self.name = format_peer_id(est.remote_id)
        self.nickname = est.hello.nickname
        self.uid = est.hello.uid
        self.sign_key = est.remote_key  # its Ed25519 key, certified in its handshake
        self.outbound = outbound
        self.addr = addr  # how the mesh can reach this peer (see mesh.LinkInfo)
        self.remote_tcp = remote
        self.writer = writer
        self.channel = channel
        self.session = DataSession(local_index, est.hello.index, est.data_send, est.data_recv,
                                   encrypt, rekey_after_seconds=node.cfg.rekey_seconds)
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
        self._frag_id = random.getrandbits(32)
        # Offloaded frames (virtio header + super-frame) go whole to a peer that takes them.
        self.peer_vnet = bool(est.hello.offloads & CAP_VNET)
        self.segsets = superframe.SegmentSets()
        self._pmtu_known = False
        self.endpoint_learnt = False
        self.heard_at = 0.0  # last authenticated datagram
        self.confirmed = False  # the peer told us it hears our datagrams
        self.told_ok = False  # we told the peer we hear its datagrams
        self.over_tcp = False  # our data goes over the control connection (UDP blocked)
        self.virtual = isinstance(writer, RelayWriter)  # control relayed: hole punched
        self.tcp_heard_at = time.monotonic()  # last control message from the peer
        self.next_tcp_hb = 0.0
        self.usable = False  # state == established, refreshed every tick (hot path reads it)
        self.next_gossip = 0.0
        self.next_hb = 0.0
        self.rtt: float | None = None
        self._hb_token = 0
        self._hb_sent_at = 0.0
        self.pending: list[bytes] = []
        # UDP GSO for this link (see GSO_PROOF_ID): proven for (endpoint, datagram size)
        self.gso_ok = False
        self.gso_path: tuple[tuple[str, int], int] | None = None
        self.gso_proof_id = 0
        self.gso_next_proof = 0.0
        self.gso_retry = GSO_PROOF_RETRY
        self.stats = Counters()
        self.established_at = time.monotonic()
        self._node = node

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
            med = self._node._virtual.get(self.peer, (None, None, None))[2]
            return "pending", ("hole punching: no UDP datagram from the peer yet; control "
                               f"relayed via {format_peer_id(med) if med else 'a neighbour'}")
        return liveness.state(time.monotonic(), heard_at=self.heard_at,
                              tcp_heard_at=self.tcp_heard_at, over_tcp=self.over_tcp,
                              confirmed=self.confirmed, pmtu_known=self.pmtu_known(),
                              pmtu_reason=self.pmtu.reason, dead_after=UDP_DEAD)

    def _path(self) -> dict[str, str]:
        if self.over_tcp:
            return {"path": "tcp", "path_reason": "over TCP: UDP does not get through"}
        path, why = self._node.fastdp.link_path(self)
        return {"path": path, "path_reason": why}

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

    def send_control(self, msg: dict[str, Any]) -> None:
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > CONTROL_BUFFER_MAX:
            # Bounded memory: a peer that stopped reading gets cut off, not buffered for.
            log.warning("%s does not read its control connection; closing it", self.name)
            self._node.drops.inc("control_slow_reader")
            self.writer.close()
            return
        try:
            data = self.channel.seal(msg)
        except MessageTooLarge as e:
            # Our bug, not the peer's: the channel is untouched, so keep the connection.
            self._node.drops.inc("control_too_large")
            log.error("not sending to %s: %s", self.name, e)
            return
        self.writer.write(data)

    def heartbeat_record(self, now: float) -> bytes:
        self._hb_token = random.getrandbits(64)
        self._hb_sent_at = now
        return dg.encode_record(dg.KIND_HEARTBEAT, self._hb_token.to_bytes(8, "big") + b"\x00")

    def on_heartbeat_reply(self, token: bytes, now: float) -> None:
        if int.from_bytes(token, "big") == self._hb_token and self._hb_sent_at:
            self.rtt = now - self._hb_sent_at

    def status(self) -> dict[str, Any]:
        state, reason = self.state_reason()
        return {
            "peer": self.name, "nickname": self.nickname,
            "direction": "outbound" if self.outbound else "inbound",
            "tcp": f"{self.remote_tcp[0]}:{self.remote_tcp[1]}",
            "udp": str(Target(*self.endpoint)),
            "state": state, "reason": reason, "endpoint_learnt": self.endpoint_learnt,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "encrypted": self._node.cfg.encrypted,
            **self._path(),
            **self.pmtu.status(),
            "counters": {**self.stats.snapshot(),
                         **{f"drop_{k}": v for k, v in self.reasm.drops.items()},
                         **{f"drop_{k}": v for k, v in self.segsets.drops.items()}},
            "reassembling": len(self.reasm) + len(self.segsets),
            "offload": "super-frames" if self.peer_vnet and self._node.vnet else "per frame",
            "key_epoch": {"send": self.session.send_epoch, "recv": self.session.recv_epoch},
        }


@dataclass
class TargetState:
    target: Target
    attempts: int = 0
    next_try: float = 0.0
    connecting: bool = False
    last_error: str = ""
    peer: bytes | None = None
    dead: bool = False  # connecting to ourselves: never retry
    discovered: bool = False  # learnt from gossip, not given by the user; not persisted


class Node:
    def __init__(self, cfg: Config, port: Port | Callable[[], Port],
                 static: KeyPair | None = None) -> None:
        self.cfg = cfg
        self._port_factory = port
        self.port: Port | None = None
        self.static = static or load_or_create_static_key(cfg.state_dir)
        self.signer = Signer.from_static(self.static)  # gossip signing key, derived
        self.id = self.signer.peer_id
        self.name = format_peer_id(self.id)
        self.uid = random.getrandbits(63) | 1
        self.mesh = Mesh(self.signer, cfg.nickname[:64], self.uid)
        self.fastdp = FastdpAgent(self)
        self._next_mesh = 0.0
        self._touched: list[Link] = []  # links with queued records, flushed per event
        self._icmp_window = 0.0
        self._accept_tokens = ACCEPT_BURST
        self._accept_at = 0.0
        self._handshaking = 0  # inbound handshakes in progress
        # relayed control connections: peer -> (reader, writer, mediator peer)
        self._virtual: dict[bytes, tuple[asyncio.StreamReader, RelayWriter, bytes]] = {}
        self._punch_next: dict[bytes, float] = {}
        # streams we relay as mediator, (from, to): told "fin" when either end leaves
        self._via_pairs: dict[tuple[bytes, bytes], None] = {}
        self._punch_attempts: dict[bytes, int] = {}
        self._icmp_sent = 0
        self.macs = MacTable()
        self.drops = Counters()  # untrusted input and local overflow, by reason
        self.stats = Counters()  # ok-path counters
        self.links: dict[bytes, Link] = {}
        self.by_index: dict[int, Link] = {}
        self.targets: dict[Target, TargetState] = {
            t: TargetState(t) for t in cfg.peers
        }
        if cfg.resume:
            self._load_known_peers()
        self.udp: socket.socket | None = None  # IPv4 underlay
        self.udp6: socket.socket | None = None  # IPv6 underlay
        # UDP GSO/GRO (see SOL_UDP above); off with --no-offload. A socket whose kernel
        # refused a GSO send is remembered and gets one sendto per datagram from then on.
        self.offload = cfg.offload
        self.vnet = False  # our port hands us virtio headers and super-frames (run() sets it)
        self._salvage_armed = False
        self._delivered = False  # frames written to the port in this event (see _answers)
        self._gso_off: set[socket.socket] = set()
        self._gro_on: set[socket.socket] = set()
        self.udp_port = cfg.port
        self.tcp_port = cfg.port
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self.started = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until ``stop()``. Sockets first, so a busy port fails before a TAP exists."""
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            v4, v6 = _listen_addresses(self.cfg.listen)
            uport = self.cfg.port
            if v4 is not None:
                self.udp = self._open_udp(socket.AF_INET, v4, uport)
                stack.callback(self.udp.close)
                uport = self.udp.getsockname()[1]
            if v6 is not None:
                try:
                    self.udp6 = self._open_udp(socket.AF_INET6, v6, uport)
                    stack.callback(self.udp6.close)
                    uport = self.udp6.getsockname()[1]
                except OSError as e:
                    if v4 is None:
                        raise
                    log.warning("no IPv6 underlay: %s", e.strerror)  # e.g. IPv6 disabled
                    v6 = None
            self.udp_port = uport
            hosts = [h for h in (v4, v6) if h is not None]
            try:
                server = await asyncio.start_server(
                    self._accept, hosts, self.udp_port, reuse_address=True, backlog=64)
            except OSError as e:
                raise OSError(e.errno, f"cannot listen on TCP port {self.udp_port}: "
                              f"{e.strerror}") from None
            stack.callback(server.close)
            self.tcp_port = server.sockets[0].getsockname()[1]
            if self.cfg.http:
                host, hport = check_host_port(self.cfg.http, "--http")
                try:
                    http = await start_http(host, hport, self._http_routes())
                except OSError as e:
                    raise OSError(e.errno, f"cannot serve the status API on {self.cfg.http}: "
                                  f"{e.strerror}") from None
                stack.callback(http.close)
            self.port = port = (self._port_factory() if callable(self._port_factory)
                                else self._port_factory)
            stack.callback(port.close)
            self.vnet = port.vnet and self.offload
            hwaddr = getattr(port, "hwaddr", None)  # a TAP: the fast datapath can bridge it
            await self.fastdp.start(port.name, port.mtu, hwaddr)
            if self.fastdp.dp is not None:
                stack.push_async_callback(self.fastdp.stop)
                if self.fastdp.hb is not None:
                    hb_fd = self.fastdp.hb.fileno()
                    loop.add_reader(hb_fd, self.fastdp.on_heartbeats)
                    stack.callback(loop.remove_reader, hb_fd)
            loop.add_reader(port.fileno(), self._on_port_readable)
            stack.callback(loop.remove_reader, port.fileno())
            for sock in (self.udp, self.udp6):
                if sock is not None:
                    loop.add_reader(sock.fileno(), self._on_udp_readable, sock)
                    stack.callback(loop.remove_reader, sock.fileno())
            stack.callback(self._close_links)
            if self.targets:
                self._save_known_peers()
            log.info("sleeve %s (%s) listening on %s port %d, %s, port %s mtu %d",
                     self.name, self.cfg.nickname, self.cfg.listen, self.udp_port,
                     "encrypted" if self.cfg.encrypted else "UNENCRYPTED (--no-encryption)",
                     port.name, port.mtu)
            if self.vnet:
                log.info("port %s: TCP segmentation offload on (super-frames to peers "
                         "that take them)", port.name)
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    tg.create_task(self._ticker())
                    if ready is not None:
                        ready()
                    await self._stop.wait()
                    raise _Stop
            except* _Stop:
                pass
            finally:
                self._tg = None
        log.info("sleeve %s stopped", self.name)

    def _http_routes(self) -> dict[str, Route]:
        return {
            "GET /status": json_route(self.status),
            "GET /report": json_route(self.report),
            "GET /metrics": metrics_route(self.status),
            "POST /connect": json_action(self._api_connect),
            "POST /forget": json_action(self._api_forget),
        }

    def _api_connect(self, q: dict[str, str]) -> dict[str, Any]:
        added = []
        for p in q.get("peer", "").split(","):
            t = parse_target(p, self.cfg.port)  # ConfigError is a ValueError: HTTP 400
            self.add_target(t)
            added.append(str(t))
        self._save_known_peers()
        return {"added": added}

    def _api_forget(self, q: dict[str, str]) -> dict[str, Any]:
        gone = []
        for p in q.get("peer", "").split(","):
            t = parse_target(p, self.cfg.port)
            if self.targets.pop(t, None) is not None:
                gone.append(str(t))
        self._save_known_peers()
        return {"forgotten": gone}

    def _close_links(self) -> None:
        for link in list(self.links.values()):
            link.writer.close()

    def stop(self) -> None:
        self._stop.set()

    def add_target(self, t: Target) -> None:
        self.targets.setdefault(t, TargetState(t))

    # Known peers: the targets given on the command line or through `sleeve connect`,
    # remembered in the state dir so `launch --resume` rejoins. A few hundred bytes,
    # written only when the set changes.
    def _peers_file(self) -> pathlib.Path:
        return self.cfg.state_dir / "peers.json"

    def _load_known_peers(self) -> None:
        try:
            saved = json.loads(self._peers_file().read_text())
            for text in saved.get("peers", []):
                self.add_target(parse_target(str(text), self.cfg.port))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as e:
            log.warning("ignoring unreadable %s: %s", self._peers_file(), e)

    def _save_known_peers(self) -> None:
        path = self._peers_file()
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"peers": sorted(str(t) for t, ts in self.targets.items()
                                                       if not ts.discovered)}))
            tmp.replace(path)
        except OSError as e:
            log.warning("cannot remember peers in %s: %s", path, e.strerror)

    def _open_udp(self, family: int, addr: str, port: int) -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_BUFFER)
            # DF on every datagram: the path MTU is found by probing, and a datagram the
            # kernel knows is too big fails with EMSGSIZE instead of being fragmented.
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # v4 has its own
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
            else:
                s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            s.bind((addr, port))
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"cannot bind UDP port {port} on {addr}: {e.strerror}") \
                from None
        s.setblocking(False)
        if self.offload:
            try:
                s.setsockopt(SOL_UDP, UDP_GRO, 1)
                self._gro_on.add(s)
            except OSError as e:  # a kernel before 5.0: one datagram per read
                log.info("no UDP GRO on this kernel: %s", e.strerror)
        else:
            self._gso_off.add(s)
        return s

    # ------------------------------------------------------------------ data plane
    def _on_port_readable(self) -> None:
        assert self.port is not None
        try:
            frames = self.port.read_batch(BATCH)
        except OSError as e:
            self.drops.inc("port_read_error")
            log.warning("reading %s failed: %s", self.port.name, e)
            return
        if not frames:
            return
        now = time.monotonic()
        me = self.id
        macs = self.macs
        links = self.links
        routes = self.mesh.routes
        queue = self._queue
        vnet = self.port.vnet
        off = 0
        flood: list[Link] | None = None  # our broadcast tree's links, once per batch
        for raw in frames:
            if vnet:
                if len(raw) < _VNET_MIN:
                    self.drops.inc("runt")
                    continue
                # A partial checksum or a GSO type: the frame is unfinished; it goes as it
                # is to a peer that takes offloaded frames, else it is finished here.
                off = raw[0] & _NEEDS_CSUM or raw[1]
                f = raw[_VNET_HDR_LEN:]
            else:
                f = raw
                if len(f) < 14:
                    self.drops.inc("runt")
                    continue
            dst = f[0:6]
            if not macs.learn_local(f[6:12], now):
                self.drops.inc("mac_conflict")
                continue
            owner: bytes | None = None
            if dst[0] & 1:
                if dst.startswith(STP_PREFIX):
                    self.drops.inc("stp")
                    continue
            else:
                owner = macs.lookup(dst, now)
                if owner == LOCAL:
                    self.drops.inc("local_dst")
                    continue
            if owner is None:  # group or unknown: down our own broadcast tree
                if flood is None:
                    flood = self._tree_links(me, None)
                if flood:
                    for g in self._finish(raw) if off else (f,):
                        rec = dg.encode_record(dg.KIND_FRAME, g, hops=dg.MAX_HOPS, bcast=True)
                        for child in flood:
                            queue(child, rec)
                continue
            link = links.get(owner)
            if link is not None and link.usable:
                if not off:
                    queue(link, dg.frame_record(f))  # the hot path: direct, 4 bytes of framing
                elif not self._queue_offloaded(link, raw):
                    for g in self._finish(raw):
                        queue(link, dg.frame_record(g))
                continue
            hop = routes.next_hop(owner)
            via = links.get(hop) if hop is not None else None
            if via is not None and via is not link:
                for g in self._finish(raw) if off else (f,):
                    queue(via, dg.encode_record(dg.KIND_FRAME, g, src=me, dst=owner,
                                                hops=dg.MAX_HOPS))
            elif link is not None:
                for g in self._finish(raw) if off else (f,):
                    queue(link, dg.frame_record(g))  # not confirmed yet, but the only way
            else:
                self.drops.inc("no_route")
        self.stats.inc("port_rx_frames", len(frames))
        self._flush_touched()

    def _queue_offloaded(self, link: Link, raw: bytes) -> bool:
        """Queue an unfinished frame (virtio header + frame) whole for ``link``'s peer.

        False when the peer or the path cannot take it; the caller then finishes it in
        software. A single frame too big for one datagram also goes back to the caller,
        so that the per-frame path answers it as before (ICMP too big, IP fragments).
        """
        if not (self.vnet and link.peer_vnet) or link.over_tcp:
            return False
        gso = raw[1]
        max_body = link.pmtu.current - dg.HEADER_LEN - dg.TAG_LEN
        link._frag_id = (link._frag_id + 1) & 0xFFFFFFFF
        try:
            recs = superframe.cut(raw, link._frag_id, max_body)
        except vnet.VnetError:
            return False  # the software path counts it under its reason
        if recs is None:
            return False
        if not link.pending:
            self._touched.append(link)
        link.pending += recs
        link.stats.inc("tx_superframes" if gso else "tx_offloaded_frames")
        return True

    def _finish(self, raw: bytes) -> list[bytes]:
        """Ordinary frames for an unfinished one: checksum completed, TSO cut in software."""
        try:
            out = vnet.to_frames(raw[:_VNET_HDR_LEN], raw[_VNET_HDR_LEN:])
        except vnet.VnetError as e:
            self.drops.inc(e.reason)
            return []
        self.stats.inc("tx_segmented" if raw[1] else "tx_csum_completed")
        return out

    def _tree_links(self, source: bytes, came_from: bytes | None) -> list[Link]:
        """Links to our children in ``source``'s broadcast tree.

        For our own frames, direct links the mesh does not (yet) show as symmetric
        are added: their peers are outside the tree, so no one else covers them.
        """
        links = self.links
        routes = self.mesh.routes
        out = [links[c] for c in routes.broadcast(source)
               if c in links and c != came_from and c != source]
        if source == self.id:
            reach = routes.unicast()
            out += [lk for p, lk in links.items() if p not in reach]
        return out

    def _queue(self, link: Link, rec: bytes) -> None:
        if not link.pending:
            self._touched.append(link)
        link.pending.append(rec)

    def _flush_touched(self) -> None:
        touched, self._touched = self._touched, []
        for link in touched:
            self._flush(link)

    def _flush(self, link: Link) -> None:
        records, link.pending = link.pending, []
        if not records:
            return
        if link.over_tcp:
            bodies, oversize = pack(records, TCP_MAX_BODY)
            link.stats.inc("drop_too_big", len(oversize))
            for body in bodies:
                link.send_control({"t": "d", "b": body})
                link.stats.inc("tx_tcp_bytes", len(body))
            return
        datagram = link.pmtu.current
        max_body = datagram - dg.HEADER_LEN - dg.TAG_LEN
        bodies, oversize = pack(records, max_body)
        if oversize:
            frags: list[bytes] = []
            for rec in oversize:
                frags += self._too_big(link, rec, datagram, max_body)
            if frags:
                more, still = pack(frags, max_body)
                bodies += more
                link.stats.inc("drop_too_big", len(still))
        if len(bodies) == 1:
            self._send(link, bodies[0])
        else:
            self._send_many(link, bodies)

    def _too_big(self, link: Link, rec: bytes, datagram: int, max_body: int) -> list[bytes]:
        """Fragment (returned as records) or answer with ICMP; never a silent drop."""
        frags, reply, outcome = shrink(rec, datagram)
        if reply is None and not frags:
            # No ICMP can help (IPv6 below 1280, not IP, a broadcast): carry it in pieces.
            link._frag_id = (link._frag_id + 1) & 0xFFFFFFFF
            frags = fragment(rec, link._frag_id, max_body)
            outcome = "sleeve_fragmented" if frags else outcome
        link.stats.inc(outcome)
        if reply is None:
            return frags
        now = time.monotonic()
        if now - self._icmp_window >= 1.0:
            self._icmp_window, self._icmp_sent = now, 0
        if self._icmp_sent >= ICMP_PER_SECOND:
            self.drops.inc("icmp_rate_limited")
            return frags
        self._icmp_sent += 1
        src = record_source(rec)
        if src is None or src == self.id:
            assert self.port is not None
            self.port.write(reply)  # the sender is on our side
            return frags
        # The sender is behind another peer: route the ICMP back to it like any frame.
        via = self._towards(src)
        if via is not None:
            self._queue(via, dg.encode_record(dg.KIND_FRAME, reply, src=self.id, dst=src,
                                              hops=dg.MAX_HOPS))
        return frags

    def _send(self, link: Link, body: bytes) -> None:
        """Seal one body and send it as one datagram (PMTU probes always come here)."""
        sock = self._link_socket(link)
        if sock is not None:
            self._sendto(link, sock, link.session.seal(body))

    def _link_socket(self, link: Link) -> socket.socket | None:
        if link.virtual and not link.endpoint_learnt:
            # Still punching: a datagram reaching the peer's NAT before the peer's own
            # mapping exists would spoil the punch (see PUNCH_TTL). Only _punch_send sends.
            link.stats.inc("drop_punching")
            return None
        sock = self.udp6 if link.v6 else self.udp
        if sock is None:
            link.stats.inc("drop_no_socket_for_family")  # e.g. an IPv6 peer, IPv4-only here
        return sock

    def _sendto(self, link: Link, sock: socket.socket, data: bytes) -> bool:
        try:
            sock.sendto(data, link.endpoint)
        except BlockingIOError:
            link.stats.inc("drop_tx_busy")
            return False
        except OSError as e:
            self._send_error(link, e, len(data))
            return False
        link.stats.inc("tx_packets")
        link.stats.inc("tx_bytes", len(data))
        return True

    def _send_error(self, link: Link, e: OSError, size: int, n: int = 1) -> None:
        # EPERM (firewall), unreachable, EMSGSIZE: count, never raise out of the loop.
        if e.errno == errno.EMSGSIZE:  # the kernel knows a smaller path MTU
            link.pmtu.on_emsgsize(size, time.monotonic())
        link.stats.inc(f"drop_tx_{errno.errorcode.get(e.errno or 0, 'err').lower()}", n)

    def _send_many(self, link: Link, bodies: list[bytes]) -> None:
        """Seal several bodies; each run of equal-size datagrams goes in one GSO send.

        A run may end with one shorter datagram (the kernel allows a short last segment).
        Without GSO (refused before, or --no-offload) it is one sendto per datagram.
        """
        sock = self._link_socket(link)
        if sock is None:
            return
        seal = link.session.seal
        datas = [seal(b) for b in bodies]
        if not link.gso_ok or sock in self._gso_off:
            for data in datas:
                self._sendto(link, sock, data)
            return
        n = len(datas)
        i = 0
        while i < n:
            size = len(datas[i])
            limit = min(n, i + min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size))
            j = i + 1
            while j < limit and len(datas[j]) == size:
                j += 1
            if j < limit and len(datas[j]) < size:
                j += 1  # a shorter last segment
            if j - i == 1:
                self._sendto(link, sock, datas[i])
            else:
                self._send_gso(link, sock, datas[i:j], size)
            i = j

    def _send_gso(self, link: Link, sock: socket.socket, segs: list[bytes], size: int,
                  fallback: bool = True) -> None:
        try:
            # The segments go as an iovec: the kernel gathers them, no join here.
            sent = sock.sendmsg(segs, [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, _BYTEORDER))],
                                0, link.endpoint)
        except BlockingIOError:
            link.stats.inc("drop_tx_busy", len(segs))
            return
        except OSError as e:
            if not fallback or e.errno not in (errno.EIO, errno.EINVAL):
                self._send_error(link, e, size, len(segs))
                return
            # EIO: no checksum offload on the route's device; EINVAL: no UDP_SEGMENT, or a
            # segment over the route's MTU. Send them one by one: if that works, it was
            # GSO the kernel refused, and this socket stops trying; an EMSGSIZE from it
            # lowers the path MTU as usual.
            first = self._sendto(link, sock, segs[0])
            if first and sock not in self._gso_off:
                self._gso_off.add(sock)
                log.info("UDP GSO refused (%s): one datagram per send from now on",
                         e.strerror)
            for data in segs[1:]:
                self._sendto(link, sock, data)
            return
        link.stats.inc("tx_packets", len(segs))
        link.stats.inc("tx_bytes", sent)
        link.stats.inc("tx_gso_sends")

    def _gso_proof(self, link: Link, now: float) -> None:
        """Prove (again) that a GSO run reaches the peer over the link's current path."""
        if not self.offload or link.over_tcp or not link.usable:
            return
        path = (link.endpoint, link.pmtu.current)
        if path != link.gso_path:  # new path (or none proven yet): stop GSO until proven
            link.gso_ok = False
            link.gso_path = path
            link.gso_next_proof = now
            link.gso_retry = GSO_PROOF_RETRY
        if link.gso_ok or now < link.gso_next_proof or link.pmtu.state != PMTU_COMPLETE:
            return
        sock = self._link_socket(link)
        if sock is None or sock in self._gso_off:
            return
        size = path[1]
        link.gso_proof_id = GSO_PROOF_ID | (link.gso_proof_id + 1) & 0x7FFFFFFF
        rec = probe_record(Probe(link.gso_proof_id, size))
        seal = link.session.seal
        n = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)
        self._send_gso(link, sock, [seal(rec) for _ in range(n)], size, fallback=False)
        link.stats.inc("gso_proofs")
        link.gso_next_proof = now + link.gso_retry
        link.gso_retry = min(GSO_PROOF_RETRY_MAX, link.gso_retry * 2)

    def _on_udp_readable(self, sock: socket.socket) -> None:
        if sock in self._gro_on:
            self._on_udp_readable_gro(sock)
            return
        recv = sock.recvfrom
        try:
            for _ in range(BATCH):
                try:
                    data, addr = recv(65535)
                except BlockingIOError:
                    return
                except OSError:
                    self.drops.inc("udp_recv_error")  # e.g. ICMP port unreachable reported late
                    continue
                try:
                    self._on_datagram(data, addr)
                except Exception:  # a bug must not kill the loop; count and log
                    self.drops.inc("internal_error")
                    log.exception("internal error handling a datagram")
        finally:
            self._flush_touched()  # relayed records, one aggregation per batch
            self._answers()

    def _on_udp_readable_gro(self, sock: socket.socket) -> None:
        """Like ``_on_udp_readable``, but a read may hold a run of coalesced datagrams.

        The batch bound counts datagrams, not reads; the read that crosses it is finished.
        """
        recv = sock.recvmsg
        on_datagram = self._on_datagram
        n = 0
        try:
            while n < BATCH:
                try:
                    data, anc, flags, addr = recv(GRO_READ, GRO_CMSG_SPACE)
                except BlockingIOError:
                    return
                except OSError:
                    self.drops.inc("udp_recv_error")  # e.g. ICMP port unreachable reported late
                    n += 1
                    continue
                if flags & socket.MSG_TRUNC:
                    self.drops.inc("udp_truncated")
                    n += 1
                    continue
                seg = 0
                for level, typ, cdata in anc:
                    if level == SOL_UDP and typ == UDP_GRO and len(cdata) >= 4:
                        seg = int.from_bytes(cdata[:4], _BYTEORDER)
                size = len(data)
                try:
                    if 0 < seg < size:
                        self.stats.inc("rx_gro_reads")
                        n += self._on_gro_run(data, seg, addr)
                    else:
                        n += 1
                        on_datagram(data, addr)
                except Exception:  # a bug must not kill the loop; count and log
                    n += 1
                    self.drops.inc("internal_error")
                    log.exception("internal error handling a datagram")
        finally:
            self._flush_touched()  # relayed records, one aggregation per batch
            self._answers()

    def _answers(self) -> None:
        """Read the port right after writing frames to it.

        Writing a frame into the TAP runs our kernel's receive path inside that system
        call, so its answer (a TCP ACK, an echo reply) is usually queued on the TAP when
        the write returns. Reading it now, while this process is running, sends it on
        without a round through epoll and the wake-up of a cold interpreter, a large
        part of a Python router's latency (see bench/results/perf-notes.md).
        """
        if self._delivered:
            self._delivered = False
            self._on_port_readable()

    def _on_gro_run(self, data: bytes, seg: int, addr: tuple[Any, ...]) -> int:
        """One coalesced read: datagrams of ``seg`` bytes (the last may be shorter).

        Each datagram is checked and opened on its own, exactly as ``_on_datagram``
        does; what is per read (the clock, the endpoint, counters) is done once per
        link, and a body that is a single KIND_VNET_SEG record (a super-frame's piece,
        nearly every datagram of a bulk flow) goes straight to its segment set.
        Returns how many datagrams the read held.
        """
        now = time.monotonic()
        me = self.id
        open_ = self._open
        cur: Link | None = None
        count = nbytes = total = 0
        for off in range(0, len(data), seg):
            total += 1
            d = data[off:off + seg]
            link, body = open_(d)
            if link is None or body is None:
                continue
            if link is not cur:  # learn from the first authenticated datagram, before its body
                if cur is not None:
                    self._count_rx(cur, count, nbytes)
                cur, count, nbytes = link, 0, 0
                self._heard(link, addr, now)
            count += 1
            nbytes += len(d)
            n = len(body)
            if (n > _REC_LEN and body[2] == KIND_VNET_SEG and not body[3]
                    and (body[0] << 8 | body[1]) + _REC_LEN == n and link.peer != me):
                self._on_segment(link, memoryview(body)[_REC_LEN:], now)
            else:
                self._on_body(link, body, len(d), now, False)
        if cur is not None:
            self._count_rx(cur, count, nbytes)
        return total

    @staticmethod
    def _count_rx(link: Link, n: int, nbytes: int) -> None:
        c = link.stats.c  # per datagram or per read: no method calls
        c["rx_packets"] += n
        c["rx_bytes"] += nbytes

    def _open(self, data: bytes) -> tuple[Link, bytes] | tuple[None, None]:
        """The link and authenticated body of a datagram, or (None, None), counted."""
        try:
            index, counter = dg.decode_header(data)
        except dg.DecodeError as e:
            self.drops.inc(e.reason)
            return None, None
        link = self.by_index.get(index)
        if link is None:
            self.drops.inc("unknown_session")
            return None, None
        body = link.session.open(counter, data)
        if isinstance(body, str):
            self.drops.inc(body)
            link.stats.inc(f"drop_{body}")
            return None, None
        return link, body

    def _on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        link, body = self._open(data)
        if link is None or body is None:
            return
        # Authenticated and fresh: only now may the datagram teach us anything.
        now = time.monotonic()
        self._count_rx(link, 1, len(data))
        self._heard(link, addr, now)
        self._on_body(link, body, len(data), now, False)

    def _heard(self, link: Link, addr: tuple[Any, ...], now: float) -> None:
        """What an authenticated datagram from ``addr`` tells us about its link."""
        link.heard_at = now
        if len(addr) != 2:
            addr = addr[:2]  # IPv6: drop flow info and scope id
        if addr != link.endpoint:
            if link.endpoint_learnt:
                log.info("peer %s moved its UDP endpoint %s -> %s", link.name,
                         Target(*link.endpoint), Target(*addr))
            link.endpoint = (addr[0], addr[1])
            link.v6 = ":" in addr[0]
            link.gso_ok = False  # a new path: prove GSO again (next tick)
            link.stats.inc("endpoint_changes")
        link.endpoint_learnt = True
        if not link.told_ok:
            link.told_ok = True
            link.send_control({"t": "udp_ok"})

    def _on_body(self, link: Link, body: bytes | memoryview, size: int, now: float,
                 reassembled: bool) -> None:
        """Handle an authenticated body's records (``dg.iter_records``, unrolled).

        The hot case, a frame sent directly by the link's peer (kind frame, no flags),
        is parsed inline without building a ``dg.Record``; every other record goes
        through ``dg.parse_record``, with the same framing checks and drop reasons.
        """
        me = self.id
        peer = link.peer
        deliver = self._deliver
        unpack = _REC_UNPACK
        mv = memoryview(body)
        off = 0
        end = len(mv)
        try:
            while off < end:
                if end - off < _REC_LEN:
                    raise dg.DecodeError("truncated_record")
                length, kind, flags = unpack(mv, off)
                if not flags and kind in _HOT_KINDS:
                    start = off + _REC_LEN
                    off = start + length
                    if off > end:
                        raise dg.DecodeError("truncated_record")
                    if peer == me:
                        self.drops.inc("loop")  # our own frame came back round
                        continue
                    if kind == _KIND_FRAME:
                        deliver(link, peer, mv[start:off], now)
                    elif kind == KIND_VNET_SEG:
                        self._on_segment(link, mv[start:off], now)
                    elif length >= _VNET_HDR_LEN:
                        self._deliver_offloaded(link, peer, mv[start:start + _VNET_HDR_LEN],
                                                mv[start + _VNET_HDR_LEN:off], now)
                    else:
                        self.drops.inc("bad_vnet")
                    continue
                rec, off = dg.parse_record(mv, off)
                if rec.kind == dg.KIND_FRAME:
                    if rec.dst is not None and rec.dst != me:
                        self._relay(link, rec)
                        continue
                    src = rec.src or peer
                    if src == me:
                        self.drops.inc("loop")  # our own frame came back round
                        continue
                    deliver(link, src, rec.payload, now)
                    if rec.bcast:
                        self._pass_on_broadcast(link, src, rec)
                elif rec.kind == dg.KIND_HEARTBEAT:
                    self._on_heartbeat(link, rec.payload, now)
                elif rec.kind == dg.KIND_PROBE:
                    self._on_probe(link, rec, size, now)
                elif rec.kind in _HOT_KINDS:
                    self.drops.inc("bad_offload_record")  # offloaded frames are one hop only
                elif rec.kind == KIND_FRAGMENT and not reassembled:
                    whole = link.reasm.add(rec.payload, now)
                    if whole is not None:
                        self._on_body(link, whole, size, now, True)
                else:
                    self.drops.inc("unknown_record")
        except dg.DecodeError as e:
            self.drops.inc(e.reason)

    def _on_tcp_data(self, link: Link, body: object) -> None:
        if not isinstance(body, bytes):
            self.drops.inc("bad_tcp_data")
            return
        link.stats.inc("rx_tcp_bytes", len(body))
        try:
            self._on_body(link, body, len(body), time.monotonic(), False)
        finally:
            self._flush_touched()
            self._answers()

    def _towards(self, dest: bytes) -> Link | None:
        """The link to the next hop towards ``dest`` (for relayed and routed-back records)."""
        hop = self.mesh.routes.next_hop(dest)
        via = self.links.get(hop) if hop is not None else None
        return via if via is not None else self.links.get(dest)  # unconfirmed beats a drop

    def _relay(self, link: Link, rec: dg.Record) -> None:
        assert rec.dst is not None
        if rec.hops == 0:
            self.drops.inc("hop_limit")
            return
        via = self._towards(rec.dst)
        if via is None:
            self.drops.inc("no_route")
            return
        self._queue(via, dg.encode_record(dg.KIND_FRAME, rec.payload, src=rec.src or link.peer,
                                          dst=rec.dst, hops=rec.hops - 1))
        self.stats.inc("relayed_frames")

    def _pass_on_broadcast(self, link: Link, src: bytes, rec: dg.Record) -> None:
        children = self._tree_links(src, link.peer)
        if not children:
            return
        if rec.hops == 0:
            self.drops.inc("hop_limit")
            return
        out = dg.encode_record(dg.KIND_FRAME, rec.payload, src=src, hops=rec.hops - 1,
                               bcast=True)
        for child in children:
            self._queue(child, out)
        self.stats.inc("relayed_broadcasts")

    def _deliver(self, link: Link, src_peer: bytes, frame: memoryview, now: float) -> None:
        if self._learn_remote(frame, src_peer, now):
            assert self.port is not None
            self.port.write(frame)
            self._delivered = True
            link.stats.inc("rx_frames")

    def _learn_remote(self, frame: bytes | memoryview, src_peer: bytes, now: float) -> bool:
        if len(frame) < 14:
            self.drops.inc("runt")
            return False
        src = bytes(frame[6:12])
        if src[0] & 1:
            self.drops.inc("bad_src_mac")
            return False
        self.macs.learn_remote(src, src_peer, now)
        return True

    def _on_segment(self, link: Link, payload: memoryview, now: float) -> None:
        """A KIND_VNET_SEG record's payload: into its set; write what that completes."""
        sets = link.segsets
        writes = sets.add(payload, now)
        if writes:
            self._write_offloaded(link, writes, now)
        if not self._salvage_armed and sets:
            self._arm_salvage()

    def _write_offloaded(self, link: Link, writes: list[superframe.Write], now: float) -> None:
        for hdr, frame in writes:
            self._deliver_offloaded(link, link.peer, hdr, frame, now)

    def _salvage(self) -> None:
        """Write out segment sets left incomplete (their missing datagrams are lost)."""
        self._salvage_armed = False
        now = time.monotonic()
        pending = False
        for link in list(self.links.values()):
            if link.segsets:
                self._write_offloaded(link, link.segsets.expire(now), now)
                pending = pending or bool(link.segsets)
        if pending:
            self._arm_salvage()

    def _arm_salvage(self) -> None:
        self._salvage_armed = True
        asyncio.get_running_loop().call_later(SALVAGE_AFTER, self._salvage)

    def _deliver_offloaded(self, link: Link, src_peer: bytes, hdr: bytes | memoryview,
                           frame: bytes | memoryview, now: float) -> None:
        """Write a peer's virtio header + frame to our port (the port segments if it must)."""
        reason = vnet.check_raw(hdr, len(frame))
        if reason is not None:
            self.drops.inc(reason)
            return
        if not self._learn_remote(frame, src_peer, now):
            return
        if hdr[0] & vnet.F_DATA_VALID:
            hdr = vnet.sanitized(hdr)  # a peer never vouches for checksums to our kernel
        assert self.port is not None
        self.port.write_vnet(hdr, frame)
        self._delivered = True
        link.stats.inc("rx_frames")
        if hdr[1]:
            link.stats.inc("rx_superframes")

    def _on_probe(self, link: Link, rec: dg.Record, size: int, now: float) -> None:
        msg = None if rec.src or rec.dst else parse_probe(rec.payload)
        if msg is None:
            self.drops.inc("bad_probe")  # probes are one hop, between the two ends only
        elif not msg.is_ack:
            self._queue(link, ack_record(msg.probe_id, size))
        elif msg.probe_id & GSO_PROOF_ID:
            if (msg.probe_id == link.gso_proof_id and link.gso_path is not None
                    and msg.size == link.gso_path[1] and not link.gso_ok):
                link.gso_ok = True  # a whole GSO run crossed this path: use it
                link.stats.inc("gso_proven")
        elif link.pmtu.on_ack(msg.probe_id, now, msg.size):
            self._probe(link, now)  # next search step now, not at the next tick

    def _probe(self, link: Link, now: float) -> None:
        for p in link.pmtu.poll(now):
            self._send(link, probe_record(p))

    def _on_heartbeat(self, link: Link, payload: memoryview, now: float) -> None:
        if len(payload) != 9:
            self.drops.inc("bad_heartbeat")
            return
        if payload[8] == 0:
            self._send(link, dg.encode_record(dg.KIND_HEARTBEAT, bytes(payload[:8]) + b"\x01"))
        else:
            link.on_heartbeat_reply(bytes(payload[:8]), now)

    # ------------------------------------------------------------------ timers
    async def _ticker(self) -> None:
        while True:
            try:
                self.on_timer(time.monotonic())
            except Exception:
                log.exception("internal error in timer")
            await asyncio.sleep(TICK)

    def on_timer(self, now: float) -> None:
        for link in list(self.links.values()):
            if link.virtual and not link.endpoint_learnt:
                self._punch_send(link, now)
            elif now >= link.next_hb:
                # fast until the peer hears us; over TCP, slow probes notice UDP coming back
                fast = not (link.confirmed and link.heard_at) and not link.over_tcp
                link.next_hb = now + (UDP_FAST_HEARTBEAT if fast else UDP_SLOW_HEARTBEAT)
                self._send(link, link.heartbeat_record(now))
            self._udp_or_tcp(link, now)
            link.usable = link.state == "established"
            self._probe(link, now)
            self._gso_proof(link, now)
            link.reasm.expire(now)
            self._write_offloaded(link, link.segsets.expire(now), now)
            if now >= link.next_gossip:
                link.next_gossip = now + jitter(ANTI_ENTROPY)
                self._send_full_view(link)
        self._sync_own_record()
        self.fastdp.tick(now)
        if now >= self._next_mesh:
            self._next_mesh = now + MESH_PERIOD
            for gone in self.mesh.gc(now):
                n = self.macs.forget_peer(gone)
                log.info("peer %s left the mesh; forgot %d MACs", format_peer_id(gone), n)
            self._discover()
            self._punch(now)
            self.macs.expire(now)
        dialling: set[bytes] = {ts.peer for ts in self.targets.values()
                                if ts.connecting and ts.peer is not None}
        for ts in self.targets.values():
            if ts.dead or ts.connecting or now < ts.next_try:
                continue
            if ts.peer is not None and (ts.peer in self.links or ts.peer in dialling):
                continue
            if len(self.links) >= self.cfg.conn_limit:
                break
            ts.connecting = True
            ts.attempts += 1
            if ts.peer is not None:
                dialling.add(ts.peer)
            if self._tg is not None:
                self._tg.create_task(self._dial(ts))

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
        if now >= link.next_tcp_hb:
            link.next_tcp_hb = now + TCP_HEARTBEAT
            link.send_control({"t": "hb"})

    # ------------------------------------------------------------------ mesh
    # -- hole punching: control connections relayed through a common neighbour
    def _punch(self, now: float) -> None:
        """Start relayed connections to peers no one can dial (the smaller id starts)."""
        if not self.cfg.discovery:
            return
        for peer in self.mesh.topology.peers():
            if peer == self.id or peer in self.links or peer in self._virtual:
                continue
            first = self._punch_next.setdefault(peer, now + PUNCH_GRACE)
            if peer < self.id or now < first or len(self._virtual) >= MAX_VIRTUAL:
                continue
            med = self._mediator_for(peer)
            if med is None or self._tg is None:
                continue
            n = self._punch_attempts[peer] = self._punch_attempts.get(peer, 0) + 1
            self._punch_next[peer] = now + min(PUNCH_BACKOFF_MAX, 5.0 * 1.5 ** (n - 1))
            self.stats.inc("punch_attempts")
            self._start_virtual(peer, med, None, True)
        for peer in list(self._punch_next):
            if peer not in self.mesh.topology.peers():
                self._punch_next.pop(peer, None)
                self._punch_attempts.pop(peer, None)

    def _punch_send(self, link: Link, now: float) -> None:
        """Each tick, a heartbeat to every endpoint the peer may have (low TTL at first)."""
        age = now - link.established_at
        if age > PUNCH_TIME:
            # Give up on this attempt; _punch tries again later with backoff, and the
            # mesh relays meanwhile.
            log.info("hole punching to %s failed after %.0fs", link.name, age)
            self.stats.inc("punch_failed")
            link.writer.close()
            return
        ttl = PUNCH_TTL if age < PUNCH_PHASE else None
        host, port = link.endpoint
        for ep in {(host, port), (host, link.hello_port)}:
            sock = self.udp6 if ":" in host else self.udp
            if sock is None:
                return
            data = link.session.seal(link.heartbeat_record(now))
            try:
                if ttl is None:
                    sock.sendto(data, ep)
                else:
                    level, opt = ((socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT) if ":" in host
                                  else (socket.IPPROTO_IP, socket.IP_TTL))
                    sock.sendmsg([data], [(level, opt, struct.pack("i", ttl))], 0, ep)
                link.stats.inc("punch_packets")
            except OSError as e:
                link.stats.inc(f"drop_tx_{errno.errorcode.get(e.errno or 0, 'err').lower()}")

    def _mediator_for(self, peer: bytes) -> Link | None:
        for p in sorted(self.links):
            rec = self.mesh.topology.get(p)
            link = self.links[p]
            if rec is not None and link.usable and any(
                    c.peer == peer and c.established for c in rec.conns):
                return link
        return None

    def _start_virtual(self, peer: bytes, med: Link, observed: tuple[str, int] | None,
                       outbound: bool) -> asyncio.StreamReader:
        mid = med.peer

        def send(msg: dict[str, Any]) -> bool:
            link = self.links.get(mid)
            if link is None or link.writer.is_closing():
                return False
            link.send_control(msg)
            return True

        def buffered() -> int:
            link = self.links.get(mid)
            return 0 if link is None else link.writer.transport.get_write_buffer_size()

        reader = asyncio.StreamReader()
        writer = RelayWriter(peer, send, buffered, observed)
        self._virtual[peer] = (reader, writer, mid)

        async def run() -> None:
            try:
                await self._run_connection(reader, writer, outbound, None)  # type: ignore[arg-type]
            finally:
                if self._virtual.get(peer, (None, None, None))[1] is writer:
                    del self._virtual[peer]

        assert self._tg is not None
        self._tg.create_task(run())
        return reader

    def _on_via(self, link: Link, m: dict[str, Any]) -> None:
        to, frm, data = m.get("to"), m.get("from"), m.get("d")
        if isinstance(to, bytes) and len(to) == 8:  # we are the mediator: pass it on
            target = self.links.get(to)
            if target is None:
                self.drops.inc("via_no_route")
                return
            fwd: dict[str, Any] = {"t": "via", "from": link.peer}
            if m.get("fin") is True:
                fwd["fin"] = True
            elif isinstance(data, bytes):
                fwd["d"] = data
            else:
                self.drops.inc("bad_via")
                return
            if link.endpoint_learnt:
                fwd["ep"] = [link.endpoint[0], link.endpoint[1]]
            target.send_control(fwd)
            self.stats.inc("via_relayed")
            pair = (link.peer, to)
            if "fin" in fwd:
                self._via_pairs.pop(pair, None)
            elif pair not in self._via_pairs:
                if len(self._via_pairs) >= 4 * MAX_VIRTUAL:
                    self._via_pairs.pop(next(iter(self._via_pairs)))
                self._via_pairs[pair] = None
            return
        if not (isinstance(frm, bytes) and len(frm) == 8):
            self.drops.inc("bad_via")
            return
        entry = self._virtual.get(frm)
        if m.get("fin") is True:
            if entry is not None and entry[2] == link.peer:
                entry[0].feed_eof()
            return
        if not isinstance(data, bytes):
            self.drops.inc("bad_via")
            return
        ep = m.get("ep")
        observed = None
        if (isinstance(ep, list) and len(ep) == 2 and isinstance(ep[0], str)
                and type(ep[1]) is int and 0 < ep[1] < 65536):
            observed = (ep[0], ep[1])
        if entry is None:
            # Only the smaller id starts, only peers we know, only while unconnected.
            if (frm >= self.id or frm in self.links or len(self._virtual) >= MAX_VIRTUAL
                    or frm not in self.mesh.topology.peers() or self._tg is None):
                self.drops.inc("via_refused")
                return
            self._start_virtual(frm, link, observed, False)
            entry = self._virtual[frm]
        reader, writer, mid = entry
        if mid != link.peer:
            self.drops.inc("via_wrong_mediator")
            return
        if writer.observed is None and observed is not None:
            writer.observed = observed
        reader.feed_data(data)

    def _sync_own_record(self) -> None:
        """Publish our links in our mesh record; gossip it if it changed."""
        msg = self.mesh.set_links(
            LinkInfo(lk.peer, lk.addr, lk.outbound, lk.usable) for lk in self.links.values())
        if msg is not None:
            for link in self.links.values():
                self._send_gossip(link, msg)

    def _send_gossip(self, link: Link, msg: bytes) -> None:
        link.send_control({"t": "topo", "r": msg})
        self.stats.inc("gossip_tx_msgs")
        self.stats.inc("gossip_tx_bytes", len(msg))

    def _send_full_view(self, link: Link) -> None:
        for msg in self.mesh.full_state():
            self._send_gossip(link, msg)

    def _on_gossip(self, link: Link, data: object) -> None:
        if not isinstance(data, bytes):
            self.drops.inc("gossip_undecodable")
            return
        self.stats.inc("gossip_rx_msgs")
        self.stats.inc("gossip_rx_bytes", len(data))
        fwd, outcome = self.mesh.receive(link.peer, link.uid, link.sign_key, data)
        if outcome != "ok":
            self.drops.inc(outcome)
            log.warning("gossip from %s refused: %s", link.name, outcome)
            return
        if fwd is not None:
            self.stats.inc("gossip_updates")
            for other in self.links.values():
                if other is not link:
                    self._send_gossip(other, fwd)

    def _discover(self) -> None:
        """Add dial targets for peers learnt from gossip; drop the ones no longer listed."""
        if not self.cfg.discovery:
            return
        known = self.mesh.topology.peers()
        listed: set[Target] = set()
        for peer, addrs in self.mesh.candidates(self.cfg.port).items():
            if peer not in known:
                continue  # only mentioned: its own record has not arrived (or it left)
            listed |= addrs
            if peer in self.links:
                continue
            for t in addrs:
                if t not in self.targets:
                    self.targets[t] = TargetState(t, peer=peer, discovered=True)
        for t, ts in list(self.targets.items()):
            if ts.discovered and not ts.connecting and t not in listed:
                del self.targets[t]

    def _backoff(self, ts: TargetState) -> None:
        base = min(BACKOFF_MAX, BACKOFF_START * (1.5 ** max(0, ts.attempts - 1)))
        ts.next_try = time.monotonic() + random.uniform(base / 2, base * 1.5)

    # ------------------------------------------------------------------ control plane
    async def _dial(self, ts: TargetState) -> None:
        t = ts.target
        try:
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    reader, writer = await asyncio.open_connection(t.host, t.port)
            except (OSError, TimeoutError) as e:
                ts.last_error = f"connect failed: {_oserror_text(e)}"
                log.info("connection to %s failed: %s; retrying", t, ts.last_error)
                return
            err = await self._run_connection(reader, writer, True, ts)
            ts.last_error = err
        finally:
            ts.connecting = False
            if not ts.dead:
                self._backoff(ts)

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if len(self.links) >= self.cfg.conn_limit:
            self.drops.inc("conn_limit")
            writer.close()
            return
        now = time.monotonic()
        self._accept_tokens = min(ACCEPT_BURST, self._accept_tokens
                                  + (now - self._accept_at) * ACCEPT_RATE)
        self._accept_at = now
        if self._accept_tokens < 1.0:
            self.drops.inc("accept_rate_limited")
            writer.close()
            return
        if self._handshaking >= MAX_HANDSHAKES:
            self.drops.inc("handshake_limit")
            writer.close()
            return
        self._accept_tokens -= 1.0
        try:
            await self._run_connection(reader, writer, False, None, counted=True)
        except asyncio.CancelledError:
            # Shutdown cancels the stream callbacks asyncio runs for accepted connections;
            # there is nothing left to do and nothing to report.
            writer.close()

    async def _run_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              outbound: bool, ts: TargetState | None,
                              counted: bool = False) -> str:
        """Handshake then serve one control connection. Returns why it ended."""
        peer = writer.get_extra_info("peername") or ("?", 0)
        remote = (str(peer[0]), int(peer[1]))
        where = f"{remote[0]}:{remote[1]}"
        index = self._new_index()
        hello = Hello(self.cfg.nickname[:64], self.uid, index, self.udp_port, where[:64],
                      CAP_VNET if self.vnet else 0)
        ch = ControlChannel(initiator=outbound, static=self.static, psk=self.cfg.psk, hello=hello,
                            signer=self.signer)
        link: Link | None = None
        reason = "closed"
        try:
            if counted:
                self._handshaking += 1
            try:
                est, first_msgs = await self._handshake(ch, reader, writer, outbound)
            finally:
                if counted:
                    self._handshaking -= 1
            if est.remote_id == self.id:
                if ts is not None:
                    ts.dead = True
                if est.hello.uid == self.uid:
                    raise ControlError("self", f"{where} is ourselves; not dialling it again")
                raise ControlError("name_clash", f"the peer at {where} has our identity "
                                   f"{self.name} (a copied state dir?); refusing it")
            if isinstance(writer, RelayWriter):
                addr = ""  # nobody can dial this one: it is behind NAT
            elif outbound and ts is not None:
                addr = str(ts.target)
            else:  # where it came from, with the port it says it listens on
                addr = str(Target(remote[0], est.hello.udp_port))
            link = Link(self, est, writer, ch, outbound, remote, index, self.cfg.encrypted,
                        addr)  # a RelayWriter quacks like a StreamWriter
            if isinstance(writer, RelayWriter) and writer.observed is not None:
                link.endpoint = writer.observed  # the NAT mapping the mediator sees
                link.v6 = ":" in link.endpoint[0]
            if not self._register(link):
                link.send_control({"t": "bye", "why": "duplicate"})  # not an error: say so
                return "duplicate"
            self.stats.inc("handshake_ok")
            if ts is not None:
                ts.peer = link.peer
                ts.attempts = 0
            for m in first_msgs:
                self._on_control(link, m)
            await self._serve(link, reader, ch)
        except ControlError as e:
            reason = e.reason
            self.stats.inc(f"conn_fail_{e.reason}")
            (log.info if e.reason == "duplicate" or self._stop.is_set() else log.warning)(
                "connection %s %s: %s", "to" if outbound else "from", where, e.detail)
            if not outbound and e.reason in ("auth_failed", "encryption_mismatch"):
                writer.write(error_frame(e.detail))
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            reason = "io"
            log.info("connection %s %s ended: %s", "to" if outbound else "from", where,
                     type(e).__name__ if isinstance(e, TimeoutError) else e)
        finally:
            if link is not None:
                self.stats.inc(f"conn_end_{reason}")
                self._unregister(link)
            with contextlib.suppress(Exception):
                writer.close()
        return reason

    async def _handshake(self, ch: ControlChannel, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, outbound: bool,
                         ) -> tuple[Established, list[dict[str, Any]]]:
        msgs: list[dict[str, Any]] = []
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            if outbound:
                writer.write(ch.start())
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ControlError(
                        "closed", "peer closed the connection during the handshake" +
                        (" (wrong password or encryption setting on one side?)" if outbound
                         else ""))
                out, got, est = ch.feed(data)
                msgs += got
                if out:
                    writer.write(out)
                if est is not None:
                    return est, msgs

    async def _serve(self, link: Link, reader: asyncio.StreamReader,
                     ch: ControlChannel) -> None:
        log.info("connected to %s (%r) at %s:%d, %s", link.name, link.nickname,
                 *link.remote_tcp, "outbound" if link.outbound else "inbound")
        while True:
            data = await asyncio.wait_for(reader.read(65536), TCP_READ_TIMEOUT)
            if not data:
                raise ControlError("closed", f"{link.name} closed the control connection")
            _, msgs, _ = ch.feed(data)
            for m in msgs:
                self._on_control(link, m)

    def _on_control(self, link: Link, m: dict[str, Any]) -> None:
        t = m["t"]
        link.tcp_heard_at = time.monotonic()
        if t == "udp_ok":
            link.confirmed = True
        elif t == "udp_lost":
            link.confirmed = False
        elif t == "d":
            self._on_tcp_data(link, m.get("b"))
        elif t == "via":
            self._on_via(link, m)
        elif t == "topo":
            self._on_gossip(link, m.get("r"))
        elif t == "hb":
            pass
        elif t == "bye" and m.get("why") == "duplicate":
            raise ControlError("duplicate", f"{link.name} keeps another connection to us")
        else:
            self.drops.inc("unknown_control")

    def _new_index(self) -> int:
        while True:
            i = random.getrandbits(32)
            if i and i not in self.by_index:
                return i

    def _register(self, link: Link) -> bool:
        old = self.links.get(link.peer)
        if old is not None:
            # Both ends must make the same choice. A restarted peer (new uid) or the same
            # side dialling again means the old connection is stale; a direct connection
            # beats a relayed (hole-punching) one; of two simultaneous connections, keep
            # the one dialled by the peer with the smaller id.
            def initiator_id(lk: Link) -> bytes:
                return self.id if lk.outbound else lk.peer
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
            self._unregister(old)
            old.writer.close()
        self.links[link.peer] = link
        self.by_index[link.session.local_index] = link
        self._send_full_view(link)  # it may have been partitioned away: tell it everything
        link.next_gossip = time.monotonic() + jitter(ANTI_ENTROPY)
        self._sync_own_record()
        return True

    def _unregister(self, link: Link) -> None:
        if self.links.get(link.peer) is link:
            del self.links[link.peer]
            n = self.macs.forget_peer(link.peer)
            log.info("disconnected from %s (%r); forgot %d MACs", link.name, link.nickname, n)
            self._sync_own_record()
            self.fastdp.link_down(link.peer, "link down")
        self.by_index.pop(link.session.local_index, None)
        for a, b in list(self._via_pairs):
            if link.peer in (a, b) and link.peer not in self.links:
                del self._via_pairs[(a, b)]
                other = self.links.get(b if a == link.peer else a)
                if other is not None:  # the relayed stream's other end learns it is over
                    other.send_control({"t": "via", "from": link.peer, "fin": True})
        for reader, w, med in list(self._virtual.values()):
            if med == link.peer and not w.is_closing():  # relayed streams die with their relay
                w._closed = True
                reader.feed_eof()

    # ------------------------------------------------------------------ status
    def report(self) -> dict[str, Any]:
        """Everything a bug report needs; never keys or the password."""
        import platform

        from sleeve import __version__

        cfg = self.cfg
        return {
            "version": __version__, "python": platform.python_version(),
            "kernel": platform.release(),
            "config": {"port": cfg.port, "listen": cfg.listen, "iface": cfg.iface,
                       "attach": cfg.attach, "ip": cfg.ip, "mtu": cfg.mtu,
                       "state_dir": str(cfg.state_dir), "nickname": cfg.nickname,
                       "encrypted": cfg.encrypted, "peers": [str(p) for p in cfg.peers],
                       "http": cfg.http},
            "status": self.status(),
        }

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "name": self.name, "nickname": self.cfg.nickname,
            "encryption": "enabled" if self.cfg.encrypted else "DISABLED (--no-encryption)",
            "port": self.udp_port,
            "interface": None if self.port is None else self.port.name,
            "mtu": None if self.port is None else self.port.mtu,
            "uptime_s": round(now - self.started, 1),
            "connections": [lk.status() for lk in self.links.values()],
            "targets": [{"target": str(ts.target), "connected": ts.peer in self.links,
                         "discovered": ts.discovered,
                         "attempts": ts.attempts, "last_error": ts.last_error,
                         "retry_in_s": max(0.0, round(ts.next_try - now, 1))}
                        for ts in self.targets.values()],
            "peers": self._peers_status(),
            "routes": self._routes_status(),
            "fastdp": self.fastdp.status(),
            "macs": [{"mac": m.hex(":"), "peer": "local" if p == LOCAL else format_peer_id(p),
                      "age_s": round(age, 1)} for m, p, age in self.macs.entries(now)],
            "drops": self.drops.snapshot(),
            "handshakes_in_progress": self._handshaking,
            "counters": self.stats.snapshot(),
            "pid": os.getpid(),
        }


    def _peers_status(self) -> list[dict[str, Any]]:
        reach = self.mesh.topology.reachable()
        return [{"peer": format_peer_id(r.peer), "nickname": r.nickname, "uid": r.uid,
                 "version": r.version, "self": r.peer == self.id,
                 "reachable": r.peer in reach, "direct": r.peer in self.links,
                 "connections": [{"peer": format_peer_id(c.peer), "addr": c.addr,
                                  "outbound": c.outbound, "established": c.established}
                                 for c in r.conns]}
                for r in self.mesh.topology.records()]

    def _routes_status(self) -> list[dict[str, Any]]:
        hops = self.mesh.hop_counts()
        return [{"destination": format_peer_id(d), "via": format_peer_id(v),
                 "hops": hops.get(d), "usable": v in self.links}
                for d, v in sorted(self.mesh.routes.unicast().items())]


class _Stop(Exception):
    pass


def _listen_addresses(listen: str) -> tuple[str | None, str | None]:
    """(IPv4, IPv6) addresses to bind: both families for a wildcard, else the one given."""
    if listen in ("", "0.0.0.0", "::"):
        return "0.0.0.0", "::"
    if ":" in listen:
        return None, listen
    return listen, None


def _oserror_text(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError):
        # asyncio puts "Connect call failed (addr)" in strerror; the errno text is clearer
        return os.strerror(e.errno) if e.errno else (e.strerror or str(e))
    return str(e)
