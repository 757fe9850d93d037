"""ReplayWindow against an obviously-correct reference model.

The model keeps *every* counter it ever accepted in a set plus the highest one, and
accepts a counter iff it is in range, not seen, and ``counter > highest - size``.
Drop reasons must match exactly: ``bad_counter`` (outside 0..2**64-1) before
``too_old`` (at or behind the trailing edge) before ``replay`` (inside, seen).

The classic cases are ported from wireguard-go's ``replay_test.go`` (itself from
RFC 6479 style filters). wireguard-go accepts ``counter + windowSize >= last``, i.e.
``windowSize + 1`` counters including the highest; ours accepts ``size`` counters
(``diff < size``), so wireguard's ``windowSize`` maps to our ``size - 1`` and its
``T_LIM = windowSize + 1`` to our ``size``. Its ``RejectAfterMessages`` maps to
``2**64`` (the first counter that is ``bad_counter`` here).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleeve.proto.replay import MAX_COUNTER, WINDOW, ReplayWindow

SIZES = (64, 100, WINDOW)  # 100: not a power of two, not a multiple of 64


class RefWindow:
    """The specification: a set of seen counters plus the highest one."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.highest = -1

    def accept(self, counter: int) -> str | None:
        if counter < 0 or counter > MAX_COUNTER:
            return "bad_counter"
        if counter <= self.highest - self.size:
            return "too_old"
        if counter in self.seen:
            return "replay"
        self.seen.add(counter)
        self.highest = max(self.highest, counter)
        # Forgetting what can never be accepted again keeps the model small; it does not
        # change any answer because those counters are "too_old" first.
        if len(self.seen) > 4 * self.size:
            self.seen = {c for c in self.seen if c > self.highest - self.size}
        return None


# ---------------------------------------------------------------------------- model checks

# An operation is (kind, amount); it is turned into a counter relative to the model's
# current highest, so generated sequences stay interesting whatever came before.
OP = st.one_of(
    st.tuples(st.just("next"), st.integers(1, 3)),  # in order, small gaps
    st.tuples(st.just("back"), st.integers(0, 80)),  # reordered / duplicate, near the top
    st.tuples(st.just("edge"), st.integers(-3, 3)),  # around the trailing edge of the window
    st.tuples(st.just("seen"), st.integers(0, 10_000)),  # exact duplicate of an earlier one
    st.tuples(st.just("jump"), st.integers(1, 3 * WINDOW)),  # far future, more than a window
    st.tuples(st.just("huge"), st.integers(1, 2**62)),  # forged-looking leap
    st.tuples(st.just("abs"), st.integers(0, MAX_COUNTER)),  # anywhere, mostly very old
    st.tuples(st.just("top"), st.integers(0, 3)),  # near 2**64-1
    st.tuples(st.just("bad"), st.integers(0, 2)),  # out of range
)


def resolve(op: tuple[str, int], ref: RefWindow, history: list[int]) -> int:
    kind, n = op
    h = ref.highest
    if kind == "next":
        return h + n
    if kind == "back":
        return h - n
    if kind == "edge":
        return h - ref.size + n  # n == 0 is the first too_old one, n == 1 the oldest accepted
    if kind == "seen":
        return history[n % len(history)] if history else 0
    if kind in ("jump", "huge"):
        return h + n
    if kind == "abs":
        return n
    if kind == "top":
        return MAX_COUNTER - n
    return (-1 - n) if n % 2 else (MAX_COUNTER + 1 + n)


def run_against_model(size: int, ops: list[tuple[str, int]]) -> None:
    w = ReplayWindow(size)
    ref = RefWindow(size)
    history: list[int] = []
    for i, op in enumerate(ops):
        c = resolve(op, ref, history)
        want = ref.accept(c)
        got = w.accept(c)
        assert got == want, f"step {i}: accept({c}) -> {got!r}, model says {want!r} ({op})"
        assert w.highest == ref.highest
        history.append(c)


@pytest.mark.parametrize("size", SIZES)
@settings(max_examples=60, deadline=None)
@given(ops=st.lists(OP, min_size=50, max_size=300))
def test_matches_model(size: int, ops: list[tuple[str, int]]) -> None:
    run_against_model(size, ops)


