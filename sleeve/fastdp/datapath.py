"""The kernel side of the fast datapath: a bridge, the router's TAP and a VXLAN device.

Layout (``--ip`` goes on the bridge; the host talks to the overlay through it)::

            host stack (overlay address, bridge MAC = the TAP's MAC)
                               |
                     +-------- bridge "sleeve" ---------+
                     |  isolated          isolated      |
                 TAP "sleeve0"                    VXLAN "vxsleeve"
              (the router's fd:            (kernel: UDP 6784, fixed VNI,
               sleeve, relays,              no learning, DF set, static FDB
               broadcasts)                  entries for fastdp peers only)

Why it never loops nor duplicates, whatever mix of links is on fastdp, sleeve or
relayed:

- Both ports are *isolated*: the bridge never forwards between them. A frame that
  came from the kernel path is only delivered to the host (and to any non-isolated
  port, e.g. a container), never handed to the router, and vice versa. Each router
  and each kernel only ever delivers to its own host.
- The VXLAN port has flooding (unknown unicast, multicast, broadcast) and learning
  off: the bridge sends it only frames whose destination MAC has a static FDB entry
  on it, i.e. a MAC owned by a peer whose link is on fastdp. Everything else —
  broadcasts, multicast, unknown unicast, MACs of sleeve or relayed peers — goes to
  the TAP and through the router, which floods along its broadcast trees exactly as
  without fastdp. So every frame leaves the host on exactly one path. (Flooding
  broadcasts through VXLAN *as well* would deliver them twice to fastdp peers, as
  the router must still send them to those peers to reach the peers behind them.)
- Static bridge entries are *sticky*: a frame the router injects from a fastdp peer
  (the peer may still send by sleeve, each end chooses independently) cannot move
  the entry back to the TAP.

When the router runs its own bridge (``sleeve.capture.bridge``, the default: containers'
veths are ports of it too), the datapath is built with ``existing_bridge=True``: it only
adds and removes the VXLAN port; the bridge, the TAP's membership and the address stay
the router's. Standalone (tests, ``--no-bridge``) it builds the bridge itself as above.

All netlink runs on one worker thread (:mod:`sleeve.fastdp.netlink`). ``setup`` and
``teardown`` wait for it (start-up, shutdown; async variants exist); FDB changes
are queued and return at once, and failures are counted, logged and repaired by a
full reconcile on the next :meth:`Datapath.sync_macs`.
"""

from __future__ import annotations

import concurrent.futures
import errno
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from sleeve.fastdp.netlink import DatapathError, NetlinkWorker, describe, nl_errno

log = logging.getLogger("sleeve.fastdp")

DEFAULT_PORT: Final = 6784  # UDP destination port of the VXLAN packets (router port + 1)
DEFAULT_VNI: Final = 6783
VXLAN_OVERHEAD4: Final = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
VXLAN_OVERHEAD6: Final = 70

# <linux/neighbour.h>
NTF_SELF: Final = 0x02
NTF_MASTER: Final = 0x04
NTF_STICKY: Final = 0x40
NUD_REACHABLE: Final = 0x02
NUD_NOARP: Final = 0x40
NUD_PERMANENT: Final = 0x80
# VXLAN FDB: permanent (never aged). Bridge FDB: "static" = NOARP (+REACHABLE, so that
# pyroute2 does not add PERMANENT, which on a bridge means "local: deliver to the host").
_VX_STATE: Final = NUD_PERMANENT | NUD_NOARP
_BR_STATIC: Final = NUD_NOARP | NUD_REACHABLE
_BR_LOCAL: Final = NUD_PERMANENT | NUD_NOARP

_IFNAME_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")
_ZERO_MAC: Final = b"\x00" * 6


def fmt_mac(mac: bytes) -> str:
    if len(mac) != 6:
        raise DatapathError(f"not a MAC address: {mac!r}")
    return mac.hex(":")


def parse_mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def _ignore(e: BaseException, *codes: int) -> bool:
    return nl_errno(e) in codes


