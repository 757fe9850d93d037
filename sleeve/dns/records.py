"""The DNS record table: a sans-IO gossip channel (``"dns"``) of names -> addresses.

A record is {name, address, owner id, origin peer, version, tombstone}. Its identity is
(origin, name, address, owner) (``wire.Key``); version and tombstone are its state, merged
as ``wire`` describes (higher version wins, equal version -> tombstone wins). The codec
and its field diagram are in ``sleeve.dns.wire``.

Trust rule (who may change a record of origin O):

- **Only O changes O's records.** Local ``add``/``remove`` only ever touch our own
  records, each change bumping our per-origin counter (versions of our records only grow,
  even across tombstone expiry).
- **Broadcasts** arrive with an authenticated origin; a broadcast from O may carry only
  O's records (anything else refuses the whole message: ``foreign_origin``).
- **Gossip** comes from an authenticated neighbour but relays other origins' records;
  we trust their versions (as Weave does: the channel is not signed per record, see
  "not done" in the package docstring) with two limits: records of an origin we were
  told is gone (``peer_gone``) are refused for ``gone_holddown`` seconds unless they come
  from that peer itself (as gossip src or broadcast origin) or ``is_known_peer`` says it
  is back; records of an origin ``is_known_peer`` does not know are refused
  (``unknown_origin``) unless they come from that peer itself; and nobody else can
  change **our** records: when gossip carries one of ours at a version >= ours with
  another state, or one we do not hold (a former life of ours, before a restart), we
  re-assert our state (or a tombstone for the one we do not
  hold) at version+1 and gossip it, which outbids the contradiction everywhere.

Tombstones are kept ``tombstone_ttl`` seconds (30 min) so a removal outlives stale
copies still in flight, then dropped by ``tick(now)``. ``peer_gone`` drops that peer's
records at once. Bounds: ``max_per_origin`` and ``max_total`` records (tombstones
included), names of at most ``max_name_len`` characters; what gossip brings beyond them
is dropped and counted (``drops``); a local ``add`` beyond them raises ``TableFull``.

Lookups are case-insensitive; ``lookup`` gives the live addresses of a name (each once),
``lookup_address`` the live names of an address (PTR).
"""

from __future__ import annotations

import collections
import heapq
import math
from collections.abc import Callable, Iterable
from typing import Any

from sleeve.dns.names import MAX_NAME_LEN, IPAddress, check_name, parse_address
from sleeve.dns.wire import (
    MAX_MSG,
    MAX_TOMB,
    MAX_VERSION,
    Key,
    RecordSet,
    State,
    WireError,
    check_owner,
    decode,
    wins,
)
from sleeve.proto.gossip import Gossip, GossipData, GossipRefused

TOMBSTONE_TTL = 1800.0
GONE_HOLDDOWN = 600.0
MAX_GONE = 1024


class TableFull(Exception):
    """A local ``add`` would exceed the table's bounds."""


class _Rec:
    __slots__ = ("expires", "state")

    def __init__(self, state: State, expires: float) -> None:
        self.state = state
        self.expires = expires  # local deadline of a tombstone; inf while live


