"""proto.admission: per-source shares of the accept rate and the handshake slots."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sleeve.proto.admission import (
    MAX_HANDSHAKES,
    SOURCE_BURST,
    SOURCE_HANDSHAKES,
    Admission,
    source_key,
)


def test_one_source_gets_its_share_and_others_still_get_in() -> None:
    adm = Admission()
    admitted = [adm.admit("198.18.0.66", 0.0) for _ in range(100)]
    assert sum(r is None for r, _ in admitted) == SOURCE_HANDSHAKES
    assert {r for r, _ in admitted} >= {"source_handshake_limit"}
    assert adm.admit("198.18.0.1", 0.0)[0] is None  # a second source: its own share
    # the first source's slots come back when its handshakes end
    key = admitted[0][1]
    for _ in range(SOURCE_HANDSHAKES):
        adm.done(key)
    assert adm.handshaking == 1
    assert adm.admit("198.18.0.66", 100.0)[0] is None


def test_a_source_is_rate_limited_before_it_costs_the_global_bucket() -> None:
    adm = Admission(per_source=1000)
    got = [adm.admit("198.18.0.66", 0.0)[0] for _ in range(50)]
    assert got.count(None) == SOURCE_BURST and got.count("source_rate_limited") == 50 - 8
    assert adm.admit("198.18.0.1", 0.0)[0] is None  # global bucket: 40 - 8 used


def test_global_caps_still_hold_over_many_sources() -> None:
    adm = Admission()
    got = [adm.admit(f"198.18.{i // 250}.{i % 250}", 0.0)[0] for i in range(200)]
    assert got.count(None) == MAX_HANDSHAKES
    assert adm.handshaking == MAX_HANDSHAKES


def test_ipv6_sources_are_slash_64s_and_mapped_v4_is_v4() -> None:
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")
    assert source_key("::ffff:198.18.0.1") == "198.18.0.1"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("?") == "?"


def test_the_table_is_bounded_and_never_forgets_a_source_handshaking() -> None:
    adm = Admission(max_sources=8, max_handshakes=4, burst=1e9, rate=1e9)
    busy = adm.admit("198.18.1.1", 0.0)[1]
    for i in range(100):
        adm.admit(f"198.18.2.{i}", float(i))
        adm.done(f"198.18.2.{i}") if adm.handshaking > 1 else None
    assert adm.sources() <= 8
    assert busy in adm._sources


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.floats(0, 0.5)), max_size=300))
def test_invariants_under_random_use(ops: list[tuple[int, bool, float]]) -> None:
    adm = Admission(max_sources=4)
    now = 0.0
    held: list[str] = []
    for src, finish, dt in ops:
        now += dt
        if finish and held:
            adm.done(held.pop(0))
            continue
        r, key = adm.admit(f"198.18.0.{src}", now)
        if r is None:
            held.append(key)
        assert adm.handshaking == len(held) <= MAX_HANDSHAKES
        assert all(held.count(k) <= SOURCE_HANDSHAKES for k in held)
