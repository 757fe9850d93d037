"""The node's fast-datapath agent: which links may use the kernel, and keeping it in step.

The node calls the hooks below (``link_down`` is subscribed to the link table);
everything kernel-side goes through ``Datapath`` (one netlink worker thread) and
``HeartbeatSocket``. Policy, per link:

- the network is encrypted and the peer's underlay address is not in
  ``--trusted-subnets``: "sleeve: encryption required" (our kernels have no IPsec,
  WireGuard or MACsec to encrypt VXLAN, and we do not pretend otherwise);
- the control connection is relayed (hole punched) or the peer's UDP endpoint is not
  the address it was dialled at / announced (NAT): "sleeve: peer behind NAT";
- otherwise a ``FastdpLink`` proves the VXLAN path with authenticated full-MTU
  heartbeats, and only then are the peer's MACs put in the kernel's tables.

Frames never need a routing change: once the kernel has a MAC, frames to it leave
through VXLAN and never reach our TAP; whatever does reach the TAP is correct to send
by sleeve. The MAC table of a peer on fastdp is refreshed here, because its unicast
frames no longer pass the router (broadcasts, which do, still reveal moves).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from typing import Any

from sleeve.config import Config
from sleeve.fastdp.datapath import Datapath
from sleeve.fastdp.hbsock import HeartbeatSocket, HeartbeatSocketError
from sleeve.fastdp.heartbeat import derive_key, heartbeat_mac, peek_sender
from sleeve.fastdp.link import Enter, FastdpLink, Leave, Output, Send
from sleeve.fastdp.netlink import DatapathError
from sleeve.fastdp.probe import Capability, aprobe
from sleeve.links.link import Link
from sleeve.links.table import LinkTable
from sleeve.proto.mactable import LOCAL, MacTable
from sleeve.proto.stats import Counters

log = logging.getLogger("sleeve")

SYNC_PERIOD = 1.0


class FastdpAgent:
    def __init__(self, cfg: Config, me: bytes, links: LinkTable, macs: MacTable,
                 drops: Counters, stats: Counters) -> None:
        self.cfg = cfg
        self.me = me
        self.table = links
        self.macs = macs
        self.drops = drops
        self.stats = stats
        self.capability: Capability | None = None
        self.dp: Datapath | None = None
        self.hb: HeartbeatSocket | None = None
        self.links: dict[bytes, FastdpLink] = {}
        self.peer_ip: dict[bytes, str] = {}
        self._next_sync = 0.0
        self.trusted = [ipaddress.ip_network(n, strict=False)
                        for n in cfg.trusted_subnets]

    @property
    def wanted(self) -> bool:
        cfg = self.cfg
        return cfg.fastdp and (not cfg.encrypted or bool(self.trusted))

    async def start(self, tap_name: str, mtu: int, mac: bytes | None,
                    bridge: str | None = None) -> None:
        """Probe and build the VXLAN port (and the bridge, unless the router's ``bridge``
        exists already); on any failure run sleeve-only (logged)."""
        cfg = self.cfg
        if not cfg.fastdp:
            self.capability = Capability(False, "turned off (--no-fastdp)")
            return
        if mac is None:
            self.capability = Capability(False, "needs the TAP port (not with --attach)")
            return
        if not self.wanted:
            self.capability = Capability(False, "the network is encrypted and no "
                                         "--trusted-subnets are given")
            return
        self.capability = await aprobe(cfg.port + 1)
        if not self.capability.ok:
            log.warning("fast datapath unavailable: %s", self.capability.reason)
            return
        dp = Datapath(tap=tap_name, port=cfg.port + 1, mtu=mtu, mac=mac,
                      local_hb_mac=heartbeat_mac(self.me), bridge=bridge or "sleeve",
                      existing_bridge=bridge is not None)
        try:
            await dp.asetup(None if bridge else cfg.ip)
            self.hb = HeartbeatSocket(dp.vxlan)
        except (DatapathError, HeartbeatSocketError) as e:
            log.warning("fast datapath setup failed, sleeve only: %s", e)
            self.capability = Capability(False, f"setup failed: {e}")
            with contextlib.suppress(Exception):
                await dp.ateardown()
            return
        self.dp = dp
        log.info("fast datapath ready: bridge %s, VXLAN %s port %d", dp.bridge, dp.vxlan,
                 dp.port)

    async def stop(self) -> None:
        if self.hb is not None:
            self.hb.close()
            self.hb = None
        if self.dp is not None:
            with contextlib.suppress(Exception):
                await self.dp.ateardown()
            self.dp = None

    # -- policy -------------------------------------------------------------------------
    def why_not(self, link: Link) -> str | None:
        """Why this link must stay on sleeve, or None if it may try the kernel path."""
        host = link.endpoint[0]
        if self.cfg.encrypted and not any(_in(host, n) for n in self.trusted):
            return "sleeve: encryption required"
        if self.dp is None:
            return None if self.capability is None else f"sleeve: fastdp {self.capability.reason}"
        if link.virtual or link.endpoint[1] != link.hello_port or host != link.remote_tcp[0]:
            return "sleeve: peer behind NAT"
        if (":" in host) != (self.dp.family == 6):
            return "sleeve: other address family than the VXLAN device"
        return None

    # -- hooks from the node --------------------------------------------------------------
    def tick(self, now: float) -> None:
        if self.dp is None or self.hb is None:
            return
        table = self.table
        for link in table:
            peer = link.peer
            fl = self.links.get(peer)
            if fl is None:
                if link.usable and link.endpoint_learnt and self.why_not(link) is None:
                    self._link_up(link, now)
                continue
            ip = self.peer_ip[peer]
            if link.endpoint[0] != ip or self.why_not(link) is not None:
                self.link_down(peer, "underlay endpoint changed")  # re-added next tick
                continue
            self._handle(fl, fl.poll(now))
        for peer in list(self.links):
            if peer not in table:
                self.link_down(peer, "link down")
        if now >= self._next_sync:
            self._next_sync = now + SYNC_PERIOD
            self.sync(now)

    def on_heartbeats(self) -> None:
        if self.hb is None:
            return
        now = time.monotonic()
        for _src, payload in self.hb.recv_batch():
            peer = peek_sender(payload)
            fl = self.links.get(peer) if peer is not None else None
            if fl is None:
                self.drops.inc("fastdp_heartbeat_unknown")
                continue
            self._handle(fl, fl.on_payload(payload, now))

    def link_down(self, peer: bytes, reason: str) -> None:
        fl = self.links.pop(peer, None)
        ip = self.peer_ip.pop(peer, None)
        if fl is not None and fl.on_fastdp:
            log.info("fast datapath to %s off: %s", peer.hex(":"), reason)
        if self.dp is not None and ip is not None:
            self.dp.remove_peer(ip)
            self.sync(time.monotonic())

    def _link_up(self, link: Link, now: float) -> None:
        assert self.dp is not None
        send_key, recv_key = link.fastdp_keys
        fl = FastdpLink(self.me, link.peer, derive_key(send_key), derive_key(recv_key),
                        self.dp.mtu, now)
        self.links[link.peer] = fl
        self.peer_ip[link.peer] = link.endpoint[0]
        self.dp.add_peer(link.endpoint[0], heartbeat_mac(link.peer))
        self._handle(fl, fl.enable(now))

    def _handle(self, fl: FastdpLink, outs: list[Output]) -> None:
        for o in outs:
            if isinstance(o, Send):
                if self.hb is not None:
                    self.hb.send(fl.dst_mac, fl.src_mac, o.payload)
            elif isinstance(o, Enter):
                log.info("link to %s on fast datapath", fl.remote.hex(":"))
                self.stats.inc("fastdp_enter")
                self.sync(time.monotonic())
            elif isinstance(o, Leave):
                log.info("link to %s back on sleeve: %s", fl.remote.hex(":"), o.reason)
                self.stats.inc("fastdp_leave")
                self.sync(time.monotonic())

    def sync(self, now: float) -> None:
        """Kernel tables := the MACs owned by peers on fastdp (refreshing them here)."""
        if self.dp is None:
            return
        desired: dict[bytes, str] = {}
        macs = self.macs
        for mac, owner, _age in macs.entries(now):
            if owner == LOCAL:
                continue
            fl = self.links.get(owner)
            if fl is not None and fl.on_fastdp:
                desired[mac] = self.peer_ip[owner]
                macs.learn_remote(mac, owner, now)  # its frames no longer pass us
        self.dp.sync_macs(desired)

    # -- status -----------------------------------------------------------------------------
    def link_path(self, link: Link) -> tuple[str, str]:
        fl = self.links.get(link.peer)
        if fl is not None:
            return ("fastdp" if fl.on_fastdp else "sleeve"), fl.health.reason(time.monotonic())
        why = self.why_not(link)
        return "sleeve", why or "sleeve: fast datapath not tried yet"

    def status(self) -> dict[str, Any]:
        cap = self.capability
        out: dict[str, Any] = {"available": bool(cap and cap.ok),
                               "reason": cap.reason if cap else "not probed",
                               "active": self.dp is not None}
        if self.dp is not None:
            out["datapath"] = self.dp.status()
            out["links_on_fastdp"] = sum(fl.on_fastdp for fl in self.links.values())
        return out


def _in(host: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        return ipaddress.ip_address(host) in net
    except ValueError:
        return False
