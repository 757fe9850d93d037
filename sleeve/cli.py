"""Command line: argv and environment -> one validated Config -> run.

Every user error ends as one line on stderr and a non-zero exit, never a
traceback: 2 for bad input, 1 for a runtime failure (port in use, no TAP).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import pathlib
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Any, NoReturn

from sleeve.config import (
    DEFAULT_BRIDGE,
    DEFAULT_CONN_LIMIT,
    DEFAULT_DOCKER_PLUGIN_SOCKET,
    DEFAULT_HTTP,
    DEFAULT_IFACE,
    DEFAULT_IPALLOC_RANGE,
    DEFAULT_MTU,
    DEFAULT_PORT,
    Config,
    ConfigError,
    check_cidr,
    check_dns_domain,
    check_dns_listen,
    check_host_port,
    check_ipalloc,
    check_subnets,
    parse_target,
)

log = logging.getLogger("sleeve")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"sleeve: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sleeve", description="Encrypted layer-2 overlay router.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    la = sub.add_parser("launch", help="run the router in the foreground")
    la.add_argument("--password-file", metavar="F",
                    help="file holding the network password (or env SLEEVE_PASSWORD): only "
                         "routers that know it can join")
    la.add_argument("--no-encryption", action="store_true",
                    help="carry data and control in clear text; with a password, members are "
                         "still authenticated (and the fast datapath may be used)")
    la.add_argument("--open", action="store_true",
                    help="no password: anyone who reaches the port can join; only together "
                         "with --no-encryption")
    la.add_argument("--port", type=int, default=DEFAULT_PORT,
                    help=f"TCP control and UDP data port (default {DEFAULT_PORT})")
    la.add_argument("--listen", default="0.0.0.0", help="local address to bind")
    port = la.add_mutually_exclusive_group()
    port.add_argument("--iface", default=DEFAULT_IFACE,
                      help=f"name of the TAP device to create (default {DEFAULT_IFACE})")
    port.add_argument("--attach", metavar="IFACE",
                      help="attach to an existing interface with a raw socket (pcap mode)")
    la.add_argument("--ip", metavar="CIDR", help="overlay address for the TAP, e.g. 198.19.0.1/24 "
                    "(on the bridge when there is one)")
    br = la.add_mutually_exclusive_group()
    br.add_argument("--bridge", default=DEFAULT_BRIDGE, metavar="NAME",
                    help=f"Linux bridge the TAP is a port of, containers' veths join it "
                         f"(default {DEFAULT_BRIDGE}; created or adopted)")
    br.add_argument("--no-bridge", action="store_true",
                    help="no bridge: the overlay address stays on the TAP (no containers)")
    la.add_argument("--mtu", type=int, default=DEFAULT_MTU,
                    help=f"TAP MTU (default {DEFAULT_MTU}: fits a 1500-byte underlay)")
    la.add_argument("--state-dir", default="/var/lib/sleeve",
                    help="static key and known peers (default /var/lib/sleeve)")
    la.add_argument("--config", metavar="F", help="TOML file (below flags and SLEEVE_* env)")
    la.add_argument("--resume", action="store_true",
                    help="also dial the peers remembered in the state dir")
    la.add_argument("--no-discovery", action="store_true",
                    help="only dial the peers given, not the ones learnt from the mesh")
    la.add_argument("--no-port-mapping", action="store_true",
                    help="do not ask the NAT gateway for a UDP port mapping (NAT-PMP)")
    la.add_argument("--conn-limit", type=int, default=DEFAULT_CONN_LIMIT, metavar="N",
                    help=f"most control connections (default {DEFAULT_CONN_LIMIT})")
    la.add_argument("--no-fastdp", action="store_true",
                    help="never hand links to the kernel's VXLAN (fast datapath)")
    la.add_argument("--rekey-seconds", type=float, default=120.0, metavar="S",
                    help="rotate data keys this often (default 120; lower only for tests)")
    la.add_argument("--offload", action=argparse.BooleanOptionalAction, default=True,
                    help="offloads where the kernel has them (default on): TCP segmentation "
                         "on the TAP (64 KiB super-frames to peers that take them), UDP GSO "
                         "on send and GRO on receive")
    la.add_argument("--clamp-mss", action=argparse.BooleanOptionalAction, default=True,
                    help="lower the MSS of TCP SYNs crossing the overlay to fit the path "
                         "(default on): TCP works even where hosts drop ICMP too-big")
    la.add_argument("--trusted-subnets", default="", metavar="CIDR[,CIDR]",
                    help="peers in these underlay subnets may use the unencrypted fast "
                         "datapath even on an encrypted network")
    la.add_argument("--nickname", default=socket.gethostname()[:64])
    la.add_argument("--http", default=DEFAULT_HTTP,
                    help=f"status API address (default {DEFAULT_HTTP}); 'off' to disable")
    la.add_argument("--no-dns", action="store_true",
                    help="do not serve DNS (names are still gossiped and can be registered)")
    la.add_argument("--dns-listen", default="", metavar="ADDR[:PORT][,...]",
                    help="where the micro DNS listens, UDP and TCP, comma separated (IPv6 as "
                         "[ADDR]:PORT; default: the --ip address, port 53)")
    la.add_argument("--dns-domain", default="sleeve.local.",
                    help="domain the micro DNS answers for (default sleeve.local.)")
    la.add_argument("--dns-ttl", type=int, default=1, metavar="S",
                    help="TTL of DNS answers in seconds (default 1)")
    la.add_argument("--dns-one-address", action="store_true",
                    help="answer one random address per query instead of all, shuffled "
                         "(clients that sort addresses by RFC 6724, like glibc, undo shuffles)")
    la.add_argument("--dns-rate-limit", type=float, default=500.0, metavar="QPS",
                    help="DNS queries per second per client address (default 500; 0: none)")
    la.add_argument("--ipalloc-range", default=DEFAULT_IPALLOC_RANGE, metavar="CIDR",
                    help=f"the overlay addresses IPAM hands out, shared by the whole mesh "
                         f"(default {DEFAULT_IPALLOC_RANGE}, as Weave)")
    la.add_argument("--ipalloc-default-subnet", default="", metavar="CIDR",
                    help="subnet of the range allocations come from when none is asked for "
                         "(default: the whole range)")
    la.add_argument("--ipalloc-init", default="", metavar="MODE",
                    help="first start: consensus=N (N peers agree; default N = peers given "
                         "+ 1), seed=ID,... (these peers own the ring; ids as `sleeve status "
                         "peers` shows them) or observer (owns nothing at start)")
    la.add_argument("--docker-plugin", action="store_true",
                    help="serve the Docker network and IPAM plugin: docker network create -d "
                         "sleeve --ipam-driver sleeve NAME (docs/docker.md)")
    la.add_argument("--docker-plugin-socket", default=DEFAULT_DOCKER_PLUGIN_SOCKET,
                    metavar="PATH",
                    help=f"its unix socket (default {DEFAULT_DOCKER_PLUGIN_SOCKET}, mode 0660)")
    la.add_argument("--docker-api", default="/var/run/docker.sock", metavar="PATH",
                    help="dockerd's API socket, asked for containers' names (default "
                         "/var/run/docker.sock; '' for none: containers get no DNS name)")
    la.add_argument("--docker-plugin-record", default="", help=argparse.SUPPRESS)
    la.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    la.add_argument("--log-format", default="text", choices=["text", "json"])
    la.add_argument("peers", nargs="*", metavar="PEER", help="host[:port] to connect to")

    sub.add_parser("keygen", help="print a random secret usable as the network password")

    st = sub.add_parser("status", help="show a running router's status")
    st.add_argument("what", nargs="?", default="summary",
                    choices=["summary", "connections", "peers", "routes", "macs", "targets",
                             "dns", "ipam"])
    st.add_argument("--http", default=os.environ.get("SLEEVE_HTTP", DEFAULT_HTTP))
    st.add_argument("--json", action="store_true")
    st.add_argument("--watch", action="store_true",
                    help="a live table of the links, redrawn every --interval seconds")
    st.add_argument("--interval", type=float, default=1.0, metavar="S",
                    help="--watch period (default 1; bounded to 0.5..60)")

    rp = sub.add_parser("report", help="everything a bug report needs, as JSON (no secrets)")
    rp.add_argument("--http", default=os.environ.get("SLEEVE_HTTP", DEFAULT_HTTP))
    rp.add_argument("--json", action="store_true", help="(the default; kept for symmetry)")

    for verb, text in (("connect", "add peers to a running router"),
                       ("forget", "remove peers from a running router's targets")):
        c = sub.add_parser(verb, help=text)
        c.add_argument("peers", nargs="+", metavar="HOST[:PORT]")
        c.add_argument("--http", default=os.environ.get("SLEEVE_HTTP", DEFAULT_HTTP))

    dn = sub.add_parser("dns", help="register names in the micro DNS of a running router")
    dsub = dn.add_subparsers(dest="dns_cmd", required=True, parser_class=_Parser)
    da = dsub.add_parser("add", help="NAME resolves to ADDRESS (everywhere in the mesh)")
    da.add_argument("name", metavar="NAME", help="web, or web.sleeve.local")
    da.add_argument("address", metavar="ADDRESS", help="IPv4 or IPv6 address")
    da.add_argument("--id", default="", help="owner id (e.g. a container id)")
    dr = dsub.add_parser("remove", help="remove NAME (only its ADDRESS if given)")
    dr.add_argument("name", metavar="NAME")
    dr.add_argument("address", nargs="?", metavar="ADDRESS")
    for d in (da, dr):
        d.add_argument("--http", default=os.environ.get("SLEEVE_HTTP", DEFAULT_HTTP))

    ip = sub.add_parser("ipam", help="overlay addresses from the mesh's IPAM")
    isub = ip.add_subparsers(dest="ipam_cmd", required=True, parser_class=_Parser)
    ia = isub.add_parser("allocate", help="print ADDRESS/PREFIX for ID (the same one again "
                                          "for the same ID)")
    ia.add_argument("id", metavar="ID", help="owner id, e.g. a container id (1..64 printable "
                                             "ASCII characters, no spaces)")
    ia.add_argument("--subnet", default="", metavar="CIDR", help="a subnet of the range")
    ia.add_argument("--json", action="store_true", help='print {"id": ..., "address": ...}')
    ir = isub.add_parser("release", help="free every address of ID")
    ir.add_argument("id", metavar="ID")
    rm = sub.add_parser("rmpeer", help="take over the IPAM ranges of a peer that is gone for "
                                       "good (refused while it is reachable)")
    rm.add_argument("peer", metavar="PEER", help="peer id (sleeve status ipam) or nickname")
    rs = sub.add_parser("reset", help="release this router's addresses, give its IPAM ranges "
                                      "to a reachable peer, then stop the router")
    rs.add_argument("--force", action="store_true",
                    help="stop even when no peer can take the ranges")
    ex = sub.add_parser("expose", help="give this host an overlay address from IPAM (on the "
                                       "router's bridge; on its TAP with --no-bridge)")
    ex.add_argument("--subnet", default="", metavar="CIDR", help="a subnet of the range")
    ex.add_argument("--json", action="store_true")
    for c in (ia, ir, rm, rs, ex):
        c.add_argument("--http", default=os.environ.get("SLEEVE_HTTP", DEFAULT_HTTP))
    cn = sub.add_parser("cni", help="container networking: install the CNI plugins")
    csub = cn.add_subparsers(dest="cni_cmd", required=True, parser_class=_Parser)
    ci = csub.add_parser("install", help="write sleeve-net, sleeve-ipam and 10-sleeve.conflist")
    ci.add_argument("--bin-dir", default="/opt/cni/bin", help="CNI plugin dir (/opt/cni/bin)")
    ci.add_argument("--conf-dir", default="/etc/cni/net.d",
                    help="CNI network config dir (/etc/cni/net.d)")
    ci.add_argument("--api", default=os.environ.get("SLEEVE_HTTP", DEFAULT_HTTP),
                    help=f"the router's local API the plugins use (default {DEFAULT_HTTP})")
    ci.add_argument("--subnet", default="", metavar="CIDR",
                    help="containers' addresses from this IPAM subnet (default: the router's)")
    ci.add_argument("--python", default=None, metavar="PATH",
                    help="interpreter the plugins run with (default this one; a node's "
                         "/opt/sleeve/venv/bin/python when installing from a container)")
    ci.add_argument("--masquerade", action="store_true",
                    help="containers reach beyond the overlay through the host (nft masquerade, "
                         "default route via the router's address)")

    de = sub.add_parser("demo", help="build a lab on this machine and show sleeve working")
    de.add_argument("--keep-going", action="store_true", help=argparse.SUPPRESS)
    return p


def _fail(msg: str, code: int = 1) -> NoReturn:
    print(f"sleeve: error: {msg}", file=sys.stderr)
    sys.exit(code)


def _read_password(args: argparse.Namespace) -> bytes | None:
    if args.open:
        if args.password_file or os.environ.get("SLEEVE_PASSWORD"):
            raise ConfigError("--open means no password, but a password is given")
        if not args.no_encryption:
            raise ConfigError("--open needs --no-encryption: without a password there is no "
                              "secret to encrypt with")
        return None
    if args.password_file:
        try:
            pw = pathlib.Path(args.password_file).read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"cannot read password file {args.password_file}: "
                              f"{e.strerror}") from None
        if not pw:
            raise ConfigError(f"password file {args.password_file} is empty")
        return pw
    env = os.environ.get("SLEEVE_PASSWORD", "")
    if env:
        return env.encode()
    raise ConfigError("no password: give --password-file F or SLEEVE_PASSWORD (or, for a "
                      "network anyone can join, --open --no-encryption)")


def config_from_args(args: argparse.Namespace) -> Config:
    from sleeve.crypto.kdf import psk_from_password

    pw = _read_password(args)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port out of range: {args.port}")
    if not 576 <= args.mtu <= 65535 - 100:
        raise ConfigError(f"--mtu out of range (576..65435): {args.mtu}")
    if args.ip is not None:
        check_cidr(args.ip)
        if args.attach:
            raise ConfigError("--ip applies to the TAP; with --attach, address the bridge")
    if not 0.1 <= args.rekey_seconds <= 86400:
        raise ConfigError(f"--rekey-seconds out of range (0.1..86400): {args.rekey_seconds}")
    if not 1 <= args.conn_limit <= 10000:
        raise ConfigError(f"--conn-limit out of range (1..10000): {args.conn_limit}")
    if len(args.iface) > 15:
        raise ConfigError(f"--iface name longer than 15 characters: {args.iface}")
    bridge = None if args.no_bridge or args.attach else args.bridge
    if bridge is not None:
        from sleeve.capture.bridge import check_bridge_name

        try:
            check_bridge_name(bridge)
        except ValueError as e:
            raise ConfigError(f"--bridge: {e}") from None
        if bridge == args.iface:
            raise ConfigError("--bridge and --iface need different names")
    if not 0 <= args.dns_ttl <= 86400:
        raise ConfigError(f"--dns-ttl out of range (0..86400): {args.dns_ttl}")
    if not 0 <= args.dns_rate_limit <= 1e6:
        raise ConfigError(f"--dns-rate-limit out of range (0..1000000): {args.dns_rate_limit}")
    dns_listen = check_dns_listen(args.dns_listen)
    http = None if args.http in ("off", "", "none") else args.http
    if http is not None:
        check_host_port(http, "--http")
    cfg = Config(
        psk=None if pw is None else psk_from_password(pw), encrypt=not args.no_encryption,
        port=args.port, listen=args.listen, iface=args.iface, attach=args.attach, ip=args.ip,
        bridge=bridge,
        mtu=args.mtu, state_dir=pathlib.Path(args.state_dir), nickname=args.nickname,
        peers=tuple(parse_target(p, args.port) for p in args.peers), http=http,
        resume=args.resume, discovery=not args.no_discovery, conn_limit=args.conn_limit,
        port_mapping=not args.no_port_mapping,
        fastdp=not args.no_fastdp, trusted_subnets=check_subnets(args.trusted_subnets),
        offload=args.offload, clamp_mss=args.clamp_mss, rekey_seconds=args.rekey_seconds,
        dns=not args.no_dns, dns_listen=dns_listen, dns_domain=check_dns_domain(args.dns_domain),
        dns_ttl=args.dns_ttl, dns_one_address=args.dns_one_address,
        dns_rate=args.dns_rate_limit, ipalloc_range=args.ipalloc_range,
        ipalloc_default_subnet=args.ipalloc_default_subnet or None,
        ipalloc_init=args.ipalloc_init,
        docker_plugin=args.docker_plugin, docker_plugin_socket=args.docker_plugin_socket,
        docker_api=args.docker_api, docker_plugin_record=args.docker_plugin_record,
    )
    check_ipalloc(cfg)
    return cfg


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


def launch(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level, args.log_format)
    if os.geteuid() != 0:
        _fail("sleeve launch must run as root (it creates a TAP device and raw sockets)")
    try:
        cfg = config_from_args(args)
        from sleeve.ipam.service import host_networks

        check_ipalloc(cfg, host_networks(cfg.iface))  # the range must miss the underlay
    except ConfigError as e:
        _fail(str(e), 2)
    from sleeve.capture.base import Port, PortError
    from sleeve.crypto.keys import stable_mac
    from sleeve.ipam.validate import IpamError
    from sleeve.node import Node

    def make_port() -> Port:
        if cfg.attach:
            from sleeve.capture.afpacket import AfPacketPort
            return AfPacketPort(cfg.attach)
        from sleeve.capture.tap import TapPort
        return TapPort(cfg.iface, cfg.mtu, cfg.ip, mac=stable_mac(node.id),
                       offload=cfg.offload)

    try:
        node = Node(cfg, make_port)
    except IpamError as e:  # a state file we must not use: guessing could duplicate addresses
        _fail(f"ipam: {e}")
    except (OSError, ValueError) as e:
        _fail(f"cannot load the static key from {cfg.state_dir}: {e}")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.stop)
        await node.run()

    try:
        import uvloop

        uvloop.run(main())
    except PortError as e:
        _fail(str(e))
    except OSError as e:
        _fail(e.strerror or str(e))
    return 0


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
        _fail(f"bad name: {e}", 2)
    except ValueError as e:
        _fail(str(e), 2)
    if args.dns_cmd == "add":
        q["id"] = args.id
    path = f"/dns/{args.dns_cmd}?{urllib.parse.urlencode(q)}"
    print(json.dumps(_api(args.http, path, "POST")))
    return 0


class _ApiError(Exception):
    pass


def _url(http: str, path: str) -> str:
    try:
        host, port = check_host_port(http, "--http")
    except ConfigError as e:
        _fail(str(e), 2)
    return f"http://{host}:{port}{path}"


def _call(url: str, method: str = "GET", timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise _ApiError(f"router refused: {e.read().decode(errors='replace').strip()}") \
            from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise _ApiError(f"no router answering at {url}: {getattr(e, 'reason', e)}") from None


def _api(http: str, path: str, method: str = "GET", timeout: float = 5.0) -> Any:
    try:
        return _call(_url(http, path), method, timeout)
    except _ApiError as e:
        _fail(str(e))


def _watch(args: argparse.Namespace) -> int:
    from sleeve.status.watch import watch

    url = _url(args.http, "/status")
    try:
        return watch(lambda: _call(url), url, args.interval)
    except _ApiError as e:
        _fail(str(e))


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
            _fail(str(e), 2)
    if getattr(args, "subnet", ""):
        try:
            ipaddress.IPv4Network(args.subnet, strict=True)
        except ValueError:
            _fail(f"--subnet needs an IPv4 CIDR like 10.32.0.0/16: {args.subnet!r}", 2)
        q["subnet"] = args.subnet
    if args.cmd == "rmpeer":
        q["peer"] = args.peer
    if args.cmd == "reset" and args.force:
        q["force"] = "1"
    path = {"ipam": f"/ipam/{getattr(args, 'ipam_cmd', '')}", "rmpeer": "/ipam/rmpeer",
            "reset": "/ipam/reset", "expose": "/ipam/expose"}[args.cmd]
    # an allocation may wait for the mesh: the router gives up after 20 s, we a little later
    r = _api(args.http, f"{path}?{urllib.parse.urlencode(q)}", "POST", timeout=30)
    if args.cmd in ("ipam", "expose") and "address" in r:
        print(json.dumps({"id": r["id"], "address": r["address"]}) if args.json
              else r["address"])
    else:
        print(json.dumps(r))
    if args.cmd == "reset":
        host, port = check_host_port(args.http, "--http")
        for _ in range(50):  # bounded: the router stops about a second after donating
            try:
                socket.create_connection((host, port), timeout=0.5).close()
            except OSError:
                return 0
            time.sleep(0.2)
        _fail("the router did not stop within 10 s")
    return 0


def status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch(args)
    data: dict[str, Any] = _api(args.http, "/status")
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
            _fail(str(e), 2)
    q = urllib.parse.urlencode({"peer": ",".join(args.peers)})
    print(json.dumps(_api(args.http, f"/{args.cmd}?{q}", "POST")))
    return 0


def cni_install(args: argparse.Namespace) -> int:
    from sleeve.cni.install import install

    try:
        check_host_port(args.api, "--api")
        if args.subnet:
            import ipaddress

            ipaddress.ip_network(args.subnet)
    except (ConfigError, ValueError) as e:
        _fail(str(e), 2)
    try:
        for path in install(args.bin_dir, args.conf_dir, args.api, args.subnet,
                            args.masquerade, args.python):
            print(path)
    except OSError as e:
        _fail(f"cannot install the CNI plugins: {e}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags over SLEEVE_* env over the TOML file over defaults (see sleeve.configfile)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd != "launch":
        return args
    from sleeve.configfile import layered_defaults

    try:
        layers = layered_defaults(args.config)
    except ConfigError as e:
        _fail(str(e), 2)
    if not layers:
        return args
    if layers.get("password_file") and layers.get("open"):
        _fail("config sets both password-file and open", 2)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.choices["launch"].set_defaults(**layers)
    args = parser.parse_args(argv)
    if args.peers == [] and "peers" in layers:
        args.peers = layers["peers"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cmd == "keygen":
        from sleeve.crypto.kdf import random_secret
        print(random_secret())
        return 0
    if args.cmd == "launch":
        return launch(args)
    if args.cmd == "status":
        return status(args)
    if args.cmd == "report":
        print(json.dumps(_api(args.http, "/report"), indent=1))
        return 0
    if args.cmd in ("connect", "forget"):
        return peers_action(args)
    if args.cmd == "dns":
        return dns_action(args)
    if args.cmd in ("ipam", "rmpeer", "reset", "expose"):
        return ipam_action(args)
    if args.cmd == "cni":
        return cni_install(args)
    if args.cmd == "demo":
        from sleeve.demo import run_demo

        rc: int = run_demo()
        return rc
    return 2


if __name__ == "__main__":
    sys.exit(main())
