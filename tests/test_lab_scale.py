"""Twelve routers on one switch, each given 3 peers: routes to all, then 4 restarted.

The CI-sized version of ``python3 -m bench.scale --routers 50`` (sleeve.lab.scale; the
full run and its numbers are in bench/results/scale/). Needs root and network
namespaces; fails (never skips) without them.
"""

from __future__ import annotations

import os
import time

import pytest

from sleeve.lab import Lab
from sleeve.lab.scale import ScaleLab, initial_peers

pytestmark = pytest.mark.lab

N = 12
PEERS = 3
RESTART = [2, 5, 8, 11]
CONVERGE_S = 30.0  # bench target at 50 routers; 12 routers have far more headroom
RECONVERGE_S = 15.0


def test_initial_peers_form_a_ring_with_chords() -> None:
    assert initial_peers(0, 12, 3) == [11, 1, 6]
    assert initial_peers(5, 12, 5) == [4, 6, 11, 8]  # the chords stop at n/4
    assert initial_peers(0, 2, 3) == [1]


def test_twelve_routers_converge_and_reconverge_after_four_restart() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sl = ScaleLab(lab, N, PEERS)
        try:
            everyone = set(range(N))
            t_last = sl.start(everyone)
            done = sl.wait_converged(everyone, t_last + 60)
            took = max(done.values()) - t_last
            print(f"\n{N} routers: routes to all {took:.1f}s after the last start")
            assert took < CONVERGE_S, f"routes to all took {took:.1f}s"
            # given 3 peers, discovery links every router to every other (a full mesh)
            end = time.monotonic() + 30
            while True:
                views = sl.poll(everyone)
                links = sorted(v["established"] for v in views.values())
                if len(views) == N and links == [N - 1] * N:
                    break
                assert time.monotonic() < end, f"no full mesh: established links {links}"
                time.sleep(0.5)
            sl.stop(RESTART)
            t_last = sl.start(RESTART)
            done = sl.wait_converged(everyone, t_last + 40)
            took = max(done.values()) - t_last
            print(f"{len(RESTART)} restarted: routes to all again {took:.1f}s after the last "
                  "start")
            assert took < RECONVERGE_S, f"reconvergence took {took:.1f}s"
            for i in RESTART:  # the restarted ones, seen from their side too
                v = sl.get(i, "/routes")
                assert len(v["routes"]) == N - 1
        finally:
            sl.close()
