"""Fast datapath, without a kernel: heartbeat codec, health state machine (fake clock),
two links talking over an in-memory wire, and the datapath's FDB bookkeeping against a
fake netlink."""

from __future__ import annotations

import concurrent.futures
import errno
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleeve.fastdp import health as hmod
from sleeve.fastdp.datapath import Datapath
from sleeve.fastdp.health import Action, Health, HealthError, HealthParams, State
from sleeve.fastdp.heartbeat import (
    MIN_SIZE,
    HeartbeatSession,
    decode,
    derive_key,
    encode,
    heartbeat_mac,
    peek_sender,
)
from sleeve.fastdp.link import Enter, FastdpLink, Leave, Send
from sleeve.fastdp.netlink import DatapathError

A, B = b"\xaa" * 8, b"\xbb" * 8
K_AB, K_BA = derive_key(b"\x01" * 32), derive_key(b"\x02" * 32)
MTU = 1406

# ---------------------------------------------------------------- heartbeat codec


def test_codec_roundtrip_is_exactly_the_requested_size() -> None:
    p = encode(K_AB, A, B, 7, 3, MTU, request=True)
    assert len(p) == MTU
    hb = decode(K_AB, p)
    assert not isinstance(hb, str)
    assert (hb.sender, hb.receiver, hb.seq, hb.echo, hb.request, hb.size) == (
        A, B, 7, 3, True, MTU)
    assert peek_sender(p) == A


def test_codec_rejects_tampering_truncation_and_the_wrong_key() -> None:
    p = bytearray(encode(K_AB, A, B, 1, 0, 200, request=False))
    assert decode(K_BA, bytes(p)) == "hb_auth"  # other direction's key: no reflection
    assert decode(K_AB, bytes(p[:150])) == "hb_truncated"
    assert decode(K_AB, bytes(p[:20])) == "hb_short"
    p[100] ^= 1  # padding is authenticated too
    assert decode(K_AB, bytes(p)) == "hb_auth"
    q = bytearray(encode(K_AB, A, B, 1, 0, 200, request=False))
    q[0] = ord("X")
    assert decode(K_AB, bytes(q)) == "hb_bad_header"
    assert peek_sender(bytes(q)) is None


def test_codec_accepts_ethernet_padding_after_size() -> None:
    p = encode(K_AB, A, B, 1, 0, MIN_SIZE, request=False)
    hb = decode(K_AB, p + b"\x00" * 4)
    assert not isinstance(hb, str) and hb.size == MIN_SIZE


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_never_raises_on_garbage(data: bytes) -> None:
    assert isinstance(decode(K_AB, data), str)
    peek_sender(data)


def test_keys_and_macs_are_stable_and_distinct() -> None:
    assert derive_key(b"\x01" * 32) == K_AB != K_BA
    assert len(K_AB) == 32
    ma, mb = heartbeat_mac(A), heartbeat_mac(B)
    assert ma != mb and len(ma) == 6
    assert ma[0] & 1 == 0 and ma[0] & 2 == 2  # unicast, locally administered


def _pair(size: int = MTU) -> tuple[HeartbeatSession, HeartbeatSession]:
    return (HeartbeatSession(A, B, K_AB, K_BA, size),
            HeartbeatSession(B, A, K_BA, K_AB, size))


def test_session_request_reply_gives_an_ack_with_rtt() -> None:
    a, b = _pair()
    req = a.make(10.0)
    got = b.on_payload(req, 10.01)
    assert got is not None and not got.ack and got.reply is not None
    back = a.on_payload(got.reply, 10.02)
    assert back is not None and back.ack and back.reply is None  # replies are not requests
    assert back.rtt == pytest.approx(0.02)
    # the same echo again (in b's next heartbeat) is not a second ack
    again = a.on_payload(b.make(10.5, request=False), 10.5)
    assert again is not None and not again.ack


