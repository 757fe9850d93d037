"""Status API, /metrics and connect/forget on in-process nodes (real sockets on loopback)."""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import tempfile
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sleeve.capture.memory import MemoryPort
from sleeve.config import Config, Target
from sleeve.crypto.noise import KeyPair
from sleeve.forward.underlay import GSO_MAX_BYTES
from sleeve.node import Node
from sleeve.status.client import Endpoint, call
from tests.test_node_inproc import BCAST, MAC_A, PSK, established, frame, wait_for


def tmpdir() -> pathlib.Path:
    return pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, method: str = "GET") -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
        data: bytes = r.read()
        return data


def node_api(n: Node, path: str, method: str = "GET", **q: str) -> Any:
    """A router's API as its clients use it: reads on TCP, changes on the unix socket.
    A refusal raises HTTPError (``.code``, ``.read()``), whichever the transport."""
    import io
    import urllib.parse

    from sleeve.status.client import request

    target = path + (f"?{urllib.parse.urlencode(q)}" if q else "")
    if method == "GET":
        assert n.cfg.http is not None
        return json.loads(get(f"http://{n.cfg.http}{target}"))
    assert n.cfg.api_socket is not None
    status, body = request(Endpoint(unix=n.cfg.api_socket), method, target, timeout=40)
    if status != 200:
        raise urllib.error.HTTPError(target, status, "refused", None,  # type: ignore[arg-type]
                                     io.BytesIO(body))
    return json.loads(body)


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_status_and_metrics_match_the_traffic() -> None:
    async def body() -> None:
        hb, ha = free_port(), free_port()
        pb = MemoryPort()
        b = Node(Config(psk=PSK, port=0, listen="127.0.0.1", http=f"127.0.0.1:{hb}",
                        nickname="b", state_dir=tmpdir()), pb, static=KeyPair.generate())
        tb = asyncio.create_task(b.run())
        await wait_for(lambda: b.udp is not None)
        pa = MemoryPort()
        sock = tmpdir() / "api.sock"
        a = Node(Config(psk=PSK, port=0, listen="127.0.0.1", http=f"127.0.0.1:{ha}",
                        api_socket=str(sock), nickname="a", state_dir=tmpdir(),
                        peers=(Target("127.0.0.1", b.udp_port),)), pa,
                 static=KeyPair.generate())
        ta = asyncio.create_task(a.run())
        try:
            await wait_for(lambda: established(a) and established(b))
            for i in range(200):
                pa.inject(frame(BCAST, MAC_A, bytes([i % 256]) * 1000))
            await wait_for(lambda: len(pb.delivered) == 200)
            junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(7):
                junk.sendto(b"\x09" * 40, ("127.0.0.1", b.udp_port))
            junk.close()
            # junk: dropped by the socket filter in the kernel, counted by the kernel
            await wait_for(lambda: b.drop_counts().get("udp_kernel_drops") == 7)
            sa: dict[str, Any] = json.loads(await asyncio.to_thread(
                get, f"http://127.0.0.1:{ha}/status"))
            sb: dict[str, Any] = json.loads(await asyncio.to_thread(
                get, f"http://127.0.0.1:{hb}/status"))
            (la,), (lb,) = sa["connections"], sb["connections"]
            assert la["nickname"] == "b" and lb["nickname"] == "a"
            # 200 KB of frames went a -> b, broadcasts: each carries a's id and signature (80
            # bytes); heartbeats add a little, nothing is lost on loopback; a GSO proof
            # (once the path MTU is known, timing-dependent) adds at most 64 KB
            proofs = la["counters"].get("gso_proofs", 0) * GSO_MAX_BYTES
            assert 216_000 < la["counters"]["tx_bytes"] < 246_000 + proofs
            assert abs(la["counters"]["tx_bytes"] - lb["counters"]["rx_bytes"]) < 500
            assert lb["counters"]["rx_frames"] == 200
            assert sb["drops"]["udp_kernel_drops"] == 7 and "bad_type" not in sb["drops"]
            text = (await asyncio.to_thread(get, f"http://127.0.0.1:{hb}/metrics")).decode()
            assert metric(text, "sleeve_drops_total", reason="udp_kernel_drops") == 7
            assert metric(text, "sleeve_link_bytes_total", nickname="a", direction="rx") == \
                lb["counters"]["rx_bytes"]
            assert metric(text, "sleeve_link_established", nickname="a") == 1
            assert metric(text, "sleeve_handshakes_total", result="ok") == 1
            # gossip: b sent a its view (at least its own record) and both know 2 peers
            assert metric(text, "sleeve_gossip_total", direction="tx", unit="messages") == \
                sb["counters"]["gossip_tx_msgs"] >= 1
            assert metric(text, "sleeve_gossip_total", direction="rx", unit="bytes") == \
                sb["counters"]["gossip_rx_bytes"] > 0
            assert metric(text, "sleeve_peers") == 2
            rep = json.loads(await asyncio.to_thread(get, f"http://127.0.0.1:{ha}/report"))
            assert rep["config"]["encrypted"] is True
            assert "psk" not in json.dumps(rep).lower()
            # connect / forget through the API (a closed local port: never leaves the machine)
            dead = free_port()
            before = set(a.targets)
            for verb in ("connect", "forget"):  # TCP is read-only: refused, nothing changes
                with pytest.raises(urllib.error.HTTPError) as ei:
                    await asyncio.to_thread(
                        get, f"http://127.0.0.1:{ha}/{verb}?peer=127.0.0.1:{dead}", "POST")
                assert ei.value.code == 403 and b"read-only" in ei.value.read()
            assert set(a.targets) == before
            api = Endpoint(unix=str(sock))
            out = await asyncio.to_thread(call, api, "POST", f"/connect?peer=127.0.0.1:{dead}")
            assert out == {"added": [f"127.0.0.1:{dead}"]}
            await wait_for(lambda: a.targets[Target("127.0.0.1", dead)].last_error != "")
            assert "refused" in a.targets[Target("127.0.0.1", dead)].last_error.lower()
            out = await asyncio.to_thread(call, api, "POST", f"/forget?peer=127.0.0.1:{dead}")
            assert out == {"forgotten": [f"127.0.0.1:{dead}"]}
            assert Target("127.0.0.1", dead) not in a.targets
        finally:
            a.stop()
            b.stop()
            await asyncio.wait_for(asyncio.gather(ta, tb), 5)

    asyncio.run(body())
