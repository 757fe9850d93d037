"""Port mapping: ask the NAT gateway (NAT-PMP) to forward a public UDP port to ours.

A mapped endpoint is a door the gateway keeps open for anyone, so a peer can reach
us there whatever the NAT's filtering, and even from behind a port-randomising NAT
of its own. The traversal part announces it to peers at each punching attempt (the
``cand`` message's ``mapped`` list) and peers send there with the full TTL.

One mapping (our IPv4 UDP port), asked for with lifetime ``LIFETIME`` and renewed at
half of it; a gateway that does not answer ``TRIES`` requests ``RETRY`` s apart is
left alone for ``IDLE`` s. The gateway is the next hop of the route to a peer we are
connected to (read from /proc/net/route: no netlink on the event loop, no ``ip``).
Replies come from a socket connected to gateway:5351 (the kernel drops datagrams
from anywhere else) and are still validated: malformed ones are counted
(``pmp_bad_<reason>``), refusals are shown in status, an epoch that went backwards
(the gateway restarted and forgot its mappings) asks again at once.
``--no-port-mapping`` turns it off.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from typing import Any

from sleeve.proto.stats import Counters
from sleeve.traversal import pmp

log = logging.getLogger("sleeve")

LIFETIME = 7200  # s, RFC 6886's recommendation
TRIES = 4
RETRY = 1.0  # s between unanswered requests
IDLE = 300.0  # s before asking a silent or refusing gateway again
MAX_READS = 8  # replies read per tick: bounded work for whatever arrives


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


class PortMapper:
    """NAT-PMP client for one UDP port (sans event loop: ``tick`` does all the work)."""

    def __init__(self, drops: Counters, stats: Counters, *, enabled: bool,
                 server_port: int = pmp.PORT) -> None:
        self.enabled = enabled
        self._server_port = server_port  # 5351; tests use a fake gateway elsewhere
        self.drops = drops
        self.stats = stats
        self.gateway: str | None = None
        self.port = 0
        self.external_ip: str | None = None
        self.external_port: int | None = None
        self.error = ""  # why there is no mapping, in words
        self._sock: socket.socket | None = None
        self._next = 0.0  # next request
        self._tries = 0
        self._epoch: tuple[int, float] | None = None  # (epoch, when) of the last reply
        self._expires = float("inf")  # the mapping's lifetime ends (renewals unanswered)

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
            self.external_port, self._expires = None, float("inf")
            self.error = f"gateway {self.gateway}: the mapping expired unrenewed"
        for _ in range(MAX_READS):
            try:
                data = self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # e.g. ICMP port unreachable: nothing listens there
                self.error = f"gateway {self.gateway}: {e.strerror or e}"
                break
            self._on_reply(data, now)
        if now >= self._next:
            self._ask(now)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _reset(self, gateway: str | None, port: int, now: float) -> None:
        self.close()
        self.gateway, self.port = gateway, port
        self.external_ip = self.external_port = None
        self._epoch, self._tries, self._next = None, 0, now
        if gateway is None:
            self.error = "no gateway (no route via a next hop to our peers)"
            return
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect((gateway, self._server_port))
        except OSError as e:
            self.error = f"gateway {gateway}: {e.strerror or e}"
            return
        self._sock = s
        self.error = "asking"

    def _ask(self, now: float) -> None:
        assert self._sock is not None
        if self._tries >= TRIES:
            self.error = f"gateway {self.gateway} did not answer NAT-PMP"
            self._tries, self._next = 0, now + IDLE
            return
        self._tries += 1
        self._next = now + RETRY
        try:
            self._sock.send(pmp.addr_request())
            self._sock.send(pmp.map_request(self.port, self.external_port or self.port,
                                            LIFETIME))
            self.stats.inc("pmp_requests")
        except OSError as e:
            self.error = f"gateway {self.gateway}: {e.strerror or e}"

    def _on_reply(self, data: bytes, now: float) -> None:
        try:
            r = pmp.decode(data)
        except pmp.PmpError as e:
            self.drops.inc(f"pmp_bad_{str(e).replace(' ', '_')}")
            return
        if self._epoch is not None:
            # The epoch counts seconds since the gateway started; clearly less than
            # before (plus the time since) means it restarted and lost our mapping.
            e0, t0 = self._epoch
            if r.epoch + 2 < e0 + (now - t0) * 7 / 8:
                log.info("NAT-PMP gateway %s restarted; mapping again", self.gateway)
                self.external_ip = self.external_port = None
                self._next = now
        self._epoch = (r.epoch, now)
        if r.result != 0:
            self.error = (f"gateway {self.gateway} refused: "
                          f"{pmp.RESULTS.get(r.result, f'result {r.result}')}")
            self.external_ip = self.external_port = None
            self._tries, self._next = 0, now + IDLE
            return
        if isinstance(r, pmp.AddrReply):
            try:
                ext = ipaddress.IPv4Address(r.external)
            except ValueError:
                ext = None
            if ext is None or (ext.is_unspecified or ext.is_loopback or ext.is_multicast
                               or ext.is_link_local):
                # peers would refuse the whole candidate message for it (bad_cand)
                self.drops.inc("pmp_bad_external")
                self.external_ip = None
                return
            self.external_ip = r.external
        elif r.internal == self.port:
            if r.external == 0 or r.lifetime == 0:
                self.drops.inc("pmp_bad_mapping")
                return
            first = self.external_port is None
            self.external_port = r.external
            self._expires = now + r.lifetime
            self._tries, self._next = 0, now + max(r.lifetime, 60) / 2
            self.error = ""
            if first:
                self.stats.inc("pmp_mappings")
                log.info("NAT-PMP: gateway %s maps UDP %s:%d to our port %d for %d s",
                         self.gateway, self.external_ip, r.external, self.port, r.lifetime)
        else:
            self.drops.inc("pmp_wrong_port")

    def status(self) -> dict[str, Any]:
        m = self.mapped
        return {"enabled": self.enabled, "gateway": self.gateway,
                "mapped": None if m is None else f"{m[0]}:{m[1]}", "error": self.error}
