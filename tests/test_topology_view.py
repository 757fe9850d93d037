"""The /ui page's view of the status JSON: every path kind, relayed from routes, rates,
IPAM/DNS attached when present (pure; no sockets)."""

from __future__ import annotations

from typing import Any

from sleeve.status.topology import TopologyView
from tests.fake_status import fake_status

ME, A, B, C, D, E = (f"00:00:00:00:00:00:00:0{i}" for i in range(6))


def conn(peer: str, path: str = "sleeve", state: str = "established", reason: str = "ok",
         **counters: int) -> dict[str, Any]:
    return {"peer": peer, "nickname": peer[-2:], "state": state, "reason": reason,
            "path": path, "path_reason": f"why {path}", "rtt_ms": 1.5, "pmtu": 1438,
            "encrypted": True, "udp": "198.18.0.9:6783", "counters": counters}


def record(peer: str, *links: tuple[str, bool]) -> dict[str, Any]:
    return {"peer": peer, "nickname": peer[-2:], "reachable": True,
            "connections": [{"peer": p, "addr": "x", "outbound": True, "established": e}
                            for p, e in links]}


def status(**extra: Any) -> dict[str, Any]:
    return {
        "name": ME, "nickname": "me", "encryption": "enabled",
        "connections": [conn(A), conn(B, "tcp"), conn(C, "fastdp"),
                        conn(D, state="pending", reason="nothing from the peer over UDP or "
                             "TCP for 16s")],
        "peers": [record(ME, (A, True), (B, True), (C, True)),
                  record(A, (ME, True), (E, True), (B, False)),
                  record(B, (ME, True), (A, False)), record(C, (ME, True)),
                  record(D), record(E, (A, True))],
        "routes": [{"destination": p, "via": p, "hops": 1} for p in (A, B, C)]
        + [{"destination": E, "via": A, "hops": 2}],
        "macs": [{"mac": "m"}] * 3, **extra,
    }


def kinds(view: dict[str, Any]) -> dict[frozenset[str], str]:
    return {frozenset((e["a"], e["b"])): e["kind"] for e in view["edges"]}


def test_every_path_kind_and_relayed_from_routes() -> None:
    v = TopologyView().update(status(), 10.0)
    k = kinds(v)
    assert k[frozenset((ME, A))] == "udp"
    assert k[frozenset((ME, B))] == "tcp"
    assert k[frozenset((ME, C))] == "fastdp"
    assert k[frozenset((ME, D))] == "down"
    assert k[frozenset((ME, E))] == "relayed"
    assert k[frozenset((A, E))] == "mesh"
    assert k[frozenset((A, B))] == "pending"  # neither side calls it established
    relayed = next(e for e in v["edges"] if e["kind"] == "relayed")
    assert "via 01 (" + A + ")" in relayed["reason"] and "2 hops" in relayed["reason"]
    assert [n["id"] for n in v["nodes"]] == sorted([ME, A, B, C, D, E])  # stable order
    assert v["status"]["macs"] == 3 and "peers" not in v["status"]
    assert v["ipam"] is False and v["dns"] is False
    assert all(n["ranges"] == [] and n["names"] == [] for n in v["nodes"])


def test_pending_local_link_with_a_relayed_route_shows_relayed() -> None:
    st = status()
    st["connections"].append(conn(E, state="pending", reason="hole punching: no UDP yet"))
    edge = next(e for e in TopologyView().update(st, 1.0)["edges"] if e["b"] == E)
    assert edge["kind"] == "relayed" and "hole punching" in edge["reason"]


def test_throughput_from_counters_between_updates() -> None:
    view = TopologyView()
    st = status()
    st["connections"] = [conn(A, tx_bytes=1000, rx_bytes=0, tx_tcp_bytes=0)]
    (e,) = [x for x in view.update(st, 1.0)["edges"] if x["b"] == A]
    assert e["tx_bps"] is None  # no rate from one sample
    st["connections"] = [conn(A, tx_bytes=126_000, rx_bytes=500, tx_tcp_bytes=1000)]
    (e,) = [x for x in view.update(st, 3.0)["edges"] if x["b"] == A]
    assert e["tx_bps"] == 126_000 * 8 / 2 and e["rx_bps"] == 500 * 8 / 2


def test_ipam_and_dns_sections_attach_to_their_peers() -> None:
    v = TopologyView().update(fake_status(10, direct=3), 1.0)
    me = next(n for n in v["nodes"] if n["self"])
    assert v["ipam"] and v["dns"]
    assert me["ranges"] == ["198.19.0.0-198.19.0.255 (200 free)"]
    assert me["names"] == ["web0.sleeve.local 198.19.0.7"]
    # odd shapes (another branch changing its status) are ignored, never fatal
    bad = TopologyView().update(status(ipam={"ring": "x"}, dns={"records": [1, None]}), 1.0)
    assert bad["ipam"] and all(n["ranges"] == [] for n in bad["nodes"])


def test_100_peers_stay_small_and_classified() -> None:
    v = TopologyView().update(fake_status(100, direct=12), 1.0)
    assert len(v["nodes"]) == 100
    local = [e for e in v["edges"] if e["local"]]
    assert len(local) == 99  # 12 direct links, 87 relayed
    assert sum(e["kind"] == "relayed" for e in local) == 87
