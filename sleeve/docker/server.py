"""The Docker plugin's sockets: our unix socket that dockerd calls, and dockerd's API we ask.

Plugin socket (``--docker-plugin-socket``, default ``/run/docker/plugins/sleeve.sock``,
where dockerd looks for plugins): aiohttp on a unix socket we bind ourselves so the
permissions are right before anyone can connect: the directory is created 0700 if
missing, the socket is 0660, owner root (the router's user): dockerd runs as root.
A stale socket file from a killed router is replaced; anything else at that path is
refused. Bounds: request body ``MAX_BODY`` (413 beyond it), request line and headers
(aiohttp's parser limits), idle keep-alive.

dockerd API (``--docker-api``, default ``/var/run/docker.sock``): only
``GET /networks/ID``, to learn the name of the container behind an endpoint (the
plugin protocol never says it). Answers are bounded in size and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import ClientSession, ClientTimeout, UnixConnector, web

from sleeve.docker.driver import CONTENT_TYPE, MAX_BODY
from sleeve.status.http import serve
from sleeve.status.unixsock import clear_stale

log = logging.getLogger("sleeve")

MAX_LINE: Final = 4096
MAX_FIELD: Final = 8192
MAX_HEADERS: Final = 64
KEEPALIVE: Final = 75.0
API_TIMEOUT: Final = 3.0
API_MAX: Final = 1 << 20  # a network with a few thousand containers

Handle = Callable[[str, bytes], Awaitable[tuple[int, dict[str, Any]]]]


def bind_unix(path: pathlib.Path) -> socket.socket:
    """A listening unix socket at ``path``, mode 0660, in a directory that is ours."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    clear_stale(path, "plugin")  # a stale socket left by a router that was killed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o117)  # the socket is born 0660: no window where others can connect
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o660)
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class PluginServer:
    def __init__(self, runner: web.AppRunner, path: pathlib.Path) -> None:
        self._runner = runner
        self.path = path

    async def aclose(self) -> None:
        await self._runner.cleanup()
        with contextlib.suppress(OSError):
            self.path.unlink()  # dockerd must not find a socket nobody answers


async def start_plugin_server(path: pathlib.Path, handle: Handle,
                              record: pathlib.Path | None = None) -> PluginServer:
    """Serve ``handle`` on ``path``. ``record``: append every request as a JSON line
    (how tests/data/docker_requests.json was made from a real dockerd)."""
    async def dispatch(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.json_response({"Err": "sleeve: POST only"}, status=405,
                                     content_type=CONTENT_TYPE)
        try:
            body = await request.read()  # bounded by client_max_size: 413 beyond it
        except web.HTTPException as e:
            return web.json_response({"Err": f"sleeve: {e.reason}"}, status=e.status,
                                     content_type=CONTENT_TYPE)
        status, answer = await handle(request.path, body)
        if record is not None:
            _record(record, request.path, body, status, answer)
        return web.json_response(answer, status=status, content_type=CONTENT_TYPE)

    sock = bind_unix(path)
    try:
        runner = await serve(dispatch, lambda r: web.SockSite(r, sock), max_body=MAX_BODY,
                             max_line=MAX_LINE, max_field=MAX_FIELD, max_headers=MAX_HEADERS,
                             keepalive=KEEPALIVE)
    except BaseException:
        sock.close()
        raise
    return PluginServer(runner, path)


def _record(path: pathlib.Path, method: str, body: bytes, status: int,
            answer: dict[str, Any]) -> None:
    try:
        req: Any = json.loads(body) if body.strip() else None
    except ValueError:
        req = body.decode(errors="replace")
    line = json.dumps({"path": method, "body": req, "status": status, "answer": answer})
    try:
        with path.open("a") as f:
            f.write(line + "\n")
    except OSError as e:
        log.debug("docker plugin: cannot record: %s", e)


async def container_name(api_socket: str, network_id: str, endpoint_id: str) -> str | None:
    """The name dockerd gave the container of ``endpoint_id`` (None: not listed yet).
    Raises ``OSError``/``aiohttp.ClientError``/``TimeoutError`` when dockerd does not answer."""
    conn = UnixConnector(path=api_socket)
    async with (ClientSession(connector=conn, timeout=ClientTimeout(total=API_TIMEOUT)) as s,
                s.get(f"http://docker/networks/{network_id}") as r):
        if r.status != 200:
            return None
        raw = await r.content.read(API_MAX + 1)
    if len(raw) > API_MAX:
        return None
    data = json.loads(raw)
    containers = data.get("Containers") if isinstance(data, dict) else None
    if not isinstance(containers, dict):
        return None
    for c in containers.values():
        if isinstance(c, dict) and c.get("EndpointID") == endpoint_id:
            name = c.get("Name")
            return name.lstrip("/") if isinstance(name, str) and name else None
    return None


async def wait_for_name(api_socket: str, network_id: str, endpoint_id: str,
                        tries: int = 20, period: float = 0.5) -> str | None:
    """dockerd lists the endpoint only once Join has returned: ask a few times (bounded)."""
    for _ in range(tries):
        try:
            name = await container_name(api_socket, network_id, endpoint_id)
        except Exception as e:  # dockerd down or busy: try again, then give up quietly
            log.debug("docker plugin: dockerd API: %s", e)
            name = None
        if name:
            return name
        await asyncio.sleep(period)
    return None
