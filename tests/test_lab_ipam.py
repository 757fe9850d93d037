"""IPAM on real kernels: four routers in namespaces, addresses from 198.19.128.0/18.

Three routers start together with ``--ipalloc-init consensus=3`` and agree on the ring
at their first allocations; a fourth with the same options joins later and gets space
by donation. Allocations go through ``sleeve ipam allocate`` processes run in the
hosts' namespaces, several at a time (bounded pool). Then: a partition (nftables on
one host) with allocations on both sides and a heal; a router SIGKILLed and removed
with ``sleeve rmpeer`` elsewhere, its space reused; a restart that keeps an ID's
address; ``sleeve expose`` on two hosts and a ping between the exposed addresses.

The lab's TAP addresses are 198.19.2.0/24 (``--ip``), outside the IPAM range. Needs
root and iproute2/nftables; tests run in file order on one lab (module fixture).
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sleeve.lab import Host, Lab
from sleeve.lab.routers import Router, established_with, workdir

pytestmark = pytest.mark.lab

N = 4
RANGE = "198.19.128.0/18"
NET = ipaddress.ip_network(RANGE)
UL = [f"198.18.2.{i + 1}" for i in range(N)]
OV = [f"198.19.2.{i + 1}" for i in range(N)]
POOL = 8  # sleeve CLI processes at a time (two cores, shared)
PW = "ipam lab password"


@dataclass
class IpamLab:
    lab: Lab
    hosts: list[Host]
    routers: list[Router | None]
    wd: Any
    given: dict[str, tuple[int, str]] = field(default_factory=dict)  # id -> (host, address)

    def start(self, i: int) -> Router:
        args = ["--ip", f"{OV[i]}/24", "--ipalloc-range", RANGE, "--ipalloc-init",
                "consensus=3", *([UL[0]] if i else [])]
        r = Router(self.hosts[i], args, self.wd, PW)
        self.routers[i] = r
        return r

    def r(self, i: int) -> Router:
        r = self.routers[i]
        assert r is not None
        return r


@pytest.fixture(scope="module")
def il() -> Iterator[IpamLab]:
    with Lab() as lab:
        sw = lab.switch()
        hosts = [lab.host(f"i{i + 1}") for i in range(N)]
        for h, ul in zip(hosts, UL, strict=True):
            lab.connect(h, sw, f"{ul}/24")
        d = IpamLab(lab, hosts, [None] * N, workdir())
        for i in range(3):
            d.start(i)
        for i in range(3):
            d.r(i).wait(established_with(2), 30, "mesh of three")
        yield d


def sleeve(router: Router, *args: str, check: bool = True, timeout: float = 40) -> Any:
    """The CLI on the router's host, through its API socket (changes need it)."""
    r = router.cli(*args, timeout=timeout)
    if check:
        assert r.returncode == 0, (f"sleeve {' '.join(args)} on {router.host.name}: "
                                   f"{r.stderr.strip()}")
    return r


def allocate_many(d: IpamLab, jobs: list[tuple[int, str]]) -> float:
    """Run ``sleeve ipam allocate ID --json`` for each (host, id), POOL at a time; seconds."""
    def one(job: tuple[int, str]) -> tuple[int, str, Any]:
        i, owner = job
        return i, owner, sleeve(d.r(i), "ipam", "allocate", owner, "--json", check=False)

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(POOL) as ex:
        results = list(ex.map(one, jobs))
    took = time.monotonic() - t0
    bad = [(i, o, r.stderr.strip()) for i, o, r in results if r.returncode != 0]
    assert not bad, f"{len(bad)} allocations failed, e.g. {bad[:3]}"
    for i, owner, r in results:
        out = json.loads(r.stdout)
        assert out["id"] == owner
        d.given[owner] = (i, out["address"])
    return took


