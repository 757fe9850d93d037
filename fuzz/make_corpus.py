"""(Re)generate the seed corpora in fuzz/corpus/<target>/ from valid encodings.

Seeds are small valid (and a few near-valid) inputs, so the fuzzer starts from inside
each format instead of having to discover msgpack, the preamble or a handshake. They are
deterministic (fixed keys, fixed ephemerals), so rerunning this rewrites identical files.
Only ``seed-*`` files are replaced; ``regress-*`` files (crash inputs kept as
regressions) are left alone.

Usage: ``python3 -m fuzz.make_corpus [--out DIR]``
"""

from __future__ import annotations

import argparse
import pathlib
import struct
from dataclasses import replace

from fuzz import fuzz_control as fc
from sleeve.proto import control as ctl
from sleeve.proto import datagram as dg
from sleeve.proto import topology as topo
from sleeve.proto.session import DataSession

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"


def datagram_seeds() -> dict[str, bytes]:
    peer_a, peer_b = bytes(range(1, 9)), bytes(range(9, 17))
    eth = bytes.fromhex("ffffffffffff02000000000108060001") + bytes(26)  # broadcast ARP-ish
    bodies = {
        "empty-body": b"",
        "one-frame": dg.frame_record(eth),
        "two-frames": dg.frame_record(eth) + dg.frame_record(eth[:14]),
        "heartbeat": dg.encode_record(dg.KIND_HEARTBEAT, bytes(range(8)) + b"\x00"),
        "probe": dg.encode_record(dg.KIND_PROBE, b"\x00\x00\x00\x07" + bytes(60)),
        "relayed": dg.encode_record(dg.KIND_FRAME, eth, src=peer_a, dst=peer_b, hops=3),
        "src-only": dg.encode_record(dg.KIND_FRAME, eth, src=peer_a),
        "relayed-auth": dg.encode_record(dg.KIND_FRAME, eth, src=peer_a, dst=peer_b, hops=3,
                                         auth=bytes(range(dg.AUTH_MAC_LEN))),
        "bcast-signed": dg.encode_record(dg.KIND_FRAME, eth, src=peer_a, hops=3, bcast=True,
                                         auth=bytes(range(dg.AUTH_SIG_LEN))),
        "max-hops": dg.encode_record(dg.KIND_FRAME, b"x", dst=peer_b, hops=dg.MAX_HOPS),
    }
    seeds: dict[str, bytes] = {}
    for encrypt in (True, False):
        s = DataSession(local_index=9, remote_index=7, send_key=bytes(range(32)),
                        recv_key=bytes(range(32, 64)), encrypt=encrypt)
        for name, body in bodies.items():
            seeds[f"dgram-{'enc' if encrypt else 'clear'}-{name}"] = s.seal(body)
    for name, body in bodies.items():
        seeds[f"body-{name}"] = body  # records alone (iter_records on the whole input)
    frame = seeds["dgram-enc-one-frame"]
    seeds["dgram-short"] = frame[: dg.HEADER_LEN + dg.TAG_LEN - 1]
    seeds["dgram-bad-type"] = b"\x02" + frame[1:]
    seeds["dgram-bad-version"] = frame[:1] + b"\x02" + frame[2:]
    seeds["body-truncated-record"] = bodies["relayed"][:-1]
    seeds["body-truncated-peer-id"] = bodies["relayed"][: dg.REC_LEN + 5]
    # replay counter streams (see fuzz_datagram._counters): steps forward, back, to the top
    seeds["counters-steps"] = b"".join(struct.pack("!B3s", t, v.to_bytes(3, "big")) for t, v in
                                       [(0, 1), (0, 2), (1, (1 << 23) - 1), (0, 0x800),
                                        (1, (1 << 23) - 2048), (0xFF, 1), (0xFF, 0)])
    return seeds


def _ctl(mode: int, flags: int, seed: int, payload: bytes) -> bytes:
    return bytes((mode, flags, seed)) + payload


