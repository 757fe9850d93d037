"""The CNI protocol (spec 1.0.0 and 1.1.0) as both sleeve plugins speak it.

One invocation, one process::

    runtime (libcni: podman, containerd, CRI-O, kubelet)
      |  env  CNI_COMMAND   ADD | DEL | CHECK | STATUS | GC | VERSION
      |       CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH,
      |       CNI_ARGS "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=..."
      |  stdin  network config JSON {"cniVersion", "name", "type", ..., "prevResult"?,
      |         "cni.dev/valid-attachments"? (GC)}
      v
    plugin: parse_request() -> handler(Request) -> result dict (or None)
      |
      |  stdout  result JSON, exit 0                      (ADD, CHECK/DEL/STATUS/GC: empty)
      |  stdout  {"cniVersion","code","msg","details"}, exit 1 on any failure
      v
    runtime

Codes (spec section "Error"): 1 incompatible CNI version, 2 unsupported field, 3 container
unknown or gone, 4 invalid environment variables, 5 I/O failure, 6 failed to decode
content, 7 invalid network config, 11 try again later; STATUS: 50 not available, 51 not
available and existing containers may have limited connectivity.

Which env variables each command needs (missing or malformed: code 4):

    ADD, CHECK   CNI_CONTAINERID CNI_NETNS CNI_IFNAME CNI_PATH
    DEL          CNI_CONTAINERID CNI_IFNAME            (CNI_NETNS may be gone already)
    STATUS, GC   CNI_PATH (only to find a delegated IPAM plugin)
    VERSION      none (stdin may even be empty)

Untrusted input never escapes as a traceback: every failure is a ``CniError`` turned into
the error JSON by :func:`run`; an unexpected exception is reported as code 999 ("plugin
bug") with its type, still as JSON. With ``SLEEVE_CNI_LOG=FILE`` in the environment or
``"log": FILE`` in the network config, each invocation appends one JSON line (command,
env, CNI_ARGS, the calling process, exit, code, duration): what the runtime sent, and how
long ADD and DEL take. (The config key exists because runtimes do not always pass their
environment on: podman's DEL may come from a cleanup process conmon starts.)
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

SUPPORTED: Final = ("1.0.0", "1.1.0")
LATEST: Final = SUPPORTED[-1]
COMMANDS: Final = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
LOG_ENV: Final = "SLEEVE_CNI_LOG"
MAX_STDIN: Final = 1 << 20  # a network config is a few KiB; more is not ours to parse

INCOMPATIBLE, UNSUPPORTED_FIELD, UNKNOWN_CONTAINER, INVALID_ENV = 1, 2, 3, 4
IO_FAILURE, DECODE, INVALID_CONFIG, TRY_AGAIN = 5, 6, 7, 11
NOT_AVAILABLE, LIMITED = 50, 51
PLUGIN_BUG: Final = 999  # spec: codes above 100 are the plugin's own

# Spec: container IDs are alphanumeric plus - _ . (no path separators: we build file names).
_CONTAINER_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")
_NETWORK_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_IFNAME_BAD: Final = re.compile(r"[/:\s]")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


@dataclass(frozen=True)
class Request:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""  # stdin as received: handed unchanged to a delegated IPAM plugin
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return str(self.config.get("cniVersion", LATEST))

    @property
    def network(self) -> str:
        return str(self.config["name"])

    def valid_attachments(self) -> set[tuple[str, str]]:
        """GC: ``cni.dev/valid-attachments`` as (containerID, ifname) pairs (code 7 if bad)."""
        raw = self.config.get("cni.dev/valid-attachments", [])
        if not isinstance(raw, list):
            raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
        out = set()
        for a in raw:
            if not (isinstance(a, dict) and isinstance(a.get("containerID"), str)
                    and isinstance(a.get("ifname"), str)):
                raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments entries need "
                               "string containerID and ifname", json.dumps(a)[:200])
            out.add((a["containerID"], a["ifname"]))
        return out


def parse_cni_args(text: str) -> dict[str, str]:
    """``K1=V1;K2=V2`` -> dict; a pair without ``=`` is code 4 (spec: key-value pairs)."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise CniError(INVALID_ENV, f"CNI_ARGS: not a KEY=VALUE pair: {part[:80]!r}")
        out[k.strip()] = v.strip()
    return out


