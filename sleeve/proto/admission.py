"""Admission of unauthenticated control connections: per-source shares, global caps.

Sans-IO: the caller passes the source address and ``now``; nothing here reads a clock
or touches a socket. ``admit`` says whether a new TCP connection may start a
handshake (or why not, a drop reason); ``done`` returns its slot when the handshake
ends either way.

Why per source: with only global limits, one host that opens connections and never
finishes the handshake holds every handshake slot and drains the accept bucket, and
nobody else can join. Each source (an IPv4 address, or an IPv6 /64, which one host
usually owns whole) gets its own token bucket and at most ``per_source`` handshakes
in progress; the global bucket and cap still bound the total, so many sources
together cannot exceed what one router can afford. A source is checked first, so
its refused connections cost the global bucket nothing.

Sources are TCP peers: the three-way handshake has already proven the address can
receive (the return routability a WireGuard cookie reply proves for UDP), so keying
by it cannot be spoofed cheaply and no cookie round trip is needed.

The table is bounded (``max_sources``): when full, the least recently seen source
with no handshake in progress is forgotten (its bucket starts full again, which only
ever favours an honest newcomer). Entries with a handshake in progress are never
evicted; at most ``max_handshakes`` of them exist.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

ACCEPT_RATE: Final = 20.0  # accepts per second, all sources together
ACCEPT_BURST: Final = 40.0
MAX_HANDSHAKES: Final = 32  # in progress, all sources together
SOURCE_RATE: Final = 2.0  # accepts per second from one source
SOURCE_BURST: Final = 8.0
SOURCE_HANDSHAKES: Final = 4  # in progress from one source: an eighth of the total
MAX_SOURCES: Final = 4096


@dataclass(slots=True)
class _Source:
    tokens: float
    at: float
    handshaking: int = 0


class Admission:
    def __init__(self, *, rate: float = ACCEPT_RATE, burst: float = ACCEPT_BURST,
                 max_handshakes: int = MAX_HANDSHAKES, source_rate: float = SOURCE_RATE,
                 source_burst: float = SOURCE_BURST, per_source: int = SOURCE_HANDSHAKES,
                 max_sources: int = MAX_SOURCES) -> None:
        self.rate, self.burst, self.max_handshakes = rate, burst, max_handshakes
        self.source_rate, self.source_burst = source_rate, source_burst
        self.per_source, self.max_sources = per_source, max_sources
        self.handshaking = 0
        self._tokens = burst
        self._at: float | None = None
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def admit(self, addr: str, now: float) -> tuple[str | None, str]:
        """(None, key) when a connection from ``addr`` may handshake, else (reason, key).

        On admission the caller owns a slot and must call ``done(key)`` exactly once.
        """
        key = source_key(addr)
        src = self._source(key, now)
        src.tokens = min(self.source_burst, src.tokens + (now - src.at) * self.source_rate)
        src.at = now
        if src.tokens < 1.0:
            return "source_rate_limited", key
        if src.handshaking >= self.per_source:
            src.tokens -= 1.0  # a source that keeps trying while full pays for it
            return "source_handshake_limit", key
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return "accept_rate_limited", key
        if self.handshaking >= self.max_handshakes:
            return "handshake_limit", key
        self._tokens -= 1.0
        src.tokens -= 1.0
        src.handshaking += 1
        self.handshaking += 1
        return None, key

    def done(self, key: str) -> None:
        """An admitted handshake ended (established, failed or timed out)."""
        self.handshaking -= 1
        src = self._sources.get(key)
        if src is not None:  # never evicted while handshaking; defensive all the same
            src.handshaking -= 1

    def sources(self) -> int:
        return len(self._sources)

    def _source(self, key: str, now: float) -> _Source:
        sources = self._sources
        src = sources.get(key)
        if src is not None:
            sources.move_to_end(key)
            return src
        if len(sources) >= self.max_sources:
            for old, s in sources.items():  # least recently seen first
                if not s.handshaking:
                    del sources[old]
                    break
        src = sources[key] = _Source(self.source_burst, now)
        return src


def source_key(addr: str) -> str:
    """What one source is: an IPv4 address, or the /64 of an IPv6 address."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return addr  # not an address (a relayed stream, a test double): itself
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)
