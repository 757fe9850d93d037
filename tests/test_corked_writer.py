"""links.corked: a loop pass's control writes leave as one, in order, flushed on close."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from sleeve.links.corked import CorkedWriter
from sleeve.links.fake import fake_link


class _InnerTransport:
    def __init__(self) -> None:
        self.size = 0
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.size

    def abort(self) -> None:
        self.aborted = True


class _Inner:
    """Records each write the wrapper makes (a StreamWriter's surface)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.transport = _InnerTransport()

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return "sock" if name == "socket" else default


def _corked(inner: _Inner) -> CorkedWriter:
    return CorkedWriter(inner, asyncio.get_running_loop())  # type: ignore[arg-type]


def test_writes_of_one_pass_leave_as_one_write_in_order() -> None:
    async def main() -> None:
        inner = _Inner()
        w = _corked(inner)
        for part in (b"one ", b"two ", b"three"):
            w.write(part)
        assert inner.writes == []  # nothing sent inside the pass
        assert w.transport.get_write_buffer_size() == 13  # but counted as buffered
        await asyncio.sleep(0)
        assert inner.writes == [b"one two three"]
        assert w.transport.get_write_buffer_size() == 0
        w.write(b"four")
        await asyncio.sleep(0)
        assert inner.writes == [b"one two three", b"four"]
        assert w.get_extra_info("socket") == "sock"

    asyncio.run(main())


def test_close_sends_what_was_gathered_first_and_abort_drops_it() -> None:
    async def main() -> None:
        inner = _Inner()
        w = _corked(inner)
        w.write(b"bye")
        w.close()
        assert inner.writes == [b"bye"] and inner.closed and w.is_closing()
        await asyncio.sleep(0)  # the scheduled flush finds nothing more
        assert inner.writes == [b"bye"]
        inner2 = _Inner()
        w2 = _corked(inner2)
        w2.write(b"lost")
        w2.transport.abort()
        await asyncio.sleep(0)
        assert inner2.writes == [] and inner2.transport.aborted

    asyncio.run(main())


def test_a_real_stream_gets_every_byte_in_order() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        try:
            _, writer = await asyncio.open_connection(sock=a)
            reader, _ = await asyncio.open_connection(sock=b)
            w = CorkedWriter(writer)
            chunks = [bytes([i]) * (100 + i) for i in range(50)]
            for c in chunks[:25]:
                w.write(c)
            await asyncio.sleep(0)
            for c in chunks[25:]:
                w.write(c)
            w.close()  # flushes the second half before closing
            got = await asyncio.wait_for(reader.read(-1), 5)
            assert got == b"".join(chunks)
        finally:
            a.close()
            b.close()

    asyncio.run(main())


def test_a_link_corks_a_real_connection_and_sends_its_messages_in_one_write() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        try:
            _, writer = await asyncio.open_connection(sock=a)
            reader, _ = await asyncio.open_connection(sock=b)
            link = fake_link(writer=writer)
            assert isinstance(link.writer, CorkedWriter)
            sends: list[bytes] = []
            real_write = writer.write

            def counted(data: Any) -> None:
                sends.append(bytes(data))
                real_write(data)

            writer.write = counted  # type: ignore[method-assign]
            for i in range(3):
                link.send_control({"t": "x", "i": i})
            await asyncio.sleep(0)
            assert sends == [b"m" * 3]  # FakeChannel seals each message as b"m"
            link.writer.close()
            assert await asyncio.wait_for(reader.read(-1), 5) == b"mmm"
        finally:
            a.close()
            b.close()

    asyncio.run(main())
