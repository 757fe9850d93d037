"""The node: the composition root. Builds the parts, wires their events, runs the loop.

The parts (each in its own module, each with its own state; see docs/architecture.md)::

    links.table      LinkTable: peers we have a link to; duplicates; liveness; up/down events
    control          Connections (accept, dial, handshake, serve, dispatch control
                     messages by type) and Dialler (targets, backoff, discovery, peers.json)
    forward          Underlay (UDP sockets, GSO/GRO), Egress (port -> links), Ingress
                     (datagrams -> port / relay / answers)
    gossip           GossipRouter (named channels over the control connections) and the
                     topology channel (mesh records, routes)
    traversal        hole punching over relayed control connections
    dns              DnsService: the "dns" gossip channel (names), their persistence,
                     and the micro DNS server on the overlay address (sleeve.dns.service)
    ipam             IpamService: the "ipam" gossip channel (the address ring), its
                     persistence and the allocation API (sleeve.ipam.service)
    fastdp           the kernel VXLAN datapath agent

What flows: the port and the UDP sockets are read by the event loop and handed to
egress and ingress; control messages are dispatched by ``Connections`` to the part
registered for their type; link ups and downs are events the parts subscribe to; one
ticker calls each part's ``tick(now)``. Nothing below this module imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pathlib
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sleeve.capture.base import Port
from sleeve.capture.bridge import BridgeError, HostBridge
from sleeve.config import DEFAULT_API_SOCKET, Config, Target, check_host_port
from sleeve.control.connections import Connections, Identity, TargetState
from sleeve.control.dialler import Dialler, task_spawner
from sleeve.crypto.keys import Signer, format_peer_id, load_or_create_static_key
from sleeve.crypto.noise import KeyPair
from sleeve.dns.service import DnsService
from sleeve.fastdp.agent import FastdpAgent
from sleeve.forward.egress import Egress
from sleeve.forward.ingress import Ingress
from sleeve.forward.underlay import Underlay
from sleeve.gossip.router import TOPOLOGY, GossipRouter
from sleeve.gossip.topology import TopologyChannel
from sleeve.ipam.service import IpamService
from sleeve.links.link import Link
from sleeve.links.table import LinkTable
from sleeve.memtrim import Trimmer
from sleeve.mesh import LinkInfo, Mesh
from sleeve.pacing import IDLE_TICK, TICK, DataWatch, period
from sleeve.proto.control import MAX_FRAME
from sleeve.proto.mactable import LOCAL, MacTable
from sleeve.proto.origin import OriginAuth
from sleeve.proto.stats import Counters
from sleeve.status.routes import (
    EventStream,
    Reply,
    Route,
    json_action,
    json_async_action,
    json_route,
)
from sleeve.status.ui import ui_routes, ui_streams
from sleeve.status.unixsock import ApiSocket
from sleeve.traversal.portmap import PortMapper, gateway_toward
from sleeve.traversal.punch import Traversal

if TYPE_CHECKING:  # imported when used: a plain router never loads them (RSS, issue 23)
    from sleeve.docker.driver import BridgeInfo
    from sleeve.docker.service import DockerService
    from sleeve.status.http import HttpServer  # aiohttp: only when the API is served

log = logging.getLogger("sleeve")

MESH_PERIOD = 1.0  # topology GC, discovery, punching attempts, MAC expiry


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
        self.drops = Counters()  # untrusted input and local overflow, by reason
        self.stats = Counters()  # ok-path counters
        self.macs = MacTable()
        self.mesh = Mesh(self.signer, cfg.nickname[:64], self.uid)
        # -- the parts, lowest first
        self.table = LinkTable(self.id, self.stats)
        self.underlay = Underlay(self.drops, self.stats, cfg.offload)
        # relayed and broadcast records carry their source's proof, keyed by the peers'
        # verified topology records (Ed25519 key, incarnation)
        self.origin = OriginAuth(self.signer, self.uid, self._ident)
        self.egress = Egress(self.id, self.table, self.mesh.routes, self.macs, self.underlay,
                             self.drops, self.stats, self.origin)
        self.ingress = Ingress(self.id, self.table, self.macs, self.egress, self.underlay,
                               self.drops, self.stats)
        self.egress.clamp_mss = self.ingress.clamp_mss = cfg.clamp_mss
        self.conns = Connections(cfg, Identity(self.static, self.signer, self.id, self.name,
                                               self.uid), self.table, self.drops, self.stats)
        self.dialler = Dialler(cfg, self.conns)
        self.gossip = GossipRouter(self.id, self.uid, self.signer, self.table,
                                   self.mesh.topology, self.egress.tree_links,
                                   self.egress.towards, self.drops, self.stats)
        self.topology = TopologyChannel(self.mesh, self._neighbour)
        self.topology.gossip_handle = self.gossip.register(TOPOLOGY, self.topology,
                                                           max_msg=MAX_FRAME)
        self.traversal = Traversal(self.id, self.table, self.mesh.topology, self.underlay,
                                   self.drops, self.stats, enabled=cfg.discovery,
                                   run_connection=self.conns.run,
                                   prediction=cfg.port_prediction, spraying=cfg.spray)
        self.portmap = PortMapper(self.drops, self.stats,
                                  enabled=cfg.port_mapping and cfg.discovery)
        self.traversal.mapped = lambda: self.portmap.mapped
        self.traversal.direct_first = self.dialler.direct_first
        self.fastdp = FastdpAgent(cfg, self.id, self.table, self.macs, self.drops, self.stats)
        self.bridge: HostBridge | None = None  # built in run() once the TAP exists
        # registered after topology: a new link hears who the peers are before their names
        self.dns = DnsService(cfg, self.id, self.gossip,
                              is_known_peer=lambda p: self.mesh.topology.get(p) is not None)
        self.ipam = IpamService(cfg, self.id, self.gossip, reachable=self.mesh.topology.reachable,
                                nicknames=lambda: {r.peer: r.nickname
                                                   for r in self.mesh.topology.records()},
                                port_name=self._host_iface,
                                stop=self.stop)
        self.docker: DockerService | None = None
        if cfg.docker_plugin:
            from sleeve.docker.service import DockerService  # 3.6 MB: only when asked for
            self.docker = DockerService(cfg, self.ipam, self.dns, self._docker_bridge)
        # -- events: who hears about what
        self.table.on_up(self.gossip.link_up)  # full state first, then our new record
        self.table.on_up(lambda _link: self._sync_own_record(time.monotonic()))
        self.table.on_down(self._link_down)
        self.table.on_up(self._poke)  # a new link's first steps run at the 4 Hz tick
        self.table.on_down(self._poke)
        self.dialler.on_added = self._poke
        self.table.on_down(self.traversal.link_down)
        for kind, fn in (("udp_ok", self.table.on_control), ("udp_lost", self.table.on_control),
                         ("d", self.ingress.on_tcp_data), ("via", self.traversal.on_via),
                         ("cand", self.traversal.on_cand), ("seen", self.traversal.on_seen),
                         ("hopq", self.traversal.meter.on_hopq),
                         ("topo", self.gossip.on_topo), ("g", self.gossip.on_message)):
            self.conns.handle(kind, fn)
        self._next_mesh = 0.0
        self.trimmer = Trimmer(time.monotonic())
        self._wake: asyncio.Event | None = None  # the ticker's, while running
        self._data = DataWatch()  # frames through the port and from links (sleeve.pacing)
        self._metrics_route: Route | None = None
        self._tcp_port = cfg.port
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self.started = time.monotonic()

    # ------------------------------------------------------------------ views for callers
    @property
    def links(self) -> dict[bytes, Link]:
        return self.table.links

    @property
    def targets(self) -> dict[Any, TargetState]:
        return self.dialler.targets

    @property
    def udp(self) -> socket.socket | None:
        return self.underlay.udp

    @property
    def udp_port(self) -> int:
        return self.conns.udp_port

    @property
    def tcp_port(self) -> int:
        return self._tcp_port

    # ------------------------------------------------------------------ lifecycle
    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until ``stop()``. Sockets first, so a busy port fails before a TAP exists."""
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            server = await self._listen(stack)
            stack.callback(server.close)
            self._tcp_port = server.sockets[0].getsockname()[1]
            if self.cfg.http or self.cfg.api_socket:
                stack.push_async_callback((await self._start_api()).aclose)
            self.port = port = (self._port_factory() if callable(self._port_factory)
                                else self._port_factory)
            stack.callback(port.close)
            self.egress.port = port
            self.egress.vnet = self.conns.port_opened(port.vnet and self.cfg.offload)
            hwaddr = getattr(port, "hwaddr", None)  # a TAP: it can be a bridge port
            bridge = await self._start_bridge(stack, port, hwaddr)
            await self.fastdp.start(port.name, port.mtu, hwaddr, bridge)
            if self.fastdp.dp is not None:
                stack.push_async_callback(self.fastdp.stop)
                if self.fastdp.hb is not None:
                    hb_fd = self.fastdp.hb.fileno()
                    loop.add_reader(hb_fd, self.fastdp.on_heartbeats)
                    stack.callback(loop.remove_reader, hb_fd)
            await self.dns.start()  # after the port: it listens on the port's address
            stack.push_async_callback(self.dns.close)
            await self.ipam.start()  # after the port: exposed addresses go back on it
            stack.callback(self.ipam.close)
            if self.docker is not None:  # after bridge, DNS and IPAM: it uses all three
                await self.docker.start()
                stack.push_async_callback(self.docker.aclose)
            loop.add_reader(port.fileno(), self.egress.on_port_readable)
            stack.callback(loop.remove_reader, port.fileno())
            for sock in self.underlay.sockets():
                loop.add_reader(sock.fileno(), self.underlay.on_readable, sock, self.ingress)
                stack.callback(loop.remove_reader, sock.fileno())
            # spray sockets (traversal.spray) come and go while running
            self.underlay.watch = lambda s: loop.add_reader(
                s.fileno(), self.underlay.on_readable, s, self.ingress)

            def unwatch(s: socket.socket) -> None:
                loop.remove_reader(s.fileno())
            self.underlay.unwatch = unwatch
            stack.callback(self.underlay.close_extras)
            stack.callback(self.traversal.close)  # the hop meter's probe sockets
            stack.callback(self.table.close_all)
            if self.dialler.targets:
                self.dialler.save()
            log.info("sleeve %s (%s) listening on %s port %d, %s, port %s mtu %d",
                     self.name, self.cfg.nickname, self.cfg.listen, self.udp_port,
                     "encrypted" if self.cfg.encrypted else "UNENCRYPTED (--no-encryption)"
                     + (", OPEN to anyone (--open)" if self.cfg.open else ""),
                     port.name, port.mtu)
            if self.egress.vnet:
                log.info("port %s: TCP segmentation offload on (super-frames to peers "
                         "that take them)", port.name)
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    self.traversal.spawn = task_spawner(tg, self.drops)
                    self.portmap.spawn = self.traversal.spawn  # UPnP's HTTP runs in a task
                    tg.create_task(self._ticker())
                    if ready is not None:
                        ready()
                    await self._stop.wait()
                    raise _Stop
            except* _Stop:
                pass
            finally:
                self._tg = None
                self.traversal.spawn = self.portmap.spawn = None
                await self.portmap.aclose()  # releases the mapping (bounded: igd.TIMEOUT)
        log.info("sleeve %s stopped", self.name)

    async def _start_api(self) -> HttpServer:
        """Reads on TCP (--http), changes on the unix socket (--api-socket): status.http."""
        cfg = self.cfg
        host, hport = check_host_port(cfg.http, "--http") if cfg.http else (None, 0)
        unix = None
        if cfg.api_socket:
            path = pathlib.Path(cfg.api_socket)
            unix = ApiSocket(path, cfg.api_group,
                             manage_dir=path.parent == pathlib.Path(DEFAULT_API_SOCKET).parent)
        from sleeve.status.http import start_http  # aiohttp: loaded only when served

        try:
            return await start_http(host, hport, self.http_routes(), self.http_streams(), unix)
        except OSError as e:
            where = " and ".join(x for x in (cfg.http, cfg.api_socket) if x)
            raise OSError(e.errno, f"cannot serve the local API on {where}: "
                          f"{e.strerror or e}") from None

    async def _listen(self, stack: contextlib.AsyncExitStack) -> asyncio.Server:
        """UDP socket(s), then TCP on the same port number.

        With ``--port 0`` (tests, several routers in one process) the kernel picks the UDP
        port, and that number may be taken for TCP by someone else: then pick again, a few
        times, instead of failing at random.
        """
        for attempt in range(5):
            udp = contextlib.ExitStack()
            self._open_udp(udp)
            hosts = [h for h in _listen_addresses(self.cfg.listen)
                     if h is not None and self._bound(h)]
            try:
                server = await asyncio.start_server(
                    self.conns.accept, hosts, self.udp_port, reuse_address=True, backlog=64)
            except OSError as e:
                udp.close()
                if self.cfg.port == 0 and e.errno == errno.EADDRINUSE and attempt < 4:
                    continue
                raise OSError(e.errno, f"cannot listen on TCP port {self.udp_port}: "
                              f"{e.strerror}") from None
            stack.push(udp)
            return server
        raise AssertionError("unreachable")

    def _open_udp(self, stack: contextlib.ExitStack) -> None:
        v4, v6 = _listen_addresses(self.cfg.listen)
        uport = self.cfg.port
        if v4 is not None:
            uport = self.underlay.open(socket.AF_INET, v4, uport).getsockname()[1]
        if v6 is not None:
            try:
                uport = self.underlay.open(socket.AF_INET6, v6, uport).getsockname()[1]
            except OSError as e:
                if v4 is None:
                    raise
                log.warning("no IPv6 underlay: %s", e.strerror)  # e.g. IPv6 disabled
        stack.callback(self.underlay.close)
        self.conns.udp_port = uport

    async def _start_bridge(self, stack: contextlib.AsyncExitStack, port: Port,
                            hwaddr: bytes | None) -> str | None:
        """The router's bridge (before fastdp and DNS: both use it); None without one.

        A bridge that cannot be built is one log line and a status entry: the router runs
        on with the address on its TAP (containers cannot attach; the CNI plugin says so).
        """
        if self.cfg.bridge is None or hwaddr is None:
            return None
        br = HostBridge(self.cfg.bridge, port.name, port.mtu)
        try:
            await br.asetup(self.cfg.ip)
        except BridgeError as e:
            log.error("bridge %s: %s; running without it", self.cfg.bridge, e)
            self.bridge = br
            return None
        self.bridge = br
        stack.push_async_callback(self._close_bridge, br)
        log.info("bridge %s %s: port %s%s", br.name, br.state, port.name,
                 f", address {br.cidr}" if br.cidr else "")
        return br.name

    def _docker_bridge(self) -> BridgeInfo:
        from sleeve.docker.driver import BridgeInfo

        br = self.bridge
        up = br is not None and br.is_up
        return BridgeInfo(br.name if br is not None and up else None,
                          self.port.mtu if self.port is not None else self.cfg.mtu, self.cfg.ip)

    def _host_iface(self) -> str | None:
        """Where the host's own overlay addresses go (``sleeve expose``): the bridge when
        there is one (a bridge port such as the TAP does not route for the host), else the
        port."""
        if self.bridge is not None and self.bridge.is_up:
            return self.bridge.name
        return None if self.port is None else self.port.name

    async def _close_bridge(self, br: HostBridge) -> None:
        for err in await br.aclose():
            log.warning("bridge %s: %s", br.name, err)

    def bridge_info(self) -> dict[str, Any]:
        """``GET /bridge``: what the CNI plugin needs to attach a container here."""
        br = self.bridge
        dns = self.dns
        return {"bridge": br.name if br is not None and br.is_up else None,
                "state": "off (--no-bridge)" if br is None else br.state,
                "mtu": self.port.mtu if self.port is not None else self.cfg.mtu,
                "address": self.cfg.ip,
                "dns": {"serving": dns.server is not None,
                        "nameservers": [a for a, p in dns.listen if p == 53],
                        "domain": dns.domain.rstrip(".")}}

    def _bound(self, host: str) -> bool:
        return (self.underlay.udp6 if ":" in host else self.underlay.udp) is not None

    def http_routes(self) -> dict[str, Route]:
        return {
            "GET /status": json_route(self.status),
            "GET /report": json_route(self.report),
            "GET /routes": json_route(self.routes_view),
            "GET /metrics": self._metrics,
            "POST /connect": json_action(self.dialler.api_connect),
            "POST /forget": json_action(self.dialler.api_forget),
            "GET /dns": json_route(self.dns.status),
            "GET /bridge": json_route(self.bridge_info),
            "POST /dns/add": json_action(self.dns.api_add),
            "POST /dns/remove": json_action(self.dns.api_remove),
            "GET /ipam": json_route(self.ipam.status),
            "POST /ipam/allocate": json_async_action(self.ipam.api_allocate),
            "POST /ipam/release": json_action(self.ipam.api_release),
            "POST /ipam/rmpeer": json_action(self.ipam.api_rmpeer),
            "POST /ipam/reset": json_action(self.ipam.api_reset),
            "POST /ipam/expose": json_async_action(self.ipam.api_expose),
            **ui_routes(),  # the topology page, read-only
        }

    def _metrics(self, q: dict[str, str]) -> Reply | Awaitable[Reply]:
        """``GET /metrics``: prometheus-client is imported at the first scrape, not at
        start (a router nobody scrapes saves its memory, issue 23)."""
        if self._metrics_route is None:
            from sleeve.status.metrics import metrics_route

            self._metrics_route = metrics_route(self.metrics_status)
        return self._metrics_route(q)

    def http_streams(self) -> dict[str, EventStream]:
        return ui_streams(self.status)

    def add_target(self, t: Target) -> None:
        self.dialler.add(t)

    def stop(self) -> None:
        self.conns.stopping = True
        self._stop.set()

    # ------------------------------------------------------------------ wiring
    def _neighbour(self, peer: bytes) -> tuple[int, bytes] | None:
        link = self.table.get(peer)
        return None if link is None else (link.uid, link.sign_key)

    def _ident(self, peer: bytes) -> tuple[bytes, int] | None:
        rec = self.mesh.topology.get(peer)
        return None if rec is None else (rec.key, rec.uid)

    def _sync_own_record(self, now: float) -> None:
        self.topology.sync_links(
            (LinkInfo(lk.peer, lk.addr, lk.outbound, lk.usable) for lk in self.table), now)

    def _link_down(self, link: Link) -> None:
        n = self.macs.forget_peer(link.peer)
        log.info("disconnected from %s (%r); forgot %d MACs", link.name, link.nickname, n)
        self._sync_own_record(time.monotonic())
        self.fastdp.link_down(link.peer, "link down")

    # ------------------------------------------------------------------ timers
    async def _ticker(self) -> None:
        """``on_timer`` at 4 Hz, or 1 Hz while the router is settled (``sleeve.pacing``);
        a link coming or going, or a new dial target, wakes it at once."""
        wake = self._wake = asyncio.Event()
        while True:
            delay, why = TICK, "error"  # after an internal error too: never slower than before
            try:
                now = time.monotonic()
                self.on_timer(now)
                why = self._busy(now)
                delay = period(self.table, now, gso=self.underlay.offload, busy=bool(why))
            except Exception:
                log.exception("internal error in timer")
            self.stats.inc("ticks_idle" if delay == IDLE_TICK else "ticks")
            if delay != IDLE_TICK:  # why not 1 Hz (an idle mesh should show none)
                self.stats.inc(f"ticks_busy_{why or 'links'}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)
            wake.clear()

    def _poke(self, _link: Link | None = None) -> None:
        if self._wake is not None:
            self._wake.set()

    def _busy(self, now: float) -> str:
        """What outside the links' own state needs the 4 Hz tick, "" if nothing (pacing)."""
        soon, dls = now + IDLE_TICK, (self.ipam.next_deadline(), self.dns.next_deadline())
        rx = self.stats["port_rx_frames"] + sum(lk.stats.c["rx_frames"] for lk in self.table)
        due = any(dl is not None and dl < soon for dl in dls)
        return next((why for why, yes in (
            ("data", self._data.flowing(rx, now)), ("handshakes", self.conns.handshaking > 0),
            ("dials", self.dialler.busy(now, soon)), ("traversal", self.traversal.attempting()),
            ("fastdp", bool(self.fastdp.links)), ("deadlines", due),
            ("topology", self._data.moving(self.mesh.topology.generation, now))) if yes), "")

    def on_timer(self, now: float) -> None:
        self.traversal.tick(now)
        self.table.tick(now)
        self.egress.tick(now)
        self.ingress.tick(now)
        self.gossip.tick(now)
        self._sync_own_record(now)
        self.fastdp.tick(now)
        self.dns.tick(now)
        self.ipam.tick(now)
        if now >= self._next_mesh:
            self._next_mesh = now + MESH_PERIOD
            for gone in self.mesh.gc(now):
                n = self.macs.forget_peer(gone)
                self.gossip.peer_gone(gone)
                self.egress.caps.forget((gone,))
                log.info("peer %s left the mesh; forgot %d MACs", format_peer_id(gone), n)
            self.dialler.discover(self.mesh.topology.peers(), self.mesh.candidates(self.cfg.port))
            renewed = self.mesh.restarted_peers()  # dial them now, no backoff
            if renewed:
                self.dialler.renewed(renewed, now)
                self.egress.caps.forget(renewed)  # new keys: caps are proven anew
            self.traversal.start_attempts(now)
            if self.portmap.enabled:
                self.portmap.tick(now, self._gateway(), self.udp_port)
            self.macs.expire(now)
            if self.trimmer.tick(now):  # freed start-up buffers back to the system (RSS)
                self.stats.inc("malloc_trims")
        self.dialler.tick(now, task_spawner(self._tg, self.drops))

    def _gateway(self) -> str | None:
        """Our IPv4 next hop toward a directly linked peer (where a NAT-PMP gateway sits)."""
        return gateway_toward([lk.endpoint[0] for lk in self.table if lk.usable
                               and not lk.virtual and not lk.v6], self.portmap.gateway)

    # ------------------------------------------------------------------ status
    def report(self) -> dict[str, Any]:
        """Everything a bug report needs; never keys or the password."""
        import platform

        from sleeve import __version__

        return {
            "version": __version__, "python": platform.python_version(),
            "kernel": platform.release(), "config": self.cfg.summary(),
            "status": self.status(),
        }

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "name": self.name, "nickname": self.cfg.nickname,
            "encryption": "enabled" if self.cfg.encrypted else "DISABLED (--no-encryption)",
            "membership": self.cfg.membership,
            "port": self.udp_port,
            "interface": None if self.port is None else self.port.name,
            "mtu": None if self.port is None else self.port.mtu,
            "uptime_s": round(now - self.started, 1),
            "connections": [self.link_status(lk) for lk in self.table],
            "targets": self.dialler.status(now),
            "peers": self.mesh.peers_status(self.id, self.table),
            "routes": self.mesh.routes_status(self.table),
            "fastdp": self.fastdp.status(),
            "bridge": None if self.bridge is None else self.bridge.status(),
            "gossip": self.gossip.status(),
            "dns": self.dns.status(),
            "ipam": self.ipam.status(),
            "traversal": {**self.traversal.status(now), "port_mapping": self.portmap.status()},
            "docker": None if self.docker is None else self.docker.status(),
            "macs": [{"mac": m.hex(":"), "peer": "local" if p == LOCAL else format_peer_id(p),
                      "age_s": round(age, 1)} for m, p, age in self.macs.entries(now)],
            "drops": self.drop_counts(),
            "handshakes_in_progress": self.conns.handshaking,
            "counters": self.stats.snapshot(),
            "pid": os.getpid(),
        }

    def routes_view(self) -> dict[str, Any]:
        """``GET /routes``: who this router can reach, O(peers), without the records'
        connection lists that make ``/status`` O(peers^2) (~400 KB at 50 routers): what
        a monitor polling many routers every second reads."""
        return {"name": self.name, "pid": os.getpid(), "peers": len(self.mesh.topology),
                "established": sum(lk.usable for lk in self.table),
                "routes": self.mesh.routes_status(self.table)}

    def drop_counts(self) -> dict[str, int]:
        """Our drops by reason, and what the kernel dropped before we saw it."""
        out = self.drops.snapshot()
        kernel = self.underlay.kernel_drops()
        if kernel:
            out["udp_kernel_drops"] = kernel  # junk filtered by the socket, or buffer full
        return out

    def metrics_status(self) -> dict[str, Any]:
        """What a /metrics scrape reads: O(links), on the event loop at every scrape.

        ``status()`` lists every MAC (up to 65,536), peer record and DNS record; the
        metrics only count them, so this view gives the counts and leaves the lists out.
        """
        return {
            "connections": [self.link_status(lk) for lk in self.table],
            "drops": self.drop_counts(),
            "counters": self.stats.snapshot(),
            "mac_count": len(self.macs),
            "peer_count": len(self.mesh.topology),
            "dns": self.dns.metrics_status(),
            "ipam": self.ipam.status(),  # O(ring entries + our allocations), not O(MACs)
            "fastdp": {"active": self.fastdp.dp is not None},
        }

    def link_status(self, link: Link) -> dict[str, Any]:
        if link.over_tcp:
            path, why = "tcp", "over TCP: UDP does not get through"
        else:
            path, why = self.fastdp.link_path(link)
        offload = "super-frames" if link.peer_vnet and self.egress.vnet else "per frame"
        return {**link.status(), "path": path, "path_reason": why, "offload": offload}


class _Stop(Exception): ...


def _listen_addresses(listen: str) -> tuple[str | None, str | None]:
    """(IPv4, IPv6) addresses to bind: both families for a wildcard, else the one given."""
    if listen in ("", "0.0.0.0", "::"):
        return "0.0.0.0", "::"
    if ":" in listen:
        return None, listen
    return listen, None
