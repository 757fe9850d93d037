"""The asyncio DNS server on real loopback sockets (127.0.0.x, high ports), with dnspython as
the client and a tiny dnslib stub as the upstream resolver."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest
from dnslib import QTYPE, RR, TXT, A, DNSRecord

from sleeve.dns.records import Records
from sleeve.dns.resolver import Resolver, ResolverConfig
from sleeve.dns.server import (
    DnsServer,
    is_self,
    parse_listen,
    read_resolv_conf,
    upstreams_from,
)

HOST, UP_HOST = "127.0.0.53", "127.0.0.54"  # no port 53: the ports are picked by the kernel
TIMEOUT = 3.0


# -- the stub upstream -----------------------------------------------------------------------
def stub_answer(data: bytes) -> bytes:
    q = DNSRecord.parse(data)
    r = q.reply()
    name = str(q.q.qname).lower()
    if name == "example.com.":
        r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("203.0.113.7"), ttl=60))
    elif name == "big.example.":
        for i in range(8):
            r.add_answer(RR(q.q.qname, QTYPE.TXT, rdata=TXT("y" * 200 + str(i)), ttl=60))
    return bytes(r.pack())


class StubUdp(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.tr = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        out = stub_answer(data)
        if len(out) > 512:  # a plain old server: no EDNS, TC over UDP
            r = DNSRecord.parse(out)
            r.rr = []
            r.header.tc = 1
            out = bytes(r.pack())
        self.tr.sendto(out, addr)


async def stub_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, OSError):
        while True:
            n = int.from_bytes(await reader.readexactly(2), "big")
            out = stub_answer(await reader.readexactly(n))
            writer.write(len(out).to_bytes(2, "big") + out)
            await writer.drain()
    writer.close()


async def start_stub(port: int = 0) -> tuple[Any, asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    tr, _ = await loop.create_datagram_endpoint(StubUdp, local_addr=(UP_HOST, port))
    port = tr.get_extra_info("sockname")[1]
    srv = await asyncio.start_server(stub_tcp, UP_HOST, port)
    return tr, srv, port


# -- the server under test ---------------------------------------------------------------------
def run(body: Callable[[DnsServer, int], Awaitable[None]], upstream: bool = True,
        **kw: Any) -> None:
    async def main() -> None:
        tr, srv, up_port = await start_stub()
        recs = Records(b"A" * 8)
        for a in ("198.19.0.1", "198.19.0.2", "198.19.0.3"):
            recs.add("web", a, "", 0.0)
        for i in range(60):
            recs.add("many", f"198.19.1.{i + 1}", "", 0.0)
        res = Resolver(recs, lambda ip: ipaddress.ip_address(ip).is_loopback,
                       ResolverConfig(rate=0))
        ups = [(UP_HOST, up_port)] if upstream else []
        server = DnsServer(res, [(HOST, 0)], ups, upstream_timeout=0.5, **kw)
        await server.start()
        try:
            await body(server, up_port)
        finally:
            await server.close()
            tr.close()
            srv.close()

    asyncio.run(asyncio.wait_for(main(), 30))


async def udp(server: DnsServer, name: str, qtype: str = "A", **kw: Any) -> dns.message.Message:
    q = dns.message.make_query(name, qtype, **kw)
    return await dns.asyncquery.udp(q, HOST, port=server.bound[0][1], timeout=TIMEOUT)


async def tcp(server: DnsServer, name: str, qtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, qtype)
    return await dns.asyncquery.tcp(q, HOST, port=server.bound[0][1], timeout=TIMEOUT)


def addrs(m: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in m.answer for rd in rrset)


def test_udp_and_tcp_answers_from_the_table() -> None:
    async def body(s: DnsServer, _: int) -> None:
        want = ["198.19.0.1", "198.19.0.2", "198.19.0.3"]
        assert addrs(await udp(s, "web.sleeve.local.")) == want
        assert addrs(await tcp(s, "WEB.sleeve.local.")) == want
        assert (await udp(s, "nope.sleeve.local.")).rcode() == dns.rcode.NXDOMAIN
        assert s.stats["udp_queries"] == 2 and s.stats["tcp_queries"] == 1

    run(body)


def test_over_512_truncated_over_udp_complete_over_tcp() -> None:
    async def body(s: DnsServer, _: int) -> None:
        m = await udp(s, "many.sleeve.local.")
        assert m.flags & dns.flags.TC and not m.answer
        assert len(addrs(await tcp(s, "many.sleeve.local."))) == 60
        m = await udp(s, "many.sleeve.local.", use_edns=0, payload=1232)
        assert not m.flags & dns.flags.TC and len(addrs(m)) == 60

    run(body)


def test_forwarding_udp_tcp_and_truncated_upstream() -> None:
    async def body(s: DnsServer, _: int) -> None:
        assert addrs(await udp(s, "example.com.")) == ["203.0.113.7"]
        assert addrs(await tcp(s, "example.com.")) == ["203.0.113.7"]
        m = await udp(s, "big.example.", "TXT")  # the stub truncates over UDP: passed on
        assert m.flags & dns.flags.TC
        m = await tcp(s, "big.example.", "TXT")  # complete over TCP (TCP upstream too)
        assert len(m.answer[0]) == 8
        assert s.stats["forward_answered"] == 4

    run(body)


def test_servfail_when_upstream_down_or_silent() -> None:
    async def body(s: DnsServer, up_port: int) -> None:
        # nothing listens there: ICMP port unreachable, then SERVFAIL
        s.upstreams = [(UP_HOST, up_port + 1 if up_port < 65535 else up_port - 1)]
        assert (await udp(s, "example.com.")).rcode() == dns.rcode.SERVFAIL
        assert (await tcp(s, "example.com.")).rcode() == dns.rcode.SERVFAIL
        # a silent upstream: the per-upstream timeout, then SERVFAIL
        loop = asyncio.get_running_loop()
        silent, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(UP_HOST, 0))
        s.upstreams = [(UP_HOST, silent.get_extra_info("sockname")[1])]
        t0 = loop.time()
        assert (await udp(s, "example.com.")).rcode() == dns.rcode.SERVFAIL
        assert 0.4 <= loop.time() - t0 < 2.0
        # a dead one first, then the working stub: the next upstream answers
        s.upstreams.append((UP_HOST, up_port))
        assert addrs(await udp(s, "example.com.")) == ["203.0.113.7"]
        silent.close()
        assert sum(s.upstream_failures.values()) == 4

    run(body)


def test_no_upstream_servfail() -> None:
    async def body(s: DnsServer, _: int) -> None:
        assert (await udp(s, "example.com.")).rcode() == dns.rcode.SERVFAIL

    run(body, upstream=False)


def test_never_forwards_to_itself() -> None:
    async def main() -> None:
        res = Resolver(Records(b"A" * 8), lambda ip: True)
        s = DnsServer(res, [(HOST, 0)], [("127.0.0.1", 53)])
        await s.start()
        port = s.bound[0][1]
        await s.close()
        s = DnsServer(res, [(HOST, port)], [(HOST, port), ("::ffff:" + HOST, port),
                                            ("127.0.0.1", 53)])
        await s.start()
        try:
            assert s.upstreams == [("127.0.0.1", 53)]
            assert s.stats["upstreams_dropped_as_self"] == 2
        finally:
            await s.close()

    asyncio.run(main())


async def raw_tcp(s: DnsServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, s.bound[0][1])


def test_tcp_bounds_oversize_idle_and_connection_limit() -> None:
    async def body(s: DnsServer, _: int) -> None:
        r, w = await raw_tcp(s)
        w.write((5000).to_bytes(2, "big"))  # more than max_tcp_query
        assert await asyncio.wait_for(r.read(), TIMEOUT) == b""  # closed
        assert s.stats["tcp_oversize"] == 1
        r, w = await raw_tcp(s)  # idle: closed after tcp_idle
        assert await asyncio.wait_for(r.read(), TIMEOUT) == b""
        conns = [await raw_tcp(s) for _ in range(2)]
        await asyncio.sleep(0.05)
        r, w = await raw_tcp(s)  # the third is over the limit
        assert await asyncio.wait_for(r.read(), TIMEOUT) == b""
        assert s.stats["tcp_rejected"] == 1
        for _, cw in conns:
            cw.close()
        await asyncio.sleep(0.1)  # the server notices they closed
        # pipelined queries on one connection are answered in order
        r, w = await raw_tcp(s)
        qs = [dns.message.make_query(n, "A") for n in ("web.sleeve.local.", "example.com.")]
        for q in qs:
            wire = q.to_wire()
            w.write(len(wire).to_bytes(2, "big") + wire)
        for q in qs:
            n = int.from_bytes(await r.readexactly(2), "big")
            assert dns.message.from_wire(await r.readexactly(n)).id == q.id
        w.close()

    run(body, tcp_idle=0.3, max_tcp_conns=2)


def test_close_is_clean_with_forwards_in_flight() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        silent, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(UP_HOST, 0))
        res = Resolver(Records(b"A" * 8), lambda ip: True)
        s = DnsServer(res, [(HOST, 0)], [(UP_HOST, silent.get_extra_info("sockname")[1])],
                      upstream_timeout=10)
        await s.start()
        q = dns.message.make_query("example.com.", "A")
        task = asyncio.create_task(dns.asyncquery.udp(q, HOST, port=s.bound[0][1], timeout=1))
        await asyncio.sleep(0.1)
        assert s.status()["pending_forwards"] == 1
        await s.close()
        with pytest.raises(dns.exception.Timeout):
            await task
        silent.close()

    asyncio.run(main())


# -- configuration helpers ---------------------------------------------------------------------
def test_parse_listen() -> None:
    assert parse_listen("198.19.0.1") == ("198.19.0.1", 53)
    assert parse_listen("198.19.0.1:5353") == ("198.19.0.1", 5353)
    assert parse_listen("[fd00::1]:5353") == ("fd00::1", 5353)
    assert parse_listen("fd00::1") == ("fd00::1", 53)
    for bad in ("web:53", "1.2.3.4:99999", "[fd00::1", "1.2.3.4:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_resolv_conf_and_self_filter() -> None:
    text = """# comment
