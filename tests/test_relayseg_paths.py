"""Relayed segment sets on real paths (``forward.relayseg``, review of issue 23).

Caps prove the way there, not just the way back (routes are chosen at each end on its
own, so they can be asymmetric); the ICMP a relay answers for relayed frames and pieces
lowers TCP's MSS to what still goes as whole segment sets; the per-source sets are kept
least recently used first and write out what arrived when they go.
"""

from __future__ import annotations

import asyncio
import time

from scapy.layers.inet import ICMP, IP, Ether

from sleeve.capture.memory import MemoryPort
from sleeve.config import Target
from sleeve.crypto.keys import Signer
from sleeve.crypto.noise import KeyPair
from sleeve.forward import relayrun, relayseg, superframe
from sleeve.forward.egress import relayed_mtu
from sleeve.forward.oversize import shrink
from sleeve.node import Node
from sleeve.proto import datagram as dg
from sleeve.proto import vnet
from sleeve.proto.routes import unicast_next_hops
from sleeve.proto.stats import Counters
from tests.test_mesh_inproc import knows_all, mac, routes_complete
from tests.test_node_inproc import BCAST, frame, wait_for
from tests.test_origin import Mesh3
from tests.test_oversize import MACS, ipv4
from tests.test_relayseg import MAX_BODY, _make, _pieces, chain, relayable
from tests.test_superframe import super_frame

R2_HOP, R4_HOP = b"\x02" * 8, b"\x04" * 8


# ------------------------------------------------------------ 1. caps prove the way there
def test_caps_need_an_echo_of_ours_through_the_hop_we_use_now() -> None:
    a, c = relayseg.PeerCaps(), relayseg.PeerCaps()
    pa, pc = b"A" * 8, b"C" * 8
    # C heard nothing of A (A's record died at an old relay on A's way): no echo, ASK
    payload, _rid = c.record(pa, R4_HOP, 0.0)
    got = relayseg.parse_caps(payload)
    assert got is not None and got[2] == 0 and got[0] & relayseg.CAP_ASK
    a.learn(pc, got[0], got[1], got[2], 0.0)
    assert not a.takes_sets(pc, 0.1, R2_HOP)  # C takes sets, but A's way is unproven
    # A's record through R2 arrives: C echoes its id, and A may send sets through R2
    pay_a, rid_a = a.record(pc, R2_HOP, 1.0)
    a.told(pc, rid_a, R2_HOP, 1.0)
    ga = relayseg.parse_caps(pay_a)
    assert ga is not None and ga[0] & relayseg.CAP_ASK  # A has no proof yet: asks
    c.learn(pa, ga[0], ga[1], ga[2], 1.0)
    pay_c, rid_c = c.record(pa, R4_HOP, 1.1)
    c.told(pa, rid_c, R4_HOP, 1.1)
    gc = relayseg.parse_caps(pay_c)
    assert gc is not None and gc[2] == rid_a
    a.learn(pc, gc[0], gc[1], gc[2], 1.2)
    assert a.takes_sets(pc, 1.3, R2_HOP)
    assert not a.takes_sets(pc, 1.3, R4_HOP)  # a new next hop must be proven anew
    assert not a.takes_sets(pc, 1.2 + relayseg.CAPS_TTL, R2_HOP)
    # and A's next record, through R2, no longer asks
    pay_a2, _ = a.record(pc, R2_HOP, 2.0)
    ga2 = relayseg.parse_caps(pay_a2)
    assert ga2 is not None and not ga2[0] & relayseg.CAP_ASK and ga2[2] == gc[1]
    assert relayseg.parse_caps(pay_a2[:8]) is None
    a.forget([pc])
    assert not a.takes_sets(pc, 1.3, R2_HOP)


