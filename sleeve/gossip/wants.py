"""Topology wants in flight, and the answers we gave: the bookkeeping of ``gossip.topology``.

A digest entry is a *claim* by an authenticated neighbour ("I hold this peer's record at
(version, uid, tag)"), not a record: a member may lie. So:

- a claim is skipped only when it is *identical* to the one in flight (version, uid and
  tag); any other claim, higher or lower, is asked of the neighbour that made it. A liar
  that claims a real peer at the top version and never answers cannot stop an honest
  neighbour's newer record from being asked for (review of issue 23, finding 1);
- every neighbour that made a claim is remembered (``MAX_CLAIMANTS`` per peer), so when
  the asked neighbour's link goes, its want times out, or its answer lacks the record it
  claimed, the next claimant is asked at once instead of waiting for its next digest
  (up to a minute of anti-entropy with few links: finding 5);
- each neighbour has at most ``WANT_QUOTA`` unanswered wants: one digest of 10,000
  made-up peer ids no longer fills the table and blocks every other neighbour's news;
- entries are kept in expiry order (the timeout is a constant), so expired ones are
  pruned from the front, not by scanning the table on every digest (finding 2).

``AnswerMemo`` remembers, per link, which (peer, version, uid) we answered within the
want timeout and when we last answered an ANSWER-flagged digest with ours: a neighbour
repeating a want or an empty ANSWER digest gets one answer, not one per request
(finding 3). Everything here is sans-IO: callers pass ``now`` and send what it returns.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from sleeve.proto.topology import MAX_RECORDS

WANT_TIMEOUT = 5.0  # s before a record asked of one neighbour is asked of the next claimant
WANT_QUOTA = 1024  # unanswered wants per neighbour (a mesh of 1,000 peers fits in one)
MAX_CLAIMANTS = 8  # neighbours remembered per wanted peer (fallbacks to ask next)
MEMO_PER_LINK = 4096  # answered (peer, version, uid) remembered per link

Claim = tuple[int, int, bytes]  # (version, uid, tag) of a digest entry
# (peer, claim) -> whether it still beats the record we hold (worth fetching)
Lacks = Callable[[bytes, Claim], bool]
Asks = list[tuple[bytes, bytes]]  # (neighbour, peer): wants to send now


class _Want:
    __slots__ = ("asked", "claim", "claims", "deadline")

    def __init__(self, asked: bytes, claim: Claim, deadline: float) -> None:
        self.asked = asked  # the neighbour asked: the want in flight
        self.claim = claim  # what it claimed
        self.deadline = deadline
        self.claims: dict[bytes, Claim] = {asked: claim}  # neighbour -> its claim, oldest first


class WantTable:
    """peer -> the want in flight for its record; bounded by MAX_RECORDS peers."""

    def __init__(self, lacks: Lacks, timeout: float = WANT_TIMEOUT,
                 quota: int = WANT_QUOTA) -> None:
        self._lacks = lacks
        self._timeout = timeout
        self._quota = quota
        self._wants: OrderedDict[bytes, _Want] = OrderedDict()  # in deadline order
        self._load: dict[bytes, int] = {}  # neighbour -> wants in flight to it
        self.skipped: dict[str, int] = {}  # reason -> claims not asked (quota, table full)

    def __len__(self) -> int:
        return len(self._wants)

    def load(self, neighbour: bytes) -> int:
        return self._load.get(neighbour, 0)

    def on_claim(self, src: bytes, peer: bytes, claim: Claim, now: float) -> bool:
        """``src``'s digest claims ``claim`` for ``peer``, which beats what we hold:
        whether to ask ``src`` for the record now."""
        w = self._wants.get(peer)
        if w is None:
            if len(self._wants) >= MAX_RECORDS:
                return self._skip("want_table_full")
            if self.load(src) >= self._quota:
                return self._skip("want_quota")
            self._wants[peer] = _Want(src, claim, now + self._timeout)
            self._load[src] = self.load(src) + 1
            return True
        if w.claims.get(src) == claim:
            return False  # heard before: in flight from src, or src is a fallback
        if src not in w.claims and len(w.claims) >= MAX_CLAIMANTS:
            return self._skip("want_claimants_full")
        w.claims[src] = claim
        if claim == w.claim:
            return False  # identical to the claim in flight: src is asked if that fails
        if self.load(src) >= self._quota:
            return self._skip("want_quota")  # kept as a fallback
        self._assign(peer, w, src, now)
        return True

    def expire(self, now: float) -> Asks:
        """Give up on wants past their deadline; ask each one's next claimant."""
        out: Asks = []
        wants = self._wants
        while wants:
            peer, w = next(iter(wants.items()))
            if w.deadline > now:
                break
            w.claims.pop(w.asked, None)  # it did not answer in time
            self._next(peer, w, now, out)  # re-queued at the back, or deleted
        return out

    def links_gone(self, gone: set[bytes], now: float) -> Asks:
        """Forget the claims of neighbours whose link went; re-ask their wants."""
        out: Asks = []
        for peer, w in list(self._wants.items()):
            for g in gone & w.claims.keys():
                del w.claims[g]
            if w.asked in gone:
                self._next(peer, w, now, out)
        for g in gone:
            self._load.pop(g, None)
        return out

    def heard(self, src: bytes, peers: Iterable[bytes], now: float) -> Asks:
        """``src`` sent records of ``peers`` (merged already): a want is done when its
        claim no longer beats what we hold; a want asked of ``src`` whose answer did not
        bring the claimed record is asked of the next claimant."""
        out: Asks = []
        for peer in peers:
            w = self._wants.get(peer)
            if w is not None and (w.asked == src or not self._lacks(peer, w.claim)):
                w.claims.pop(w.asked, None)
                self._next(peer, w, now, out)
        return out

    def _next(self, peer: bytes, w: _Want, now: float, out: Asks) -> None:
        """Ask the first remaining claimant whose claim still beats what we hold (and
        whose quota allows); no one left: the entry goes."""
        for nb in [nb for nb, c in w.claims.items() if not self._lacks(peer, c)]:
            del w.claims[nb]
        for nb in w.claims:
            if self.load(nb) < self._quota:
                self._assign(peer, w, nb, now)
                out.append((nb, peer))
                return
        self._unload(w.asked)
        del self._wants[peer]

    def _assign(self, peer: bytes, w: _Want, nb: bytes, now: float) -> None:
        self._unload(w.asked)
        self._load[nb] = self.load(nb) + 1
        w.asked, w.claim, w.deadline = nb, w.claims[nb], now + self._timeout
        self._wants.move_to_end(peer)  # the newest deadline: the order holds

    def _unload(self, nb: bytes) -> None:
        n = self._load.get(nb, 0) - 1
        if n > 0:
            self._load[nb] = n
        else:
            self._load.pop(nb, None)

    def _skip(self, reason: str) -> bool:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        return False


