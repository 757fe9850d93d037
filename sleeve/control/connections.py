"""Control connections: accept and dial, the Noise handshake, then serve messages.

Each connection runs the sans-IO ``ControlChannel`` on asyncio streams (or on a
``RelayWriter`` when hole punching relays it through a neighbour). Once authenticated
it becomes a ``Link`` in the link table, and every control message it carries goes to
the handler registered for its type ``"t"``: the link table (``udp_ok``, ``udp_lost``,
``hb``), ingress (``d``: data over TCP), traversal (``via``), the gossip router
(``topo``, ``g``). An unknown type is counted, not fatal.

Unauthenticated work is bounded (``proto.admission``): accepts per second and
handshakes in progress, per source address and in total, so one source can use only
its own share; each handshake must finish within ``HANDSHAKE_TIMEOUT``. A flood of
connections then costs a few closes, established links keep running, and other
sources still join. A peer that breaks the protocol closes its own connection and
nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sleeve.config import Config, Target
from sleeve.crypto.keys import Signer
from sleeve.crypto.noise import KeyPair
from sleeve.forward.superframe import CAP_VNET
from sleeve.links.link import ControlWriter, Link
from sleeve.links.table import LinkTable
from sleeve.proto.admission import ACCEPT_BURST, MAX_HANDSHAKES, Admission
from sleeve.proto.control import ControlChannel, ControlError, Established, Hello, error_frame
from sleeve.proto.liveness import CONTROL_SILENCE
from sleeve.proto.stats import Counters
from sleeve.traversal.relay import RelayWriter

log = logging.getLogger("sleeve")
__all__ = ["ACCEPT_BURST", "MAX_HANDSHAKES", "Connections", "Identity", "TargetState"]

HANDSHAKE_TIMEOUT = 10.0
# four missed control heartbeats: the connection is dead (on a connection the kernel
# does not watch; the others: links.table, proto.liveness.control_heartbeat)
TCP_READ_TIMEOUT = CONTROL_SILENCE
KEEPALIVE_IDLE = 10  # s of TCP silence before the kernel's first keepalive probe
KEEPALIVE_INTERVAL = 5  # s between probes; TCP_USER_TIMEOUT ends it at CONTROL_SILENCE

Handler = Callable[[Link, dict[str, Any]], None]


@dataclass
class Identity:
    """Who we are on the control plane (the node builds it once)."""

    static: KeyPair
    signer: Signer
    me: bytes
    name: str
    uid: int


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


class Connections:
    def __init__(self, cfg: Config, ident: Identity, links: LinkTable, drops: Counters,
                 stats: Counters) -> None:
        self.cfg = cfg
        self.ident = ident
        self.links = links
        self.drops = drops
        self.stats = stats
        self.handlers: dict[str, Handler] = {"hb": _on_heartbeat}
        self.udp_port = cfg.port  # what our Hello announces (the node sets the bound port)
        self.vnet = False  # we take offloaded frames (set by port_opened)
        # The listening socket opens before the TAP (a busy port fails first), so an
        # inbound connection can arrive before we know whether we take offloaded frames.
        # Its Hello waits for the port: a Hello sent early said "no offloads" for the life
        # of the link (the link stayed per frame; found by test_lab_offload).
        self._port_open = asyncio.Event()
        self.stopping = False
        self.admission = Admission()  # inbound handshakes: per-source and global limits

    def port_opened(self, vnet: bool) -> bool:
        """The node's port is open; ``vnet``: it takes offloaded frames. Returns ``vnet``."""
        self.vnet = vnet
        self._port_open.set()
        return vnet

    @property
    def handshaking(self) -> int:
        """Inbound handshakes in progress."""
        return self.admission.handshaking

    def handle(self, kind: str, fn: Handler) -> None:
        """Route control messages of type ``kind`` to ``fn(link, msg)``."""
        if kind in self.handlers:
            raise ValueError(f"control message type {kind!r} already has a handler")
        self.handlers[kind] = fn

    # ------------------------------------------------------------------ dial and accept
    async def dial(self, ts: TargetState) -> str:
        """Connect to a target and serve the connection; returns why it ended."""
        t = ts.target
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                reader, writer = await asyncio.open_connection(t.host, t.port)
        except (OSError, TimeoutError) as e:
            err = f"connect failed: {oserror_text(e)}"
            log.info("connection to %s failed: %s; retrying", t, err)
            return err
        return await self.run(reader, writer, True, ts)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.links) >= self.cfg.conn_limit:
            self.drops.inc("conn_limit")
            writer.close()
            return
        peer = writer.get_extra_info("peername") or ("?", 0)
        refused, source = self.admission.admit(str(peer[0]), time.monotonic())
        if refused is not None:
            self.drops.inc(refused)
            writer.close()
            return
        try:
            if not self._port_open.is_set():
                try:
                    async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                        await self._port_open.wait()
                except TimeoutError:
                    self.admission.done(source)
                    self.drops.inc("conn_before_port")
                    writer.close()
                    return
            await self.run(reader, writer, False, None, admitted=source)
        except asyncio.CancelledError:
            # Shutdown cancels the stream callbacks asyncio runs for accepted connections;
            # there is nothing left to do and nothing to report.
            writer.close()

    # ------------------------------------------------------------------ one connection
    async def run(self, reader: asyncio.StreamReader, writer: ControlWriter | Any,
                  outbound: bool, ts: TargetState | None, admitted: str | None = None,
                  ) -> str:
        """Handshake then serve one control connection. Returns why it ended.

        ``admitted``: the admission source key of an accepted connection, whose slot
        this returns when the handshake ends.
        """
        me = self.ident
        peer = writer.get_extra_info("peername") or ("?", 0)
        remote = (str(peer[0]), int(peer[1]))
        where = f"{remote[0]}:{remote[1]}"
        index = self.links.new_index()
        hello = Hello(self.cfg.nickname[:64], me.uid, index, self.udp_port, where[:64],
                      CAP_VNET if self.vnet else 0)
        ch = ControlChannel(initiator=outbound, static=me.static, psk=self.cfg.psk,
                            hello=hello, signer=me.signer, encrypted=self.cfg.encrypted)
        link: Link | None = None
        reason = "closed"
        try:
            try:
                est = await self._handshake(ch, reader, writer, outbound)
            finally:
                if admitted is not None:
                    self.admission.done(admitted)
            if est.remote_id == me.me:
                if ts is not None:
                    ts.dead = True
                if est.hello.uid == me.uid:
                    raise ControlError("self", f"{where} is ourselves; not dialling it again")
                raise ControlError("name_clash", f"the peer at {where} has our identity "
                                   f"{me.name} (a copied state dir?); refusing it")
            link = self._new_link(est, writer, ch, outbound, remote, index, ts)
            if ts is not None:
                # who the target is, known even when this connection loses to one already
                # up: the dialler then leaves it alone while that link lasts, instead of
                # a full handshake and "duplicate" every backoff, for ever (issue 23: idle
                # routers of 50 redialled their initial peers and ticked at 4 Hz meanwhile)
                ts.peer = link.peer
            if not self.links.register(link):
                link.send_control({"t": "bye", "why": "duplicate"})  # not an error: say so
                return "duplicate"
            self.stats.inc("handshake_ok")
            if ts is not None:
                ts.attempts = 0
            await self._serve(link, reader, ch)
        except ControlError as e:
            reason = e.reason
            self.stats.inc(f"conn_fail_{e.reason}")
            (log.info if e.reason == "duplicate" or self.stopping else log.warning)(
                "connection %s %s: %s", "to" if outbound else "from", where, e.detail)
            if not outbound and e.reason in ("auth_failed", "encryption_mismatch"):
                writer.write(error_frame(e.detail))
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            reason = "io"
            log.info("connection %s %s ended: %s", "to" if outbound else "from", where,
                     type(e).__name__ if isinstance(e, TimeoutError) else e)
        finally:
            ch.wipe()
            if link is not None:
                self.stats.inc(f"conn_end_{reason}")
                self.links.unregister(link)
            with contextlib.suppress(Exception):
                # the link's writer first sends what it gathered (a "bye", links.corked)
                (writer if link is None else link.writer).close()
        return reason

    def _new_link(self, est: Established, writer: Any, ch: ControlChannel, outbound: bool,
                  remote: tuple[str, int], index: int, ts: TargetState | None) -> Link:
        relayed = isinstance(writer, RelayWriter)
        if relayed:
            addr = ""  # nobody can dial this one: it is behind NAT
        elif outbound and ts is not None:
            addr = str(ts.target)
        else:  # where it came from, with the port it says it listens on
            addr = str(Target(remote[0], est.hello.udp_port))
        link = Link(est, writer, ch, outbound=outbound, remote=remote, local_index=index,
                    encrypt=self.cfg.encrypted, addr=addr,
                    rekey_seconds=self.cfg.rekey_seconds, drops=self.drops,
                    mediator=writer.mediator if relayed else None)
        if relayed and writer.observed is not None:
            link.endpoint = writer.observed  # the NAT mapping the mediator sees
            link.v6 = ":" in link.endpoint[0]
        return link

    async def _handshake(self, ch: ControlChannel, reader: asyncio.StreamReader,
                         writer: Any, outbound: bool) -> Established:
        """Run the handshake; what arrived after it stays in ``ch`` for ``_serve``."""
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
                out, _, est = ch.feed(data)  # no message precedes the end of the handshake
                if out:
                    writer.write(out)
                if est is not None:
                    return est

    async def _serve(self, link: Link, reader: asyncio.StreamReader,
                     ch: ControlChannel) -> None:
        log.info("connected to %s (%r) at %s:%d, %s", link.name, link.nickname,
                 *link.remote_tcp, "outbound" if link.outbound else "inbound")
        data = b""  # first what followed the handshake in its last read (ch.feed keeps it)
        link.tcp_keepalive = kernel_keepalive(link.writer)
        while True:
            out, msgs, _ = ch.feed(data)
            if out:  # rekey answers: written before anything the handlers seal next
                link.writer.write(out)
            for m in msgs:
                self.on_control(link, m)
            # a connection the kernel watches needs no timer per read (links.table closes
            # it after CONTROL_SILENCE without UDP or TCP)
            data = await (reader.read(65536) if link.tcp_keepalive else
                          asyncio.wait_for(reader.read(65536), TCP_READ_TIMEOUT))
            if not data:
                if link.silenced:
                    raise ControlError("silent", f"nothing from {link.name} over UDP or TCP "
                                       f"for {CONTROL_SILENCE:.0f}s")
                raise ControlError("closed", f"{link.name} closed the control connection")

    def on_control(self, link: Link, m: dict[str, Any]) -> None:
        """One authenticated control message from ``link``'s peer."""
        t = m["t"]
        link.tcp_heard_at = time.monotonic()
        fn = self.handlers.get(t)
        if fn is not None:
            fn(link, m)
        elif t == "bye" and m.get("why") == "duplicate":
            raise ControlError("duplicate", f"{link.name} keeps another connection to us")
        else:
            self.drops.inc("unknown_control")


def _on_heartbeat(link: Link, m: dict[str, Any]) -> None:
    """Its arrival is what counts (``on_control``); "need" asks for ours (proto.liveness)."""
    if m.get("n"):
        link.hb_asked_at = time.monotonic()


def kernel_keepalive(writer: Any) -> bool:
    """Let the kernel watch a TCP control connection: keepalive probes while it is
    quiet and TCP_USER_TIMEOUT, so that it is found dead after CONTROL_SILENCE (as the
    heartbeats did) without waking the router. False for a relayed control stream (no
    socket) or if the socket refuses."""
    sock = writer.get_extra_info("socket")
    if sock is None or getattr(sock, "type", None) != socket.SOCK_STREAM:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                        int(CONTROL_SILENCE * 1000))
    except OSError:
        return False
    return True


def oserror_text(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError):
        # asyncio puts "Connect call failed (addr)" in strerror; the errno text is clearer
        return os.strerror(e.errno) if e.errno else (e.strerror or str(e))
    return str(e)