nameserver 127.0.0.53
nameserver 10.0.0.2 ; trailing
nameserver fe80::1%eth0
nameserver not-an-ip
search example.com
nameserver 0.0.0.0
nameserver ::ffff:198.19.0.1
"""
    ns = read_resolv_conf(text)
    assert ns == ["127.0.0.53", "10.0.0.2", "fe80::1", "0.0.0.0", "::ffff:c613:1"]
    # listening on the overlay address only: loopback resolvers are not us
    assert upstreams_from(ns, [("198.19.0.1", 53)]) == [
        ("127.0.0.53", 53), ("10.0.0.2", 53), ("fe80::1", 53), ("0.0.0.0", 53)]
    # a wildcard listener on 53: every loopback alias and "this host" is us
    assert upstreams_from(ns, [("0.0.0.0", 53)], local_addresses=["198.19.0.1"]) == [
        ("10.0.0.2", 53), ("fe80::1", 53)]
    assert is_self(("0.0.0.0", 53), [("127.0.0.1", 53)])
    assert not is_self(("127.0.0.1", 53), [("127.0.0.1", 5353)])


def test_pending_forwards_are_bounded() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        silent, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(UP_HOST, 0))
        res = Resolver(Records(b"A" * 8), lambda ip: True, ResolverConfig(rate=0))
        s = DnsServer(res, [(HOST, 0)], [(UP_HOST, silent.get_extra_info("sockname")[1])],
                      upstream_timeout=0.3, max_pending=2)
        await s.start()
        client, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=(HOST, s.bound[0][1]))
        for i in range(5):  # all in one loop turn: the bound holds before any task runs
            client.sendto(dns.message.make_query(f"n{i}.example.", "A").to_wire())
        await asyncio.sleep(0.1)
        assert s.stats["forward_busy"] == 3 and s.status()["pending_forwards"] == 2
        await asyncio.sleep(0.5)
        assert s.status()["pending_forwards"] == 0
        client.close()
        await s.close()
        silent.close()

    asyncio.run(main())
