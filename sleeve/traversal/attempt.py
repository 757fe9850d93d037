"""One punching attempt and a peer's attempts, as ``traversal.punch`` keeps them and
``traversal.punchstatus`` shows them (data only: no sockets, no clock)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from sleeve.links.link import Link
from sleeve.traversal import candidates, hops
from sleeve.traversal.hopsock import FarProbe
from sleeve.traversal.plan import Plan
from sleeve.traversal.predict import Prediction
from sleeve.traversal.spray import Sprayer

TRIED_KEPT = 4  # attempts per peer that status remembers


@dataclass
class Attempt:
    """One punching attempt as status shows it."""

    n: int
    started: float
    plan: Plan
    link: Link | None  # while punching and once punched; None once failed
    result: str = ""  # "" while punching
    lan: list[candidates.Endpoint] = field(default_factory=list)  # the peer's LAN endpoints
    mapped: list[candidates.Endpoint] = field(default_factory=list)  # its gateway's mapping
    ours: Prediction | None = None  # our NAT changes ports: where it goes next (announced)
    pred: Prediction | None = None  # the peer's announced prediction: we probe it
    index_plan: Plan | None = None  # the roles the session indexes give
    spray_role: str = ""  # traversal.spray role: "open" (our NAT is random), "probe" or ""
    sprayer: Sprayer | None = None  # our probes, when we spray
    spray_sockets: int = 0  # sockets we opened, when the peer sprays
    next_keep: float = 0.0  # age at which our spray sockets refresh their mappings
    far: FarProbe | None = None  # measuring the far NAT's distance (traversal.hops)
    verdict: hops.Verdict | None = None  # the measured hop limits, once decided
    open_now: bool = False  # k_min was known at the start: the opener need not wait
    peer_adjacent: bool | None = None  # the opener's measured verdict (its cand "adj")

    def use_peer_verdict(self) -> bool:
        """A crosser that could not measure the far NAT's distance itself takes the
        opener's adjacency verdict (its datagrams are the ones that would reach our
        NAT); True when that changed the plan."""
        v = self.verdict
        if (self.peer_adjacent is None or self.plan.opener or v is None
                or (v.k_min is not None and v.d_far is not None)
                or self.plan.adjacent == self.peer_adjacent):
            return False
        self.plan = replace(self.plan, adjacent=self.peer_adjacent)
        if self.index_plan is not None:
            self.index_plan = replace(self.index_plan, adjacent=self.peer_adjacent)
        return True


@dataclass
class PeerPunch:
    """What traversal knows about one peer we are (or were) punching to."""

    next_at: float  # the starter's next attempt (monotonic s)
    attempts: int = 0
    successes: int = 0
    failures: int = 0  # in a row: the backoff grows with them
    tried: deque[Attempt] = field(default_factory=lambda: deque(maxlen=TRIED_KEPT))

    @property
    def current(self) -> Attempt | None:
        return self.tried[-1] if self.tried and not self.tried[-1].result else None
