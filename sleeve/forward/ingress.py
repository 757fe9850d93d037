"""Ingress: authenticated datagrams to our port, to other peers, or to their answers.

Pipeline, per datagram the underlay read (one UDP GRO run counts per datagram):

1. header -> session by receiver index -> open (authenticate) -> replay check, and
   only then learn: the peer's UDP endpoint, the local address it sent to (our
   replies' source, ``underlay.set_source``), that the link hears it (``udp_ok``);
2. records: a frame another peer than the sending hop originated is believed only
   with its source's own proof (``proto.origin``: tag or signature, then replay
   window); frames for us are learnt (src MAC -> source peer, a peer may not take an
   address another peer holds, ``proto.mactable``) and written to the port; frames
   for another peer are relayed to its next hop (hop limit, proof copied; a body that
   is one such record is passed on from its header bytes, ``forward.relayrun``); pieces of
   relayed super-frames for us are proven one by one and joined per source
   (``forward.relayseg``); broadcasts
   are delivered and passed on to our children in the source's tree (a TCP SYN's MSS
   is clamped to the path it came by before delivery, ``proto.mss``); offloaded
   records (virtio header + super-frame pieces) join their segment sets and are
   written whole; heartbeats and PMTU probes are answered;
3. after the batch: relayed records are flushed through egress, and the port is
   read at once for the answers our kernel queued while we wrote (``after_batch``);
   when the batch's first datagram wrote a frame (a ping), before the next read.

Untrusted input is counted in ``drops`` with a reason and never raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sleeve.config import Target
from sleeve.forward import relayrun, relayseg, superframe, udpruns
from sleeve.forward.egress import Egress
from sleeve.forward.reassembly import KIND_FRAGMENT
from sleeve.forward.relayseg import relayed_mtu
from sleeve.forward.superframe import KIND_VNET, KIND_VNET_SEG, SALVAGE_AFTER
from sleeve.forward.underlay import GSO_PROOF_ID, Underlay
from sleeve.links.link import Link
from sleeve.links.table import LinkTable
from sleeve.proto import datagram as dg
from sleeve.proto import mss, vnet
from sleeve.proto.icmp import is_too_big
from sleeve.proto.mactable import MacTable
from sleeve.proto.pmtu import ack_record, overlay_mtu, parse_probe
from sleeve.proto.stats import Counters

log = logging.getLogger("sleeve")

_REC_UNPACK = dg.REC.unpack_from  # on_body's hot path: module constants, no attribute lookups
_REC_LEN = dg.REC_LEN
_KIND_FRAME = dg.KIND_FRAME
# Records parsed inline when sent directly by the link's peer (no flags): frames and
# offloaded frames; offloaded ones with flags (relayed) are refused.
_HOT_KINDS = frozenset((dg.KIND_FRAME, KIND_VNET, KIND_VNET_SEG))
_VNET_HDR_LEN = vnet.HDR_LEN
# Records a relay passes on unopened when their destination is another peer.
_RELAYABLE = relayrun.RELAYABLE
_HOP = relayrun.HOP


class Ingress:
    def __init__(self, me: bytes, links: LinkTable, macs: MacTable, egress: Egress,
                 underlay: Underlay, drops: Counters, stats: Counters) -> None:
        self.me = me
        self.links = links
        self.macs = macs
        self.egress = egress
        self.underlay = underlay
        self.drops = drops
        self.stats = stats
        self.origin = egress.origin
        self._salvage_armed = False
        self._delivered = False  # frames written to the port in this event (see after_batch)
        self._first = True  # no datagram handled yet in this read batch (see on_datagram)
        self.clamp_mss = True  # lower SYNs' MSS to the path they came by (--no-clamp-mss)
        # Small UDP frames of one flow written as one USO super-frame (forward.udpruns);
        # off for good if our kernel refuses one (the frames then go one by one).
        self.join_udp = True
        self._runs = udpruns.UdpRuns()
        self.relayed_sets = relayseg.RelayedSets()  # relayed super-frames, per proven source
        self._run: relayrun.RelayedRun | None = None  # see _relayed_run

    # ------------------------------------------------------------------ from the underlay
    def after_batch(self) -> None:
        """Flush relayed records, then read the port right after writing frames to it.

        Writing a frame into the TAP runs our kernel's receive path inside that system
        call, so its answer (a TCP ACK, an echo reply) is usually queued on the TAP when
        the write returns. Reading it now, while this process is running, sends it on
        without a round through epoll and the wake-up of a cold interpreter, a large
        part of a Python router's latency (see bench/results/perf-notes.md).
        """
        self._answers()
        self._first = True  # the next read starts a batch

    def _answers(self) -> None:
        self.egress.flush_touched()  # relayed records, one aggregation per batch
        if self._runs:
            self._write_run()
        if self._delivered:
            self._delivered = False
            self.egress.on_port_readable()

    def on_run(self, data: bytes, seg: int, addr: tuple[Any, ...]) -> int:
        """One coalesced read: datagrams of ``seg`` bytes (the last may be shorter).

        Each datagram is checked and opened on its own, exactly as ``on_datagram``
        does; what is per read (the clock, the endpoint, counters) is done once per
        link, and a body that is a single KIND_VNET_SEG record (a super-frame's piece,
        nearly every datagram of a bulk flow) goes straight to its segment set; one
        relayed record goes to the read's ``relayrun.RelayedRun`` (passed on, or proven
        with the other pieces of its run). Returns how many datagrams the read held.
        """
        self._first = False
        now = time.monotonic()
        me = self.me
        open_ = self._open
        cur: Link | None = None
        count = nbytes = total = 0
        run = self._relayed_run()  # relayed records of this read: passed on, or proven in runs
        # end() in a finally: what this read forwarded is counted, and pieces gathered
        # are proven, even if a later datagram raised (counted internal_error upstream)
        try:
            for off in range(0, len(data), seg):
                total += 1
                d = data[off:off + seg]
                link, body = open_(d)
                if link is None or body is None:
                    continue
                if link is not cur:  # learn from the first authenticated datagram, before its body
                    if cur is not None:
                        _count_rx(cur, count, nbytes)
                    cur, count, nbytes = link, 0, 0
                    self._heard(link, addr, now)
                count += 1
                nbytes += len(d)
                n = len(body)
                if (n > _REC_LEN and body[2] == KIND_VNET_SEG and not body[3]
                        and (body[0] << 8 | body[1]) + _REC_LEN == n and link.peer != me):
                    if run.pieces:
                        run.join(now)  # frames keep their order
                    self._on_segment(link, memoryview(body)[_REC_LEN:], now)
                    continue
                if relayrun.one_relayed(body) and run.take(link, body, now):
                    continue
                if run.pieces:
                    run.join(now)
                self.on_body(link, body, len(d), now, False)
        finally:
            run.end(now)
        if cur is not None:
            _count_rx(cur, count, nbytes)
        return total

    def _open(self, data: bytes) -> tuple[Link, bytes] | tuple[None, None]:
        """The link and authenticated body of a datagram, or (None, None), counted."""
        try:
            index, counter = dg.decode_header(data)
        except dg.DecodeError as e:
            self.drops.inc(e.reason)
            return None, None
        link = self.links.by_index.get(index)
        if link is None:
            self.drops.inc("unknown_session")
            return None, None
        body = link.session.open(counter, data)
        if isinstance(body, str):
            self.drops.inc(body)
            link.stats.inc(f"drop_{body}")
            return None, None
        return link, body

    def on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        link, body = self._open(data)
        if link is None or body is None:
            self._first = False
            return
        # Authenticated and fresh: only now may the datagram teach us anything.
        now = time.monotonic()
        _count_rx(link, 1, len(data))
        self._heard(link, addr, now)
        n = len(body)
        # One frame sent directly by the link's peer (a ping, a request, an ACK): to the
        # port without on_body's record loop; anything else takes the general path.
        if (n > _REC_LEN and body[2] == _KIND_FRAME and not body[3]
                and (body[0] << 8 | body[1]) + _REC_LEN == n and link.peer != self.me):
            self._deliver(link, link.peer, memoryview(body)[_REC_LEN:], now)
        else:
            self._body(link, body, len(data), now)
        if self._first:
            self._first = False
            if self._delivered:
                # The batch's first datagram wrote a frame: its answer (an echo reply)
                # is read and sent now, before the read that ends the batch (EAGAIN),
                # which would otherwise sit on the round trip's critical path.
                self._answers()

    def _body(self, link: Link, body: bytes, size: int, now: float) -> None:
        """An opened body: one relayed record with its proof takes ``forward.relayrun``
        (nearly every datagram of a relayed bulk flow), anything else ``on_body``."""
        if relayrun.one_relayed(body):
            run = self._relayed_run()
            if run.take(link, body, now):
                run.end(now)
                return
        self.on_body(link, body, size, now, False)

    def _relayed_run(self) -> relayrun.RelayedRun:
        """The run for one read (or one datagram), made once and begun afresh."""
        run = self._run
        if run is None:
            run = self._run = relayrun.RelayedRun(self.me, self.egress, self.origin,
                                                  self.drops, self.stats, self._join_proven)
        run.begin()
        return run

    def _heard(self, link: Link, addr: tuple[Any, ...], now: float) -> None:
        """What an authenticated datagram from ``addr`` tells us about its link."""
        if len(addr) != 2:
            addr = addr[:2]  # IPv6: drop flow info and scope id
        if addr != link.endpoint:
            if link.endpoint_learnt:
                log.info("peer %s moved its UDP endpoint %s -> %s", link.name,
                         Target(*link.endpoint), Target(*addr))
            link.endpoint = (addr[0], addr[1])
            link.v6 = ":" in addr[0]
            link.gso_ok = False  # a new path: prove GSO again (next tick)
            link.next_route_check = 0.0  # and read its route's MTU
            link.stats.inc("endpoint_changes")
        src = self.underlay.rx_src  # the local address it came to: we answer from it
        if src != link.rx_src:
            self.underlay.set_source(link, src)
        if self.underlay.rx_extra is not None:  # a spray socket (traversal.spray)
            self.underlay.pin(link)
        first = not link.endpoint_learnt
        link.endpoint_learnt = True
        self.links.heard(link, now)
        if first and not link.outbound:
            # hold over (GUESS_HOLD): search the path MTU now, the route's limit read first
            self.underlay.path_limit(link, now)
            self.egress.probe(link, now)

    def on_tcp_data(self, link: Link, m: dict[str, Any]) -> None:
        """Records that came over the control connection (UDP does not get through)."""
        body = m.get("b")
        if not isinstance(body, bytes):
            self.drops.inc("bad_tcp_data")
            return
        link.stats.inc("rx_tcp_bytes", len(body))
        try:
            self.on_body(link, body, len(body), time.monotonic(), False)
        finally:
            self.after_batch()

    # ------------------------------------------------------------------ records
    def on_body(self, link: Link, body: bytes | memoryview, size: int, now: float,
                reassembled: bool) -> None:
        """Handle an authenticated body's records (``dg.iter_records``, unrolled).

        The hot case, a frame sent directly by the link's peer (kind frame, no flags),
        is parsed inline without building a ``dg.Record``; every other record goes
        through ``dg.parse_record``, with the same framing checks and drop reasons.
        """
        me = self.me
        peer = link.peer
        deliver = self._deliver
        unpack = _REC_UNPACK
        mv = memoryview(body)
        off = 0
        end = len(mv)
        try:
            while off < end:
                if end - off < _REC_LEN:
                    raise dg.DecodeError("truncated_record")
                length, kind, flags = unpack(mv, off)
                if not flags and kind in _HOT_KINDS:
                    start = off + _REC_LEN
                    off = start + length
                    if off > end:
                        raise dg.DecodeError("truncated_record")
                    if peer == me:
                        self.drops.inc("loop")  # our own frame came back round
                        continue
                    if kind == _KIND_FRAME:
                        deliver(link, peer, mv[start:off], now)
                    elif kind == KIND_VNET_SEG:
                        self._on_segment(link, mv[start:off], now)
                    elif length >= _VNET_HDR_LEN:
                        self._deliver_offloaded(link, peer, mv[start:start + _VNET_HDR_LEN],
                                                mv[start + _VNET_HDR_LEN:off], now)
                    else:
                        self.drops.inc("bad_vnet")
                    continue
                at = off
                rec, off = dg.parse_record(mv, off)
                if rec.dst is not None and rec.dst != me and rec.kind in _RELAYABLE:
                    self._relay(rec, mv[at:off])
                    continue
                if rec.kind == dg.KIND_FRAME:
                    src = rec.src or peer
                    if src == me:
                        self.drops.inc("loop")  # our own frame came back round
                        continue
                    if src != peer:  # the link vouches for its peer only
                        bad = self.origin.check(src, rec)
                        if bad is not None:
                            self.drops.inc(bad)
                            continue
                        if not rec.bcast:
                            self.egress.tell_caps(src, now)
                    elif rec.auth is not None:  # its broadcast, first hand: no replays later
                        self.origin.note_direct_broadcast(src, rec)
                    deliver(link, src, rec.payload, now)
                    if rec.bcast:
                        self._pass_on_broadcast(link, src, rec)
                elif rec.kind == dg.KIND_HEARTBEAT:
                    self._on_heartbeat(link, rec.payload, now)
                elif rec.kind == dg.KIND_PROBE:
                    self._on_probe(link, rec, size, now)
                elif rec.kind == KIND_VNET_SEG and rec.dst is not None:
                    self._on_relayed_segment(link, rec, now)
                elif rec.kind == relayseg.KIND_CAPS:
                    self._on_caps(rec, now)
                elif rec.kind in _HOT_KINDS:
                    # offloaded frames are one hop only, but for relayed segment sets
                    self.drops.inc("bad_offload_record")
                elif rec.kind == KIND_FRAGMENT and not reassembled:
                    whole = link.reasm.add(rec.payload, now)
                    if whole is not None:
                        self.on_body(link, whole, size, now, True)
                else:
                    self.drops.inc("unknown_record")
        except dg.DecodeError as e:
            self.drops.inc(e.reason)

    def _relay(self, rec: dg.Record, raw: memoryview) -> None:
        """Pass a record (``raw``, as it came) on towards its destination, proof and
        payload unchanged: only the destination can check the proof, and one without
        any is not worth the bandwidth. Only the hop limit goes down, in place of
        re-encoding: one copy per record, whatever its kind or size."""
        assert rec.dst is not None
        if rec.src is None or rec.auth is None:
            self.drops.inc("origin_unauthenticated")
            return
        if rec.bcast:
            self.drops.inc("bad_relayed_record")  # broadcasts follow trees, not routes
            return
        if rec.hops == 0:
            self.drops.inc("hop_limit")
            return
        via = self.egress.towards(rec.dst)
        if via is None:
            self.drops.inc("no_route")
            return
        self.egress.queue(via, bytes((raw[0], raw[1], raw[2], raw[3] - _HOP)) + raw[4:])
        if rec.kind != relayseg.KIND_CAPS:
            self.stats.inc("relayed_frames")  # a super-frame's piece counts as one frame
            if rec.kind == KIND_VNET_SEG:
                self.stats.inc("relayed_segments")

    def _on_relayed_segment(self, link: Link, rec: dg.Record, now: float) -> None:
        """A piece of a relayed super-frame for us: proven by its source, then into that
        source's segment sets; what completes is written (``forward.relayseg``)."""
        src = self._proven(rec, link.peer, "bad_offload_record", piece=True)
        if src is not None:
            self._join_relayed(link, src, rec.payload, now)

    def _join_relayed(self, link: Link, src: bytes, payload: memoryview, now: float) -> None:
        """A proven piece from ``src`` into its sets; write what that completes."""
        self._join_proven(link, src, [payload], now)

    def _join_proven(self, link: Link, src: bytes, payloads: list[memoryview], now: float,
                     ) -> None:
        """Proven pieces from ``src`` (in order) into its sets; write what they complete."""
        rs = self.relayed_sets
        sets = rs.for_source(src, now)
        if rs.evicted:  # what arrived of the least recently used source's sets
            self._write_relayed(rs.take_evicted(), now)
        add = sets.add
        for payload in payloads:
            writes = add(payload, now)  # the body is not reused: views may be kept
            for hdr, frame in writes:
                self._deliver_offloaded(link, src, hdr, frame, now)
        rs.move_drops(sets, self.drops)
        self.egress.tell_caps(src, now)
        if not self._salvage_armed and sets:
            self._salvage_armed = True
            asyncio.get_running_loop().call_later(SALVAGE_AFTER, self._salvage)

    def _proven(self, rec: dg.Record, not_from: bytes | None, reason: str,
                piece: bool = False) -> bytes | None:
        """The source of a relayed unicast record for us that its source proved (tag, or
        a ``piece``'s MAC, then replay window), or None, counted: ``reason`` for a record
        no honest source sends (no source or proof, a broadcast, from ``not_from``: the
        sending hop)."""
        src = rec.src
        if src is None or rec.auth is None or rec.bcast or src == not_from:
            self.drops.inc(reason)
            return None
        if src == self.me:
            self.drops.inc("loop")
            return None
        bad = (self.origin.check_piece(src, rec.auth, rec.payload) if piece
               else self.origin.check(src, rec))
        if bad is not None:
            self.drops.inc(bad)
            return None
        return src

    def _on_caps(self, rec: dg.Record, now: float) -> None:
        """A peer's proven word on what it takes (``forward.relayseg``)."""
        src = self._proven(rec, None, "bad_caps")
        if src is not None:
            self.egress.on_caps(src, rec.payload, now)

    def _pass_on_broadcast(self, link: Link, src: bytes, rec: dg.Record) -> None:
        children = self.egress.tree_links(src, link.peer)
        if not children:
            return
        if rec.hops == 0:
            self.drops.inc("hop_limit")
            return
        if rec.auth is None:  # our children would refuse it: the source did not sign
            self.drops.inc("origin_unauthenticated")
            return
        out = dg.encode_record(dg.KIND_FRAME, rec.payload, src=src, hops=rec.hops - 1,
                               bcast=True, auth=rec.auth)
        for child in children:
            self.egress.queue(child, out)
        self.stats.inc("relayed_broadcasts")

    def _deliver(self, link: Link, src_peer: bytes, frame: bytes | memoryview,
                 now: float) -> None:
        # A TCP SYN or SYN-ACK? Clamped to the path it came by, so that our side's
        # answers fit even when the sender's router does not clamp (see egress).
        if self.clamp_mss and len(frame) >= 58 and (
                frame[23] == 6 and frame[47] & 2 if frame[14] == 0x45
                else mss.maybe_syn(frame)):  # protocol first: see egress
            frame = self._clamp(link, frame, src_peer != link.peer, True)
        if self._learn_remote(frame, src_peer, now):
            port = self.egress.port
            assert port is not None
            if self._runs:
                self._write_run()  # frames keep their order on the port
            port.write(frame)
            self._delivered = True
            link.stats.inc("rx_frames")

    def _clamp(self, link: Link, frame: bytes | memoryview, relayed: bool, fix_csum: bool,
               ) -> bytes | memoryview:
        out = mss.clamp(frame, relayed_mtu(link.pmtu.current) if relayed
                        else overlay_mtu(link.pmtu.current), fix_csum)
        if out is None:
            return frame
        link.stats.inc("mss_clamped")
        return out

    def _learn_remote(self, frame: bytes | memoryview, src_peer: bytes, now: float) -> bool:
        if len(frame) < 14:
            self.drops.inc("runt")
            return False
        src = bytes(frame[6:12])
        if src[0] & 1:
            self.drops.inc("bad_src_mac")
            return False
        if self.macs.refresh(src, src_peer, now):
            return True
        # Only a frame that would teach or move the MAC pays for this check. A relay's
        # ICMP "too big" carries the far host's MAC (forward.oversize): delivered, and
        # nothing learnt, also once the far host's own entry is past its hold (learning
        # it would move the far host's MAC to the relay until the host spoke again).
        if is_too_big(frame):
            return True
        refused = self.macs.learn_remote(src, src_peer, now)
        if refused is None:
            return True
        self.drops.inc(refused)  # mac_takeover, mac_peer_cap
        return False

    # ------------------------------------------------------------------ offloaded frames
    def _on_segment(self, link: Link, payload: memoryview, now: float) -> None:
        """A KIND_VNET_SEG record's payload: into its set; write what that completes."""
        sets = link.segsets
        writes = sets.add(payload, now)
        if writes:
            self._write_offloaded(link, writes, now)
        if not self._salvage_armed and sets:
            self._salvage_armed = True
            asyncio.get_running_loop().call_later(SALVAGE_AFTER, self._salvage)

    def _write_offloaded(self, link: Link, writes: list[superframe.Write], now: float) -> None:
        for hdr, frame in writes:
            self._deliver_offloaded(link, link.peer, hdr, frame, now)

    def _salvage(self) -> None:
        """Write out segment sets left incomplete (their missing datagrams are lost)."""
        self._salvage_armed = False
        now = time.monotonic()
        pending = False
        for link in self.links:
            if link.segsets:
                self._write_offloaded(link, link.segsets.expire(now), now)
                pending = pending or bool(link.segsets)
        pending = self._expire_relayed(now) or pending
        if self._runs:
            self._write_run()
        if pending:
            self._salvage_armed = True
            asyncio.get_running_loop().call_later(SALVAGE_AFTER, self._salvage)

    def _deliver_offloaded(self, link: Link, src_peer: bytes, hdr: bytes | memoryview,
                           frame: bytes | memoryview, now: float) -> None:
        """Write a peer's virtio header + frame to our port (the port segments if it must)."""
        reason = vnet.check_raw(hdr, len(frame))
        if reason is not None:
            self.drops.inc(reason)
            return
        if not self._learn_remote(frame, src_peer, now):
            return
        if hdr[0] & vnet.F_DATA_VALID:
            hdr = vnet.sanitized(hdr)  # a peer never vouches for checksums to our kernel
        if self.clamp_mss and not hdr[1] and mss.maybe_syn(frame):  # super-frames: no SYNs
            frame = self._clamp(link, frame, src_peer != link.peer,
                                not hdr[0] & vnet.F_NEEDS_CSUM)
        port = self.egress.port
        assert port is not None
        self._delivered = True
        link.stats.inc("rx_frames")
        if self.join_udp and port.vnet and not hdr[1]:
            key = udpruns.run_key(hdr, frame)
            if key is not None:
                if not self._runs.add(key, hdr, frame):
                    self._write_run()
                    self._runs.add(key, hdr, frame)
                return
        if self._runs:
            self._write_run()
        port.write_vnet(hdr, frame)
        if hdr[1]:
            link.stats.inc("rx_superframes")

    def _write_run(self) -> None:
        """Write the gathered UDP run: one super-frame, or the frames one by one."""
        got = self._runs.take()
        port = self.egress.port
        if got is not None and port is not None:
            self.join_udp = udpruns.write(port, got[0], got[1], self.join_udp, self.stats)

    # ------------------------------------------------------------------ link upkeep
    def _on_probe(self, link: Link, rec: dg.Record, size: int, now: float) -> None:
        msg = None if rec.src or rec.dst else parse_probe(rec.payload)
        if msg is None:
            self.drops.inc("bad_probe")  # probes are one hop, between the two ends only
        elif not msg.is_ack:
            self.egress.queue(link, ack_record(msg.probe_id, size))
        elif msg.probe_id & GSO_PROOF_ID:
            self.underlay.on_gso_ack(link, msg.probe_id, msg.size)
        elif link.pmtu.on_ack(msg.probe_id, now, msg.size):
            self.egress.probe(link, now)  # next search step now, not at the next tick

    def _on_heartbeat(self, link: Link, payload: memoryview, now: float) -> None:
        if len(payload) != 9:
            self.drops.inc("bad_heartbeat")
            return
        if payload[8] == 0:
            link.hb_answered_at = now  # a datagram each way: the follower's own can wait
            self.underlay.send(link, dg.encode_record(dg.KIND_HEARTBEAT,
                                                      bytes(payload[:8]) + b"\x01"))
        else:
            link.on_heartbeat_reply(bytes(payload[:8]), now)

    def tick(self, now: float) -> None:
        """Expire reassemblies; write out segment sets that waited too long."""
        for link in self.links:
            link.reasm.expire(now)
            self._write_offloaded(link, link.segsets.expire(now), now)
        self._expire_relayed(now)

    def _expire_relayed(self, now: float) -> bool:
        """Write out relayed sets left incomplete; True while some are still pending."""
        writes, pending = self.relayed_sets.expire(now, self.drops)
        self._write_relayed(writes, now)
        return pending

    def _write_relayed(self, writes: list[tuple[bytes, superframe.Write]], now: float) -> None:
        for src, (hdr, frame) in writes:
            via = self.egress.towards(src)  # the link the pieces came by, most likely
            if via is None:
                self.drops.inc("no_route")
            else:
                self._deliver_offloaded(via, src, hdr, frame, now)


def _count_rx(link: Link, n: int, nbytes: int) -> None:
    c = link.stats.c  # per datagram or per read: no method calls
    c["rx_packets"] += n
    c["rx_bytes"] += nbytes
