"""The IPAM ring: a CRDT that says which peer owns which part of the address range.

The allocation range ``[start, end)`` (IPv4 addresses as ints) is cut by *tokens*. Each
token has one entry ``{token, owner, version, free}``; the entry's range runs from its
token to the next token, the last one to ``end``. The token at ``start`` exists from
the moment the ring is seeded and tokens are never removed, so the ring never needs to
wrap (Weave's ring wraps; ours keeps a token at ``start`` instead). ``free`` is the
owner's count of addresses it could still hand out in that range (a hint for choosing
donors, reported lazily).

Rules (see ``join`` and ``Ring.merge``):

- **Only the owner changes an entry**, and every change bumps its version. New tokens
  are created only by the owner of the range they cut (a donation splits or carves).
- **Merge** is, per token, the maximum under the total order
  ``(version, free, owner)``: higher version wins; at equal versions the larger free
  count wins (Weave's rule); at equal version and free the larger owner id wins. So
  "same version, different owner" (weave#3632: two hosts ran ``rmpeer`` for the same
  dead peer) still has one deterministic winner everywhere, and the join is
  commutative, associative and idempotent (tested).
- **Our own space is protected**: a merge that would take away an address we have
  allocated (an entry of ours replaced by another owner, or a foreign token inside our
  range) is refused as a whole (``RingConflict``) and recorded; a takeover of space
  where we have no allocations is accepted (Weave's repair). A stale or forgotten copy
  of our own entry (we restarted from an old state file) is re-imposed at
  ``version + 1``.
- **Rings seeded differently are never merged**: a different ``(start, end)`` or a
  different seed list is refused (``different_range``/``different_seeds``).

Trust: entries are not signed (see the allocator module docstring). A neighbour could
lie about other peers' entries; the checks above protect only what we own.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

PEER_LEN = 8
MAX_ENTRIES = 8192  # ring size bound (a donation that would exceed it is denied)
MAX_SEEDS = 256
MAX_VERSION = 1 << 62
MIN_SIZE = 4  # a range smaller than a /30 is refused


class RingConflict(Exception):
    """A merge refused as a whole; ``reason`` is a short snake_case word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class Entry(NamedTuple):  # a tuple: equality and hashing in C (merges compare many)
    token: int
    owner: bytes
    version: int
    free: int

    def rank(self) -> tuple[int, int, bytes]:
        """The tie rule as one total order: the larger rank wins a merge."""
        return (self.version, self.free, self.owner)


def join(a: dict[int, Entry], b: Iterable[Entry]) -> dict[int, Entry]:
    """The pure CRDT join (no ownership checks): per token, the entry of larger rank."""
    out = dict(a)
    for e in b:
        cur = out.get(e.token)
        if cur is None or e.rank() > cur.rank():
            out[e.token] = e
    return out


def subdivide(start: int, end: int, peers: Sequence[bytes]) -> list[tuple[int, bytes]]:
    """Split ``[start, end)`` among ``peers`` by halving (CIDR-aligned for CIDR ranges)."""
    if end <= start:
        return []
    if len(peers) == 1 or end - start == 1:
        return [(start, peers[0])]
    mid = start + (end - start) // 2
    half = len(peers) // 2
    return subdivide(start, mid, peers[:half]) + subdivide(mid, end, peers[half:])


