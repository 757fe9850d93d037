"""MacTable against a reference model of its documented rules.

The model holds ``mac -> (owner, last_seen)`` and treats an entry older than
``max_age`` as absent (that is all "expired" means to a caller). Rules:

- an entry is *held* while its owner refreshed it within ``hold`` seconds;
- ``learn_local`` does not take a held remote entry (returns False, counts a
  conflict); over a local entry it refreshes; a live remote entry that is no longer
  held becomes LOCAL (a move); otherwise it inserts a LOCAL entry;
- ``learn_remote`` refreshes its own entry, does not take a held entry of another
  owner (returns ``mac_takeover``, counts a refusal), takes one that is no longer held
  (a move; relearning an expired entry is a fresh learn, not a move);
- (the per-peer cap is not modelled here: ``test_peer_cap_*`` check it on its own)
- last-seen is only refreshed when older than ``min(REFRESH, max_age / 2, hold / 2)`` (the
  module's documented per-frame optimisation, capped so that a MAC seen continuously
  never expires), so the model refreshes under exactly that rule and the visible ages
  can be compared exactly;
- ``lookup`` returns the owner of a live entry, never of an expired one;
- inserting when ``max_size`` live entries exist first drops expired entries and
  then evicts the ``max(1, max_size // 8)`` least recently refreshed ones.

Eviction among entries with the *same* last-seen time is not specified (the table
happens to use dict order); the model checks that the table's choice is a valid
one (exactly that many, none newer than a survivor) and then adopts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from sleeve.proto.mactable import HOLD, LOCAL, MAX_AGE, REFRESH, MacTable, is_group

MAX_SIZE = 8
AGE = 30.0  # > REFRESH, small enough that random walks expire entries
HOLD_T = 12.0  # < AGE: entries stop being held before they expire
MACS = [bytes((2, 0, 0, 0, 0, i)) for i in range(12)]  # more MACs than slots
PEERS = [bytes([0xA0 + i]) * 8 for i in range(3)]


@dataclass
class Model:
    max_size: int
    max_age: float
    hold: float = HOLD_T
    d: dict[bytes, tuple[bytes, float]] = field(default_factory=dict)
    conflicts: int = 0
    refused: int = 0
    moves: int = 0

    @property
    def refresh(self) -> float:
        return min(REFRESH, self.max_age / 2, self.hold / 2)

    def live(self, mac: bytes, now: float) -> tuple[bytes, float] | None:
        e = self.d.get(mac)
        if e is None or now - e[1] > self.max_age:
            return None
        return e

    def visible(self, now: float) -> dict[bytes, tuple[bytes, float]]:
        return {m: (o, now - s) for m, (o, s) in self.d.items() if now - s <= self.max_age}

    def lookup(self, mac: bytes, now: float) -> bytes | None:
        e = self.live(mac, now)
        return None if e is None else e[0]

    def _refresh(self, mac: bytes, owner: bytes, seen: float, now: float) -> None:
        if now - seen > self.refresh:
            self.d[mac] = (owner, now)

    def learn_local(self, mac: bytes, now: float) -> tuple[bool, bool]:
        """Return (result, inserted a new entry)."""
        e = self.live(mac, now)
        if e is not None:
            if e[0] == LOCAL:
                self._refresh(mac, LOCAL, e[1], now)
                return True, False
            if now - e[1] <= self.hold:
                self.conflicts += 1
                return False, False
            self.moves += 1
            self.d[mac] = (LOCAL, now)
            return True, False
        return True, True

    def learn_remote(self, mac: bytes, peer: bytes, now: float) -> tuple[str | None, bool]:
        """Return (result, True if a new entry must be inserted)."""
        e = self.live(mac, now)
        if e is not None:
            if e[0] == peer:
                self._refresh(mac, peer, e[1], now)
                return None, False
            if now - e[1] <= self.hold:
                self.refused += 1
                return "mac_takeover", False
            self.moves += 1
            self.d[mac] = (peer, now)
            return None, False
        return None, True

    def insert(self, mac: bytes, owner: bytes, now: float, table: MacTable) -> None:
        """Insert, checking an eviction (if one is due) against what ``table`` chose."""
        self.d = {m: e for m, e in self.d.items() if now - e[1] <= self.max_age and m != mac}
        if len(self.d) >= self.max_size:
            n = max(1, self.max_size // 8)
            survivors = {m for m, _o, _a in table.entries(now)}
            evicted = [m for m in self.d if m not in survivors]
            assert len(evicted) == n, f"evicted {len(evicted)}, expected {n}"
            newest_evicted = max(self.d[m][1] for m in evicted)
            oldest_kept = min((e[1] for m, e in self.d.items() if m in survivors), default=now)
            assert newest_evicted <= oldest_kept, "evicted an entry newer than a survivor"
            for m in evicted:
                del self.d[m]
        self.d[mac] = (owner, now)

    def forget_peer(self, peer: bytes) -> None:
        self.d = {m: e for m, e in self.d.items() if e[0] != peer}


def table_visible(t: MacTable, now: float) -> dict[bytes, tuple[bytes, float]]:
    """The table's live entries, read without mutating it (lookup would purge)."""
    return {m: (o, age) for m, o, age in t.entries(now) if age <= t.max_age}


