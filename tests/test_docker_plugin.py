"""The Docker plugin's protocol without root: the driver on a fake backend, fed the request
bodies a real dockerd (docker.io 20.10) sent in tests/test_lab_docker.py
(tests/data/docker_requests.json), plus bad bodies for every
method, and the unix socket server (mode, bounds, Err answers)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import pathlib
import stat
from typing import Any

import pytest

from sleeve.docker.driver import MAX_BODY, BridgeInfo, Driver, veth_names
from sleeve.docker.server import start_plugin_server
from sleeve.docker.state import State

DATA = pathlib.Path(__file__).parent / "data" / "docker_requests.json"
RANGE = ipaddress.IPv4Network("198.19.64.0/18")


class FakeBackend:
    def __init__(self) -> None:
        self.allocs: dict[str, ipaddress.IPv4Interface] = {}
        self.veths: set[str] = set()
        self.names: dict[str, str] = {}
        self.next = 1
        self.has_bridge = True
        self.address = "198.19.0.1/17"  # the bridge's --ip: covers RANGE unless a test moves it
        self.routes: dict[str, tuple[str, str | None]] = {}
        self.deleted: list[str] = []

    def ipam_range(self) -> ipaddress.IPv4Network:
        return RANGE

    def default_pool(self) -> ipaddress.IPv4Network:
        return RANGE

    async def allocate(self, owner_id: str, subnet: str | None) -> ipaddress.IPv4Interface:
        net = ipaddress.IPv4Network(subnet or RANGE)
        a = ipaddress.IPv4Interface(f"{net.network_address + self.next}/{net.prefixlen}")
        self.next += 1
        self.allocs[owner_id] = a
        return a

    def release(self, owner_id: str) -> int:
        return 1 if self.allocs.pop(owner_id, None) is not None else 0

    def bridge(self) -> BridgeInfo:
        return BridgeInfo("sleeve" if self.has_bridge else None, 1376, self.address)

    async def make_veth(self, host: str, peer: str, bridge: str, mtu: int) -> None:
        self.veths.add(host)

    async def delete_veth(self, host: str) -> bool:
        had = host in self.veths
        self.veths.discard(host)
        return had

    async def add_route(self, net: str, bridge: str, src: str | None) -> None:
        self.routes[net] = (bridge, src)

    async def delete_route(self, net: str, bridge: str) -> bool:
        self.deleted.append(net)
        return self.routes.pop(net, None) is not None

    def dns_add(self, name: str, address: str, owner: str) -> None:
        self.names[name] = address

    def dns_remove(self, name: str, address: str) -> None:
        self.names.pop(name, None)


def _driver(path: pathlib.Path | None = None) -> tuple[Driver, FakeBackend]:
    be = FakeBackend()
    return Driver(be, State.load(path)), be


def _recorded() -> list[dict[str, Any]]:
    return [r for r in json.loads(DATA.read_text()) if r["host"] == "d2"]


def _call(d: Driver, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return asyncio.run(d.handle(path, raw))


def test_recorded_sequence_from_dockerd_replays_cleanly() -> None:
    d, be = _driver()
    seen = []
    gateway = None

    async def replay() -> None:
        nonlocal gateway
        for r in _recorded():
            body = b"" if r["body"] is None else json.dumps(r["body"]).encode()
            if r["path"] == "/NetworkDriver.CreateEndpoint":
                # our fake allocates other addresses than the recording's router did
                r["body"]["Interface"]["Address"] = str(next(
                    a for o, a in be.allocs.items() if a.ip != gateway))
                body = json.dumps(r["body"]).encode()
            if r["path"] == "/IpamDriver.ReleaseAddress":
                r["body"]["Address"] = str(next(iter(d.state.addresses)))
                body = json.dumps(r["body"]).encode()
            status, ans = await d.handle(r["path"], body)
            seen.append(r["path"])
            assert status == 200, (r["path"], ans)
            assert "Err" not in ans
            if r["path"] == "/IpamDriver.RequestAddress" and gateway is None:
                gateway = ipaddress.IPv4Interface(ans["Address"]).ip
            if r["path"] == "/NetworkDriver.Join":
                assert ans["InterfaceName"]["DstPrefix"] == "ethwe"
                assert ans["DisableGatewayService"] is True
                assert ans["StaticRoutes"] == [{"Destination": "198.19.0.1/32",
                                                "RouteType": 1, "NextHop": ""}]
                assert len(be.veths) == 1
                assert d.named(r["body"]["EndpointID"], "c2")
                assert be.names == {"c2": str(d.state.endpoints[
                    r["body"]["EndpointID"]].address).split("/")[0]}
    asyncio.run(replay())
    assert "/NetworkDriver.DeleteEndpoint" in seen and "/IpamDriver.ReleasePool" in seen
    assert be.veths == set() and be.names == {} and be.allocs == {}
    assert d.state.networks == {} and d.state.endpoints == {} and d.state.addresses == {}


def test_activate_and_capabilities() -> None:
    d, _ = _driver()
    assert _call(d, "/Plugin.Activate", b"") == (200, {"Implements": ["NetworkDriver",
                                                                      "IpamDriver"]})
    assert _call(d, "/NetworkDriver.GetCapabilities", b"")[1]["ConnectivityScope"] == "global"
    assert _call(d, "/IpamDriver.GetCapabilities", b"")[1]["RequiresRequestReplay"] is False
    assert _call(d, "/IpamDriver.GetDefaultAddressSpaces", {})[0] == 200
    for m in ("DiscoverNew", "DiscoverDelete", "FreeNetwork", "ProgramExternalConnectivity"):
        assert _call(d, f"/NetworkDriver.{m}", {"DiscoveryType": 1}) == (200, {})
    assert _call(d, "/NetworkDriver.AllocateNetwork", {"NetworkID": "n1"}) == \
        (200, {"Options": {}})


NID, EID = "a" * 64, "b" * 64
BAD: list[tuple[str, Any]] = [
    ("/NetworkDriver.CreateNetwork", b"{not json"),
    ("/NetworkDriver.CreateNetwork", [1, 2]),
    ("/NetworkDriver.CreateNetwork", {"NetworkID": NID}),
    ("/NetworkDriver.CreateNetwork", {"NetworkID": NID, "IPv4Data": [{"Pool": "10.0.0.0/8"}]}),
    ("/NetworkDriver.CreateNetwork", {"NetworkID": "../x", "IPv4Data": []}),
    ("/NetworkDriver.CreateNetwork", {"NetworkID": NID, "IPv4Data": [{"Pool": "x"}]}),
    ("/NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": 5,
                                      "IPv4Data": [{"Pool": str(RANGE)}]}),
    ("/NetworkDriver.DeleteNetwork", {}),
    ("/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID}),
    ("/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                       "Interface": {"Address": "198.19.64.5/18"}}),
    ("/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                       "Interface": "x"}),
    ("/NetworkDriver.DeleteEndpoint", {"NetworkID": NID}),
    ("/NetworkDriver.EndpointOperInfo", {"EndpointID": EID}),
    ("/NetworkDriver.Join", {"NetworkID": 5}),
    ("/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID}),
    ("/NetworkDriver.Leave", {"NetworkID": NID, "EndpointID": "x" * 300}),
    ("/IpamDriver.RequestPool", {"Pool": "10.0.0.0/8"}),
    ("/IpamDriver.RequestPool", {"Pool": "198.19.64.1/18"}),
    ("/IpamDriver.RequestPool", {"V6": True}),
    ("/IpamDriver.RequestPool", {"Pool": "198.19.64.0/24", "SubPool": "198.19.64.0/25"}),
    ("/IpamDriver.ReleasePool", {"PoolID": "default-10.0.0.0/8"}),
    ("/IpamDriver.RequestAddress", {"PoolID": "sleeve-bogus"}),
    ("/IpamDriver.RequestAddress", {"PoolID": f"sleeve-{RANGE}", "Address": "198.19.64.9"}),
    ("/IpamDriver.ReleaseAddress", {"PoolID": f"sleeve-{RANGE}", "Address": "nope"}),
    ("/IpamDriver.ReleaseAddress", {"PoolID": f"sleeve-{RANGE}"}),
]


@pytest.mark.parametrize(("path", "body"), BAD)
def test_bad_bodies_get_err_never_raise(path: str, body: Any) -> None:
    d, _ = _driver()
    status, ans = _call(d, path, body)
    assert status == 500 and ans["Err"].startswith("sleeve: "), ans
    assert d.counters["errors"] == 1


def test_unknown_method_is_404_with_err() -> None:
    d, _ = _driver()
    assert _call(d, "/NetworkDriver.Bogus", {})[0] == 404


def test_deletes_and_releases_are_idempotent() -> None:
    d, be = _driver()
    assert _call(d, "/NetworkDriver.CreateNetwork",
                 {"NetworkID": NID, "IPv4Data": [{"Pool": str(RANGE)}]}) == (200, {})
    _, ans = _call(d, "/IpamDriver.RequestAddress", {"PoolID": f"sleeve-{RANGE}"})
    addr = ans["Address"]
    assert _call(d, "/NetworkDriver.CreateEndpoint", {
        "NetworkID": NID, "EndpointID": EID, "Interface": {"Address": addr}})[0] == 200
    assert _call(d, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID})[0] == 200
    for _ in range(2):
        assert _call(d, "/NetworkDriver.Leave", {"NetworkID": NID, "EndpointID": EID}) == \
            (200, {})
        assert _call(d, "/NetworkDriver.DeleteEndpoint",
                     {"NetworkID": NID, "EndpointID": EID}) == (200, {})
        assert _call(d, "/IpamDriver.ReleaseAddress",
                     {"PoolID": f"sleeve-{RANGE}", "Address": addr}) == (200, {})
        assert _call(d, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == (200, {})
        assert _call(d, "/IpamDriver.ReleasePool", {"PoolID": f"sleeve-{RANGE}"}) == (200, {})
    assert be.veths == set() and be.allocs == {} and d.state.endpoints == {}


def test_no_bridge_refuses_endpoints() -> None:
    d, be = _driver()
    be.has_bridge = False
    _call(d, "/NetworkDriver.CreateNetwork", {"NetworkID": NID,
                                              "IPv4Data": [{"Pool": str(RANGE)}]})
    s, ans = _call(d, "/NetworkDriver.CreateEndpoint", {
        "NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "198.19.64.5/18"}})
    assert s == 500 and "bridge" in ans["Err"]


def test_state_survives_a_restart(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "docker.json"
    d, _ = _driver(p)
    _call(d, "/NetworkDriver.CreateNetwork", {"NetworkID": NID,
                                              "IPv4Data": [{"Pool": str(RANGE)}]})
    addr = _call(d, "/IpamDriver.RequestAddress", {"PoolID": f"sleeve-{RANGE}"})[1]["Address"]
    _call(d, "/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                               "Interface": {"Address": addr}})
    _call(d, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID})
    d2, be2 = _driver(p)  # a restarted router: dockerd replays nothing
    be2.veths.add(veth_names(EID)[0])  # the kernel kept it
    assert d2.state.endpoints[EID].joined
    assert _call(d2, "/NetworkDriver.Leave", {"NetworkID": NID, "EndpointID": EID})[0] == 200
    assert be2.veths == set()
    owner = d2.state.addresses[addr.split("/")[0]]
    assert owner.startswith("docker:")
    p.write_text("{garbage")
    assert State.load(p).endpoints == {}  # ignored, logged


def test_socket_server_mode_bounds_and_errors(tmp_path: pathlib.Path) -> None:
    from aiohttp import ClientSession, UnixConnector

    d, _ = _driver()
    sock = tmp_path / "plugins" / "sleeve.sock"

    async def run() -> None:
        srv = await start_plugin_server(sock, d.handle)
        try:
            assert stat.S_IMODE(sock.stat().st_mode) == 0o660
            assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
            async with ClientSession(connector=UnixConnector(path=str(sock))) as s:
                async with s.post("http://p/Plugin.Activate") as r:
                    assert r.status == 200
                    assert (await r.json(content_type=None))["Implements"]
                async with s.post("http://p/NetworkDriver.Join", data=b"{") as r:
                    assert r.status == 500 and "Err" in await r.json(content_type=None)
                async with s.post("http://p/NetworkDriver.Join",
                                  data=b"x" * (MAX_BODY + 1)) as r:
                    assert r.status == 413
                async with s.get("http://p/Plugin.Activate") as r:
                    assert r.status == 405
            with pytest.raises(OSError, match="another plugin"):
                await start_plugin_server(sock, d.handle)
        finally:
            await srv.aclose()
        assert not sock.exists()
        srv2 = await start_plugin_server(sock, d.handle)  # a stale file is replaced
        await srv2.aclose()
    asyncio.run(run())


def test_pool_outside_the_bridge_prefix_is_routed_to_the_bridge(tmp_path: pathlib.Path) -> None:
    """The host's way back to containers (DNS answers, pings from the host): a link route
    for the pool on the bridge while a network of that pool exists, again after a router
    restart, none when the bridge's own prefix covers the pool."""
    p = tmp_path / "docker.json"
    d, be = _driver(p)
    be.address = "198.19.3.1/24"
    sub = "198.19.64.0/24"
    for nid in (NID, "c" * 64):  # two networks on one pool: one route
        assert _call(d, "/NetworkDriver.CreateNetwork",
                     {"NetworkID": nid, "IPv4Data": [{"Pool": sub}]}) == (200, {})
    assert be.routes == {sub: ("sleeve", "198.19.3.1")}
    assert _call(d, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == (200, {})
    assert be.routes == {sub: ("sleeve", "198.19.3.1")}  # still used by the other network
    d2, be2 = _driver(p)  # a restarted router on a bridge made anew
    be2.address = "198.19.3.1/24"
    assert asyncio.run(d2.restore()) == 0
    assert be2.routes == {sub: ("sleeve", "198.19.3.1")}
    assert _call(d2, "/NetworkDriver.DeleteNetwork", {"NetworkID": "c" * 64}) == (200, {})
    assert be2.routes == {}
    d3, be3 = _driver()  # the default fake: the bridge's /17 covers the range
    _call(d3, "/NetworkDriver.CreateNetwork", {"NetworkID": NID,
                                               "IPv4Data": [{"Pool": sub}]})
    assert be3.routes == {}
    # its DeleteNetwork leaves the bridge's own (connected) route alone: no delete at all
    assert _call(d3, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == (200, {})
    assert be3.deleted == []