def test_caps_are_due_every_so_often_at_once_when_asked_or_the_hop_changed() -> None:
    t = relayseg.PeerCaps()
    p = b"p" * 8
    assert t.due(p, 0.0, R2_HOP)
    # a record never sent (no key for p yet) is not noted: still due (review item 5)
    t.record(p, R2_HOP, 0.0)
    assert t.due(p, 0.0, R2_HOP) and not t.quiet(p, 0.0)
    t.told(p, 1, R2_HOP, 0.0)
    assert t.quiet(p, relayseg.ASK_GAP / 2) and not t.quiet(p, relayseg.ASK_GAP)
    assert not t.due(p, 2.0, R2_HOP) and t.due(p, 2.0, R4_HOP)  # a new hop: at once
    assert t.due(p, relayseg.CAPS_EVERY, R2_HOP)
    # p asks while we are quiet: answered with the next chance after ASK_GAP, once
    gap = relayseg.ASK_GAP
    t.learn(p, relayseg.CAP_SETS | relayseg.CAP_ASK, 7, 1, gap / 4)
    assert not t.due(p, gap / 2, R2_HOP) and t.due(p, 2.0, R2_HOP)
    t.told(p, 2, R2_HOP, 2.0)
    assert not t.due(p, 3.5, R2_HOP)  # its ask is older than our answer
    t.learn(p, relayseg.CAP_SETS, 8, 2, 3.0)  # p no longer asks
    assert not t.due(p, 3.5, R2_HOP)
    for i in range(relayseg.MAX_PEERS + 10):
        t.told(i.to_bytes(8, "big"), i + 2, R2_HOP, 3.0)
    assert len(t._told) == relayseg.MAX_PEERS and p not in t._told


class _OldRun(relayrun.RelayedRun):
    """A pre-relayseg router's fast path: relayed kinds 5 and 6 for others are dropped."""

    __slots__ = ("node",)

    def take(self, link, body, now):  # type: ignore[no-untyped-def]
        if body[2] != dg.KIND_FRAME and bytes(body[12:20]) != self.node.id:
            self.node.drops.inc("bad_offload_record" if body[2] == 5 else "unknown_record")
            return True
        return super().take(link, body, now)


def _make_old(node: Node) -> None:
    """What a pre-relayseg router does with relayed kinds 5 and 6 (38619e6 ingress)."""
    ing = node.ingress
    orig_relay = ing._relay

    def old_run() -> relayrun.RelayedRun:
        run = _OldRun(node.id, ing.egress, ing.origin, ing.drops, ing.stats, ing._join_proven)
        run.node = node
        return run

    def relay(rec, raw):  # type: ignore[no-untyped-def]
        if rec.kind != dg.KIND_FRAME:
            node.drops.inc("bad_offload_record" if rec.kind == 5 else "unknown_record")
            return
        orig_relay(rec, raw)

    ing._relayed_run = old_run  # type: ignore[method-assign]
    ing._relay = relay  # type: ignore[method-assign]


