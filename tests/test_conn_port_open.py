"""An inbound connection during start-up: its Hello waits for the port (connections.py).

The TCP listener opens before the TAP, so a peer can connect before the router knows
whether it takes offloaded frames. A Hello built then said "no offloads" for the life of
the link: the link stayed per frame although both ends take super-frames (seen as a
flaky tests/test_lab_offload.py, 1 run in 4).
"""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import pytest

from sleeve.config import Config
from sleeve.control import connections
from sleeve.control.connections import Connections, Identity
from sleeve.crypto.keys import Signer
from sleeve.crypto.noise import KeyPair
from sleeve.forward.superframe import CAP_VNET
from sleeve.links.table import LinkTable
from sleeve.proto.stats import Counters


class _Writer:
    def __init__(self) -> None:
        self.closed = False

    def get_extra_info(self, name: str) -> Any:
        return ("198.18.0.9", 40000) if name == "peername" else None

    def close(self) -> None:
        self.closed = True


def _conns(tmp_path: pathlib.Path) -> Connections:
    cfg = Config(psk=b"k" * 32, port=6783, state_dir=tmp_path, http=None)
    static = KeyPair.generate()
    signer = Signer.from_static(static)
    return Connections(cfg, Identity(static, signer, signer.peer_id, "me", 1),
                       LinkTable(signer.peer_id, Counters()), Counters(), Counters())


def test_an_early_inbound_hello_waits_for_the_port_and_announces_offloads(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hellos: list[Any] = []

    class Recorder:
        def __init__(self, **kw: Any) -> None:
            hellos.append(kw["hello"])  # the handshake then reads EOF and ends

        def wipe(self) -> None:
            pass

    monkeypatch.setattr(connections, "ControlChannel", Recorder)
    conns = _conns(tmp_path)

    async def main() -> None:
        reader = asyncio.StreamReader()
        reader.feed_eof()
        task = asyncio.create_task(conns.accept(reader, _Writer()))
        for _ in range(5):
            await asyncio.sleep(0)
        assert hellos == []  # no Hello before the port is open
        assert conns.handshaking == 1  # the waiting connection holds its admission slot
        conns.port_opened(True)
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert len(hellos) == 1 and hellos[0].offloads & CAP_VNET
    assert conns.handshaking == 0


def test_a_connection_waits_for_the_port_a_bounded_time(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections, "HANDSHAKE_TIMEOUT", 0.05)
    conns = _conns(tmp_path)
    w = _Writer()

    async def main() -> None:
        await asyncio.wait_for(conns.accept(asyncio.StreamReader(), w), 5)

    asyncio.run(main())
    assert w.closed and conns.drops["conn_before_port"] == 1 and conns.handshaking == 0
