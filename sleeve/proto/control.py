"""Control connection protocol over TCP (sans-IO): framing, handshake, messages.

The dialling side opens with an 8-byte preamble, then both sides exchange
length-prefixed frames::

    preamble (initiator only, once):
    +---+---+---+---+---+---+---------+--------+
    | S | L | E | E | V | E | version | mode   |   mode 1 = password, 0 = --no-encryption
    +---+---+---+---+---+---+---------+--------+

    frame:
    +--------+--------+--------+--------+--------+----------------------+
    |        length (BE 32, = 1 + len(body))    | type   | body ...     |
    +--------+--------+--------+--------+--------+----------------------+
    type 1 HANDSHAKE  Noise message (XXpsk3: 3 of them)
    type 2 ERROR      UTF-8 reason, clear text, only before authentication;
                      informational (it is unauthenticated), then the sender closes
    type 3 SEALED     Noise transport message holding one msgpack map {"t": kind, ...}

The preamble is the Noise prologue, so a tampered version or mode fails the
handshake instead of downgrading it. State machine::

    initiator: start -> WAIT_MSG2 --msg2/send msg3+hello--> WAIT_HELLO --hello--> OPEN
    responder: WAIT_PREAMBLE -> WAIT_MSG1 --send msg2--> WAIT_MSG3 --hello/send hello--> OPEN
    any state --ERROR frame or bad input--> ControlError (the adapter closes)

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
from sleeve.crypto.keys import peer_id
from sleeve.crypto.noise import CipherState, HandshakeError, HandshakeState, KeyPair

MAGIC: Final = b"SLEEVE"
VERSION: Final = 1
PREAMBLE_LEN: Final = 8
PATTERN: Final = "XXpsk3"
PROLOGUE_LABEL: Final = b"sleeve-control-v1"
FRAME_HDR = struct.Struct("!IB")
MAX_FRAME: Final = 1 << 20  # 1 MiB: enough for gossip of thousands of peers, bounds memory per conn
T_HANDSHAKE: Final = 1
T_ERROR: Final = 2
T_SEALED: Final = 3
ZERO_PSK: Final = b"\x00" * 32


class ControlError(Exception):
    """The peer broke the protocol or failed authentication; close this connection.

    ``reason`` is a short metric label; ``detail`` a readable line for the log.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


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

    def to_wire(self) -> dict[str, Any]:
        return {"t": "hello", "nick": self.nickname, "uid": self.uid, "idx": self.index,
                "udp": self.udp_port, "seen": self.seen}

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Hello:
        try:
            h = cls(m["nick"], m["uid"], m["idx"], m["udp"], m.get("seen", ""))
        except KeyError as e:
            raise ControlError("bad_hello", f"hello lacks field {e}") from None
        # type(...) is int: msgpack booleans are ints to isinstance
        if not (isinstance(h.nickname, str) and len(h.nickname) <= 64
                and type(h.uid) is int and 0 < h.uid < 1 << 64
                and type(h.index) is int and 0 < h.index < 1 << 32
                and type(h.udp_port) is int and 0 < h.udp_port < 65536
                and isinstance(h.seen, str) and len(h.seen) <= 64):
            raise ControlError("bad_hello", "hello has a field of the wrong type or range")
        return h


@dataclass(frozen=True, slots=True)
class Established:
    remote_static: bytes
    remote_id: bytes
    hello: Hello
    handshake_hash: bytes
    data_send: bytes  # data-plane keys, separate from the control channel's (crypto.aead)
    data_recv: bytes


