"""The router's Linux bridge: one L2 segment per host, of which the TAP is a port.

Layout (``--bridge NAME``, default ``sleeve``; ``--no-bridge`` keeps the address on the TAP)::

                 host stack: overlay address (--ip), DNS :53, bridge MAC = the TAP's MAC
                                        |
          +---------------------- bridge "sleeve" (mtu = overlay mtu) -----------------+
          |   isolated                   isolated (fastdp only)     hairpin, learning   |
      TAP "sleeve0"                   VXLAN "vxsleeve"            veth "vsl..." (one per
   (the router: sleeve,             (kernel fast datapath,         container, made by the
    relays, broadcasts)              sleeve.fastdp.datapath)       CNI plugin sleeve-net)

Why one bridge whatever the data path: containers' veths are ports of this bridge whether
or not the fast datapath runs, so a container never needs the host's routing table to
reach another host, and turning fastdp on or off never re-plumbs containers. The fast
datapath only adds (and removes) its VXLAN port. The TAP and the VXLAN port are isolated
from each other (the bridge never forwards between the two overlay paths: see the
datapath's docstring for why that cannot loop); containers' ports are not isolated, so
they reach both.

The bridge takes the TAP's MAC (the host keeps one MAC whether bridged or not: the router
calls that MAC local) and the overlay address moves from the TAP to the bridge, so the
micro DNS on that address keeps working and containers reach it on their own segment.

Lifetime: created at start or *adopted* if a bridge of that name exists (a restarted
router keeps its containers attached); at stop it is deleted only when nothing but our
own ports is on it, otherwise it stays with its address (containers of this host keep
talking to each other and the host) and the next router adopts it.

All netlink runs on a :class:`NetlinkWorker` thread, never on the event loop.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
from typing import Any, Final

from sleeve.config import DEFAULT_BRIDGE
from sleeve.fastdp.netlink import DatapathError, NetlinkWorker, describe, nl_errno

log = logging.getLogger("sleeve")

__all__ = ["DEFAULT_BRIDGE", "BridgeError", "HostBridge", "check_bridge_name"]
_IFNAME_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")


class BridgeError(DatapathError):
    """The bridge could not be set up; ``str()`` says which step and why."""


def check_bridge_name(name: str) -> str:
    if not _IFNAME_RE.match(name):
        raise ValueError(f"bad bridge name {name!r}: 1-15 characters of [A-Za-z0-9_.-]")
    return name


def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return None if info is None else info.get_attr("IFLA_INFO_KIND")


class HostBridge:
    """Creates or adopts the bridge, makes the TAP a port of it, moves the overlay address.

    ``mtu``: the overlay MTU (the bridge gets it; the CNI plugin gives containers' veths the
    bridge's MTU). ``worker``: shared netlink thread (default: its own).
    """

    def __init__(self, name: str, tap: str, mtu: int,
                 worker: NetlinkWorker | None = None) -> None:
        check_bridge_name(name)
        if name == tap:
            raise BridgeError("the bridge and the TAP need different names")
        self.name, self.tap, self.mtu = name, tap, mtu
        self._nl = worker or NetlinkWorker("sleeve-bridge")
        self._own_worker = worker is None
        self.cidr: str | None = None
        self.adopted = False
        self.is_up = False
        self.state = "not set up"
        self.mac: str | None = None

    # ---------------------------------------------------------------- event-loop side
    async def asetup(self, cidr: str | None, timeout: float = 15.0) -> None:
        """Build (or adopt) the bridge. Raises BridgeError; then the TAP is as it was."""
        if cidr is not None:
            ipaddress.ip_interface(cidr)  # validated by the config already
        try:
            await self._nl.acall(lambda ipr: self._nl_setup(ipr, cidr), timeout)
        except BridgeError as e:
            self.state = f"failed: {e}"
            raise
        except Exception as e:
            self.state = f"failed: {describe(e)}"
            raise BridgeError(self.state) from e
        self.state = "adopted" if self.adopted else "created"

    async def aclose(self, timeout: float = 10.0) -> list[str]:
        """Delete the bridge if only our ports are left on it; never raises."""
        if not self.is_up:
            if self._own_worker:
                self._nl.close(0.0)
            return []
        try:
            errors: list[str] = await self._nl.acall(self._nl_close, timeout)
        except Exception as e:
            errors = [describe(e)]
        if self._own_worker:
            self._nl.close(0.0)
        self.is_up = False
        return errors

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "tap": self.tap, "mtu": self.mtu, "address": self.cidr,
                "mac": self.mac, "up": self.is_up, "state": self.state}

    # ---------------------------------------------------------------- worker side
    def _nl_setup(self, ipr: Any, cidr: str | None) -> None:
        idx = ipr.link_lookup(ifname=self.tap)
        if not idx:
            raise BridgeError(f"TAP {self.tap} does not exist")
        tap = idx[0]
        mac = ipr.get_links(tap)[0].get_attr("IFLA_ADDRESS")
        made = False
        step = f"looking up {self.name}"
        try:
            have = ipr.link_lookup(ifname=self.name)
            if have:
                kind = _kind(ipr.get_links(have[0])[0])
                if kind != "bridge":
                    raise BridgeError(f"{self.name} exists and is not a bridge ({kind}); "
                                      "choose another name with --bridge")
                br = have[0]
                self.adopted = True
                step = f"adopting {self.name}"
                ipr.link("set", index=br, address=mac, mtu=self.mtu)
            else:
                step = f"creating bridge {self.name}"
                ipr.link("add", ifname=self.name, kind="bridge", address=mac, mtu=self.mtu,
                         br_stp_state=0, br_forward_delay=0, br_mcast_snooping=0)
                made = True
                br = ipr.link_lookup(ifname=self.name)[0]
            step = f"adding {self.tap} to {self.name}"
            ipr.link("set", index=tap, master=br)
            # Isolated: the fast datapath's VXLAN port is isolated too, so the bridge never
            # forwards between the two overlay paths; containers' ports are not isolated.
            ipr.brport("set", index=tap, isolated=1, learning=1)
            step = "bringing the bridge up"
            ipr.link("set", index=tap, state="up")
            ipr.link("set", index=br, state="up")
            if cidr is not None:
                step = f"moving {cidr} to {self.name}"
                _move_address(ipr, cidr, tap, br)
        except Exception as e:
            if made:
                try:
                    ipr.link("del", index=ipr.link_lookup(ifname=self.name)[0])
                except Exception:  # best effort: the error below is what matters
                    log.debug("removing half-made bridge failed", exc_info=True)
            if isinstance(e, BridgeError):
                raise
            raise BridgeError(f"{step}: {describe(e)}") from e
        self.cidr = cidr
        self.mac = mac
        self.is_up = True

    def _nl_close(self, ipr: Any) -> list[str]:
        idx = ipr.link_lookup(ifname=self.name)
        if not idx:
            return []
        br = idx[0]
        ours = {self.tap}  # the fast datapath's VXLAN port is gone by now (stopped first)
        others = [lk.get_attr("IFLA_IFNAME") for lk in ipr.get_links()
                  if lk.get_attr("IFLA_MASTER") == br and lk.get_attr("IFLA_IFNAME") not in ours]
        if others:
            log.info("leaving bridge %s in place: %d container port(s) on it", self.name,
                     len(others))
            return []
        try:
            ipr.link("del", index=br)
        except Exception as e:
            if nl_errno(e) != errno.ENODEV:
                return [f"deleting {self.name}: {describe(e)}"]
        return []


def _move_address(ipr: Any, cidr: str, src: int, dst: int) -> None:
    iface = ipaddress.ip_interface(cidr)
    plen = iface.network.prefixlen
    try:
        ipr.addr("del", index=src, address=str(iface.ip), prefixlen=plen)
    except Exception as e:
        if nl_errno(e) not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
            raise
    try:
        ipr.addr("add", index=dst, address=str(iface.ip), prefixlen=plen)
    except Exception as e:
        if nl_errno(e) != errno.EEXIST:
            raise
