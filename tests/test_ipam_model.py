"""IPAM against a reference model: random allocate/release/merge/partition/heal/transfer/
rmpeer/leave over 25 peers, invariants after every step; and a 100-peer run that converges.

The model is the obvious one: a dict ``(peer, id) -> address`` of what the API
answered. After every step:

- the API never changed its answer for an ID (same ID, same address) and every answer
  is still held by the peer that gave it (nothing lost);
- no address is allocated twice and no address is claimed by two live peers (each
  peer's *own* view of what it owns; transfers leave the giver first, so this holds
  at every instant, not only after convergence);
- space is conserved: in every view the ranges tile the whole range exactly;
- the ring merge is commutative and idempotent on the two current views picked;
- every allocator's own invariants (``Allocator.check``).

After a heal the rings converge and the live peers plus the dead ones' leftovers own
every address exactly once. Transfers happen through space requests: only 3 of the 25
peers seed the ring, so the others ask for space all the time.

Settings: ``max_examples`` (default 2, env ``IPAM_MODEL_EXAMPLES``) runs of
``stateful_step_count=1000`` steps: about 15 s per example on our 2-core VM. The
100-peer x 1500-step run takes about 18 s and is marked ``slow`` (it runs in CI like every
test; ``-m "not slow"`` leaves it out of a quick local run).
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sleeve.ipam.allocator import Allocation
from sleeve.ipam.consensus import Init
from sleeve.ipam.ring import join
from sleeve.ipam.sim import Sim, peer_id
from sleeve.proto.gossip import GossipRefused

N = 25
PEERS = [peer_id(i + 1) for i in range(N)]
SEEDS = tuple(PEERS[:3])
IDS = 30
MAX_DEAD = 6


def check_tiling(sim: Sim) -> None:
    for a in sim.peers.values():
        r = a.ring
        if r.tokens and r.tokens[0] == r.start:
            assert sum(n - t for t, n, _e in r.ranges()) == r.end - r.start


def check_merge_laws(sim: Sim, i: int, j: int) -> None:
    ps = sorted(sim.peers)
    x = sim.peers[ps[i % len(ps)]].ring.entries
    y = sim.peers[ps[j % len(ps)]].ring.entries
    assert join(x, y.values()) == join(y, x.values()), "merge not commutative"
    assert join(x, x.values()) == x, "merge not idempotent"


def check_converged_cover(sim: Sim) -> None:
    ring = next(iter(sim.peers.values())).ring
    assert ring.tokens[0] == ring.start
    owned = sum(n - t for t, n, e in ring.ranges())
    assert owned == ring.end - ring.start
    live = sum(n - t for t, n, _p in sim.claims())
    dead = sum(n - t for t, n, e in ring.ranges() if e.owner not in sim.peers)
    assert live + dead == ring.end - ring.start, "space lost or doubled"


class IpamModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sim = Sim(rng_seed=7, alloc_range="198.19.0.0/22")
        for p in PEERS:
            self.sim.add(p, Init("seed", seeds=SEEDS))
        self.sim.run()
        self.model: dict[tuple[bytes, str], str] = {}
        self.dead: list[bytes] = []
        self.steps = 0
        self.refused = 0

    def _live(self, i: int) -> bytes | None:
        p = PEERS[i]
        return p if p in self.sim.peers else None

    def _record(self, p: bytes, op: Allocation) -> None:
        if op.address is not None and p in self.sim.peers:
            key = (p, op.owner_id)
            assert self.model.get(key, str(op.address)) == str(op.address), "ID changed address"
            self.model[key] = str(op.address)

    @rule(i=st.integers(0, N - 1), n=st.integers(0, IDS - 1))
    def allocate(self, i: int, n: int) -> None:
        p = self._live(i)
        if p is None:
            return
        op = self.sim.peers[p].allocate(f"c{n}", None, self.sim.now)
        op.add_done_callback(lambda o: self._record(p, o))
        self.sim.run()

    @rule(i=st.integers(0, N - 1), n=st.integers(0, IDS - 1))
    def release(self, i: int, n: int) -> None:
        p = self._live(i)
        if p is None:
            return
        self.sim.peers[p].release(f"c{n}", self.sim.now)
        self.model.pop((p, f"c{n}"), None)
        self.sim.run()

    @rule(i=st.integers(0, N - 1), j=st.integers(0, N - 1))
    def gossip_pair(self, i: int, j: int) -> None:
        """One anti-entropy message from i to j (a merge of a whole view)."""
        a, b = self._live(i), self._live(j)
        if a is None or b is None or a == b:
            return
        data = self.sim.peers[a].gossip()
        for m in data.encode() if data is not None else []:
            try:
                self.sim.peers[b].on_gossip(a, m, self.sim.now)
            except GossipRefused:
                self.refused += 1
        self.sim.run()

    @rule(side=st.sets(st.integers(0, N - 1), min_size=1, max_size=N // 2))
    def partition(self, side: set[int]) -> None:
        self.sim.fabric.partition([PEERS[i] for i in side if PEERS[i] in self.sim.peers])

    @rule()
    def heal(self) -> None:
        self.sim.fabric.heal()
        self.sim.run()

    @rule(dt=st.sampled_from([1.0, 5.0, 12.0]))
    def advance(self, dt: float) -> None:
        self.sim.advance(dt)

    @precondition(lambda self: len(self.dead) < MAX_DEAD)
    @rule(i=st.integers(0, N - 1), j=st.integers(0, N - 1), clean=st.booleans())
    def peer_dies(self, i: int, j: int, clean: bool) -> None:
        """A peer leaves (donating its space) or crashes and another runs rmpeer on it."""
        victim, taker = self._live(i), self._live(j)
        if victim is None or taker is None or victim == taker:
            return
        self.heal()
        self.sim.converge()  # rmpeer is documented for a dead peer whose ring others know
        if clean:
            self.sim.peers[victim].donate_all(self.sim.now)
            self.sim.run()
        self.sim.kill(victim)
        self.dead.append(victim)
        self.model = {k: v for k, v in self.model.items() if k[0] != victim}
        if not clean:
            self.sim.peers[taker].rmpeer(victim, self.sim.now)
            self.sim.run()

    @rule()
    def converge(self) -> None:
        self.heal()
        self.sim.converge()
        check_converged_cover(self.sim)

    @invariant()
    def check_all(self) -> None:
        self.steps += 1
        self.sim.check()
        check_tiling(self.sim)
        check_merge_laws(self.sim, self.steps, self.steps * 7 + 3)
        for (p, owner_id), address in self.model.items():
            assert [str(x) for x in self.sim.peers[p].lookup(owner_id)] == [address], "lost"

    def teardown(self) -> None:
        STEP_COUNTS.append(self.steps)
        if self.sim.peers:
            self.converge()
            self.sim.check()


IpamModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("IPAM_MODEL_EXAMPLES", "25")),
    stateful_step_count=1000,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
TestIpamModel = IpamModel.TestCase


@pytest.mark.slow
def test_hundred_peers_fifteen_hundred_steps_converge() -> None:
    """A seeded random run: 100 peers, 1500 steps of allocate/release/partition/heal/time."""
    rnd = random.Random(2026)
    sim = Sim(rng_seed=11, alloc_range="198.19.0.0/20")
    peers = [peer_id(i + 1) for i in range(100)]
    for p in peers:
        sim.add(p, Init("seed", seeds=tuple(peers[:4])), connect=False)
    sim.fabric.connect_all()
    sim.run()
    answers: dict[tuple[bytes, str], str] = {}

    def record(p: bytes, op: Allocation) -> None:
        if op.address is not None:
            assert answers.setdefault((p, op.owner_id), str(op.address)) == str(op.address)

    for step in range(1500):
        x = rnd.random()
        p = rnd.choice(peers)
        owner_id = f"c{rnd.randrange(40)}"
        if x < 0.6:
            op = sim.peers[p].allocate(owner_id, None, sim.now)
            op.add_done_callback(lambda o, p=p: record(p, o))  # now or when it completes
            sim.run()
        elif x < 0.85:
            sim.peers[p].release(owner_id, sim.now)
            answers.pop((p, owner_id), None)
        elif x < 0.91:
            sim.fabric.partition(rnd.sample(peers, rnd.randrange(1, 50)))
        elif x < 0.94:
            sim.fabric.heal()
            sim.run()
        else:
            sim.advance(rnd.choice([1.0, 5.0, 12.0]))
        if step % 100 == 0:
            sim.check()
    sim.fabric.heal()
    sim.run()
    sim.advance(60)  # every waiting request finishes or fails
    rounds = sim.converge()
    sim.check()
    check_converged_cover(sim)
    assert rounds <= 2
    assert not any(a.pending for a in sim.peers.values())
    held = {(p, i): str(x) for p, a in sim.peers.items() for (i, _n), addr in a.allocs.items()
            for x in a.lookup(i)}
    assert held == answers


STEP_COUNTS: list[int] = []  # the lengths Hypothesis chose (it caps at stateful_step_count)


def drive(seed: int, steps: int = 1000) -> IpamModel:
    """Exactly ``steps`` random rules of the same machine, invariants after every one.

    Hypothesis decides itself how long each stateful run is (up to the cap, most much
    shorter); this guarantees full-length histories, reproducible by seed.
    """
    rnd = random.Random(seed)
    m = IpamModel()
    for _ in range(steps):
        x = rnd.random()
        i, j, n = rnd.randrange(N), rnd.randrange(N), rnd.randrange(IDS)
        if x < 0.40:
            m.allocate(i, n)
        elif x < 0.60:
            m.release(i, n)
        elif x < 0.75:
            m.gossip_pair(i, j)
        elif x < 0.80:
            m.partition(set(rnd.sample(range(N), rnd.randrange(1, N // 2))))
        elif x < 0.85:
            m.heal()
        elif x < 0.95:
            m.advance(rnd.choice([1.0, 5.0, 12.0]))
        elif x < 0.97 and len(m.dead) < MAX_DEAD:
            m.peer_dies(i, j, rnd.random() < 0.5)
        else:
            m.converge()
        m.check_all()
    m.teardown()
    return m


@pytest.mark.parametrize("seed", range(int(os.environ.get("IPAM_MODEL_SEEDS", "6"))))
def test_model_full_length_runs(seed: int) -> None:
    m = drive(seed)
    assert m.steps == 1000
    assert sum(1 for k in m.model) > 0
