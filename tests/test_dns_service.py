"""The micro DNS wired into the router, on in-process nodes (real sockets on loopback, no
root): names registered on one node over the HTTP API resolve at another's DNS server,
removal, persistence across a restart, a port that cannot be bound, forwarding policy,
the CLI and config edges, status and metrics."""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from sleeve.capture.memory import MemoryPort
from sleeve.cli import build_parser, config_from_args, parse_args
from sleeve.config import Config, ConfigError, Target
from sleeve.configfile import load_env
from sleeve.crypto.noise import KeyPair
from sleeve.dns.service import STATE_FILE, DnsService, Store, listen_addresses
from sleeve.node import Node
from tests.test_node_inproc import PSK, established, wait_for
from tests.test_status_api import free_port, get, metric, node_api

SLEEVE = [sys.executable, "-m", "sleeve"]


def tmpdir() -> pathlib.Path:
    return pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-"))


def node(host: str, peers: tuple[Target, ...] = (), state: pathlib.Path | None = None,
         static: KeyPair | None = None, dns_port: int = 0, **kw: Any) -> Node:
    state = state or tmpdir()
    cfg = Config(psk=PSK, port=0, listen="127.0.0.1", http=f"127.0.0.1:{free_port()}",
                 api_socket=str(state / "api.sock"), peers=peers, state_dir=state,
                 dns_listen=(f"{host}:{dns_port}",), **kw)
    return Node(cfg, MemoryPort(), static=static or KeyPair.generate())


def api(n: Node, path: str, method: str = "GET", **q: str) -> Any:
    return node_api(n, path, method, **q)


async def ask(n: Node, name: str, qtype: str = "A") -> dns.message.Message:
    assert n.dns.server is not None
    host, port = n.dns.server.bound[0]
    return await dns.asyncquery.udp(dns.message.make_query(name, qtype), host, port=port,
                                    timeout=2)


def answers(m: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rr in m.answer for rd in rr)


async def resolves(n: Node, name: str, want: list[str]) -> bool:
    m = await ask(n, name)
    return m.rcode() == dns.rcode.NOERROR and answers(m) == sorted(want)


