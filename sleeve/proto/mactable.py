"""MAC address table: which peer owns which Ethernet address (sans-IO).

Keys are the 6 raw address bytes (no per-frame objects). Values are the
owner peer id (``LOCAL`` for our own port) and the last time the address was
seen as a *source*. Entries expire after ``max_age`` seconds and the table
never holds more than ``max_size`` entries: when full, the least recently
refreshed 1/8 is evicted at once so the cost is amortised.

Rules (from Weave's mac_cache, kept because they are right):
- a locally captured source does not steal an address owned by a remote peer
  (that is a MAC conflict and is counted), unless the remote entry expired;
- a source learnt from an authenticated remote frame always wins (a VM moved).
"""

from __future__ import annotations

from typing import Final

LOCAL: Final = b"\x00" * 8
MAX_AGE: Final = 600.0  # longer than typical ARP cache lifetimes
MAX_SIZE: Final = 65536
# Refreshing last-seen on every frame costs a dict store per frame; only do it when stale.
REFRESH: Final = 10.0


class _Entry:
    __slots__ = ("owner", "seen")

    def __init__(self, owner: bytes, seen: float) -> None:
        self.owner = owner
        self.seen = seen


def is_group(mac: bytes | memoryview) -> bool:
    """Broadcast and multicast addresses have the I/G bit set in the first octet."""
    return bool(mac[0] & 1)


class MacTable:
    __slots__ = ("_refresh", "_t", "conflicts", "evictions", "max_age", "max_size", "moves")

    def __init__(self, max_size: int = MAX_SIZE, max_age: float = MAX_AGE) -> None:
        self._t: dict[bytes, _Entry] = {}
        self.max_size = max_size
        self.max_age = max_age
        # a refresh interval longer than the lifetime would let live entries expire
        self._refresh = min(REFRESH, max_age / 2)
        self.conflicts = 0
        self.moves = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._t)

    def lookup(self, mac: bytes, now: float) -> bytes | None:
        e = self._t.get(mac)
        if e is None:
            return None
        if now - e.seen > self.max_age:
            del self._t[mac]
            return None
        return e.owner

    def learn_local(self, mac: bytes, now: float) -> bool:
        """Learn a locally captured source. False = conflict with a live remote owner."""
        e = self._t.get(mac)
        if e is not None and now - e.seen <= self.max_age:
            if e.owner == LOCAL:
                if now - e.seen > self._refresh:
                    e.seen = now
                return True
            self.conflicts += 1
            return False
        # absent or expired (whether or not a lookup purged it yet): a fresh entry
        self._insert(mac, LOCAL, now)
        return True

    def learn_remote(self, mac: bytes, peer: bytes, now: float) -> None:
        e = self._t.get(mac)
        if e is not None and now - e.seen > self.max_age:
            del self._t[mac]  # expired: relearning it is not a move
            e = None
        if e is not None:
            if e.owner == peer:
                if now - e.seen > self._refresh:
                    e.seen = now
                return
            self.moves += 1
            e.owner = peer
            e.seen = now
            return
        self._insert(mac, peer, now)

    def forget_peer(self, peer: bytes) -> int:
        gone = [m for m, e in self._t.items() if e.owner == peer]
        for m in gone:
            del self._t[m]
        return len(gone)

    def expire(self, now: float) -> int:
        old = [m for m, e in self._t.items() if now - e.seen > self.max_age]
        for m in old:
            del self._t[m]
        return len(old)

    def entries(self, now: float) -> list[tuple[bytes, bytes, float]]:
        return [(m, e.owner, now - e.seen) for m, e in self._t.items()
                if now - e.seen <= self.max_age]

    def _insert(self, mac: bytes, peer: bytes, now: float) -> None:
        self._t.pop(mac, None)
        if len(self._t) >= self.max_size:
            self.expire(now)
        if len(self._t) >= self.max_size:
            victims = sorted(self._t.items(), key=lambda kv: kv[1].seen)
            n = max(1, self.max_size // 8)
            for m, _ in victims[:n]:
                del self._t[m]
            self.evictions += n
        self._t[mac] = _Entry(peer, now)
