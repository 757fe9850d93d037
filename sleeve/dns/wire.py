"""The DNS record channel's wire encoding and its GossipData (sans-IO, no state).

Wire encoding (msgpack, arrays not maps: no field names on the wire, fixed arity)::

    message := [ FORMAT (=1), [ group, ... ] ]          at most MAX_GROUPS groups
    group   := [ origin  bin 8 bytes                     the peer that owns these records
               , [ entry, ... ] ]                        at most MAX_ENTRIES in the message
    entry   := [ name    str  1..253 chars               RFC 1123 labels, relative to the domain
               , addr    bin  4 or 16 bytes              IPv4 or IPv6, packed
               , owner   str  0..128 chars, printable    container/owner id ("" = none)
               , version uint 1 .. MAX_VERSION           the origin's counter
               , tomb    uint 0 .. 2^32-1                0: live; n: tombstone, n s to expiry
               ]

A record's identity is (origin, name, addr, owner); version and tomb are its state. The
tombstone travels with the seconds it has *left* (rounded up), not a timestamp, so no
clocks need to agree: a receiver expires it at its own ``now + min(left, its ttl)``.

The merge is a maximum under the total order (version, is_tombstone): a higher version
wins; at equal versions a tombstone wins. Two states of one record at equal (version,
tombstone) differ only by ``left`` and are the same record; the larger ``left`` is kept.
So merging is commutative, associative and idempotent, and peers converge whatever the
order in which messages arrive.

Every field of a decoded message is checked (types, lengths, ranges, label syntax,
no duplicate identities); anything else raises ``WireError`` and the whole message is
refused. Messages are at most ``MAX_MSG`` bytes (the router allows 1 MiB; we keep each
message small so one slow link never holds a large blob).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import msgpack

from sleeve.dns.names import BadName, check_name
from sleeve.proto.gossip import GossipData

FORMAT: Final = 1
PEER_ID_LEN: Final = 8
MAX_VERSION: Final = 2**62 - 1  # far below uint64 max: whatever a peer claims, we can outbid
MAX_OWNER_LEN: Final = 128
MAX_TOMB: Final = 2**32 - 1
MAX_MSG: Final = 60_000  # bytes per encoded message
MAX_GROUPS: Final = 1024
MAX_ENTRIES: Final = 2048  # per message: bounds the decoder's work whatever the byte size


class WireError(ValueError):
    """An undecodable or invalid record message (untrusted input: count it, refuse it)."""


class Key(NamedTuple):
    origin: bytes
    name: str
    address: bytes
    owner: str


class State(NamedTuple):
    version: int
    tomb: int  # 0: live; n >= 1: tombstone with n seconds left at encode time


def wins(new: State, old: State) -> bool:
    """True when ``new`` is later than ``old`` in the merge order."""
    return (new.version, new.tomb > 0) > (old.version, old.tomb > 0)


def check_owner(owner: str) -> str:
    if not isinstance(owner, str) or len(owner) > MAX_OWNER_LEN or not owner.isprintable():
        raise ValueError(f"owner id must be at most {MAX_OWNER_LEN} printable characters")
    return owner


class RecordSet:
    """GossipData: records (identity -> state); merge keeps the later state of each."""

    __slots__ = ("entries", "max_msg")

    def __init__(self, entries: dict[Key, State] | None = None, max_msg: int = MAX_MSG) -> None:
        self.entries: dict[Key, State] = entries if entries is not None else {}
        self.max_msg = max_msg

    def put(self, key: Key, st: State) -> bool:
        cur = self.entries.get(key)
        if cur is None or wins(st, cur) or (not wins(cur, st) and st.tomb > cur.tomb):
            self.entries[key] = st
            return True
        return False

    def merge(self, other: GossipData) -> GossipData:
        if isinstance(other, RecordSet):
            for k, st in other.entries.items():
                self.put(k, st)
            return self
        for msg in other.encode():  # some other GossipData on our channel: decode it
            for k, st in decode(msg):
                self.put(k, st)
        return self

    def encode(self) -> list[bytes]:
        return encode(self.entries, self.max_msg)

    def __len__(self) -> int:
        return len(self.entries)


def _entry(k: Key, st: State) -> list[Any]:
    return [k.name, k.address, k.owner, st.version, st.tomb]


def encode(entries: dict[Key, State], max_msg: int = MAX_MSG) -> list[bytes]:
    """``entries`` as messages of at most ``max_msg`` bytes each (sorted, so deterministic)."""
    out: list[bytes] = []
    groups: list[list[Any]] = []
    size = 16  # outer array + FORMAT + groups array header, generously
    count = 0

    def flush() -> None:
        nonlocal groups, size, count
        if groups:
            out.append(msgpack.packb([FORMAT, groups], use_bin_type=True))
        groups, size, count = [], 16, 0

    for k in sorted(entries):
        e = _entry(k, entries[k])
        esz = len(msgpack.packb(e, use_bin_type=True))
        gsz = 0 if groups and groups[-1][0] == k.origin else PEER_ID_LEN + 16
        if groups and (size + esz + gsz > max_msg or count >= MAX_ENTRIES
                       or (gsz and len(groups) >= MAX_GROUPS)):
            flush()
            gsz = PEER_ID_LEN + 16
        if gsz:
            groups.append([k.origin, []])
            size += gsz
        groups[-1][1].append(e)
        size += esz
        count += 1
    flush()
    return out


def _uint(x: Any, lo: int, hi: int, what: str) -> int:
    if type(x) is not int or not lo <= x <= hi:  # type() is int: msgpack bools are ints too
        raise WireError(f"bad {what}")
    return x


def decode(msg: bytes) -> list[tuple[Key, State]]:
    """Every (identity, state) in ``msg``; raises ``WireError`` if anything is invalid."""
    try:
        m = msgpack.unpackb(
            msg, raw=False, strict_map_key=True, use_list=True,
            max_str_len=1024, max_bin_len=64, max_array_len=max(MAX_ENTRIES, MAX_GROUPS),
            max_map_len=0, max_ext_len=0,
        )
    except Exception as ex:  # msgpack raises several unrelated types on garbage
        raise WireError(f"undecodable: {type(ex).__name__}") from None
    if type(m) is not list or len(m) != 2 or m[0] != FORMAT or type(m[0]) is not int:
        raise WireError("bad envelope")
    groups = m[1]
    if type(groups) is not list or len(groups) > MAX_GROUPS:
        raise WireError("bad groups")
    out: list[tuple[Key, State]] = []
    seen: set[Key] = set()
    for g in groups:
        if type(g) is not list or len(g) != 2:
            raise WireError("bad group")
        origin, es = g
        if type(origin) is not bytes or len(origin) != PEER_ID_LEN:
            raise WireError("bad origin")
        if type(es) is not list or len(out) + len(es) > MAX_ENTRIES:
            raise WireError("bad entries")
        for e in es:
            if type(e) is not list or len(e) != 5:
                raise WireError("bad entry")
            name, addr, owner, version, tomb = e
            if type(name) is not str or type(owner) is not str:
                raise WireError("bad name or owner")
            try:
                if check_name(name) != name:
                    raise WireError("bad name")
                check_owner(owner)
            except (BadName, ValueError) as ex:
                raise WireError(f"bad entry: {str(ex)[:80]}") from None
            if type(addr) is not bytes or len(addr) not in (4, 16):
                raise WireError("bad address")
            st = State(_uint(version, 1, MAX_VERSION, "version"),
                       _uint(tomb, 0, MAX_TOMB, "tombstone"))
            k = Key(origin, name, addr, owner)
            if k in seen:
                raise WireError("duplicate entry")
            seen.add(k)
            out.append((k, st))
    return out
