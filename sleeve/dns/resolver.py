"""The DNS resolver core (sans-IO): query bytes in, an Answer, a Forward or a Drop out.

Wire format through ``dnslib`` (a codec with no I/O); no sockets, no clock reads here:
``server.py`` owns the sockets and passes ``now``. The pipeline of ``handle``:

1. rate limit per source address (token bucket; a bounded LRU table of sources);
2. parse; garbage, responses (QR=1) and what dnslib cannot read are dropped and counted;
   a query that parses but is not one QUERY question gets FORMERR/NOTIMP;
3. EDNS0: the answer may be as large as the client's advertised UDP size, capped at
   ``max_udp`` (4096), 512 without EDNS0; over TCP 65535. An answer that does not fit
   gets TC with the question only (the client retries over TCP, where it is complete);
4. names in the domain (``sleeve.local.``), and single-label names the table knows,
   are answered from the table (AA and RA set, TTL ``ttl``):
   - A/AAAA/ANY: every live address of the family, **shuffled per query**, or one random
     address with ``one_address``. Clients that sort answers by RFC 6724 (glibc's
     getaddrinfo, Go's resolver) re-order them by their own address-selection rules and
     undo the shuffle: for them only ``one_address`` spreads load;
   - a known name asked for another type: NOERROR, no answer (RFC 4074), SOA in authority;
   - an unknown name: NXDOMAIN with the SOA in authority (negative TTL = ``ttl``);
5. PTR names (in-addr.arpa, ip6.arpa) of addresses in the table are answered from it;
6. anything else is forwarded (``Forward``, with a fresh random id) when
   ``allowed(client)`` says the client may use us as a recursive resolver (the overlay
   and the host itself: never an open resolver), else REFUSED. The adapter passes the
   upstream's reply through ``upstream_reply`` (checks id and question, restores the
   client's id, enforces the client's size) or answers ``servfail``.

Every answer is checked against the query's size limit before it leaves.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from dnslib import AAAA, EDNS0, PTR, RCODE, RR, SOA, A, DNSHeader, DNSRecord

from sleeve.dns.names import MAX_NAME_LEN, IPAddress, reverse_pointer_address

Transport = Literal["udp", "tcp"]
CLASS_IN, CLASS_ANY = 1, 255
QT_A, QT_AAAA, QT_PTR, QT_SOA, QT_ANY, QT_OPT = 1, 28, 12, 6, 255, 41
MIN_UDP = 512
MAX_TCP = 65535
BADVERS = 16


class Table(Protocol):
    """What the resolver reads (``records.Records`` is one)."""

    changes: int

    def lookup(self, name: str) -> list[IPAddress]: ...

    def lookup_address(self, address: IPAddress) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Answer:
    data: bytes


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``query`` to an upstream over ``transport``; hand the reply to ``upstream_reply``."""

    query: bytes  # the client's query with our id ``upstream_id``
    upstream_id: int
    client_id: int
    qname: bytes  # lowercased wire labels joined by "." (to match the reply's question)
    qtype: int
    limit: int  # the largest answer the client allows
    transport: Transport
    request: Any  # the parsed dnslib DNSRecord (for servfail / truncation)


Result = Answer | Forward | Drop


class RateLimiter:
    """Token buckets per source: ``rate`` per second, ``burst`` deep, at most ``max_sources``
    buckets (the least recently used goes first; a source evicted starts full again)."""

    def __init__(self, rate: float, burst: float, max_sources: int = 4096) -> None:
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._b: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        tokens, last = self._b.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        ok = tokens >= 1.0
        self._b[key] = (tokens - 1.0 if ok else tokens, now)
        if len(self._b) > self.max_sources:
            self._b.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._b)


@dataclass
class ResolverConfig:
    domain: str = "sleeve.local."
    ttl: int = 1
    one_address: bool = False  # answer one random address instead of all, shuffled
    max_udp: int = 4096  # cap on the client's EDNS0 size
    rate: float = 500.0  # queries per second per source; 0: no limit
    burst: float = 1000.0
    max_sources: int = 4096


def _labels(name: str) -> tuple[bytes, ...]:
    return tuple(x.lower().encode("ascii") for x in name.rstrip(".").split(".") if x)