def _check_version(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise CniError(INVALID_CONFIG, "network config needs a cniVersion string")
    if v not in SUPPORTED:
        raise CniError(INCOMPATIBLE, f"incompatible CNI version {v}",
                       f"this plugin supports {', '.join(SUPPORTED)}")
    return v


def _decode(stdin: bytes) -> dict[str, Any]:
    if len(stdin) > MAX_STDIN:
        raise CniError(DECODE, f"network config larger than {MAX_STDIN} bytes")
    try:
        conf = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(DECODE, "network config is not JSON", str(e)[:200]) from None
    if not isinstance(conf, dict):
        raise CniError(DECODE, "network config must be a JSON object")
    return conf


def _need(env: Mapping[str, str], key: str) -> str:
    v = env.get(key, "")
    if not v:
        raise CniError(INVALID_ENV, f"{key} is not set")
    return v


def parse_request(env: Mapping[str, str], stdin: bytes) -> Request:
    """Environment + stdin -> Request, or CniError with the spec's code."""
    cmd = env.get("CNI_COMMAND", "")
    if cmd not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND must be one of {', '.join(COMMANDS)}, "
                       f"not {cmd[:40]!r}")
    path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    if cmd == "VERSION":
        conf = _decode(stdin) if stdin.strip() else {}
        return Request(cmd, config=conf, raw=stdin, path=path, env=env)
    conf = _decode(stdin)
    _check_version(conf.get("cniVersion"))
    name = conf.get("name")
    if not isinstance(name, str) or not _NETWORK_RE.match(name):
        raise CniError(INVALID_CONFIG, "network config needs a name of [A-Za-z0-9_.-] "
                       "starting with a letter or digit", repr(name)[:100])
    if not isinstance(conf.get("type"), str) or not conf["type"]:
        raise CniError(INVALID_CONFIG, "network config needs a type")
    if cmd in ("STATUS", "GC"):
        return Request(cmd, config=conf, raw=stdin, path=path, env=env)
    cid = _need(env, "CNI_CONTAINERID")
    if not _CONTAINER_ID_RE.match(cid):
        raise CniError(INVALID_ENV, "CNI_CONTAINERID must be alphanumeric plus - _ .",
                       cid[:100])
    ifname = _need(env, "CNI_IFNAME")
    if len(ifname) > 15 or ifname in (".", "..") or _IFNAME_BAD.search(ifname):
        raise CniError(INVALID_ENV, f"CNI_IFNAME is not a valid interface name: {ifname[:40]!r}")
    netns = env.get("CNI_NETNS", "")
    if cmd in ("ADD", "CHECK"):
        netns = _need(env, "CNI_NETNS")
        if not path:
            raise CniError(INVALID_ENV, "CNI_PATH is not set")
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    return Request(cmd, cid, netns, ifname, args, path, conf, stdin, env)


def error_body(version: str, err: CniError) -> bytes:
    out: dict[str, Any] = {"cniVersion": version, "code": err.code, "msg": err.msg}
    if err.details:
        out["details"] = err.details
    return json.dumps(out).encode() + b"\n"


def version_body(req: Request) -> bytes:
    v = req.config.get("cniVersion")
    return json.dumps({"cniVersion": v if isinstance(v, str) and v else LATEST,
                       "supportedVersions": list(SUPPORTED)}).encode() + b"\n"


Handler = Callable[[Request], dict[str, Any] | None]


def run(plugin: str, handlers: Mapping[str, Handler], env: Mapping[str, str],
        stdin: bytes) -> tuple[int, bytes]:
    """One invocation: (exit code, stdout). Never raises."""
    t0 = time.monotonic()
    version = LATEST
    req: Request | None = None
    code = 0
    try:
        try:
            conf = json.loads(stdin) if stdin.strip() else {}
            v = conf.get("cniVersion") if isinstance(conf, dict) else None
            if isinstance(v, str) and v:
                version = v  # errors answer in the version asked for, even an unknown one
        except (ValueError, UnicodeDecodeError):
            pass
        req = parse_request(env, stdin)
        if req.command == "VERSION":
            out = version_body(req)
        else:
            handler = handlers.get(req.command)
            if handler is None:
                raise CniError(INVALID_ENV, f"{plugin} does not implement {req.command}")
            result = handler(req)
            out = b"" if result is None else json.dumps(result).encode() + b"\n"
        rc = 0
    except CniError as e:
        code, rc, out = e.code, 1, error_body(version, e)
    except Exception as e:  # a plugin bug: still the spec's JSON, never a traceback
        code, rc = PLUGIN_BUG, 1
        out = error_body(version, CniError(PLUGIN_BUG, f"{plugin}: internal error "
                                           f"{type(e).__name__}", str(e)[:300]))
    _log(env, plugin, req, rc, code, time.monotonic() - t0)
    return rc, out


def _caller() -> str:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return f.read(400).replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _log(env: Mapping[str, str], plugin: str, req: Request | None, rc: int, code: int,
         seconds: float) -> None:
    path = env.get(LOG_ENV) or (req.config.get("log") if req is not None else None)
    if not isinstance(path, str) or not path:
        return
    line = {"ts": round(time.time(), 3), "plugin": plugin, "pid": os.getpid(),
            "command": env.get("CNI_COMMAND", ""), "containerID": env.get("CNI_CONTAINERID"),
            "netns": env.get("CNI_NETNS"), "ifname": env.get("CNI_IFNAME"),
            "args": env.get("CNI_ARGS"), "path": env.get("CNI_PATH"),
            "network": None if req is None else req.config.get("name"),
            "cniVersion": None if req is None else req.config.get("cniVersion"),
            "prevResult": None if req is None else "prevResult" in req.config,
            "caller": _caller(),
            "exit": rc, "code": code, "ms": round(seconds * 1000, 2)}
    try:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
    except OSError:
        pass  # a log we cannot write must not fail the runtime's request


def main(plugin: str, handlers: Mapping[str, Handler]) -> int:
    """Entry point shape shared by both plugins: env + stdin in, stdout out, exit code."""
    try:
        stdin = sys.stdin.buffer.read(MAX_STDIN + 1)
    except OSError:
        stdin = b""
    rc, out = run(plugin, handlers, os.environ, stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return rc
