"""The hole-punching schedule (traversal.plan): roles agreed, opener never crosses."""

from __future__ import annotations

import random

from sleeve.traversal import plan


def test_both_sides_agree_on_one_opener_and_one_crosser() -> None:
    rng = random.Random(24)
    for _ in range(2000):
        a, b = rng.getrandbits(32), rng.getrandbits(32)
        n = rng.randint(1, 9)
        pa = plan.plan_for(True, a, b, n)  # side A has the smaller id
        pb = plan.plan_for(False, b, a, n)
        assert pa.opener != pb.opener, (a, b)


def test_roles_vary_between_attempts() -> None:
    rng = random.Random(7)
    openers = {plan.plan_for(True, rng.getrandbits(32), rng.getrandbits(32), 1).opener
               for _ in range(64)}
    assert openers == {True, False}


def test_the_opener_never_sends_past_its_own_nat_after_opening() -> None:
    for n in range(1, 8):
        p = plan.Plan(True, plan.HOPS[(n - 1) // 2 % len(plan.HOPS)])
        steps = [(t / 4, *p.step(t / 4)) for t in range(int(plan.ATTEMPT_TIME * 4) + 1)]
        assert all(send for _, send, _ in steps)
        assert all(ttl is not None for _, _, ttl in steps)  # never the full TTL
        first = [ttl for age, _, ttl in steps if age < plan.OPEN_TIME]
        later = [ttl for age, _, ttl in steps if age >= plan.OPEN_TIME]
        assert set(first) == {p.hops + 1} and set(later) == {p.hops}


def test_the_crosser_waits_out_stale_entries_before_crossing_again() -> None:
    p = plan.Plan(False, 1)
    assert p.step(0.0) == (False, None)  # the opener opens first
    assert p.step(plan.OPEN_TIME) == (True, None)
    quiet = [p.step(t / 4)[0] for t in range(int(plan.FIRST_CROSS_END * 4),
                                             int(plan.SECOND_CROSS * 4))]
    assert not any(quiet)
    # Linux keeps an unreplied UDP entry 30 s after its last datagram
    assert plan.SECOND_CROSS - plan.FIRST_CROSS_END > 30
    assert p.step(plan.SECOND_CROSS) == (True, None)
    assert plan.ATTEMPT_TIME > plan.SECOND_CROSS + 5


def test_hop_guesses_cycle_and_backoff_is_bounded() -> None:
    hops = [plan.plan_for(True, 2, 4, n).hops for n in range(1, 8)]
    assert hops == [1, 1, 2, 2, 3, 3, 1]
    waits = [plan.backoff(k) for k in range(1, 30)]
    assert waits[0] >= 30  # quiet long enough for the NATs to forget the last attempt
    assert waits == sorted(waits) and max(waits) == plan.BACKOFF_MAX


def test_backoff_is_bounded_after_any_number_of_failures() -> None:
    # 1.5 ** n overflows a float past n ~ 1750: weeks of failed attempts to one peer
    assert plan.backoff(10**6) == plan.backoff(10**4) == plan.BACKOFF_MAX
