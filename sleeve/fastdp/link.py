"""One link's fast-datapath logic: heartbeats plus health, as the node sees it (sans-IO).

The node keeps one :class:`FastdpLink` per established link that is *allowed* on the
kernel path (unencrypted network, both ends capable). It feeds it heartbeat payloads
received on the :class:`sleeve.fastdp.hbsock.HeartbeatSocket` and calls :meth:`poll`
from its one timer; both return :class:`Send` (a heartbeat payload to send to
:attr:`FastdpLink.dst_mac`), :class:`Enter` and :class:`Leave` events. On ``Enter`` the
node adds the kernel FDB entries for the MACs this peer owns, on ``Leave`` it removes
them (``Datapath.sync_macs`` does both from the desired state).
"""

from __future__ import annotations

from dataclasses import dataclass

from sleeve.fastdp.health import Action, Health, HealthParams, State
from sleeve.fastdp.heartbeat import HeartbeatSession, heartbeat_mac


@dataclass(frozen=True, slots=True)
class Send:
    payload: bytes  # one heartbeat payload; the frame is dst_mac | src_mac | 0x88B5 | payload


@dataclass(frozen=True, slots=True)
class Enter:
    """The kernel path is proven: send this peer's frames through VXLAN from now on."""


@dataclass(frozen=True, slots=True)
class Leave:
    reason: str  # why the link went back to sleeve


Output = Send | Enter | Leave


class FastdpLink:
    """Heartbeats and health of one link; ``mtu`` is the overlay MTU (heartbeat payload)."""

    def __init__(self, local: bytes, remote: bytes, send_key: bytes, recv_key: bytes,
                 mtu: int, now: float, params: HealthParams | None = None) -> None:
        self.remote = remote
        self.hb = HeartbeatSession(local, remote, send_key, recv_key, mtu)
        self.health = Health(now, params)
        self.dst_mac = heartbeat_mac(remote)  # where our heartbeats go
        self.src_mac = heartbeat_mac(local)  # our own heartbeat MAC (local on our bridge)
        self.rtt: float | None = None

    @property
    def on_fastdp(self) -> bool:
        return self.health.on_fastdp

    def _act(self, actions: list[Action], now: float) -> list[Output]:
        out: list[Output] = []
        for a in actions:
            if a is Action.SEND_HEARTBEAT:
                out.append(Send(self.hb.make(now)))
            elif a is Action.ENTER_FASTDP:
                out.append(Enter())
            else:
                out.append(Leave(self.health.reason(now)))
        return out

    def poll(self, now: float) -> list[Output]:
        return self._act(self.health.poll(now), now)

    def next_deadline(self) -> float | None:
        return self.health.next_deadline()

    def on_payload(self, payload: bytes | memoryview, now: float) -> list[Output]:
        """A heartbeat payload from this peer (already matched by ``peek_sender``)."""
        got = self.hb.on_payload(payload, now)
        if got is None:
            return []
        out: list[Output] = []
        if got.reply is not None and self.health.state is not State.DISABLED:
            out.append(Send(got.reply))
        if got.ack:
            self.rtt = got.rtt
            out += self._act(self.health.on_heartbeat_ack(now), now)
        return out

    def disable(self, reason: str, now: float) -> list[Output]:
        return self._act(self.health.disable(reason, now), now)

    def enable(self, now: float) -> list[Output]:
        return self._act(self.health.enable(now), now)

    def status(self, now: float) -> dict[str, object]:
        st = self.health.status(now)
        st.update(heartbeats_sent=self.hb.sent, heartbeats_received=self.hb.received,
                  heartbeat_drops=dict(self.hb.drops),
                  rtt_ms=None if self.rtt is None else round(self.rtt * 1000, 2))
        return st