def check_unique(d: IpamLab) -> None:
    addrs = [ipaddress.ip_interface(a).ip for _i, a in d.given.values()]
    assert len(set(addrs)) == len(addrs), "an address was handed out twice"
    assert all(a in NET for a in addrs)
    # and the routers agree: every live router's own allocations, together, are unique
    seen: dict[Any, str] = {}
    for i, r in enumerate(d.routers):
        if r is None or not r.running:
            continue
        for a in r.status()["ipam"]["allocations"]:
            ip = ipaddress.ip_interface(a["address"]).ip
            assert ip not in seen, (a, seen.get(ip), i)
            seen[ip] = a["id"]


def ring_of(st: dict[str, Any]) -> list[Any]:
    return sorted((p["peer"], [(x["start"], x["end"], x["version"], x["free"])
                               for x in p["ranges"]]) for p in st["ipam"]["ring"])


def rings_converge(d: IpamLab, live: list[int], timeout: float) -> float:
    t0 = time.monotonic()
    last: list[Any] = []
    while time.monotonic() - t0 < timeout:
        last = [ring_of(d.r(i).status()) for i in live]
        if all(x == last[0] for x in last[1:]):
            return time.monotonic() - t0
        time.sleep(0.3)
    raise AssertionError(f"rings differ after {timeout}s: {last}")


# -- the tests -------------------------------------------------------------------------------
def test_200_concurrent_allocations_over_three_then_four_routers_are_unique(il: IpamLab) -> None:
    first = [(i % 3, f"a{i}") for i in range(120)]
    t1 = allocate_many(il, first)
    st = il.r(0).status()["ipam"]
    # seeded by the participants the winning proposer had heard of: a quorum (2) or all 3;
    # a router outside the seeds got its space by donation
    assert st["consensus"]["state"] == "done" and len(st["consensus"]["seeds"]) >= 2, st
    il.start(3)  # the late joiner, same options
    il.r(3).wait(established_with(1), 30, "the fourth in the mesh")
    il.r(3).wait(lambda s: s["ipam"]["consensus"]["state"] == "done", 20, "ring learnt")
    second = [(i % 4, f"b{i}") for i in range(80)]
    t2 = allocate_many(il, second)
    print(f"\n120 allocations on 3 routers (incl. first-start consensus) {t1:.1f} s, "
          f"then 80 on 4 (the 4th asks for space) {t2:.1f} s: {200 / (t1 + t2):.1f}/s "
          f"with {POOL} CLI processes at a time")
    check_unique(il)
    assert len(il.given) == 200
    st4 = il.r(3).status()["ipam"]
    assert len(st4["allocations"]) == 20 and st4["counters"].get("grants_received", 0) >= 1
    # retries are safe: the same ID gives the same address again
    for owner in ("a0", "a1", "b3"):
        i, addr = il.given[owner]
        assert sleeve(il.r(i), "ipam", "allocate", owner).stdout.strip() == addr
    took = rings_converge(il, [0, 1, 2, 3], 15)
    print(f"rings equal on all four {took:.1f} s after the last allocation")
    text = sleeve(il.r(3), "status", "ipam").stdout
    assert "REACHABLE" in text and "b3" in text


def test_a_partitioned_host_and_the_rest_both_allocate_then_converge(il: IpamLab) -> None:
    h4 = il.hosts[3]
    for ul in UL[:3]:
        h4.block(ul)
    try:
        t0 = time.monotonic()
        il.r(0).wait(lambda s: not any(p["reachable"] for p in s["peers"]
                                       if p["nickname"] == "i4"), 40, "i4 unreachable")
        print(f"\npartition seen by i1 after {time.monotonic() - t0:.1f} s")
        allocate_many(il, [(3, f"p4-{k}") for k in range(10)] +
                      [(k % 3, f"p-{k}") for k in range(15)])
    finally:
        h4.unblock_all()
    t0 = time.monotonic()
    il.r(3).wait(established_with(1), 40, "i4 back")
    took = rings_converge(il, [0, 1, 2, 3], 40)
    print(f"healed: i4 linked again after {time.monotonic() - t0 - took:.1f} s, "
          f"rings equal {time.monotonic() - t0:.1f} s after the heal")
    check_unique(il)
    for i in range(N):
        assert il.r(i).status()["ipam"]["conflicts"] == [], i