def control_seeds() -> dict[str, bytes]:
    seeds: dict[str, bytes] = {}
    for encrypted in (True, False):
        t = fc.TRANSCRIPTS[encrypted]
        e = 0 if encrypted else 1
        tag = "enc" if encrypted else "clear"
        w = t.wire
        # RAW: the message each snapshot expects next (the fuzzer mutates from there)
        nxt = {"r_fresh": w[0], "r_wait_msg1": w[0][ctl.PREAMBLE_LEN :], "r_wait_msg3": w[2],
               "r_open": w[4], "i_started": w[1], "i_wait_hello": w[3], "i_open": w[5]}
        for i, name in enumerate(fc.RECEIVERS):
            seeds[f"raw-{tag}-{name}"] = _ctl(0, e | i << 1, 0, nxt[name])
        good_i = ctl.pack_message(ctl.hello_message(fc.HELLO_I, fc.SIGNER_I,
                                                    fc.STATIC_I.public))
        good_r = ctl.pack_message(ctl.hello_message(fc.HELLO_R, fc.SIGNER_R,
                                                    fc.STATIC_R.public))
        seeds[f"hello-msg3-{tag}"] = _ctl(2, e, 0, good_i)
        seeds[f"hello-sealed-{tag}"] = _ctl(3, e, 0, good_r)
    # The rest once, on the encrypted transcript (flag bit 0 flips the fuzzer to the other).
    w = fc.TRANSCRIPTS[True].wire
    r_fresh = fc.RECEIVERS.index("r_fresh") << 1
    r_open = fc.RECEIVERS.index("r_open") << 1
    seeds["raw-bytewise-r_fresh"] = _ctl(0, r_fresh, 64, w[0])  # 1-byte chunks
    seeds["raw-chunked-r_fresh"] = _ctl(0, r_fresh, 77, w[0])
    seeds["raw-bad-magic"] = _ctl(0, r_fresh, 0, b"SLEEPY\x01\x01")
    seeds["raw-bad-version"] = _ctl(0, r_fresh, 0, b"SLEEVE\x01\x01")  # the previous one
    seeds["raw-bad-mode"] = _ctl(0, r_fresh, 0, b"SLEEVE" + bytes((ctl.VERSION, 2)))
    seeds["raw-other-mode"] = _ctl(0, r_fresh, 0, ctl.preamble(False))
    seeds["raw-error-frame"] = _ctl(0, fc.RECEIVERS.index("i_started") << 1, 0,
                                    ctl.error_frame("wrong password"))
    seeds["raw-error-frame-escapes"] = _ctl(0, fc.RECEIVERS.index("i_started") << 1, 0,
                                            ctl.frame(ctl.T_ERROR, b"x\n\x1b[2J\xff" * 80))
    seeds["raw-oversized-handshake"] = _ctl(0, fc.RECEIVERS.index("r_wait_msg1") << 1, 0,
                                            struct.pack("!IB", ctl.MAX_HANDSHAKE_FRAME + 1, 1))
    seeds["raw-oversized"] = _ctl(0, r_open, 0, struct.pack("!IB", ctl.MAX_FRAME + 1, 3))
    seeds["raw-zero-length"] = _ctl(0, r_open, 0, b"\x00\x00\x00\x00\x03")
    # SEALED: plaintexts reaching unpack_message past the AEAD
    for name, plain in {
        "ping": ctl.pack_message(fc.APP_MSG),
        "not-a-map": b"\x93\x01\x02\x03",
        "no-type": ctl.pack_message({"x": 1}),
        "nested": ctl.pack_message({"t": "routes", "r": [[b"12345678", 1, [True]]] * 3}),
    }.items():
        seeds[f"sealed-{name}"] = _ctl(1, 0, 0, plain)
    seeds["sealed-ping-to-initiator"] = _ctl(1, 2, 0, ctl.pack_message(fc.APP_MSG))
    bad = ctl.pack_message({"t": "hello", "nick": "x", "uid": True, "idx": 1, "udp": 1})
    seeds["hello-msg3-bad"] = _ctl(2, 0, 0, bad)
    seeds["hello-sealed-bad"] = _ctl(3, 0, 0, bad)
    # a valid Hello with the other side's identity: the certificate names another key
    seeds["hello-msg3-stolen-cert"] = _ctl(2, 0, 0, ctl.pack_message(ctl.hello_message(
        fc.HELLO_I, fc.SIGNER_R, fc.STATIC_R.public)))
    seeds["hello-msg3-no-key"] = _ctl(2, 0, 0, ctl.pack_message(fc.HELLO_I.to_wire()))
    # CRAFTED msg1: a real public key, and low-order points
    seeds["crafted-real-key"] = _ctl(4, 0, 0, fc.STATIC_I.public + b"payload")
    seeds["crafted-zero-point"] = _ctl(4, 0, 0, bytes(32))
    seeds["crafted-order-8"] = _ctl(4, 0, 0, bytes.fromhex(
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"))
    # MITM: each step intact; one bit flipped; truncated
    for step in range(len(fc.MITM_STEPS)):
        seeds[f"mitm-{step}-intact"] = _ctl(5, step << 1, 0, b"\x00")
    seeds["mitm-0-flip"] = _ctl(5, 0, 5, b"\x01\x00\x09\x01")
    seeds["mitm-2-cut"] = _ctl(5, 2 << 1, 0, b"\x01\x00\x07\x00")
    # NOISE: the honest body for each position (frame header stripped)
    for pos, msg in enumerate((w[0][ctl.PREAMBLE_LEN + 5 :], w[1][5:], w[2][5:])):
        seeds[f"noise-msg{pos + 1}"] = _ctl(6, pos << 1, 0, msg)
    return seeds


def topology_seeds() -> dict[str, bytes]:
    from fuzz import fuzz_topology as ft

    signers = ft.SIGNERS

    def pid(i: int) -> bytes:
        return signers[i].peer_id

    def signed(r: topo.PeerRecord) -> topo.PeerRecord:
        return topo.sign_record(r, next(s for s in signers.values() if s.peer_id == r.peer))

    def by_peer(*conns: topo.ConnRecord) -> tuple[topo.ConnRecord, ...]:
        return tuple(sorted(conns, key=lambda x: x.peer))

    me = pid(1)
    c = topo.ConnRecord
    recs = [
        signed(topo.PeerRecord(pid(2), "alpha", 7, 3, by_peer(
            c(me, "198.51.100.1:6783", True, True),
            c(pid(3), "[2001:db8::1]:6783", False, False)))),
        signed(topo.PeerRecord(pid(3), "", 1, 0, ())),
        signed(topo.PeerRecord(pid(4), "n" * topo.MAX_NICK, topo.MAX_U64, topo.MAX_VERSION,
                               (c(pid(5), "a" * topo.MAX_ADDR, True, False),))),
        # an earlier incarnation of us: validly signed by our own key, makes us outbid it
        signed(topo.PeerRecord(me, "me", 2, 9, (c(pid(2), "198.51.100.2:6783", False, True),))),
    ]
    # forgeries: peer 3 writes a record for peer 2 (its own key; then peer 2's key with
    # peer 3's signature), invents a connection in peer 2's signed record, signs nothing
    honest = recs[0]
    invented = replace(honest, version=4, conns=by_peer(*honest.conns,
                                                        c(pid(5), "203.0.113.9:6783", True,
                                                          True)))
    forged = {
        "forged-other-key": replace(signed(replace(honest, peer=pid(3))), peer=pid(2)),
        "forged-wrong-sig": replace(honest, version=4,
                                    sig=signers[3].sign(replace(honest, version=4)
                                                        .signed_bytes())),
        "forged-invented-conn": replace(invented, sig=honest.sig),
        "forged-zero-sig": replace(honest, version=5, sig=bytes(topo.SIG_LEN)),
        "forged-about-us": replace(signed(replace(recs[3], peer=pid(3))), peer=me,
                                   version=10),
    }
    seeds = {
        "empty": topo.encode_records([]),
        "one": topo.encode_records(recs[:1]),
        "all": topo.encode_records(recs),
        "bounds": topo.encode_records(recs[2:3]),
        "about-us": topo.encode_records(recs[3:]),
        "bad-format": b"\x92\x01\x90",  # the previous, unsigned format
        "not-array": b"\x81\xa1t\x01",
        "bool-uid": b"\x92\x02\x91\x97\xc4\x08" + pid(2) + b"\xa0\xc3\x00\x90"
                    + b"\xc4\x20" + bytes(32) + b"\xc4\x40" + bytes(64),
    }
    for name, r in forged.items():
        seeds[name] = topo.encode_records([*recs[1:2], r])
    # the connection-count bound (~14 KB: also raises libFuzzer's max_len for this target)
    full = tuple(c(i.to_bytes(8, "big"), "", False, False) for i in range(2, topo.MAX_CONNS + 2))
    seeds["max-conns"] = topo.encode_records([signed(topo.PeerRecord(pid(1), "", 1, 0, full))])
    # ints in wider encodings than needed: still valid, and the signature (over the
    # canonical re-encoding) still verifies
    w = signed(topo.PeerRecord(pid(2), "x", 5, 1, ()))
    seeds["wide-ints"] = (b"\x92\x02\x91\x97\xc4\x08" + pid(2) + b"\xa1x"
                          + b"\xcf" + (5).to_bytes(8, "big") + b"\xce" + (1).to_bytes(4, "big")
                          + b"\x90\xc4\x20" + w.key + b"\xc4\x40" + w.sig)
    return seeds


TARGETS = {"datagram": datagram_seeds, "control": control_seeds, "topology": topology_seeds}


def write(out: pathlib.Path = CORPUS) -> dict[str, int]:
    counts = {}
    for target, make in TARGETS.items():
        d = out / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("seed-*"):
            old.unlink()
        seeds = make()
        for name, data in seeds.items():
            (d / f"seed-{name}").write_bytes(data)
        counts[target] = len(seeds)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=CORPUS)
    args = ap.parse_args()
    for target, n in write(args.out).items():
        print(f"{target}: {n} seeds in {args.out / target}")


if __name__ == "__main__":
    main()