MAC_I = st.integers(0, 2) | st.integers(0, len(MACS) - 1)  # often the same few MACs
PEER_I = st.integers(0, len(PEERS) - 1)
OPS = st.one_of(
    st.tuples(st.just("local"), MAC_I, st.just(0)),
    st.tuples(st.just("remote"), MAC_I, PEER_I),
    st.tuples(st.just("lookup"), MAC_I, st.just(0)),
    st.tuples(st.just("tick"), st.sampled_from([0, 1, 2, 4, 5, 9, 10, 11, 12, 13, 29, 30, 31]),
              st.just(0)),
    st.tuples(st.just("expire"), st.just(0), st.just(0)),
    st.tuples(st.just("forget"), PEER_I, st.just(0)),
)


def check_invariants(t: MacTable, m: Model, now: float) -> None:
    assert len(t) <= t.max_size
    assert table_visible(t, now) == m.visible(now)
    assert t.conflicts == m.conflicts
    assert t.refused == m.refused
    assert t.moves == m.moves


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(OPS, min_size=30, max_size=150), max_size=st.sampled_from([1, 2, 8, 16]),
       max_age=st.sampled_from([AGE, 8.0]))
def test_matches_model(ops: list[tuple[str, int, int]], max_size: int, max_age: float) -> None:
    t = MacTable(max_size=max_size, max_age=max_age, hold=HOLD_T)
    m = Model(max_size, max_age, min(HOLD_T, max_age))
    now = 1000.0
    for kind, a, b in ops:
        if kind == "tick":
            now += a
        elif kind == "local":
            mac = MACS[a]
            want, insert = m.learn_local(mac, now)
            got = t.learn_local(mac, now)
            assert got == want, (kind, a, now)
            if insert:
                m.insert(mac, LOCAL, now, t)
        elif kind == "remote":
            mac, peer = MACS[a], PEERS[b]
            want_r, insert = m.learn_remote(mac, peer, now)
            assert t.learn_remote(mac, peer, now) == want_r, (kind, a, b, now)
            if insert:
                m.insert(mac, peer, now, t)
        elif kind == "lookup":
            got_owner = t.lookup(MACS[a], now)
            assert got_owner == m.lookup(MACS[a], now), (kind, a, now)
        elif kind == "expire":
            t.expire(now)
        else:
            t.forget_peer(PEERS[a])
            m.forget_peer(PEERS[a])
        check_invariants(t, m, now)
    # and every MAC looked up at the end (this purges, so it is done last)
    for mac in MACS:
        assert t.lookup(mac, now) == m.lookup(mac, now)
    assert len(t) <= t.max_size


# ------------------------------------------------------------------ invariants, no model

@settings(max_examples=100, deadline=None)
@given(ops=st.lists(OPS, min_size=30, max_size=150))
def test_invariants(ops: list[tuple[str, int, int]]) -> None:
    """Size bound, no expired answer, nobody takes an address another owner holds."""
    t = MacTable(max_size=MAX_SIZE, max_age=AGE, hold=HOLD_T)
    now = 0.0
    for kind, a, b in ops:
        if kind == "tick":
            now += a
            continue
        mac = MACS[a]
        if kind == "local":
            before = {m: (o, age) for m, o, age in t.entries(now)}
            prev = before.get(mac)
            ok = t.learn_local(mac, now)
            if prev is not None and prev[0] != LOCAL and prev[1] <= HOLD_T:
                assert ok is False
                assert t.lookup(mac, now) == prev[0]
            else:
                assert ok is True
                assert t.lookup(mac, now) == LOCAL
        elif kind == "remote":
            prev = {m: (o, age) for m, o, age in t.entries(now)}.get(mac)
            got = t.learn_remote(mac, PEERS[b], now)
            if prev is not None and prev[0] != PEERS[b] and prev[1] <= HOLD_T:
                assert got == "mac_takeover"
                assert t.lookup(mac, now) == prev[0]  # the holder keeps it
            else:
                assert got is None
                assert t.lookup(mac, now) == PEERS[b]
        elif kind == "lookup":
            ages = {m: age for m, _o, age in t.entries(now)}
            owner = t.lookup(mac, now)
            if owner is not None:
                assert ages[mac] <= AGE
            elif mac in ages:
                assert ages[mac] > AGE
        elif kind == "expire":
            t.expire(now)
            assert all(age <= AGE for _m, _o, age in t.entries(now))
        else:
            t.forget_peer(PEERS[a % len(PEERS)])
            assert all(o != PEERS[a % len(PEERS)] for _m, o, _a in t.entries(now))
        assert len(t) <= MAX_SIZE


