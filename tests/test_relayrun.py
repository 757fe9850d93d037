"""One read's relayed records in runs (``forward.relayrun``, issue 23).

A relay passes records on with the next hop looked up once per destination and its
counters added once per read; a destination proves the pieces of relayed super-frames
(``OriginAuth.check_pieces``: MAC, then replay window) before any of them joins a set,
keeps a run to one source and one link, and joins what it gathered before anything
else of the read.
"""

from __future__ import annotations

from typing import Any, cast

from sleeve.forward import relayrun, relayseg, superframe
from sleeve.forward.egress import Egress
from sleeve.links.link import Link
from sleeve.proto import datagram as dg
from sleeve.proto.stats import Counters
from tests.test_origin import Mesh3
from tests.test_relayseg import MAX_BODY, relayable

HEAD_AUTH = dg.REC_LEN + 2 * dg.PEER_ID_LEN  # where a relayed record's auth begins


class _Link:
    def __init__(self, peer: bytes) -> None:
        self.peer = peer


class _Egress:
    """What a run uses of ``Egress``: the next hop (lookups counted) and the queue."""

    def __init__(self, hops: dict[bytes, Any]) -> None:
        self.hops = hops
        self.lookups = 0
        self.queued: list[tuple[Any, bytes]] = []

    def towards(self, dst: bytes) -> Any:
        self.lookups += 1
        return self.hops.get(dst)

    def queue(self, link: Any, rec: bytes) -> None:
        self.queued.append((link, rec))


def _pieces(m: Mesh3, src: str, dst: str, size: int, set_id: int) -> list[bytes]:
    recs = relayseg.cut(relayable(size), set_id, MAX_BODY, m.auth[src], m.ids[src],
                        m.ids[dst])
    assert recs is not None
    return recs


def _run(m: Mesh3, me: str, egress: _Egress,
         ) -> tuple[relayrun.RelayedRun, Counters, Counters, list[tuple[Any, bytes, bytes]]]:
    drops, stats = Counters(), Counters()
    joined: list[tuple[Any, bytes, bytes]] = []  # (link, source, piece payload)

    def join(link: Link, src: bytes, payloads: list[memoryview], now: float) -> None:
        joined.extend((link, src, bytes(p)) for p in payloads)

    run = relayrun.RelayedRun(m.ids[me], cast(Egress, egress), m.auth[me], drops, stats, join)
    return run, drops, stats, joined


def test_check_pieces_proves_each_piece_before_its_window_in_order() -> None:
    m = Mesh3()
    a = m.ids["a"]
    recs = _pieces(m, "a", "c", 6000, set_id=3)
    forged = bytearray(recs[1])
    forged[-1] ^= 1  # the last payload byte
    evils = _pieces(m, "evil", "c", 2000, set_id=3)  # EVIL's piece under A's name
    bodies = [recs[0], bytes(forged), recs[2], recs[0], evils[0], recs[3]]
    good, bad = m.auth["c"].check_pieces(a, bodies, HEAD_AUTH)
    assert [bytes(p) for p in good] == [r[HEAD_AUTH + dg.AUTH_MAC_LEN:]
                                        for r in (recs[0], recs[2], recs[3])]
    assert bad == ["origin_forged", "origin_replay", "origin_forged"]
    # the forged copy did not take its counter: the real piece still passes, once
    good, bad = m.auth["c"].check_pieces(a, [recs[1], recs[1]], HEAD_AUTH)
    assert len(good) == 1 and bad == ["origin_replay"]
    # an unknown source: every piece counted, none kept
    good, bad = m.auth["c"].check_pieces(b"\x99" * 8, recs, HEAD_AUTH)
    assert good == [] and bad == ["origin_unknown_peer"] * len(recs)


def test_a_relay_looks_the_next_hop_up_once_per_destination_and_counts_per_read() -> None:
    m = Mesh3()
    to_c = _pieces(m, "a", "c", 20000, set_id=1)
    to_a = _pieces(m, "c", "a", 3000, set_id=1)
    hop_c, hop_a = _Link(m.ids["c"]), _Link(m.ids["a"])
    eg = _Egress({m.ids["c"]: hop_c, m.ids["a"]: hop_a})
    run, drops, stats, joined = _run(m, "evil", eg)  # "evil" is the relay here
    from_a = cast(Link, _Link(m.ids["a"]))
    for body in to_c:
        assert relayrun.one_relayed(body) and run.take(from_a, body, 0.0)
    for body in to_a:
        assert run.take(cast(Link, hop_c), body, 0.0)
    assert eg.lookups == 2  # not one per record
    assert stats.snapshot() == {}  # counted at the end of the read
    run.end(0.0)
    assert stats["relayed_frames"] == stats["relayed_segments"] == len(to_c) + len(to_a)
    assert [link for link, _ in eg.queued] == [hop_c] * len(to_c) + [hop_a] * len(to_a)
    for (_, out), body in zip(eg.queued, to_c + to_a, strict=True):  # hop limit - 1 only
        assert out[3] == body[3] - relayrun.HOP and out[:3] + out[4:] == body[:3] + body[4:]
    assert joined == [] and drops.snapshot() == {}
    # a spent hop limit is dropped, counted; no route is counted
    spent = bytes((to_c[0][0], to_c[0][1], to_c[0][2], to_c[0][3] & 0x0F)) + to_c[0][4:]
    assert run.take(from_a, spent, 0.0)
    eg.hops.clear()
    run = _run(m, "evil", eg)[0]
    run._drops = drops
    assert run.take(from_a, to_c[1], 0.0)
    assert drops.snapshot() == {"hop_limit": 1, "no_route": 1}