class Records:
    """The record table of the peer ``me`` (8-byte peer id); implements ``Gossiper``."""

    def __init__(
        self,
        me: bytes,
        *,
        tombstone_ttl: float = TOMBSTONE_TTL,
        max_per_origin: int = 4096,
        max_total: int = 65536,
        max_name_len: int = MAX_NAME_LEN,
        max_msg: int = MAX_MSG,
        gone_holddown: float = GONE_HOLDDOWN,
        is_known_peer: Callable[[bytes], bool] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if len(me) != 8:
            raise ValueError("peer id must be 8 bytes")
        self.me = me
        self.tombstone_ttl = tombstone_ttl
        self.max_per_origin = max_per_origin
        self.max_total = max_total
        self.max_name_len = max_name_len
        self.max_msg = max_msg
        self.gone_holddown = gone_holddown
        self.is_known_peer = is_known_peer
        self.on_change = on_change
        self._gossip: Gossip | None = None
        self._recs: dict[Key, _Rec] = {}
        self._by_name: dict[str, set[Key]] = {}
        self._by_addr: dict[bytes, set[Key]] = {}
        self._by_origin: dict[bytes, set[Key]] = {}
        self._expiry: list[tuple[float, Key]] = []  # heap; stale entries skipped lazily
        self._gone: dict[bytes, float] = {}  # origin -> refuse relayed records until
        self._clock = 0  # highest version of ours we have used or seen
        self._now = 0.0
        self.changes = 0  # bumped on every change of the table (also the SOA serial)
        self.reasserted = 0
        self.drops: collections.Counter[str] = collections.Counter()

    def set_gossip(self, gossip: Gossip) -> None:
        """The handle from ``router.register("dns", records)``: local changes go out on it."""
        self._gossip = gossip

    # -- local API (our own records only) ---------------------------------------------------
    def add(self, name: str, address: str | bytes | IPAddress, owner_id: str, now: float) -> bool:
        """Register ``name`` -> ``address`` for ``owner_id``; False if it was already live.
        Raises ``BadName``/``ValueError`` for bad input and ``TableFull`` past the bounds."""
        self._now = now
        k = Key(self.me, check_name(name, self.max_name_len), parse_address(address).packed,
                check_owner(owner_id))
        cur = self._recs.get(k)
        if cur is not None and cur.state.tomb == 0:
            return False
        if cur is None:
            why = self._full(self.me)
            if why:
                raise TableFull(f"dns table full ({why.replace('_', ' ')})")
        self._local({k: State(self._next_version(), 0)}, now)
        return True

    def remove(self, name: str, address: str | bytes | IPAddress | None, now: float) -> int:
        """Tombstone our live records of ``name`` (any owner), only those with ``address``
        if given; returns how many."""
        n = check_name(name, MAX_NAME_LEN).lower()
        a = None if address is None else parse_address(address).packed
        return self._tombstone_ours(
            (k for k in self._by_name.get(n, ()) if a is None or k.address == a), now)

    def remove_owner(self, owner_id: str, now: float) -> int:
        """Tombstone all our live records of ``owner_id`` (a container went away)."""
        return self._tombstone_ours(
            (k for k in self._by_origin.get(self.me, ()) if k.owner == owner_id), now)

    def _tombstone_ours(self, keys: Iterable[Key], now: float) -> int:
        self._now = now
        left = self._left(now + self.tombstone_ttl, now)
        ch = {k: State(self._next_version(), left) for k in sorted(keys)
              if k.origin == self.me and self._recs[k].state.tomb == 0}
        self._local(ch, now)
        return len(ch)

    def _local(self, ch: dict[Key, State], now: float) -> None:
        for k, st in ch.items():
            self._put(k, st, now)
        if ch:
            self._changed()
            if self._gossip is not None:
                for msg in RecordSet(ch, self.max_msg).encode():
                    self._gossip.broadcast(msg)

    @property
    def clock(self) -> int:
        """The highest version of ours used or seen (persist it to outbid a former life)."""
        return self._clock

    def advance_clock(self, version: int) -> None:
        """Our next records get versions above ``version`` (a restart restores the clock
        it saved, so peers that still hold our former records take the new ones)."""
        self._clock = max(self._clock, min(int(version), MAX_VERSION))

    def own_records(self) -> list[tuple[str, str, str]]:
        """Our live records as (name, address, owner), sorted (what persistence saves)."""
        return sorted((k.name, str(parse_address(k.address)), k.owner)
                      for k in self._by_origin.get(self.me, ())
                      if self._recs[k].state.tomb == 0)

    def _next_version(self) -> int:
        self._clock = min(self._clock + 1, MAX_VERSION)
        return self._clock

    # -- lookups ----------------------------------------------------------------------------
    def lookup(self, name: str) -> list[IPAddress]:
        """Live addresses of ``name`` (case-insensitive, relative to the domain), each once,
        in a stable order (the resolver shuffles)."""
        seen: dict[bytes, None] = {}
        for k in sorted(self._by_name.get(name.rstrip(".").lower(), ())):
            if self._recs[k].state.tomb == 0:
                seen.setdefault(k.address)
        return [parse_address(a) for a in seen]

    def lookup_address(self, address: str | bytes | IPAddress) -> list[str]:
        """Live names (as registered) with ``address``, each once (for PTR)."""
        a = parse_address(address).packed
        names = {k.name.lower(): k.name for k in self._by_addr.get(a, ())
                 if self._recs[k].state.tomb == 0}
        return [names[n] for n in sorted(names)]

    def entries(self, tombstones: bool = False) -> list[dict[str, Any]]:
        """Every record as a dict (for ``status dns``), sorted by name."""
        out = []
        for k in sorted(self._recs, key=lambda k: (k.name.lower(), k)):
            st = self._recs[k].state
            if st.tomb and not tombstones:
                continue
            out.append({"name": k.name, "address": str(parse_address(k.address)),
                        "owner": k.owner, "origin": k.origin.hex(), "version": st.version,
                        "tombstone": st.tomb > 0})
        return out

    def status(self) -> dict[str, Any]:
        live = sum(1 for r in self._recs.values() if r.state.tomb == 0)
        return {
            "peer": self.me.hex(), "records": len(self._recs), "live": live,
            "tombstones": len(self._recs) - live,
            "origins": {o.hex(): len(ks) for o, ks in sorted(self._by_origin.items())},
            "changes": self.changes, "reasserted": self.reasserted,
            "drops": dict(self.drops), "gone": sorted(o.hex() for o in self._gone),
        }

    # -- timer ------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        t = [self._expiry[0][0]] if self._expiry else []
        t += list(self._gone.values())
        return min(t) if t else None

    def tick(self, now: float) -> int:
        """Drop tombstones that have expired by ``now`` (and stale gone marks); returns
        how many records went."""
        self._now = now
        n = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, k = heapq.heappop(self._expiry)
            r = self._recs.get(k)
            if r is not None and r.state.tomb and r.expires <= now:
                self._drop(k)
                n += 1
        for o in [o for o, t in self._gone.items() if t <= now]:
            del self._gone[o]
        if n:
            self._changed()
        return n

    # -- Gossiper ---------------------------------------------------------------------------
    def gossip(self) -> GossipData | None:
        if not self._recs:
            return None
        return RecordSet({k: self._wire_state(r) for k, r in self._recs.items()}, self.max_msg)

    def on_gossip(self, src: bytes, msg: bytes, now: float) -> GossipData | None:
        self._now = now
        self._gone.pop(src, None)  # it just spoke to us: it is not gone
        delta = self._receive(msg, now, only=None, src=src)
        return delta if delta.entries else None

    def on_broadcast(self, origin: bytes, msg: bytes, now: float) -> bool:
        self._now = now
        self._gone.pop(origin, None)
        return bool(self._receive(msg, now, only=origin, src=origin).entries)

    def on_unicast(self, src: bytes, msg: bytes, now: float) -> None:
        self.drops["unicast"] += 1
        raise GossipRefused("unicast", "the dns channel takes no unicasts")

    def peer_gone(self, peer: bytes) -> None:
        if peer == self.me:
            return
        mine = list(self._by_origin.get(peer, ()))
        for k in mine:
            self._drop(k)
        if len(self._gone) >= MAX_GONE:
            del self._gone[min(self._gone, key=self._gone.__getitem__)]
        self._gone[peer] = self._now + self.gone_holddown
        if mine:
            self._changed()

    # -- merge ------------------------------------------------------------------------------
    def _receive(self, msg: bytes, now: float, only: bytes | None, src: bytes) -> RecordSet:
        try:
            items = decode(msg)
        except WireError as e:
            self.drops["malformed"] += 1
            raise GossipRefused("malformed", str(e)) from None
        if only is not None and any(k.origin != only for k, _ in items):
            self.drops["foreign_origin"] += 1
            raise GossipRefused("foreign_origin", "a broadcast carries only its origin's records")
        delta = RecordSet(max_msg=self.max_msg)
        for k, st in items:
            if k.origin == self.me:
                self._contradiction(k, st, now, delta)
            elif self._origin_ok(k.origin, src, now) and self._merge(k, st, now):
                delta.entries[k] = self._wire_state(self._recs[k])
        if delta.entries:
            self._changed()
        return delta

    def _origin_ok(self, origin: bytes, src: bytes, now: float) -> bool:
        # A neighbour's own records are believed before the topology knows it: the
        # topology now arrives as a digest whose records follow a round trip later
        # (gossip.topology), after the neighbour's DNS state on a new link.
        if origin != src and self.is_known_peer is not None and not self.is_known_peer(origin):
            self.drops["unknown_origin"] += 1
            return False
        until = self._gone.get(origin)
        if until is None or origin == src:
            return True
        if until <= now or self.is_known_peer is not None:
            del self._gone[origin]  # hold-down over, or the topology knows it again
            return True
        self.drops["gone_origin"] += 1
        return False

    def _merge(self, k: Key, st: State, now: float) -> bool:
        if len(k.name) > self.max_name_len:
            self.drops["name_too_long"] += 1
            return False
        cur = self._recs.get(k)
        if cur is not None:
            if not wins(st, cur.state):
                return False
        else:
            why = self._full(k.origin)
            if why:
                self.drops[why] += 1
                return False
        self._put(k, st, now)
        return True

    def _contradiction(self, k: Key, st: State, now: float, delta: RecordSet) -> None:
        """Gossip carried one of our own records; outbid it if it is not what we hold."""
        self._clock = max(self._clock, min(st.version, MAX_VERSION))
        cur = self._recs.get(k)
        if cur is None:
            if st.tomb:
                return  # a tombstone from a former life: it says what we say
            if self._full(self.me):
                self.drops["origin_full"] += 1
                return
            mine = State(self._next_version(), self._left(now + self.tombstone_ttl, now))
        elif st.version > cur.state.version or (
                st.version == cur.state.version and (st.tomb > 0) != (cur.state.tomb > 0)):
            mine = State(self._next_version(), cur.state.tomb and self._left(cur.expires, now))
        else:
            return  # older than ours (or the same): nothing to outbid
        self.reasserted += 1
        self._put(k, mine, now)
        delta.entries[k] = mine

    # -- table ------------------------------------------------------------------------------
    def _full(self, origin: bytes) -> str:
        if len(self._recs) >= self.max_total:
            return "table_full"
        if len(self._by_origin.get(origin, ())) >= self.max_per_origin:
            return "origin_full"
        return ""

    def _left(self, expires: float, now: float) -> int:
        return max(1, min(MAX_TOMB, math.ceil(expires - now)))

    def _wire_state(self, r: _Rec) -> State:
        if r.state.tomb == 0:
            return r.state
        return State(r.state.version, self._left(r.expires, self._now))

    def _put(self, k: Key, st: State, now: float) -> None:
        r = self._recs.get(k)
        expires = math.inf if st.tomb == 0 else now + min(st.tomb, self.tombstone_ttl)
        if r is None:
            self._recs[k] = _Rec(st, expires)
            self._by_name.setdefault(k.name.lower(), set()).add(k)
            self._by_addr.setdefault(k.address, set()).add(k)
            self._by_origin.setdefault(k.origin, set()).add(k)
        else:
            r.state, r.expires = st, expires
        if st.tomb:
            heapq.heappush(self._expiry, (expires, k))

    def _drop(self, k: Key) -> None:
        del self._recs[k]
        _unindex(self._by_name, k.name.lower(), k)
        _unindex(self._by_addr, k.address, k)
        _unindex(self._by_origin, k.origin, k)

    def _changed(self) -> None:
        self.changes += 1
        if self.on_change is not None:
            self.on_change()


def _unindex(index: dict[Any, set[Key]], ik: Any, k: Key) -> None:
    s = index[ik]
    s.discard(k)
    if not s:
        del index[ik]
