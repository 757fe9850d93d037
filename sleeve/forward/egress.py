"""Egress: frames from our port to the links, and every record's way out.

Pipeline, per readiness event on the port:

1. ``read_batch`` (<= 64 frames) -> for each frame: learn the source MAC as local,
   classify the destination (local: drop; known remote peer: its direct link when
   established, else the next hop towards it with source and destination peer ids in
   the record and our end-to-end tag for the destination (``proto.origin``);
   group/unknown: our children in our own broadcast tree, signed by us) -> a unicast
   TCP SYN's MSS clamped to that link's path (``proto.mss``; broadcast SYNs, to MACs
   nobody has learnt yet, are left alone) -> records queued per link (``queue``);
2. per link with queued records (``flush_touched``): pack into datagrams up to the path
   MTU and hand them to the underlay (one GSO send per run where proven); over TCP
   when UDP does not get through; a record too big for the path is fragmented (IPv4
   without DF), answered with ICMP too-big, or carried as sleeve fragments.

A lone frame goes first (``_lone``): the batch's first frame, when it is a finished
unicast frame for a usable direct UDP link with nothing queued, is sealed and sent before
the read that ends the batch (EAGAIN), on a short path that touches little code (a router
woken by one frame runs cold: the less it runs before ``sendto``, the shorter a round trip).

Ingress queues relayed records here too, so one aggregation serves both. Per tick:
UDP heartbeats, the route MTU as the PMTU search's limit, PMTU probes and GSO proofs
for every link.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sleeve.capture.base import BATCH, Port
from sleeve.forward import relayseg, superframe
from sleeve.forward.batcher import pack
from sleeve.forward.oversize import record_source, shrink
from sleeve.forward.reassembly import fragment
from sleeve.forward.relayseg import relayed_mtu
from sleeve.forward.underlay import Underlay
from sleeve.links.link import UDP_DEAD, Link
from sleeve.links.table import LinkTable
from sleeve.proto import datagram as dg
from sleeve.proto import liveness, mss, vnet
from sleeve.proto.mactable import LOCAL, MacTable
from sleeve.proto.origin import OriginAuth
from sleeve.proto.pmtu import overlay_mtu, probe_record
from sleeve.proto.routes import Routes
from sleeve.proto.stats import Counters

log = logging.getLogger("sleeve")

TCP_MAX_BODY = 65000  # records per control message when data goes over TCP
ICMP_PER_SECOND = 100  # too-big replies we generate, like the kernel's icmp_ratelimit
STP_PREFIX = b"\x01\x80\xc2\x00\x00"  # IEEE 802.1D link-local group: never forwarded by a bridge
_VNET_HDR_LEN = vnet.HDR_LEN
_VNET_MIN = vnet.HDR_LEN + 14
_NEEDS_CSUM = vnet.F_NEEDS_CSUM
_LONE_OVERHEAD = dg.DATAGRAM_OVERHEAD  # a frame record alone in one datagram


class Egress:
    def __init__(self, me: bytes, links: LinkTable, routes: Routes, macs: MacTable,
                 underlay: Underlay, drops: Counters, stats: Counters,
                 origin: OriginAuth) -> None:
        self.me = me
        self.origin = origin  # proves us the source of relayed and broadcast records
        self.links = links
        self.routes = routes
        self.macs = macs
        self.underlay = underlay
        self.drops = drops
        self.stats = stats
        self.port: Port | None = None  # set when the node opened it
        self.vnet = False  # our port hands us virtio headers and super-frames
        self.clamp_mss = True  # lower the MSS of TCP SYNs to the link's path (--no-clamp-mss)
        self._touched: list[Link] = []  # links with queued records, flushed per event
        # What relayed peers take (relayed segment sets) and our own set ids for them:
        # one counter for every destination, since their sets are kept per source.
        self.caps = relayseg.PeerCaps()
        self._relay_set_id = 0
        self._icmp_window = 0.0
        self._icmp_sent = 0

    # ------------------------------------------------------------------ port -> links
    def on_port_readable(self) -> None:
        port = self.port
        assert port is not None
        try:
            # One frame first: a lone one (a ping, a request) goes out before the read
            # that ends the batch (EAGAIN), off the round trip's critical path (``_lone``).
            frames = port.read_batch(1)
            if not frames:
                return
            if self._lone(frames[0], port.vnet):
                frames = port.read_batch(BATCH - 1)
                if not frames:
                    return
            else:
                frames += port.read_batch(BATCH - 1)
        except OSError as e:
            self.drops.inc("port_read_error")
            log.warning("reading %s failed: %s", port.name, e)
            return
        self._classify(frames)

    def _lone(self, raw: bytes, vnet_on: bool) -> bool:
        """Seal and send the batch's first frame at once if it takes the short path.

        The short path: a finished frame (no offload work) to a unicast MAC whose peer
        has a usable direct UDP link with nothing queued, not a TCP SYN (MSS clamping),
        fitting one datagram. It is the per-frame path below cut to what such a frame
        needs, so that a router woken cold by a lone frame runs (and fetches) less code
        before its ``sendto``. False leaves the frame to ``_classify``, which counts
        whatever it drops (a MAC conflict, a runt) as before.
        """
        if vnet_on:
            if len(raw) < _VNET_MIN or raw[0] & _NEEDS_CSUM or raw[1]:  # a runt, unfinished
                return False
            f = raw[_VNET_HDR_LEN:]
        else:
            f = raw
            if len(f) < 14:
                return False
        if f[0] & 1 or f[0:6] == f[6:12]:  # multicast; to itself (_classify: local_dst)
            return False
        now = time.monotonic()
        macs = self.macs
        owner = macs.lookup(f[0:6], now)
        if owner is None or owner == LOCAL:
            return False
        link = self.links.links.get(owner)
        if (link is None or not link.usable or link.over_tcp or link.pending
                or len(f) + _LONE_OVERHEAD > link.pmtu.current):
            return False
        if self.clamp_mss and len(f) >= 58 and (
                f[23] == 6 and f[47] & 2 if f[14] == 0x45 else mss.maybe_syn(f)):
            return False
        if not macs.learn_local(f[6:12], now):
            return False
        self.underlay.send(link, dg.frame_record(f))
        c = self.stats.c  # no method calls: the point of this path
        c["port_rx_frames"] += 1
        c["tx_lone_frames"] += 1
        return True

    def _classify(self, frames: list[bytes]) -> None:
        """Classify, queue and flush a batch of frames read from the port."""
        port = self.port
        assert port is not None
        now = time.monotonic()
        me = self.me
        macs = self.macs
        links = self.links.links
        routes = self.routes
        queue = self.queue
        vnet_on = port.vnet
        clamp_on = self.clamp_mss
        maybe_syn = mss.maybe_syn
        off = 0
        flood: list[Link] | None = None  # our broadcast tree's links, once per batch
        for raw in frames:
            if vnet_on:
                if len(raw) < _VNET_MIN:
                    self.drops.inc("runt")
                    continue
                # A partial checksum or a GSO type: the frame is unfinished; it goes as it
                # is to a peer that takes offloaded frames, else it is finished here.
                off = raw[0] & _NEEDS_CSUM or raw[1]
                f = raw[_VNET_HDR_LEN:]
            else:
                f = raw
                if len(f) < 14:
                    self.drops.inc("runt")
                    continue
            dst = f[0:6]
            if not macs.learn_local(f[6:12], now):
                self.drops.inc("mac_conflict")
                continue
            owner: bytes | None = None
            if dst[0] & 1:
                if dst.startswith(STP_PREFIX):
                    self.drops.inc("stp")
                    continue
            else:
                owner = macs.lookup(dst, now)
                if owner == LOCAL:
                    self.drops.inc("local_dst")
                    continue
            if owner is None:  # group or unknown: down our own broadcast tree
                if flood is None:
                    flood = self.tree_links(me, None)
                if flood:
                    for g in self._finish(raw) if off else (f,):
                        rec = self.broadcast_record(g)
                        for child in flood:
                            queue(child, rec)
                continue
            link = links.get(owner)
            relayed = False
            if link is None or not link.usable:
                hop = routes.next_hop(owner)
                via = links.get(hop) if hop is not None else None
                if via is not None and via is not link:
                    link, relayed = via, True
                elif link is None:
                    self.drops.inc("no_route")
                    continue
                # else: not confirmed yet, but the only way
            # A TCP SYN? A few byte reads (IPv4 without options inline: nearly all
            # traffic), the whole check only for frames that may be one (proto.mss).
            # The protocol byte before the flags byte: in a UDP frame byte 47 is payload,
            # its SYN bit set half the time, so testing it first read both bytes for half
            # of all UDP frames (bench/test_micro.py::test_syn_screen).
            if clamp_on and len(f) >= 58 and (f[23] == 6 and f[47] & 2 if f[14] == 0x45
                                              else maybe_syn(f)):
                raw, f = self._clamp(link, raw, f, off, relayed)
            if relayed:
                self.tell_caps(owner, now, via=link)
                if off and raw[1] and self._queue_relayed_offloaded(link, owner, raw, now):
                    continue
                for g in self._finish(raw) if off else (f,):
                    rrec = self.relayed_record(owner, g)
                    if rrec is not None:
                        queue(link, rrec)
            elif not off:
                queue(link, dg.frame_record(f))  # the hot path: direct, 4 bytes of framing
            elif not (link.usable and self._queue_offloaded(link, raw)):
                for g in self._finish(raw):
                    queue(link, dg.frame_record(g))
        self.stats.inc("port_rx_frames", len(frames))
        self.flush_touched()

    def _queue_offloaded(self, link: Link, raw: bytes) -> bool:
        """Queue an unfinished frame (virtio header + frame) whole for ``link``'s peer.

        False when the peer or the path cannot take it; the caller then finishes it in
        software. A single frame too big for one datagram also goes back to the caller,
        so that the per-frame path answers it as before (ICMP too big, IP fragments).
        """
        if not (self.vnet and link.peer_vnet) or link.over_tcp:
            return False
        return self._queue_cut(link, lambda max_body: superframe.cut(
            raw, link.next_frag_id(), max_body),
            "tx_superframes" if raw[1] else "tx_offloaded_frames")

    def _queue_relayed_offloaded(self, link: Link, dst: bytes, raw: bytes, now: float,
                                 ) -> bool:
        """Queue a super-frame for ``dst`` through ``link`` as a relayed segment set
        (``forward.relayseg``); False when ``dst`` did not tell us it takes them or the
        set does not fit the path (the caller then cuts ordinary frames)."""
        if not self.vnet or link.over_tcp or not self.caps.takes_sets(dst, now, link.peer):
            return False
        self._relay_set_id = set_id = (self._relay_set_id + 1) & 0xFFFFFFFF
        return self._queue_cut(link, lambda max_body: relayseg.cut(
            raw, set_id, max_body, self.origin, self.me, dst), "tx_relayed_superframes")

    def _queue_cut(self, link: Link, cut: Callable[[int], list[bytes] | None],
                   counter: str) -> bool:
        """Queue the records ``cut(max_body)`` makes for ``link``; False if it made none."""
        try:
            recs = cut(link.pmtu.current - dg.HEADER_LEN - dg.TAG_LEN)
        except vnet.VnetError:
            return False  # the software path counts it under its reason
        if recs is None:
            return False
        if not link.pending:
            self._touched.append(link)
        link.pending += recs
        link.stats.inc(counter)
        return True

    def _clamp(self, link: Link, raw: bytes, f: bytes, off: int, relayed: bool,
               ) -> tuple[bytes, bytes]:
        """(raw, frame) with a SYN's MSS lowered to fit ``link``'s path (proto.mss).

        An unfinished frame keeps its virtio header; a super-frame never carries a SYN,
        and a partial checksum (NEEDS_CSUM) is completed later over the new bytes, so
        only a finished checksum is adjusted here.
        """
        if off and raw[1]:
            return raw, f
        out = mss.clamp(f, relayed_mtu(link.pmtu.current) if relayed
                        else overlay_mtu(link.pmtu.current),
                        fix_csum=not (off and raw[0] & _NEEDS_CSUM))
        if out is None:
            return raw, f
        link.stats.inc("mss_clamped")
        return (raw[:_VNET_HDR_LEN] + out if off else out), out

    def _finish(self, raw: bytes) -> list[bytes]:
        """Ordinary frames for an unfinished one: checksum completed, TSO cut in software."""
        try:
            out = vnet.to_frames(raw[:_VNET_HDR_LEN], raw[_VNET_HDR_LEN:])
        except vnet.VnetError as e:
            self.drops.inc(e.reason)
            return []
        self.stats.inc("tx_segmented" if raw[1] else "tx_csum_completed")
        return out

    # ------------------------------------------------------------------ records we originate
    def relayed_record(self, dst: bytes, frame: bytes | memoryview,
                       kind: int = dg.KIND_FRAME) -> bytes | None:
        """Our frame (or ``kind`` record) for ``dst`` through a relay: ids and our tag for
        ``dst``, or None (counted) when ``dst``'s topology record, hence its key, is not
        known yet."""
        auth = self.origin.seal(dst, kind, frame)
        if auth is None:
            self.drops.inc("origin_no_key")
            return None
        return dg.encode_record(kind, frame, src=self.me, dst=dst, hops=dg.MAX_HOPS,
                                auth=auth)

    def tell_caps(self, peer: bytes, now: float, via: Link | None = None) -> None:
        """Our caps record for ``peer`` (relayed traffic flows between us) when due: it
        says we join relayed segment sets (when our port takes super-frames) and echoes
        ``peer``'s last record, proving ``peer``'s way to us (``forward.relayseg``)."""
        caps = self.caps
        if not self.vnet or caps.quiet(peer, now):
            return
        if via is None:
            via = self.towards(peer)
            if via is None:
                return
        if not caps.due(peer, now, via.peer):
            return
        payload, rid = caps.record(peer, via.peer, now)
        rec = self.relayed_record(peer, payload, relayseg.KIND_CAPS)
        if rec is not None:  # noted only once it goes: a record never sent proves nothing
            caps.told(peer, rid, via.peer, now)
            self.queue(via, rec)

    def on_caps(self, src: bytes, payload: memoryview, now: float) -> None:
        """``src``'s proven caps record: learnt, and answered at once if it asks."""
        got = relayseg.parse_caps(payload)
        if got is None:
            self.drops.inc("bad_caps")
            return
        bits, rid, echo = got
        self.caps.learn(src, bits, rid, echo, now)
        self.tell_caps(src, now)

    def broadcast_record(self, frame: bytes | memoryview) -> bytes:
        """Our frame down our broadcast tree, signed: receivers further down the tree
        hear it from a relay and believe only the signature."""
        return dg.encode_record(dg.KIND_FRAME, frame, src=self.me, hops=dg.MAX_HOPS,
                                bcast=True, auth=self.origin.sign(dg.KIND_FRAME, frame))

    # ------------------------------------------------------------------ where records go
    def tree_links(self, source: bytes, came_from: bytes | None) -> list[Link]:
        """Links to our children in ``source``'s broadcast tree.

        For our own frames, direct links the mesh does not (yet) show as symmetric
        are added: their peers are outside the tree, so no one else covers them.
        """
        links = self.links.links
        routes = self.routes
        out = [links[c] for c in routes.broadcast(source)
               if c in links and c != came_from and c != source]
        if source == self.me:
            reach = routes.unicast()
            out += [lk for p, lk in links.items() if p not in reach]
        return out

    def towards(self, dest: bytes) -> Link | None:
        """The link to the next hop towards ``dest`` (for relayed and routed-back records)."""
        links = self.links.links
        hop = self.routes.next_hop(dest)
        via = links.get(hop) if hop is not None else None
        return via if via is not None else links.get(dest)  # unconfirmed beats a drop

    def queue(self, link: Link, rec: bytes) -> None:
        if not link.pending:
            self._touched.append(link)
        link.pending.append(rec)

    def flush_touched(self) -> None:
        touched, self._touched = self._touched, []
        for link in touched:
            self._flush(link)

    def _flush(self, link: Link) -> None:
        records, link.pending = link.pending, []
        if not records:
            return
        if link.over_tcp:
            bodies, oversize = pack(records, TCP_MAX_BODY)
            link.stats.inc("drop_too_big", len(oversize))
            for body in bodies:
                link.send_control({"t": "d", "b": body})
                link.stats.inc("tx_tcp_bytes", len(body))
            return
        datagram = link.pmtu.current
        max_body = datagram - dg.HEADER_LEN - dg.TAG_LEN
        bodies, oversize = pack(records, max_body)
        if oversize:
            frags: list[bytes] = []
            for rec in oversize:
                frags += self._too_big(link, rec, datagram, max_body)
            if frags:
                more, still = pack(frags, max_body)
                bodies += more
                link.stats.inc("drop_too_big", len(still))
        if len(bodies) == 1:
            self.underlay.send(link, bodies[0])
        else:
            self.underlay.send_many(link, bodies)

    def _too_big(self, link: Link, rec: bytes, datagram: int, max_body: int) -> list[bytes]:
        """Fragment (returned as records) or answer with ICMP; never a silent drop."""
        frags, reply, outcome = shrink(rec, datagram)
        if not frags and (reply is None or rec[2] != dg.KIND_FRAME):
            # No ICMP can help (IPv6 below 1280, not IP, a broadcast): carry it in pieces.
            # A super-frame's piece goes so too: its sender's TCP meets the ICMP (if any)
            # by lowering its MSS, and would resend the whole segment if it were dropped.
            frags = fragment(rec, link.next_frag_id(), max_body)
            outcome = "sleeve_fragmented" if frags and reply is None else outcome
        link.stats.inc(outcome)
        if reply is None:
            return frags
        now = time.monotonic()
        if now - self._icmp_window >= 1.0:
            self._icmp_window, self._icmp_sent = now, 0
        if self._icmp_sent >= ICMP_PER_SECOND:
            self.drops.inc("icmp_rate_limited")
            return frags
        self._icmp_sent += 1
        src = record_source(rec)
        if src is None or src == self.me:
            assert self.port is not None
            self.port.write(reply)  # the sender is on our side
            return frags
        # The sender is behind another peer: route the ICMP back to it like any frame.
        via = self.towards(src)
        if via is not None:
            rrec = self.relayed_record(src, reply)
            if rrec is not None:
                self.queue(via, rrec)
        return frags

    # ------------------------------------------------------------------ per tick
    def tick(self, now: float) -> None:
        """Heartbeats, PMTU probes and GSO proofs on every link that is not punching."""
        ready = [link for link in self.links
                 # punching: the traversal part sends its punch datagrams instead; holding:
                 # the dialler's datagram comes first (links.link.GUESS_HOLD). Nothing of
                 # ours would leave (Underlay.send drops it), so no probe may start either:
                 # a PMTU probe sent into that drop waited PROBE_TIMEOUT (1 s) for its ack,
                 # and the inbound side of every new link stayed "pending" that long.
                 if not (link.virtual and not link.endpoint_learnt)
                 and not link.holding_guess(now)]
        for link in ready:
            if now >= link.next_hb:
                # fast until the peer hears us; over TCP, slow probes notice UDP coming back;
                # on a settled link only the leader's (proto.liveness.heartbeat)
                hb = liveness.heartbeat(now, leads=self.me < link.peer, confirmed=link.confirmed,
                                        heard_at=link.heard_at, over_tcp=link.over_tcp,
                                        answered_at=link.hb_answered_at,
                                        sent_at=link.hb_sent_at, dead_after=UDP_DEAD)
                link.next_hb = hb.next_at
                if hb.send:
                    self.underlay.send(link, link.heartbeat_record(now))
                else:
                    link.stats.inc("heartbeats_skipped")
        for link in ready:
            self.underlay.path_limit(link, now)
            self.probe(link, now)
            self.underlay.gso_proof(link, now)

    def probe(self, link: Link, now: float) -> None:
        for p in link.pmtu.poll(now):
            self.underlay.send(link, probe_record(p))