def test_a_destination_joins_proven_pieces_by_source_and_link_before_anything_else() -> None:
    m = Mesh3()
    a, evil = m.ids["a"], m.ids["evil"]
    mine = _pieces(m, "a", "c", 4000, set_id=5)
    theirs = _pieces(m, "evil", "c", 4000, set_id=5)
    relay = cast(Link, _Link(b"\x42" * 8))
    other = cast(Link, _Link(b"\x43" * 8))
    run, drops, _stats, joined = _run(m, "c", _Egress({}))
    payload = HEAD_AUTH + dg.AUTH_MAC_LEN
    for body in mine[:2]:
        assert run.take(relay, body, 0.0)
    assert joined == []  # gathered, not yet proven nor joined
    assert run.take(relay, theirs[0], 0.0)  # another source ends the run: A's joined first
    assert joined == [(relay, a, mine[0][payload:]), (relay, a, mine[1][payload:])]
    assert run.take(other, theirs[1], 0.0)  # another link ends it too
    assert joined[2:] == [(relay, evil, theirs[0][payload:])]
    run.join(0.0)  # what the read does before a datagram the run does not take
    assert joined[3:] == [(other, evil, theirs[1][payload:])]
    forged = bytearray(mine[2])
    forged[payload] ^= 1
    assert run.take(relay, bytes(forged), 0.0) and run.take(relay, mine[3], 0.0)
    run.end(0.0)
    assert joined[4:] == [(relay, a, mine[3][payload:])]
    assert drops.snapshot() == {"origin_forged": 1}
    # not taken: what the sending hop says it made itself, a caps record for us
    assert not run.take(cast(Link, _Link(a)), mine[0], 0.0)
    caps = relayseg.cut(relayable(3000), 9, MAX_BODY, m.auth["a"], a, m.ids["c"])
    assert caps is not None
    as_caps = caps[0][:2] + bytes((relayseg.KIND_CAPS,)) + caps[0][3:]
    assert not run.take(relay, as_caps, 0.0)
    assert mine[0][2] == superframe.KIND_VNET_SEG


def test_a_new_read_looks_the_next_hop_up_again() -> None:
    m = Mesh3()
    to_c = _pieces(m, "a", "c", 3000, set_id=1)
    first, second = _Link(m.ids["c"]), _Link(b"\x44" * 8)
    eg = _Egress({m.ids["c"]: first})
    run, _drops, stats, _joined = _run(m, "evil", eg)
    from_a = cast(Link, _Link(m.ids["a"]))
    assert run.take(from_a, to_c[0], 0.0)
    run.end(0.0)
    eg.hops[m.ids["c"]] = second  # the route changed between two reads
    run.begin()
    assert run.take(from_a, to_c[1], 0.0)
    run.end(0.0)
    assert [link for link, _ in eg.queued] == [first, second]
    assert stats["relayed_segments"] == 2  # each read's count added once


def test_a_read_that_raises_still_ends_its_run() -> None:
    """Review of the merge: a datagram that raises later in a read (the underlay counts
    it as internal_error) must not lose the run's count of what it already forwarded,
    nor its gathered pieces (the next read's begin() would clear them)."""
    import pytest

    from sleeve.forward.ingress import Ingress

    m = Mesh3()
    recs = _pieces(m, "a", "c", 6000, set_id=2)
    ended: list[float] = []

    class Run:
        pieces: list[bytes] = []

        def take(self, link: Any, body: bytes, now: float) -> bool:
            return True

        def end(self, now: float) -> None:
            ended.append(now)

    ing = object.__new__(Ingress)
    ing.me = m.ids["evil"]
    ing._relayed_run = Run  # type: ignore[method-assign,assignment]
    ing._heard = lambda *a: None  # type: ignore[method-assign]
    link = _Link(m.ids["a"])
    bodies = iter(recs[:2])

    def open_(d: bytes) -> tuple[Any, bytes]:
        body = next(bodies, None)
        if body is None:
            raise RuntimeError("a later datagram's bug")
        return link, body

    ing._open = open_  # type: ignore[method-assign,assignment]
    with pytest.raises(RuntimeError):
        ing.on_run(b"x" * 30, 10, ("198.18.0.1", 6783))
    assert len(ended) == 1
