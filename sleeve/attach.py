"""Attaching a container to the router's bridge: the veth pair both plugins make.

Shared by the CNI plugin (``sleeve.cni.net``: a process of its own, one ``IPRoute``) and
the Docker plugin (``sleeve.docker``: inside the router, on a ``NetlinkWorker`` thread,
never on the event loop). Every function takes the caller's ``IPRoute`` so each caller
keeps its own threading; none of them shells out. The Docker plugin also routes a
network's pool to the bridge (``add_link_route``) when the bridge's prefix misses it.

    host namespace                                   container
    bridge "sleeve" <- port HOST (hairpin, up)  ===  PEER (moved by us for CNI,
                                                         by dockerd for Docker)
"""

from __future__ import annotations

import errno
from typing import Any


def nl_errno(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    return code if isinstance(code, int) else getattr(e, "errno", None)


def add_bridge_veth(ipr: Any, host: str, peer: str, bridge: str, mtu: int, *,
                    hairpin: bool = True, peer_netns: str | None = None) -> int:
    """Make the pair HOST/PEER (PEER in ``peer_netns`` when given), HOST a port of
    ``bridge``, up; returns HOST's index. A HOST left by a half-done earlier attempt is
    deleted first (its name is derived from the attachment, so it is ours). Raises
    ``LookupError`` when the bridge is missing, ``FileExistsError`` when PEER's name is
    taken, netlink errors otherwise."""
    br = ipr.link_lookup(ifname=bridge)
    if not br:
        raise LookupError(f"bridge {bridge} does not exist on this host")
    delete_link(ipr, host)
    peer_spec: dict[str, Any] = {"ifname": peer, "mtu": mtu}
    if peer_netns is not None:
        peer_spec["net_ns_fd"] = peer_netns
    try:
        ipr.link("add", ifname=host, kind="veth", mtu=mtu, peer=peer_spec)
    except Exception as e:
        if nl_errno(e) == errno.EEXIST:
            raise FileExistsError(f"{peer} already exists") from None
        raise
    idx: int = ipr.link_lookup(ifname=host)[0]
    ipr.link("set", index=idx, master=br[0])
    if hairpin:  # a container reaching itself through a service address comes back
        ipr.brport("set", index=idx, mode=1)  # IFLA_BRPORT_MODE: BRIDGE_MODE_HAIRPIN
        # (pyroute2 silently ignores an unknown key such as hairpin=1: the CNI lab test
        # checks the port's mode)
    ipr.link("set", index=idx, state="up")
    return idx


def delete_link(ipr: Any, name: str) -> bool:
    """Delete ``name`` if it exists (a veth: both ends go); False when it was not there,
    or went away meanwhile (a container torn down at the same moment)."""
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        return False
    try:
        ipr.link("del", index=idx[0])
    except Exception as e:
        if nl_errno(e) in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True


def link_exists(ipr: Any, name: str) -> bool:
    return bool(ipr.link_lookup(ifname=name))


RT_SCOPE_LINK = 253
RTPROT_STATIC = 4


def add_link_route(ipr: Any, dst: str, dev: str, src: str | None) -> None:
    """``dst`` on-link through ``dev`` (preferred source ``src``), replacing any route to
    exactly ``dst``. Raises ``LookupError`` when ``dev`` is missing."""
    idx = ipr.link_lookup(ifname=dev)
    if not idx:
        raise LookupError(f"{dev} does not exist on this host")
    spec: dict[str, Any] = {"dst": dst, "oif": idx[0], "scope": RT_SCOPE_LINK,
                            "proto": RTPROT_STATIC}
    if src is not None:
        spec["prefsrc"] = src
    ipr.route("replace", **spec)


def delete_link_route(ipr: Any, dst: str, dev: str) -> bool:
    """Remove the route to ``dst`` through ``dev``; False when there was none (the bridge
    went away with its routes, or someone removed it)."""
    idx = ipr.link_lookup(ifname=dev)
    if not idx:
        return False
    try:  # the scope must match: the kernel skips a route of another scope (ESRCH)
        # and the protocol: never the kernel's own connected route to the same prefix
        ipr.route("del", dst=dst, oif=idx[0], scope=RT_SCOPE_LINK, proto=RTPROT_STATIC)
    except Exception as e:
        if nl_errno(e) in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
            return False
        raise
    return True
