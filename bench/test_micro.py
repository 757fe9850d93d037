"""Per-frame micro-benchmarks of the data plane (pytest-benchmark).

Not collected by a plain ``pytest`` (testpaths is tests/). Run explicitly::

    python -m pytest -q bench/ --benchmark-only --benchmark-min-rounds=5

Every timed call performs ``OPS`` (64, one port read batch) operations so that the
Python loop overhead is the same in the measured code and in the baselines; the
summary that bench/conftest.py prints divides by it and gives ratios to the
baselines measured in the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Protocol, TypeVar

import pytest

from sleeve.crypto.aead import Sealer
from sleeve.forward.batcher import pack
from sleeve.forward.egress import STP_PREFIX
from sleeve.proto import datagram as dg
from sleeve.proto.mactable import LOCAL, MacTable
from sleeve.proto.replay import ReplayWindow
from sleeve.proto.session import DataSession

T = TypeVar("T")


class Benchmark(Protocol):
    """The part of pytest-benchmark's fixture used here (it ships no annotations)."""

    extra_info: dict[str, Any]
    group: str | None

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...


OPS = 64  # capture.base.BATCH: frames handled per port readiness event
SIZES = (64, 512, 1400, 9000)
MODES = {"enc": True, "clear": False}
K1, K2 = bytes(range(32)), bytes(range(32, 64))
MAX_BODY = 1500 - dg.UDP4_OVERHEAD - dg.HEADER_LEN - dg.TAG_LEN  # node._max_body()
NOW = 1000.0
REMOTE_PEER = b"\xa0" * 8
REMOTE_MAC = bytes.fromhex("020000000002")


def run(benchmark: Benchmark, fn: Callable[[], object], *, label: str, baseline: str,
        ops: int = OPS) -> None:
    benchmark.extra_info.update(label=label, baseline=baseline, ops=ops)
    benchmark(fn)