# ------------------------------------------------------------------ worked examples

A, B = PEERS[0], PEERS[1]
M = MACS[0]


def test_local_does_not_take_a_held_remote_address() -> None:
    t = MacTable(max_age=AGE, hold=HOLD_T)
    t.learn_remote(M, A, 0.0)
    assert t.learn_local(M, HOLD_T) is False  # exactly hold old is still held
    assert t.conflicts == 1
    assert t.lookup(M, HOLD_T) == A
    assert t.learn_local(M, HOLD_T + 0.5) is True  # silent for longer: it moved here
    assert (t.lookup(M, HOLD_T + 0.5), t.moves, t.conflicts) == (LOCAL, 1, 1)


def test_remote_does_not_take_a_held_address_until_the_holder_is_silent() -> None:
    t = MacTable(max_age=AGE, hold=HOLD_T)
    assert t.learn_local(M, 0.0)
    assert t.learn_remote(M, A, 1.0) == "mac_takeover"  # our own port holds it
    assert (t.lookup(M, 1.0), t.refused, t.moves) == (LOCAL, 1, 0)
    assert t.learn_remote(M, A, HOLD_T + 0.5) is None  # silent here: a genuine move
    assert (t.lookup(M, HOLD_T + 0.5), t.moves) == (A, 1)
    now = HOLD_T + 0.5
    for _i in range(50):  # A keeps using it: B's claims all fail, however many
        now += 1.0
        assert t.learn_remote(M, A, now) is None
        assert t.learn_remote(M, B, now) == "mac_takeover"
    assert (t.lookup(M, now), t.refused, t.moves) == (A, 51, 1)
    assert t.learn_remote(M, B, now + HOLD_T + REFRESH) is None  # A went quiet
    assert t.lookup(M, now + HOLD_T + REFRESH) == B


def test_holder_leaving_releases_its_addresses_at_once() -> None:
    t = MacTable(max_age=AGE, hold=HOLD_T)
    t.learn_remote(M, A, 0.0)
    assert t.learn_remote(M, B, 1.0) == "mac_takeover"
    t.forget_peer(A)  # A's link went down, or A left the mesh
    assert t.learn_remote(M, B, 1.0) is None
    assert t.lookup(M, 1.0) == B


def test_default_hold_is_a_minute_and_below_max_age() -> None:
    t = MacTable()
    assert (t.hold, HOLD) == (60.0, 60.0)
    assert t.hold < t.max_age


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 40), st.integers(0, len(PEERS) - 1),
                              st.sampled_from([0.0, 0.0, 0.5, 3.0, 31.0])),
                    min_size=10, max_size=200))
def test_peer_cap_bounds_live_addresses_per_peer(ops: list[tuple[int, int, float]]) -> None:
    cap = 5
    t = MacTable(max_size=64, max_age=AGE, hold=HOLD_T, max_per_peer=cap)
    now = 0.0
    for i, p, dt in ops:
        now += dt
        mac = bytes((2, 0, 0, 0, 0, i))
        held = {m: o for m, o, _a in t.entries(now)}
        before = sum(1 for o in held.values() if o == PEERS[p])
        got = t.learn_remote(mac, PEERS[p], now)
        if got == "mac_peer_cap":
            assert t.count(PEERS[p]) >= cap and held.get(mac) != PEERS[p]
            assert {m: o for m, o, _a in t.entries(now)} == held  # unchanged
        live = [o for _m, o, _a in t.entries(now)]
        for q in PEERS:
            assert live.count(q) <= cap
            assert live.count(q) <= t.count(q)  # the count covers every live entry
        if got is None and held.get(mac) != PEERS[p] and before < cap:
            assert t.lookup(mac, now) == PEERS[p]
    assert t.capped >= 0