def test_session_drops_replays_wrong_link_wrong_size_and_stale_echoes() -> None:
    a, b = _pair()
    req = a.make(1.0)
    assert b.on_payload(req, 1.0) is not None
    assert b.on_payload(req, 1.1) is None and b.drops["hb_replay"] == 1
    c = HeartbeatSession(B, b"\xcc" * 8, K_BA, K_AB, MTU)  # right key, wrong peer id
    assert c.on_payload(a.make(1.2), 1.2) is None and c.drops["hb_wrong_link"] == 1
    small_a, _ = _pair(size=600)
    assert b.on_payload(small_a.make(1.3), 1.3) is None and b.drops["hb_size"] == 1
    # an echo of a heartbeat sent longer than max_rtt ago proves nothing now
    a2, b2 = _pair()
    old = a2.make(0.0)
    reply = b2.on_payload(old, 0.1)
    assert reply is not None and reply.reply is not None
    late = a2.on_payload(reply.reply, 0.0 + a2.max_rtt + 0.5)
    assert late is not None and not late.ack


def test_session_reply_rate_limit() -> None:
    a, b = _pair()
    r1 = b.on_payload(a.make(5.0), 5.0)
    r2 = b.on_payload(a.make(5.01), 5.01)
    assert r1 is not None and r1.reply is not None
    assert r2 is not None and r2.reply is None


# ---------------------------------------------------------------- health state machine

P = HealthParams(probe_interval=0.25, interval=1.0, acks_needed=3, ack_gap=1.0,
                 probe_timeout=5.0, dead_after=3.5, backoff_initial=5.0, backoff_max=40.0,
                 stable_after=60.0)


def test_transition_table_covers_every_event_the_code_emits() -> None:
    # every state accepts ENABLE, DISABLE and ACK (acks can always arrive late)
    for s in State:
        for ev in (hmod.Event.ENABLE, hmod.Event.DISABLE, hmod.Event.ACK):
            assert (s, ev) in hmod._TRANSITIONS
    h = Health(0.0, P)
    h.state = State.SLEEVE
    with pytest.raises(HealthError):
        h._go(hmod.Event.PROVEN, 0.0)


def test_probing_sends_at_the_probe_interval_and_needs_k_consecutive_acks() -> None:
    h = Health(0.0, P)
    assert h.poll(0.0) == [Action.SEND_HEARTBEAT]
    assert h.poll(0.1) == []
    assert h.poll(0.25) == [Action.SEND_HEARTBEAT]
    assert h.on_heartbeat_ack(0.3) == []
    assert h.on_heartbeat_ack(0.55) == []
    assert "2/3" in h.reason(0.6)
    assert h.on_heartbeat_ack(0.8) == [Action.ENTER_FASTDP]
    assert h.state is State.FASTDP and h.reason(1.0) == "fastdp"
    # on fastdp heartbeats slow down to the interval
    assert h.poll(1.0) == []
    assert h.poll(1.8) == [Action.SEND_HEARTBEAT]


def test_acks_too_far_apart_restart_the_count() -> None:
    h = Health(0.0, P)
    h.on_heartbeat_ack(0.1)
    h.on_heartbeat_ack(0.2)
    h.on_heartbeat_ack(1.5)  # gap 1.3 s > ack_gap: count restarts at 1
    assert h.state is State.PROBING
    h.on_heartbeat_ack(1.7)
    assert h.on_heartbeat_ack(1.9) == [Action.ENTER_FASTDP]


def test_probe_timeout_falls_back_with_doubling_backoff() -> None:
    h = Health(0.0, P)
    t, waits = 0.0, []
    for _ in range(5):
        while h.state is not State.SLEEVE:
            h.poll(t)
            t += 0.25
        failed_at = t - 0.25
        assert h.reason(failed_at).startswith("sleeve: no answer to vxlan heartbeats")
        dl = h.next_deadline()
        assert dl is not None
        waits.append(round(dl - failed_at, 2))
        t = dl
        h.poll(t)
        assert h.state is State.PROBING
    assert waits == [5.0, 10.0, 20.0, 40.0, 40.0]  # capped at backoff_max


