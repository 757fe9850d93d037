"""Control connection protocol over TCP (sans-IO): framing, handshake, messages.

The dialling side opens with an 8-byte preamble, then both sides exchange
length-prefixed frames::

    preamble (initiator only, once):
    +---+---+---+---+---+---+---------+--------+
    | S | L | E | E | V | E | version | mode   |   version 3; mode 1 = password,
    +---+---+---+---+---+---+---------+--------+   0 = --no-encryption, others refused

    frame:
    +--------+--------+--------+--------+--------+----------------------+
    |        length (BE 32, = 1 + len(body))    | type   | body ...     |
    +--------+--------+--------+--------+--------+----------------------+
    type 1 HANDSHAKE  Noise message (XXpsk3: 3 of them)
    type 2 ERROR      reason, clear text, only before authentication; informational
                      (it is unauthenticated: only printable ASCII of it reaches the
                      ControlError, at most 200 characters), then the sender closes
    type 3 SEALED     Noise transport message holding one msgpack map {"t": kind, ...}

    length: before the connection is open (handshake, ERROR, the sealed Hello) at most
    1 + 65535, the largest Noise message; once open at most MAX_FRAME (1 MiB).

The preamble is the Noise prologue, so a tampered version or mode fails the
handshake instead of downgrading it.

Hello (msg 3's payload from the initiator, the first sealed message from the
responder) is a msgpack map::

    {"t": "hello", "nick": str <= 64, "uid": uint64 > 0, "idx": uint32 > 0,
     "udp": port, "seen": str <= 64,
     "key": bin 32   Ed25519 public key; the peer id is crypto.keys.peer_id_of(key)
     "cert": bin 64} signature by "key" over the sender's X25519 static public key
                     (crypto.keys.Signer.certify)

The handshake proves the static key; the certificate binds the signing key to it, and
with it the peer id (``Established.remote_id``) that gossip records are checked against.
State machine::

    initiator: start -> WAIT_MSG2 --msg2/send msg3+hello--> WAIT_HELLO --hello--> OPEN
    responder: WAIT_PREAMBLE -> WAIT_MSG1 --send msg2--> WAIT_MSG3 --hello/send hello--> OPEN
    any state --ERROR frame or bad input--> ControlError (the adapter closes)

Once open, either side may run a fresh-DH rekey exchange (``rk``/``rk2``/``rk3``,
``proto.rekey``): those three message types are handled here, inside ``feed``, because
each marks the frame after which this channel's send or receive key changes; they never
reach the caller. ``tick(now)`` returns what the exchange's timer wants sent.

With --no-encryption the handshake still runs (static keys authenticate the
peers, the control channel stays sealed) with an all-zero PSK; only the data
plane goes unencrypted (still integrity-protected).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from sleeve.crypto.aead import derive_data_keys
from sleeve.crypto.keys import (
    SIGN_KEY_LEN,
    SIGNATURE_LEN,
    Signer,
    peer_id_of,
    verify_static_cert,
)
from sleeve.crypto.noise import (
    MAX_MESSAGE_LEN,
    TAGLEN,
    CipherState,
    HandshakeError,
    HandshakeState,
    KeyPair,
)
from sleeve.crypto.rekey import KeySchedule
from sleeve.proto.rekey import KINDS as REKEY_KINDS
from sleeve.proto.rekey import MAX_ATTEMPTS, REKEY_TIMEOUT, DataKeys, Rekeyer, RekeyError

MAGIC: Final = b"SLEEVE"
# 2: Hello carries the signing key and its certificate; 3: rekey exchanges (rk/rk2/rk3),
# which a version-2 peer would never answer (its link would close every interval);
# 4: topology by digest (gossip kinds 3 digest, 4 want, 5 answer), which a version-3
# peer refuses as undecodable while the handshake succeeds: in a rolling upgrade it
# would learn only its direct neighbours' records. Both sides now refuse the link with
# "peer speaks control protocol version 3, we speak 4".
# 5: control heartbeats only while needed (proto.liveness.control_heartbeat): a
# version-4 peer would close every idle connection after its 20 s read timeout.
VERSION: Final = 5
PREAMBLE_LEN: Final = 8
PATTERN: Final = "XXpsk3"
PROLOGUE_LABEL: Final = b"sleeve-control-v1"
FRAME_HDR = struct.Struct("!IB")
MAX_FRAME: Final = 1 << 20  # 1 MiB: enough for gossip of thousands of peers, bounds memory per conn
# Before authentication no frame needs more than the largest Noise message (+ type byte):
# an unauthenticated connection cannot make us buffer more than this.
MAX_HANDSHAKE_FRAME: Final = 1 + MAX_MESSAGE_LEN
MAX_ERROR_TEXT: Final = 200
T_HANDSHAKE: Final = 1
T_ERROR: Final = 2
T_SEALED: Final = 3
ZERO_PSK: Final = b"\x00" * 32


class ControlError(Exception):
    """The peer broke the protocol or failed authentication; close this connection.

    ``reason`` is a short metric label; ``detail`` a readable line for the log (anything
    in it that came from the peer unauthenticated is printable ASCII).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class MessageTooLarge(ValueError):
    """``seal`` was given a message whose frame would exceed MAX_FRAME (local misuse).

    Nothing was encrypted: the channel is unchanged and stays usable. Split the message.
    """