class Datapath:
    """Creates and programs the bridge + VXLAN device next to the router's TAP.

    ``local_ip``: the underlay address VXLAN packets leave from (also fixes the
    family: one datapath is IPv4 or IPv6; default IPv4, source chosen by routing).
    ``mtu``: the overlay MTU (TAP, bridge and VXLAN device get it); the underlay must
    carry ``mtu + 50`` (IPv4) / ``mtu + 70`` (IPv6) bytes, which the heartbeats prove.
    ``mac``: the bridge's MAC (default: the TAP's, so the host keeps its MAC whether
    fastdp is on or off). ``local_hb_mac``: our own heartbeat MAC
    (``heartbeat_mac(our peer id)``), installed as a local bridge entry so that
    heartbeats addressed to us are not flooded to other bridge ports.

    The request methods (``add_peer``, ``set_mac``, ``sync_macs``...) keep the desired
    state on the caller's side without a lock: call them from one thread (the event
    loop). They validate their arguments at once (``DatapathError`` for misuse) and
    return a ``concurrent.futures.Future`` that the caller may ignore: failures are
    counted in ``errors``/``last_error`` and repaired by the next ``sync_macs``.
    """

    def __init__(self, *, bridge: str = "sleeve", tap: str = "sleeve0",
                 vxlan: str = "vxsleeve", vni: int = DEFAULT_VNI, port: int = DEFAULT_PORT,
                 local_ip: str | None = None, mtu: int = 1406, mac: bytes | None = None,
                 local_hb_mac: bytes | None = None, worker: NetlinkWorker | None = None,
                 existing_bridge: bool = False) -> None:
        for n in (bridge, tap, vxlan):
            if not _IFNAME_RE.match(n):
                raise DatapathError(f"bad interface name {n!r}")
        if len({bridge, tap, vxlan}) != 3:
            raise DatapathError("bridge, TAP and VXLAN device need three different names")
        if not 1 <= vni < 1 << 24:
            raise DatapathError(f"VNI {vni} out of range 1..16777215")
        if not 1 <= port <= 65535:
            raise DatapathError(f"bad UDP port {port}")
        if not 68 <= mtu <= 65535 - VXLAN_OVERHEAD6:
            raise DatapathError(f"bad MTU {mtu}")
        self.family = 4
        if local_ip is not None:
            try:
                self.family = ipaddress.ip_address(local_ip).version
            except ValueError as e:
                raise DatapathError(f"bad local address {local_ip!r}") from e
        for m in (mac, local_hb_mac):
            if m is not None and (len(m) != 6 or m[0] & 1):
                raise DatapathError("MACs must be 6-byte unicast addresses")
        self.bridge, self.tap, self.vxlan = bridge, tap, vxlan
        self.vni, self.port, self.local_ip, self.mtu = vni, port, local_ip, mtu
        self.mac = mac
        self.local_hb_mac = local_hb_mac
        # True: the router's bridge (sleeve.capture.bridge) already holds the TAP and the
        # overlay address; we only add and remove the VXLAN port (and our heartbeat MAC).
        self.existing_bridge = existing_bridge
        self._nl = worker or NetlinkWorker()
        self._own_worker = worker is None
        # Kernel state (written by the worker thread only).
        self._br_index = 0
        self._vx_index = 0
        self._moved_cidr: str | None = None
        self._created: list[str] = []  # only these are ever deleted
        self.is_up = False
        self._torn_down = False
        # Desired state as requested by the caller (caller's thread only).
        self._macs: dict[bytes, str] = {}
        self._peers: dict[str, bytes] = {}
        # Written by the worker, read by the caller: plain ints/str/bool under the GIL.
        self._dirty = False
        self.ops = 0
        self.errors = 0
        self.last_error: str | None = None

    # ---------------------------------------------------------------- validation

    def _check_ip(self, ip: str) -> str:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError as e:
            raise DatapathError(f"bad peer address {ip!r}") from e
        if addr.version != self.family:
            raise DatapathError(f"peer {ip} is IPv{addr.version} but this VXLAN device is "
                                f"IPv{self.family}")
        return str(addr)

    # ---------------------------------------------------------------- setup / teardown

    def setup(self, cidr: str | None = None, timeout: float = 15.0) -> None:
        """Build the datapath (blocking). Raises DatapathError; on failure nothing is left.

        ``cidr``: the overlay address; removed from the TAP if it is there and put on
        the bridge.
        """
        if cidr is not None:
            try:
                ipaddress.ip_interface(cidr)
            except ValueError as e:
                raise DatapathError(f"bad overlay address {cidr!r}") from e
        self._nl.call(lambda ipr: self._nl_setup(ipr, cidr), timeout)

    async def asetup(self, cidr: str | None = None, timeout: float = 15.0) -> None:
        if cidr is not None:
            try:
                ipaddress.ip_interface(cidr)
            except ValueError as e:
                raise DatapathError(f"bad overlay address {cidr!r}") from e
        await self._nl.acall(lambda ipr: self._nl_setup(ipr, cidr), timeout)

    def teardown(self, timeout: float = 15.0) -> list[str]:
        """Remove the bridge and VXLAN device, put the address back on the TAP (blocking).

        Never raises; returns the problems met (empty: clean). Stops the worker thread
        if this datapath created it. Only devices this object created are deleted.
        Idempotent.
        """
        if self._torn_down:
            return []
        self._torn_down = True
        try:
            errors = self._nl.call(self._nl_teardown, timeout)
        except Exception as e:
            errors = [describe(e)]
        if self._own_worker:
            self._nl.close()
        self._macs.clear()
        self._peers.clear()
        return errors

    async def ateardown(self, timeout: float = 15.0) -> list[str]:
        if self._torn_down:
            return []
        self._torn_down = True
        try:
            errors = await self._nl.acall(self._nl_teardown, timeout)
        except Exception as e:
            errors = [describe(e)]
        if self._own_worker:
            self._nl.close(0.0)
        self._macs.clear()
        self._peers.clear()
        return errors

    # ---------------------------------------------------------------- peers and MACs

    def _queue(self, what: str, fn: Callable[[Any], None]) -> concurrent.futures.Future[None]:
        fut = self._nl.submit(fn)

        def done(f: concurrent.futures.Future[None]) -> None:
            self.ops += 1
            e = f.exception()
            if e is not None:
                self.errors += 1
                self._dirty = True
                self.last_error = f"{what}: {describe(e)}"
                log.warning("fast datapath: %s", self.last_error)

        fut.add_done_callback(done)
        return fut

    def add_peer(self, peer_ip: str, hb_mac: bytes) -> concurrent.futures.Future[None]:
        """Make ``hb_mac`` (the peer's heartbeat MAC) reach ``peer_ip`` through VXLAN.

        Call when a link may use fastdp, before heartbeating it. Data MACs are separate
        (:meth:`set_mac` / :meth:`sync_macs`) and only while the link is on fastdp.
        """
        ip = self._check_ip(peer_ip)
        mac = fmt_mac(hb_mac)
        self._peers[ip] = hb_mac
        return self._queue(f"add peer {ip}", lambda ipr: self._nl_vx_set(ipr, mac, ip))

    def remove_peer(self, peer_ip: str) -> concurrent.futures.Future[None]:
        """Forget everything that points at ``peer_ip``: its heartbeat MAC and any data MAC.

        Works from the kernel's FDB, not from our bookkeeping, so nothing can linger.
        """
        ip = self._check_ip(peer_ip)
        self._peers.pop(ip, None)
        for m in [m for m, p in self._macs.items() if p == ip]:
            del self._macs[m]
        return self._queue(f"remove peer {ip}", lambda ipr: self._nl_remove_peer(ipr, ip))

    def set_mac(self, mac: bytes, peer_ip: str) -> concurrent.futures.Future[None]:
        """Frames for ``mac`` go to ``peer_ip`` by VXLAN (bridge entry sticky + static)."""
        ip = self._check_ip(peer_ip)
        s = fmt_mac(mac)
        if mac[0] & 1:
            raise DatapathError(f"{s} is a group address: broadcasts always go by sleeve")
        self._macs[mac] = ip
        return self._queue(f"set {s}", lambda ipr: self._nl_set_mac(ipr, s, ip))

    def del_mac(self, mac: bytes) -> concurrent.futures.Future[None]:
        """Frames for ``mac`` go back to the router (the bridge floods them to the TAP)."""
        s = fmt_mac(mac)
        self._macs.pop(mac, None)
        return self._queue(f"delete {s}", lambda ipr: self._nl_del_mac(ipr, s))

    def sync_macs(self, desired: Mapping[bytes, str]) -> int:
        """Make the data-MAC entries equal ``desired`` (MAC -> peer IP); returns #changes.

        Cheap when nothing changed (a dict comparison), so the node can call it from its
        tick with "MACs owned by peers whose link is on fastdp". After a failed netlink
        operation the next call reconciles against the kernel's FDB instead.
        """
        for ip in set(desired.values()):
            self._check_ip(ip)
        if self._dirty:
            self._dirty = False
            self._macs = dict(desired)
            self.resync()
            return len(desired)
        changes = 0
        for mac in [m for m in self._macs if m not in desired]:
            self.del_mac(mac)
            changes += 1
        for mac, ip in desired.items():
            if self._macs.get(mac) != ip:
                self.set_mac(mac, ip)
                changes += 1
        return changes

    def resync(self) -> concurrent.futures.Future[None]:
        """Reconcile the kernel FDB with what was requested (after errors, or on demand)."""
        want_vx = {fmt_mac(h): ip for ip, h in self._peers.items()}
        want_vx.update({fmt_mac(m): ip for m, ip in self._macs.items()})
        want_br = {fmt_mac(m) for m in self._macs}
        return self._queue("resync", lambda ipr: self._nl_reconcile(ipr, want_vx, want_br))

    def fdb(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The FDB entries on the VXLAN device (blocking; for status, tools and tests)."""
        return self._nl.call(self._nl_dump, timeout)

    def status(self) -> dict[str, Any]:
        return {"bridge": self.bridge, "vxlan": self.vxlan, "tap": self.tap,
                "vni": self.vni, "port": self.port, "local_ip": self.local_ip,
                "mtu": self.mtu, "up": self.is_up, "peers": len(self._peers),
                "macs": len(self._macs), "netlink_ops": self.ops,
                "netlink_errors": self.errors, "last_error": self.last_error}

    # ---------------------------------------------------------------- worker side

    def _nl_setup(self, ipr: Any, cidr: str | None) -> None:
        step = "looking up the TAP"
        try:
            idx = ipr.link_lookup(ifname=self.tap)
            if not idx:
                raise DatapathError(f"TAP {self.tap} does not exist (create the port first)")
            tap = idx[0]
            mac = self.mac
            if mac is None:
                mac = parse_mac(ipr.get_links(tap)[0].get_attr("IFLA_ADDRESS"))
            step = "removing leftovers"
            self._nl_remove_leftovers(ipr)
            if self.existing_bridge:
                step = f"looking up bridge {self.bridge}"
                have = ipr.link_lookup(ifname=self.bridge)
                if not have:
                    raise DatapathError(f"bridge {self.bridge} does not exist")
                self._br_index = have[0]
            else:
                step = f"creating bridge {self.bridge}"
                ipr.link("add", ifname=self.bridge, kind="bridge", address=fmt_mac(mac),
                         mtu=self.mtu, br_stp_state=0, br_forward_delay=0,
                         br_mcast_snooping=0)
                self._created.append(self.bridge)
                self._br_index = ipr.link_lookup(ifname=self.bridge)[0]
            step = f"creating VXLAN device {self.vxlan}"
            ipr.link("add", **self._vxlan_spec(self.vxlan, self.vni))
            self._created.insert(0, self.vxlan)
            self._vx_index = ipr.link_lookup(ifname=self.vxlan)[0]
            step = "adding the ports to the bridge"
            ipr.link("set", index=self._vx_index, master=self._br_index)
            ipr.link("set", index=tap, master=self._br_index)
            step = "setting the bridge ports isolated"
            ipr.brport("set", index=self._vx_index, isolated=1, learning=0,
                       unicast_flood=0, mcast_flood=0, bcast_flood=0)
            ipr.brport("set", index=tap, isolated=1, learning=1)
            step = "bringing the devices up"
            for i in (self._vx_index, tap, self._br_index):
                ipr.link("set", index=i, state="up")
            if self.local_hb_mac is not None:
                step = "adding our heartbeat MAC to the bridge"
                ipr.fdb("replace", ifindex=self._br_index, lladdr=fmt_mac(self.local_hb_mac),
                        state=_BR_LOCAL, flags=NTF_SELF)
            if cidr is not None and not self.existing_bridge:
                step = f"moving {cidr} to {self.bridge}"
                self._moved_cidr = cidr  # first: a failure half-way still restores it
                self._nl_move_address(ipr, cidr, tap, self._br_index)
        except Exception as e:
            self._nl_teardown(ipr)
            if isinstance(e, DatapathError):
                raise
            raise DatapathError(f"fast datapath setup failed {step}: {describe(e)}") from e
        self.is_up = True

    def _vxlan_spec(self, name: str, vni: int) -> dict[str, Any]:
        spec: dict[str, Any] = dict(ifname=name, kind="vxlan", vxlan_id=vni,
                                    vxlan_port=self.port, vxlan_learning=0, vxlan_df=1,
                                    mtu=self.mtu)
        if self.local_ip is not None:
            spec["vxlan_local6" if self.family == 6 else "vxlan_local"] = self.local_ip
        return spec

    def _nl_remove_leftovers(self, ipr: Any) -> None:
        """Devices with our names from a crashed run: delete them if they have our kind."""
        pairs = [(self.vxlan, "vxlan")]
        if not self.existing_bridge:  # else the bridge is the router's: never ours to delete
            pairs.append((self.bridge, "bridge"))
        for name, kind in pairs:
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                continue
            link = ipr.get_links(idx[0])[0]
            info = link.get_attr("IFLA_LINKINFO")
            have = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if have != kind:
                raise DatapathError(f"{name} exists and is not a {kind} device ({have}); "
                                    "choose another name")
            log.warning("fast datapath: removing leftover %s %s", kind, name)
            ipr.link("del", index=idx[0])

    def _nl_move_address(self, ipr: Any, cidr: str, src: int, dst: int) -> None:
        iface = ipaddress.ip_interface(cidr)
        try:
            ipr.addr("del", index=src, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except Exception as e:
            if not _ignore(e, errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                raise
        try:
            ipr.addr("add", index=dst, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except Exception as e:
            if not _ignore(e, errno.EEXIST):
                raise

    def _nl_teardown(self, ipr: Any) -> list[str]:
        errors: list[str] = []
        if self.existing_bridge and self._br_index and self.local_hb_mac is not None:
            try:  # the bridge outlives us: take our heartbeat MAC off it
                ipr.fdb("del", ifindex=self._br_index, lladdr=fmt_mac(self.local_hb_mac),
                        state=_BR_LOCAL, flags=NTF_SELF)
            except Exception as e:
                if not _ignore(e, errno.ENOENT, errno.ENODEV):
                    errors.append(f"removing our heartbeat MAC: {describe(e)}")
        for name in self._created:
            try:
                idx = ipr.link_lookup(ifname=name)
                if idx:
                    ipr.link("del", index=idx[0])
            except Exception as e:
                if not _ignore(e, errno.ENODEV):
                    errors.append(f"deleting {name}: {describe(e)}")
        if self._moved_cidr is not None:
            try:
                idx = ipr.link_lookup(ifname=self.tap)
                if idx:  # the TAP may be gone already (router shutting down)
                    iface = ipaddress.ip_interface(self._moved_cidr)
                    try:
                        ipr.addr("add", index=idx[0], address=str(iface.ip),
                                 prefixlen=iface.network.prefixlen)
                    except Exception as e:
                        if not _ignore(e, errno.EEXIST):
                            raise
            except Exception as e:
                errors.append(f"putting {self._moved_cidr} back on {self.tap}: {describe(e)}")
            self._moved_cidr = None
        self._created.clear()
        self._br_index = self._vx_index = 0
        self.is_up = False
        return errors

    def _need_up(self) -> int:
        if not self._vx_index:
            raise DatapathError("the fast datapath is not set up")
        return self._vx_index

    def _nl_vx_set(self, ipr: Any, mac: str, ip: str) -> None:
        ipr.fdb("replace", ifindex=self._need_up(), lladdr=mac, dst=ip, state=_VX_STATE,
                flags=NTF_SELF)

    def _nl_vx_del(self, ipr: Any, mac: str, ip: str | None = None) -> None:
        kw: dict[str, Any] = {"dst": ip} if ip is not None else {}
        try:
            ipr.fdb("del", ifindex=self._need_up(), lladdr=mac, state=_VX_STATE,
                    flags=NTF_SELF, **kw)
        except Exception as e:
            if not _ignore(e, errno.ENOENT):
                raise

    def _nl_br_set(self, ipr: Any, mac: str) -> None:
        ipr.fdb("replace", ifindex=self._need_up(), lladdr=mac, state=_BR_STATIC,
                flags=NTF_MASTER | NTF_STICKY)

    def _nl_br_del(self, ipr: Any, mac: str) -> None:
        try:
            ipr.fdb("del", ifindex=self._need_up(), lladdr=mac, state=_BR_STATIC,
                    flags=NTF_MASTER)
        except Exception as e:
            if not _ignore(e, errno.ENOENT):
                raise

    def _nl_set_mac(self, ipr: Any, mac: str, ip: str) -> None:
        # VXLAN entry first: once the bridge sends the MAC to the VXLAN port, it must
        # already know where to.
        self._nl_vx_set(ipr, mac, ip)
        self._nl_br_set(ipr, mac)

    def _nl_del_mac(self, ipr: Any, mac: str) -> None:
        self._nl_br_del(ipr, mac)  # first: frames go back to the TAP at once
        self._nl_vx_del(ipr, mac)

    def _nl_dump(self, ipr: Any) -> list[dict[str, Any]]:
        vx = self._need_up()
        out: list[dict[str, Any]] = []
        for m in ipr.fdb("dump"):
            if m["ifindex"] != vx:
                continue
            out.append({"mac": m.get_attr("NDA_LLADDR"), "dst": m.get_attr("NDA_DST"),
                        "self": bool(m["flags"] & NTF_SELF),
                        "master": bool(m["flags"] & NTF_MASTER),
                        "sticky": bool(m["flags"] & NTF_STICKY),
                        "local": bool(m["state"] & NUD_PERMANENT) and
                        bool(m["flags"] & NTF_MASTER)})
        return out

    def _nl_remove_peer(self, ipr: Any, ip: str) -> None:
        macs = {e["mac"] for e in self._nl_dump(ipr) if e["self"] and e["dst"] == ip}
        for mac in sorted(macs):
            self._nl_br_del(ipr, mac)
            self._nl_vx_del(ipr, mac, ip)

    def _nl_reconcile(self, ipr: Any, want_vx: dict[str, str], want_br: set[str]) -> None:
        have = self._nl_dump(ipr)
        have_br = {e["mac"] for e in have if e["master"] and not e["local"]}
        have_vx: dict[str, set[str]] = {}
        for e in have:
            if e["self"] and e["dst"] is not None:
                have_vx.setdefault(e["mac"], set()).add(e["dst"])
        for mac in have_br - want_br:
            self._nl_br_del(ipr, mac)
        for mac, ips in have_vx.items():
            if want_vx.get(mac) is None or ips != {want_vx[mac]}:
                self._nl_vx_del(ipr, mac)
        for mac, ip in want_vx.items():
            if have_vx.get(mac) != {ip}:
                self._nl_vx_set(ipr, mac, ip)
        for mac in want_br:
            self._nl_br_set(ipr, mac)  # also restores sticky/static flags
