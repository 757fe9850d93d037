"""One data-plane session: the keys, counters and replay window of one link.

Order on receive is fixed (STYLE 7): authenticate, then replay-check, then
let the caller learn anything (endpoint, MACs) from the contents.
"""

from __future__ import annotations

from sleeve.crypto.aead import DecryptError, Opener, Sealer
from sleeve.proto.datagram import HEADER_LEN, encode_header
from sleeve.proto.replay import ReplayWindow


class DataSession:
    __slots__ = ("_opener", "_sealer", "local_index", "remote_index", "replay")

    def __init__(self, local_index: int, remote_index: int, send_key: bytes, recv_key: bytes,
                 encrypt: bool) -> None:
        self.local_index = local_index
        self.remote_index = remote_index
        self._sealer = Sealer(send_key, encrypt)
        self._opener = Opener(recv_key, encrypt)
        self.replay = ReplayWindow()

    def _header(self, counter: int) -> bytes:
        return encode_header(self.remote_index, counter)

    def seal(self, body: bytes) -> bytes:
        return self._sealer.seal(self._header, body)

    @property
    def sent(self) -> int:
        return self._sealer.counter

    def open(self, counter: int, dgram: bytes) -> bytes | str:
        """Return the authenticated body, or the drop reason (a str)."""
        try:
            body = self._opener.open(counter, dgram[:HEADER_LEN], dgram[HEADER_LEN:])
        except DecryptError:
            return "auth"
        reason = self.replay.accept(counter)
        if reason is not None:
            return reason
        return body
