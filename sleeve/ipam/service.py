"""The router's IPAM service: the asyncio adapter around the sans-IO ``Allocator``.

The node (composition root) builds one ``IpamService`` and calls it; nothing here
imports the node. It owns:

- the ``Allocator``, built from the ``--ipalloc-*`` options and registered on the gossip
  router as channel ``"ipam"``. Its one timer is driven by the node's ticker:
  ``tick(now)`` runs the allocator when ``next_deadline()`` is due;
- persistence in ``STATE_DIR/ipam.state`` (the allocator's ``persist()`` bytes): read
  once before the allocator attaches (a file for another range, another peer or one we
  cannot read stops the launch with one line: guessing could hand an address out
  twice); written atomically (temp file, fsync, rename, fsync of the directory) before
  an allocation or release is answered, and on the first tick after any other change
  (ring merges, free counts: those a restart also relearns from gossip);
- the local API: ``api_allocate`` (waits for the mesh at most ``ALLOC_TIMEOUT``, then
  ``Unavailable``: 503), ``api_release``, ``api_rmpeer`` (refused while the peer is
  reachable in the topology), ``api_reset`` (donate every range, then stop the router),
  ``api_expose`` (an address for the host itself on the TAP, by netlink) and
  ``status``.

Peers are named as ``sleeve status peers`` shows them (``3a:9f:...``; plain hex too)
or by nickname when exactly one peer in the topology has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import pathlib
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sleeve.config import (
    ConfigError,
    ipalloc_init_text,
    parse_peer_name,
    underlay_from_config,
)
from sleeve.crypto.keys import format_peer_id
from sleeve.ipam import wire
from sleeve.ipam.allocator import Allocator
from sleeve.ipam.consensus import parse_init
from sleeve.ipam.validate import Allocation, IpamError
from sleeve.status.routes import Unavailable

if TYPE_CHECKING:
    from sleeve.config import Config
    from sleeve.gossip.router import GossipRouter

log = logging.getLogger("sleeve")

CHANNEL = "ipam"
STATE_FILE = "ipam.state"
MAX_STATE_BYTES = 64 << 20  # ~1M allocations; a larger file is not ours
ALLOC_TIMEOUT = 20.0  # s an API allocation waits for agreement or a donor
RESET_GRACE = 1.0  # s between donating (the GRANT is queued) and stopping the router
EXPOSE_PREFIX = "expose:"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def write_atomic(path: pathlib.Path, body: bytes) -> None:
    """temp, fsync, rename, fsync the directory: a crash leaves the old file or the new."""
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def host_networks(skip_iface: str) -> list[ipaddress.IPv4Network]:
    """The networks of this host's IPv4 interface addresses (netlink), but ``skip_iface``'s
    (our own TAP: its addresses may well come from IPAM). What ``--ipalloc-range`` must
    not overlap, checked at launch; best effort (empty without netlink)."""
    try:
        from sleeve.iproute import iproute

        with iproute() as ipr:
            names = {ln["index"]: ln.get_attr("IFLA_IFNAME") for ln in ipr.get_links()}
            out = []
            for a in ipr.get_addr(family=2):
                if names.get(a["index"]) == skip_iface:
                    continue
                out.append(ipaddress.IPv4Network(
                    (a.get_attr("IFA_ADDRESS"), a["prefixlen"]), strict=False))
            return out
    except Exception as e:  # a sandbox without netlink: the config's own addresses remain
        log.debug("ipam: cannot list host addresses: %s", e)
        return []


def add_address(ifname: str, cidr: str) -> bool:
    """Put ``cidr`` on ``ifname`` by netlink (blocking: run it in a thread); False if there."""
    from sleeve.iproute import iproute, netlink_error

    NetlinkError = netlink_error()
    iface = ipaddress.IPv4Interface(cidr)
    with iproute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise ValueError(f"no interface {ifname}")
        try:
            ipr.addr("add", index=idx[0], address=str(iface.ip),
                     prefixlen=iface.network.prefixlen)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return False
            raise ValueError(f"cannot add {cidr} to {ifname}: {os.strerror(e.code)}") from None
    return True


def expose_id(nickname: str) -> str:
    """``expose:<nickname>``, made a valid ID (printable ASCII, no spaces, <= 64)."""
    clean = re.sub(r"[^\x21-\x7e]", "_", nickname) or "host"
    return (EXPOSE_PREFIX + clean)[:64]


class IpamService:
    def __init__(self, cfg: Config, me: bytes, gossip: GossipRouter, *,
                 reachable: Callable[[], set[bytes]],
                 nicknames: Callable[[], dict[bytes, str]],
                 port_name: Callable[[], str | None],
                 stop: Callable[[], None]) -> None:
        """Raises ``IpamError`` (one line) for bad options or a state file we must not use."""
        self.cfg = cfg
        self.me = me
        self.reachable = reachable
        self.nicknames = nicknames
        self.port_name = port_name
        self._stop = stop
        try:
            init = parse_init(ipalloc_init_text(cfg), parse_peer_name)
        except ConfigError as e:
            raise IpamError(str(e)) from None
        self.alloc = Allocator(me, init, alloc_range=cfg.ipalloc_range,
                               default_subnet=cfg.ipalloc_default_subnet,
                               underlay=underlay_from_config(cfg))
        self.path = cfg.state_dir / STATE_FILE
        self.restored = self._restore()
        self._saved = self.alloc.changes
        self.save_errors = 0
        self.alloc.attach(gossip.register(CHANNEL, self.alloc, max_msg=wire.MAX_MSG),
                          time.monotonic(), start_consensus=False)
        self.stopping = False

    # -- persistence -------------------------------------------------------------------------
    def _restore(self) -> int:
        try:
            if self.path.stat().st_size > MAX_STATE_BYTES:
                raise IpamError(f"larger than {MAX_STATE_BYTES} bytes")
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        except (OSError, IpamError) as e:
            raise IpamError(f"cannot read IPAM state {self.path}: {_one_line(e)}") from None
        try:
            self.alloc.restore(data)
        except IpamError as e:
            raise IpamError(f"{self.path}: {e} (remove the file to start this peer's IPAM "
                            f"afresh; its allocations are then forgotten)") from None
        n = len(self.alloc.allocs)
        log.info("ipam: restored %d allocation(s) from %s", n, self.path)
        return n

    def save(self) -> bool:
        """Write the state if it moved since the last write; False (logged) on failure."""
        if self.alloc.changes == self._saved:
            return True
        changes = self.alloc.changes
        try:
            write_atomic(self.path, self.alloc.persist())
        except OSError as e:
            self.save_errors += 1
            log.warning("ipam: cannot save %s: %s", self.path, e.strerror or e)
            return False
        self._saved = changes
        return True

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Put the host's exposed addresses back on the (new) TAP; never raises."""
        name = self.port_name()
        for owner_id, ifaces in self._exposed().items():
            for iface in ifaces:
                try:
                    if name is not None:
                        await asyncio.to_thread(add_address, name, str(iface))
                        log.info("ipam: %s %s on %s again", owner_id, iface, name)
                except Exception as e:
                    log.warning("ipam: cannot put %s back on %s: %s", iface, name, _one_line(e))

    def close(self) -> None:
        self.save()

    def next_deadline(self) -> float | None:
        return self.alloc.next_deadline()

    def tick(self, now: float) -> None:
        dl = self.alloc.next_deadline()
        if dl is not None and now >= dl:
            self.alloc.tick(now)
        self.save()

    def _exposed(self) -> dict[str, list[ipaddress.IPv4Interface]]:
        ids = {i for (i, _n) in self.alloc.allocs if i.startswith(EXPOSE_PREFIX)}
        return {i: self.alloc.lookup(i) for i in sorted(ids)}

    # -- local API ---------------------------------------------------------------------------
    async def allocate(self, owner_id: str, subnet: str | None,
                       timeout: float = ALLOC_TIMEOUT) -> ipaddress.IPv4Interface:
        """An address for ``owner_id``, saved before it is returned. ``IpamError`` for bad
        input or a failure the allocator reports; ``Unavailable`` after ``timeout``."""
        if self.stopping:
            raise Unavailable("the router is leaving (sleeve reset)")
        op = self.alloc.allocate(owner_id, subnet, time.monotonic())
        if not op.done:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def wake(_op: Allocation) -> None:
                if not fut.done():
                    fut.set_result(None)
            op.add_done_callback(wake)
            try:
                await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                why = op.waiting or "no answer from the peers that own space: partitioned?"
                self.alloc.cancel(op)
                self.alloc.counters["api_timeouts"] += 1
                raise Unavailable(f"no address for {owner_id} after {timeout:.0f} s: {why}"
                                  ) from None
        if op.error is not None:
            raise op.error
        assert op.address is not None
        if not self.save():
            raise Unavailable(f"allocated {op.address} but cannot save {self.path}: refusing "
                              f"to hand out an address a restart could lose")
        return op.address

    async def api_allocate(self, q: dict[str, str]) -> dict[str, Any]:
        owner_id = q.get("id", "")
        addr = await self.allocate(owner_id, q.get("subnet") or None)
        return {"id": owner_id, "address": str(addr)}

    def api_release(self, q: dict[str, str]) -> dict[str, Any]:
        owner_id = q.get("id", "")
        if not owner_id:
            raise IpamError("empty ID")
        n = self.alloc.release(owner_id, time.monotonic())
        self.save()
        return {"id": owner_id, "released": n}

    def lookup_peer(self, name: str) -> bytes:
        """A peer id from ``3a:9f:...``, plain hex, or a nickname unique in the topology."""
        with contextlib.suppress(ConfigError):
            return parse_peer_name(name)
        hits = [p for p, nick in self.nicknames().items() if nick == name]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise IpamError(f"nickname {name!r} is ambiguous ({len(hits)} peers): give the id")
        raise IpamError(f"unknown peer {name!r}: give its id as `sleeve status ipam` shows it")

    def api_rmpeer(self, q: dict[str, str]) -> dict[str, Any]:
        peer = self.lookup_peer(q.get("peer", ""))
        shown = format_peer_id(peer)
        if peer == self.me:
            raise IpamError("cannot rmpeer this router itself (use sleeve reset)")
        if peer in self.reachable():
            raise IpamError(f"peer {shown} is reachable in the mesh: refusing to take its "
                            f"ranges (rmpeer is for peers that are gone for good)")
        if not self.alloc.ring.owned(peer):
            raise IpamError(f"peer {shown} owns no ranges in the ring")
        freed = self.alloc.rmpeer(peer, time.monotonic())
        self.save()
        log.warning("ipam: took over the ranges of %s (%d addresses free)", shown, freed)
        return {"peer": shown, "freed": freed}

    def api_reset(self, q: dict[str, str]) -> dict[str, Any]:
        """Release everything, give our ranges to a reachable peer, then stop the router."""
        force = q.get("force", "") in ("1", "true", "yes")
        owned = bool(self.alloc.ring.owned())
        if owned and self.alloc.gossip_handle is not None:
            peers = self.alloc.ring.owners() - {self.me}
            if not peers & self.reachable() and not force:
                raise IpamError("no reachable peer to take our ranges: they would stay ours "
                                "until someone runs rmpeer (force: sleeve reset --force)")
        released = len(self.alloc.allocs)
        to = self.alloc.donate_all(time.monotonic())
        if owned and to is None and not force:
            raise IpamError("no reachable peer took our ranges (force: sleeve reset --force)")
        self.save()
        self.stopping = True
        asyncio.get_running_loop().call_later(RESET_GRACE, self._stop)
        who = None if to is None else format_peer_id(to)
        log.warning("ipam: reset: released %d allocation(s), ranges donated to %s; stopping",
                    released, who)
        return {"released": released, "donated_to": who, "stopping": True}

    async def api_expose(self, q: dict[str, str]) -> dict[str, Any]:
        """``sleeve expose``: an address from IPAM for the host itself, on the TAP."""
        name = self.port_name()
        if name is None:
            raise Unavailable("the router has no port yet")
        owner_id = expose_id(self.cfg.nickname)
        addr = await self.allocate(owner_id, q.get("subnet") or None)
        try:
            added = await asyncio.to_thread(add_address, name, str(addr))
        except ValueError:
            raise
        except Exception as e:  # no netlink, not a real interface (a memory port in tests)
            raise IpamError(f"allocated {addr} but cannot add it to {name}: "
                            f"{_one_line(e)}") from None
        return {"id": owner_id, "address": str(addr), "interface": name, "added": added}

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st = self.alloc.status()
        nicks = self.nicknames()
        reach = self.reachable()
        for p in st["ring"]:
            pid = bytes.fromhex(p["peer"])
            p.update(peer=format_peer_id(pid), nickname=nicks.get(pid, ""),
                     self=pid == self.me, reachable=pid in reach)
        st["me"] = format_peer_id(self.me)
        st["consensus"]["seeds"] = [format_peer_id(bytes.fromhex(s))
                                    for s in st["consensus"]["seeds"]]
        for c in st["conflicts"]:
            c["peer"] = format_peer_id(bytes.fromhex(c["peer"]))
        st["free_owned"] = sum(p["free"] for p in st["ring"] if p["self"])
        st["state_file"] = str(self.path)
        st["restored"] = self.restored
        st["save_errors"] = self.save_errors
        return st
