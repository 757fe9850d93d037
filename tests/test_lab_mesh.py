"""A five-host mesh on real kernels: convergence, broadcast exactly once, multicast,
partition and heal, crash and restart, departure. Each router is told only one peer.

These tests need root and network namespaces; they fail (never skip) without them.
The tests run in file order on one lab (module fixture), as a user's day would.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sleeve.lab import Host, Lab
from sleeve.lab.probes import FrameCounter, McastReceiver, arp_storm, mcast_send
from sleeve.lab.routers import Router, workdir

pytestmark = pytest.mark.lab

N = 5
UL = [f"198.18.1.{i + 1}" for i in range(N)]
OV = [f"198.19.1.{i + 1}" for i in range(N)]


@dataclass
class Mesh:
    lab: Lab
    hosts: list[Host]
    routers: list[Router]
    converged_s: float


def full_mesh(n: int) -> Any:
    """Status predicate: n peers known, n-1 established direct links, routes to all."""
    def pred(st: dict[str, Any]) -> bool:
        return (len(st["peers"]) == n
                and sum(c["state"] == "established" for c in st["connections"]) == n - 1
                and sum(r["usable"] for r in st["routes"]) == n - 1)
    return pred


def wait_all(routers: list[Router], pred: Any, timeout: float, what: str) -> float:
    t = time.monotonic()
    for r in routers:
        r.wait(pred, max(1.0, timeout - (time.monotonic() - t)), what)
    return time.monotonic() - t


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sw = lab.switch()
        hosts = [lab.host(f"m{i + 1}") for i in range(N)]
        for h, ul in zip(hosts, UL, strict=True):
            lab.connect(h, sw, f"{ul}/24")
        wd = workdir()
        t0 = time.monotonic()
        # each router knows only the one started before it: a chain to discover from
        routers = [Router(h, ["--ip", f"{OV[i]}/24", *([UL[i - 1]] if i else [])], wd,
                          "mesh password")
                   for i, h in enumerate(hosts)]
        wait_all(routers, full_mesh(N), 30, "full mesh")
        converged = time.monotonic() - t0
        print(f"\n5-host mesh converged {converged:.1f}s after the first router was started")
        yield Mesh(lab, hosts, routers, converged)


def test_five_hosts_given_one_peer_each_converge_and_every_pair_pings(mesh: Mesh) -> None:
    # Measured from starting the first process: includes five Python start-ups on 2 cores.
    assert mesh.converged_s < 10, f"converged in {mesh.converged_s:.1f}s"
    for (i, a), (j, _) in itertools.permutations(enumerate(mesh.hosts), 2):
        assert a.wait_ping(OV[j], timeout=5), f"m{i + 1} cannot ping m{j + 1}"
    sts = [r.status() for r in mesh.routers]
    assert all(st["counters"].get("gossip_tx_msgs", 0) > 0 for st in sts)
    # only one peer was given to each: the other links came from discovery
    assert sum(t["discovered"] for st in sts for t in st["targets"]) >= 1


def test_broadcast_storm_is_delivered_exactly_once_everywhere(mesh: Mesh) -> None:
    n = 1000
    target = "198.19.1.250"  # nobody has it: every request is a broadcast, no replies
    mark = bytes([198, 19, 1, 250])  # the target IP, at the end of each request
    counters = [FrameCounter(h, "sleeve0", 8, mark) for h in mesh.hosts]
    arp_storm(mesh.hosts[0], "sleeve0", n, target, OV[0])
    got = [c.result() for c in counters]
    print(f"\nARP storm of {n} from m1, copies seen per host: {got}")
    assert got[0] == 0, "the sender got its own broadcasts back: a loop"
    assert got[1:] == [n] * (N - 1), got
    for r in mesh.routers:
        assert r.status()["drops"].get("hop_limit", 0) == 0


def test_multicast_reaches_each_receiver_once(mesh: Mesh) -> None:
    group, port, n = "239.193.0.1", 5001, 200
    receivers = [McastReceiver(mesh.hosts[i], group, port, OV[i], 8) for i in (1, 2, 3)]
    time.sleep(0.5)  # IGMP joins on the receivers' TAPs
    mcast_send(mesh.hosts[0], group, port, OV[0], n)
    got = [r.result() for r in receivers]
    print(f"\nmulticast {n} datagrams from m1: (received, distinct) per receiver {got}")
    assert got == [(n, n)] * 3, got


def test_partition_for_20s_then_heal(mesh: Mesh) -> None:
    left, right = [0, 1], [2, 3, 4]
    handles = [(mesh.hosts[i], mesh.hosts[i].block(UL[j])) for i in left for j in right]
    try:
        t_split = time.monotonic()
        while time.monotonic() - t_split < 20:
            # each half keeps working inside itself throughout the split
            assert mesh.hosts[0].wait_ping(OV[1], timeout=3), "m1-m2 broken during split"
            assert mesh.hosts[2].wait_ping(OV[4], timeout=3), "m3-m5 broken during split"
            assert mesh.hosts[4].wait_ping(OV[3], timeout=3), "m5-m4 broken during split"
            time.sleep(2)
        assert not mesh.hosts[0].ping(OV[2], count=1), "the partition did not partition"
    finally:
        for h, handle in handles:
            h.unblock(handle)
    t_heal = time.monotonic()
    wait_all(mesh.routers, full_mesh(N), 60, "full mesh after healing")
    for i, j in ((0, 2), (1, 4), (3, 0)):
        assert mesh.hosts[i].wait_ping(OV[j], timeout=10), f"m{i + 1} -> m{j + 1} after heal"
    print(f"\npartition healed: full mesh again {time.monotonic() - t_heal:.1f}s after unblock")


def test_sigkill_and_restart_reconverges(mesh: Mesh) -> None:
    r3 = mesh.routers[2]
    mac = mesh.hosts[2].run("cat", "/sys/class/net/sleeve0/address").stdout
    r3.kill()
    others = [r for i, r in enumerate(mesh.routers) if i != 2]
    wait_all(others, lambda st: sum(c["state"] == "established"
                                    for c in st["connections"]) == N - 2, 20, "m3 gone")
    t = time.monotonic()
    r3.start()
    wait_all(mesh.routers, full_mesh(N), 30, "full mesh after restart")
    print(f"\nm3 SIGKILLed and restarted: full mesh again in {time.monotonic() - t:.1f}s")
    # same TAP MAC after the restart, so the neighbours' ARP caches are still right
    assert mesh.hosts[2].run("cat", "/sys/class/net/sleeve0/address").stdout == mac
    assert mesh.hosts[0].wait_ping(OV[2], timeout=10)
    assert mesh.hosts[2].wait_ping(OV[4], timeout=10)


def test_departed_peer_disappears_from_the_others(mesh: Mesh) -> None:
    r5 = mesh.routers[4]
    name5 = r5.status()["name"]
    r5.kill()
    t = time.monotonic()
    gone = wait_all(mesh.routers[:4], lambda st: all(p["peer"] != name5 for p in st["peers"])
                    and all(r["destination"] != name5 for r in st["routes"]), 30, "m5 forgotten")
    print(f"\nm5 killed for good: forgotten by all others in {time.monotonic() - t:.1f}s")
    assert gone < 30
    assert mesh.hosts[0].wait_ping(OV[3], timeout=5)  # the rest keeps working
    r5.start()  # leave the mesh whole for anything that runs after