class State(enum.Enum):
    WAIT_PREAMBLE = "wait_preamble"
    WAIT_MSG1 = "wait_msg1"
    WAIT_MSG2 = "wait_msg2"
    WAIT_MSG3 = "wait_msg3"
    WAIT_HELLO = "wait_hello"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Hello:
    """What each side tells the other once authenticated."""

    nickname: str
    uid: int  # incarnation id: random per process start
    index: int  # our data-plane session index for this link (receiver index)
    udp_port: int
    seen: str = ""  # the address we see the other side at ("" if unknown)
    # Data-plane capabilities, a bit set (absent = 0, so older peers parse as none):
    # 1 = we take offloaded frames with virtio-net headers (sleeve.forward.superframe).
    offloads: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"t": "hello", "nick": self.nickname, "uid": self.uid, "idx": self.index,
                "udp": self.udp_port, "seen": self.seen, "off": self.offloads}

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Hello:
        try:
            h = cls(m["nick"], m["uid"], m["idx"], m["udp"], m.get("seen", ""),
                    m.get("off", 0))
        except KeyError as e:
            raise ControlError("bad_hello", f"hello lacks field {e}") from None
        # type(...) is int: msgpack booleans are ints to isinstance
        if not (isinstance(h.nickname, str) and len(h.nickname) <= 64
                and type(h.uid) is int and 0 < h.uid < 1 << 64
                and type(h.index) is int and 0 < h.index < 1 << 32
                and type(h.udp_port) is int and 0 < h.udp_port < 65536
                and isinstance(h.seen, str) and len(h.seen) <= 64
                and type(h.offloads) is int and 0 <= h.offloads < 1 << 32):
            raise ControlError("bad_hello", "hello has a field of the wrong type or range")
        return h


@dataclass(frozen=True, slots=True)
class Established:
    remote_static: bytes  # X25519, proven by the handshake
    remote_key: bytes  # Ed25519, certified for remote_static in the Hello
    remote_id: bytes  # = crypto.keys.peer_id_of(remote_key)
    hello: Hello
    handshake_hash: bytes
    data_send: bytes  # data-plane keys, separate from the control channel's (crypto.aead)
    data_recv: bytes


def preamble(encrypted: bool) -> bytes:
    return MAGIC + bytes((VERSION, 1 if encrypted else 0))


def printable(data: bytes, limit: int = MAX_ERROR_TEXT) -> str:
    """Untrusted bytes as a log-safe string: the first ``limit`` bytes, every byte that
    is not printable ASCII (controls, escapes, newlines, non-ASCII) replaced by "?"."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in data[:limit])


def hello_message(hello: Hello, signer: Signer, static_public: bytes) -> dict[str, Any]:
    """The Hello map we send: ``hello`` plus our signing key and its certificate."""
    return {**hello.to_wire(), "key": signer.public, "cert": signer.certify(static_public)}


def read_hello(m: dict[str, Any], remote_static: bytes) -> tuple[Hello, bytes]:
    """Decode a received Hello map; returns it and the peer's certified signing key."""
    hello = Hello.from_wire(m)
    key, cert = m.get("key"), m.get("cert")
    if not (type(key) is bytes and len(key) == SIGN_KEY_LEN
            and type(cert) is bytes and len(cert) == SIGNATURE_LEN):
        raise ControlError("bad_hello", "hello lacks the signing key or its certificate")
    if not verify_static_cert(key, remote_static, cert):
        raise ControlError("bad_identity", "the peer's signing key does not certify the "
                           "static key it authenticated with; refusing it")
    return hello, key