def _to_fastdp(h: Health, t: float) -> float:
    for _ in range(3):
        h.on_heartbeat_ack(t)
        t += 0.25
    assert h.state is State.FASTDP
    return t


def test_missed_heartbeats_leave_fastdp_then_reprobe() -> None:
    h = Health(0.0, P)
    _to_fastdp(h, 0.0)  # entered at 0.5
    h.on_heartbeat_ack(2.0)  # acks keep it there
    assert h.poll(5.0) == [Action.SEND_HEARTBEAT] and h.state is State.FASTDP
    assert h.next_deadline() == pytest.approx(5.5)  # last ack + dead_after
    out = h.poll(5.5)
    assert out == [Action.LEAVE_FASTDP] and h.state is State.SLEEVE
    assert h.reason(17.5).startswith("sleeve: vxlan heartbeats lost 12 s ago")
    assert h.next_deadline() == pytest.approx(5.5 + 5.0)
    assert h.poll(10.5) == [Action.SEND_HEARTBEAT]  # retry timer: probing again at once
    assert h.state is State.PROBING
    _to_fastdp(h, 10.6)
    assert h.transitions == 3


def test_long_stay_on_fastdp_resets_the_backoff() -> None:
    h = Health(0.0, P)
    for k in range(3):  # three quick losses: backoff 5, 10, 20
        t0 = 100.0 * k
        h.state, h._since = State.SLEEVE, t0
        h._retry_at = t0
        h.poll(t0)
        t = _to_fastdp(h, t0)
        h.poll(t + 3.6)
        assert h.state is State.SLEEVE
    assert h.next_deadline() == pytest.approx(t + 3.6 + 20.0)
    t = 1000.0
    h._retry_at = t
    h.poll(t)
    t = _to_fastdp(h, t)
    for i in range(70):  # 70 s on fastdp with acks
        h.on_heartbeat_ack(t + i)
        h.poll(t + i)
    end = t + 69 + 3.5
    assert h.poll(end) == [Action.LEAVE_FASTDP]
    assert h.next_deadline() == pytest.approx(end + 5.0)


def test_disable_and_enable() -> None:
    h = Health(0.0, P)
    t = _to_fastdp(h, 0.0)
    assert h.disable("encryption required", t) == [Action.LEAVE_FASTDP]
    assert h.state is State.DISABLED and h.reason(t) == "sleeve: encryption required"
    assert h.next_deadline() is None and h.poll(t + 100) == []
    assert h.on_heartbeat_ack(t + 1) == []  # late acks are harmless
    assert h.enable(t + 2) == []
    assert h.state is State.PROBING and h.poll(t + 2) == [Action.SEND_HEARTBEAT]


def test_params_are_checked() -> None:
    with pytest.raises(ValueError):
        HealthParams(acks_needed=0)
    with pytest.raises(ValueError):
        HealthParams(interval=2.0, dead_after=1.0)
    with pytest.raises(ValueError):
        HealthParams(probe_interval=0)


# ---------------------------------------------------------------- two links over a fake wire


class Wire:
    """Carries Send outputs between two FastdpLinks; ``up`` False drops everything."""

    def __init__(self, a: FastdpLink, b: FastdpLink) -> None:
        self.ends = {id(a): b, id(b): a}
        self.up = True
        self.events: list[tuple[str, float, str]] = []

    def deliver(self, src: FastdpLink, outs: list[Any], now: float, name: str) -> None:
        queue = [(src, o) for o in outs]
        for _ in range(100):  # bounded: replies never ask for replies
            if not queue:
                return
            s, o = queue.pop(0)
            if isinstance(o, Send):
                if self.up:
                    dst = self.ends[id(s)]
                    queue += [(dst, r) for r in dst.on_payload(o.payload, now)]
            else:
                who = name if s is src else ("b" if name == "a" else "a")
                self.events.append((who, now, type(o).__name__))
        raise AssertionError("ping-pong between heartbeats")


