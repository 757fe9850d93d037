"""The scale lab's convergence clock (sleeve.lab.scale, bench.scale): routers are polled all
at once, and a router counts as converged when its answer showing routes to all arrived.

No namespaces: a ScaleLab without its lab, its routers' answers played by a stand-in
whose slow routers answer late, as the routers of a forming 50-router mesh did (each
answer ~2.7 s, so 8 workers made a round of seven waves, ~19 s)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sleeve.lab import scale


class _Router:
    running = True


def _lab(n: int, monkeypatch: pytest.MonkeyPatch, delay: dict[int, float]) -> scale.ScaleLab:
    sl = object.__new__(scale.ScaleLab)
    sl.n = n
    sl.up_at = {}
    sl.members = [scale.Member(i, None, "", "", "", router=_Router()) for i in range(n)]  # type: ignore[arg-type]
    names = [f"p{i}" for i in range(n)]

    def get(i: int, path: str, timeout: float = 30.0) -> Any:
        time.sleep(delay.get(i, 0.0))
        return {"name": names[i], "pid": 100 + i,
                "routes": [{"destination": d, "usable": True} for d in names if d != names[i]]}

    monkeypatch.setattr(sl, "get", get)
    sl.pool = scale.poll_pool(n)
    return sl


def test_every_router_is_polled_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 24
    sl = _lab(n, monkeypatch, {i: 0.3 for i in range(n)})
    t0 = time.monotonic()
    got = sl.poll(range(n))
    took = time.monotonic() - t0
    assert len(got) == n
    assert took < 0.3 * 2, f"a round took {took:.2f} s: the polls went in waves"


def test_converged_at_the_answer_not_at_the_round_start(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 6
    sl = _lab(n, monkeypatch, {5: 0.4})  # one router answers late
    t0 = time.monotonic()
    done = sl.wait_converged(set(range(n)), t0 + 10)
    assert set(done) == set(range(n))
    assert done[5] - t0 >= 0.4  # when its answer came, not when the round began
    assert all(done[i] - t0 < 0.3 for i in range(5))
    assert sl.up_at[5] - t0 >= 0.4
