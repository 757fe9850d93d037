"""The IPAM allocator on the in-process fabric: API, space requests, partitions, rmpeer,
leave, restart, and first-start agreement (consensus=N, seed=, observer)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from sleeve.gossip.fabric import Fabric
from sleeve.ipam.allocator import DEFAULT_RANGE, UNREACHABLE_WAIT, Allocator
from sleeve.ipam.consensus import Init, parse_init
from sleeve.ipam.sim import Sim, peer_id
from sleeve.ipam.validate import IpamError, parse_range
from sleeve.proto.gossip import GossipRefused

P = [peer_id(i) for i in range(1, 8)]


def seeded_sim(n: int, seeds: int = 1, alloc_range: str = "198.19.0.0/24") -> Sim:
    s = Sim(alloc_range=alloc_range)
    for p in P[:n]:
        s.add(p, Init("seed", seeds=tuple(P[:seeds])))
    s.run()
    return s


def addr(s: Sim, p: bytes, owner_id: str, subnet: str | None = None) -> str:
    op = s.peers[p].allocate(owner_id, subnet, s.now)
    s.run()
    assert op.done, op.waiting
    assert op.error is None, op.error
    return str(op.address)


# -- API ------------------------------------------------------------------------------
def test_same_id_same_address_and_release_frees() -> None:
    s = seeded_sim(1)
    a1 = addr(s, P[0], "c1")
    assert a1 == "198.19.0.1/24" and addr(s, P[0], "c1") == a1
    assert addr(s, P[0], "c2") == "198.19.0.2/24"
    assert s.peers[P[0]].release("c1", s.now) == 1
    assert addr(s, P[0], "c3") == a1
    assert s.peers[P[0]].release("nobody", s.now) == 0
    s.check()


def test_subnet_allocation_and_prefix() -> None:
    s = seeded_sim(1)
    assert addr(s, P[0], "x", "198.19.0.64/26") == "198.19.0.65/26"


def test_defaults_as_weave() -> None:
    a = Allocator(P[0], Init("seed", seeds=(P[0],)))
    assert str(a.range) == DEFAULT_RANGE == "10.32.0.0/12" and a.default_subnet == a.range


@pytest.mark.parametrize("call,msg", [
    (lambda a: a.allocate("", None, 0.0), "empty ID"),
    (lambda a: a.allocate("x" * 65, None, 0.0), "longer than 64"),
    (lambda a: a.allocate("a b", None, 0.0), "printable"),
    (lambda a: a.allocate("a\x00", None, 0.0), "printable"),
    (lambda a: a.allocate("ok", "10.0.0.0/24", 0.0), "outside the allocation range"),
    (lambda a: a.allocate("ok", "198.19.0.1/24", 0.0), "not an IPv4 CIDR"),
])
def test_bad_input_one_line(call: object, msg: str) -> None:
    a = Allocator(P[0], Init("seed", seeds=(P[0],)), alloc_range="198.19.0.0/24")
    with pytest.raises(IpamError) as e:
        call(a)  # type: ignore[operator]
    assert msg in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_bad_ranges() -> None:
    with pytest.raises(IpamError, match="too small"):
        parse_range("198.19.0.0/31")
    with pytest.raises(IpamError, match="overlaps the underlay"):
        parse_range("198.18.0.0/15", [ipaddress.IPv4Network("198.18.0.0/16")])
    with pytest.raises(IpamError, match="not an IPv4 CIDR"):
        parse_range("fd00::/64")


def test_exhausted_range_fails_clearly() -> None:
    s = seeded_sim(2, alloc_range="198.19.0.0/29")  # 6 usable addresses, P[0] owns all
    got = [addr(s, P[0 if i < 4 else 1], f"c{i}") for i in range(6)]
    assert len(set(got)) == 6
    s.converge()
    op = s.peers[P[1]].allocate("c7", None, s.now)
    s.run()
    assert op.done and op.error is not None and "exhausted" in str(op.error)
    s.check()


# -- space requests -------------------------------------------------------------------
def test_space_request_split_and_carve_and_done_callback() -> None:
    s = seeded_sim(3)
    seen: list[str] = []
    op = s.peers[P[1]].allocate("c1", None, s.now)
    assert not op.done  # P1 owns nothing: it asks P0
    op.add_done_callback(lambda o: seen.append(str(o.address)))
    s.run()
    assert op.done and seen == [str(op.address)]
    assert s.peers[P[0]].counters["grants_given"] == 1
    assert s.peers[P[1]].ring.owner_of(int(op.address.ip)) == P[1]  # type: ignore[union-attr]
    s.converge()
    s.check()


def test_request_to_unreachable_side_waits_then_fails() -> None:
    s = seeded_sim(3)
    s.fabric.partition([P[0]])  # the only owner is on the other side
    op = s.peers[P[2]].allocate("c1", None, s.now)
    s.run()
    assert not op.done and "unreachable" in op.waiting
    s.advance(UNREACHABLE_WAIT / 2)
    assert not op.done
    s.advance(UNREACHABLE_WAIT)
    assert op.error is not None and "partitioned" in str(op.error)


def test_request_waiting_for_partition_completes_after_heal() -> None:
    s = seeded_sim(3)
    s.fabric.partition([P[0]])
    op = s.peers[P[2]].allocate("c1", None, s.now)
    s.run()
    s.advance(10)
    s.fabric.heal()
    s.run()
    s.advance(10)
    assert op.address is not None


def test_release_while_request_waits() -> None:
    # found by the model test: a request whose operations were all released crashed on tick
    s = seeded_sim(3)
    s.fabric.partition([P[0]])
    a = s.peers[P[2]]
    op = a.allocate("c1", None, s.now)
    s.run()
    assert a.release("c1", s.now) == 0 and op.error is not None
    s.advance(UNREACHABLE_WAIT * 2)
    assert a.req is None and not a.pending


def test_silent_donor_times_out_and_next_is_asked() -> None:
    s = seeded_sim(3, seeds=2)
    dead = s.peers[P[0]]
    s.fabric.attach(P[0], None)  # type: ignore[arg-type]  # routable but never answers
    s.peers[P[2]].rng = random.Random(1)
    ops = [s.peers[P[2]].allocate(f"c{i}", None, s.now) for i in range(3)]
    s.run()
    s.advance(20)
    assert all(o.address is not None for o in ops)
    assert s.peers[P[2]].counters["request_timeouts"] <= 1
    del dead


# -- partitions, rmpeer, leave, restart -------------------------------------------------
def test_partition_both_sides_allocate_then_heal_unique() -> None:
    s = seeded_sim(4, seeds=4)
    s.fabric.partition([P[0], P[1]])
    got = [addr(s, P[i % 4], f"c{i}") for i in range(40)]
    s.fabric.heal()
    s.run()
    s.converge()
    assert len(set(got)) == 40
    s.check()


def test_rmpeer_takes_over_dead_peers_space() -> None:
    s = seeded_sim(3, seeds=2, alloc_range="198.19.0.0/29")  # P0 [0,4), P1 [4,8)
    addr(s, P[1], "b1")
    s.kill(P[1])
    taken = s.peers[P[0]].rmpeer(P[1], s.now)
    s.run()
    assert taken == 3  # .4 .5 .6 (.7 is the broadcast address)
    got = {addr(s, P[2], f"c{i}") for i in range(5)}
    assert len(got) == 5
    assert s.peers[P[2]].ring.owners() <= {P[0], P[2]}
    with pytest.raises(IpamError):
        s.peers[P[0]].rmpeer(P[0], s.now)


def test_donate_all_on_leave() -> None:
    s = seeded_sim(3, seeds=2)
    addr(s, P[0], "a1")
    to = s.peers[P[0]].donate_all(s.now)
    s.run()
    assert to == P[1] and not s.peers[P[0]].allocs
    assert all(a.ring.owned(P[0]) == [] for a in s.peers.values())
    s.check()


def test_restart_restores_same_address_and_no_duplicates() -> None:
    s = seeded_sim(3, seeds=2)
    before = {i: addr(s, P[2], f"c{i}") for i in range(4)}
    s.converge()
    blob = s.peers[P[2]].persist()
    old = s.kill(P[2])
    fresh = Allocator(P[2], Init("seed", seeds=(P[0], P[1])), alloc_range=s.alloc_range,
                      rng=random.Random(5))
    fresh.restore(blob)
    fresh.check()
    assert fresh.ring.entries == old.ring.entries
    g = s.fabric.add(P[2])
    s.fabric.attach(P[2], fresh)
    fresh.attach(g, s.now)
    s.peers[P[2]] = fresh
    s.fabric.connect_all()
    s.run()
    assert {i: addr(s, P[2], f"c{i}") for i in range(4)} == before
    addr(s, P[2], "new")
    s.check()
    with pytest.raises(IpamError, match="another peer"):
        Allocator(P[1], Init("observer"), alloc_range=s.alloc_range).restore(blob)
    with pytest.raises(IpamError, match="unreadable"):
        Allocator(P[2], Init("observer"), alloc_range=s.alloc_range).restore(b"\x93garbage")


def test_seeded_differently_refused_and_shown() -> None:
    s = Sim(alloc_range="198.19.0.0/24")
    s.add(P[0], Init("seed", seeds=(P[0],)))
    s.add(P[1], Init("seed", seeds=(P[1],)))
    s.run()
    assert s.fabric.refused["different_seeds"] >= 2
    st = s.peers[P[0]].status()
    assert st["conflicts"][0]["reason"] == "different_seeds"
    assert st["conflicts"][0]["peer"] == P[1].hex()


def test_hostile_unicast_refused_and_counted() -> None:
    s = seeded_sim(2)
    a = s.peers[P[0]]
    for msg in (b"\x01", b"\x01\x93\x01\x02", b"\x7f\x91\x01", b"\x03\x92\x01\x90"):
        with pytest.raises(GossipRefused):
            a.on_unicast(P[1], msg, s.now)
    assert sum(a.drops.values()) == 4


# -- first start ------------------------------------------------------------------------
def consensus_sim(n_cfg: int, peers: list[bytes], rng_seed: int = 0) -> Sim:
    s = Sim(rng_seed, alloc_range="198.19.0.0/24")
    for p in peers:
        s.add(p, Init("consensus", n=n_cfg))
    s.run()
    return s


@pytest.mark.parametrize("seed", range(5))
def test_consensus_three_agree(seed: int) -> None:
    s = consensus_sim(3, P[:3], seed)
    ops = [s.peers[p].allocate("c", None, s.now) for p in P[:3]]
    s.advance(30)
    assert all(a.consensus.decided for a in s.peers.values())
    assert len({a.consensus.decided for a in s.peers.values()}) == 1
    assert all(o.address is not None for o in ops)
    assert len({o.address for o in ops}) == 3
    assert s.peers[P[0]].status()["consensus"]["state"] == "done"
    s.add(P[3], Init("consensus", n=3))  # a 4th joins later: adopts the ring
    s.run()
    assert s.peers[P[3]].ring.seeds == s.peers[P[0]].ring.seeds
    assert s.peers[P[3]].allocate("d", None, s.now).done is False
    s.advance(10)
    assert s.peers[P[3]].lookup("d")
    s.check()


def test_consensus_minority_cannot_complete() -> None:
    s = consensus_sim(3, P[:3])
    s.fabric.partition([P[0]])
    for p in P[:3]:
        s.peers[p].consensus.claims = {p: s.peers[p].consensus.claims[p]}  # forget each other
    op = s.peers[P[0]].allocate("c", None, s.now)
    s.advance(60)
    lone = s.peers[P[0]]
    assert lone.consensus.decided is None and not op.done
    st = lone.status()["consensus"]
    assert st["state"] == "pending" and "minority" in st["text"]
    assert "waiting for consensus" in op.waiting
    # the majority side agrees; after healing the lone peer learns the ring
    assert s.peers[P[1]].consensus.decided is not None
    s.fabric.heal()
    s.run()
    s.advance(10)
    assert lone.consensus.decided == s.peers[P[1]].consensus.decided and op.address is not None


def test_consensus_one_of_three_alone_from_start() -> None:
    s = consensus_sim(3, P[:1])
    s.advance(60)
    assert s.peers[P[0]].consensus.decided is None


def test_observer_never_owns_and_asks() -> None:
    s = Sim(alloc_range="198.19.0.0/24")
    s.add(P[0], Init("seed", seeds=(P[0],)))
    obs = s.add(P[1], Init("observer"))
    s.run()
    assert obs.ring.seeded and obs.ring.owned() == []
    assert obs.consensus.status()["state"] == "done"
    assert addr(s, P[1], "o1")
    lone = Allocator(P[2], Init("observer"), alloc_range="198.19.0.0/24")
    assert "observer" in str(lone.status()["consensus"]["text"])


def test_parse_init() -> None:
    names = {"a": P[0], "b": P[1]}
    assert parse_init("consensus=3", names.__getitem__) == Init("consensus", n=3)
    assert parse_init("seed=b,a", names.__getitem__).seeds == (P[0], P[1])
    assert parse_init("observer", names.__getitem__).kind == "observer"
    for bad in ("consensus=x", "consensus=0", "seed=", "nonsense", "observer=1"):
        with pytest.raises(ValueError):
            parse_init(bad, names.__getitem__)


def test_fabric_delivery_bytes_small_per_allocation() -> None:
    s = seeded_sim(5, seeds=5)
    f: Fabric = s.fabric
    before = f.bytes_sent
    for i in range(50):
        addr(s, P[i % 5], f"c{i}")
    s.advance(6)  # free counts reported once per tick, not per allocation
    assert (f.bytes_sent - before) / 50 < 100
