"""The router's DNS service: what the node needs of the dns package, in one object.

The node (composition root) builds one ``DnsService`` and calls it; nothing here
imports the node. It owns:

- the record table (``Records``), registered on the gossip router as channel ``"dns"``.
  The channel runs even with ``--no-dns`` or when port 53 cannot be bound: this router
  still registers and relays names for the others, it just does not answer queries;
- persistence of **our own** records in ``STATE_DIR/dns.json`` (``Store``): written
  atomically (temp file, fsync, rename) on the first tick after they change, read once
  at start and re-added with versions above the saved clock, so peers that still hold
  our former records take the new ones;
- the server (``Resolver`` + ``DnsServer``), started by ``start()`` once the overlay
  port has its address. ``start()`` never raises: a port it cannot bind is one log line
  and ``status()["state"]`` says why; the router runs on without DNS;
- the local API: ``api_add`` / ``api_remove`` (``POST /dns/add``, ``POST /dns/remove``)
  and ``status`` (``GET /dns``, ``sleeve status dns``).

Listen addresses (``--dns-listen ADDR[:PORT],...``): default the overlay address of the
TAP (``--ip``) port 53; with no ``--ip`` and no ``--dns-listen`` there is nothing to
listen on and the status says so. Forwarding (names outside the domain) is offered only
to clients on the overlay subnet(s) (``--ip``'s prefix), in IPAM's range (containers)
and to the host itself
(loopback); others get REFUSED: never an open resolver. Upstreams come from
``/etc/resolv.conf`` once at start, without any address that is us.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import pathlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sleeve.dns.names import parse_address, relative_name
from sleeve.dns.records import Records, TableFull
from sleeve.dns.resolver import Resolver, ResolverConfig
from sleeve.dns.server import Addr, DnsServer, parse_listen, read_resolv_conf, upstreams_from
from sleeve.dns.wire import MAX_MSG

if TYPE_CHECKING:
    from sleeve.config import Config
    from sleeve.gossip.router import GossipRouter

log = logging.getLogger("sleeve")

CHANNEL = "dns"
# The codec keeps each message within wire.MAX_MSG (60 000 bytes); the router's bound is a
# little above it so a peer whose estimate differs by a few bytes is not refused.
CHANNEL_MAX_MSG = 64 * 1024
assert CHANNEL_MAX_MSG >= MAX_MSG
STATE_FILE = "dns.json"
MAX_STATE_BYTES = 4 << 20  # a state file larger than this is not ours: ignore it
STATUS_MAX_RECORDS = 1000  # records listed in status (the table may hold 65536)
RESOLV_CONF = "/etc/resolv.conf"


class Store:
    """Our own records on disk: ``{"format": 1, "clock": N, "records": [[name, addr, owner]]}``.

    Bounded by the table's ``max_per_origin`` (what we can hold is what we save)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._written: tuple[int, list[tuple[str, str, str]]] | None = None

    def load(self) -> tuple[int, list[tuple[str, str, str]]]:
        """(clock, records); nothing when the file is missing or unreadable (logged)."""
        try:
            if self.path.stat().st_size > MAX_STATE_BYTES:
                raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
            data = json.loads(self.path.read_bytes())
            clock = data["clock"]
            recs = [(str(n), str(a), str(o)) for n, a, o in data["records"]]
            if data.get("format") != 1 or type(clock) is not int or clock < 0:
                raise ValueError("unknown format")
        except FileNotFoundError:
            return 0, []
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("dns: ignoring %s: %s", self.path, e)
            return 0, []
        self._written = (clock, recs)
        return clock, recs

    def save(self, clock: int, recs: list[tuple[str, str, str]]) -> bool:
        """Write if different from what was last written; False (logged) on failure."""
        if self._written == (clock, recs):
            return True
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        body = json.dumps({"format": 1, "clock": clock, "records": recs}).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, body)
                os.fsync(fd)  # the rename must not expose an empty file after a crash
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("dns: cannot save records to %s: %s", self.path, e.strerror)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        self._written = (clock, recs)
        return True


