"""IPAM wired into the router, on in-process nodes (real sockets on loopback, no root):
allocation over the HTTP API on two and three nodes, same ID same address, restart keeps
it, rmpeer refused while the peer is alive and accepted once it is gone, a bounded wait
with a clear error, bad input as one line (API, CLI, config), status and metrics."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import pathlib
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
from typing import Any

import pytest

from sleeve.capture.memory import MemoryPort
from sleeve.cli import build_parser, config_from_args
from sleeve.config import Config, ConfigError, Target
from sleeve.configfile import load_env
from sleeve.crypto.keys import format_peer_id
from sleeve.crypto.noise import KeyPair
from sleeve.ipam.service import STATE_FILE, expose_id
from sleeve.ipam.validate import IpamError
from sleeve.node import Node
from sleeve.status.client import Endpoint, request
from sleeve.status.http import start_http
from sleeve.status.routes import Unavailable, json_async_action
from sleeve.status.unixsock import ApiSocket
from tests.test_node_inproc import PSK, wait_for
from tests.test_status_api import free_port, get, metric, node_api

RANGE = "198.19.128.0/18"
NET = ipaddress.ip_network(RANGE)


def tmpdir() -> pathlib.Path:
    return pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-"))


def node(peers: tuple[Target, ...] = (), state: pathlib.Path | None = None,
         static: KeyPair | None = None, init: str = "consensus=2", **kw: Any) -> Node:
    state = state or tmpdir()
    cfg = Config(psk=PSK, port=0, listen="127.0.0.1", http=f"127.0.0.1:{free_port()}",
                 api_socket=str(state / "api.sock"), peers=peers, state_dir=state, dns=False,
                 ipalloc_range=RANGE, ipalloc_init=init, **kw)
    return Node(cfg, MemoryPort(), static=static or KeyPair.generate())


def api(n: Node, path: str, method: str = "POST", **q: str) -> Any:
    return node_api(n, path, method, **q)


async def aapi(n: Node, path: str, method: str = "POST", **q: str) -> Any:
    return await asyncio.to_thread(api, n, path, method, **q)


async def refused(n: Node, path: str, **q: str) -> tuple[int, str]:
    with pytest.raises(urllib.error.HTTPError) as ei:
        await aapi(n, path, **q)
    text = ei.value.read().decode()
    assert len(text.strip().splitlines()) == 1, text
    return ei.value.code, text.strip()


async def start(n: Node) -> asyncio.Task[None]:
    t = asyncio.create_task(n.run())
    await wait_for(lambda: n.udp is not None and n.port is not None)
    return t


def reach_all(*ns: Node) -> bool:
    return all(len(n.mesh.topology.reachable()) == len(ns) for n in ns)


def test_two_nodes_agree_and_allocate_unique_addresses_same_id_same_address() -> None:
    async def body() -> None:
        b = node()
        tb = await start(b)
        a = node(peers=(Target("127.0.0.1", b.udp_port),))
        ta = await start(a)
        try:
            await wait_for(lambda: reach_all(a, b), 10)
            r1 = await aapi(a, "/ipam/allocate", id="c1")
            assert r1["id"] == "c1" and ipaddress.ip_interface(r1["address"]) in [
                ipaddress.ip_interface(f"{h}/18") for h in NET.hosts()]
            assert r1["address"].endswith("/18")
            assert await aapi(a, "/ipam/allocate", id="c1") == r1  # a retry: same address
            got = {r1["address"]}
            # concurrent allocations on both nodes (the async route does not block the loop)
            rs = await asyncio.gather(*(aapi(n, "/ipam/allocate", id=f"x{i}")
                                        for i, n in enumerate([a, b] * 10)))
            got |= {r["address"] for r in rs}
            assert len(got) == 21, "an address was handed out twice"
            st = await aapi(a, "/ipam", "GET")
            assert st["consensus"]["state"] == "done" and len(st["consensus"]["seeds"]) == 2
            assert {p["peer"] for p in st["ring"]} == {a.name, b.name}
            assert sum(p["size"] for p in st["ring"]) == NET.num_addresses
            assert {x["id"] for x in st["allocations"]} >= {"c1", "x0"}
            assert (await aapi(a, "/status", "GET"))["ipam"]["range"] == RANGE
            # rmpeer is refused while the peer is reachable, by id and by nickname
            for name in (b.name, b.name.replace(":", "")):
                code, text = await refused(a, "/ipam/rmpeer", peer=name)
                assert code == 400 and "reachable" in text, text
            code, text = await refused(a, "/ipam/rmpeer", peer=a.name)
            assert "itself" in text
            code, text = await refused(a, "/ipam/rmpeer", peer="nobody")
            assert "unknown peer" in text
            # release frees; the ID then gets an address again
            assert await aapi(a, "/ipam/release", id="c1") == {"id": "c1", "released": 1}
            assert await aapi(a, "/ipam/release", id="c1") == {"id": "c1", "released": 0}
            text = (await asyncio.to_thread(get, f"http://{a.cfg.http}/metrics")).decode()
            assert metric(text, "sleeve_ipam_allocations") == 10
            assert metric(text, "sleeve_ipam_events_total", event="allocations") >= 11
            assert metric(text, "sleeve_ipam_free_addresses") > 0
        finally:
            a.stop()
            b.stop()
            await asyncio.wait_for(asyncio.gather(ta, tb), 5)

    asyncio.run(asyncio.wait_for(body(), 40))


def test_bad_input_is_one_line_400() -> None:
    async def body() -> None:
        a = node(init="consensus=1")
        ta = await start(a)
        try:
            for q, want in (({"id": ""}, "empty ID"), ({"id": "x" * 65}, "longer than"),
                            ({"id": "a b"}, "printable"),
                            ({"id": "c", "subnet": "10.0.0.0/24"}, "outside"),
                            ({"id": "c", "subnet": "198.19.128.1/24"}, "not an IPv4 CIDR")):
                code, text = await refused(a, "/ipam/allocate", **q)
                assert code == 400 and want in text, (q, text)
            code, text = await refused(a, "/ipam/release")
            assert code == 400 and "empty ID" in text
        finally:
            a.stop()
            await asyncio.wait_for(ta, 5)

    asyncio.run(asyncio.wait_for(body(), 20))


def test_an_exhausted_range_is_a_clear_error() -> None:
    async def body() -> None:
        a = node(init="consensus=1", ipalloc_default_subnet="198.19.128.0/30")
        ta = await start(a)
        try:
            got = {(await aapi(a, "/ipam/allocate", id=f"c{i}"))["address"] for i in range(2)}
            assert got == {"198.19.128.1/30", "198.19.128.2/30"}
            code, text = await refused(a, "/ipam/allocate", id="c2")
            assert code == 400 and "exhausted" in text, text
        finally:
            a.stop()
            await asyncio.wait_for(ta, 5)

    asyncio.run(asyncio.wait_for(body(), 20))


def test_without_a_quorum_the_wait_is_bounded_and_says_why() -> None:
    async def body() -> None:
        a = node(init="consensus=3")  # alone: 1 of the 2 needed never agrees
        ta = await start(a)
        try:
            with pytest.raises(Unavailable) as ei:
                await a.ipam.allocate("c1", None, timeout=1.0)
            msg = str(ei.value)
            assert "after 1 s" in msg and "waiting for consensus" in msg, msg
            assert "\n" not in msg
            assert a.ipam.status()["pending"] == []  # the timed-out operation was cancelled
        finally:
            a.stop()
            await asyncio.wait_for(ta, 5)

    asyncio.run(asyncio.wait_for(body(), 20))


def test_a_restart_keeps_the_allocations_and_reuses_nothing() -> None:
    async def body() -> None:
        state, key = tmpdir(), KeyPair.generate()
        a = node(state=state, static=key, init="consensus=1")
        ta = await start(a)
        try:
            first = [(await aapi(a, "/ipam/allocate", id=f"c{i}"))["address"] for i in range(3)]
        finally:
            a.stop()
            await asyncio.wait_for(ta, 5)
        assert (state / STATE_FILE).exists()
        a = node(state=state, static=key, init="consensus=1")
        assert a.ipam.restored == 3
        ta = await start(a)
        try:
            # asked in another order: a router that forgot would hand out c0's address first
            again = [(await aapi(a, "/ipam/allocate", id=f"c{i}"))["address"]
                     for i in (2, 1, 0)][::-1]
            assert again == first
            new = (await aapi(a, "/ipam/allocate", id="new"))["address"]
            assert new not in first
        finally:
            a.stop()
            await asyncio.wait_for(ta, 5)
        # a state file for another range stops the launch with one line
        with pytest.raises(IpamError) as ei:
            Node(Config(psk=PSK, port=0, listen="127.0.0.1", http=None, state_dir=state,
                        ipalloc_range="198.19.64.0/18", ipalloc_init="consensus=1"),
                 MemoryPort(), static=key)
        assert "another allocation range" in str(ei.value) and "\n" not in str(ei.value)

    asyncio.run(asyncio.wait_for(body(), 30))


def test_three_nodes_rmpeer_a_dead_peer_and_reuse_its_space() -> None:
    async def body() -> None:
        c = node(init="consensus=3")
        tc = await start(c)
        peers = (Target("127.0.0.1", c.udp_port),)
        a = node(peers=peers, init="consensus=3")
        b = node(peers=peers, init="consensus=3")
        ta, tb = await start(a), await start(b)
        try:
            await wait_for(lambda: reach_all(a, b, c), 10)
            addrs = await asyncio.gather(*(aapi(n, "/ipam/allocate", id=f"{i}")
                                           for i, n in enumerate([a, b, c])))
            assert len({r["address"] for r in addrs}) == 3
            await wait_for(lambda: len(a.ipam.status()["ring"]) == 3, 5)
            size = {p["peer"]: p["size"] for p in a.ipam.status()["ring"]}
            b_space = size[b.name]
            b.stop()
            await asyncio.wait_for(tb, 5)
            await wait_for(lambda: b.id not in a.mesh.topology.reachable(), 10)
            r = await aapi(a, "/ipam/rmpeer", peer=b.name)
            assert r["peer"] == b.name and 0 < r["freed"] <= b_space
            ring = a.ipam.status()["ring"]
            assert b.name not in {p["peer"] for p in ring}
            await wait_for(lambda: b.name not in {p["peer"] for p in c.ipam.status()["ring"]}, 5)
            # a's space now includes b's former ranges, and c learnt it
            assert next(p["size"] for p in ring if p["peer"] == a.name) == \
                size[a.name] + b_space
        finally:
            for n in (a, c):
                n.stop()
            await asyncio.wait_for(asyncio.gather(ta, tc), 5)

    asyncio.run(asyncio.wait_for(body(), 40))


async def _async_route_server() -> None:
    async def ok(q: dict[str, str]) -> dict[str, str]:
        await asyncio.sleep(0.01)
        return {"echo": q.get("x", "")}

    async def slow(q: dict[str, str]) -> dict[str, str]:
        raise Unavailable("no answer in time")

    sock = ApiSocket(tmpdir() / "api.sock")
    srv = await start_http(None, 0, {"POST /ok": json_async_action(ok),
                                     "POST /slow": json_async_action(slow)}, None, sock)
    try:
        api = Endpoint(unix=str(sock.path))
        r = await asyncio.to_thread(request, api, "POST", "/ok?x=1")
        assert (r[0], json.loads(r[1])) == (200, {"echo": "1"})
        r = await asyncio.to_thread(request, api, "POST", "/slow")
        assert r == (503, b"no answer in time\n")
    finally:
        await srv.aclose()


def test_http_routes_may_be_async_and_unavailable_is_503() -> None:
    asyncio.run(asyncio.wait_for(_async_route_server(), 10))


def _launch_args(*extra: str) -> Any:
    return build_parser().parse_args(["launch", "--no-encryption", "--open", *extra])


@pytest.mark.parametrize("extra, want", [
    (["--ipalloc-range", "198.18.0.0/16", "198.18.0.1"], "overlaps the underlay"),
    (["--listen", "10.40.0.1"], "overlaps the underlay"),
    (["--ipalloc-range", "10.32.0.0/31"], "too small"),
    (["--ipalloc-range", "10.32.0.1/12"], "not an IPv4 CIDR"),
    (["--ipalloc-default-subnet", "10.64.0.0/16"], "outside the allocation range"),
    (["--ipalloc-init", "consensus=x"], "needs a number"),
    (["--ipalloc-init", "seed=nobody"], "peer ids"),
    (["--ipalloc-init", "quorum"], "must be consensus=N"),
    (["--ip", "10.32.0.1/12"], "inside --ipalloc-range"),
])
def test_bad_ipalloc_options_are_one_line(extra: list[str], want: str) -> None:
    with pytest.raises(ConfigError) as ei:
        config_from_args(_launch_args(*extra))
    assert want in str(ei.value) and "\n" not in str(ei.value), str(ei.value)


def test_ipalloc_options_defaults_and_env() -> None:
    cfg = config_from_args(_launch_args())
    assert (cfg.ipalloc_range, cfg.ipalloc_default_subnet, cfg.ipalloc_init) == (
        "10.32.0.0/12", None, "")
    seed = "01:02:03:04:05:06:07:08"
    cfg = config_from_args(_launch_args("--ipalloc-init", f"seed={seed},1112131415161718"))
    assert cfg.ipalloc_init.startswith("seed=")
    assert load_env({"SLEEVE_IPALLOC_RANGE": RANGE, "SLEEVE_IPALLOC_INIT": "observer"}) == {
        "ipalloc_range": RANGE, "ipalloc_init": "observer"}
    assert expose_id("my host") == "expose:my_host" and len(expose_id("h" * 80)) == 64
    assert format_peer_id(bytes(range(1, 9))) == seed


def test_cli_checks_input_before_asking_the_router() -> None:
    for argv, want in ((["ipam", "allocate", ""], "empty ID"),
                       (["ipam", "allocate", "c1", "--subnet", "nope"], "--subnet"),
                       (["ipam", "release", "x" * 65], "longer than")):
        r = subprocess.run([sys.executable, "-m", "sleeve", *argv, "--api-socket", "/nonexistent"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and want in r.stderr, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "sleeve", "ipam", "allocate", "c1", "--api-socket",
                        "/nonexistent/api.sock"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "no router API socket at" in r.stderr


def test_reset_donates_every_range_to_a_peer_then_stops_the_router() -> None:
    async def body() -> None:
        b = node()
        tb = await start(b)
        a = node(peers=(Target("127.0.0.1", b.udp_port),))
        ta = await start(a)
        try:
            await wait_for(lambda: reach_all(a, b), 10)
            await aapi(a, "/ipam/allocate", id="c1")
            await aapi(b, "/ipam/allocate", id="c2")
            await wait_for(lambda: len(b.ipam.status()["ring"]) == 2, 5)
            r = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "sleeve", "reset", "--api-socket",
                                 str(a.cfg.api_socket)], capture_output=True, text=True,
                timeout=30)
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            assert out == {"released": 1, "donated_to": b.name, "stopping": True}
            await asyncio.wait_for(ta, 5)  # the router stopped by itself
            await wait_for(lambda: [p["peer"] for p in b.ipam.status()["ring"]] == [b.name], 5)
            assert sum(p["size"] for p in b.ipam.status()["ring"]) == NET.num_addresses
            assert b.ipam.status()["conflicts"] == []
        finally:
            a.stop()
            b.stop()
            await asyncio.wait_for(asyncio.gather(ta, tb), 5)

    asyncio.run(asyncio.wait_for(body(), 40))
