"""The Docker plugin's protocol: libnetwork's remote NetworkDriver and IpamDriver.

dockerd POSTs JSON to ``/<Kind>.<Method>`` on our unix socket; ``Driver.handle(path,
body)`` answers ``(http status, JSON object)``. No sockets here: the adapter is
``sleeve.docker.server``, the router's parts come in as a ``Backend``.

What dockerd sent here (docker.io 20.10, recorded in tests/data/docker_requests.json)::

    Plugin.Activate                               at the first use of the driver
    NetworkDriver.GetCapabilities, IpamDriver.GetCapabilities
    docker network create -d sleeve --ipam-driver sleeve NET
      IpamDriver.GetDefaultAddressSpaces
      IpamDriver.RequestPool      {AddressSpace, Pool, SubPool, Options, V6}
      IpamDriver.RequestAddress   {PoolID, Address "", Options {RequestAddressType:
                                   com.docker.network.gateway}}       the network's gateway
      NetworkDriver.CreateNetwork {NetworkID, Options, IPv4Data [{Pool, Gateway, ...}]}
    docker run --network NET
      IpamDriver.RequestAddress   {PoolID, Address "", Options {}}    no endpoint id yet
      NetworkDriver.CreateEndpoint {NetworkID, EndpointID, Interface {Address, ...}, Options}
      NetworkDriver.Join          {NetworkID, EndpointID, SandboxKey, Options}
      NetworkDriver.EndpointOperInfo
    docker rm -f: Leave, DeleteEndpoint, ReleaseAddress {PoolID, Address}
    docker network rm: DeleteNetwork, ReleaseAddress (gateway), ReleasePool

Choices (docs/docker.md says them to users):
- Scope "local", ConnectivityScope "global": the network spans hosts, but dockerd keeps
  its record locally (a "global" data scope needs a cluster store dockerd 20.10 no
  longer wants). Create the network with the same name on every host.
- Addresses: RequestAddress carries no endpoint id, so each allocation gets its own
  IPAM id ``docker:<random>`` and the address -> id map is kept in our state; the
  gateway request is answered the same way (an address the network never uses on the
  wire: containers get no default route, see Join).
- Join: the container side is ``vsdc<hash>`` in the host, dockerd moves it into the
  container as ``ethweN``. No gateway and DisableGatewayService: dockerd neither adds a
  default route nor a docker_gwbridge (the overlay is all this network offers); a
  connected static route to the router's bridge address when it lies outside the pool,
  so the micro DNS there is reachable (``docker run --dns ADDR``). The way back: at
  CreateNetwork the host gets a link route for the pool on the bridge (unless the
  bridge's prefix covers it), removed with the last network of that pool and put back
  at router start (``restore``).
- The container's name is not in the protocol: after Join the adapter asks dockerd's
  API (``GET /networks/ID``, the entry with our EndpointID) and registers NAME in
  sleeve DNS; the record is removed on Leave/DeleteEndpoint.

Errors: ``{"Err": "one line"}`` with status 500 (dockerd reads Err whatever the status);
unknown methods 404, which libnetwork takes as "not implemented". Deletes and releases of
things we do not know succeed (dockerd retries them after restarts). Nothing raised by a
handler escapes ``handle``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from sleeve.docker.state import Endpoint, State

log = logging.getLogger("sleeve")

MAX_BODY: Final = 64 * 1024  # the largest body dockerd sends is a few hundred bytes
DST_PREFIX: Final = "ethwe"
GATEWAY_TYPE: Final = "com.docker.network.gateway"
ADDRESS_SPACE: Final = "sleeve"
CONTENT_TYPE: Final = "application/vnd.docker.plugins.v1.2+json"
_ID_RE: Final = re.compile(r"^[0-9A-Za-z_.\-]{1,128}$")


class PluginError(Exception):
    """A request we refuse; ``str()`` goes to dockerd (and its user) as Err."""


@dataclass(frozen=True)
class BridgeInfo:
    name: str | None  # None: the router has no bridge (--no-bridge, or it failed)
    mtu: int
    address: str | None  # the router's own overlay address (CIDR), on the bridge


class Backend(Protocol):
    """What the driver needs of the router (``sleeve.docker.service`` gives the real one,
    tests a fake)."""

    def ipam_range(self) -> ipaddress.IPv4Network: ...
    def default_pool(self) -> ipaddress.IPv4Network: ...
    def allocate(self, owner_id: str, subnet: str | None) -> Awaitable[ipaddress.IPv4Interface]: ...
    def release(self, owner_id: str) -> int: ...
    def bridge(self) -> BridgeInfo: ...
    def make_veth(self, host: str, peer: str, bridge: str, mtu: int) -> Awaitable[None]: ...
    def delete_veth(self, host: str) -> Awaitable[bool]: ...
    def add_route(self, net: str, bridge: str, src: str | None) -> Awaitable[None]: ...
    def delete_route(self, net: str, bridge: str) -> Awaitable[bool]: ...
    def dns_add(self, name: str, address: str, owner: str) -> None: ...
    def dns_remove(self, name: str, address: str) -> None: ...


def veth_names(endpoint_id: str) -> tuple[str, str]:
    """(host side, container side before dockerd renames it): derived from the endpoint
    so Leave/DeleteEndpoint find them after any restart, 15 characters at most."""
    h = hashlib.sha256(endpoint_id.encode()).hexdigest()
    return "vsd" + h[:12], "vsdc" + h[:11]


def _str(body: dict[str, Any], key: str, *, required: bool = True, limit: int = 256) -> str:
    v = body.get(key, "")
    if v is None:
        v = ""
    if not isinstance(v, str) or len(v) > limit:
        raise PluginError(f"{key} must be a string of at most {limit} characters")
    if required and not v:
        raise PluginError(f"{key} is missing")
    return v


def _id(body: dict[str, Any], key: str) -> str:
    v = _str(body, key)
    if not _ID_RE.match(v):
        raise PluginError(f"{key} is not an id: {v[:80]!r}")
    return v


def _opts(body: dict[str, Any], key: str = "Options") -> dict[str, Any]:
    v = body.get(key) or {}
    if not isinstance(v, dict):
        raise PluginError(f"{key} must be an object")
    return v


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class Driver:
    backend: Backend
    state: State
    on_joined: Callable[[str, str], None] = lambda _nid, _eid: None  # the name lookup
    counters: dict[str, int] = field(default_factory=lambda: {"requests": 0, "errors": 0})

    def __post_init__(self) -> None:
        self._routes: dict[str, Handler] = {
            "/Plugin.Activate": self._activate,
            "/NetworkDriver.GetCapabilities": self._net_caps,
            "/NetworkDriver.CreateNetwork": self._create_network,
            "/NetworkDriver.DeleteNetwork": self._delete_network,
            "/NetworkDriver.AllocateNetwork": self._allocate_network,
            "/NetworkDriver.FreeNetwork": self._empty,
            "/NetworkDriver.CreateEndpoint": self._create_endpoint,
            "/NetworkDriver.DeleteEndpoint": self._delete_endpoint,
            "/NetworkDriver.EndpointOperInfo": self._oper_info,
            "/NetworkDriver.Join": self._join,
            "/NetworkDriver.Leave": self._leave,
            "/NetworkDriver.DiscoverNew": self._empty,
            "/NetworkDriver.DiscoverDelete": self._empty,
            "/NetworkDriver.ProgramExternalConnectivity": self._empty,
            "/NetworkDriver.RevokeExternalConnectivity": self._empty,
            "/IpamDriver.GetCapabilities": self._ipam_caps,
            "/IpamDriver.GetDefaultAddressSpaces": self._spaces,
            "/IpamDriver.RequestPool": self._request_pool,
            "/IpamDriver.ReleasePool": self._release_pool,
            "/IpamDriver.RequestAddress": self._request_address,
            "/IpamDriver.ReleaseAddress": self._release_address,
        }

    async def handle(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """One request; never raises (a bug is a 500 with the exception's type)."""
        self.counters["requests"] += 1
        fn = self._routes.get(path)
        if fn is None:
            self.counters["errors"] += 1
            return 404, {"Err": f"sleeve: no such method {path[:80]}"}
        try:
            data = json.loads(body) if body.strip() else {}
            if not isinstance(data, dict):
                raise PluginError("the request body must be a JSON object")
            return 200, await fn(data)
        except (PluginError, ValueError) as e:  # ValueError: JSON, IPAM's refusals
            err = " ".join(str(e).split()) or type(e).__name__
        except Exception as e:  # the router's parts failing (netlink, 503s): still an answer
            log.warning("docker plugin %s failed: %s", path, e)
            err = f"{type(e).__name__}: {' '.join(str(e).split())}"
        self.counters["errors"] += 1
        return 500, {"Err": f"sleeve: {err[:400]}"}

    # -- plugin and capabilities -------------------------------------------------------------
    async def _activate(self, _b: dict[str, Any]) -> dict[str, Any]:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    async def _net_caps(self, _b: dict[str, Any]) -> dict[str, Any]:
        return {"Scope": "local", "ConnectivityScope": "global"}

    async def _ipam_caps(self, _b: dict[str, Any]) -> dict[str, Any]:
        # we keep our own records, so dockerd need not replay allocations after a restart
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    async def _empty(self, _b: dict[str, Any]) -> dict[str, Any]:
        return {}

    # -- networks ----------------------------------------------------------------------------
    async def _create_network(self, b: dict[str, Any]) -> dict[str, Any]:
        nid = _id(b, "NetworkID")
        _opts(b)
        v4 = b.get("IPv4Data") or []
        if not isinstance(v4, list) or not v4 or not isinstance(v4[0], dict):
            raise PluginError("sleeve networks need IPv4 data (use --ipam-driver sleeve)")
        pool = _str(v4[0], "Pool", limit=64)
        try:
            net = ipaddress.IPv4Network(pool, strict=False)
        except ValueError:
            raise PluginError(f"IPv4Data Pool is not an IPv4 network: {pool[:64]!r}") from None
        rng = self.backend.ipam_range()
        if not net.subnet_of(rng):
            raise PluginError(f"pool {net} is outside sleeve's IPAM range {rng}: create the "
                              "network with --ipam-driver sleeve")
        if b.get("IPv6Data"):
            raise PluginError("sleeve networks are IPv4 only")
        await self._route(net)
        self.state.networks[nid] = str(net)
        self.state.save()
        return {}

    async def _delete_network(self, b: dict[str, Any]) -> dict[str, Any]:
        nid = _id(b, "NetworkID")
        pool = self.state.networks.pop(nid, None)
        if pool is not None:
            self.state.save()
            br = self.backend.bridge()
            if (br.name is not None and pool not in self.state.networks.values()
                    and not self._covered(ipaddress.IPv4Network(pool))):
                # only a route _route added: the bridge's connected route stays (and
                # delete_link_route matches our protocol only, should the prefix change)
                await self.backend.delete_route(pool, br.name)
        return {}

    def _covered(self, net: ipaddress.IPv4Network) -> bool:
        """The bridge's own prefix (``--ip``) covers ``net``: its connected route serves."""
        addr = self.backend.bridge().address
        return addr is not None and net.subnet_of(ipaddress.IPv4Interface(addr).network)

    async def _route(self, net: ipaddress.IPv4Network) -> None:
        """The host's way back to the network's containers: a link route for the pool on
        the bridge when the bridge's own prefix (``--ip``) does not cover it. Without it
        the host answers containers (the micro DNS on the bridge address, a ping from the
        host) by its default route, i.e. not at all. Idempotent (``replace``)."""
        br = self.backend.bridge()
        if br.name is None:
            return  # CreateEndpoint refuses without a bridge; nothing to route to
        src = None if br.address is None else ipaddress.IPv4Interface(br.address)
        if self._covered(net):
            return  # a connected route already
        await self.backend.add_route(str(net), br.name, None if src is None else str(src.ip))

    async def restore(self) -> int:
        """At router start: the routes of the networks we remember (a bridge made anew
        has none). Never raises; returns how many failed."""
        failed = 0
        for pool in sorted(set(self.state.networks.values())):
            try:
                await self._route(ipaddress.IPv4Network(pool))
            except Exception as e:
                failed += 1
                log.warning("docker plugin: no route for %s: %s", pool, e)
        return failed

    async def _allocate_network(self, b: dict[str, Any]) -> dict[str, Any]:
        _id(b, "NetworkID")  # swarm only; nothing to allocate beyond IPAM
        return {"Options": {}}

    # -- endpoints ---------------------------------------------------------------------------
    async def _create_endpoint(self, b: dict[str, Any]) -> dict[str, Any]:
        nid, eid = _id(b, "NetworkID"), _id(b, "EndpointID")
        _opts(b)
        iface = b.get("Interface") or {}
        if not isinstance(iface, dict):
            raise PluginError("Interface must be an object")
        addr = _str(iface, "Address", limit=64)
        try:
            ipaddress.IPv4Interface(addr)
        except ValueError:
            raise PluginError(f"Interface Address is not IPv4 CIDR: {addr[:64]!r}") from None
        if _str(iface, "AddressIPv6", required=False, limit=64):
            raise PluginError("sleeve networks are IPv4 only")
        if nid not in self.state.networks:
            raise PluginError(f"network {nid[:12]} is not a sleeve network here")
        if self.backend.bridge().name is None:
            raise PluginError("the sleeve router has no bridge (launched with --no-bridge?)")
        self.state.endpoints[eid] = Endpoint(network=nid, address=addr)
        self.state.save()
        return {"Interface": {}}  # dockerd's address stands; the MAC is the veth's own

    async def _delete_endpoint(self, b: dict[str, Any]) -> dict[str, Any]:
        _id(b, "NetworkID")
        eid = _id(b, "EndpointID")
        await self._detach(eid)
        if self.state.endpoints.pop(eid, None) is not None:
            self.state.save()
        return {}

    async def _oper_info(self, b: dict[str, Any]) -> dict[str, Any]:
        _id(b, "NetworkID")
        ep = self.state.endpoints.get(_id(b, "EndpointID"))
        if ep is None:
            return {"Value": {}}
        return {"Value": {"address": ep.address, "name": ep.name or "",
                          "veth": veth_names(_id(b, "EndpointID"))[0] if ep.joined else ""}}

    async def _join(self, b: dict[str, Any]) -> dict[str, Any]:
        nid, eid = _id(b, "NetworkID"), _id(b, "EndpointID")
        _str(b, "SandboxKey", required=False, limit=4096)
        _opts(b)
        ep = self.state.endpoints.get(eid)
        if ep is None or ep.network != nid:
            raise PluginError(f"endpoint {eid[:12]} was not created on network {nid[:12]}")
        br = self.backend.bridge()
        if br.name is None:
            raise PluginError("the sleeve router has no bridge (launched with --no-bridge?)")
        host, peer = veth_names(eid)
        await self.backend.make_veth(host, peer, br.name, br.mtu)
        ep.joined = True
        self.state.save()
        resp: dict[str, Any] = {"InterfaceName": {"SrcName": peer, "DstPrefix": DST_PREFIX},
                                "DisableGatewayService": True}
        routes = self._routes_for(ep.address, br.address)
        if routes:
            resp["StaticRoutes"] = routes
        self.on_joined(nid, eid)
        return resp

    @staticmethod
    def _routes_for(address: str, router: str | None) -> list[dict[str, Any]]:
        """A connected route to the router's address when the container's prefix lacks it."""
        if router is None:
            return []
        r = ipaddress.IPv4Interface(router).ip
        if r in ipaddress.IPv4Interface(address).network:
            return []
        return [{"Destination": f"{r}/32", "RouteType": 1, "NextHop": ""}]  # 1: connected

    async def _leave(self, b: dict[str, Any]) -> dict[str, Any]:
        _id(b, "NetworkID")
        await self._detach(_id(b, "EndpointID"))
        return {}

    async def _detach(self, eid: str) -> None:
        """Veth and DNS name gone; idempotent (Leave, then DeleteEndpoint, retried)."""
        ep = self.state.endpoints.get(eid)
        await self.backend.delete_veth(veth_names(eid)[0])
        if ep is None:
            return
        if ep.name:
            self.backend.dns_remove(ep.name, str(ipaddress.IPv4Interface(ep.address).ip))
            ep.name = None
        if ep.joined:
            ep.joined = False
            self.state.save()

    def named(self, eid: str, name: str) -> bool:
        """The adapter found the container's name: register it (False: endpoint gone)."""
        ep = self.state.endpoints.get(eid)
        if ep is None or not ep.joined:
            return False
        self.backend.dns_add(name, str(ipaddress.IPv4Interface(ep.address).ip), eid)
        ep.name = name
        self.state.save()
        return True

    # -- IPAM --------------------------------------------------------------------------------
    async def _spaces(self, _b: dict[str, Any]) -> dict[str, Any]:
        return {"LocalDefaultAddressSpace": ADDRESS_SPACE,
                "GlobalDefaultAddressSpace": ADDRESS_SPACE}

    async def _request_pool(self, b: dict[str, Any]) -> dict[str, Any]:
        _str(b, "AddressSpace", required=False, limit=64)
        pool = _str(b, "Pool", required=False, limit=64)
        _opts(b)
        if b.get("V6"):
            raise PluginError("sleeve IPAM is IPv4 only (leave --ipv6 off)")
        if _str(b, "SubPool", required=False, limit=64):
            raise PluginError("sleeve IPAM does not take --ip-range: give --subnet only")
        rng = self.backend.ipam_range()
        if not pool:
            net = self.backend.default_pool()
        else:
            try:
                net = ipaddress.IPv4Network(pool, strict=True)
            except ValueError:
                raise PluginError(f"--subnet {pool!r} is not an IPv4 network") from None
            if not net.subnet_of(rng):
                raise PluginError(f"--subnet {net} is outside sleeve's IPAM range {rng}")
        return {"PoolID": f"sleeve-{net}", "Pool": str(net), "Data": {}}

    async def _release_pool(self, b: dict[str, Any]) -> dict[str, Any]:
        _pool(b)
        return {}

    async def _request_address(self, b: dict[str, Any]) -> dict[str, Any]:
        net = _pool(b)
        want = _str(b, "Address", required=False, limit=64)
        opts = _opts(b)
        if want:
            raise PluginError(f"sleeve IPAM hands out addresses itself: drop --ip/--gateway "
                              f"{want[:64]}")
        owner = "docker:" + secrets.token_hex(8)
        addr = await self.backend.allocate(owner, str(net))
        self.state.addresses[str(addr.ip)] = owner
        self.state.save()
        kind = "gateway" if opts.get("RequestAddressType") == GATEWAY_TYPE else "endpoint"
        log.info("docker plugin: %s %s as %s", kind, addr, owner)
        return {"Address": f"{addr.ip}/{net.prefixlen}", "Data": {}}

    async def _release_address(self, b: dict[str, Any]) -> dict[str, Any]:
        _pool(b)
        a = _str(b, "Address", limit=64)
        try:
            ip = str(ipaddress.IPv4Interface(a).ip)
        except ValueError:
            raise PluginError(f"Address is not IPv4: {a[:64]!r}") from None
        owner = self.state.addresses.pop(ip, None)
        if owner is not None:
            self.backend.release(owner)
            self.state.save()
        return {}

    def status(self) -> dict[str, Any]:
        return {"networks": len(self.state.networks), "endpoints": len(self.state.endpoints),
                "addresses": len(self.state.addresses), **self.counters}


def _pool(b: dict[str, Any]) -> ipaddress.IPv4Network:
    pid = _str(b, "PoolID", limit=64)
    if not pid.startswith("sleeve-"):
        raise PluginError(f"PoolID {pid[:64]!r} is not one of sleeve's")
    try:
        return ipaddress.IPv4Network(pid.removeprefix("sleeve-"), strict=True)
    except ValueError:
        raise PluginError(f"PoolID {pid[:64]!r} is not one of sleeve's") from None
