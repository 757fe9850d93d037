"""The router's Docker plugin (``--docker-plugin``): the driver wired to IPAM, DNS, the bridge.

The node (composition root) builds one ``DockerService`` when asked and calls
``start()``/``aclose()``; nothing here imports the node. It owns:

- the ``Driver`` (sleeve.docker.driver: the protocol) and its ``State``
  (``STATE_DIR/docker.json``);
- ``RouterBackend``: the driver's view of the router. Allocations go to the
  ``IpamService`` (the same ring and persistence as ``sleeve ipam``), names to the
  ``DnsService``, veths are made on a ``NetlinkWorker`` thread (never on the loop) with
  ``sleeve.attach``, the code the CNI plugin uses;
- the plugin socket server and the name lookups, one bounded task per joined endpoint
  (``wait_for_name``), owned here and cancelled at close.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sleeve.attach import add_bridge_veth, add_link_route, delete_link, delete_link_route
from sleeve.docker.driver import BridgeInfo, Driver
from sleeve.docker.server import PluginServer, start_plugin_server, wait_for_name
from sleeve.docker.state import FILE, State
from sleeve.fastdp.netlink import NetlinkWorker

if TYPE_CHECKING:
    from sleeve.config import Config
    from sleeve.dns.service import DnsService
    from sleeve.ipam.service import IpamService

log = logging.getLogger("sleeve")

MAX_LOOKUPS = 256  # name lookups in flight; more joins at once go unnamed (logged, counted)


class RouterBackend:
    def __init__(self, ipam: IpamService, dns: DnsService,
                 bridge: Callable[[], BridgeInfo], nl: NetlinkWorker) -> None:
        self.ipam, self.dns, self._bridge, self.nl = ipam, dns, bridge, nl

    def ipam_range(self) -> ipaddress.IPv4Network:
        return self.ipam.alloc.range

    def default_pool(self) -> ipaddress.IPv4Network:
        return self.ipam.alloc.default_subnet

    async def allocate(self, owner_id: str, subnet: str | None) -> ipaddress.IPv4Interface:
        return await self.ipam.allocate(owner_id, subnet)

    def release(self, owner_id: str) -> int:
        return int(self.ipam.api_release({"id": owner_id})["released"])

    def bridge(self) -> BridgeInfo:
        return self._bridge()

    async def make_veth(self, host: str, peer: str, bridge: str, mtu: int) -> None:
        def run(ipr: Any) -> None:
            delete_link(ipr, peer)  # a container side left over from a failed Join
            add_bridge_veth(ipr, host, peer, bridge, mtu)
        await self.nl.acall(run)

    async def delete_veth(self, host: str) -> bool:
        return await self.nl.acall(lambda ipr: delete_link(ipr, host))

    async def add_route(self, net: str, bridge: str, src: str | None) -> None:
        await self.nl.acall(lambda ipr: add_link_route(ipr, net, bridge, src))

    async def delete_route(self, net: str, bridge: str) -> bool:
        return await self.nl.acall(lambda ipr: delete_link_route(ipr, net, bridge))

    def dns_add(self, name: str, address: str, owner: str) -> None:
        self.dns.add(name, address, owner)

    def dns_remove(self, name: str, address: str) -> None:
        self.dns.remove(name, address)


class DockerService:
    def __init__(self, cfg: Config, ipam: IpamService, dns: DnsService,
                 bridge: Callable[[], BridgeInfo]) -> None:
        self.cfg = cfg
        self.nl = NetlinkWorker("sleeve-docker-netlink")
        self.state = State.load(cfg.state_dir / FILE)
        self.driver = Driver(RouterBackend(ipam, dns, bridge, self.nl), self.state,
                             on_joined=self._joined)
        self.server: PluginServer | None = None
        self._lookups: set[asyncio.Task[None]] = set()
        self.unnamed = 0

    async def start(self) -> None:
        """Listen on the plugin socket; raises OSError when it cannot (the operator asked
        for the plugin: failing the launch is clearer than a router dockerd cannot find)."""
        failed = await self.driver.restore()  # routes first: containers already running
        sock = pathlib.Path(self.cfg.docker_plugin_socket)
        record = (pathlib.Path(self.cfg.docker_plugin_record)
                  if self.cfg.docker_plugin_record else None)
        self.server = await start_plugin_server(sock, self.driver.handle, record)
        log.info("docker plugin on %s (%d network(s), %d endpoint(s) remembered%s)", sock,
                 len(self.state.networks), len(self.state.endpoints),
                 f", {failed} route(s) failed" if failed else "")

    async def aclose(self) -> None:
        for t in list(self._lookups):
            t.cancel()
        if self._lookups:
            await asyncio.wait(self._lookups, timeout=2.0)
        if self.server is not None:
            await self.server.aclose()
            self.server = None
        self.nl.close()

    def _joined(self, network_id: str, endpoint_id: str) -> None:
        if len(self._lookups) >= MAX_LOOKUPS or not self.cfg.docker_api:
            self.unnamed += 1
            return
        t = asyncio.get_running_loop().create_task(self._name(network_id, endpoint_id))
        self._lookups.add(t)
        t.add_done_callback(self._lookups.discard)

    async def _name(self, network_id: str, endpoint_id: str) -> None:
        name = await wait_for_name(self.cfg.docker_api, network_id, endpoint_id)
        if name is None:
            self.unnamed += 1
            log.warning("docker plugin: no container name for endpoint %s from %s",
                        endpoint_id[:12], self.cfg.docker_api)
            return
        try:
            if self.driver.named(endpoint_id, name):
                log.info("docker plugin: %s is %s", endpoint_id[:12], name)
        except ValueError as e:  # a name DNS refuses (too long, bad characters)
            self.unnamed += 1
            log.warning("docker plugin: not registering %r: %s", name, e)

    def status(self) -> dict[str, Any]:
        return {"socket": self.cfg.docker_plugin_socket, "listening": self.server is not None,
                "unnamed": self.unnamed, "save_errors": self.state.save_errors,
                **self.driver.status()}
