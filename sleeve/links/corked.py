"""A link's control-stream writes gathered per pass of the event loop (issue 23).

Why: a forming or re-forming mesh is gossip. A router with ~50 links relays each record
it receives to every other link, so one pass of the event loop (every readable control
connection handled) queues several small sealed messages on the same connection. Each
``StreamWriter.write`` on an empty buffer is a ``send`` at once, and on a veth the
kernel runs the receiving side's TCP in that call too: in a py-spy of a router while 10
of 50 restarted, ``StreamWriter.write`` was the largest single function (8.4 % of the
samples, a fifth of the event loop's thread). Gathered, they leave as one ``send`` at
the end of the pass (``call_soon``).

Order is kept: every write on a link goes through here (control messages, rekey answers,
TCP-carried data), and ``close`` sends what is gathered first. ``transport`` reports
gathered bytes as buffered (the links' backpressure reads it); ``abort`` drops them.
Only real connections (``asyncio.StreamWriter``) are wrapped: a relayed stream
(``traversal.relay.RelayWriter``) already sends as it is written to.
"""

from __future__ import annotations

import asyncio
from typing import Any


class _Transport:
    __slots__ = ("_w",)

    def __init__(self, w: CorkedWriter) -> None:
        self._w = w

    def get_write_buffer_size(self) -> int:
        return self._w.pending + int(self._w.inner.transport.get_write_buffer_size())

    def abort(self) -> None:
        self._w.drop()
        self._w.inner.transport.abort()


class CorkedWriter:
    """Writes made in one pass of the event loop go to ``inner`` as one write."""

    __slots__ = ("_buf", "_loop", "inner", "pending", "transport")

    def __init__(self, inner: asyncio.StreamWriter,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.inner = inner
        self._loop = loop or asyncio.get_running_loop()
        self._buf: list[bytes] = []
        self.pending = 0  # bytes gathered, not yet given to the transport
        self.transport = _Transport(self)

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._buf:
            self._loop.call_soon(self.flush)
        self._buf.append(data)
        self.pending += len(data)

    def flush(self) -> None:
        """Give what is gathered to the transport (a closed one drops it, as it would)."""
        if not self._buf:
            return
        buf, self._buf, self.pending = self._buf, [], 0
        if not self.inner.is_closing():
            self.inner.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def drop(self) -> None:
        self._buf, self.pending = [], 0

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def close(self) -> None:
        self.flush()
        self.inner.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)