def _run(w: Wire, a: FastdpLink, b: FastdpLink, t0: float, t1: float, dt: float = 0.05
         ) -> float:
    t = t0
    while t < t1:
        w.deliver(a, a.poll(t), t, "a")
        w.deliver(b, b.poll(t), t, "b")
        t = round(t + dt, 6)
    return t


def test_two_links_reach_fastdp_fall_back_when_cut_and_recover() -> None:
    a = FastdpLink(A, B, K_AB, K_BA, MTU, 0.0, P)
    b = FastdpLink(B, A, K_BA, K_AB, MTU, 0.0, P)
    w = Wire(a, b)
    assert a.dst_mac == heartbeat_mac(B) and a.src_mac == heartbeat_mac(A)
    t = _run(w, a, b, 0.0, 2.0)
    assert a.on_fastdp and b.on_fastdp
    assert {(who, kind) for who, _, kind in w.events} == {("a", "Enter"), ("b", "Enter")}
    assert max(at for _, at, _ in w.events) < 1.0  # K=3 round trips at 0.25 s
    w.up = False
    cut = t
    t = _run(w, a, b, t, t + 5.0)
    leaves = [(who, at) for who, at, kind in w.events if kind == "Leave"]
    assert {who for who, _ in leaves} == {"a", "b"}
    assert all(at - cut <= P.dead_after + P.interval + 0.1 for _, at in leaves)
    assert not a.on_fastdp and a.status(t)["reason"].startswith("sleeve: vxlan heartbeats lost")
    w.up = True
    t = _run(w, a, b, t, t + 8.0)
    assert a.on_fastdp and b.on_fastdp
    st_a = a.status(t)
    assert st_a["datapath"] == "fastdp" and st_a["rtt_ms"] == 0.0
    assert st_a["heartbeat_drops"] == {}


def test_one_way_loss_keeps_both_ends_on_sleeve() -> None:
    """Only round trips count: if b's frames never reach a, neither end moves."""
    a = FastdpLink(A, B, K_AB, K_BA, MTU, 0.0, P)
    b = FastdpLink(B, A, K_BA, K_AB, MTU, 0.0, P)
    t = 0.0
    while t < 6.0:
        for o in a.poll(t):
            if isinstance(o, Send):
                b.on_payload(o.payload, t)  # b's replies are lost
        b.poll(t)  # and so are b's own heartbeats
        t += 0.05
    assert not a.on_fastdp and not b.on_fastdp
    assert a.health.state is State.SLEEVE and b.health.state is State.SLEEVE


def test_disabled_link_does_not_answer() -> None:
    a = FastdpLink(A, B, K_AB, K_BA, MTU, 0.0, P)
    b = FastdpLink(B, A, K_BA, K_AB, MTU, 0.0, P)
    b.disable("encryption required", 0.0)
    (req,) = [o for o in a.poll(0.0) if isinstance(o, Send)]
    assert b.on_payload(req.payload, 0.0) == []
    assert b.status(0.0)["reason"] == "sleeve: encryption required"


def test_enter_and_leave_outputs() -> None:
    a = FastdpLink(A, B, K_AB, K_BA, MTU, 0.0, P)
    b = FastdpLink(B, A, K_BA, K_AB, MTU, 0.0, P)
    w = Wire(a, b)
    _run(w, a, b, 0.0, 2.0)
    outs = a.disable("peer went away", 2.0)
    assert outs == [Leave("sleeve: peer went away")]
    assert a.enable(3.0) == []
    assert Enter() == Enter()


# ---------------------------------------------------------------- datapath bookkeeping


