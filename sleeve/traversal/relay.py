"""Control connections relayed through a common neighbour, for NAT hole punching.

Two peers behind NAT cannot dial each other over TCP, but both are connected to some
peer M. They run the ordinary control protocol (Noise XXpsk3 end to end: M relays
opaque bytes it cannot read or forge) over M's control connections, as
``{"t": "via", ...}`` messages::

    A -> M   {"t": "via", "to": B,   "d": bytes}            A's control bytes for B
    M -> B   {"t": "via", "from": A, "d": bytes, "ep": [host, port]}
                                     ep: A's UDP endpoint as M observes it (NAT mapping)
    either   {"t": "via", "to"/"from": X, "fin": true}      the stream ended

With the handshake done, each side starts UDP heartbeats to the endpoint M observed
for the other. The first datagrams open the NAT mappings both ways (the peer's
datagrams then match a mapping we created), after which the link is an ordinary
direct UDP link that learns endpoints from authenticated datagrams. Where punching
cannot work (symmetric NAT), the link never confirms, never carries data, and the
mesh keeps relaying through M.

``RelayWriter`` is the asyncio.StreamWriter stand-in the connection code
(``control.connections``) writes to; ``traversal.punch`` feeds what arrives into an
asyncio.StreamReader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

VIA_CHUNK = 60000  # bytes of control stream per via message


class _Transport:
    def __init__(self, writer: RelayWriter) -> None:
        self._w = writer

    def get_write_buffer_size(self) -> int:
        return self._w.buffered()


class RelayWriter:
    """Writes a control stream to ``peer`` as via messages over a neighbour's link."""

    def __init__(self, peer: bytes, send: Callable[[dict[str, Any]], bool],
                 buffered: Callable[[], int], observed: tuple[str, int] | None,
                 mediator: bytes) -> None:
        self.peer = peer
        self.mediator = mediator  # the neighbour that relays this stream
        self._send = send  # returns False when the mediator link is gone
        self.buffered = buffered
        self.observed = observed  # the peer's UDP endpoint as the mediator sees it
        self._closed = False
        self.transport = _Transport(self)

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        for i in range(0, len(data), VIA_CHUNK):
            if not self._send({"t": "via", "to": self.peer, "d": data[i:i + VIA_CHUNK]}):
                self._closed = True
                return

    def is_closing(self) -> bool:
        return self._closed

    def abort(self) -> None:
        """The relay is gone: stop writing without telling anyone (nobody to tell)."""
        self._closed = True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._send({"t": "via", "to": self.peer, "fin": True})

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.observed or ("relay", 0)
        return default