class AnswerMemo:
    """Per link: the (peer, version, uid) answered within ``window`` and when we last
    answered an ANSWER-flagged digest. Bounded by MEMO_PER_LINK keys per link. Kept per
    neighbour *incarnation* (``nb_uid``, as its handshake proved it): a neighbour that
    restarted and relinked before we saw its old link go asks afresh and is answered."""

    def __init__(self, window: float = WANT_TIMEOUT) -> None:
        self._window = window
        # neighbour -> (its uid, (peer, version, uid) -> until)
        self._answered: dict[bytes, tuple[int, OrderedDict[tuple[bytes, int, int],
                                                           float]]] = {}
        self._digest_at: dict[bytes, tuple[int, float]] = {}  # neighbour -> (its uid, when)

    def fresh(self, nb: bytes, nb_uid: int, keys: Iterable[tuple[bytes, int, int]],
              now: float) -> set[bytes]:
        """The peers of ``keys`` not answered to ``nb`` within the window; noted as
        answered now."""
        held = self._answered.get(nb)
        if held is None or held[0] != nb_uid:
            held = self._answered[nb] = (nb_uid, OrderedDict())
        memo = held[1]
        while memo and (next(iter(memo.values())) <= now or len(memo) >= MEMO_PER_LINK):
            memo.popitem(last=False)
        out = set()
        for k in keys:
            until = memo.get(k)
            if until is not None and until > now:
                continue
            memo[k] = now + self._window
            memo.move_to_end(k)
            out.add(k[0])
        while len(memo) > MEMO_PER_LINK:
            memo.popitem(last=False)
        return out

    def digest_due(self, nb: bytes, nb_uid: int, now: float) -> bool:
        """Whether an ANSWER-flagged digest from ``nb`` may be answered with ours now."""
        last = self._digest_at.get(nb)
        return last is None or last[0] != nb_uid or last[1] <= now - self._window

    def digest_sent(self, nb: bytes, nb_uid: int, now: float) -> None:
        self._digest_at[nb] = (nb_uid, now)

    def forget(self, gone: Iterable[bytes]) -> None:
        for nb in gone:
            self._answered.pop(nb, None)
            self._digest_at.pop(nb, None)