class FakeIPR:
    """Records FDB calls; can be told to fail the next call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, int]] = []
        self.fail_next: int | None = None
        self.dump: list[Any] = []

    def fdb(self, cmd: str, **kw: Any) -> Any:
        if cmd == "dump":
            return list(self.dump)
        if self.fail_next is not None:
            code, self.fail_next = self.fail_next, None
            err = OSError(code, "fake failure")
            raise err
        self.calls.append((cmd, kw["lladdr"], kw.get("dst"), kw["flags"]))
        return []


class FakeWorker:
    """Runs jobs synchronously on the FakeIPR (no thread, no kernel)."""

    def __init__(self, ipr: FakeIPR) -> None:
        self.ipr = ipr

    def submit(self, fn: Callable[[Any], Any]) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            fut.set_result(fn(self.ipr))
        except Exception as e:
            fut.set_exception(e)
        return fut

    def close(self, timeout: float = 0.0) -> None:
        pass


def _dp(ipr: FakeIPR) -> Datapath:
    dp = Datapath(local_ip="198.18.0.1", worker=FakeWorker(ipr))  # type: ignore[arg-type]
    dp._vx_index = 5  # as if set up
    return dp


M1, M2, M3 = bytes.fromhex("020000000001"), bytes.fromhex("020000000002"), bytes.fromhex(
    "020000000003")


def test_set_mac_programs_vxlan_then_bridge_and_del_mac_the_reverse() -> None:
    ipr = FakeIPR()
    dp = _dp(ipr)
    dp.set_mac(M1, "198.18.0.2").result()
    assert [(c[0], c[2], c[3]) for c in ipr.calls] == [
        ("replace", "198.18.0.2", 0x02), ("replace", None, 0x04 | 0x40)]
    ipr.calls.clear()
    dp.del_mac(M1).result()
    assert [(c[0], c[3]) for c in ipr.calls] == [("del", 0x04), ("del", 0x02)]


def test_sync_macs_only_sends_differences() -> None:
    ipr = FakeIPR()
    dp = _dp(ipr)
    assert dp.sync_macs({M1: "198.18.0.2", M2: "198.18.0.2"}) == 2
    assert dp.sync_macs({M1: "198.18.0.2", M2: "198.18.0.2"}) == 0
    ipr.calls.clear()
    assert dp.sync_macs({M1: "198.18.0.3", M3: "198.18.0.2"}) == 3  # move, del, add
    kinds = sorted((c[0], c[1]) for c in ipr.calls)
    assert ("del", "02:00:00:00:00:02") in kinds
    assert ("replace", "02:00:00:00:00:03") in kinds
    assert dp.status()["macs"] == 2 and dp.errors == 0


def test_a_failed_operation_is_counted_and_repaired_by_a_full_reconcile() -> None:
    ipr = FakeIPR()
    dp = _dp(ipr)
    ipr.fail_next = errno.ENOBUFS
    dp.sync_macs({M1: "198.18.0.2"})
    assert dp.errors == 1 and dp.last_error is not None and "ENOBUFS" in dp.last_error

    class Msg(dict[str, Any]):
        def __init__(self, mac: str, dst: str | None, flags: int, state: int) -> None:
            super().__init__(ifindex=5, flags=flags, state=state)
            self.attrs = {"NDA_LLADDR": mac, "NDA_DST": dst}

        def get_attr(self, k: str) -> Any:
            return self.attrs[k]

    # the kernel has: a stale data MAC towards .9 and its bridge entry, and the vxlan's own
    # local bridge entry (must be left alone)
    ipr.dump = [Msg("02:00:00:00:00:09", "198.18.0.9", 0x02, 0x80),
                Msg("02:00:00:00:00:09", None, 0x04 | 0x40, 0x42),
                Msg("ce:00:00:00:00:01", None, 0x04, 0x80)]
    ipr.calls.clear()
    dp.sync_macs({M1: "198.18.0.2"})
    done = [(c[0], c[1], c[3]) for c in ipr.calls]
    assert ("del", "02:00:00:00:00:09", 0x04) in done
    assert ("del", "02:00:00:00:00:09", 0x02) in done
    assert ("replace", "02:00:00:00:00:01", 0x02) in done
    assert ("replace", "02:00:00:00:00:01", 0x44) in done
    assert not any(c[1] == "ce:00:00:00:00:01" for c in ipr.calls)


def test_remove_peer_deletes_what_the_kernel_has_for_that_ip() -> None:
    ipr = FakeIPR()
    dp = _dp(ipr)
    dp.add_peer("198.18.0.2", heartbeat_mac(B)).result()
    dp.sync_macs({M1: "198.18.0.2", M2: "198.18.0.3"})

    class Msg(dict[str, Any]):
        def __init__(self, mac: str, dst: str | None) -> None:
            super().__init__(ifindex=5, flags=0x02, state=0x80)
            self.attrs = {"NDA_LLADDR": mac, "NDA_DST": dst}

        def get_attr(self, k: str) -> Any:
            return self.attrs[k]

    ipr.dump = [Msg(heartbeat_mac(B).hex(":"), "198.18.0.2"), Msg("02:00:00:00:00:01",
                "198.18.0.2"), Msg("02:00:00:00:00:02", "198.18.0.3")]
    ipr.calls.clear()
    dp.remove_peer("198.18.0.2").result()
    gone = {c[1] for c in ipr.calls}
    assert gone == {heartbeat_mac(B).hex(":"), "02:00:00:00:00:01"}
    assert dp.status()["peers"] == 0 and dp.status()["macs"] == 1


def test_datapath_rejects_misuse_at_the_api_edge() -> None:
    with pytest.raises(DatapathError):
        Datapath(vni=0)
    with pytest.raises(DatapathError):
        Datapath(bridge="a" * 16)
    with pytest.raises(DatapathError):
        Datapath(bridge="x", tap="x")
    with pytest.raises(DatapathError):
        Datapath(local_ip="not-an-ip")
    dp = _dp(FakeIPR())
    with pytest.raises(DatapathError):
        dp.set_mac(M1, "2001:2:0:1800::2")  # IPv6 peer on an IPv4 device
    with pytest.raises(DatapathError):
        dp.set_mac(b"\x01\x00\x5e\x00\x00\x01", "198.18.0.2")  # broadcasts go by sleeve
    with pytest.raises(DatapathError):
        dp.setup("198.19.0.1/33")


def test_operations_before_setup_fail_as_values() -> None:
    dp = Datapath(local_ip="198.18.0.1", worker=FakeWorker(FakeIPR()))  # type: ignore[arg-type]
    fut = dp.set_mac(M1, "198.18.0.2")
    assert isinstance(fut.exception(), DatapathError)
    assert dp.errors == 1 and "not set up" in (dp.last_error or "")


def test_heartbeat_frame_layout() -> None:
    p = encode(K_AB, A, B, 1, 0, 100, request=True)
    magic, ver, flags, size = struct.unpack_from("!4sBBH", p)
    assert (magic, ver, flags, size) == (b"SLVH", 1, 1, 100)


# ---------------------------------------------------------------- the netlink worker


def test_netlink_worker_serves_a_running_uvloop_and_survives_failing_jobs() -> None:
    """pyroute2 >= 0.9 cannot run inside a running loop; the worker thread can (read-only
    lookups here: nothing is changed)."""
    import asyncio

    import uvloop

    from sleeve.fastdp.netlink import NetlinkWorker

    w = NetlinkWorker()

    def boom(ipr: Any) -> None:
        raise OSError(errno.EPERM, "nope")

    async def main() -> tuple[Any, Any]:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        with pytest.raises(OSError):
            await w.acall(boom)
        return await w.acall(lambda ipr: ipr.link_lookup(ifname="lo")), w.call(
            lambda ipr: 42)

    try:
        assert uvloop.run(main()) == ([1], 42)
    finally:
        w.close()
    assert isinstance(w.submit(lambda ipr: None).exception(), DatapathError)  # closed
