"""Command line: argv and environment -> one validated Config -> run.

Every user error ends as one line on stderr and a non-zero exit, never a
traceback: 2 for bad input, 1 for a runtime failure (port in use, no TAP).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import signal
import socket
import sys
from typing import NoReturn

from sleeve.cli_api import (
    cni_install,
    dns_action,
    env_socket,
    fail,
    get_json,
    ipam_action,
    peers_action,
    reader_options,
    status,
    writer_options,
)
from sleeve.config import (
    DEFAULT_API_SOCKET,
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
    la.add_argument("--psk-file", metavar="F",
                    help="file holding the network key derived from the password (`sleeve "
                         "psk`), instead of --password-file: the same network, without the "
                         "64 MiB Argon2id derivation at every start")
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
    la.add_argument("--no-port-prediction", action="store_true",
                    help="hole punching: neither announce nor probe the predicted ports of "
                         "a NAT that counts ports up")
    la.add_argument("--no-spray", action="store_true",
                    help="hole punching: no birthday spray for a NAT that draws random ports")
    la.add_argument("--conn-limit", type=int, default=DEFAULT_CONN_LIMIT, metavar="N",
                    help=f"most control connections (default {DEFAULT_CONN_LIMIT})")
    la.add_argument("--no-fastdp", action="store_true",
                    help="never hand links to the kernel's VXLAN (fast datapath)")
    la.add_argument("--rekey-interval", "--rekey-seconds", dest="rekey_seconds", type=float,
                    default=120.0, metavar="S",
                    help="fresh Diffie-Hellman for each link's data and control keys this "
                         "often (default 120; lower only for tests)")
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
                    help=f"read-only status API and /ui page (default {DEFAULT_HTTP}); 'off' "
                         f"to disable")
    la.add_argument("--api-socket", default=DEFAULT_API_SOCKET, metavar="PATH",
                    help=f"unix socket of the full local API, the only way to change a running "
                         f"router (default {DEFAULT_API_SOCKET}, mode 0600: root only); 'off' "
                         f"to disable")
    la.add_argument("--api-group", default="", metavar="GROUP",
                    help="members of this group may use --api-socket too (mode 0660)")
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
    pk = sub.add_parser("psk", help="print the network key derived from the password, for "
                                    "launch --psk-file")
    pk.add_argument("--password-file", metavar="F",
                    help="file holding the network password (or env SLEEVE_PASSWORD)")

    st = sub.add_parser("status", help="show a running router's status")
    st.add_argument("what", nargs="?", default="summary",
                    choices=["summary", "connections", "peers", "routes", "macs", "targets",
                             "dns", "ipam", "traversal"])
    reader_options(st)
    st.add_argument("--json", action="store_true")
    st.add_argument("--watch", action="store_true",
                    help="a live table of the links, redrawn every --interval seconds")
    st.add_argument("--interval", type=float, default=1.0, metavar="S",
                    help="--watch period (default 1; bounded to 0.5..60)")

    rp = sub.add_parser("report", help="everything a bug report needs, as JSON (no secrets)")
    reader_options(rp)
    rp.add_argument("--json", action="store_true", help="(the default; kept for symmetry)")

    for verb, text in (("connect", "add peers to a running router"),
                       ("forget", "remove peers from a running router's targets")):
        c = sub.add_parser(verb, help=text)
        c.add_argument("peers", nargs="+", metavar="HOST[:PORT]")
        writer_options(c)

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
        writer_options(d)

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
        writer_options(c)
    cn = sub.add_parser("cni", help="container networking: install the CNI plugins")
    csub = cn.add_subparsers(dest="cni_cmd", required=True, parser_class=_Parser)
    ci = csub.add_parser("install", help="write sleeve-net, sleeve-ipam and 10-sleeve.conflist")
    ci.add_argument("--bin-dir", default="/opt/cni/bin", help="CNI plugin dir (/opt/cni/bin)")
    ci.add_argument("--conf-dir", default="/etc/cni/net.d",
                    help="CNI network config dir (/etc/cni/net.d)")
    ci.add_argument("--api", default=env_socket(), metavar="PATH",
                    help=f"the router's API socket the plugins use (default "
                         f"{DEFAULT_API_SOCKET}, or as --api-socket of `sleeve launch`)")
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


def _read_psk_file(path: str) -> bytes:
    from sleeve.crypto.kdf import parse_psk

    try:
        mode = pathlib.Path(path).stat().st_mode
        if mode & 0o077:
            # it grants what the password grants: like ssh's private keys, refuse it when
            # others may read it, rather than run on a key every local user can copy
            raise ConfigError(f"PSK file {path} is open to others (mode {mode & 0o777:o}): "
                              f"chmod 600 {path}")
        return parse_psk(pathlib.Path(path).read_text(errors="replace"))
    except OSError as e:
        raise ConfigError(f"cannot read PSK file {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"PSK file {path}: {e}") from None


def _network_psk(args: argparse.Namespace) -> bytes | None:
    """The network PSK from --psk-file, or derived from the password (None: --open)."""
    if getattr(args, "psk_file", None):
        if args.open or args.password_file or os.environ.get("SLEEVE_PASSWORD"):
            raise ConfigError("--psk-file replaces the password: give one of --psk-file, "
                              "--password-file / SLEEVE_PASSWORD, --open")
        return _read_psk_file(args.psk_file)
    from sleeve.crypto.kdf import psk_from_password

    pw = _read_password(args)
    return None if pw is None else psk_from_password(pw)


def _read_password(args: argparse.Namespace, hint: str = " or --psk-file F (or, for a "
                   "network anyone can join, --open --no-encryption)") -> bytes | None:
    if getattr(args, "open", False):
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
    raise ConfigError(f"no password: give --password-file F or SLEEVE_PASSWORD{hint}")


def config_from_args(args: argparse.Namespace) -> Config:
    psk = _network_psk(args)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port out of range: {args.port}")
    if not 576 <= args.mtu <= 65535 - 100:
        raise ConfigError(f"--mtu out of range (576..65435): {args.mtu}")
    if args.ip is not None:
        check_cidr(args.ip)
        if args.attach:
            raise ConfigError("--ip applies to the TAP; with --attach, address the bridge")
    if not 0.1 <= args.rekey_seconds <= 86400:
        raise ConfigError(f"--rekey-interval out of range (0.1..86400): {args.rekey_seconds}")
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
    api_socket, api_group = _api_socket_options(args)
    cfg = Config(
        psk=psk, encrypt=not args.no_encryption,
        port=args.port, listen=args.listen, iface=args.iface, attach=args.attach, ip=args.ip,
        bridge=bridge,
        mtu=args.mtu, state_dir=pathlib.Path(args.state_dir), nickname=args.nickname,
        peers=tuple(parse_target(p, args.port) for p in args.peers), http=http,
        api_socket=api_socket, api_group=api_group,
        resume=args.resume, discovery=not args.no_discovery, conn_limit=args.conn_limit,
        port_mapping=not args.no_port_mapping, port_prediction=not args.no_port_prediction,
        spray=not args.no_spray,
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


def _api_socket_options(args: argparse.Namespace) -> tuple[str | None, int | None]:
    """``--api-socket`` (a path, or off) and ``--api-group`` (a group name or gid)."""
    from sleeve.status.unixsock import check_socket_path

    sock = None if args.api_socket in ("off", "", "none") else args.api_socket
    if sock is not None:
        try:
            check_socket_path(sock)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if not args.api_group:
        return sock, None
    if sock is None:
        raise ConfigError("--api-group needs the API socket (--api-socket is off)")
    import grp

    try:
        gid = (grp.getgrgid(int(args.api_group)) if args.api_group.isdigit()
               else grp.getgrnam(args.api_group)).gr_gid
    except (KeyError, OverflowError):
        raise ConfigError(f"--api-group: no group {args.api_group!r} on this host") from None
    return sock, gid


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
        fail("sleeve launch must run as root (it creates a TAP device and raw sockets)")
    try:
        cfg = config_from_args(args)
        from sleeve.ipam.service import host_networks

        check_ipalloc(cfg, host_networks(cfg.iface))  # the range must miss the underlay
    except ConfigError as e:
        fail(str(e), 2)
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
        fail(f"ipam: {e}")
    except (OSError, ValueError) as e:
        fail(f"cannot load the static key from {cfg.state_dir}: {e}")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.stop)
        await node.run()

    try:
        import uvloop

        uvloop.run(main())
    except PortError as e:
        fail(str(e))
    except OSError as e:
        fail(e.strerror or str(e))
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
        fail(str(e), 2)
    if not layers:
        return args
    if layers.get("password_file") and layers.get("open"):
        fail("config sets both password-file and open", 2)
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
    if args.cmd == "psk":
        from sleeve.crypto.kdf import format_psk, psk_from_password

        try:
            pw = _read_password(args, hint="")
        except ConfigError as e:
            fail(str(e), 2)
        assert pw is not None  # without --open, _read_password returns one or raises
        print(format_psk(psk_from_password(pw)))
        return 0
    if args.cmd == "launch":
        return launch(args)
    if args.cmd == "status":
        return status(args)
    if args.cmd == "report":
        print(json.dumps(get_json(args, "/report"), indent=1))
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
