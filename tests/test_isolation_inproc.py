"""An unexpected exception in one outbound connection task never ends the router."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from sleeve.config import Target
from sleeve.control.dialler import task_spawner
from sleeve.proto.stats import Counters
from tests.test_node_inproc import established, make, wait_for


def test_a_dial_that_raises_is_counted_logged_and_retried(
        caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        b, _ = make()
        tb = asyncio.create_task(b.run())
        await wait_for(lambda: b.udp is not None and b.port is not None)
        a, _ = make(peers=(Target("127.0.0.1", b.udp_port),))
        real = a.conns.run
        calls = 0

        async def run_once_broken(*args: Any, **kw: Any) -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("injected bug")
            return await real(*args, **kw)

        a.conns.run = run_once_broken  # type: ignore[method-assign]
        ta = asyncio.create_task(a.run())
        try:
            await wait_for(lambda: a.drops["internal_error"] == 1)
            assert not ta.done()  # the router survived
            ts = next(iter(a.targets.values()))
            assert ts.last_error == "internal error: RuntimeError"
            # ... and reconnects after the ordinary backoff (2 s, jittered)
            await wait_for(lambda: established(a) and established(b), 10)
            assert calls == 2
        finally:
            a.stop()
            b.stop()
            await asyncio.wait_for(asyncio.gather(ta, tb), 5)
        tracebacks = [r for r in caplog.records
                      if r.exc_info and "injected bug" in str(r.exc_info[1])]
        assert len(tracebacks) == 1  # logged once, with the traceback

    with caplog.at_level(logging.INFO, logger="sleeve"):
        asyncio.run(run())


def test_spawned_tasks_are_isolated_from_their_task_group() -> None:
    """The same guard covers traversal's relayed connections (they use the spawner too)."""
    async def run() -> int:
        drops = Counters()
        done = asyncio.Event()

        async def broken() -> None:
            raise KeyError("bug")

        async def fine() -> None:
            await asyncio.sleep(0.05)
            done.set()

        async with asyncio.TaskGroup() as tg:
            spawn = task_spawner(tg, drops)
            spawn(broken())
            spawn(fine())
        assert done.is_set()
        return drops["internal_error"]

    assert asyncio.run(run()) == 1


def test_node_survives_a_broken_relayed_connection() -> None:
    async def run() -> None:
        a, _ = make()
        ta = asyncio.create_task(a.run())
        try:
            await wait_for(lambda: a.traversal.spawn is not None)

            async def broken(*_args: Any) -> str:
                raise RuntimeError("relay bug")

            a.traversal._run_connection = broken
            med = SimpleNamespace(peer=b"m" * 8)  # the mediator: only its id is used here
            a.traversal._start_virtual(b"p" * 8, med, None, True)  # type: ignore[arg-type]
            await wait_for(lambda: a.drops["internal_error"] == 1)
            await wait_for(lambda: b"p" * 8 not in a.traversal.virtual)
            await asyncio.sleep(0.3)  # a tick or so: still running
            assert not ta.done()
        finally:
            a.stop()
            await asyncio.wait_for(ta, 5)

    asyncio.run(run())