def test_peer_cap_refuses_new_addresses_and_counts() -> None:
    t = MacTable(max_age=AGE, hold=HOLD_T, max_per_peer=3)
    for i in range(3):
        assert t.learn_remote(MACS[i], A, 0.0) is None
    assert t.learn_remote(MACS[3], A, 0.0) == "mac_peer_cap"
    assert t.learn_remote(MACS[0], A, 1.0) is None  # its own addresses still refresh
    assert t.learn_remote(MACS[3], B, 1.0) is None  # other peers are not affected
    assert (t.capped, t.count(A), t.count(B)) == (1, 3, 1)
    assert t.lookup(MACS[3], 1.0) == B
    assert t.learn_remote(MACS[4], A, 0.5) == "mac_peer_cap"  # no purge within a second
    # once A's old addresses expired, it may learn new ones
    assert t.learn_remote(MACS[4], A, AGE + 0.5) is None
    assert (t.count(A), t.capped) == (1, 2)


def test_refresh_only_when_older_than_refresh() -> None:
    t = MacTable(max_age=AGE, hold=HOLD_T * 2)
    t.learn_local(M, 0.0)
    t.learn_local(M, REFRESH)  # exactly REFRESH old: not refreshed
    assert t.entries(REFRESH) == [(M, LOCAL, REFRESH)]
    t.learn_local(M, REFRESH + 1)
    assert t.entries(REFRESH + 1) == [(M, LOCAL, 0.0)]
    # an entry seen continuously is never invisible: refreshed at least every REFRESH
    now = REFRESH + 1
    while now < 10 * AGE:
        now += 1.0
        assert t.learn_local(M, now)
        assert t.lookup(M, now) == LOCAL


def test_expired_entry_is_invisible() -> None:
    t = MacTable(max_age=AGE)
    t.learn_remote(M, A, 0.0)
    assert t.lookup(M, AGE) == A
    assert t.lookup(M, AGE + 0.001) is None
    assert len(t) == 0  # lookup purged it


def test_eviction_drops_least_recently_refreshed_eighth() -> None:
    t = MacTable(max_size=16, max_age=MAX_AGE)
    macs = [bytes((2, 0, 0, 0, 1, i)) for i in range(17)]
    for i, mac in enumerate(macs[:16]):
        t.learn_local(mac, float(i))
    assert len(t) == 16
    t.learn_local(macs[16], 100.0)
    assert t.evictions == 2 and len(t) == 15
    assert t.lookup(macs[0], 100.0) is None and t.lookup(macs[1], 100.0) is None
    assert all(t.lookup(mac, 100.0) == LOCAL for mac in macs[2:])


def test_full_table_of_expired_entries_is_purged_not_evicted() -> None:
    t = MacTable(max_size=4, max_age=AGE)
    for i in range(4):
        t.learn_local(MACS[i], 0.0)
    t.learn_local(MACS[4], AGE + 1)
    assert (len(t), t.evictions) == (1, 0)


def test_forget_peer() -> None:
    t = MacTable(max_age=AGE)
    t.learn_remote(MACS[0], A, 0.0)
    t.learn_remote(MACS[1], B, 0.0)
    t.learn_local(MACS[2], 0.0)
    assert t.forget_peer(A) == 1
    assert [m for m, _o, _a in t.entries(0.0)] == [MACS[1], MACS[2]]


def test_is_group() -> None:
    assert is_group(b"\xff" * 6) and is_group(b"\x01\x00\x5e\x00\x00\x01")
    assert not is_group(MACS[0])
    assert is_group(memoryview(b"\x33\x33\x00\x00\x00\x01"))


def test_stale_relearn_move_count_does_not_depend_on_lookups() -> None:
    """Relearning an expired entry from another peer is never a move, whether or not a
    lookup happened to purge it first."""
    t1 = MacTable(max_age=AGE)
    t1.learn_remote(M, A, 0.0)
    t1.learn_remote(M, B, 100.0)
    t2 = MacTable(max_age=AGE)
    t2.learn_remote(M, A, 0.0)
    t2.lookup(M, 100.0)
    t2.learn_remote(M, B, 100.0)
    assert (t1.moves, t2.moves) == (0, 0)


def test_learn_makes_entry_visible_even_with_short_max_age() -> None:
    t = MacTable(max_age=5.0)
    t.learn_local(M, 0.0)
    assert t.learn_local(M, 6.0) is True
    assert t.lookup(M, 6.0) == LOCAL
