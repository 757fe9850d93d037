"""Hole punching: control connections relayed through a neighbour, then UDP both ways.

Two peers that the mesh knows but that cannot dial each other (both behind NAT) run
the ordinary control handshake over a common neighbour's control connections (``via``
messages, see ``traversal.relay``); the mediator relays opaque bytes and adds the UDP
endpoint it observes for each. Then both punch to the observed and the announced
endpoints, in the sequence ``traversal.plan`` describes (one side opens its own NAT
with a low hop limit, the other crosses; a second crossing after stale NAT entries
expired covers two NATs with no router between them). An attempt that hears nothing
in ``plan.ATTEMPT_TIME`` is closed and, for as long as the peer stays relayed, tried
again afresh (new relayed handshake, freshly observed endpoints, the next plan)
after a quiet backoff; the mesh relays meanwhile. ``status()`` says per peer what was
tried, how it ended and when the next attempt is; ``punch_attempts``,
``punch_successes`` and ``punch_failed`` count them.

Relayed connections run through the node's ``spawn`` (``control.dialler.task_spawner``),
which counts and logs a task's unexpected exception and keeps the router running; the
attempt is retried after its backoff like one that failed.

Roles: the peer with the smaller id starts; a mediator relays at most ``4 x
MAX_VIRTUAL`` streams and tells the other end ``fin`` when either end leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from sleeve.crypto.keys import format_peer_id
from sleeve.forward.underlay import Underlay
from sleeve.links.link import Link
from sleeve.links.table import LinkTable
from sleeve.proto.stats import Counters
from sleeve.proto.topology import Topology
from sleeve.traversal import candidates, plan, predict, punchstatus, spray
from sleeve.traversal.attempt import Attempt, PeerPunch
from sleeve.traversal.hopsock import HopMeter
from sleeve.traversal.predict import Prediction
from sleeve.traversal.relay import RelayWriter
from sleeve.traversal.spray import Sprayer

log = logging.getLogger("sleeve")

PUNCH_GRACE = 2.0  # a newly seen peer gets this long to be dialled directly first
MAX_VIRTUAL = 64  # relayed control connections in progress or up

# Runs a control connection over a relayed stream: Connections.run(reader, writer, outbound, ts)
RunConnection = Callable[[asyncio.StreamReader, RelayWriter, bool, None],
                         Coroutine[Any, Any, str]]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Traversal:
    def __init__(self, me: bytes, links: LinkTable, topology: Topology, underlay: Underlay,
                 drops: Counters, stats: Counters, *, enabled: bool,
                 run_connection: RunConnection, prediction: bool = True,
                 spraying: bool = True) -> None:
        self.me = me
        self.links = links
        self.topology = topology
        self.underlay = underlay
        self.drops = drops
        self.stats = stats
        self.enabled = enabled  # --no-discovery turns punching off too
        self.prediction = prediction  # --no-port-prediction: neither announce nor probe
        self.spraying = spraying  # --no-spray: never open spray sockets nor spray probes
        self._run_connection = run_connection
        self.spawn: Spawn | None = None  # the node's task group, while running
        # our gateway's port mapping (traversal.portmap), announced to peers when there is one
        self.mapped: Callable[[], tuple[str, int] | None] = lambda: None
        # peers whose first direct dial is untried or in flight (control.dialler): not
        # punched until it fails -- on a loaded host the dial outlasts PUNCH_GRACE, and
        # relayed attempts to peers it is about to reach only add load (issue 23)
        self.direct_first: Callable[[], set[bytes]] = set
        self._announced: tuple[str, int] | None = None  # the mapping peers were last told
        # relayed control connections: peer -> (reader, writer, mediator peer)
        self.virtual: dict[bytes, tuple[asyncio.StreamReader, RelayWriter, bytes]] = {}
        # streams whose far end said fin: asyncio asserts on data fed after EOF
        self._fin_seen: weakref.WeakSet[RelayWriter] = weakref.WeakSet()
        self.peers: dict[bytes, PeerPunch] = {}  # only peers in the topology: bounded
        # streams we relay as mediator, (from, to): told "fin" when either end leaves
        self._via_pairs: dict[tuple[bytes, bytes], None] = {}
        self.obs = predict.Observations()  # what peers see of our UDP endpoint
        self.meter = HopMeter(drops, stats, lambda: underlay.udp)  # traversal.hops

    # ------------------------------------------------------------------ starting attempts
    def tick(self, now: float) -> None:
        """Follow every relayed link's attempt: punch, notice success, give up (every tick)."""
        mapped = self.mapped()
        if mapped != self._announced:  # a mapping came (or changed) mid-attempt: tell them
            self._announced = mapped
            for peer, pp in self.peers.items():
                cur = pp.current
                if cur is not None and cur.link is not None and self.links.get(
                        peer) is cur.link:
                    self._send_candidates(cur.link, cur.ours)
        self.tell_seen()
        if self.enabled:
            self.meter.tick(now, self.nat, self.links, self.obs.seen)
        for link in self.links:
            if not link.virtual:
                continue
            rec, att = self._attempt_for(link, now)
            if att.result:
                continue  # punched: an ordinary direct link now
            if link.endpoint_learnt:
                att.result = f"direct after {now - att.started:.1f} s"
                rec.successes += 1
                rec.failures = 0
                self.stats.inc("punch_successes")
                if self._by_prediction(link, att):
                    att.result += f", at {'our' if att.ours else 'its'} predicted port"
                    self.stats.inc("punch_predict_successes")
                elif self._by_spray(link, att):
                    att.result += (", on our spray socket" if att.spray_role == "open"
                                   else ", at a sprayed port")
                    self.stats.inc("punch_spray_successes")
                self.underlay.close_spray(link)
                _close_far(att)
                log.info("hole punched to %s: %s (%s)", link.name, att.result,
                         att.plan.describe())
                continue
            self._punch_send(link, rec, att, now)
        for rec in self.peers.values():  # attempts whose relayed connection went away
            cur = rec.current
            if cur is not None and cur.link is not None and self.links.get(
                    cur.link.peer) is not cur.link:
                self._ended(rec, cur, now, "relayed connection closed")

    def close(self) -> None:
        """The router stops: the hop meter's probe sockets close (traversal.hopsock)."""
        for rec in self.peers.values():
            if rec.current is not None:
                _close_far(rec.current)
        self.meter.close()

    def attempting(self) -> bool:
        """An attempt is in progress (its punch steps need the node's 4 Hz tick)."""
        return self.meter.measuring or any(r.current is not None for r in self.peers.values())

    def _attempt_for(self, link: Link, now: float) -> tuple[PeerPunch, Attempt]:
        """The attempt on relayed ``link``, begun now if it is new."""
        rec = self.peers.get(link.peer)
        if rec is None:
            rec = self.peers[link.peer] = PeerPunch(now + PUNCH_GRACE)
        att = rec.tried[-1] if rec.tried else None
        if att is not None and att.link is link:
            return rec, att
        if att is not None and not att.result:
            self._ended(rec, att, now, "relayed connection closed")
        rec.attempts += 1
        self.stats.inc("punch_attempts")
        p = plan.plan_for(self.me < link.peer, link.session.local_index,
                          link.session.remote_index, rec.attempts)
        k = self.meter.k_min
        if k is not None:
            # measured already: the opener opens with TTL k_min from the first tick (only
            # the crosser's adjacency waits for the far NAT's distance)
            p = replace(p, hops=k - 1)
        att = Attempt(rec.attempts, now, p, link, index_plan=p, open_now=k is not None)
        att.far = self.meter.start_far(link.endpoint[0], now)
        att.ours = self.nat().prediction if self.prediction else None
        if att.ours is not None:
            # Our NAT gives this attempt's flow a port no one saw: we open it first
            # (hop-limited: nothing reaches the far NAT), the peer crosses to the
            # predicted ports (traversal.predict).
            att.plan = replace(att.plan, opener=True)
            self.stats.inc("punch_predict_attempts")
        rec.tried.append(att)
        log.info("hole punching to %s: attempt %d, %s%s", link.name, att.n, att.plan.describe(),
                 f"; our NAT changes ports, predicted {att.ours.describe()}" if att.ours else "")
        self._send_candidates(link, att.ours)
        return rec, att

    @staticmethod
    def _by_prediction(link: Link, att: Attempt) -> bool:
        """Whether the punched path is one only the prediction could find."""
        if att.pred is not None and link.endpoint in att.pred.endpoints():
            return True
        return att.ours is not None and link.endpoint not in att.lan + att.mapped

    def _by_spray(self, link: Link, att: Attempt) -> bool:
        """Whether the punched path is one the spray found."""
        if att.spray_role == "open":
            return link in self.underlay.pinned
        sp = att.sprayer
        return sp is not None and link.endpoint[0] == sp.host and sp.probed(link.endpoint[1])

    def nat(self) -> predict.NatKind:
        """Our NAT's behaviour, from what the linked peers see of our UDP endpoint."""
        sock = self.underlay.udp
        # Our own addresses (the local ends of our control connections): a peer that
        # sees us at one of them sees us without a NAT between (our LAN), which says
        # nothing about the NAT the public peers see.
        own = set()
        for lk in self.links:
            name = lk.writer.get_extra_info("sockname")
            if isinstance(name, tuple) and name and isinstance(name[0], str):
                own.add(name[0])
        return self.obs.nat(sock.getsockname()[1] if sock is not None else 0, own)

    def tell_seen(self) -> None:
        """Tell each peer whose datagrams we hear the UDP source we see for it (predict)."""
        for link in self.links:
            if link.endpoint_learnt and self.obs.to_tell(link.peer, link.endpoint):
                link.send_control({"t": "seen", "ep": [link.endpoint[0], link.endpoint[1]]})

    def on_seen(self, link: Link, m: dict[str, Any]) -> None:
        """A peer says where it sees our UDP endpoint (authenticated: its control link)."""
        ep = predict.decode_seen(m)
        if ep is None:
            self.drops.inc("bad_seen")
            return
        self.obs.on_seen(link.peer, link.endpoint[0], ep)

    def _send_candidates(self, link: Link, ours: Prediction | None) -> None:
        """Tell the peer our endpoint on the route to the mediator (our LAN address)."""
        med = self.links.get(link.mediator) if link.mediator is not None else None
        if med is None:
            return
        name = med.writer.get_extra_info("sockname")
        sock = self.underlay.udp6 if isinstance(name, tuple) and ":" in str(name[0]) \
            else self.underlay.udp
        if sock is None:
            return
        eps = candidates.local_candidate(name, sock.getsockname()[1])
        mapped = self.mapped()
        m = candidates.encode(eps, [mapped] if mapped else None)
        m["nat"] = self.nat().kind  # the peer decides with it whether to spray
        if not self.spraying:
            m["spray"] = False  # --no-spray: the peer then takes no spray role either
        if ours is not None:
            m["pred"] = ours.encode()
        link.send_control(m)

    def on_cand(self, link: Link, m: dict[str, Any]) -> None:
        """The peer's LAN endpoints for the attempt in progress (dropped otherwise)."""
        if "adj" in m and "eps" not in m:  # the opener's measured verdict, alone
            self._on_adj(link, m["adj"])
            return
        eps, mapped = candidates.decode(m), candidates.decode_mapped(m)
        pred = predict.decode_pred(m)
        theirs = m.get("nat", "unknown")
        if (eps is None or mapped is None or pred is False or theirs not in spray.KINDS
                or not isinstance(m.get("spray", True), bool)):
            self.drops.inc("bad_cand")
            return
        if not link.virtual or link.endpoint_learnt or self.links.get(link.peer) is not link:
            self.drops.inc("cand_no_attempt")  # punched, or a replaced connection's message
            return
        # the peer's message may come before our tick saw the link: begin it now
        _, att = self._attempt_for(link, time.monotonic())
        if att.result:
            self.drops.inc("cand_no_attempt")
            return
        att.lan, att.mapped = eps, mapped
        if isinstance(pred, Prediction) and pred.host != link.endpoint[0]:
            # only the address the mediator saw the peer's NAT at: a member must not
            # aim our probes at any host it likes
            self.drops.inc("bad_pred_host")
        elif isinstance(pred, Prediction) and not self.prediction:
            self.stats.inc("punch_predict_declined")  # --no-port-prediction: no probes
        elif isinstance(pred, Prediction) and att.pred is None:
            att.pred = pred
            # the peer opens its NAT, we cross to its predicted ports; where both NATs
            # change ports the session indexes pick the roles, as without prediction
            assert att.index_plan is not None
            att.plan = replace(att.plan, opener=False) if att.ours is None else att.index_plan
            self.stats.inc("punch_predict_attempts")
            log.info("hole punching to %s: its NAT changes ports; probing %s", link.name,
                     pred.describe())
        elif (att.ours is None and att.pred is None and not att.spray_role and self.spraying
              and m.get("spray") is not False):
            self._spray_role(link, att, spray.role(self.nat().kind, theirs))

    def _on_adj(self, link: Link, adj: Any) -> None:
        """``{"t": "cand", "adj": bool}``: the opener measured whether its datagrams
        reach our NAT (traversal.hops); an unmeasured crosser plans with it."""
        rec = self.peers.get(link.peer)
        att = rec.current if rec is not None else None
        if not isinstance(adj, bool):
            self.drops.inc("bad_cand")
        elif att is None or att.link is not link or self.links.get(link.peer) is not link:
            self.drops.inc("cand_no_attempt")
        else:
            att.peer_adjacent = adj
            if att.use_peer_verdict():
                log.info("hole punching to %s: the opener measured; %s", link.name,
                         att.plan.describe())

    def _spray_role(self, link: Link, att: Attempt, role: str) -> None:
        """Take a spray role in this attempt (bounded: MAX_SPRAYS at once)."""
        busy = sum(1 for r in self.peers.values() if (c := r.current) is not None and c.spray_role)
        if not role or busy >= spray.MAX_SPRAYS:
            return
        if role == "open" and not candidates.decode({"eps": [[link.endpoint[0], 1]]}):
            return  # no observed address of the peer to keep 128 mappings open to
        if role == "probe":
            host = candidates.decode({"eps": [[link.endpoint[0], 1]]})
            if not host:  # no observed address of the peer's NAT to spray at
                return
            att.sprayer = Sprayer(host[0][0])
        att.spray_role = role
        # the random side opens its mappings first, hop-limited; the other sprays
        att.plan = replace(att.plan, opener=role == "open")
        self.stats.inc("punch_spray_attempts")
        log.info("hole punching to %s: %s", link.name,
                 "our NAT draws random ports: opening spray sockets" if role == "open"
                 else f"its NAT draws random ports: spraying {att.sprayer and att.sprayer.host}")

    def _ended(self, rec: PeerPunch, att: Attempt, now: float, result: str) -> None:
        """An attempt failed: count it, and back off (stale NAT entries expire meanwhile)."""
        rec.failures += 1
        att.result = result
        rec.next_at = now + plan.backoff(rec.failures)
        name = format_peer_id(att.link.peer) if att.link is not None else "?"
        if att.link is not None:
            self.underlay.close_spray(att.link)
        _close_far(att)
        att.link = None
        log.info("hole punching to %s failed (%s; %s); next attempt in %.0f s", name,
                 result, att.plan.describe(), rec.next_at - now)
        self.stats.inc("punch_failed")

    def start_attempts(self, now: float) -> None:
        """Start relayed connections to peers no one can dial (the smaller id starts)."""
        if not self.enabled:
            return
        peers = self.topology.peers()
        dialling = self.direct_first()
        for peer in peers:
            if peer == self.me or peer in self.links or peer in self.virtual:
                continue
            rec = self.peers.get(peer)
            if rec is None:
                rec = self.peers[peer] = PeerPunch(now + PUNCH_GRACE)
            if peer < self.me or now < rec.next_at or len(self.virtual) >= MAX_VIRTUAL:
                continue
            if peer in dialling:
                continue
            med = self._mediator_for(peer)
            if med is None or self.spawn is None:
                continue
            # a handshake that never completes still waits out a whole attempt and
            # the quiet time before the next; a failed attempt sets its own backoff
            rec.next_at = now + plan.ATTEMPT_TIME + plan.backoff(rec.failures + 1)
            self._start_virtual(peer, med, None, True)
        for peer in list(self.peers):
            if peer not in peers:
                cur = self.peers[peer].current
                if cur is not None and cur.link is not None:
                    self.underlay.close_spray(cur.link)  # a new attempt would open more
                if cur is not None:
                    _close_far(cur)
                del self.peers[peer]

    def _punch_send(self, link: Link, rec: PeerPunch, att: Attempt, now: float) -> None:
        """A heartbeat to every endpoint the peer may have, as the attempt's plan says."""
        age = now - att.started
        if age > plan.ATTEMPT_TIME:
            # Give up on this attempt; start_attempts tries again after a quiet backoff
            # (the stale NAT entries expire meanwhile), and the mesh relays.
            self._ended(rec, att, now, f"no datagram from the peer in {age:.0f} s")
            link.writer.close()
            return
        if not self._hops_decided(link, att, age) and not (att.open_now and att.plan.opener):
            return  # wait (at most hops.MEASURE_TIME) for the far NAT's distance
        send, ttl = att.plan.step(age)
        # the endpoint the mediator observed (the peer's NAT mapping) and the announced
        # port on the same address (a port-preserving NAT)
        eps = {link.endpoint, (link.endpoint[0], link.hello_port)}
        obs = link.remote_tcp
        if obs[0] != "relay" and 0 < obs[1] < 65536:
            eps.add(obs)
        # The first crossing goes to the announced port only. Where the peer's NAT is
        # adjacent (see traversal.plan), the opener's datagram reached our NAT, and a
        # crossing to the observed endpoint would clash with it: Linux then maps us to a
        # random port and, reusing that mapping for the same source (even after it
        # expired, until conntrack's garbage collection), spoils the second crossing.
        # Where the peer's NAT kept its port (observed == announced), this is the
        # observed endpoint anyway: the fast path on the internet.
        first = att.plan.first_crossing(age)
        targets = [(link.endpoint[0], link.hello_port)] if first else sorted(eps)
        out: dict[candidates.Endpoint, int | None] = {ep: ttl for ep in targets} if send else {}
        # the peer's LAN endpoints, every tick: a short hop limit keeps them near
        out.update((ep, candidates.LAN_HOPS) for ep in att.lan if ep not in eps)
        # the peer's gateway forwards its mapped port: the full TTL, every tick, from the
        # start, even where it is also the observed endpoint (a port-preserving NAT maps
        # the same port: the plan's low hop limit would never reach the gateway)
        out.update((ep, None) for ep in att.mapped)
        # the peer's NAT changes ports: cross to where its next mappings will be
        if att.pred is not None and send and not att.plan.opener:
            out.update((ep, None) for ep in att.pred.endpoints() if ep not in eps)
        elif att.sprayer is not None and age >= plan.OPEN_TIME:
            ports = att.sprayer.next()
            out.update(((att.sprayer.host, p), None) for p in ports)
            if ports and att.sprayer.sent in (len(ports), spray.PROBES):
                log.info("hole punching to %s: %s", link.name, att.sprayer.describe())
        for ep, limit in out.items():
            self.underlay.send_ttl(link, ep, link.session.seal(link.heartbeat_record(now)), limit)
        if att.spray_role == "open" and age >= att.next_keep:
            self._spray_open(link, att, age, sorted(eps), now)

    def _spray_open(self, link: Link, att: Attempt, age: float,
                    eps: list[candidates.Endpoint], now: float) -> None:
        """Our NAT draws random ports: many sockets open many mappings to the peer's
        endpoint, hop-limited (they must not reach the far NAT), refreshed now and then."""
        att.next_keep = age + spray.KEEP_EVERY  # first: a failed open waits its turn too
        if not att.spray_sockets:
            att.spray_sockets = self.underlay.open_spray(link, spray.SOCKETS)
            log.info("hole punching to %s: %d spray sockets open, keepalives to %s",
                     link.name, att.spray_sockets, ", ".join(f"{h}:{p}" for h, p in eps))
        for sock in self.underlay.spray_sockets(link):
            for ep in eps:
                self.underlay.send_ttl(link, ep, link.session.seal(link.heartbeat_record(now)),
                                       att.plan.hops + 1, sock)

    def _mediator_for(self, peer: bytes) -> Link | None:
        for p in sorted(self.links.links):
            rec = self.topology.get(p)
            link = self.links.links[p]
            if rec is not None and link.usable and any(
                    c.peer == peer and c.established for c in rec.conns):
                return link
        return None

    def _start_virtual(self, peer: bytes, med: Link, observed: tuple[str, int] | None,
                       outbound: bool) -> None:
        mid = med.peer
        links = self.links

        def send(msg: dict[str, Any]) -> bool:
            link = links.get(mid)
            if link is None or link.writer.is_closing():
                return False
            link.send_control(msg)
            return True

        def buffered() -> int:
            link = links.get(mid)
            return 0 if link is None else link.write_backlog()

        reader = asyncio.StreamReader()
        writer = RelayWriter(peer, send, buffered, observed, mid)
        self.virtual[peer] = (reader, writer, mid)

        async def run() -> None:
            try:
                await self._run_connection(reader, writer, outbound, None)
            finally:
                if self.virtual.get(peer, (None, None, None))[1] is writer:
                    del self.virtual[peer]

        assert self.spawn is not None
        coro = run()
        try:
            self.spawn(coro)
        except RuntimeError:  # the router's task group is shutting down: no new streams
            coro.close()
            del self.virtual[peer]
            self.drops.inc("via_refused")

    # ------------------------------------------------------------------ via messages
    def on_via(self, link: Link, m: dict[str, Any]) -> None:
        to = m.get("to")
        if isinstance(to, bytes) and len(to) == 8:  # we are the mediator: pass it on
            self._mediate(link, to, m)
            return
        frm, data = m.get("from"), m.get("d")
        if not (isinstance(frm, bytes) and len(frm) == 8):
            self.drops.inc("bad_via")
            return
        entry = self.virtual.get(frm)
        if m.get("fin") is True:
            if entry is not None and entry[2] == link.peer and entry[1] not in self._fin_seen:
                self._fin_seen.add(entry[1])
                entry[0].feed_eof()
            return
        if not isinstance(data, bytes):
            self.drops.inc("bad_via")
            return
        ep = m.get("ep")
        observed = None
        if ep is not None:
            # the mediator's view of the peer's UDP source: an address literal only (a
            # name would be resolved, blocking, wherever the endpoint is used)
            observed = predict.decode_seen({"ep": ep})
            if observed is None:
                self.drops.inc("bad_via_ep")  # the stream's bytes still count
        if entry is None:
            # Only the smaller id starts, only peers we know, only while unconnected.
            if (frm >= self.me or frm in self.links or len(self.virtual) >= MAX_VIRTUAL
                    or frm not in self.topology.peers() or self.spawn is None):
                self.drops.inc("via_refused")
                return
            self._start_virtual(frm, link, observed, False)
            entry = self.virtual.get(frm)
            if entry is None:  # refused: shutting down
                return
        reader, writer, mid = entry
        if mid != link.peer:
            self.drops.inc("via_wrong_mediator")
            return
        if writer in self._fin_seen:  # a peer's bytes after its own fin: nothing reads them
            self.drops.inc("via_after_fin")
            return
        if writer.observed is None and observed is not None:
            writer.observed = observed
        reader.feed_data(data)

    def _mediate(self, link: Link, to: bytes, m: dict[str, Any]) -> None:
        target = self.links.get(to)
        if target is None:
            self.drops.inc("via_no_route")
            return
        fwd: dict[str, Any] = {"t": "via", "from": link.peer}
        data = m.get("d")
        if m.get("fin") is True:
            fwd["fin"] = True
        elif isinstance(data, bytes):
            fwd["d"] = data
        else:
            self.drops.inc("bad_via")
            return
        if link.endpoint_learnt:
            fwd["ep"] = [link.endpoint[0], link.endpoint[1]]
        target.send_control(fwd)
        self.stats.inc("via_relayed")
        pair = (link.peer, to)
        if "fin" in fwd:
            self._via_pairs.pop(pair, None)
        elif pair not in self._via_pairs:
            if len(self._via_pairs) >= 4 * MAX_VIRTUAL:
                self._via_pairs.pop(next(iter(self._via_pairs)))
            self._via_pairs[pair] = None

    def link_down(self, link: Link) -> None:
        """A link left: relayed streams through it end, and their other ends are told."""
        peer = link.peer
        self.obs.forget(peer, still_linked=peer in self.links)
        self.underlay.release(link)
        for a, b in list(self._via_pairs):
            if peer in (a, b) and peer not in self.links:
                del self._via_pairs[(a, b)]
                other = self.links.get(b if a == peer else a)
                if other is not None:  # the relayed stream's other end learns it is over
                    other.send_control({"t": "via", "from": peer, "fin": True})
        for reader, w, med in list(self.virtual.values()):
            if med == peer and not w.is_closing():  # relayed streams die with their relay
                w.abort()
                reader.feed_eof()

    # ------------------------------------------------------------------ status
    def status(self, now: float) -> dict[str, Any]:
        """Per peer: what was tried, how it ended, when the next attempt is."""
        return {"enabled": self.enabled, "nat": self.nat().status(),
                "peers": punchstatus.peers(self, now), "hop_limit": self.meter.status()}

    def _hops_decided(self, link: Link, att: Attempt, age: float) -> bool:
        """Decide the attempt's hop limit from the measurements (once); False: wait."""
        if att.verdict is not None:
            return True
        v = self.meter.decide(att.far, age)
        if v is None:
            return False
        _close_far(att)
        att.verdict = v
        if v.k_min is not None:
            # measured: h = k_min - 1 (the plan opens with h + 1 and keeps its own NAT
            # open with h, which dies there); adjacent: the crosser waits for the far
            # NAT's stale entry to expire instead of crossing into it
            att.plan = replace(att.plan, hops=v.k_min - 1, adjacent=v.adjacent)
            if att.index_plan is not None:
                att.index_plan = replace(att.index_plan, hops=v.k_min - 1, adjacent=v.adjacent)
        if att.plan.opener and v.k_min is not None and v.d_far is not None:
            link.send_control({"t": "cand", "adj": v.adjacent})  # for an unmeasured crosser
        att.use_peer_verdict()  # we are that crosser, and its verdict came first
        log.info("hole punching to %s: hop limit %s: %s; %s", link.name, v.ttl, v.why,
                 att.plan.describe())
        return True


def _close_far(att: Attempt) -> None:
    if att.far is not None:
        att.far.close()
        att.far = None
