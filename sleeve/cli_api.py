"""The CLI commands that drive a running router through its local API.

Changes (connect, forget, dns, ipam, rmpeer, reset, expose) go to the unix socket
(``--api-socket``, default /run/sleeve/sleeve.sock): root, or the router's --api-group.
Reads (status, report) use the socket too and, when this user cannot open it, the
read-only TCP API (127.0.0.1:6782); ``--http`` asks for TCP explicitly.

Every user error is one line on stderr: exit 2 for bad input (checked here first),
1 for what the router refused or a router that does not answer.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from sleeve.config import (
    DEFAULT_API_SOCKET,
    DEFAULT_HTTP,
    ConfigError,
    check_host_port,
    parse_target,
)
from sleeve.status.client import ApiError, Endpoint, call, read


def env_socket() -> str:
    return os.environ.get("SLEEVE_API_SOCKET", DEFAULT_API_SOCKET)


def writer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-socket", default=env_socket(), metavar="PATH",
                   help=f"the router's API socket (default {DEFAULT_API_SOCKET}; env "
                        f"SLEEVE_API_SOCKET): changes need root or the router's --api-group")


def reader_options(p: argparse.ArgumentParser) -> None:
    writer_options(p)
    p.add_argument("--http", default=os.environ.get("SLEEVE_HTTP"), metavar="HOST:PORT",
                   help=f"read over TCP from this address instead (default: the socket, or "
                        f"{DEFAULT_HTTP} when this user cannot open it)")


def fail(msg: str, code: int = 1) -> NoReturn:
    print(f"sleeve: error: {msg}", file=sys.stderr)
    sys.exit(code)


def dns_action(args: argparse.Namespace) -> int:
    """``sleeve dns add|remove``: checked here first (exit 2), then by the router (exit 1)."""
    import urllib.parse

    from sleeve.dns.names import BadName, check_name, parse_address

    q = {"name": args.name}
    try:
        check_name(args.name)
        if args.address is not None:
            q["address"] = str(parse_address(args.address))
    except BadName as e:
        fail(f"bad name: {e}", 2)
    except ValueError as e:
        fail(str(e), 2)
    if args.dns_cmd == "add":
        q["id"] = args.id
    path = f"/dns/{args.dns_cmd}?{urllib.parse.urlencode(q)}"
    print(json.dumps(_change(args, path)))
    return 0


def _socket(args: argparse.Namespace) -> Endpoint:
    from sleeve.status.unixsock import check_socket_path

    try:
        check_socket_path(args.api_socket)
    except ValueError as e:
        fail(str(e), 2)
    return Endpoint(unix=args.api_socket)


def _change(args: argparse.Namespace, target: str, timeout: float = 5.0) -> Any:
    """POST on the unix socket: the only place a running router takes changes."""
    try:
        return call(_socket(args), "POST", target, timeout)
    except ApiError as e:
        fail(str(e))


def _tcp(text: str) -> Endpoint:
    try:
        host, port = check_host_port(text, "--http")
    except ConfigError as e:
        fail(str(e), 2)
    return Endpoint(host=host, port=port)


def _reader_of(args: argparse.Namespace) -> tuple[Callable[[str], Any], str]:
    """A GET function for the status commands, and where it reads (for the user)."""
    if args.http:  # asked for explicitly: that address, over TCP
        ep = _tcp(args.http)
        return (lambda target: call(ep, "GET", target)), f"http://{ep}"
    sock, tcp = _socket(args), _tcp(DEFAULT_HTTP)
    return (lambda target: read(sock, tcp, target)), str(sock)


def get_json(args: argparse.Namespace, target: str) -> Any:
    fetch, _ = _reader_of(args)
    try:
        return fetch(target)
    except ApiError as e:
        fail(str(e))


def _watch(args: argparse.Namespace) -> int:
    from sleeve.status.watch import watch

    fetch, where = _reader_of(args)
    try:
        return watch(lambda: fetch("/status"), where, args.interval)
    except ApiError as e:
        fail(str(e))


def ipam_action(args: argparse.Namespace) -> int:
    """``sleeve ipam allocate|release``, ``rmpeer``, ``reset``, ``expose``: stable output.

    Input is checked here first (exit 2); the router's refusals exit 1, one line."""
    import urllib.parse

    from sleeve.ipam.validate import IpamError, check_id

    q: dict[str, str] = {}
    if args.cmd == "ipam":
        try:
            q["id"] = check_id(args.id)
        except IpamError as e:
            fail(str(e), 2)
    if getattr(args, "subnet", ""):
        try:
            ipaddress.IPv4Network(args.subnet, strict=True)
        except ValueError:
            fail(f"--subnet needs an IPv4 CIDR like 10.32.0.0/16: {args.subnet!r}", 2)
        q["subnet"] = args.subnet
    if args.cmd == "rmpeer":
        q["peer"] = args.peer
    if args.cmd == "reset" and args.force:
        q["force"] = "1"
    path = {"ipam": f"/ipam/{getattr(args, 'ipam_cmd', '')}", "rmpeer": "/ipam/rmpeer",
            "reset": "/ipam/reset", "expose": "/ipam/expose"}[args.cmd]
    # an allocation may wait for the mesh: the router gives up after 20 s, we a little later
    r = _change(args, f"{path}?{urllib.parse.urlencode(q)}", timeout=30)
    if args.cmd in ("ipam", "expose") and "address" in r:
        print(json.dumps({"id": r["id"], "address": r["address"]}) if args.json
              else r["address"])
    else:
        print(json.dumps(r))
    if args.cmd == "reset":
        for _ in range(50):  # bounded: the router stops about a second after donating
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                if s.connect_ex(args.api_socket) != 0:
                    return 0
            time.sleep(0.2)
        fail("the router did not stop within 10 s")
    return 0


def status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch(args)
    data: dict[str, Any] = get_json(args, "/status")
    from sleeve.status.render import render

    part = data if args.what == "summary" else data.get(args.what, [])
    print(json.dumps(part, indent=1) if args.json else render(args.what, data))
    return 0


def peers_action(args: argparse.Namespace) -> int:
    import urllib.parse

    for p in args.peers:
        try:
            parse_target(p)
        except ConfigError as e:
            fail(str(e), 2)
    q = urllib.parse.urlencode({"peer": ",".join(args.peers)})
    print(json.dumps(_change(args, f"/{args.cmd}?{q}")))
    return 0


def cni_install(args: argparse.Namespace) -> int:
    from sleeve.cni.install import install
    from sleeve.status.unixsock import check_socket_path

    try:
        check_socket_path(args.api, "--api")
        if args.subnet:
            import ipaddress

            ipaddress.ip_network(args.subnet)
    except (ConfigError, ValueError) as e:
        fail(str(e), 2)
    try:
        for path in install(args.bin_dir, args.conf_dir, args.api, args.subnet,
                            args.masquerade, args.python):
            print(path)
    except OSError as e:
        fail(f"cannot install the CNI plugins: {e}")
    return 0