@pytest.mark.parametrize("size", SIZES)
@settings(max_examples=40, deadline=None)
@given(
    start=st.integers(0, 2**63),
    perm=st.permutations(range(40)),
    dup=st.lists(st.integers(0, 39), max_size=20),
)
def test_reordered_burst(size: int, start: int, perm: list[int], dup: list[int]) -> None:
    """A burst reordered inside the window is accepted once each, duplicates are replays."""
    w = ReplayWindow(size)
    ref = RefWindow(size)
    for c in [start + p for p in perm] + [start + d for d in dup]:
        assert w.accept(c) == ref.accept(c)
    for p in range(40):
        assert w.accept(start + p) == "replay"


@pytest.mark.parametrize("size", SIZES)
def test_long_random_walk(size: int) -> None:
    """Tens of thousands of mixed operations from a seeded PRNG (no shrinking, just volume)."""
    rng = random.Random(size)
    kinds = ["next"] * 6 + ["back"] * 4 + ["edge", "seen", "seen", "jump", "abs", "top", "bad"]
    ops: list[tuple[str, int]] = []
    for _ in range(20_000):
        k = rng.choice(kinds)
        if k == "next":
            n = rng.randint(1, 3)
        elif k == "back":
            n = rng.randint(0, size + 8)
        elif k == "edge":
            n = rng.randint(-3, 3)
        elif k == "jump":
            n = rng.randint(1, 3 * size)
        elif k == "abs":
            n = rng.randint(0, MAX_COUNTER)
        elif k in ("top", "bad"):
            n = rng.randint(0, 3)
        else:
            n = rng.randint(0, 10_000)
        ops.append((k, n))
    run_against_model(size, ops)


# ---------------------------------------------------------------------------- classic cases

R = MAX_COUNTER + 1  # wireguard-go's RejectAfterMessages: the first unusable counter


def check(w: ReplayWindow, cases: Sequence[tuple[int, str | None]]) -> None:
    for i, (c, want) in enumerate(cases, 1):
        assert w.accept(c) == want, f"case {i}: accept({c})"


@pytest.mark.parametrize("size", SIZES)
def test_wireguard_sequence(size: int) -> None:
    t = size  # wireguard-go's T_LIM
    check(ReplayWindow(size), [
        (0, None),  # 1
        (1, None),  # 2
        (1, "replay"),  # 3
        (9, None),  # 4
        (8, None),  # 5
        (7, None),  # 6
        (7, "replay"),  # 7
        (t, None),  # 8
        (t - 1, None),  # 9
        (t - 1, "replay"),  # 10
        (t - 2, None),  # 11
        (2, None),  # 12: diff = size - 2, still inside
        (2, "replay"),  # 13
        (t + 16, None),  # 14
        (3, "too_old"),  # 15
        (t + 16, "replay"),  # 16
        (t * 4, None),  # 17: jump by more than the window
        (t * 4 - (t - 1), None),  # 18: the oldest counter still inside
        (10, "too_old"),  # 19
        (t * 4 - t, "too_old"),  # 20: just outside
        (t * 4 - (t + 1), "too_old"),  # 21
        (t * 4 - (t - 2), None),  # 22
        (t * 4 + 1 - t, "replay"),  # 23: same counter as case 18
        (0, "too_old"),  # 24
        (R, "bad_counter"),  # 25
        (R - 1, None),  # 26
        (R, "bad_counter"),  # 27
        (R - 1, "replay"),  # 28
        (R - 2, None),  # 29
        (R + 1, "bad_counter"),  # 30
        (R + 2, "bad_counter"),  # 31
        (R - 2, "replay"),  # 32
        (R - 3, None),  # 33
        (0, "too_old"),  # 34
    ])


