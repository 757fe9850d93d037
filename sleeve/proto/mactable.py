"""MAC address table: which peer owns which Ethernet address (sans-IO).

Keys are the 6 raw address bytes (no per-frame objects). Values are the
owner peer id (``LOCAL`` for our own port) and the last time the address was
seen as a *source*. Entries expire after ``max_age`` seconds and the table
never holds more than ``max_size`` entries: when full, the least recently
refreshed 1/8 is evicted at once so the cost is amortised.

Rules (Weave's mac_cache let a remote source always win; that let any member,
or any relay speaking for one, take over every other host's addresses):

- an address is *held* by its owner while the owner used it as a source within
  the last ``hold`` seconds (default 60): nobody else -- another peer, or our own
  port -- takes it meanwhile. A claim on a held address is refused and counted
  (``learn_local`` returns False, a conflict; ``learn_remote`` returns the drop
  reason ``mac_takeover``) and the frame is dropped by the caller;
- once the holder has been silent for ``hold`` seconds, the next claimant gets it
  (a move, counted): that is how a VM or container that really moved is found at
  its new host, at most ``hold`` seconds after its last frame at the old one. The
  holder itself releases its addresses at once when its link goes down or it leaves
  the mesh (``forget_peer``). The trade-off: a genuine move of a chatty address is
  seen up to a minute late, and an address silent for a minute can be claimed by a
  member (as it could always be by a host on the same L2 segment);
- one remote peer holds at most ``max_per_peer`` addresses (default 4096): a new
  address beyond that is refused (``mac_peer_cap``), so one member cannot fill the
  table and evict everyone else's entries. Our own port is not capped.
"""

from __future__ import annotations

from typing import Final

LOCAL: Final = b"\x00" * 8
MAX_AGE: Final = 600.0  # longer than typical ARP cache lifetimes
MAX_SIZE: Final = 65536
HOLD: Final = 60.0  # a silent holder's address may be claimed after this (a move)
MAX_PER_PEER: Final = 4096  # addresses one remote peer may hold
# Refreshing last-seen on every frame costs a dict store per frame; only do it when stale.
REFRESH: Final = 10.0
_CAP_EXPIRE_EVERY: Final = 1.0  # a peer at its cap triggers a full expiry at most this often


class _Entry:
    __slots__ = ("owner", "seen")

    def __init__(self, owner: bytes, seen: float) -> None:
        self.owner = owner
        self.seen = seen


def is_group(mac: bytes | memoryview) -> bool:
    """Broadcast and multicast addresses have the I/G bit set in the first octet."""
    return bool(mac[0] & 1)