class Resolver:
    def __init__(
        self,
        table: Table,
        allowed: Callable[[str], bool],
        config: ResolverConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.table = table
        self.allowed = allowed
        self.config = c = config or ResolverConfig()
        self.domain = _labels(c.domain)
        self.rng = rng or random.SystemRandom()
        self.limiter = RateLimiter(c.rate, c.burst, c.max_sources)
        self.stats: collections.Counter[str] = collections.Counter()
        self.drops: collections.Counter[str] = collections.Counter()

    # -- the pipeline -----------------------------------------------------------------------
    def handle(self, query: bytes, client: str, transport: Transport, now: float) -> Result:
        """One query from ``client`` (its IP address as text) over ``transport``."""
        self.stats["queries"] += 1
        if not self.limiter.allow(client, now):
            return self._drop("rate_limited")
        if len(query) < 12:
            return self._drop("malformed")
        try:
            req = DNSRecord.parse(query)
        except Exception:  # dnslib raises DNSError, but also struct/Unicode/Index errors
            return self._drop("malformed")
        if req.header.qr:
            return self._drop("response")
        opts = [r for r in req.ar if r.rtype == QT_OPT]
        limit = MAX_TCP
        if transport == "udp":
            limit = MIN_UDP
            if opts:
                limit = max(MIN_UDP, min(int(opts[0].rclass), self.config.max_udp))
        if req.header.opcode != 0:
            return self._error(req, RCODE.NOTIMP, opts, limit)
        if len(req.questions) != 1 or len(opts) > 1:
            return self._error(req, RCODE.FORMERR, opts, limit)
        if opts and (opts[0].ttl >> 16) & 0xFF != 0:
            return self._error(req, BADVERS, opts, limit)
        q = req.q
        try:
            labels = tuple(x.lower() for x in q.qname.label)
        except Exception:
            return self._drop("malformed")
        return self._route(query, req, labels, client, transport, opts, limit)

    def _route(self, query: bytes, req: Any, labels: tuple[bytes, ...], client: str,
               transport: Transport, opts: list[Any], limit: int) -> Result:
        qtype, qclass = req.q.qtype, req.q.qclass
        d = self.domain
        in_domain = len(labels) >= len(d) and labels[len(labels) - len(d):] == d
        if in_domain and qclass in (CLASS_IN, CLASS_ANY):
            rel = labels[: len(labels) - len(d)]
            return self._authoritative(req, rel, qtype, opts, limit)
        if len(labels) == 1 and qclass in (CLASS_IN, CLASS_ANY):
            name = _text(labels)
            if name is not None and self.table.lookup(name):
                return self._authoritative(req, labels, qtype, opts, limit)
        if qtype == QT_PTR and qclass in (CLASS_IN, CLASS_ANY):
            addr = reverse_pointer_address(_text(labels) or "")
            names = self.table.lookup_address(addr) if addr is not None else []
            if names:
                return self._ptr(req, names, opts, limit)
        if in_domain:
            return self._error(req, RCODE.REFUSED, opts, limit)  # another class in our domain
        if not self.allowed(client):
            self.stats["refused"] += 1
            return self._error(req, RCODE.REFUSED, opts, limit)
        return self._forward(query, req, labels, transport, limit)

    # -- answers from the table -------------------------------------------------------------
    def _authoritative(self, req: Any, rel: tuple[bytes, ...], qtype: int,
                       opts: list[Any], limit: int) -> Answer:
        c = self.config
        resp = self._reply(req, RCODE.NOERROR, opts, aa=True)
        if not rel:  # the apex: only our SOA lives there
            if qtype in (QT_SOA, QT_ANY):
                resp.add_answer(self._soa())
            else:
                resp.add_auth(self._soa())
            return self._fit(resp, req, opts, limit)
        name = _text(rel)
        addrs = self.table.lookup(name) if name is not None else []
        if not addrs:
            self.stats["nxdomain"] += 1
            resp.header.rcode = RCODE.NXDOMAIN
            resp.add_auth(self._soa())
            return self._fit(resp, req, opts, limit)
        want = [a for a in addrs if (qtype in (QT_A, QT_ANY) and a.version == 4)
                or (qtype in (QT_AAAA, QT_ANY) and a.version == 6)]
        if c.one_address and want:
            want = [self.rng.choice(want)]
        else:
            self.rng.shuffle(want)
        for a in want:
            rdata = A(str(a)) if a.version == 4 else AAAA(str(a))
            resp.add_answer(RR(req.q.qname, QT_A if a.version == 4 else QT_AAAA,
                               rdata=rdata, ttl=c.ttl))
        if not want:
            self.stats["nodata"] += 1
            resp.add_auth(self._soa())
        else:
            self.stats["answered"] += 1
        return self._fit(resp, req, opts, limit)

    def _ptr(self, req: Any, names: list[str], opts: list[Any], limit: int) -> Answer:
        resp = self._reply(req, RCODE.NOERROR, opts, aa=True)
        dom = self.config.domain.rstrip(".")
        for n in names:
            full = f"{n}.{dom}."
            if len(full) - 1 <= MAX_NAME_LEN and all(len(x) <= 63 for x in full.split(".")):
                resp.add_answer(RR(req.q.qname, QT_PTR, rdata=PTR(full), ttl=self.config.ttl))
        self.stats["ptr"] += 1
        return self._fit(resp, req, opts, limit)

    def _soa(self) -> RR:
        c = self.config
        dom = c.domain.rstrip(".") + "."
        times = (self.table.changes % 2**32, 3600, 600, 86400, c.ttl)
        return RR(dom, QT_SOA, ttl=c.ttl,
                  rdata=SOA(dom, "hostmaster." + dom, times))

    # -- forwarding -------------------------------------------------------------------------
    def _forward(self, query: bytes, req: Any, labels: tuple[bytes, ...],
                 transport: Transport, limit: int) -> Forward:
        uid = self.rng.randrange(65536)
        raw = bytearray(query)  # verbatim (EDNS options, cookies), but with our own id
        raw[0:2] = uid.to_bytes(2, "big")
        self.stats["forwarded"] += 1
        return Forward(bytes(raw), uid, req.header.id, b".".join(labels), req.q.qtype,
                       limit, transport, req)

    def upstream_reply(self, fwd: Forward, data: bytes) -> bytes | None:
        """The answer for the client from an upstream's ``data``, or None when ``data`` is not
        the reply to ``fwd`` (wrong id or question, garbage: keep waiting / try the next)."""
        try:
            rep = DNSRecord.parse(data)
            q = rep.q
            ok = (rep.header.qr == 1 and rep.header.id == fwd.upstream_id
                  and len(rep.questions) == 1 and q.qtype == fwd.qtype
                  and b".".join(x.lower() for x in q.qname.label) == fwd.qname)
        except Exception:
            ok = False
        if not ok:
            self.drops["upstream_mismatch"] += 1
            return None
        out = bytearray(data)
        out[0:2] = fwd.client_id.to_bytes(2, "big")
        if len(out) <= fwd.limit:
            return bytes(out)
        self.stats["truncated"] += 1
        opts = [r for r in fwd.request.ar if r.rtype == QT_OPT]
        t = self._reply(fwd.request, rep.header.rcode, opts, aa=False)
        t.header.tc = 1
        return bytes(t.pack())

    def servfail(self, fwd: Forward) -> bytes:
        """SERVFAIL for a query no upstream answered."""
        self.stats["servfail"] += 1
        opts = [r for r in fwd.request.ar if r.rtype == QT_OPT]
        return bytes(self._reply(fwd.request, RCODE.SERVFAIL, opts, aa=False).pack())

    # -- building ---------------------------------------------------------------------------
    def _reply(self, req: Any, rcode: int, opts: list[Any], aa: bool) -> Any:
        ext = rcode >> 4
        h = DNSHeader(id=req.header.id, qr=1, opcode=req.header.opcode, aa=int(aa),
                      rd=req.header.rd, ra=1, rcode=rcode & 0xF)
        resp = DNSRecord(h, q=req.q if len(req.questions) == 1 else None)
        if opts:
            resp.add_ar(EDNS0(udp_len=self.config.max_udp, ext_rcode=ext))
        return resp

    def _error(self, req: Any, rcode: int, opts: list[Any], limit: int) -> Answer:
        self.stats[f"rcode_{rcode}"] += 1
        return self._fit(self._reply(req, rcode, opts[:1], aa=False), req, opts, limit)

    def _fit(self, resp: Any, req: Any, opts: list[Any], limit: int) -> Answer:
        data = bytes(resp.pack())
        if len(data) <= limit:
            return Answer(data)
        self.stats["truncated"] += 1
        t = self._reply(req, resp.header.rcode, opts, aa=bool(resp.header.aa))
        t.header.tc = 1
        data = bytes(t.pack())
        if len(data) > limit:  # a question too long for the limit: header alone
            t = DNSRecord(DNSHeader(id=req.header.id, qr=1, tc=1, ra=1,
                                    rcode=resp.header.rcode))
            data = bytes(t.pack())
        return Answer(data)

    def _drop(self, reason: str) -> Drop:
        self.drops[reason] += 1
        return Drop(reason)

    def status(self) -> dict[str, Any]:
        c = self.config
        return {"domain": c.domain, "ttl": c.ttl, "one_address": c.one_address,
                "stats": dict(self.stats), "drops": dict(self.drops),
                "rate_limit": {"rate": c.rate, "burst": c.burst, "sources": len(self.limiter)}}


def _text(labels: tuple[bytes, ...]) -> str | None:
    """Labels as a dotted ASCII name, or None if any label is not plain ASCII text."""
    if any(b"." in x for x in labels):
        return None  # a dot inside a wire label would alias another name
    try:
        s = b".".join(labels).decode("ascii")
    except UnicodeDecodeError:
        return None
    return s if s.isprintable() else None
