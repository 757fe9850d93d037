"""What the CNI plugins need from the outside: the router's local API and their own records.

Router API: HTTP on the router's unix socket (``"api": "/run/sleeve/sleeve.sock"`` in the
network config, the default; ``sleeve cni install --api PATH`` writes another). Only root
can open it, and runtimes run plugins as root. The TCP API is read-only, so a
``HOST:PORT`` from an older install is refused with how to fix it::

    plugin                                   router (sleeve.node http_routes)
      GET  /bridge                      ->   {"bridge", "mtu", "address", "dns": {...}}
      POST /ipam/allocate?id=&subnet=   ->   {"id", "address": "A.B.C.D/P"}  (same id: same)
      POST /ipam/release?id=            ->   {"id", "released": n}
      POST /dns/add?name=&address=&id=  ->   {"added", ...}
      POST /dns/remove?name=&address=   ->   {"removed", ...}

All paths are in ``PATHS`` (one place to change). Failures map to CNI codes: no answer
(no socket, refused, connect timeout: 1 s) or 503 -> 11 "try again later", at once, never
a hang;
400 -> 7 (the router says what is wrong with the request); anything else -> 5.

Records: what a plugin attached, one small JSON file per (network, container, ifname)
under ``dataDir`` (default ``/var/lib/cni/sleeve``, root only). DEL and GC need them:
GC releases what ``cni.dev/valid-attachments`` no longer lists, and a DEL whose runtime
no longer passes the name still removes the right DNS record.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pathlib
import urllib.parse
from typing import Any, Final

from sleeve.cni.spec import INVALID_CONFIG, IO_FAILURE, TRY_AGAIN, CniError
from sleeve.config import DEFAULT_API_SOCKET
from sleeve.status.client import UnixHTTPConnection
from sleeve.status.unixsock import check_socket_path

DEFAULT_API: Final = DEFAULT_API_SOCKET
DEFAULT_DATA_DIR: Final = "/var/lib/cni/sleeve"
CONNECT_TIMEOUT: Final = 1.0  # loopback: a router that is there answers in microseconds
READ_TIMEOUT: Final = 40.0  # an allocation may wait for the mesh (IPAM bounds it at 30 s)
MAX_BODY: Final = 1 << 20

PATHS: Final = {
    "bridge": ("GET", "/bridge"),
    "allocate": ("POST", "/ipam/allocate"),
    "release": ("POST", "/ipam/release"),
    "dns_add": ("POST", "/dns/add"),
    "dns_remove": ("POST", "/dns/remove"),
}


def api_address(conf: dict[str, Any]) -> str:
    """``api`` (the router's socket path) from the IPAM section or the top level."""
    ipam = conf.get("ipam") if isinstance(conf.get("ipam"), dict) else {}
    raw = (ipam or {}).get("api") or conf.get("api") or DEFAULT_API
    if not isinstance(raw, str):
        raise CniError(INVALID_CONFIG, "api must be the router's socket path, a string")
    if not raw.startswith("/"):
        raise CniError(INVALID_CONFIG, f"api must be the router's unix socket path (like "
                       f"{DEFAULT_API}), not {raw[:60]!r}: the TCP API is read-only; rerun "
                       f"`sleeve cni install`")
    try:
        check_socket_path(raw, "api")
    except ValueError as e:
        raise CniError(INVALID_CONFIG, str(e)) from None
    return raw


class RouterApi:
    def __init__(self, path: str, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.where = path
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout

    def call(self, what: str, **query: str) -> dict[str, Any]:
        method, path = PATHS[what]
        q = {k: v for k, v in query.items() if v}
        target = path + (f"?{urllib.parse.urlencode(q)}" if q else "")
        conn = UnixHTTPConnection(self.where, self.connect_timeout)
        try:
            conn.connect()
        except OSError as e:
            raise CniError(TRY_AGAIN, f"sleeve router not reachable at {self.where}: "
                           f"{e.strerror or e}; try again later",
                           "is `sleeve launch` running on this host?") from None
        try:
            assert conn.sock is not None
            conn.sock.settimeout(self.read_timeout)
            conn.request(method, target)
            r = conn.getresponse()
            body = r.read(MAX_BODY)
        except (OSError, http.client.HTTPException) as e:
            raise CniError(TRY_AGAIN, f"sleeve router at {self.where} did not answer "
                           f"{method} {path}: {e}; try again later") from None
        finally:
            conn.close()
        text = body.decode(errors="replace").strip()
        if r.status == 503:
            raise CniError(TRY_AGAIN, f"sleeve router: {text[:300]}; try again later")
        if r.status == 400:
            raise CniError(INVALID_CONFIG, f"sleeve router refused {path}: {text[:300]}")
        if r.status != 200:
            raise CniError(IO_FAILURE, f"sleeve router at {self.where}: {method} {path} "
                           f"answered {r.status}", text[:300])
        try:
            out = json.loads(body)
        except ValueError:
            out = None
        if not isinstance(out, dict):
            raise CniError(IO_FAILURE, f"sleeve router: {path} did not answer a JSON object")
        return out


class Records:
    """``dataDir/NETWORK/KIND-CONTAINERID-IFNAME.json``; names are validated by spec.py."""

    def __init__(self, data_dir: str, network: str, kind: str) -> None:
        self.dir = pathlib.Path(data_dir) / network
        self.kind = kind

    def _path(self, cid: str, ifname: str) -> pathlib.Path:
        return self.dir / f"{self.kind}-{cid}-{ifname}.json"

    def get(self, cid: str, ifname: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._path(cid, ifname).read_bytes()[:MAX_BODY])
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def put(self, cid: str, ifname: str, data: dict[str, Any]) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            p = self._path(cid, ifname)
            tmp = p.with_name(f".{p.name}.{os.getpid()}")
            tmp.write_text(json.dumps({**data, "containerID": cid, "ifname": ifname}))
            os.replace(tmp, p)  # atomic: a concurrent GC never reads half a record
        except OSError as e:
            raise CniError(IO_FAILURE, f"cannot write {self.dir}: {e.strerror}") from None

    def drop(self, cid: str, ifname: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(cid, ifname).unlink()

    def all(self) -> list[dict[str, Any]]:
        out = []
        try:
            names = sorted(os.listdir(self.dir))
        except OSError:
            return []
        for n in names:
            if not (n.startswith(f"{self.kind}-") and n.endswith(".json")):
                continue
            try:
                data = json.loads((self.dir / n).read_bytes()[:MAX_BODY])
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and isinstance(data.get("containerID"), str) \
                    and isinstance(data.get("ifname"), str):
                out.append(data)
        return out


def data_dir(conf: dict[str, Any], ipam_plugin: bool = False) -> str:
    """Where a plugin keeps its records: the main plugin reads the top-level ``dataDir``;
    an IPAM plugin its own section's first (another IPAM plugin, e.g. host-local, may use
    ``ipam.dataDir`` for files of its own)."""
    ipam = conf.get("ipam") if isinstance(conf.get("ipam"), dict) else {}
    mine, other = (ipam or {}).get("dataDir"), conf.get("dataDir")
    d = (mine or other if ipam_plugin else other) or DEFAULT_DATA_DIR
    if not isinstance(d, str) or not d.startswith("/"):
        raise CniError(INVALID_CONFIG, "dataDir must be an absolute path")
    return d
