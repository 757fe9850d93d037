"""One worker thread that owns a pyroute2 ``IPRoute`` and runs netlink jobs in order.

Why a thread: pyroute2 >= 0.9 runs its own asyncio loop inside every synchronous call,
which cannot nest inside the router's running (uv)loop, and a netlink round trip must
not block the hot loop anyway. Jobs are plain functions of the ``IPRoute``; each
returns a ``concurrent.futures.Future`` (``asyncio.wrap_future`` makes it awaitable).
The queue is bounded: when it is full the job is refused (its future fails with
:class:`DatapathError`), never silently dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar

log = logging.getLogger("sleeve.fastdp")

T = TypeVar("T")
QUEUE_MAX: Final = 4096
_STOP: Final = object()


class DatapathError(RuntimeError):
    """A kernel datapath operation failed (or was refused); ``str()`` says which and why."""


def nl_errno(e: BaseException) -> int | None:
    """The errno of a pyroute2 NetlinkError (or OSError), else None."""
    code = getattr(e, "code", None)
    if isinstance(code, int):
        return code
    if isinstance(e, OSError):
        return e.errno
    return None


def describe(e: BaseException) -> str:
    code = nl_errno(e)
    if code is not None and code in errno.errorcode:
        return f"{errno.errorcode[code]} ({e})"
    return str(e) or type(e).__name__


class NetlinkWorker:
    def __init__(self, name: str = "sleeve-netlink") -> None:
        self._q: queue.Queue[Any] = queue.Queue(QUEUE_MAX)
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._closed:
                raise DatapathError("netlink worker is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        ipr: Any = None
        open_error: BaseException | None = None
        try:
            from sleeve.iproute import iproute

            ipr = iproute()
        except BaseException as e:  # every job will report it
            open_error = e
        try:
            while True:
                job = self._q.get()
                if job is _STOP:
                    return
                fn, fut = job
                if not fut.set_running_or_notify_cancel():
                    continue
                if open_error is not None:
                    fut.set_exception(DatapathError(f"netlink: {describe(open_error)}"))
                    continue
                try:
                    fut.set_result(fn(ipr))
                except BaseException as e:  # handed to the caller through the future
                    fut.set_exception(e)
        finally:
            if ipr is not None:
                try:
                    ipr.close()
                except Exception:  # pragma: no cover - best effort at shutdown
                    log.debug("closing IPRoute failed", exc_info=True)

    def submit(self, fn: Callable[[Any], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn(ipr)``; never blocks. A full queue or a closed worker fails the future."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            self._ensure_thread()
            self._q.put_nowait((fn, fut))
        except queue.Full:
            fut.set_exception(DatapathError("netlink queue full"))
        except DatapathError as e:
            fut.set_exception(e)
        return fut

    def call(self, fn: Callable[[Any], T], timeout: float = 15.0) -> T:
        """Run ``fn(ipr)`` and wait for it (blocking the caller: start-up and tools only)."""
        fut = self.submit(fn)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise DatapathError(f"netlink did not answer within {timeout} s") from None

    async def acall(self, fn: Callable[[Any], T], timeout: float = 15.0) -> T:
        """Run ``fn(ipr)`` without blocking the running event loop."""
        fut = asyncio.wrap_future(self.submit(fn))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise DatapathError(f"netlink did not answer within {timeout} s") from None

    def close(self, timeout: float = 5.0) -> None:
        """Finish the queued jobs, then stop the thread (bounded wait). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            t = self._thread
        if t is None:
            return
        try:
            self._q.put(_STOP, timeout=timeout)
        except queue.Full:  # pragma: no cover - a wedged kernel; the thread is a daemon
            return
        t.join(timeout)
