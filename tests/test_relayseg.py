"""Offloaded super-frames through a relay (``forward.relayseg``, issue 23).

Unit level: the relayed pieces parse, carry the source's proof per piece, and nothing a
relay can do to them (tamper, splice another source's pieces in, replay) gets a piece
into the destination's sets. In one process: a chain A - R - C with TAP-like ports;
A's TCP super-frames reach C whole, as one write, after C told A it takes them, and R
passes the pieces on without cutting or re-encoding them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import pathlib
import tempfile
import time
from collections.abc import AsyncIterator

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from sleeve.capture.memory import MemoryPort
from sleeve.config import Config, Target
from sleeve.crypto.noise import KeyPair
from sleeve.crypto.origin import PieceMac
from sleeve.forward import relayseg, superframe
from sleeve.node import Node
from sleeve.proto import datagram as dg
from sleeve.proto import vnet
from sleeve.proto.stats import Counters
from tests.test_mesh_inproc import knows_all, mac, routes_complete
from tests.test_node_inproc import BCAST, PSK, frame, wait_for
from tests.test_origin import Mesh3
from tests.test_superframe import super_frame

MAX_BODY = 1472 - dg.HEADER_LEN - dg.TAG_LEN
MSS = 1314  # what TCP sends through a relay clamped to relayed_mtu(1472), with timestamps


def relayable(payload_len: int, dst: bytes | None = None, src: bytes | None = None) -> bytes:
    """``super_frame`` with the gso_size of TCP clamped for a relayed path."""
    sf = super_frame(payload_len, *(() if dst is None or src is None else (dst, src)))
    return vnet.HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 66, MSS, 34, 16) + sf[vnet.HDR_LEN:]


def _pieces(m: Mesh3, src: str, dst: str, raw: bytes, set_id: int = 7) -> list[dg.Record]:
    recs = relayseg.cut(raw, set_id, MAX_BODY, m.auth[src], m.ids[src], m.ids[dst])
    assert recs is not None
    assert all(len(r) <= MAX_BODY for r in recs)
    out = []
    for r in recs:
        (rec,) = dg.iter_records(r)
        out.append(rec)
    return out


def test_pieces_are_relayed_records_each_with_the_sources_proof() -> None:
    m = Mesh3()
    a, c = m.ids["a"], m.ids["c"]
    raw = relayable(20000)
    recs = _pieces(m, "a", "c", raw)
    assert len(recs) == -(-20000 // MSS)
    assert max(len(r.payload) for r in recs) + relayseg.EXTRA + dg.REC_LEN == MAX_BODY
    sets = superframe.SegmentSets()
    writes: list[superframe.Write] = []
    for rec in recs:
        assert (rec.kind, rec.src, rec.dst, rec.hops, rec.bcast) == (
            superframe.KIND_VNET_SEG, a, c, dg.MAX_HOPS, False)
        assert rec.auth is not None and len(rec.auth) == dg.AUTH_MAC_LEN
        assert m.auth["c"].check_piece(a, rec.auth, rec.payload) is None
        writes += sets.add(rec.payload, 0.0)
    assert writes == [(raw[:vnet.HDR_LEN], raw[vnet.HDR_LEN:])]  # the super-frame, whole


def test_a_relay_cannot_tamper_splice_or_replay_pieces() -> None:
    m = Mesh3()
    a, c, evil = m.ids["a"], m.ids["c"], m.ids["evil"]
    recs = _pieces(m, "a", "c", relayable(5000))
    first = recs[0]
    # one payload byte changed (here: the set id, so it would join another set)
    p = bytearray(first.payload)
    p[3] ^= 1
    check = m.auth["c"].check_piece
    assert first.auth is not None
    assert check(a, first.auth, bytes(p)) == "origin_forged"
    # EVIL's own pieces under A's name, or A's proof on EVIL's piece
    theirs = _pieces(m, "evil", "c", relayable(4000), set_id=7)[0]
    assert theirs.auth is not None
    assert check(a, theirs.auth, theirs.payload) == "origin_forged"
    assert check(a, first.auth, theirs.payload) == "origin_forged"
    # another counter (a relay swapping the proofs of two pieces)
    assert check(a, recs[1].auth or b"", first.payload) == "origin_forged"
    # a piece's proof does not pass as an ordinary frame's, nor a frame's as a piece's
    as_frame = dg.Record(dg.KIND_FRAME, a, c, first.hops, first.payload, False, first.auth)
    assert m.auth["c"].check(a, as_frame) == "origin_forged"
    frame_auth = m.auth["a"].seal(c, superframe.KIND_VNET_SEG, first.payload)
    assert frame_auth is not None and check(a, frame_auth, first.payload) == "origin_forged"
    # accepted once; the same piece again is a replay
    assert check(a, first.auth, first.payload) is None
    assert check(a, first.auth, first.payload) == "origin_replay"
    # pieces for C do not prove anything to EVIL (another key), nor a short proof
    assert m.auth["evil"].check_piece(a, recs[1].auth or b"", recs[1].payload) \
        == "origin_forged"
    assert check(a, first.auth[:20], first.payload) == "origin_unauthenticated"
    assert evil != c


def test_cut_gives_up_where_ordinary_frames_must_go() -> None:
    m = Mesh3()
    a, c = m.ids["a"], m.ids["c"]
    # a piece that does not fit once the ids and proof are added: the direct MSS (1348)
    assert superframe.cut(super_frame(20000), 1, MAX_BODY) is not None
    assert relayseg.cut(super_frame(20000), 1, MAX_BODY, m.auth["a"], a, c) is None
    # not a super-frame: those take the per-frame path
    one = super_frame(500)
    small = vnet.HDR.pack(vnet.F_NEEDS_CSUM, 0, 0, 0, 34, 16) + one[vnet.HDR_LEN:]
    assert relayseg.cut(small, 1, MAX_BODY, m.auth["a"], a, c) is None
    # no key for the destination yet
    assert relayseg.cut(relayable(5000), 1, MAX_BODY, m.auth["a"], a, b"\x99" * 8) is None


# ---------------------------------------------------------------- three nodes, one process
def _make(peers: tuple[Target, ...], kp: KeyPair | None = None) -> tuple[Node, MemoryPort]:
    port = MemoryPort(capacity=8192, vnet=True)
    cfg = Config(psk=PSK, port=0, listen="127.0.0.1", peers=peers, http=None, offload=True,
                 discovery=False,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))
    return Node(cfg, port, static=kp or KeyPair.generate()), port


Chain = tuple[Node, MemoryPort, Node, MemoryPort, Node, MemoryPort]


@contextlib.asynccontextmanager
async def chain() -> AsyncIterator[Chain]:
    """A - R - C running, routes complete: (a, port, r, port, c, port); stopped after."""
    r, pr = _make(())
    tr = asyncio.create_task(r.run())
    await wait_for(lambda: r.udp is not None and r.port is not None)
    a, pa = _make((Target("127.0.0.1", r.udp_port),))
    c, pc = _make((Target("127.0.0.1", r.udp_port),))
    ta, tc = asyncio.create_task(a.run()), asyncio.create_task(c.run())
    nodes = [(r, pr), (a, pa), (c, pc)]
    try:
        await wait_for(lambda: knows_all(nodes) and routes_complete(nodes), 15)
        yield a, pa, r, pr, c, pc
    finally:
        for n in (a, c, r):
            n.stop()
        await asyncio.wait_for(asyncio.gather(ta, tc, tr), 10)


def test_super_frames_cross_a_relay_whole() -> None:
    async def run() -> None:
        async with chain() as (a, pa, r, _pr, c, pc):
            assert a.mesh.routes.next_hop(c.id) == r.id and c.id not in a.links
            z = vnet.ZERO_HDR
            pc.inject(z + frame(BCAST, mac(3), b"arp from c"))  # a learns C's MAC
            await wait_for(lambda: len(pa.delivered) == 1)
            pa.inject(z + frame(mac(3), mac(1), b"hello c"))  # relayed: c answers with caps
            await wait_for(lambda: a.egress.caps.takes_sets(c.id, time.monotonic(), r.id), 5)
            la = a.links[r.id]
            base = len(pc.delivered)
            sent = [relayable(n, dst=mac(3), src=mac(1)) for n in (20000, 64000, 3000)]
            for s in sent:
                pa.inject(s)
            await wait_for(lambda: len(pc.delivered) == base + 3)
            assert list(pc.delivered)[base:] == sent  # each written once, as A's kernel made it
            assert la.stats["tx_relayed_superframes"] == 3 and a.stats["tx_segmented"] == 0
            pieces = sum(-(-n // MSS) for n in (20000, 64000, 3000))
            assert r.stats["relayed_segments"] == pieces
            bad = {k: v for k, v in c.drops.snapshot().items() if k != "unknown_session"}
            assert bad == {}, bad

    asyncio.run(run())


def test_piece_mac_is_chacha20_poly1305_over_the_piece_under_a_key_of_its_own() -> None:
    k = bytes(range(32))
    mac = PieceMac(k)
    key = hashlib.blake2b(b"sleeve-relay-piece-key-v1", key=k, digest_size=32).digest()
    assert key != k
    ctr = (7).to_bytes(8, "big")
    tag = mac.tag(ctr, b"piece")
    assert tag == ChaCha20Poly1305(key).encrypt(bytes(4) + ctr, b"", b"piece")
    assert mac.ok(ctr, b"piece", tag)
    assert not mac.ok(ctr, b"piecf", tag) and not mac.ok((8).to_bytes(8, "big"), b"piece", tag)
    assert "00" not in repr(mac)


def test_two_sources_sets_never_mix_and_their_drops_are_counted() -> None:
    m = Mesh3()
    a, evil = m.ids["a"], m.ids["evil"]
    mine, theirs = relayable(5000), relayable(4000)
    rs = relayseg.RelayedSets()
    from_a = _pieces(m, "a", "c", mine, set_id=3)
    from_evil = _pieces(m, "evil", "c", theirs, set_id=3)  # the same set id
    got: list[superframe.Write] = []
    assert len(from_a) == len(from_evil) == 4
    for ra, re in zip(from_a[:-1], from_evil[:-1], strict=True):  # interleaved
        got += rs.for_source(a, 0.0).add(ra.payload, 0.0)
        got += rs.for_source(evil, 0.0).add(re.payload, 0.0)
    assert got == []
    got += rs.for_source(evil, 0.0).add(from_evil[-1].payload, 0.0)
    got += rs.for_source(a, 0.0).add(from_a[-1].payload, 0.0)
    assert got == [(theirs[:10], theirs[10:]), (mine[:10], mine[10:])]
    drops = Counters()
    sets = rs.for_source(a, 0.0)
    sets.add(b"short", 0.0)  # a proven but malformed piece
    rs.move_drops(sets, drops)
    assert drops.snapshot() == {"bad_segment": 1} and sets.drops == {}
