"""Client side of the local API: the CLI (and the CNI plugins' transport) talk to the router.

    changes  -> the unix socket (--api-socket, default /run/sleeve/sleeve.sock), always
    reads    -> the unix socket too; when it cannot be opened (not root: EACCES; another
                path: ENOENT) and no --http was given, 127.0.0.1:6782 over TCP, which
                serves reads to anyone on the host

Plain ``http.client`` over an AF_UNIX socket: one small subclass instead of a dependency.
Imports nothing heavy: the CNI plugins run this once per container start. Every failure
is an ``ApiError`` whose text is one line for the user.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any

MAX_ANSWER = 1 << 22  # the largest status of a big mesh is well below this


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 to a unix socket; the Host header says ``localhost`` (the router checks it)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout)
            s.connect(self.unix_path)
        except BaseException:
            s.close()
            raise
        self.sock = s


class ApiError(Exception):
    """One line for the user. ``status``: the router's HTTP status, None if none answered;
    ``errno``: why the connection failed, if it did."""

    def __init__(self, msg: str, status: int | None = None, err: int | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.errno = err


@dataclass(frozen=True)
class Endpoint:
    """Either a unix socket path or a TCP host and port."""

    unix: str | None = None
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return self.unix or (f"[{self.host}]:{self.port}" if ":" in self.host
                             else f"{self.host}:{self.port}")

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.unix is not None:
            return UnixHTTPConnection(self.unix, timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


def request(where: Endpoint, method: str, target: str, timeout: float = 5.0,
            ) -> tuple[int, bytes]:
    """(HTTP status, body) of one request; ApiError when no router answers."""
    conn = where.connection(timeout)
    try:
        conn.request(method, target)
        r = conn.getresponse()
        return r.status, r.read(MAX_ANSWER)
    except OSError as e:
        raise ApiError(_unreachable(where, e), err=e.errno) from None
    except http.client.HTTPException as e:
        raise ApiError(f"the router at {where} did not answer {method} "
                       f"{target.split('?')[0]}: {type(e).__name__}") from None
    finally:
        conn.close()


def _unreachable(where: Endpoint, e: OSError) -> str:
    if where.unix is not None:
        if e.errno in (errno.EACCES, errno.EPERM):
            return (f"permission denied on the router's API socket {where}: changes need "
                    f"root (or membership of the router's --api-group)")
        if e.errno == errno.ENOENT:
            return (f"no router API socket at {where} (is `sleeve launch` running? "
                    f"--api-socket names another)")
    return f"no router answering at {where}: {e.strerror or e}"


def call(where: Endpoint, method: str, target: str, timeout: float = 5.0) -> Any:
    """The router's JSON answer; ApiError (one line) for any refusal or failure."""
    status, body = request(where, method, target, timeout)
    if status != 200:
        text = body.decode(errors="replace").strip().splitlines()
        raise ApiError(f"router refused: {text[0] if text else status}", status=status)
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(f"the router at {where} answered something that is not JSON",
                       status=status) from None


# a read may fall back to TCP when the socket cannot be opened by this user or is elsewhere
FALLBACK = frozenset({errno.EACCES, errno.EPERM, errno.ENOENT, errno.ECONNREFUSED})


def read(sock: Endpoint, tcp: Endpoint | None, target: str, timeout: float = 5.0) -> Any:
    """GET ``target`` on the socket; on ``tcp`` (if given) when the socket cannot be used."""
    try:
        return call(sock, "GET", target, timeout)
    except ApiError as e:
        if tcp is None or e.errno not in FALLBACK:
            raise
        try:
            return call(tcp, "GET", target, timeout)
        except ApiError as e2:
            if e2.status is not None:
                raise
            raise ApiError(f"{e2} (and {sock}: {e.errno and errno.errorcode[e.errno]})",
                           err=e2.errno) from None