def frame(typ: int, body: bytes) -> bytes:
    return FRAME_HDR.pack(len(body) + 1, typ) + body


def pack_message(msg: dict[str, Any]) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)  # type: ignore[no-any-return]


def unpack_message(data: bytes) -> dict[str, Any]:
    try:
        # unpackb bounds every length by the input size, so a frame cannot inflate memory.
        m = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ControlError("bad_message", f"undecodable control message ({type(e).__name__})") \
            from None
    if not isinstance(m, dict) or not isinstance(m.get("t"), str):
        raise ControlError("bad_message", "control message is not a map with a type")
    return m


class ControlChannel:
    """One control connection's protocol state. Feed bytes in, get bytes and events out."""

    def __init__(self, *, initiator: bool, static: KeyPair, psk: bytes | None,
                 hello: Hello, signer: Signer | None = None,
                 encrypted: bool | None = None) -> None:
        """``signer`` is the node's signing key, ``Signer.from_static(static)``; pass it
        to save deriving it per connection. ``psk`` (the password's key, None for an open
        network) decides who may join; ``encrypted`` whether the data is encrypted
        (default: with a psk), so a password network can run in clear text."""
        self.initiator = initiator
        self.encrypted = psk is not None if encrypted is None else encrypted
        self._static = static
        self._signer = signer
        self._psk = psk if psk is not None else ZERO_PSK
        self._hello = hello
        self._buf = bytearray()
        self._hs: HandshakeState | None = None
        self._tx: CipherState | None = None
        self._rx: CipherState | None = None
        self.established: Established | None = None
        self.state = State.WAIT_MSG2 if initiator else State.WAIT_PREAMBLE
        self._schedule: KeySchedule | None = None  # from the handshake, for rekeying
        self.rekey: Rekeyer | None = None  # once the link's data session is attached

    # -- output -----------------------------------------------------------------------------
    def start(self) -> bytes:
        """Initiator: the first bytes to send (preamble + Noise message 1)."""
        assert self.initiator and self._hs is None
        pre = preamble(self.encrypted)
        self._hs = self._new_hs(pre)
        return pre + frame(T_HANDSHAKE, self._hs.write_message(b""))

    def seal(self, msg: dict[str, Any]) -> bytes:
        """One sealed frame holding ``msg``.

        Raises ``MessageTooLarge`` (nothing sent or consumed) if the frame would exceed
        MAX_FRAME, which the peer would refuse, closing the connection.
        """
        if self.state is not State.OPEN or self._tx is None:
            raise RuntimeError("control channel is not open")
        plain = pack_message(msg)
        if 1 + len(plain) + TAGLEN > MAX_FRAME:
            raise MessageTooLarge(f"a {msg.get('t')!r} control message of {len(plain)} bytes "
                                  f"exceeds the {MAX_FRAME}-byte frame limit")
        return frame(T_SEALED, self._tx.encrypt_with_ad(b"", plain))

    def enable_rekey(self, data: DataKeys, interval: float | None, *,
                     timeout: float = REKEY_TIMEOUT, max_attempts: int = MAX_ATTEMPTS,
                     ) -> Rekeyer:
        """Run fresh-DH exchanges (``proto.rekey``) on this open channel for ``data``.

        ``interval``: how often to start one (None: only answer the peer's).
        """
        if self.state is not State.OPEN or self._schedule is None:
            raise RuntimeError("control channel is not open")
        self.rekey = Rekeyer(initiator=self.initiator, schedule=self._schedule, data=data,
                             interval=interval, timeout=timeout, max_attempts=max_attempts)
        return self.rekey

    def tick(self, now: float) -> bytes:
        """Bytes to send now (a rekey start or retry). Raises ControlError on a stalled
        exchange."""
        rk = self.rekey
        if rk is None or self.state is not State.OPEN:
            return b""
        try:
            msg = rk.tick(now)
        except RekeyError as e:
            raise ControlError(e.reason, e.detail) from None
        return b"" if msg is None else self.seal(msg)

    def _on_rekey(self, m: dict[str, Any]) -> bytes:
        """Apply one rekey message: reply under the current key, then switch keys."""
        if self.rekey is None:
            raise ControlError("protocol", "rekey message before the link was set up")
        try:
            step = self.rekey.on_message(m)
        except RekeyError as e:
            raise ControlError(e.reason, e.detail) from None
        out = b"" if step.reply is None else self.seal(step.reply)
        # The old CipherStates' keys are immutable bytes: dropping them is all we can do.
        if step.tx_key is not None:
            self._tx = CipherState(step.tx_key)
        if step.rx_key is not None:
            self._rx = CipherState(step.rx_key)
        return out

    def wipe(self) -> None:
        """Zero the rekey secrets (the connection ended)."""
        if self.rekey is not None:
            self.rekey.wipe()
        elif self._schedule is not None:
            self._schedule.wipe()

    def _hello_message(self) -> bytes:
        if self._signer is None:
            self._signer = Signer.from_static(self._static)
        return pack_message(hello_message(self._hello, self._signer, self._static.public))

    # -- input ------------------------------------------------------------------------------
    def feed(self, data: bytes) -> tuple[bytes, list[dict[str, Any]], Established | None]:
        """Consume received bytes.

        Returns (bytes to send, messages received after opening, Established
        when the handshake completed during this call). Raises ControlError.
        """
        self._buf += data
        out = bytearray()
        msgs: list[dict[str, Any]] = []
        done: Established | None = None
        if self.state is State.WAIT_PREAMBLE:
            if len(self._buf) < PREAMBLE_LEN:
                return b"", msgs, None
            out += self._on_preamble(bytes(self._buf[:PREAMBLE_LEN]))
            del self._buf[:PREAMBLE_LEN]
        while True:
            fr = self._next_frame()
            if fr is None:
                break
            typ, body = fr
            reply, msg, est = self._on_frame(typ, body)
            out += reply
            if msg is not None:
                msgs.append(msg)
            if est is not None:
                # Later frames wait in the buffer until the next feed: the caller sets
                # the link up (enable_rekey) first, then feeds b"" to take them.
                done = est
                break
        return bytes(out), msgs, done

    def _next_frame(self) -> tuple[int, bytes] | None:
        if len(self._buf) < FRAME_HDR.size:
            return None
        length, typ = FRAME_HDR.unpack_from(self._buf, 0)
        limit = MAX_FRAME if self.state is State.OPEN else MAX_HANDSHAKE_FRAME
        if length < 1 or length > limit:
            raise ControlError("frame_size", f"control frame of {length} bytes is out of bounds "
                               f"(at most {limit} in state {self.state.value})")
        if len(self._buf) < 4 + length:
            return None
        body = bytes(self._buf[FRAME_HDR.size : 4 + length])
        del self._buf[: 4 + length]
        return typ, body

    def _new_hs(self, pre: bytes) -> HandshakeState:
        return HandshakeState(PATTERN, initiator=self.initiator, prologue=PROLOGUE_LABEL + pre,
                              s=self._static, psk=self._psk)

    def _on_preamble(self, pre: bytes) -> bytes:
        if pre[:6] != MAGIC:
            raise ControlError("bad_magic", "not a sleeve peer (bad preamble)")
        if pre[6] != VERSION:
            raise ControlError("version", f"peer speaks control protocol version {pre[6]}, "
                               f"we speak {VERSION}")
        if pre[7] not in (0, 1):
            raise ControlError("bad_mode", f"preamble encryption mode {pre[7]} is neither "
                               "1 (password) nor 0 (--no-encryption)")
        theirs = pre[7] == 1
        if theirs != self.encrypted:
            raise ControlError(
                "encryption_mismatch",
                "encryption mismatch: peer runs " + ("encrypted" if theirs else
                "--no-encryption") + ", we run " + ("encrypted" if self.encrypted else
                "--no-encryption"),
            )
        self._hs = self._new_hs(pre)
        self.state = State.WAIT_MSG1
        return b""

    def _on_frame(self, typ: int, body: bytes) -> tuple[bytes, dict[str, Any] | None,
                                                       Established | None]:
        st = self.state
        if typ == T_ERROR:
            text = printable(body)  # unauthenticated: no newlines or escapes into the log
            if st is State.OPEN:
                raise ControlError("protocol", "error frame on an open connection")
            raise ControlError("rejected", f"peer rejected the handshake: {text}")
        hs = self._hs
        if st is State.OPEN:
            if typ != T_SEALED or self._rx is None:
                raise ControlError("protocol", f"unexpected frame type {typ} on open connection")
            try:
                plain = self._rx.decrypt_with_ad(b"", body)
            except HandshakeError:
                raise ControlError("decrypt", "control message failed authentication") from None
            m = unpack_message(plain)
            if m["t"] in REKEY_KINDS:
                return self._on_rekey(m), None, None
            return b"", m, None
        if hs is None:
            raise ControlError("protocol", "frame before preamble")
        try:
            if st is State.WAIT_MSG1 and typ == T_HANDSHAKE:
                hs.read_message(body)
                self.state = State.WAIT_MSG3
                return frame(T_HANDSHAKE, hs.write_message(b"")), None, None
            if st is State.WAIT_MSG2 and typ == T_HANDSHAKE:
                hs.read_message(body)
                msg3 = hs.write_message(self._hello_message())
                self._split(hs)
                self.state = State.WAIT_HELLO
                return frame(T_HANDSHAKE, msg3), None, None
            if st is State.WAIT_MSG3 and typ == T_HANDSHAKE:
                try:
                    payload = hs.read_message(body)
                except HandshakeError:
                    raise ControlError(
                        "auth_failed", "authentication failed: wrong password (the peer uses "
                        "a different network secret) or a corrupted handshake") from None
                assert hs.remote_static is not None
                hello, key = read_hello(unpack_message(payload), hs.remote_static)
                est = self._finish(hs, hello, key)
                return frame(T_SEALED, self._tx.encrypt_with_ad(  # type: ignore[union-attr]
                    b"", self._hello_message())), None, est
            if st is State.WAIT_HELLO and typ == T_SEALED:
                assert self._rx is not None and hs.remote_static is not None
                m = unpack_message(self._rx.decrypt_with_ad(b"", body))
                hello, key = read_hello(m, hs.remote_static)
                return b"", None, self._finish(hs, hello, key)
        except HandshakeError:
            raise ControlError("handshake", f"invalid handshake message in state {st.value}") \
                from None
        raise ControlError("protocol", f"unexpected frame type {typ} in state {st.value}")

    def _split(self, hs: HandshakeState) -> None:
        i2r, r2i = hs.split()
        self._tx, self._rx = (i2r, r2i) if self.initiator else (r2i, i2r)

    def _finish(self, hs: HandshakeState, hello: Hello, key: bytes) -> Established:
        if self._tx is None:
            self._split(hs)
        assert self._tx is not None and self._rx is not None
        rs = hs.remote_static
        assert rs is not None
        self.state = State.OPEN
        self._schedule = KeySchedule(hs.chaining_key(), hs.handshake_hash)
        i2r, r2i = (self._tx.key, self._rx.key) if self.initiator else (self._rx.key, self._tx.key)
        d_i2r, d_r2i = derive_data_keys(i2r, r2i, hs.handshake_hash)
        send, recv = (d_i2r, d_r2i) if self.initiator else (d_r2i, d_i2r)
        self.established = Established(rs, key, peer_id_of(key), hello, hs.handshake_hash,
                                       send, recv)
        return self.established


def error_frame(text: str) -> bytes:
    """What a responder sends before closing on a failed handshake (unauthenticated)."""
    return frame(T_ERROR, printable(text.encode(), MAX_ERROR_TEXT).encode())