@pytest.mark.parametrize("size", SIZES)
def test_wireguard_bulk(size: int) -> None:
    wg = size - 1  # wireguard-go's windowSize
    # bulk 1: fill the window from 1, then 0 is exactly the oldest accepted counter
    w = ReplayWindow(size)
    check(w, [(i, None) for i in range(1, wg + 1)] + [(0, None), (0, "replay")])
    # bulk 2: shifted by one, 0 falls off the window
    w = ReplayWindow(size)
    check(w, [(i, None) for i in range(2, wg + 2)] + [(1, None), (0, "too_old")])
    # bulk 3: strictly descending, all inside
    w = ReplayWindow(size)
    check(w, [(i, None) for i in range(wg + 1, 0, -1)])
    # bulk 4: descending from one further, 0 is out
    w = ReplayWindow(size)
    check(w, [(i, None) for i in range(wg + 2, 1, -1)] + [(0, "too_old")])
    # bulk 5: descending, then a new highest pushes 0 out
    w = ReplayWindow(size)
    check(w, [(i, None) for i in range(wg, 0, -1)] + [(wg + 1, None), (0, "too_old")])
    # bulk 6: descending, 0 while still inside, then a new highest
    w = ReplayWindow(size)
    check(w, [(i, None) for i in range(wg, 0, -1)] + [(0, None), (wg + 1, None)])


@pytest.mark.parametrize("size", SIZES)
def test_first_counter_and_replay_of_zero(size: int) -> None:
    w = ReplayWindow(size)
    assert w.highest == -1
    check(w, [(0, None), (0, "replay")])
    assert w.highest == 0


@pytest.mark.parametrize("size", SIZES)
def test_first_counter_may_be_large(size: int) -> None:
    w = ReplayWindow(size)
    check(w, [(10**9, None), (10**9 - size + 1, None), (10**9 - size, "too_old"), (0, "too_old")])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("jump", [1, 2, 63, 64, 65])
def test_jump_around_window_size(size: int, jump: int) -> None:
    """Exercise both branches of the shift (kept bits vs. reset) at the exact boundary."""
    for j in {size - jump, size, size + jump - 1}:
        if j <= 0:
            continue
        w = ReplayWindow(size)
        check(w, [(c, None) for c in range(0, 50)])
        top = 49 + j
        check(w, [(top, None)])
        for c in range(0, 50):
            want = "too_old" if c <= top - size else "replay"
            assert w.accept(c) == want, (j, c)
        # everything unseen inside the window is still acceptable once
        for c in range(max(50, top - size + 1), top):
            assert w.accept(c) is None, (j, c)
            assert w.accept(c) == "replay", (j, c)


@pytest.mark.parametrize("size", SIZES)
def test_jump_by_more_than_window_clears_state(size: int) -> None:
    w = ReplayWindow(size)
    check(w, [(c, None) for c in range(size)])
    top = 2 * size + 5
    check(w, [(top, None)])
    # all counters inside the new window were never seen: each accepted exactly once
    for c in range(top - size + 1, top):
        assert w.accept(c) is None
    for c in range(top - size + 1, top + 1):
        assert w.accept(c) == "replay"
    for c in range(0, top - size + 1):
        assert w.accept(c) == "too_old"


BAD = st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_COUNTER + 1))


@settings(max_examples=100, deadline=None)
@given(prefix=st.lists(st.integers(0, 5000), max_size=30), bad=BAD)
def test_bad_counter(prefix: list[int], bad: int) -> None:
    w = ReplayWindow(64)
    ref = RefWindow(64)
    for c in prefix:
        assert w.accept(c) == ref.accept(c)
    before = w.highest
    assert w.accept(bad) == "bad_counter"
    assert w.highest == before  # a bad counter leaves no trace
    for c in prefix:
        assert w.accept(c) == ref.accept(c)


@pytest.mark.parametrize("bad", [-1, -(2**64), 2**64, 2**64 + 1, 2**70])
def test_bad_counter_examples(bad: int) -> None:
    w = ReplayWindow()
    assert w.accept(bad) == "bad_counter"
    assert w.accept(0) is None
    assert w.accept(MAX_COUNTER) is None
    assert w.accept(bad) == "bad_counter"
    assert w.accept(MAX_COUNTER) == "replay"


@pytest.mark.parametrize("size", [0, 1, 63, -5])
def test_too_small_window_rejected(size: int) -> None:
    with pytest.raises(ValueError):
        ReplayWindow(size)
