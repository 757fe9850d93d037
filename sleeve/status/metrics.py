"""Prometheus exposition of a node's counters (prometheus-client, no global registry).

A custom collector reads the node's live counters at scrape time, so the hot
path only bumps plain ints and two nodes in one process stay independent. It is
given a light status view (``Node.metrics_status``: counts instead of the MAC,
peer and DNS record lists) so that a scrape costs O(links) on the event loop; the
full ``status()`` works too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sleeve.status.routes import Route

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# traversal.portmap's counters: <key><requests|mappings|failures>, by protocol
_PORTMAP = {"pcp": "pcp_", "nat-pmp": "pmp_", "upnp": "upnp_"}
_PORTMAP_KEYS = {f"{k}{ev}" for k in _PORTMAP.values() for ev in ("requests", "mappings",
                                                                  "failures")}


class _NodeCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        st = self._status()
        labels = ["peer", "nickname"]
        link_bytes = CounterMetricFamily("sleeve_link_bytes", "UDP bytes per link",
                                         labels=[*labels, "direction"])
        link_pkts = CounterMetricFamily("sleeve_link_packets", "UDP datagrams per link",
                                        labels=[*labels, "direction"])
        link_drops = CounterMetricFamily("sleeve_link_drops", "datagrams dropped per link",
                                         labels=[*labels, "reason"])
        link_super = CounterMetricFamily("sleeve_link_superframes",
                                         "TCP super-frames per link, carried whole (TSO)",
                                         labels=[*labels, "direction"])
        rtt = GaugeMetricFamily("sleeve_link_rtt_seconds", "heartbeat round-trip time",
                                labels=labels)
        pmtu = GaugeMetricFamily("sleeve_link_pmtu_bytes", "largest datagram for the link",
                                 labels=labels)
        up = GaugeMetricFamily("sleeve_link_established", "1 when the link carries data",
                               labels=[*labels, "path", "encrypted"])
        rekeys = CounterMetricFamily("sleeve_link_key_exchanges",
                                     "fresh Diffie-Hellman key exchanges completed per link",
                                     labels=labels)
        for c in st["connections"]:
            lv = [c["peer"], c["nickname"]]
            k = c["counters"]
            for d in ("tx", "rx"):
                link_bytes.add_metric([*lv, d], k.get(f"{d}_bytes", 0))
                link_pkts.add_metric([*lv, d], k.get(f"{d}_packets", 0))
                link_super.add_metric([*lv, d], k.get(f"{d}_superframes", 0))
            for key, v in k.items():
                if key.startswith("drop_"):
                    link_drops.add_metric([*lv, key[5:]], v)
            if c["rtt_ms"] is not None:
                rtt.add_metric(lv, c["rtt_ms"] / 1000)
            pmtu.add_metric(lv, c.get("pmtu", 0))
            rekeys.add_metric(lv, c.get("key_exchanges", 0))
            up.add_metric([*lv, c["path"], str(c["encrypted"]).lower()],
                          1 if c["state"] == "established" else 0)
        yield from (link_bytes, link_pkts, link_super, link_drops, rtt, pmtu, up, rekeys)
        drops = CounterMetricFamily("sleeve_drops", "untrusted or undeliverable input dropped",
                                    labels=["reason"])
        for reason, v in st["drops"].items():
            drops.add_metric([reason], v)
        yield drops
        hs = CounterMetricFamily("sleeve_handshakes", "control handshakes by result",
                                 labels=["result"])
        ends = CounterMetricFamily("sleeve_connection_terminations",
                                   "control connections ended, by reason", labels=["reason"])
        for key, v in st["counters"].items():
            if key.startswith("conn_fail_"):
                hs.add_metric([key[10:]], v)
            elif key.startswith("conn_end_"):
                ends.add_metric([key[9:]], v)
        hs.add_metric(["ok"], st["counters"].get("handshake_ok", 0))
        yield hs
        yield ends
        yield GaugeMetricFamily("sleeve_mac_table_entries", "MAC addresses known",
                                value=st["mac_count"] if "mac_count" in st
                                else len(st["macs"]))
        yield GaugeMetricFamily("sleeve_connections", "authenticated control connections",
                                value=len(st["connections"]))
        yield CounterMetricFamily("sleeve_port_rx_frames", "frames read from the local port",
                                  value=st["counters"].get("port_rx_frames", 0))
        c = st["counters"]
        gossip = CounterMetricFamily("sleeve_gossip", "topology gossip on control connections",
                                     labels=["direction", "unit"])
        for d in ("tx", "rx"):
            gossip.add_metric([d, "messages"], c.get(f"gossip_{d}_msgs", 0))
            gossip.add_metric([d, "bytes"], c.get(f"gossip_{d}_bytes", 0))
        yield gossip
        topo = (st.get("gossip") or {}).get("topology") or {}
        skipped = CounterMetricFamily(
            "sleeve_gossip_wants_skipped", "topology records a neighbour claimed newer and we "
            "did not ask for, by reason (its quota, our table full)", labels=["reason"])
        for why, v in sorted((topo.get("wants_skipped") or {}).items()):
            skipped.add_metric([why], v)
        yield skipped
        yield GaugeMetricFamily("sleeve_gossip_wants_pending",
                                "topology records asked for and not yet received",
                                value=topo.get("wants_pending", 0))
        events = CounterMetricFamily(
            "sleeve_events", "router events: relayed frames, TCP fallbacks, hole punching, "
            "fast datapath switches, ...", labels=["event"])
        for key, v in sorted(c.items()):
            if not key.startswith(("gossip_", "conn_fail_", "conn_end_", "handshake_ok",
                                   "port_rx_frames")) and key not in _PORTMAP_KEYS:
                events.add_metric([key], v)
        yield events
        portmap = CounterMetricFamily(
            "sleeve_port_mapping", "asking the NAT gateway for a port mapping, per protocol",
            labels=["protocol", "event"])
        for proto, key in _PORTMAP.items():
            for ev in ("requests", "mappings", "failures"):
                portmap.add_metric([proto, ev], c.get(f"{key}{ev}", 0))
        yield portmap
        yield from _dns(st.get("dns") or {})
        yield from _ipam(st.get("ipam") or {})
        yield GaugeMetricFamily("sleeve_peers", "peers known in the mesh",
                                value=st["peer_count"] if "peer_count" in st
                                else len(st.get("peers", [])))
        yield GaugeMetricFamily("sleeve_fastdp_active", "1 when the kernel VXLAN datapath is up",
                                value=1 if st.get("fastdp", {}).get("active") else 0)


def _dns(d: dict[str, Any]) -> Iterator[Any]:
    """The micro DNS: queries in, answers out by rcode, forwards, drops, names known."""
    srv = d.get("server") or {}
    st = srv.get("stats", {})
    res = srv.get("resolver") or {}
    rs = res.get("stats", {})
    q = CounterMetricFamily("sleeve_dns_queries", "DNS queries received", labels=["transport"])
    q.add_metric(["udp"], st.get("udp_queries", 0))
    q.add_metric(["tcp"], st.get("tcp_queries", 0))
    yield q
    ans = CounterMetricFamily("sleeve_dns_answers", "DNS answers sent, by rcode",
                              labels=["rcode"])
    for rc, v in sorted(srv.get("answers", {}).items()):
        ans.add_metric([rc], v)
    yield ans
    fw = CounterMetricFamily("sleeve_dns_forwards", "queries forwarded upstream, by result",
                             labels=["result"])
    fw.add_metric(["sent"], rs.get("forwarded", 0))
    fw.add_metric(["answered"], st.get("forward_answered", 0))
    fw.add_metric(["servfail"], rs.get("servfail", 0))
    fw.add_metric(["refused"], rs.get("refused", 0))  # not on the overlay: never forwarded
    yield fw
    drops = CounterMetricFamily("sleeve_dns_drops", "DNS queries dropped, by reason",
                                labels=["reason"])
    for reason, v in sorted(res.get("drops", {}).items()):
        drops.add_metric([reason], v)
    for reason in ("forward_busy", "tcp_rejected", "tcp_oversize"):
        drops.add_metric([reason], st.get(reason, 0))
    yield drops
    yield GaugeMetricFamily("sleeve_dns_names", "live DNS records known (all origins)",
                            value=(d.get("table") or {}).get("live", 0))
    yield GaugeMetricFamily("sleeve_dns_serving", "1 when the DNS server is listening",
                            value=1 if d.get("state") == "serving" else 0)


def _ipam(i: dict[str, Any]) -> Iterator[Any]:
    """IPAM: what this router holds and hands out, and how often it had to ask for space."""
    yield GaugeMetricFamily("sleeve_ipam_allocations", "addresses allocated by this router",
                            value=len(i.get("allocations", [])))
    yield GaugeMetricFamily("sleeve_ipam_free_addresses", "free addresses this router owns",
                            value=i.get("free_owned", 0))
    yield GaugeMetricFamily("sleeve_ipam_pending", "allocations waiting for agreement or space",
                            value=len(i.get("pending", [])))
    yield GaugeMetricFamily("sleeve_ipam_conflicts", "peers whose ring gossip was refused",
                            value=len(i.get("conflicts", [])))
    ev = CounterMetricFamily("sleeve_ipam_events", "IPAM events: allocations, releases, space "
                             "requests, grants, denials, timeouts", labels=["event"])
    for key, v in sorted((i.get("counters") or {}).items()):
        ev.add_metric([key], v)
    yield ev


def metrics_route(status: Callable[[], dict[str, Any]]) -> Route:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_NodeCollector(status))
    return lambda q: (CONTENT_TYPE, generate_latest(reg))
