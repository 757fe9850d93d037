"""Fake links for testing the parts without sockets or handshakes (ships with the code).

``fake_link(peer)`` is a real ``Link`` whose control connection is a ``FakeWriter``
that records every control message (not encrypted: ``FakeChannel`` just keeps the
dict) and whose write backlog a test can set, so the link table, the gossip router,
the dialler and the data plane can be driven by a test alone.
"""

from __future__ import annotations

import secrets
from typing import Any

from sleeve.crypto.rekey import KeySchedule
from sleeve.links.link import Link
from sleeve.proto.control import Established, Hello
from sleeve.proto.rekey import DataKeys, Rekeyer
from sleeve.proto.stats import Counters


class _Transport:
    def __init__(self) -> None:
        self.backlog = 0
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return self.backlog


class FakeWriter:
    def __init__(self) -> None:
        self.transport = _Transport()
        self.closed = False
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("198.18.0.9", 40000) if name == "peername" else default


class FakeChannel:
    """Stands in for ``ControlChannel``: ``seal`` records the message, returns a marker."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def seal(self, msg: dict[str, Any]) -> bytes:
        self.sent.append(msg)
        return b"m"

    def enable_rekey(self, data: DataKeys, interval: float | None) -> Rekeyer:
        """A real state machine that never starts an exchange (none is ever answered)."""
        sched = KeySchedule(secrets.token_bytes(64), secrets.token_bytes(64))
        return Rekeyer(initiator=True, schedule=sched, data=data, interval=None)

    def tick(self, now: float) -> bytes:
        return b""


def fake_link(peer: bytes | None = None, *, uid: int = 1, outbound: bool = True,
              mediator: bytes | None = None, index: int | None = None,
              drops: Counters | None = None, writer: Any = None) -> Link:
    peer = peer or secrets.token_bytes(8)
    key = secrets.token_bytes(32)
    hello = Hello("fake", uid, secrets.randbits(31) | 1, 6783)
    est = Established(secrets.token_bytes(32), b"k" * 32, peer, hello, b"h" * 32, key, key)
    return Link(est, writer or FakeWriter(), FakeChannel(),  # type: ignore[arg-type]
                outbound=outbound,
                remote=("198.18.0.9", 40000), local_index=index or secrets.randbits(31) | 1,
                encrypt=True, addr="198.18.0.9:6783", rekey_seconds=120.0,
                drops=drops or Counters(), mediator=mediator)


def sent(link: Link) -> list[dict[str, Any]]:
    """Control messages written to a fake link so far."""
    ch = link.channel
    assert isinstance(ch, FakeChannel)
    return ch.sent