class Ring:
    """One peer's view of the ring; ``me`` is the peer whose entries this copy owns."""

    def __init__(self, start: int, end: int, me: bytes) -> None:
        if not 0 <= start < end <= 1 << 32 or end - start < MIN_SIZE:
            raise ValueError(f"bad ring range [{start}, {end})")
        self.start = start
        self.end = end
        self.me = me
        self.seeds: tuple[bytes, ...] = ()
        self.tokens: list[int] = []  # sorted
        self.entries: dict[int, Entry] = {}
        # the range's own network and broadcast addresses are never handed out
        self.reserved = (start, end - 1)
        self.gen = 0  # bumped on every change (caches of the encoded ring compare it)

    # -- reading ---------------------------------------------------------------------------
    @property
    def seeded(self) -> bool:
        return bool(self.seeds)

    def next_token(self, token: int) -> int:
        """The end of the range that starts at ``token`` (the next token or ``end``)."""
        i = bisect.bisect_right(self.tokens, token)
        return self.tokens[i] if i < len(self.tokens) else self.end

    def entry_at(self, addr: int) -> Entry | None:
        """The entry whose range holds ``addr`` (None before the first known token)."""
        i = bisect.bisect_right(self.tokens, addr) - 1
        return self.entries[self.tokens[i]] if i >= 0 else None

    def owner_of(self, addr: int) -> bytes | None:
        e = self.entry_at(addr)
        return None if e is None else e.owner

    def ranges(self) -> list[tuple[int, int, Entry]]:
        return [(t, self.next_token(t), self.entries[t]) for t in self.tokens]

    def owned(self, peer: bytes | None = None) -> list[tuple[int, int, Entry]]:
        p = self.me if peer is None else peer
        return [r for r in self.ranges() if r[2].owner == p]

    def owners(self) -> set[bytes]:
        return {e.owner for e in self.entries.values()}

    def usable(self, lo: int, hi: int) -> int:
        """Addresses in ``[lo, hi)`` that may be handed out (not reserved)."""
        return max(0, hi - lo) - sum(1 for r in self.reserved if lo <= r < hi)

    def free_by_peer(self, lo: int | None = None, hi: int | None = None) -> dict[bytes, int]:
        """Reported free addresses per owner, clipped to ``[lo, hi)`` (donor weights)."""
        lo = self.start if lo is None else lo
        hi = self.end if hi is None else hi
        out: dict[bytes, int] = {}
        for t, n, e in self.ranges():
            overlap = min(n, hi) - max(t, lo)
            if overlap > 0 and e.free > 0:
                out[e.owner] = out.get(e.owner, 0) + min(e.free, overlap)
        return out

    def snapshot(self) -> dict[int, Entry]:
        return dict(self.entries)

    def check(self) -> None:
        """The invariants; raises ``AssertionError`` naming the first one broken."""
        assert self.tokens == sorted(self.entries), "tokens not sorted or not the entry keys"
        assert len(set(self.tokens)) == len(self.tokens), "token repeated"
        assert len(self.tokens) <= MAX_ENTRIES, "too many entries"
        if self.tokens:
            assert self.seeds, "entries without seeds"
            assert self.start <= self.tokens[0] and self.tokens[-1] < self.end, "token out of range"
        for t, n, e in self.ranges():
            assert 0 <= e.free <= self.usable(t, n), f"entry {t}: free {e.free} > size"
            assert 0 <= e.version < MAX_VERSION and len(e.owner) == PEER_LEN, f"entry {t}: bad"

    # -- seeding ---------------------------------------------------------------------------
    def claim_for(self, seeds: Sequence[bytes]) -> list[Entry]:
        """Seed an empty ring: the range split among ``seeds`` (sorted), all at version 1.

        Every peer that learns the same seed list builds the identical ring, so seeding
        needs no message of its own.
        """
        if self.entries or self.seeds:
            raise ValueError("ring already seeded")
        ss = tuple(sorted(set(seeds)))
        if not ss or len(ss) > MAX_SEEDS:
            raise ValueError("need 1..256 seed peers")
        self.seeds = ss
        for t, p in subdivide(self.start, self.end, ss):
            self._put(Entry(t, p, 1, 0))
        for t in self.tokens:
            e = self.entries[t]
            self._put(Entry(t, e.owner, 1, self.usable(t, self.next_token(t))))
        return [self.entries[t] for t in self.tokens]

    # -- merging ---------------------------------------------------------------------------
    def merge(
        self,
        start: int,
        end: int,
        seeds: tuple[bytes, ...],
        incoming: Sequence[Entry],
        has_allocs: Callable[[int, int], bool],
        digest: Callable[[tuple[bytes, ...]], bytes] | None = None,
        their_digest: bytes = b"",
    ) -> tuple[list[Entry], list[Entry]]:
        """Merge a (full or partial) ring: (entries that changed here, ours re-imposed).

        ``has_allocs(lo, hi)`` says whether we hold an allocation in ``[lo, hi)``.
        Raises ``RingConflict`` and changes nothing when the merge is refused.
        """
        if (start, end) != (self.start, self.end):
            raise RingConflict("different_range", f"range [{start}, {end}) is not ours")
        if (seeds and self.seeds and seeds != self.seeds) or (
            their_digest and digest is not None and self.seeds
            and digest(self.seeds) != their_digest
        ):
            raise RingConflict("different_seeds", "ring was seeded by different peers")
        if incoming and not seeds and not self.seeds:
            raise RingConflict("delta_before_seeded", "a delta before we know the seeds")
        cand = dict(self.entries)
        changed: dict[int, Entry] = {}
        reimposed = []
        for e in incoming:
            cur = cand.get(e.token)
            if cur is None or cur == e:
                if cur is None:
                    cand[e.token] = changed[e.token] = e
                continue
            if cur.owner == self.me and e.owner == self.me:
                if e.version >= cur.version:  # an old copy of ours came back: re-impose ours
                    new = Entry(e.token, self.me, e.version + 1, cur.free)
                    cand[e.token] = changed[e.token] = new
                    reimposed.append(new)
            elif e.rank() > cur.rank():
                cand[e.token] = changed[e.token] = e
        if not changed:
            if seeds and not self.seeds:
                self.seeds = seeds
            return [], []
        tokens = sorted(cand) if len(changed) > 4 else self._insort(changed)
        if len(tokens) > MAX_ENTRIES:
            raise RingConflict("ring_too_big", f"{len(tokens)} entries")
        self._check_loss(cand, tokens, changed, has_allocs)
        self._check_free(cand, tokens, changed)
        self.seeds = self.seeds or seeds
        self.entries, self.tokens = cand, tokens
        self.gen += 1
        return [changed[t] for t in sorted(changed)], reimposed

    def _insort(self, changed: dict[int, Entry]) -> list[int]:
        tokens = list(self.tokens)
        for t in changed:
            if t not in self.entries:
                bisect.insort(tokens, t)
        return tokens

    def _check_loss(
        self,
        cand: dict[int, Entry],
        tokens: list[int],
        changed: dict[int, Entry],
        has_allocs: Callable[[int, int], bool],
    ) -> None:
        """Refuse a merge that takes away space where we hold allocations."""
        for t, e in changed.items():
            if e.owner == self.me:
                continue
            cur = self.entries.get(t)
            was_ours = (cur.owner == self.me) if cur is not None else self.owner_of(t) == self.me
            if not was_ours:
                continue
            i = bisect.bisect_right(tokens, t)
            hi = tokens[i] if i < len(tokens) else self.end
            if has_allocs(t, hi):
                raise RingConflict(
                    "would_lose_allocations",
                    f"peer {e.owner.hex()} claims {t}-{hi} (v{e.version}) where we hold addresses",
                )

    def _check_free(
        self, cand: dict[int, Entry], tokens: list[int], changed: dict[int, Entry]
    ) -> None:
        """The changed entries and those they cut must report free <= their size."""
        for t in changed:
            i = bisect.bisect_left(tokens, t)
            for j in (i - 1, i):
                if 0 <= j < len(tokens):
                    tok = tokens[j]
                    hi = tokens[j + 1] if j + 1 < len(tokens) else self.end
                    if cand[tok].free > self.usable(tok, hi):
                        raise RingConflict("free_exceeds_size", f"entry {tok} reports too much")

    # -- the owner's operations ------------------------------------------------------------
    def _put(self, e: Entry) -> None:
        self.gen += 1
        if e.token not in self.entries:
            bisect.insort(self.tokens, e.token)
        self.entries[e.token] = e

    def _mine(self, t: int, free: int) -> Entry:
        cur = self.entries.get(t)
        return Entry(t, self.me, 1 if cur is None else cur.version + 1, free)

    def set_free(self, token: int, free: int) -> Entry | None:
        """Report our free count for one of our entries; the changed entry or None."""
        e = self.entries[token]
        if e.owner != self.me:
            raise ValueError("not our entry")
        if e.free == free:
            return None
        new = Entry(token, self.me, e.version + 1, free)
        self.entries[token] = new
        self.gen += 1
        return new

    def grant(
        self, lo: int, hi: int, peer: bytes, free_fn: Callable[[int, int], int]
    ) -> list[Entry]:
        """Give ``[lo, hi)`` (ours, with no allocations) to ``peer``; the changed entries.

        A whole entry changes owner; a range that starts inside an entry splits it (one new
        token); one that also ends inside carves a hole (a second new token, ours).
        ``free_fn(lo, hi)`` is our free count for a range we keep.
        """
        if not self.start <= lo < hi <= self.end or peer == self.me:
            raise ValueError("bad grant")
        first = self.entry_at(lo)
        if first is None:
            raise ValueError("grant before the first token")
        for t in [first.token] + [t for t in self.tokens if lo < t < hi]:
            if self.entries[t].owner != self.me:
                raise ValueError(f"grant of space we do not own at {t}")
        touched = [t for t in self.tokens if lo <= t < hi]
        if hi < self.end and hi not in self.entries:
            self._put(Entry(hi, self.me, 1, 0))  # carve: the tail after the hole stays ours
            touched.append(hi)
        if lo != first.token:
            self._put(self._mine(first.token, 0))  # split: the head before lo stays ours
            self._put(Entry(lo, peer, 1, 0))
            touched += [first.token, lo]
        for t in touched:
            e = self.entries[t]
            n = self.next_token(t)
            if lo <= t < hi:
                version = 1 if t == lo and lo != first.token else e.version + 1
                self.entries[t] = Entry(t, peer, version, self.usable(t, n))
            else:
                self.entries[t] = Entry(t, self.me, e.version, free_fn(t, n))
        self.gen += 1
        return [self.entries[t] for t in sorted(set(touched))]

    def takeover(self, dead: bytes) -> list[Entry]:
        """``rmpeer``: every entry of ``dead`` becomes ours (version + 1, all free)."""
        if dead == self.me:
            raise ValueError("cannot take over our own ranges")
        out = []
        for t, n, e in self.ranges():
            if e.owner == dead:
                new = Entry(t, self.me, e.version + 1, self.usable(t, n))
                self.entries[t] = new
                out.append(new)
        self.gen += 1
        return out

    def give_all(self, peer: bytes) -> list[Entry]:
        """A clean leave: every entry of ours goes to ``peer`` (whole entries, all free)."""
        out = []
        for t, n, e in self.ranges():
            if e.owner == self.me:
                new = Entry(t, peer, e.version + 1, self.usable(t, n))
                self.entries[t] = new
                out.append(new)
        self.gen += 1
        return out

    def replace(self, seeds: tuple[bytes, ...], entries: Iterable[Entry]) -> None:
        """Load a persisted view (restore); validated by ``check``."""
        self.seeds = seeds
        self.entries = {e.token: e for e in entries}
        self.tokens = sorted(self.entries)
        self.gen += 1
        self.check()