def test_an_old_relay_on_the_way_there_only_keeps_ordinary_frames() -> None:
    """A-{R1,R2}, R1-R4, R2-R3, {R3,R4}-C: data A->R2->R3->C, caps C->R4->R1->A; R2 is
    an old router. C's caps reach A, but A's never reach C: A must not send sets."""
    a_, r1_, r2_, r3_, r4_, c_ = (bytes([i]) * 8 for i in (9, 1, 2, 3, 4, 10))
    links = {a_: [r1_, r2_], r1_: [a_, r4_], r2_: [a_, r3_], r3_: [r2_, c_],
             r4_: [r1_, c_], c_: [r3_, r4_]}
    assert unicast_next_hops(a_, links)[c_] == r2_ and unicast_next_hops(c_, links)[a_] == r4_

    async def run() -> None:
        kps = sorted((KeyPair.generate() for _ in range(4)),
                     key=lambda k: Signer.from_static(k).peer_id)
        nodes: list[tuple[Node, MemoryPort]] = []
        tasks = []

        async def start(peers: tuple[int, ...], kp: KeyPair) -> tuple[Node, MemoryPort]:
            n, p = _make(tuple(Target("127.0.0.1", nodes[j][0].udp_port) for j in peers), kp)
            nodes.append((n, p))
            tasks.append(asyncio.create_task(n.run()))
            await wait_for(lambda: n.udp is not None and n.port is not None)
            return n, p

        try:
            await start((), kps[0])
            r2, _ = await start((), kps[1])
            await start((1,), kps[2])  # R3 - R2
            r4, _ = await start((0,), kps[3])  # R4 - R1
            a, pa = await start((0, 1), KeyPair.generate())
            c, pc = await start((2, 3), KeyPair.generate())
            await wait_for(lambda: knows_all(nodes) and routes_complete(nodes), 20)
            assert a.mesh.routes.next_hop(c.id) == r2.id
            assert c.mesh.routes.next_hop(a.id) == r4.id
            _make_old(r2)  # an old router on A's way to C only
            z = vnet.ZERO_HDR
            pc.inject(z + frame(BCAST, mac(3), b"arp from c"))
            await wait_for(lambda: len(pa.delivered) >= 1, 5)
            pa.inject(z + frame(mac(3), mac(1), b"hello c"))  # reaches C via old R2
            await wait_for(lambda: a.egress.caps._heard.get(c.id) is not None, 5)
            await asyncio.sleep(0.5)  # C's caps arrived at A; A's died at R2
            assert not a.egress.caps.takes_sets(c.id, time.monotonic(), r2.id)
            base = len(pc.delivered)
            sizes = (20000, 64000, 30000)
            for n in sizes:
                pa.inject(relayable(n, dst=mac(3), src=mac(1)))
            want = sum(-(-n // 1314) for n in sizes)  # cut into ordinary frames at A
            await wait_for(lambda: len(pc.delivered) - base >= want, 5)
            assert r2.drops["bad_offload_record"] == 0  # no piece was sent into R2
            assert r2.drops["unknown_record"] >= 1  # A's caps records died there
            assert a.stats["tx_segmented"] == 3
        finally:
            for n, _ in nodes:
                n.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)

    asyncio.run(run())


# ------------------------------------------------------------ 3. the relayed ICMP MTU
def test_the_icmp_mtu_for_relayed_frames_lets_tcp_go_as_whole_sets() -> None:
    d = 1472
    rec = dg.encode_record(dg.KIND_FRAME, ipv4(True, 1500), src=b"S" * 8, dst=b"D" * 8, hops=9,
                           auth=bytes(dg.AUTH_MAC_LEN))
    frags, reply, outcome = shrink(rec, d)
    assert outcome == "too_big_reply" and reply is not None and not frags
    icmp_mtu = Ether(reply)[ICMP].nexthopmtu
    assert icmp_mtu == relayed_mtu(d)
    gso = icmp_mtu - 40 - 12  # TCP after PMTUD from that ICMP, with timestamps
    raw = super_frame(20000)
    h = vnet.parse(raw)
    raw = vnet.HDR.pack(h.flags, h.gso_type, h.hdr_len, gso, h.csum_start, h.csum_offset) \
        + raw[vnet.HDR_LEN:]
    m = Mesh3()
    max_body = d - dg.HEADER_LEN - dg.TAG_LEN
    assert relayseg.cut(raw, 1, max_body, m.auth["a"], m.ids["a"], m.ids["c"]) is not None


# ------------------------------------------------------------ 2. a piece too big later on
def _df(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[vnet.HDR_LEN + 20] |= 0x40  # IPv4 DF, as TCP sends
    return bytes(b)


def test_a_piece_too_big_for_a_later_hop_gets_icmp_from_its_own_segment() -> None:
    m = Mesh3()
    raw = _df(relayable(5000))
    recs = relayseg.cut(raw, 1, MAX_BODY, m.auth["a"], m.ids["a"], m.ids["c"])
    assert recs is not None
    piece = recs[0]
    smaller = len(piece) + dg.HEADER_LEN + dg.TAG_LEN - 100  # the next hop's datagram
    frags, reply, outcome = shrink(piece, smaller)
    assert outcome == "piece_too_big_reply" and not frags and reply is not None
    icmp = Ether(reply)
    assert icmp[Ether].dst == Ether(raw[vnet.HDR_LEN:]).src  # back to the sender
    assert icmp[IP].dst == "198.19.0.1" and icmp[ICMP].type == 3 and icmp[ICMP].code == 4
    assert icmp[ICMP].nexthopmtu == relayed_mtu(smaller)
    quoted = icmp[ICMP].payload  # the one segment's header: its own length, not 5000's
    assert quoted.len == 20 + 32 + 1314
    # a direct piece, or one whose segment does not parse, still gets none
    direct = superframe.cut(raw, 1, MAX_BODY)
    assert direct is not None and shrink(direct[0], 600)[1:] == (None, "too_big")
    bad = bytearray(piece)
    bad[dg.REC_LEN + relayseg.EXTRA + relayseg.FRAG_LEN + 1] = 0x55  # bad gso type
    assert shrink(bytes(bad), smaller)[1:] == (None, "too_big")


# ------------------------------------------------------------ 4. RelayedSets eviction
def test_relayed_sets_keep_the_busiest_source_and_write_out_what_goes() -> None:
    m = Mesh3()
    a = m.ids["a"]
    rs = relayseg.RelayedSets()
    rs.for_source(a, 0.0)  # A first (oldest insertion)
    for i in range(relayseg.MAX_PEERS - 1):
        rs.for_source(i.to_bytes(8, "big"), 0.0)
    raw = relayable(5000)
    recs = _pieces(m, "a", "c", raw)
    sets = rs.for_source(a, 0.0)  # A is the busiest: now the most recently used
    for r in recs[:-1]:
        assert sets.add(r.payload, 0.0) == []
    rs.for_source(b"\xee" * 8, 0.0)  # one more source: source 0, not A, goes
    assert a in dict(rs.items()) and (0).to_bytes(8, "big") not in dict(rs.items())
    assert rs.evicted == [] and rs.drops == {}  # source 0 had nothing under way
    for i in range(1, relayseg.MAX_PEERS):  # all the others are used again: A goes
        rs.for_source(i.to_bytes(8, "big"), 0.0)
    rs.for_source(b"\xef" * 8, 0.0)
    assert a not in dict(rs.items())
    assert [src for src, _ in rs.evicted] == [a]  # what arrived of A's set, to be written
    (_src, (hdr, part)), = rs.evicted
    assert hdr[1] and part[66:] == raw[vnet.HDR_LEN + 66:][:len(part) - 66]  # pieces 0-2
    drops = Counters()
    out, pending = rs.expire(1.0, drops)
    assert [s for s, _ in out] == [a] and rs.evicted == [] and not pending
    assert drops["relayed_sets_evicted"] == 1
    assert rs.items() == []  # sources with no set under way are let go


def test_caps_and_sets_tables_are_bounded() -> None:
    t = relayseg.PeerCaps()
    for i in range(relayseg.MAX_PEERS + 10):
        t.learn(i.to_bytes(8, "big"), 1, 1, 0, 3.0)
    assert len(t._heard) == relayseg.MAX_PEERS
    rs = relayseg.RelayedSets()
    for i in range(relayseg.MAX_PEERS + 3):
        rs.for_source(i.to_bytes(8, "big"), 0.0)
    assert len(rs.items()) == relayseg.MAX_PEERS


def test_a_relay_carries_a_piece_too_big_and_tells_its_source_by_icmp() -> None:
    async def run() -> None:
        async with chain() as (a, pa, r, _pr, c, pc):
            pc.inject(vnet.ZERO_HDR + frame(BCAST, mac(3), b"arp from c"))  # A learns C's MAC
            await wait_for(lambda: len(pa.delivered) == 1)
            raw = _df(relayable(5000, dst=mac(3), src=mac(1)))
            recs = relayseg.cut(raw, 5, MAX_BODY, a.origin, a.id, c.id)
            assert recs is not None
            smaller = len(recs[0]) + dg.HEADER_LEN + dg.TAG_LEN - 100  # R's next hop
            lc = r.links[c.id]
            frags = r.egress._too_big(lc, recs[0], smaller,
                                      smaller - dg.HEADER_LEN - dg.TAG_LEN)
            assert len(frags) >= 2  # the piece still goes, in sleeve fragments
            assert lc.stats["piece_too_big_reply"] == 1
            r.egress.flush_touched()  # the ICMP, relayed to A as R's own proven record
            base = len(pa.delivered)
            await wait_for(lambda: len(pa.delivered) > base, 5)
            icmp = Ether(list(pa.delivered)[base][vnet.HDR_LEN:])
            assert icmp[ICMP].type == 3 and icmp[ICMP].nexthopmtu == relayed_mtu(smaller)
            assert icmp[IP].dst == "198.19.0.1" and bytes(icmp)[:6] == mac(1)
            assert not any(k.startswith("origin_") for k in a.drops.snapshot())

    asyncio.run(run())


def test_is_too_big_knows_icmp_too_big_and_nothing_else() -> None:
    from scapy.layers.inet6 import UDP, ICMPv6EchoRequest, IPv6

    from sleeve.proto.icmp import is_too_big, too_big_reply

    v4 = too_big_reply(ipv4(True, 1500), 1400)
    v6 = too_big_reply(bytes(Ether(**MACS) / IPv6(src="2001:2::1", dst="2001:2::2") / UDP()
                             / (b"y" * 1400)), 1300)
    assert v4 is not None and v6 is not None and is_too_big(v4) and is_too_big(v6)
    echo = bytes(Ether() / IP(src="198.19.0.1", dst="198.19.0.2") / ICMP())
    port = bytes(Ether() / IP(src="198.19.0.1", dst="198.19.0.2") / ICMP(type=3, code=3))
    echo6 = bytes(Ether() / IPv6(src="2001:2::1", dst="2001:2::2") / ICMPv6EchoRequest())
    assert not any(is_too_big(f) for f in (echo, port, echo6, ipv4(True, 100), v4[:20], b"",
                                           v6[:54]))


def test_a_new_source_past_the_bound_evicts_the_oldest_and_its_own_set_completes() -> None:
    async def run() -> None:
        async with chain() as (a, _pa, r, _pr, c, pc):
            now = time.monotonic()
            rs = c.ingress.relayed_sets
            m = Mesh3()
            old = _pieces(m, "a", "c", relayable(5000))
            for i in range(relayseg.MAX_PEERS):
                rs.for_source(i.to_bytes(8, "big"), now)
            assert rs.for_source((0).to_bytes(8, "big"), now).add(old[0].payload, now) == []
            for i in range(1, relayseg.MAX_PEERS):  # source 0 is the least recently used
                rs.for_source(i.to_bytes(8, "big"), now)
            raw = relayable(20000, dst=mac(3), src=mac(1))
            recs = relayseg.cut(raw, 9, MAX_BODY, a.origin, a.id, c.id)
            assert recs is not None
            base = len(pc.delivered)
            link = c.links[r.id]
            for rec in recs:
                (parsed,) = dg.iter_records(rec)
                c.ingress._join_relayed(link, a.id, parsed.payload, now)
            c.ingress.after_batch()
            assert list(pc.delivered)[base:] == [raw]  # A's set, whole, despite the eviction
            assert c.drops["relayed_sets_evicted"] == 1
            assert c.drops["no_route"] == 1  # source 0's piece, written out: nowhere to learn
            assert a.id in dict(rs.items())

    asyncio.run(run())