def test_a_killed_router_is_removed_with_rmpeer_and_its_space_reused(il: IpamLab) -> None:
    victim = il.r(1)
    st = il.r(0).status()
    pid = next(p["peer"] for p in st["peers"] if p["nickname"] == "i2")
    ranges = next(p["ranges"] for p in st["ipam"]["ring"] if p["peer"] == pid)
    r = sleeve(il.r(0), "rmpeer", pid, check=False)
    assert r.returncode == 1 and "reachable" in r.stderr and len(r.stderr.splitlines()) == 1
    victim.kill()
    il.routers[1] = None
    for k in list(il.given):
        if il.given[k][0] == 1:
            del il.given[k]  # gone with the router (rmpeer's danger: they may be reused)
    il.r(0).wait(lambda s: not any(p["reachable"] for p in s["peers"] if p["peer"] == pid),
                 30, "i2 unreachable")
    out = json.loads(sleeve(il.r(0), "rmpeer", pid).stdout)
    assert out["peer"] == pid and out["freed"] > 0
    # a subnet inside i2's former space: i1 allocates there itself, i3 gets it by donation
    big = max(ranges, key=lambda x: int(ipaddress.ip_address(x["end"]))
              - int(ipaddress.ip_address(x["start"])))
    lo, hi = ipaddress.IPv4Address(big["start"]), ipaddress.IPv4Address(big["end"])
    sub = max(ipaddress.summarize_address_range(lo, hi), key=lambda n: n.num_addresses)
    t0 = time.monotonic()
    a1 = sleeve(il.r(0), "ipam", "allocate", "reuse-1", "--subnet", str(sub)).stdout.strip()
    t1 = time.monotonic()
    a3 = sleeve(il.r(2), "ipam", "allocate", "reuse-3", "--subnet", str(sub)).stdout.strip()
    t3 = time.monotonic()
    print(f"\nin {sub} (was i2's): i1 {a1} in {t1 - t0:.2f} s, i3 {a3} (donated by i1) in "
          f"{t3 - t1:.2f} s, CLI start-up included")
    assert a1 != a3 and all(ipaddress.ip_interface(a).ip in sub for a in (a1, a3))
    il.given["reuse-1"], il.given["reuse-3"] = (0, a1), (2, a3)
    rings_converge(il, [0, 2, 3], 15)
    assert all(p["peer"] != pid for p in il.r(3).status()["ipam"]["ring"])


def test_a_restarted_router_gives_the_same_address_for_the_same_id(il: IpamLab) -> None:
    r3 = il.r(2)
    mine = {k: a for k, (i, a) in il.given.items() if i == 2}
    r3.kill()  # as a crash: the state file was written before each answer
    r3.start()
    r3.wait(established_with(2), 30, "i3 back in the mesh")
    assert r3.status()["ipam"]["restored"] == len(mine)
    for owner in sorted(mine)[:5]:
        assert sleeve(il.r(2), "ipam", "allocate", owner).stdout.strip() == mine[owner]
    new = sleeve(il.r(2), "ipam", "allocate", "after-restart").stdout.strip()
    assert new not in {a for _i, a in il.given.values()}
    il.given["after-restart"] = (2, new)
    check_unique(il)


def test_expose_gives_hosts_overlay_addresses_that_reach_each_other(il: IpamLab) -> None:
    got = {}
    for i in (0, 2):
        out = json.loads(sleeve(il.r(i), "expose", "--json").stdout)
        assert out["id"] == f"expose:i{i + 1}"
        got[i] = out["address"]
        # on the router's bridge: an address on the TAP (a bridge port) would not route
        assert got[i] in il.hosts[i].ipv4("sleeve"), il.hosts[i].ipv4("sleeve")
        again = json.loads(sleeve(il.r(i), "expose", "--json").stdout)
        assert again["address"] == got[i]
    assert il.hosts[0].wait_ping(got[2].split("/")[0], 15), "exposed addresses do not reach"
    il.given.update({f"expose:i{i + 1}": (i, a) for i, a in got.items()})
    check_unique(il)
