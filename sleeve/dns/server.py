"""The DNS server: asyncio adapter around ``resolver.Resolver`` (sockets only, no DNS logic).

- UDP and TCP listeners on each listen address (``--dns-listen ADDR[:PORT]``, see
  ``parse_listen``); with port 0 the UDP socket picks the port and TCP takes the same one.
- ``Forward`` results go to the upstream resolvers in turn, over the client's transport
  (UDP -> UDP, TCP -> TCP), each with ``upstream_timeout``; a refused or silent upstream
  makes us try the next one; SERVFAIL when none answers. At most ``max_inflight``
  upstream exchanges run at once (a semaphore) and at most ``max_pending`` forwards wait
  for one; past that a UDP query is dropped (``forward_busy``) and a TCP one SERVFAILs.
- Upstreams come from resolv.conf (``read_resolv_conf`` + ``upstreams_from``): never
  ourselves: our own listen addresses, the loopback aliases of a wildcard listener
  and 0.0.0.0/:: (which mean "this host") are removed.
- TCP: 2-byte length framing, queries of at most ``max_tcp_query`` bytes, ``tcp_idle``
  seconds idle timeout, at most ``max_tcp_conns`` connections (further ones are
  closed at once and counted). Queries on one connection are answered in order.

The stock asyncio datagram transport is fine here: this is the control plane (a DNS
query per connection setup), not the frame path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from sleeve.dns.resolver import Answer, Forward, Resolver, Transport

Addr = tuple[str, int]
_RCODES = {0: "noerror", 1: "formerr", 2: "servfail", 3: "nxdomain", 4: "notimp", 5: "refused"}


# -- configuration helpers (pure) -----------------------------------------------------------
def parse_listen(spec: str, default_port: int = 53) -> Addr:
    """``ADDR[:PORT]`` (IPv6 as ``[ADDR]:PORT`` or bare) -> (addr, port); ValueError if bad."""
    host, port = spec, default_port
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad listen address {spec!r}")
        if rest:
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, p = spec.split(":")
        port = int(p)
    ipaddress.ip_address(host)  # raises ValueError for a non-address
    if not 0 <= port <= 65535:
        raise ValueError(f"bad port in {spec!r}")
    return host, port


def read_resolv_conf(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, in order (unparseable ones skipped)."""
    out = []
    for line in text.splitlines():
        f = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(f) >= 2 and f[0] == "nameserver":
            try:
                out.append(str(ipaddress.ip_address(f[1].split("%", 1)[0])))
            except ValueError:
                continue
    return out