def ethernet(size: int, dst: bytes = REMOTE_MAC, src_i: int = 1) -> bytes:
    """A frame of ``size`` bytes (no FCS) from a local MAC to ``dst``."""
    src = bytes((2, 0, 0, 0, 1, src_i))
    return (dst + src + b"\x08\x00" + bytes(range(256)) * (size // 256 + 1))[:size]


# ------------------------------------------------------------------------ baselines

@pytest.mark.benchmark(group="baseline")
@pytest.mark.parametrize("size", SIZES)
def test_baseline_copy(benchmark: Benchmark, size: int) -> None:
    """``bytes(buf)`` of a frame-sized buffer: the floor of any per-frame Python work."""
    bufs = [bytearray(ethernet(size)) for _ in range(OPS)]

    def copy_all() -> None:
        for b in bufs:
            bytes(b)

    run(benchmark, copy_all, label=f"baseline copy {size}", baseline="")


@pytest.mark.benchmark(group="baseline")
def test_baseline_dict_get(benchmark: Benchmark) -> None:
    """A dict hit per op: the floor for per-counter / per-MAC bookkeeping."""
    keys = [bytes((2, 0, 0, 0, 1, i)) for i in range(OPS)]
    d = dict.fromkeys(keys, LOCAL)
    get = d.get

    def lookups() -> None:
        for k in keys:
            get(k)

    run(benchmark, lookups, label="baseline dict.get", baseline="")


@pytest.mark.benchmark(group="baseline")
def test_baseline_join(benchmark: Benchmark) -> None:
    """``b"".join`` of 64 records of 1400 bytes: a pure memcpy of one batch, per frame."""
    records = [dg.frame_record(ethernet(1400)) for _ in range(OPS)]
    run(benchmark, partial(b"".join, records), label="baseline join 64x1400", baseline="")


# ------------------------------------------------------------------------ crypto

def _libsodium_cffi(key: bytes) -> tuple[Callable[[bytes, bytes, bytes], bytes],
                                         Callable[[bytes, bytes, bytes], bytes]]:
    """(seal, open) of libsodium's IETF ChaCha20-Poly1305 through PyNaCl's cffi module
    with a preallocated buffer: the binding sleeve used before issue 23 (issue 9's)."""
    from nacl._sodium import ffi, lib

    buf = ffi.new("unsigned char[]", 65536 + 16)
    enc, dec, null, fbuf = (lib.crypto_aead_chacha20poly1305_ietf_encrypt,
                            lib.crypto_aead_chacha20poly1305_ietf_decrypt, ffi.NULL, ffi.buffer)

    def seal(nonce: bytes, data: bytes, ad: bytes) -> bytes:
        enc(buf, null, data, len(data), ad, len(ad), null, nonce, key)
        out: bytes = fbuf(buf, len(data) + 16)[:]
        return out

    def open_(nonce: bytes, data: bytes, ad: bytes) -> bytes:
        if dec(buf, null, null, data, len(data), ad, len(ad), nonce, key):
            raise ValueError("auth")
        out: bytes = fbuf(buf, len(data) - 16)[:]
        return out

    return seal, open_


def _binding(name: str, key: bytes) -> tuple[Callable[[bytes, bytes, bytes], bytes],
                                             Callable[[bytes, bytes, bytes], bytes]]:
    if name == "libsodium":
        return _libsodium_cffi(key)
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    c = ChaCha20Poly1305(key)
    return c.encrypt, c.decrypt


@pytest.mark.benchmark(group="aead")
@pytest.mark.parametrize("size", (100, 1400))
@pytest.mark.parametrize("op", ("seal", "open"))
@pytest.mark.parametrize("lib", ("libsodium", "cryptography"))
def test_aead_binding(benchmark: Benchmark, lib: str, op: str, size: int) -> None:
    """The bare AEAD call per datagram body, both bindings (issue 23's choice, measured
    before making it): libsodium via PyNaCl's cffi with a preallocated buffer, and the
    ``cryptography`` package's ChaCha20Poly1305 (OpenSSL), which sleeve uses now."""
    seal, open_ = _binding(lib, K1)
    header = dg.encode_header(9, 1)
    nonces = [bytes(4) + i.to_bytes(8, "little") for i in range(OPS)]
    body = ethernet(size)
    sealed = [seal(n, body, header) for n in nonces]
    if op == "seal":
        def all_ops() -> None:
            for n in nonces:
                seal(n, body, header)
    else:
        assert all(open_(n, c, header) == body for n, c in zip(nonces, sealed, strict=True))

        def all_ops() -> None:
            for n, c in zip(nonces, sealed, strict=True):
                open_(n, c, header)

    run(benchmark, all_ops, label=f"aead {op} {lib} {size}", baseline="baseline copy 1400")


@pytest.mark.benchmark(group="seal")
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("size", SIZES)
def test_seal(benchmark: Benchmark, size: int, mode: str) -> None:
    sealer = Sealer(K1, MODES[mode])
    header = partial(dg.encode_header, 9)  # what DataSession.seal passes
    body = dg.frame_record(ethernet(size))
    seal = sealer.seal

    def seal_all() -> None:
        for _ in range(OPS):
            seal(header, body)

    run(benchmark, seal_all, label=f"seal {mode} {size}", baseline=f"baseline copy {size}")


@pytest.mark.benchmark(group="open")
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("size", SIZES)
def test_open(benchmark: Benchmark, size: int, mode: str) -> None:
    """DataSession.open (authenticate/decrypt + replay check) of 64 fresh datagrams.

    The replay window is replaced once per 64 datagrams so every open is a real
    accept; that allocation is amortised into the per-op figure (a few ns).
    """
    enc = MODES[mode]
    tx = DataSession(7, 9, K1, K2, enc)
    rx = DataSession(9, 7, K2, K1, enc)
    body = dg.frame_record(ethernet(size))
    dgrams = [(i, tx.seal(body)) for i in range(OPS)]
    assert all(rx.open(c, d) == body for c, d in dgrams)

    def open_all() -> None:
        rx.replay = ReplayWindow()
        op = rx.open
        for c, d in dgrams:
            op(c, d)

    run(benchmark, open_all, label=f"open {mode} {size}", baseline=f"baseline copy {size}")


# ------------------------------------------------------------------------ codec

@pytest.mark.benchmark(group="codec")
@pytest.mark.parametrize("size", [64, 1400])
def test_frame_record_iter_records(benchmark: Benchmark, size: int) -> None:
    frame = ethernet(size)
    frame_record, iter_records = dg.frame_record, dg.iter_records

    def round_trip() -> None:
        for _ in range(OPS):
            for _r in iter_records(frame_record(frame)):
                pass

    assert [bytes(r.payload) for r in iter_records(frame_record(frame))] == [frame]
    run(benchmark, round_trip, label=f"frame_record+iter_records {size}",
        baseline=f"baseline copy {size}")


@pytest.mark.benchmark(group="codec")
def test_pack_64x1400(benchmark: Benchmark) -> None:
    records = [dg.frame_record(ethernet(1400)) for _ in range(OPS)]
    bodies, oversize = pack(records, MAX_BODY)
    assert len(bodies) == OPS and not oversize
    run(benchmark, partial(pack, records, MAX_BODY), label="pack 64x1400 (per frame)",
        baseline="baseline join 64x1400")


@pytest.mark.benchmark(group="codec")
def test_pack_64x64(benchmark: Benchmark) -> None:
    """Small frames: here pack really aggregates (about 22 records per body)."""
    records = [dg.frame_record(ethernet(64)) for _ in range(OPS)]
    run(benchmark, partial(pack, records, MAX_BODY), label="pack 64x64 (per frame)",
        baseline="baseline join 64x1400")


# ------------------------------------------------------------------------ tables

@pytest.mark.benchmark(group="tables")
def test_replay_in_order(benchmark: Benchmark) -> None:
    w = ReplayWindow()
    nxt = [0]

    def accept_batch() -> None:
        start = nxt[0]
        accept = w.accept
        for c in range(start, start + OPS):
            accept(c)
        nxt[0] = start + OPS

    run(benchmark, accept_batch, label="ReplayWindow.accept in order",
        baseline="baseline dict.get")
    assert w.accept(nxt[0] - 1) == "replay"


@pytest.mark.benchmark(group="tables")
def test_mactable_learn_lookup(benchmark: Benchmark) -> None:
    t = MacTable()
    t.learn_remote(REMOTE_MAC, REMOTE_PEER, NOW)
    srcs = [bytes((2, 0, 0, 0, 1, i)) for i in range(OPS)]

    def learn_lookup() -> None:
        learn, lookup = t.learn_local, t.lookup
        for s in srcs:
            learn(s, NOW)
            lookup(REMOTE_MAC, NOW)

    run(benchmark, learn_lookup, label="MacTable.learn_local+lookup",
        baseline="baseline dict.get")


# ------------------------------------------------------------------------ node loop

class _Link:
    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: list[bytes] = []


def _classify(frames: list[bytes], macs: MacTable, links: dict[bytes, _Link]) -> list[_Link]:
    """The per-frame part of forward.egress.Egress.on_port_readable, minus stats counters."""
    now = NOW
    touched: list[_Link] = []
    for f in frames:
        if len(f) < 14:
            continue
        dst = f[0:6]
        if not macs.learn_local(f[6:12], now):
            continue
        rec = dg.frame_record(f)
        targets: Any
        if dst[0] & 1:
            if dst.startswith(STP_PREFIX):
                continue
            targets = links.values()
        else:
            owner = macs.lookup(dst, now)
            if owner == LOCAL:
                continue
            link = links.get(owner) if owner is not None else None
            targets = (link,) if link is not None else links.values()
        for link in targets:
            if not link.pending:
                touched.append(link)
            link.pending.append(rec)
    return touched


def _setup_node(size: int) -> tuple[list[bytes], MacTable, dict[bytes, _Link]]:
    macs = MacTable()
    macs.learn_remote(REMOTE_MAC, REMOTE_PEER, NOW)
    links = {REMOTE_PEER: _Link(), b"\xb0" * 8: _Link()}
    frames = [ethernet(size, src_i=i % 4) for i in range(OPS)]  # a few local talkers
    return frames, macs, links


@pytest.mark.benchmark(group="node")
@pytest.mark.parametrize("size", [64, 1400])
def test_classify_batch(benchmark: Benchmark, size: int) -> None:
    frames, macs, links = _setup_node(size)

    def classify() -> None:
        for link in _classify(frames, macs, links):
            link.pending = []

    assert len(_classify(frames, macs, links)) == 1
    assert len(links[REMOTE_PEER].pending) == OPS
    links[REMOTE_PEER].pending = []
    run(benchmark, classify, label=f"classify 64 frames {size} (per frame)",
        baseline=f"baseline copy {size}")


@pytest.mark.benchmark(group="node")
@pytest.mark.parametrize("mode", list(MODES))
def test_tx_path_batch(benchmark: Benchmark, mode: str) -> None:
    """Classify + pack + seal 64 frames of 1400 bytes: the port-to-UDP path minus sendto."""
    frames, macs, links = _setup_node(1400)
    session = DataSession(7, 9, K1, K2, MODES[mode])

    def tx() -> None:
        for link in _classify(frames, macs, links):
            records, link.pending = link.pending, []
            bodies, _ = pack(records, MAX_BODY)
            for body in bodies:
                session.seal(body)

    run(benchmark, tx, label=f"tx path {mode} 64x1400 (per frame)",
        baseline="baseline copy 1400")


def _super_frame(payload: int, mss: int = 1348) -> bytes:
    """virtio header + a TCP/IPv4 super-frame as TSO hands it to the TAP (checksum partial)."""
    from sleeve.proto import vnet

    l4, hl = 34, 66
    ip = (b"\x45\x00" + (hl - 14 + payload).to_bytes(2, "big") + b"\x00\x07\x40\x00\x40\x06"
          + b"\x00\x00" + bytes((198, 19, 0, 1, 198, 19, 0, 2)))
    tcp = (b"\x13\x89\x9c\x40" + bytes(8) + b"\x80\x18\x01\xf5" + bytes(4)
           + b"\x01\x01\x08\x0a" + bytes(8))
    frame = REMOTE_MAC + bytes((2, 0, 0, 0, 1, 1)) + b"\x08\x00" + ip + tcp
    hdr = vnet.HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, hl, mss, l4, 16)
    return hdr + frame + bytes(range(256)) * (payload // 256) + bytes(payload % 256)


SUPER_PAYLOAD = 1348 * 48  # 48 segments, a full 64 KiB-class super-frame


@pytest.mark.benchmark(group="node")
@pytest.mark.parametrize("mode", list(MODES))
def test_tx_superframe(benchmark: Benchmark, mode: str) -> None:
    """Cut + pack + seal one super-frame: compare per segment with the per-frame tx path."""
    from sleeve.forward.superframe import cut

    raw = _super_frame(SUPER_PAYLOAD)
    session = DataSession(7, 9, K1, K2, MODES[mode])

    def tx() -> None:
        bodies, _ = pack(cut(raw, 1, MAX_BODY) or [], MAX_BODY)
        for body in bodies:
            session.seal(body)

    run(benchmark, tx, label=f"tx super-frame {mode} (per segment of 1348)",
        baseline="baseline copy 1400", ops=48)


@pytest.mark.benchmark(group="node")
@pytest.mark.parametrize("mode", list(MODES))
def test_rx_superframe(benchmark: Benchmark, mode: str) -> None:
    """Open + reassemble one super-frame's datagrams into the frame written to the TAP."""
    from sleeve.forward.superframe import SegmentSets, cut

    raw = _super_frame(SUPER_PAYLOAD)
    tx = DataSession(7, 9, K1, K2, MODES[mode])
    dgrams = [tx.seal(r) for r in cut(raw, 1, MAX_BODY) or []]

    def rx() -> None:
        rs = DataSession(9, 7, K2, K1, MODES[mode])
        sets = SegmentSets()
        for i, d in enumerate(dgrams):
            body = rs.open(i, d)
            assert not isinstance(body, str)
            sets.add(memoryview(body)[dg.REC_LEN:], NOW)

    run(benchmark, rx, label=f"rx super-frame {mode} (per segment of 1348)",
        baseline="baseline copy 1400", ops=48)


def _udp_frames(n: int) -> list[bytes]:
    """IPv4/UDP frames with 64 bytes of payload (106 bytes), as iperf3 -l 64 sends them;
    byte 47 (the TCP flags byte, were it TCP) is payload: its SYN bit set in every other."""
    out = []
    for i in range(n):
        ip = (b"\x45\x00\x00\x5c\x00\x01\x40\x00\x40\x11\x00\x00"
              + bytes((198, 19, 0, 1, 198, 19, 0, 2)))
        udp = b"\x13\x89\x13\x89\x00\x48\x00\x00"
        payload = bytes((0, 0, 0, 0, 0, 2 if i % 2 else 0)) + bytes(58)
        out.append(REMOTE_MAC + bytes((2, 0, 0, 0, 1, 1)) + b"\x08\x00" + ip + udp + payload)
    return out


@pytest.mark.benchmark(group="screen")
@pytest.mark.parametrize("clamp", ["on", "off"])
def test_syn_screen(benchmark: Benchmark, clamp: str) -> None:
    """The real ``Egress.on_port_readable`` on 64 small UDP frames, MSS clamping on and
    off: the difference is the per-frame SYN screen (issue 23 asked whether it costs ~6%
    at UDP 64 B). Sends go to a counter, not a socket."""
    from sleeve.capture.memory import MemoryPort
    from sleeve.crypto.keys import Signer
    from sleeve.crypto.noise import KeyPair
    from sleeve.forward.egress import Egress
    from sleeve.forward.underlay import Underlay
    from sleeve.links.fake import fake_link
    from sleeve.links.link import Link
    from sleeve.links.table import LinkTable
    from sleeve.mesh import Mesh
    from sleeve.proto.origin import OriginAuth
    from sleeve.proto.stats import Counters

    sent = [0]

    class CountingUnderlay(Underlay):
        def send(self, link: Link, body: bytes) -> None:
            sent[0] += 1

        def send_many(self, link: Link, bodies: list[bytes]) -> None:
            sent[0] += len(bodies)

    drops, stats = Counters(), Counters()
    me = b"\x01" * 8
    links = LinkTable(me, stats)
    macs = MacTable()
    signer = Signer.from_static(KeyPair.generate())
    mesh = Mesh(signer, "me", 1)
    eg = Egress(me, links, mesh.routes, macs, CountingUnderlay(drops, stats, False), drops,
                stats, OriginAuth(signer, 1, lambda _p: None))
    eg.clamp_mss = clamp == "on"
    port = MemoryPort(capacity=OPS)
    eg.port = port
    peer = fake_link(REMOTE_PEER)
    peer.usable = True
    links.register(peer)
    macs.learn_remote(REMOTE_MAC, REMOTE_PEER, NOW)
    frames = _udp_frames(OPS)

    def one_batch() -> None:
        for f in frames:
            port.inject(f)
        eg.on_port_readable()

    one_batch()
    assert sent[0] >= 1 and not drops.snapshot()
    run(benchmark, one_batch, label=f"egress 64 x UDP 64 B, clamp {clamp} (per frame)",
        baseline="egress 64 x UDP 64 B, clamp off (per frame)")
