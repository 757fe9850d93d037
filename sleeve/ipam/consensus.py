"""First start: which peers seed the ring (``--ipalloc-init``).

- ``seed=A,B,...``: the named peers own the ring; every peer given the same list builds
  the identical ring at once (``Ring.claim_for`` is deterministic), no messages.
- ``observer``: never owns space at start and takes no part in agreement; it adopts
  the first seeded ring it hears and asks others for space.
- ``consensus=N``: the peers agree on the seed list by single-value Paxos over gossip
  (the shape of Weave's ipam/paxos). Every participant is an acceptor and, on a
  jittered timer, a proposer. The whole state is a table ``node -> Claims(promise,
  accepted, value)`` that each node gossips; only a node changes its own row, and a
  row only grows in ``(promise, accepted)`` order, so merging tables is "take the
  larger row". One ``think`` step per change:

  ```
  acceptor  promise  := the highest ballot in any row (an implicit PREPARE/PROMISE)
            accepted := promise, value := proposer's value
                        when the proposer's own row shows accepted == promise (ACCEPT)
  proposer  when promise is our own ballot and a quorum (N//2+1) of rows promise it:
            value := the value of the highest accepted ballot among those rows,
                     or our proposal (every participant we have heard of);
            accepted := promise                                           (PROPOSE)
  learner   decided when a quorum of rows have accepted the same ballot
  ```

  This is classic Paxos with gossip as the transport: a row promising ballot b shows
  what that node had accepted before b and it accepts nothing below b afterwards, so
  a chosen value is re-proposed by every higher ballot (Paxos's P2c). A side with fewer
  than N//2+1 participants never gets a quorum: it stays ``pending`` and says so.
  Safety needs promises to survive restarts: the rows are in ``persist()`` and a node
  that hears its own row larger than it remembers adopts it.

Trust: rows are not signed; a neighbour that forges other nodes' rows can break
agreement (as in Weave). Rows are only accepted from authenticated neighbours.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from sleeve.ipam.ring import MAX_SEEDS
from sleeve.ipam.wire import Ballot, Claims, PaxosMsg

PROPOSE_EVERY = 5.0  # s; re-propose (jittered up to 2x) while no agreement
NONE: Ballot = (0, b"")
EMPTY = Claims(NONE, NONE, ())


class ConsensusConflict(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Init:
    """A parsed ``--ipalloc-init``: kind is ``consensus``, ``seed`` or ``observer``."""

    kind: str
    n: int = 0
    seeds: tuple[bytes, ...] = ()


def parse_init(text: str, resolve: Callable[[str], bytes]) -> Init:
    """Parse ``consensus=N|seed=PEER,...|observer``; ``resolve`` maps a peer name to its id."""
    kind, _, arg = text.partition("=")
    if kind == "observer" and not arg:
        return Init("observer")
    if kind == "consensus":
        try:
            n = int(arg)
        except ValueError:
            raise ValueError(f"--ipalloc-init consensus=N needs a number, not {arg!r}") from None
        if not 1 <= n <= MAX_SEEDS:
            raise ValueError(f"--ipalloc-init consensus=N: N must be 1..{MAX_SEEDS}")
        return Init("consensus", n=n)
    if kind == "seed" and arg:
        names = [a for a in arg.split(",") if a]
        if not 1 <= len(names) <= MAX_SEEDS:
            raise ValueError(f"--ipalloc-init seed=: 1..{MAX_SEEDS} peers")
        return Init("seed", seeds=tuple(sorted({resolve(a) for a in names})))
    raise ValueError(f"--ipalloc-init must be consensus=N, seed=PEER,... or observer, not {text!r}")


def _rank(c: Claims) -> tuple[Ballot, Ballot]:
    return (c.promise, c.accepted)


class Consensus:
    def __init__(self, me: bytes, init: Init, rng: random.Random) -> None:
        self.me = me
        self.init = init
        self.rng = rng
        self.quorum = init.n // 2 + 1
        self.claims: dict[bytes, Claims] = {}
        self.decided: tuple[bytes, ...] | None = init.seeds if init.kind == "seed" else None
        self.next_propose: float | None = None
        if self.participant:
            self.claims[me] = EMPTY

    @property
    def participant(self) -> bool:
        return self.init.kind == "consensus" and self.decided is None

    def wants_gossip(self) -> bool:
        """Only once agreement has started here or reached us: an idle mesh says nothing
        (peers configured with different N then never refuse each other's rows for nothing)."""
        return self.participant and (self.next_propose is not None or len(self.claims) > 1
                                     or self.claims.get(self.me) != EMPTY)

    def msg(self) -> PaxosMsg:
        return PaxosMsg(self.init.n, dict(self.claims))

    def start(self, now: float) -> None:
        """Schedule the first proposal (soon, jittered, so peers rarely duel)."""
        if self.participant and self.next_propose is None:
            self.next_propose = now + self.rng.uniform(0.0, 1.0)

    def next_deadline(self) -> float | None:
        return self.next_propose if self.participant else None

    def tick(self, now: float) -> bool:
        """Propose when due; True when our row changed (gossip it)."""
        if not self.participant or self.next_propose is None or now < self.next_propose:
            return False
        self.next_propose = now + PROPOSE_EVERY * (1.0 + self.rng.random())
        top = max(c.promise[0] for c in self.claims.values())
        mine = self.claims[self.me]
        self.claims[self.me] = Claims((top + 1, self.me), mine.accepted, mine.value)
        self.think()
        return True

    def merge(self, msg: PaxosMsg) -> bool:
        """Merge another node's table; True when our own row changed (gossip it)."""
        if not self.participant:
            return False
        if msg.quorum != self.init.n:
            raise ConsensusConflict("different_consensus_n")
        before = self.claims[self.me]
        for node, c in msg.claims.items():
            cur = self.claims.get(node)
            if cur is None or _rank(c) > _rank(cur):
                # a larger row of our own is our pre-restart state echoed back: adopt it
                self.claims[node] = c
        if len(self.claims) > MAX_SEEDS:
            raise ConsensusConflict("too_many_participants")
        self.think()
        return self.claims.get(self.me) != before or self.decided is not None

    def think(self) -> None:
        mine = self.claims[self.me]
        promise = max(c.promise for c in self.claims.values())
        accepted, value = mine.accepted, mine.value
        if promise != accepted:
            prop = self.claims.get(promise[1])
            if prop is not None and prop.accepted == promise:
                accepted, value = promise, prop.value
            elif promise[1] == self.me:
                promisers = [c for c in self.claims.values() if c.promise == promise]
                if len(promisers) >= self.quorum:
                    best = max(promisers, key=lambda c: c.accepted)
                    value = best.value if best.accepted != NONE else tuple(sorted(self.claims))
                    accepted = promise
        self.claims[self.me] = Claims(promise, accepted, value)
        self._learn()

    def _learn(self) -> None:
        votes: dict[Ballot, int] = {}
        for c in self.claims.values():
            if c.accepted != NONE:
                votes[c.accepted] = votes.get(c.accepted, 0) + 1
                if votes[c.accepted] >= self.quorum:
                    self.decided = c.value
                    self.next_propose = None
                    return

    def learned(self, seeds: tuple[bytes, ...]) -> None:
        """We heard a seeded ring: agreement is over (whichever way we took part)."""
        if self.decided is None:
            self.decided = seeds
            self.next_propose = None

    def restore(self, claims: dict[bytes, Claims]) -> None:
        if self.participant:
            self.claims.update(claims)
            self.think()

    def status(self) -> dict[str, object]:
        k = self.init.kind
        if self.decided is not None:
            text = f"agreed: the ring is seeded by {len(self.decided)} peer(s)"
        elif k == "observer":
            text = "observer: waiting for a seeded ring from another peer"
        else:
            heard = len(self.claims)
            text = (
                f"waiting for consensus: heard {heard} of {self.init.n} peers, "
                f"{self.quorum} must agree"
                + (" (fewer than a quorum reachable: a minority cannot complete)"
                   if heard < self.quorum else "")
            )
        return {
            "mode": k if k != "consensus" else f"consensus={self.init.n}",
            "state": "done" if self.decided is not None else "pending",
            "text": text,
            "seeds": [s.hex() for s in self.decided or ()],
        }
