"""Go/no-go for end-to-end sealed relaying with a per-hop envelope (issue 23, relay5).

In-process, per relayed datagram (one super-frame piece of ~1330 B), what the source,
the relay and the destination pay in the parts that would change:

today (hop-by-hop, ``forward.relayseg`` / ``forward.relayrun``)
    source: ``relayseg.cut`` (piece build + origin tag) + the hop seal of that body;
    relay:  hop ``DataSession.open`` + ``RelayedRun.take`` + the next hop's seal;
    destination: hop ``DataSession.open`` + ``RelayedRun.take`` + ``check_pieces``.

envelope (a prototype, here only)
    source: ``superframe.cut`` (a direct link's pieces) + the end-to-end seal (the A-B
    session, exactly a direct link's) + the envelope: a 16-byte header and a ChaCha20-
    Poly1305 seal of 9 bytes (dst 8, hop limit 1) whose associated data is the envelope
    header, the end-to-end header and the end-to-end tag;
    relay:  envelope open (its replay window) + next hop lookup + re-wrap for the next
    hop (the end-to-end bytes copied once, untouched);
    destination: envelope open + the end-to-end ``DataSession.open`` (its window).

What does not change (system calls, GSO/GRO, the TAP side, joining segment sets) is
left out: the saving is set against the 26.4 us a relayed datagram costs over the
three routers (``bench/results/issue23/relay4-notes.md``). Run::

    python3 -m bench.relay_envelope_micro [--rounds 7] [--pieces 2000]

Prints min and median us per datagram over the rounds, today's and the envelope's
interleaved (each round times ``--pieces`` datagrams, about 40 super-frames of 64 KB).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import struct
import time
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from sleeve.crypto.keys import Signer
from sleeve.forward import relayrun, relayseg, superframe
from sleeve.forward.egress import Egress
from sleeve.links.link import Link
from sleeve.proto import datagram as dg
from sleeve.proto import vnet
from sleeve.proto.origin import OriginAuth
from sleeve.proto.replay import ReplayWindow
from sleeve.proto.session import DataSession
from sleeve.proto.stats import Counters

MAX_BODY = 1472 - dg.HEADER_LEN - dg.TAG_LEN
MSS = 1314
TOTAL_PER_DATAGRAM_US = 26.4  # relay4-notes.md: sender 7.27 + relay 9.2 + receiver 9.9
ENV_HEAD = struct.Struct("!BBHIQ")  # type, version, epoch, receiver index, counter
NONCE_PAD = PAD4 = bytes(4)


def super_frame(payload_len: int) -> bytes:
    """A TCP super-frame as the TAP hands it over (virtio header + Ethernet + IP + TCP)."""
    eth = os.urandom(12) + b"\x08\x00"
    ip = bytes((0x45, 0)) + (20 + 32 + payload_len).to_bytes(2, "big") + bytes(16)
    tcp = bytes(12) + b"\x80\x10" + bytes(18)
    hdr = vnet.HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 66, MSS, 34, 16)
    return hdr + eth + ip + tcp + os.urandom(payload_len)


def sessions() -> tuple[DataSession, DataSession]:
    k1, k2 = os.urandom(32), os.urandom(32)
    return DataSession(1, 2, k1, k2, True), DataSession(2, 1, k2, k1, True)


class _Link:
    def __init__(self, peer: bytes) -> None:
        self.peer = peer


class _Egress:
    def __init__(self, via: Any) -> None:
        self.via = via
        self.out: list[bytes] = []

    def towards(self, dst: bytes) -> Any:
        return self.via

    def queue(self, link: Any, rec: bytes) -> None:
        self.out.append(rec)


class Envelope:
    """The prototype hop envelope: seal/open of the tiny header, AD = head + e2e head + tag."""

    def __init__(self, key: bytes) -> None:
        self.aead = ChaCha20Poly1305(key)
        self.counter = 0
        self.win = ReplayWindow()

    def wrap(self, dst: bytes, hops: int, e2e: bytes | memoryview) -> bytes:
        ctr = self.counter
        self.counter = ctr + 1
        head = ENV_HEAD.pack(2, 1, 0, 7, ctr)
        ad = head + e2e[:16] + e2e[-16:]
        sealed = self.aead.encrypt(NONCE_PAD + ctr.to_bytes(8, "little"), dst + bytes((hops,)),
                                   ad)
        return b"".join((head, sealed, e2e))

    def open(self, dgram: bytes) -> tuple[bytes, int, memoryview] | str:
        mv = memoryview(dgram)
        ctr = int.from_bytes(dgram[8:16], "big")
        e2e = mv[41:]
        ad = dgram[:16] + dgram[41:57] + dgram[-16:]
        try:
            inner = self.aead.decrypt(NONCE_PAD + ctr.to_bytes(8, "little"), mv[16:41], ad)
        except InvalidTag:
            return "env_auth"
        bad = self.win.accept(ctr)
        if bad is not None:
            return bad
        return inner[:8], inner[8], e2e


def _open_and_take(run: relayrun.RelayedRun, link: Link, rx: DataSession,
                   dgrams: list[bytes]) -> None:
    """One read's hop datagrams as ``Ingress.on_run`` takes them today: open, then the run."""
    run.begin()
    for d in dgrams:
        body = rx.open(int.from_bytes(d[8:16], "big"), d)
        assert isinstance(body, bytes)
        run.take(link, body, 0.0)
    run.end(0.0)