def listen_addresses(cfg: Config) -> list[Addr]:
    """``--dns-listen`` if given, else the overlay address (``--ip``) port 53, else none."""
    if cfg.dns_listen:
        return [parse_listen(s) for s in cfg.dns_listen]
    if cfg.ip:
        return [(str(ipaddress.ip_interface(cfg.ip).ip), 53)]
    return []


def _host_addresses() -> list[str]:
    """Every address of this host's interfaces (so a wildcard listener never forwards to
    itself). Runs once at start; best effort."""
    try:
        from sleeve.iproute import iproute

        with iproute() as ipr:
            return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()
                    if a.get_attr("IFA_ADDRESS")]
    except Exception as e:  # no netlink (a sandbox): loopback and the listen addresses remain
        log.debug("dns: cannot list host addresses: %s", e)
        return []


class DnsService:
    def __init__(self, cfg: Config, me: bytes, gossip: GossipRouter,
                 is_known_peer: Callable[[bytes], bool] | None = None,
                 resolv_conf: str = RESOLV_CONF) -> None:
        self.cfg = cfg
        self.domain = cfg.dns_domain
        self.resolv_conf = resolv_conf
        self.records = Records(me, is_known_peer=is_known_peer, on_change=self._on_change)
        self.records.set_gossip(gossip.register(CHANNEL, self.records,
                                                max_msg=CHANNEL_MAX_MSG))
        # Recursion for the overlay subnet and for IPAM's range: containers (CNI, Docker)
        # take addresses from the range, often outside --ip's prefix (a Docker pool), and
        # their resolv.conf points here; anything else is refused (no open resolver).
        self.overlay = ([ipaddress.ip_interface(cfg.ip).network] if cfg.ip else [])
        try:
            alloc = ipaddress.ip_network(cfg.ipalloc_range, strict=False)
        except ValueError:  # validated by IPAM at start; a bad value just adds nothing here
            alloc = None
        if alloc is not None and alloc not in self.overlay:
            self.overlay.append(alloc)
        self.listen = listen_addresses(cfg)
        self.server: DnsServer | None = None
        self.state = "off (--no-dns)" if not cfg.dns else "not started"
        self.store = Store(cfg.state_dir / STATE_FILE)
        self._dirty = False
        self.restored = self._restore()

    # -- persistence -------------------------------------------------------------------------
    def _restore(self) -> int:
        clock, recs = self.store.load()
        self.records.advance_clock(clock)
        now, n = time.monotonic(), 0
        for name, addr, owner in recs:
            try:
                n += self.records.add(name, addr, owner, now)
            except (ValueError, TableFull) as e:  # edited by hand, or bounds changed
                log.warning("dns: not restoring %s %s: %s", name, addr, e)
        if n:
            log.info("dns: restored %d of our records from %s", n, self.store.path)
        self._dirty = False
        return n

    def _on_change(self) -> None:
        self._dirty = True  # any table change; tick() writes only if ours changed

    def save(self) -> None:
        self._dirty = False
        self.store.save(self.records.clock, self.records.own_records())

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Serve DNS on the listen addresses; never raises (the router runs on without)."""
        if not self.cfg.dns:
            return
        if not self.listen:
            self.state = "off: no address to listen on (give --ip or --dns-listen)"
            log.warning("dns: %s", self.state)
            return
        rc = ResolverConfig(domain=self.domain, ttl=self.cfg.dns_ttl,
                            one_address=self.cfg.dns_one_address,
                            rate=self.cfg.dns_rate, burst=max(1.0, 2 * self.cfg.dns_rate))
        resolver = Resolver(self.records, self.may_recurse, rc)
        local = await asyncio.to_thread(_host_addresses)  # netlink: not on the loop
        try:
            text = pathlib.Path(self.resolv_conf).read_text(errors="replace")[:65536]
        except OSError as e:
            log.warning("dns: cannot read %s (%s): no upstreams, other names get SERVFAIL",
                        self.resolv_conf, e.strerror)
            text = ""
        ups = upstreams_from(read_resolv_conf(text), self.listen, local_addresses=local)
        server = DnsServer(resolver, self.listen, ups, local_addresses=local)
        try:
            await server.start()
        except OSError as e:
            where = ", ".join(_fmt(a) for a in self.listen)
            self.state = f"off: cannot listen on {where}: {e.strerror or e}"
            log.error("dns: %s; the router runs on without DNS", self.state)
            return
        self.server = server
        self.state = "serving"
        log.info("dns: serving %s on %s (udp+tcp), upstreams %s", self.domain,
                 ", ".join(_fmt(a) for a in server.bound),
                 ", ".join(_fmt(u) for u in server.upstreams) or "none")

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None
            self.state = "stopped"
        if self._dirty:
            self.save()

    def next_deadline(self) -> float | None:
        return self.records.next_deadline()

    def tick(self, now: float) -> None:
        dl = self.records.next_deadline()
        if dl is not None and now >= dl:
            self.records.tick(now)
        if self._dirty:
            self.save()

    def may_recurse(self, client: str) -> bool:
        """Forwarding only for the overlay subnet(s), IPAM's range and this host (loopback)."""
        try:
            a = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
            a = a.ipv4_mapped
        return a.is_loopback or any(a in n for n in self.overlay)

    # -- local API -----------------------------------------------------------------------------
    def add(self, name: str, address: str, owner: str = "") -> dict[str, Any]:
        """Register ``name`` -> ``address``; ValueError (one line) for bad input."""
        rel = relative_name(name, self.domain)
        try:
            added = self.records.add(rel, address, owner, time.monotonic())
        except TableFull as e:
            raise ValueError(str(e)) from None
        self.save()  # now, not at the next tick: a restart right after must keep it
        return {"added": added, "name": self.fqdn(rel), "address": str(parse_address(address)),
                "id": owner}

    def remove(self, name: str, address: str | None = None) -> dict[str, Any]:
        rel = relative_name(name, self.domain)
        n = self.records.remove(rel, address or None, time.monotonic())
        self.save()
        return {"removed": n, "name": self.fqdn(rel)}

    def api_add(self, q: dict[str, str]) -> dict[str, Any]:
        name, addr = q.get("name", ""), q.get("address", "")
        if not name or not addr:
            raise ValueError("dns add needs name= and address=")
        return self.add(name, addr, q.get("id", ""))

    def api_remove(self, q: dict[str, str]) -> dict[str, Any]:
        if not q.get("name"):
            raise ValueError("dns remove needs name=")
        return self.remove(q["name"], q.get("address") or None)

    def fqdn(self, rel: str) -> str:
        return f"{rel}.{self.domain.rstrip('.')}."

    def status(self) -> dict[str, Any]:
        entries = self.records.entries()
        server = self.server.status() if self.server is not None else None
        return {
            "state": self.state, "domain": self.domain, "ttl": self.cfg.dns_ttl,
            "one_address": self.cfg.dns_one_address,
            "listen": [_fmt(a) for a in self.listen],
            "forward_to_clients_in": [str(n) for n in self.overlay] + ["loopback"],
            "restored": self.restored,
            "table": self.records.status(),
            "records": [{**e, "name": self.fqdn(e["name"])}
                        for e in entries[:STATUS_MAX_RECORDS]],
            "records_truncated": len(entries) > STATUS_MAX_RECORDS,
            "server": server,
        }


    def metrics_status(self) -> dict[str, Any]:
        """What /metrics reads of ``status()``: counters, not the records themselves."""
        return {"state": self.state, "table": self.records.status(),
                "server": self.server.status() if self.server is not None else None}


def _fmt(a: Addr) -> str:
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"