class MacTable:
    __slots__ = ("_cap_expired", "_counts", "_refresh", "_t", "capped", "conflicts",
                 "evictions", "hold", "max_age", "max_per_peer", "max_size", "moves",
                 "refused")

    def __init__(self, max_size: int = MAX_SIZE, max_age: float = MAX_AGE,
                 hold: float = HOLD, max_per_peer: int = MAX_PER_PEER) -> None:
        self._t: dict[bytes, _Entry] = {}
        self._counts: dict[bytes, int] = {}  # entries per owner (expired ones until purged)
        self.max_size = max_size
        self.max_age = max_age
        self.hold = min(hold, max_age)
        self.max_per_peer = max_per_peer
        # a refresh interval longer than the lifetime (or the hold) would let live
        # entries expire (or be taken over) while their owner still uses them
        self._refresh = min(REFRESH, max_age / 2, self.hold / 2)
        self._cap_expired = float("-inf")
        self.conflicts = 0  # local claims refused
        self.refused = 0  # remote takeovers refused
        self.capped = 0  # remote learns refused over a peer's cap
        self.moves = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._t)

    def count(self, owner: bytes) -> int:
        """Entries ``owner`` holds (expired ones included until they are purged)."""
        return self._counts.get(owner, 0)

    def lookup(self, mac: bytes, now: float) -> bytes | None:
        e = self._t.get(mac)
        if e is None:
            return None
        if now - e.seen > self.max_age:
            self._drop(mac, e)
            return None
        return e.owner

    def learn_local(self, mac: bytes, now: float) -> bool:
        """Learn a locally captured source. False = conflict with a remote holder."""
        e = self._t.get(mac)
        if e is not None and now - e.seen <= self.max_age:
            if e.owner == LOCAL:
                if now - e.seen > self._refresh:
                    e.seen = now
                return True
            if now - e.seen <= self.hold:
                self.conflicts += 1
                return False
            self._move(e, LOCAL, now)  # the remote holder went silent: it moved here
            return True
        # absent or expired (whether or not a lookup purged it yet): a fresh entry
        self._insert(mac, LOCAL, now)
        return True

    def refresh(self, mac: bytes, peer: bytes, now: float) -> bool:
        """Whether ``mac`` is live and ``peer``'s already (then refreshed): the common
        case of ``learn_remote``, answered without changing anything else."""
        e = self._t.get(mac)
        if e is None or e.owner != peer or now - e.seen > self.max_age:
            return False
        if now - e.seen > self._refresh:
            e.seen = now
        return True

    def learn_remote(self, mac: bytes, peer: bytes, now: float) -> str | None:
        """Learn ``mac`` as ``peer``'s from its authenticated frame.

        None when learnt (or refreshed); else the drop reason (``mac_takeover``,
        ``mac_peer_cap``) and the table is unchanged.
        """
        e = self._t.get(mac)
        if e is not None and now - e.seen > self.max_age:
            self._drop(mac, e)  # expired: relearning it is not a move
            e = None
        if e is not None:
            if e.owner == peer:
                if now - e.seen > self._refresh:
                    e.seen = now
                return None
            if now - e.seen <= self.hold:
                self.refused += 1
                return "mac_takeover"
        if self._counts.get(peer, 0) >= self.max_per_peer and not self._room(peer, now):
            self.capped += 1
            return "mac_peer_cap"
        if e is not None:
            self._move(e, peer, now)
        else:
            self._insert(mac, peer, now)
        return None

    def _room(self, peer: bytes, now: float) -> bool:
        """Whether purging expired entries (at most once a second) frees ``peer`` a slot."""
        if now - self._cap_expired < _CAP_EXPIRE_EVERY:
            return False
        self._cap_expired = now
        self.expire(now)
        return self._counts.get(peer, 0) < self.max_per_peer

    def forget_peer(self, peer: bytes) -> int:
        gone = [m for m, e in self._t.items() if e.owner == peer]
        for m in gone:
            del self._t[m]
        self._counts.pop(peer, None)
        return len(gone)

    def expire(self, now: float) -> int:
        old = [(m, e) for m, e in self._t.items() if now - e.seen > self.max_age]
        for m, e in old:
            self._drop(m, e)
        return len(old)

    def entries(self, now: float) -> list[tuple[bytes, bytes, float]]:
        return [(m, e.owner, now - e.seen) for m, e in self._t.items()
                if now - e.seen <= self.max_age]

    def _drop(self, mac: bytes, e: _Entry) -> None:
        del self._t[mac]
        self._uncount(e.owner)

    def _uncount(self, owner: bytes) -> None:
        n = self._counts[owner] - 1
        if n:
            self._counts[owner] = n
        else:
            del self._counts[owner]

    def _move(self, e: _Entry, owner: bytes, now: float) -> None:
        self.moves += 1
        self._uncount(e.owner)
        self._counts[owner] = self._counts.get(owner, 0) + 1
        e.owner = owner
        e.seen = now

    def _insert(self, mac: bytes, peer: bytes, now: float) -> None:
        old = self._t.get(mac)
        if old is not None:
            self._drop(mac, old)
        if len(self._t) >= self.max_size:
            self.expire(now)
        if len(self._t) >= self.max_size:
            victims = sorted(self._t.items(), key=lambda kv: kv[1].seen)
            n = max(1, self.max_size // 8)
            for m, e in victims[:n]:
                self._drop(m, e)
            self.evictions += n
        self._t[mac] = _Entry(peer, now)
        self._counts[peer] = self._counts.get(peer, 0) + 1
