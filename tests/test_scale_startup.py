"""A forming or restarting mesh of many routers (issue 23): who gets dialled, punched,
retried, and what a router imports.

No sockets: the dialler gets a stand-in for ``Connections``, traversal the fake rig of
``test_traversal_retry``; the import checks run a fresh interpreter.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile
import textwrap
import time
from types import SimpleNamespace

from sleeve.capture.memory import MemoryPort
from sleeve.config import Config, Target
from sleeve.control.dialler import Dialler
from sleeve.crypto.keys import Signer
from sleeve.crypto.noise import KeyPair
from sleeve.node import Node
from sleeve.proto.topology import ConnRecord, Topology
from sleeve.traversal.punch import PUNCH_GRACE
from tests.test_traversal_retry import PEER, rig

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _dialler(me: bytes = b"\x01" * 8) -> tuple[Dialler, dict[bytes, object]]:
    cfg = Config(psk=b"k" * 32, port=6783,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))
    links: dict[bytes, object] = {}
    conns = SimpleNamespace(ident=SimpleNamespace(me=me), links=links)
    return Dialler(cfg, conns), links  # type: ignore[arg-type]


def test_a_peer_whose_direct_dial_is_pending_is_not_punched() -> None:
    tr, _, _, started = rig()
    dialling = {PEER}
    tr.direct_first = lambda: dialling
    tr.start_attempts(0.0)
    tr.start_attempts(PUNCH_GRACE + 5)  # past the grace, but the dial has not failed yet
    assert started == []
    dialling.clear()  # the direct dial failed: now punch
    tr.start_attempts(PUNCH_GRACE + 6)
    assert started == [PEER]


def test_direct_first_is_the_untried_and_the_first_dial_in_flight() -> None:
    peer = b"\x09" * 8
    d, _ = _dialler()
    d.discover({peer}, {peer: {Target("198.18.0.9", 6783)}})
    (ts,) = d.targets.values()
    assert d.direct_first() == {peer}  # not tried yet
    ts.connecting, ts.attempts = True, 1
    assert d.direct_first() == {peer}  # the first dial is under way
    ts.connecting = False
    assert d.direct_first() == set()  # it failed: traversal may punch
    ts.connecting, ts.attempts = True, 2
    assert d.direct_first() == set()  # retries do not hold punching back


def test_a_restarted_peer_is_dialled_at_once_without_its_backoff() -> None:
    peer, other = b"\x09" * 8, b"\x0a" * 8
    d, links = _dialler()
    d.discover({peer, other}, {peer: {Target("198.18.0.9", 6783)},
                               other: {Target("198.18.0.10", 6783)}})
    now = time.monotonic()
    for ts in d.targets.values():
        ts.attempts, ts.next_try = 6, now + 40.0  # refused while it was down
    d.renewed({peer}, now)
    by_peer = {ts.peer: ts for ts in d.targets.values()}
    assert by_peer[peer].attempts == 0 and by_peer[peer].next_try <= now
    assert by_peer[other].next_try == now + 40.0  # not renewed: untouched
    links[other] = object()  # connected peers are left alone
    by_peer[other].attempts = 3
    d.renewed({other}, now)
    assert by_peer[other].attempts == 3


def test_the_node_tells_the_dialler_when_a_peer_restarts() -> None:
    state = pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-"))
    node = Node(Config(psk=b"k" * 32, port=0, http=None, api_socket=None, state_dir=state),
                MemoryPort(), static=KeyPair.generate())
    x = Signer(b"\x07" * 32)
    renewed: list[set[bytes]] = []
    node.dialler.renewed = lambda peers, now: renewed.append(peers)  # type: ignore[method-assign]
    node.mesh.gc = lambda now: []  # type: ignore[method-assign]  # x has no link to us

    def record(uid: int, bumps: int) -> object:
        t = Topology(x, "x", uid)
        rec = None
        for i in range(bumps):
            rec = t.set_local_connections(
                [ConnRecord(node.id, f"198.18.0.{i + 1}:6783", True, True)])
        assert rec is not None
        return rec

    node.mesh.topology.merge([record(5, 1)])  # type: ignore[list-item]
    node.on_timer(1.0)
    node.on_timer(2.0)  # nothing changed
    assert renewed == []  # a peer seen for the first time is no restart
    node.mesh.topology.merge([record(6, 3)])  # type: ignore[list-item]
    node.on_timer(3.0)
    assert renewed == [{x.peer_id}]


def test_a_plain_router_does_not_import_what_it_does_not_use() -> None:
    """prometheus-client (until a scrape), the Docker plugin (unless asked for), the
    whole of pyroute2 (NDB, IPDB, sqlite3...: IPRoute is all the router uses), aiohttp
    until the API is served and aiohttp's client even then stay out: ~15 MB of RSS per
    router. Code that wants the whole of pyroute2 or aiohttp still gets it."""
    code = textwrap.dedent("""
        import sys
        import sleeve.cli, sleeve.node
        from sleeve.iproute import netlink_error
        netlink_error()  # what a router's netlink code imports
        bad = sorted(m for m in ("prometheus_client", "sleeve.docker.service",
                                 "sleeve.status.metrics", "pyroute2.ndb", "pyroute2.ipdb",
                                 "sqlite3", "scapy", "aiohttp") if m in sys.modules)
        assert not bad, bad
        import sleeve.status.http  # the API served: aiohttp's server, not its client
        bad = sorted(m for m in ("aiohttp.client", "aiohttp.connector", "aiohttp.cookiejar")
                     if m in sys.modules)
        assert not bad, bad
        from aiohttp import ClientSession  # the whole package on demand
        import aiohttp
        assert aiohttp.ClientSession is ClientSession and aiohttp.__version__
        assert "pyroute2.netlink.exceptions" in sys.modules
        from pyroute2 import NetNS, IPRoute  # the whole package on demand
        import pyroute2
        assert pyroute2.IPRoute is IPRoute and "pyroute2.ndb" in sys.modules
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