async def eventually(check: Any, timeout: float = 2.0) -> float:
    """Poll the async predicate ``check`` until true; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not await check():
        if loop.time() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.02)
    return loop.time() - t0


def test_a_name_added_on_one_node_resolves_on_the_other_and_goes_when_removed() -> None:
    async def body() -> None:
        b = node("127.0.0.61")
        tb = asyncio.create_task(b.run())
        await wait_for(lambda: b.udp is not None)
        a = node("127.0.0.62", peers=(Target("127.0.0.1", b.udp_port),))
        ta = asyncio.create_task(a.run())
        try:
            await wait_for(lambda: established(a) and established(b))
            assert a.dns.state == "serving" and b.dns.state == "serving"
            r = await asyncio.to_thread(api, a, "/dns/add", "POST", name="web",
                                        address="198.19.0.7", id="c1")
            assert r == {"added": True, "name": "web.sleeve.local.", "address": "198.19.0.7",
                         "id": "c1"}
            await asyncio.to_thread(api, a, "/dns/add", "POST", name="WEB.sleeve.local",
                                    address="198.19.0.8")
            took = await eventually(lambda: resolves(b, "web.sleeve.local.",
                                                     ["198.19.0.7", "198.19.0.8"]))
            print(f"\nresolved at the other node {took * 1000:.0f} ms after the add")
            st = await asyncio.to_thread(api, b, "/dns")
            assert {r["address"] for r in st["records"]} == {"198.19.0.7", "198.19.0.8"}
            assert st["server"]["answers"]["noerror"] >= 1
            assert (await asyncio.to_thread(api, b, "/status"))["dns"]["table"]["live"] == 2
            r = await asyncio.to_thread(api, a, "/dns/remove", "POST", name="web",
                                        address="198.19.0.8")
            assert r == {"removed": 1, "name": "web.sleeve.local."}
            await eventually(lambda: resolves(b, "web.sleeve.local.", ["198.19.0.7"]))
            await asyncio.to_thread(api, a, "/dns/remove", "POST", name="web")

            async def gone() -> bool:
                return (await ask(b, "web.sleeve.local.")).rcode() == dns.rcode.NXDOMAIN
            await eventually(gone)
            text = (await asyncio.to_thread(
                get, f"http://{b.cfg.http}/metrics")).decode()
            assert metric(text, "sleeve_dns_queries_total", transport="udp") >= 3
            assert metric(text, "sleeve_dns_answers_total", rcode="nxdomain") >= 1
            assert metric(text, "sleeve_dns_serving") == 1
            # bad input over HTTP: 400 with one line
            for q in ({"name": "bad_name", "address": "198.19.0.1"},
                      {"name": "web", "address": "300.1.1.1"}, {"name": "web"},
                      {"name": "sleeve.local", "address": "198.19.0.1"}):
                with pytest.raises(urllib.error.HTTPError) as ei:
                    await asyncio.to_thread(api, a, "/dns/add", "POST", **q)
                assert ei.value.code == 400
                assert len(ei.value.read().decode().strip().splitlines()) == 1
        finally:
            a.stop()
            b.stop()
            await asyncio.wait_for(asyncio.gather(ta, tb), 5)

    asyncio.run(asyncio.wait_for(body(), 30))


def test_own_records_survive_a_restart_with_higher_versions() -> None:
    async def body() -> None:
        b = node("127.0.0.63")
        tb = asyncio.create_task(b.run())
        await wait_for(lambda: b.udp is not None)
        state, key = tmpdir(), KeyPair.generate()
        a = node("127.0.0.64", peers=(Target("127.0.0.1", b.udp_port),), state=state,
                 static=key)
        ta = asyncio.create_task(a.run())
        try:
            await wait_for(lambda: established(a) and established(b))
            a.dns.add("db", "198.19.0.9", "x")
            a.dns.add("db", "198.19.0.10")
            a.dns.remove("db", "198.19.0.10")
            await eventually(lambda: resolves(b, "db.sleeve.local.", ["198.19.0.9"]))
            saved = json.loads((state / STATE_FILE).read_text())
            assert saved["records"] == [["db", "198.19.0.9", "x"]]
            old = {(r["address"], r["version"]) for r in b.dns.records.entries()}
            a.stop()
            await asyncio.wait_for(ta, 5)
            a2 = node("127.0.0.64", peers=(Target("127.0.0.1", b.udp_port),), state=state,
                      static=key)
            assert a2.dns.restored == 1
            assert [r["address"] for r in a2.dns.records.entries()] == ["198.19.0.9"]
            ta = asyncio.create_task(a2.run())
            await wait_for(lambda: established(a2))
            assert await resolves(a2, "db.sleeve.local.", ["198.19.0.9"])
            # the peer takes the restored record: a version above the one it held
            (oldv,) = [v for ad, v in old if ad == "198.19.0.9"]

            async def newer() -> bool:
                return any(r["address"] == "198.19.0.9" and r["version"] > oldv
                           for r in b.dns.records.entries())
            await eventually(newer)
            assert await resolves(b, "db.sleeve.local.", ["198.19.0.9"])
            a = a2
        finally:
            a.stop()
            b.stop()
            await asyncio.wait_for(asyncio.gather(ta, tb, return_exceptions=True), 5)

    asyncio.run(asyncio.wait_for(body(), 30))


def test_a_dns_port_in_use_is_one_log_line_and_the_router_runs_on(
        caplog: pytest.LogCaptureFixture) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.65", 0))
    port = holder.getsockname()[1]

    async def body() -> None:
        n = node("127.0.0.65", dns_port=port)
        t = asyncio.create_task(n.run())
        try:
            await wait_for(lambda: n.port is not None and n.dns.state != "not started")
            assert n.dns.server is None
            assert n.dns.state.startswith(f"off: cannot listen on 127.0.0.65:{port}: ")
            st = await asyncio.to_thread(api, n, "/status")
            assert st["dns"]["state"] == n.dns.state and st["dns"]["server"] is None
            assert not t.done()
            n.dns.add("still", "198.19.0.1")  # the channel works without the server
            assert n.dns.records.lookup("still")
        finally:
            n.stop()
            await asyncio.wait_for(t, 5)

    try:
        asyncio.run(asyncio.wait_for(body(), 20))
    finally:
        holder.close()
    lines = [r for r in caplog.records if "cannot listen" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "ERROR"


def test_no_dns_and_no_address_say_why() -> None:
    async def body() -> None:
        for kw, want in (({"dns": False}, "off (--no-dns)"),
                         ({"dns_listen": ()}, "off: no address to listen on")):
            cfg = Config(psk=PSK, port=0, listen="127.0.0.1", http=None,
                         state_dir=tmpdir(), **kw)  # type: ignore[arg-type]
            n = Node(cfg, MemoryPort(), static=KeyPair.generate())
            t = asyncio.create_task(n.run())
            try:
                await wait_for(lambda n=n: n.port is not None)  # type: ignore[misc]
                await asyncio.sleep(0.05)
                assert n.dns.state.startswith(want) and n.dns.server is None
                assert "dns" in n.gossip.channels
            finally:
                n.stop()
                await asyncio.wait_for(t, 5)

    asyncio.run(asyncio.wait_for(body(), 20))


def test_forwarding_only_for_the_overlay_ipam_range_and_this_host() -> None:
    # IPAM's range: Docker/CNI containers outside --ip's prefix resolve outside names too
    cfg = Config(psk=PSK, ip="198.19.4.1/24", state_dir=tmpdir(),
                 ipalloc_range="198.19.64.0/18")
    n = Node(cfg, MemoryPort(), static=KeyPair.generate())
    assert listen_addresses(cfg) == [("198.19.4.1", 53)]
    ok = ["198.19.4.1", "198.19.4.200", "127.0.0.1", "::1", "::ffff:198.19.4.9",
          "198.19.64.2", "198.19.127.254"]
    no = ["198.19.5.1", "198.19.128.1", "198.18.0.1", "8.8.8.8", "2001:db8::1", "garbage",
          ""]
    assert all(n.dns.may_recurse(c) for c in ok)
    assert not any(n.dns.may_recurse(c) for c in no)


def test_store_is_atomic_bounded_and_forgiving() -> None:
    d = tmpdir()
    s = Store(d / STATE_FILE)
    assert s.load() == (0, [])
    assert s.save(7, [("a", "198.19.0.1", "")])
    assert Store(d / STATE_FILE).load() == (7, [("a", "198.19.0.1", "")])
    assert [p.name for p in d.iterdir()] == [STATE_FILE]  # no temp file left behind
    (d / STATE_FILE).write_text("{not json")
    assert Store(d / STATE_FILE).load() == (0, [])
    (d / STATE_FILE).write_bytes(b" " * (5 << 20))
    assert Store(d / STATE_FILE).load() == (0, [])
    # a hand-edited bad record is skipped, the rest restored
    (d / STATE_FILE).write_text(json.dumps(
        {"format": 1, "clock": 40, "records": [["ok", "198.19.0.2", ""],
                                               ["bad_name", "198.19.0.3", ""]]}))
    n = Node(Config(psk=PSK, state_dir=d), MemoryPort(), static=KeyPair.generate())
    assert n.dns.restored == 1
    assert n.dns.records.entries()[0]["version"] == 41


def _args(*argv: str) -> Any:
    return build_parser().parse_args(["launch", "--no-encryption", "--open", *argv])


def test_dns_config_flags_env_and_validation() -> None:
    c = config_from_args(_args("--dns-listen", "198.19.0.1,127.0.0.1:5353 [::1]:53",
                               "--dns-domain", "Corp.Example", "--dns-ttl", "5",
                               "--dns-one-address", "--dns-rate-limit", "0"))
    assert c.dns_listen == ("198.19.0.1", "127.0.0.1:5353", "[::1]:53")
    assert (c.dns_domain, c.dns_ttl, c.dns_one_address, c.dns_rate) == \
        ("Corp.Example.", 5, True, 0.0)
    assert not config_from_args(_args("--no-dns")).dns
    for bad in (["--dns-listen", "nothere:53"], ["--dns-listen", "1.2.3.4:99999"],
                ["--dns-domain", "bad_domain"], ["--dns-ttl", "-1"],
                ["--dns-rate-limit", "-5"]):
        with pytest.raises(ConfigError):
            config_from_args(_args(*bad))
    env = {"SLEEVE_DNS_LISTEN": "198.19.0.1:5353", "SLEEVE_NO_DNS": "yes",
           "SLEEVE_DNS_TTL": "3"}
    assert load_env(env) == {"dns_listen": "198.19.0.1:5353", "no_dns": True, "dns_ttl": 3}


def test_config_file_dns_keys(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "s.toml"
    f.write_text('dns-listen = "127.0.0.1:5300"\ndns-domain = "x.test"\n')
    monkeypatch.delenv("SLEEVE_CONFIG", raising=False)
    c = config_from_args(parse_args(["launch", "--no-encryption", "--open", "--config", str(f)]))
    assert c.dns_listen == ("127.0.0.1:5300",) and c.dns_domain == "x.test."


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLEEVE, *args], capture_output=True, text=True, timeout=30)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0 and "Traceback" not in r.stderr, r
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sleeve: error: "), r.stderr
    return lines[0]


def test_cli_dns_add_remove_status_against_a_router() -> None:
    async def body() -> None:
        n = node("127.0.0.66")
        t = asyncio.create_task(n.run())
        try:
            await wait_for(lambda: n.dns.server is not None)
            h = ["--api-socket", str(n.cfg.api_socket)]
            r = await asyncio.to_thread(cli, "dns", "add", "api", "198.19.0.5", "--id", "c9", *h)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["added"] is True
            r = await asyncio.to_thread(cli, "status", "dns", *h)
            assert r.returncode == 0 and "api.sleeve.local." in r.stdout, r
            assert "State: serving" in r.stdout
            r = await asyncio.to_thread(cli, "status", "dns", "--json", *h)
            d = json.loads(r.stdout)
            assert d["records"][0]["name"] == "api.sleeve.local." and d["state"] == "serving"
            r = await asyncio.to_thread(cli, "status", *h)
            assert "DNS: serving" in r.stdout, r.stdout
            # bad input: caught by the CLI (exit 2) or refused by the router (exit 1)
            r = await asyncio.to_thread(cli, "dns", "add", "bad_name", "198.19.0.5", *h)
            assert "bad name" in one_line(r) and r.returncode == 2
            r = await asyncio.to_thread(cli, "dns", "add", "x", "198.19.0.500", *h)
            assert "not an IP address" in one_line(r) and r.returncode == 2
            r = await asyncio.to_thread(cli, "dns", "add", "sleeve.local", "198.19.0.5", *h)
            assert "router refused" in one_line(r) and r.returncode == 1
            r = await asyncio.to_thread(cli, "dns", "remove", "api", *h)
            assert r.returncode == 0 and json.loads(r.stdout)["removed"] == 1
        finally:
            n.stop()
            await asyncio.wait_for(t, 5)

    asyncio.run(asyncio.wait_for(body(), 60))


def test_cli_dns_without_a_router_is_one_line() -> None:
    r = cli("dns", "add", "web", "198.19.0.1", "--api-socket", f"{tmpdir()}/api.sock")
    assert "no router API socket at" in one_line(r)


def test_service_registers_its_channel_with_a_bound() -> None:
    n = Node(Config(psk=PSK, state_dir=tmpdir()), MemoryPort(), static=KeyPair.generate())
    assert isinstance(n.dns, DnsService)
    assert n.gossip.channels["dns"].max_msg >= 60_000