def _time(old: Callable[[], tuple[int, int]], new: Callable[[], tuple[int, int]],
          rounds: int) -> tuple[list[float], list[float]]:
    """us per datagram of each round, old and new interleaved (old new old new ...);
    each function returns (datagrams, ns of its timed part)."""
    per: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, out in ((old, per[0]), (new, per[1])):
            n, ns = fn()
            out.append(ns / n / 1000)
    return per


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--pieces", type=int, default=2000)
    args = ap.parse_args(argv)
    signers = {n: Signer(os.urandom(32)) for n in ("a", "r", "b")}
    ids = {n: s.peer_id for n, s in signers.items()}
    by_id = {s.peer_id: s for s in signers.values()}

    def ident(p: bytes) -> tuple[bytes, int] | None:
        s = by_id.get(p)
        return None if s is None else (s.public, 1)

    auth = {n: OriginAuth(s, 1, ident) for n, s in signers.items()}
    sf = super_frame(64000)
    per_sf = len(superframe.cut(sf, 1, MAX_BODY) or [])
    n_sf = max(1, args.pieces // per_sf)

    # ---------------------------------------------------------------- today
    def today_source() -> tuple[int, int]:
        ar_tx, _ = sessions()
        n = 0
        t0 = time.perf_counter_ns()
        for i in range(n_sf):
            for body in relayseg.cut(sf, i & 0xFFFF, MAX_BODY, auth["a"], ids["a"],
                                     ids["b"]) or ():
                ar_tx.seal(body)
                n += 1
        return n, time.perf_counter_ns() - t0

    def today_relay() -> tuple[int, int]:
        ar_tx, ar_rx = sessions()
        rb_tx, _ = sessions()
        auth["a"].forget_keys()
        dgrams = [ar_tx.seal(b) for i in range(n_sf) for b in relayseg.cut(
            sf, i & 0xFFFF, MAX_BODY, auth["a"], ids["a"], ids["b"]) or ()]
        eg = _Egress(_Link(ids["b"]))
        run = relayrun.RelayedRun(ids["r"], cast(Egress, eg), auth["r"], Counters(),
                                  Counters(), lambda *_a: None)
        link = cast(Link, _Link(ids["a"]))
        t0 = time.perf_counter_ns()
        _open_and_take(run, link, ar_rx, dgrams)
        for rec in eg.out:
            rb_tx.seal(rec)
        return len(dgrams), time.perf_counter_ns() - t0

    def today_destination() -> tuple[int, int]:
        tx, rx = sessions()
        auth["a"].forget_keys()
        auth["b"].forget_keys()
        dgrams = [tx.seal(b) for i in range(n_sf) for b in relayseg.cut(
            sf, i & 0xFFFF, MAX_BODY, auth["a"], ids["a"], ids["b"]) or ()]
        got: list[int] = []
        run = relayrun.RelayedRun(ids["b"], cast(Egress, _Egress(None)), auth["b"],
                                  Counters(), Counters(),
                                  lambda _l, _s, good, _n: got.append(len(good)))
        link = cast(Link, _Link(ids["r"]))
        t0 = time.perf_counter_ns()
        _open_and_take(run, link, rx, dgrams)
        assert sum(got) == len(dgrams), (sum(got), len(dgrams))
        return len(dgrams), time.perf_counter_ns() - t0

    # ---------------------------------------------------------------- envelope
    env_key_ar, env_key_rb = os.urandom(32), os.urandom(32)

    def new_source() -> tuple[int, int]:
        ab_tx, _ = sessions()
        env = Envelope(env_key_ar)
        n = 0
        t0 = time.perf_counter_ns()
        for i in range(n_sf):
            for body in superframe.cut(sf, i & 0xFFFF, MAX_BODY - 25) or ():
                env.wrap(ids["b"], 15, ab_tx.seal(body))
                n += 1
        return n, time.perf_counter_ns() - t0

    def new_relay() -> tuple[int, int]:
        ab_tx, _ = sessions()
        src_env = Envelope(env_key_ar)
        dgrams = [src_env.wrap(ids["b"], 15, ab_tx.seal(b)) for i in range(n_sf)
                  for b in superframe.cut(sf, i & 0xFFFF, MAX_BODY - 25) or ()]
        rx_env, tx_env = Envelope(env_key_ar), Envelope(env_key_rb)
        routes = {ids["b"]: _Link(ids["b"])}
        out = []
        t0 = time.perf_counter_ns()
        for d in dgrams:
            got = rx_env.open(d)
            assert not isinstance(got, str)
            dst, hops, e2e = got
            via = routes.get(dst)
            if via is None or hops == 0:
                continue
            out.append(tx_env.wrap(dst, hops - 1, e2e))
        return len(out), time.perf_counter_ns() - t0

    def new_destination() -> tuple[int, int]:
        ab_tx, ab_rx = sessions()
        src_env = Envelope(env_key_rb)
        dgrams = [src_env.wrap(ids["b"], 14, ab_tx.seal(b)) for i in range(n_sf)
                  for b in superframe.cut(sf, i & 0xFFFF, MAX_BODY - 25) or ()]
        rx_env = Envelope(env_key_rb)
        n = 0
        t0 = time.perf_counter_ns()
        for d in dgrams:
            got = rx_env.open(d)
            assert not isinstance(got, str)
            e2e = bytes(got[2])
            body = ab_rx.open(int.from_bytes(e2e[8:16], "big"), e2e)
            assert isinstance(body, bytes)
            n += 1
        return n, time.perf_counter_ns() - t0

    def lean_relay(mac: bool) -> tuple[int, int]:
        """The relay's floor: the envelope laid out so that its associated data is two
        slices (envelope + end-to-end header, then the end-to-end tag), the nonce taken
        from the header's bytes; ``mac``: a keyed BLAKE2b-128 hop tag instead of the
        AEAD, the destination in the clear (not acceptable: a bound only)."""
        rx, tx = ChaCha20Poly1305(env_key_ar), ChaCha20Poly1305(env_key_rb)
        k1, k2 = env_key_ar, env_key_rb
        ab_tx, _ = sessions()
        pack, join, b2 = ENV_HEAD.pack, b"".join, hashlib.blake2b
        dgrams: list[bytes] = []
        for i in range(n_sf):
            for b in superframe.cut(sf, i & 0xFFFF, MAX_BODY - 25) or ():
                e = ab_tx.seal(b)
                head = pack(2, 1, 0, 7, len(dgrams))
                inner = (b2(head + e[:16] + e[-16:], key=k1, digest_size=16).digest()
                         + ids["b"] + b"\x0f" if mac else
                         rx.encrypt(PAD4 + head[8:], ids["b"] + b"\x0f", head + e[:16] + e[-16:]))
                dgrams.append(join((head, e[:16], inner, e[16:])))
        routes = {ids["b"]: _Link(ids["b"])}
        win = ReplayWindow()
        accept = win.accept
        out: list[bytes] = []
        ctr = 0
        t0 = time.perf_counter_ns()
        for d in dgrams:
            mv = memoryview(d)
            ad = d[:32] + d[-16:]
            if mac:
                if b2(ad, key=k1, digest_size=16).digest() != d[32:48]:
                    continue
                inner = d[48:57]
            else:
                try:
                    inner = rx.decrypt(PAD4 + d[8:16], mv[32:57], ad)
                except InvalidTag:
                    continue
            if accept(int.from_bytes(d[8:16], "big")) is not None:
                continue
            via, hops = routes.get(inner[:8]), inner[8]
            if via is None or hops == 0:
                continue
            head = pack(2, 1, 0, 9, ctr)
            ctr += 1
            e2e_head, tag = d[16:32], d[-16:]
            nxt = inner[:8] + bytes((hops - 1,))
            sealed = (b2(head + e2e_head + tag, key=k2, digest_size=16).digest() + nxt if mac
                      else tx.encrypt(PAD4 + head[8:], nxt, head + e2e_head + tag))
            out.append(join((head, e2e_head, sealed, mv[57:])))
        return len(out), time.perf_counter_ns() - t0

    rows = [("source", today_source, new_source), ("relay", today_relay, new_relay),
            ("destination", today_destination, new_destination)]
    print(f"{per_sf} pieces per 64 KB super-frame, {n_sf * per_sf} datagrams per round, "
          f"{args.rounds} rounds; us per datagram, min / median")
    print(f"{'router':<12} {'today':>14} {'envelope':>14} {'saved (min)':>12}")
    sums = [0.0, 0.0]
    for name, old, new in rows:
        olds, news = _time(old, new, args.rounds)
        o, om, e, em = min(olds), statistics.median(olds), min(news), statistics.median(news)
        sums[0] += o
        sums[1] += e
        print(f"{name:<12} {o:6.2f} / {om:5.2f} {e:6.2f} / {em:5.2f} {o - e:12.2f}")
    for what, mac in (("relay, lean AEAD envelope", False),
                      ("relay, BLAKE2b hop MAC (bound)", True)):
        olds, news = _time(today_relay, partial(lean_relay, mac), args.rounds)
        print(f"{what:<30} {min(olds):6.2f} / {statistics.median(olds):5.2f} "
              f"{min(news):6.2f} / {statistics.median(news):5.2f} "
              f"{min(olds) - min(news):8.2f}")
    saved = sums[0] - sums[1]
    print(f"{'sum':<12} {sums[0]:14.2f} {sums[1]:14.2f} {saved:12.2f}")
    print(f"estimated: {TOTAL_PER_DATAGRAM_US:.1f} -> {TOTAL_PER_DATAGRAM_US - saved:.1f} us "
          f"per relayed datagram over the three routers, {100 * saved / TOTAL_PER_DATAGRAM_US:.1f}%"
          " (go needs >= 15%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
