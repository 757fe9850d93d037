"""Port mapping: ask the NAT gateway to forward a public UDP port to ours (PCP, NAT-PMP, UPnP).

A mapped endpoint is a door the gateway keeps open for anyone, so a peer can reach
us there whatever the NAT's filtering, and even from behind a port-randomising NAT
of its own. The traversal part announces it to peers at each punching attempt (the
``cand`` message's ``mapped`` list, again whenever it changes) and peers send there
with the full TTL.

Protocols, in order (one at a time, each ``TRIES`` requests ``RETRY`` s apart)::

    PCP (RFC 6887, UDP 5351) --no answer--> NAT-PMP (RFC 6886, UDP 5351) --no answer-->
      |  \\__ version 0 / UNSUPP_VERSION: NAT-PMP at once   UPnP IGD (SSDP + HTTP/SOAP)
      |        port unreachable on 5351: UPnP at once          |
      +-- mapped: renewed at half its lifetime, with the protocol that gave it
    all failed or refused: status says why; asked again after IDLE s, from PCP

One mapping (our IPv4 UDP port), lifetime ``LIFETIME``. The gateway is the next hop
of the route to a peer we are connected to (read from /proc/net/route: no netlink on
the event loop, no ``ip``). PCP and NAT-PMP replies come from a socket connected to
gateway:5351 (the kernel drops datagrams from anywhere else) and are still
validated: malformed ones are counted (``pcp_bad_<reason>``, ``pmp_bad_<reason>``),
a PCP answer must carry our nonce, refusals are shown in status, an epoch that went
backwards (the gateway restarted and forgot its mappings) asks again at once. UPnP
runs in a task (``spawn``), bounded in time and size (``traversal.igd``).
Counters per protocol: ``<p>_requests``, ``<p>_mappings``, ``<p>_failures``
(p = pcp, pmp, upnp). ``--no-port-mapping`` turns all of it off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import socket
import struct
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from sleeve.proto.stats import Counters
from sleeve.traversal import igd, pcp, pmp

log = logging.getLogger("sleeve")

LIFETIME = 7200  # s, RFC 6886's recommendation
TRIES = 4
RETRY = 1.0  # s between unanswered requests
IDLE = 300.0  # s before asking a silent or refusing gateway again
MAX_READS = 8  # replies read per tick: bounded work for whatever arrives
REFUSALS_KEPT = 4
PROTOCOLS = ("pcp", "nat-pmp", "upnp")
_KEY = {"pcp": "pcp", "nat-pmp": "pmp", "upnp": "upnp"}  # counter prefixes

Spawn = Callable[[Coroutine[Any, Any, None]], None]


def gateway_toward(dsts: list[str], current: str | None) -> str | None:
    """Our IPv4 next hop toward the first of ``dsts`` (peers we reach directly) that has
    one, from /proc/net/route; ``current`` while there is no peer yet."""
    if not dsts:
        return current  # no peer yet: keep what we had
    try:
        with open("/proc/net/route") as f:
            routes = f.read()
    except OSError:
        return None
    return next((g for g in (gateway_for(d, routes) for d in dsts) if g), None)


def gateway_for(dst: str, routes: str) -> str | None:
    """The IPv4 next hop toward ``dst`` per a /proc/net/route text (longest prefix)."""
    try:
        d = int(ipaddress.IPv4Address(dst))
    except ValueError:
        return None
    best: tuple[int, str | None] | None = None
    for line in routes.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:  # addresses are the kernel's u32 in network order, printed as host-order hex
            net, gw, mask = (int(ipaddress.IPv4Address(struct.pack("<I", int(f[i], 16))))
                             for i in (1, 2, 7))
            flags = int(f[3], 16)
        except (ValueError, struct.error):
            continue
        if d & mask != net:
            continue
        plen = bin(mask).count("1")
        if best is None or plen > best[0]:  # RTF_GATEWAY (0x2): the route has a next hop
            best = (plen, str(ipaddress.IPv4Address(gw)) if flags & 0x2 else None)
    return best[1] if best else None


def usable_external(ip: str) -> bool:
    """An address peers can be told (they refuse the whole candidate message otherwise)."""
    try:
        a = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    return not (a.is_unspecified or a.is_loopback or a.is_multicast or a.is_link_local)


class PortMapper:
    """Port-mapping client for one UDP port (``tick`` does the work; UPnP in a task)."""

    def __init__(self, drops: Counters, stats: Counters, *, enabled: bool,
                 server_port: int = pmp.PORT) -> None:
        self.enabled = enabled
        self._server_port = server_port  # 5351; tests use a fake gateway elsewhere
        self.drops = drops
        self.stats = stats
        self.spawn: Spawn | None = None  # the node's task group, while running (UPnP)
        self.gateway: str | None = None
        self.port = 0
        self.mode = "pcp"  # the protocol being asked
        self.protocol: str | None = None  # the one that gave the current mapping
        self.external_ip: str | None = None
        self.external_port: int | None = None
        self.lifetime = 0
        self.error = ""  # why there is no mapping, in words
        self.refusals: deque[str] = deque(maxlen=REFUSALS_KEPT)
        self._sock: socket.socket | None = None
        self._local_ip = ""
        self._nonce = os.urandom(12)
        self._next = 0.0  # next request
        self._tries = 0
        self._epoch: tuple[int, float] | None = None  # (epoch, when) of the last reply
        self._expires = float("inf")  # the mapping's lifetime ends (renewals unanswered)
        self._upnp_busy = False
        # (gateway asked, outcome) of the last UPnP task, for tick to pick up
        self._upnp_result: tuple[str, igd.Mapping | igd.IgdError] | None = None
        self._upnp_svc: igd.Service | None = None
        # The external port we suggest: not our own. A NAT that preserves ports already
        # uses ours for our outbound flows, so peers' punching datagrams may reach that
        # port before the gateway forwards it; conntrack then keeps such a flow
        # unforwarded (NAT is decided by a flow's first packet) for as long as the peer
        # keeps sending. A port no one knew before we announce it has no such flow.
        self._suggest = 0
        self._clashed = False  # UPnP: our suggestion was taken, a new one was drawn

    @property
    def mapped(self) -> tuple[str, int] | None:
        if self.external_ip is None or self.external_port is None:
            return None
        return self.external_ip, self.external_port

    def tick(self, now: float, gateway: str | None, port: int) -> None:
        """Read replies, then ask (or renew) when due. ``gateway``: the current next hop."""
        if not self.enabled or port <= 0:
            return
        if gateway != self.gateway or port != self.port:
            self._reset(gateway, port, now)
        if self._sock is None:
            return
        if now >= self._expires:  # never renewed: do not announce what the gateway dropped
            self._forget()
            self.error = f"gateway {self.gateway}: the mapping expired unrenewed"
        for _ in range(MAX_READS):
            try:
                data = self._sock.recv(pcp.MAX_LEN + 1)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:  # ICMP port unreachable: no PCP/NAT-PMP here
                if self.mode in ("pcp", "nat-pmp") and self.protocol is None:
                    self._failed(now, f"no PCP/NAT-PMP server on {self.gateway}", "upnp")
                break
            except OSError as e:
                self.error = f"gateway {self.gateway}: {e.strerror or e}"
                break
            if self.mode == "pcp":
                self._on_pcp(data, now)
            elif self.mode == "nat-pmp":
                self._on_pmp(data, now)
            else:  # asking UPnP: nothing should come here
                self.drops.inc("portmap_unasked")
        if self._upnp_result is not None:
            gw, r = self._upnp_result
            self._upnp_result = None
            if gw == self.gateway and self.mode == "upnp":  # else the gateway changed
                self._on_upnp(r, now)
        if now >= self._next:
            self._ask(now)

    def close(self) -> None:
        """Release a PCP/NAT-PMP mapping (lifetime 0, best effort) and the socket."""
        if self._sock is not None:
            try:
                if self.protocol == "pcp" and self._local_ip:
                    self._sock.send(pcp.map_request(self._local_ip, self._nonce, self.port,
                                                    self.external_port or 0, 0))
                elif self.protocol == "nat-pmp":
                    self._sock.send(pmp.map_request(self.port, 0, 0))
            except (OSError, ValueError):
                pass
            self._sock.close()
            self._sock = None

    async def aclose(self) -> None:
        """Like ``close``, and delete a UPnP mapping (bounded by igd.TIMEOUT)."""
        svc, ext = self._upnp_svc, self.external_port
        self.close()
        if self.protocol == "upnp" and svc is not None and ext:
            try:
                await igd.delete_mapping(svc, ext)
            except igd.IgdError as e:
                log.info("UPnP: could not delete the mapping of port %d: %s", ext, e)

    # ------------------------------------------------------------------ state
    def _forget(self) -> None:
        self.external_ip = self.external_port = self.protocol = None
        self.lifetime = 0
        self._expires = float("inf")

    def _reset(self, gateway: str | None, port: int, now: float) -> None:
        self.close()
        self.gateway, self.port = gateway, port
        self._forget()
        self.mode, self._nonce, self._upnp_svc = "pcp", os.urandom(12), None
        self._suggest, self._clashed = self._draw(port), False
        self._epoch, self._tries, self._next = None, 0, now
        if gateway is None:
            self.error = "no gateway (no route via a next hop to our peers)"
            return
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect((gateway, self._server_port))
            self._local_ip = s.getsockname()[0]  # what PCP and UPnP name as the client
        except OSError as e:
            self.error = f"gateway {gateway}: {e.strerror or e}"
            return
        self._sock = s
        self.error = "asking"

    @staticmethod
    def _draw(port: int) -> int:
        """An external port to suggest: above the usual services, never ``port``."""
        p = random.randrange(20000, 60000)
        return p if p != port else p + 1

    def _failed(self, now: float, why: str, then: str | None) -> None:
        """``self.mode`` gave nothing: try ``then`` at once, or rest IDLE s and start over."""
        self.stats.inc(f"{_KEY[self.mode]}_failures")
        self.refusals.append(f"{self.mode}: {why}")
        self.error = why
        self._tries = 0
        if then is not None:
            self.mode, self._next = then, now
        else:
            self.mode, self._next = "pcp", now + IDLE
            if self.protocol is not None:  # a renewal refused: stop announcing it
                self._forget()

    def _ask(self, now: float) -> None:
        assert self._sock is not None
        if self.mode == "upnp":
            self._ask_upnp(now)
            return
        if self._tries >= TRIES and self.protocol is not None:
            # renewals unanswered: keep asking now and then; the mapping stops being
            # announced when its lifetime ends (tick), and the search starts over
            self._tries, self._next = 0, now + 60
            self.error = f"gateway {self.gateway} did not answer the renewal"
            return
        if self._tries >= TRIES:
            nxt = "nat-pmp" if self.mode == "pcp" else "upnp"
            self._failed(now, f"gateway {self.gateway} did not answer {self.mode.upper()}", nxt)
            return
        self._tries += 1
        self._next = now + RETRY
        try:
            if self.mode == "pcp":
                self._sock.send(pcp.map_request(self._local_ip, self._nonce, self.port,
                                                self.external_port or self._suggest, LIFETIME))
            else:
                self._sock.send(pmp.addr_request())
                self._sock.send(pmp.map_request(self.port, self.external_port or self._suggest,
                                                LIFETIME))
            self.stats.inc(f"{_KEY[self.mode]}_requests")
        except OSError as e:
            self.error = f"gateway {self.gateway}: {e.strerror or e}"

    def _epoch_check(self, epoch: int, now: float) -> None:
        if self._epoch is not None:
            # The epoch counts seconds since the gateway started; clearly less than
            # before (plus the time since) means it restarted and lost our mapping.
            e0, t0 = self._epoch
            if epoch + 2 < e0 + (now - t0) * 7 / 8:
                log.info("port mapping: gateway %s restarted; mapping again", self.gateway)
                self._forget()
                self._next = now
        self._epoch = (epoch, now)

    def _mapped(self, proto: str, ip: str, port: int, lifetime: int, now: float) -> None:
        first = self.external_port is None or self.protocol != proto
        self.protocol, self.external_ip, self.external_port = proto, ip, port
        self.lifetime = lifetime
        self._expires = now + lifetime
        self._tries, self._next = 0, now + max(lifetime, 60) / 2
        self.error = ""
        if first:
            self.stats.inc(f"{_KEY[proto]}_mappings")
            log.info("port mapping (%s): gateway %s maps UDP %s:%d to our port %d for %d s",
                     proto, self.gateway, ip, port, self.port, lifetime)

    # ------------------------------------------------------------------ PCP
    def _on_pcp(self, data: bytes, now: float) -> None:
        try:
            r = pcp.decode(data)
        except pcp.PcpError as e:
            self.drops.inc(f"pcp_bad_{str(e).replace(' ', '_')}")
            return
        if isinstance(r, pcp.Unsupported):
            self._failed(now, f"gateway {self.gateway} speaks no PCP version 2 "
                              f"(version {r.version})", "nat-pmp")
            return
        if r.nonce and r.nonce != self._nonce:
            self.drops.inc("pcp_wrong_nonce")  # not an answer to us
            return
        self._epoch_check(r.epoch, now)
        if r.result != 0:
            self._failed(now, f"gateway {self.gateway} refused (PCP): "
                              f"{pcp.RESULTS.get(r.result, f'result {r.result}')}", None)
            return
        if r.internal != self.port:
            self.drops.inc("pcp_wrong_port")
        elif not usable_external(r.external_ip) or r.lifetime == 0:
            self.drops.inc("pcp_bad_mapping")
        else:
            self._mapped("pcp", r.external_ip, r.external, r.lifetime, now)

    # ------------------------------------------------------------------ NAT-PMP
    def _on_pmp(self, data: bytes, now: float) -> None:
        try:
            r = pmp.decode(data)
        except pmp.PmpError as e:
            self.drops.inc(f"pmp_bad_{str(e).replace(' ', '_')}")
            return
        self._epoch_check(r.epoch, now)
        if r.result != 0:
            self._failed(now, f"gateway {self.gateway} refused: "
                              f"{pmp.RESULTS.get(r.result, f'result {r.result}')}", None)
            return
        if isinstance(r, pmp.AddrReply):
            if not usable_external(r.external):
                self.drops.inc("pmp_bad_external")
                self.external_ip = None
                return
            self.external_ip = r.external
            if self.external_port is not None and self.protocol is None:
                self._mapped("nat-pmp", r.external, self.external_port, self.lifetime, now)
        elif r.internal != self.port:
            self.drops.inc("pmp_wrong_port")
        elif r.external == 0 or r.lifetime == 0:
            self.drops.inc("pmp_bad_mapping")
        elif self.external_ip is not None:
            self._mapped("nat-pmp", self.external_ip, r.external, r.lifetime, now)
        else:  # the address reply is late or was bad: keep the port until it comes
            self.external_port, self.lifetime = r.external, r.lifetime

    # ------------------------------------------------------------------ UPnP
    def _ask_upnp(self, now: float) -> None:
        if self._upnp_busy:
            return
        if self.spawn is None:
            self._failed(now, "UPnP needs the running router", None)
            return
        self._upnp_busy = True
        self._next = now + igd.TIMEOUT * 4  # the task's bound; tick picks its result up
        self.stats.inc("upnp_requests")
        ext = self.external_port or self._suggest
        self.spawn(self._upnp(self._local_ip, self.gateway or "", self.port, ext))

    async def _upnp(self, local_ip: str, gateway: str, port: int, ext: int) -> None:
        try:
            if self._upnp_svc is None:
                self._upnp_svc = await igd.find(local_ip, gateway)
            self._upnp_result = gateway, await igd.add_mapping(self._upnp_svc, local_ip, port,
                                                               ext, LIFETIME)
        except igd.IgdError as e:
            self._upnp_result = gateway, e
        except asyncio.CancelledError:
            raise
        finally:
            self._upnp_busy = False

    def _on_upnp(self, r: igd.Mapping | igd.IgdError, now: float) -> None:
        if isinstance(r, igd.Mapping):
            if usable_external(r.external_ip):
                self._mapped("upnp", r.external_ip, r.external_port, r.lifetime, now)
                return
            r = igd.IgdError("bad_external")
        why = str(r)
        if why.startswith(("bad_", "dtd", "too_long", "control_elsewhere")):
            self.drops.inc(f"upnp_bad_{why.removeprefix('bad_')}")  # an untrusted answer
        if why == "upnp_error_718" and not self._clashed:
            # ConflictInMappingEntry: another host has that port; once more with another
            self.refusals.append(f"upnp: port {self._suggest} taken, asking for another")
            self._suggest, self._clashed = self._draw(self.port), True
            self.stats.inc("upnp_failures")
            self._next = now
            return
        self._upnp_svc = None
        self._failed(now, f"gateway {self.gateway} (UPnP): {why}", None)

    def status(self) -> dict[str, Any]:
        m = self.mapped
        return {"enabled": self.enabled, "gateway": self.gateway, "protocol": self.protocol,
                "asking": self.mode, "mapped": None if m is None else f"{m[0]}:{m[1]}",
                "lifetime_s": self.lifetime if m else None,
                "error": self.error, "refusals": list(self.refusals)}