def preamble(encrypted: bool) -> bytes:
    return MAGIC + bytes((VERSION, 1 if encrypted else 0))


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
                 hello: Hello) -> None:
        self.initiator = initiator
        self.encrypted = psk is not None
        self._static = static
        self._psk = psk if psk is not None else ZERO_PSK
        self._hello = hello
        self._buf = bytearray()
        self._hs: HandshakeState | None = None
        self._tx: CipherState | None = None
        self._rx: CipherState | None = None
        self.established: Established | None = None
        self.state = State.WAIT_MSG2 if initiator else State.WAIT_PREAMBLE

    # -- output -----------------------------------------------------------------------------
    def start(self) -> bytes:
        """Initiator: the first bytes to send (preamble + Noise message 1)."""
        assert self.initiator and self._hs is None
        pre = preamble(self.encrypted)
        self._hs = self._new_hs(pre)
        return pre + frame(T_HANDSHAKE, self._hs.write_message(b""))

    def seal(self, msg: dict[str, Any]) -> bytes:
        if self.state is not State.OPEN or self._tx is None:
            raise RuntimeError("control channel is not open")
        return frame(T_SEALED, self._tx.encrypt_with_ad(b"", pack_message(msg)))

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
                done = est
        return bytes(out), msgs, done

    def _next_frame(self) -> tuple[int, bytes] | None:
        if len(self._buf) < FRAME_HDR.size:
            return None
        length, typ = FRAME_HDR.unpack_from(self._buf, 0)
        if length < 1 or length > MAX_FRAME:
            raise ControlError("frame_size", f"control frame of {length} bytes is out of bounds")
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
        theirs = pre[7] == 1
        if theirs != self.encrypted:
            raise ControlError(
                "encryption_mismatch",
                "encryption mismatch: peer runs " + ("with a password" if theirs else
                "--no-encryption") + ", we run " + ("with a password" if self.encrypted else
                "--no-encryption"),
            )
        self._hs = self._new_hs(pre)
        self.state = State.WAIT_MSG1
        return b""

    def _on_frame(self, typ: int, body: bytes) -> tuple[bytes, dict[str, Any] | None,
                                                       Established | None]:
        st = self.state
        if typ == T_ERROR:
            text = body[:200].decode("utf-8", "replace")
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
            return b"", unpack_message(plain), None
        if hs is None:
            raise ControlError("protocol", "frame before preamble")
        try:
            if st is State.WAIT_MSG1 and typ == T_HANDSHAKE:
                hs.read_message(body)
                self.state = State.WAIT_MSG3
                return frame(T_HANDSHAKE, hs.write_message(b"")), None, None
            if st is State.WAIT_MSG2 and typ == T_HANDSHAKE:
                hs.read_message(body)
                msg3 = hs.write_message(pack_message(self._hello.to_wire()))
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
                est = self._finish(hs, Hello.from_wire(unpack_message(payload)))
                return frame(T_SEALED, self._tx.encrypt_with_ad(  # type: ignore[union-attr]
                    b"", pack_message(self._hello.to_wire()))), None, est
            if st is State.WAIT_HELLO and typ == T_SEALED:
                assert self._rx is not None
                m = unpack_message(self._rx.decrypt_with_ad(b"", body))
                return b"", None, self._finish(hs, Hello.from_wire(m))
        except HandshakeError:
            raise ControlError("handshake", f"invalid handshake message in state {st.value}") \
                from None
        raise ControlError("protocol", f"unexpected frame type {typ} in state {st.value}")

    def _split(self, hs: HandshakeState) -> None:
        i2r, r2i = hs.split()
        self._tx, self._rx = (i2r, r2i) if self.initiator else (r2i, i2r)

    def _finish(self, hs: HandshakeState, hello: Hello) -> Established:
        if self._tx is None:
            self._split(hs)
        assert self._tx is not None and self._rx is not None
        rs = hs.remote_static
        assert rs is not None
        self.state = State.OPEN
        i2r, r2i = (self._tx.key, self._rx.key) if self.initiator else (self._rx.key, self._tx.key)
        d_i2r, d_r2i = derive_data_keys(i2r, r2i, hs.handshake_hash)
        send, recv = (d_i2r, d_r2i) if self.initiator else (d_r2i, d_i2r)
        self.established = Established(rs, peer_id(rs), hello, hs.handshake_hash, send, recv)
        return self.established


def error_frame(text: str) -> bytes:
    """What a responder sends before closing on a failed handshake (unauthenticated)."""
    return frame(T_ERROR, text.encode()[:200])
