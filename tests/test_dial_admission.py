"""Discovered peers are dialled a few at a time, and slower while the event loop runs late
(``control.dialler``, issue 23): a router joining a mesh of N must not start N handshakes
at once on a host whose cores it shares with many others."""

from __future__ import annotations

import asyncio
import pathlib
import tempfile
import time
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any

from sleeve.config import Config, Target
from sleeve.control.dialler import DISCOVERED_INFLIGHT, LAG_LIMIT, LAG_SPACING, Dialler
from sleeve.proto.stats import Counters
from tests.test_node_inproc import make, wait_for


def _dialler(peers: tuple[Target, ...] = ()) -> tuple[Dialler, SimpleNamespace]:
    cfg = Config(psk=b"k" * 32, port=6783, peers=peers,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))
    conns = SimpleNamespace(ident=SimpleNamespace(me=b"\x01" * 8), links={},
                            handshaking=0, stats=Counters())
    return Dialler(cfg, conns), conns  # type: ignore[arg-type]


def _discover(d: Dialler, n: int) -> list[bytes]:
    """n discovered peers, all with larger ids than ours: we dial them at once."""
    peers = [bytes([2, i]) + b"\x00" * 6 for i in range(n)]
    d.discover(set(peers), {p: {Target(f"198.18.1.{i + 1}", 6783)} for i, p in enumerate(peers)})
    return peers


def _spawned() -> tuple[list[Coroutine[Any, Any, None]], Any]:
    out: list[Coroutine[Any, Any, None]] = []
    return out, out.append


def test_at_most_a_few_discovered_dials_handshake_at_once() -> None:
    d, conns = _dialler()
    _discover(d, 20)
    got, spawn = _spawned()
    d.tick(time.monotonic() + 1, spawn)
    assert len(got) == DISCOVERED_INFLIGHT
    d.tick(time.monotonic() + 2, spawn)  # all still handshaking: no more
    assert len(got) == DISCOVERED_INFLIGHT
    assert conns.stats["dials_held"] == 2
    held = [ts for ts in d.targets.values() if not ts.connecting]
    assert len(held) == 20 - DISCOVERED_INFLIGHT
    assert all(ts.attempts == 0 for ts in held)  # untried: not hole-punched meanwhile
    assert {ts.peer for ts in held} <= d.direct_first()
    # one handshake ends (the link is up): one more may start
    first = next(ts for ts in d.targets.values() if ts.connecting)
    conns.links[first.peer] = object()
    d.tick(time.monotonic() + 3, spawn)
    assert len(got) == DISCOVERED_INFLIGHT + 1
    for c in got:
        c.close()


def test_inbound_handshakes_count_too() -> None:
    d, conns = _dialler()
    _discover(d, 10)
    conns.handshaking = DISCOVERED_INFLIGHT - 2
    got, spawn = _spawned()
    d.tick(time.monotonic() + 1, spawn)
    assert len(got) == 2
    for c in got:
        c.close()


def test_while_the_loop_runs_late_one_discovered_dial_per_spacing() -> None:
    d, _ = _dialler()
    _discover(d, 10)
    d.lag = LAG_LIMIT * 3
    got, spawn = _spawned()
    t0 = time.monotonic() + 1
    d.tick(t0, spawn)
    d.tick(t0 + LAG_SPACING / 2, spawn)
    assert len(got) == 1
    d.tick(t0 + LAG_SPACING + 0.01, spawn)
    assert len(got) == 2
    d.lag = 0.0  # caught up: the in-flight bound alone applies
    d.tick(t0 + LAG_SPACING + 0.02, spawn)
    assert len(got) == DISCOVERED_INFLIGHT
    for c in got:
        c.close()


def test_targets_the_user_gave_are_never_held() -> None:
    mine = tuple(Target(f"198.18.2.{i + 1}", 6783) for i in range(3))
    d, conns = _dialler(mine)
    _discover(d, 10)
    conns.handshaking = DISCOVERED_INFLIGHT  # full
    d.lag = 5.0
    got, spawn = _spawned()
    d.tick(time.monotonic() + 1, spawn)
    assert len(got) == 3
    assert {ts.target for ts in d.targets.values() if ts.connecting} == set(mine)
    for c in got:
        c.close()


def test_the_node_measures_how_late_its_ticks_run() -> None:
    async def main() -> None:
        node, _ = make()
        task = asyncio.create_task(node.run())
        try:
            await wait_for(lambda: node.port is not None)
            await asyncio.sleep(0.3)
            time.sleep(1.5)  # the loop is blocked >= 0.5 s past a tick's due time (<= 1 s)
            await wait_for(lambda: node.dialler.lag > 0.4, timeout=3)
            await wait_for(lambda: node.dialler.lag < 0.4, timeout=5)  # and it recovers
        finally:
            node.stop()
            await asyncio.wait_for(task, 5)

    asyncio.run(main())
