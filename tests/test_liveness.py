"""Link liveness and UDP/TCP choice on the sans-IO core, with a fake clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sleeve.proto.liveness import DEAD_AFTER, TCP_AFTER, state, transport


def st_(now: float, **kw: object) -> tuple[str, str]:
    base: dict[str, object] = dict(heard_at=0.0, tcp_heard_at=0.0, over_tcp=False,
                                   confirmed=False, pmtu_known=False, pmtu_reason="probing")
    base.update(kw)
    return state(now, **base)  # type: ignore[arg-type]


def test_a_fresh_link_goes_pending_then_established_as_evidence_arrives() -> None:
    assert st_(1.0, tcp_heard_at=0.5) == ("pending",
                                          "no authenticated UDP datagram from the peer yet")
    assert st_(1.0, tcp_heard_at=0.5, heard_at=0.9)[1].startswith("peer has not yet confirmed")
    assert st_(1.0, tcp_heard_at=0.5, heard_at=0.9, confirmed=True) == \
        ("pending", "path MTU: probing")
    assert st_(1.0, tcp_heard_at=0.5, heard_at=0.9, confirmed=True, pmtu_known=True) == \
        ("established", "UDP heartbeats both ways")


def test_silence_on_both_transports_is_death_and_one_is_enough_to_live() -> None:
    ok = dict(confirmed=True, pmtu_known=True)
    assert st_(100.0, heard_at=100 - DEAD_AFTER, tcp_heard_at=90.0, **ok)[0] == "established"
    assert st_(100.0, heard_at=100 - DEAD_AFTER, tcp_heard_at=90.0, **ok)[1] == \
        "UDP to the peer; its datagrams reach us over TCP"
    assert st_(100.0, heard_at=80.0, tcp_heard_at=100 - DEAD_AFTER, **ok) == \
        ("pending", f"nothing from the peer over UDP or TCP for {DEAD_AFTER:.0f}s")


def test_over_tcp_is_established_and_says_why() -> None:
    assert st_(10.0, tcp_heard_at=9.0, over_tcp=True) == (
        "established", "over TCP: the peer receives no UDP datagrams from us; none from it "
        "either")
    assert st_(10.0, tcp_heard_at=9.0, heard_at=9.5, over_tcp=True)[1] == \
        "over TCP: the peer receives no UDP datagrams from us"


def test_fallback_to_tcp_after_the_grace_and_back_when_confirmed() -> None:
    kw = dict(heard_at=0.0, told_ok=False, established_at=100.0, virtual=False)
    assert not transport(100 + TCP_AFTER - 0.01, confirmed=False, **kw).over_tcp
    assert transport(100 + TCP_AFTER, confirmed=False, **kw).over_tcp
    assert not transport(200.0, confirmed=True, **kw).over_tcp  # the peer hears us again


def test_a_relayed_control_connection_never_carries_data() -> None:
    t = transport(1000.0, heard_at=0.0, told_ok=False, confirmed=False,
                  established_at=0.0, virtual=True)
    assert not t.over_tcp  # the mesh relays instead


def test_udp_lost_is_said_once_we_stop_hearing_and_only_if_we_had_said_ok() -> None:
    kw = dict(confirmed=True, established_at=0.0, virtual=False)
    assert not transport(50.0, heard_at=50 - DEAD_AFTER + 0.01, told_ok=True, **kw).send_udp_lost
    assert transport(50.0, heard_at=50 - DEAD_AFTER, told_ok=True, **kw).send_udp_lost
    assert not transport(50.0, heard_at=0.0, told_ok=False, **kw).send_udp_lost


@given(st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0, 1e6), st.booleans(), st.booleans(),
       st.booleans())
def test_state_is_total_and_dead_means_pending(now: float, heard: float, tcp: float,
                                              over_tcp: bool, confirmed: bool,
                                              pmtu: bool) -> None:
    s, why = st_(now, heard_at=heard, tcp_heard_at=tcp, over_tcp=over_tcp,
                 confirmed=confirmed, pmtu_known=pmtu)
    assert s in ("pending", "established") and why
    if now - max(heard, tcp) >= DEAD_AFTER:
        assert s == "pending"