def _norm(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    a = ipaddress.ip_address(ip)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    if a.is_unspecified:  # 0.0.0.0 / :: as a destination means this host
        a = ipaddress.ip_address("127.0.0.1" if a.version == 4 else "::1")
    return a


def is_self(up: Addr, listen: Iterable[Addr], local_addresses: Iterable[str] = ()) -> bool:
    """Whether a query sent to ``up`` would reach one of our ``listen`` sockets."""
    ua = _norm(up[0])
    local = {_norm(x) for x in local_addresses}
    for host, port in listen:
        if port != up[1]:
            continue
        la = ipaddress.ip_address(host)
        if la.is_unspecified:
            if ua.is_loopback or ua in local:
                return True
        elif _norm(host) == ua:
            return True
    return False


def upstreams_from(nameservers: Iterable[str], listen: Iterable[Addr], port: int = 53,
                   local_addresses: Iterable[str] = ()) -> list[Addr]:
    """resolv.conf nameservers as upstreams, without any that is us, each once."""
    ls = list(listen)
    out: list[Addr] = []
    for ns in nameservers:
        up = (ns, port)
        if up not in out and not is_self(up, ls, local_addresses):
            out.append(up)
    return out


# -- protocols -------------------------------------------------------------------------------
class _UdpListener(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.transport is not None:
            self.server._on_udp(self.transport, data, addr)


class _UdpAsk(asyncio.DatagramProtocol):
    """One upstream exchange over UDP: the first datagram the resolver accepts wins."""

    def __init__(self, resolver: Resolver, fwd: Forward) -> None:
        self.resolver, self.fwd = resolver, fwd
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ans = self.resolver.upstream_reply(self.fwd, data)
        if ans is not None and not self.done.done():
            self.done.set_result(ans)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: next one
        if not self.done.done():
            self.done.set_exception(exc)


class DnsServer:
    def __init__(
        self,
        resolver: Resolver,
        listen: Iterable[Addr],
        upstreams: Iterable[Addr] = (),
        *,
        local_addresses: Iterable[str] = (),
        upstream_timeout: float = 2.0,
        max_inflight: int = 64,
        max_pending: int = 512,
        tcp_idle: float = 10.0,
        max_tcp_conns: int = 128,
        max_tcp_query: int = 4096,
    ) -> None:
        self.resolver = resolver
        self.listen = list(listen)
        self.local_addresses = list(local_addresses)
        self._configured_upstreams = list(upstreams)
        self.upstreams: list[Addr] = []
        self.upstream_timeout = upstream_timeout
        self.max_pending = max_pending
        self.tcp_idle = tcp_idle
        self.max_tcp_conns = max_tcp_conns
        self.max_tcp_query = max_tcp_query
        self._sem = asyncio.Semaphore(max_inflight)
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_conns: set[asyncio.StreamWriter] = set()
        self._pending = 0
        self.bound: list[Addr] = []
        self.stats: collections.Counter[str] = collections.Counter()
        self.upstream_failures: collections.Counter[str] = collections.Counter()
        self.rcodes: collections.Counter[str] = collections.Counter()  # answers sent, by rcode

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind every listen address (UDP, then TCP on the same port); raises OSError if one
        cannot be bound (after closing what was bound)."""
        loop = asyncio.get_running_loop()
        self.bound = []
        try:
            for host, port in self.listen:
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                tr, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpListener(self), local_addr=(host, port), family=fam)
                self._udp.append(tr)
                port = tr.get_extra_info("sockname")[1]
                srv = await asyncio.start_server(self._on_tcp, host, port, family=fam,
                                                 reuse_address=True)
                self._tcp.append(srv)
                self.bound.append((host, port))
        except OSError:
            await self.close()
            raise
        self.upstreams = [u for u in self._configured_upstreams
                          if not is_self(u, self.bound, self.local_addresses)]
        self.stats["upstreams_dropped_as_self"] = (
            len(self._configured_upstreams) - len(self.upstreams))

    async def close(self) -> None:
        for tr in self._udp:
            tr.close()
        for srv in self._tcp:
            srv.close()
        for w in list(self._tcp_conns):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        for srv in self._tcp:
            with contextlib.suppress(Exception):
                await srv.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0)  # transports close their sockets on the next loop turn
        self._udp, self._tcp = [], []

    def status(self) -> dict[str, Any]:
        return {
            "listen": [f"{h}:{p}" if ":" not in h else f"[{h}]:{p}" for h, p in self.bound],
            "upstreams": [f"{h}:{p}" for h, p in self.upstreams],
            "stats": dict(self.stats), "answers": dict(self.rcodes),
            "upstream_failures": dict(self.upstream_failures),
            "pending_forwards": self._pending, "tcp_connections": len(self._tcp_conns),
            "resolver": self.resolver.status(),
        }

    def _count(self, answer: bytes) -> None:
        # the rcode's low 4 bits are in byte 3 of the header (what a client sees)
        rc = answer[3] & 0xF if len(answer) >= 4 else -1
        self.rcodes[_RCODES.get(rc, f"rcode{rc}")] += 1

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -- UDP --------------------------------------------------------------------------------
    def _on_udp(self, tr: asyncio.DatagramTransport, data: bytes, addr: Any) -> None:
        self.stats["udp_queries"] += 1
        res = self.resolver.handle(data, addr[0], "udp", asyncio.get_running_loop().time())
        if isinstance(res, Answer):
            self._count(res.data)
            tr.sendto(res.data, addr)
        elif isinstance(res, Forward):
            if self._pending >= self.max_pending:
                self.stats["forward_busy"] += 1
                return
            self._pending += 1  # counted now, not when the task first runs
            self._spawn(self._udp_forward(tr, res, addr))

    async def _udp_forward(self, tr: asyncio.DatagramTransport, fwd: Forward, addr: Any) -> None:
        try:
            data = await self._forward(fwd)
        finally:
            self._pending -= 1
        if not tr.is_closing():
            self._count(data)
            tr.sendto(data, addr)

    # -- forwarding ---------------------------------------------------------------------------
    async def _forward(self, fwd: Forward) -> bytes:
        """The client's answer: the first upstream's accepted reply, else SERVFAIL.
        (The caller counts it in ``_pending``.)"""
        async with self._sem:
            for up in self.upstreams:
                try:
                    ans = await asyncio.wait_for(self._ask(up, fwd), self.upstream_timeout)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                    self.upstream_failures[f"{up[0]}:{up[1]} {type(e).__name__}"] += 1
                    continue
                self.stats["forward_answered"] += 1
                return ans
        return self.resolver.servfail(fwd)

    async def _ask(self, up: Addr, fwd: Forward) -> bytes:
        loop = asyncio.get_running_loop()
        if fwd.transport == "udp":
            tr, proto = await loop.create_datagram_endpoint(
                lambda: _UdpAsk(self.resolver, fwd), remote_addr=up)
            try:
                tr.sendto(fwd.query)
                return await proto.done
            finally:
                tr.close()
        reader, writer = await asyncio.open_connection(up[0], up[1])
        try:
            writer.write(len(fwd.query).to_bytes(2, "big") + fwd.query)
            await writer.drain()
            while True:  # replies that are not ours (wrong id) are skipped
                n = int.from_bytes(await reader.readexactly(2), "big")
                ans = self.resolver.upstream_reply(fwd, await reader.readexactly(n))
                if ans is not None:
                    return ans
        finally:
            writer.close()

    # -- TCP --------------------------------------------------------------------------------
    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tcp_conns) >= self.max_tcp_conns:
            self.stats["tcp_rejected"] += 1
            writer.close()
            return
        self._tcp_conns.add(writer)
        self.stats["tcp_connections"] += 1
        peer = writer.get_extra_info("peername")
        task = asyncio.current_task()
        if task is not None:  # owned: close() cancels it
            self._tasks.add(task)
        try:
            while await self._tcp_one(reader, writer, peer[0]):
                pass
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tcp_conns.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _tcp_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       client: str) -> bool:
        try:
            head = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle)
        except asyncio.IncompleteReadError:
            return False  # the client closed between queries
        n = int.from_bytes(head, "big")
        if n > self.max_tcp_query:
            self.stats["tcp_oversize"] += 1
            return False
        body = await asyncio.wait_for(reader.readexactly(n), self.tcp_idle)
        self.stats["tcp_queries"] += 1
        tr: Transport = "tcp"
        res = self.resolver.handle(body, client, tr, asyncio.get_running_loop().time())
        if isinstance(res, Forward):
            if self._pending >= self.max_pending:
                self.stats["forward_busy"] += 1
                data = self.resolver.servfail(res)
            else:
                self._pending += 1
                try:
                    data = await self._forward(res)
                finally:
                    self._pending -= 1
        elif isinstance(res, Answer):
            data = res.data
        else:
            return False  # dropped (malformed, rate limited): close the connection
        self._count(data)
        writer.write(len(data).to_bytes(2, "big") + data)
        await asyncio.wait_for(writer.drain(), self.tcp_idle)
        return True
