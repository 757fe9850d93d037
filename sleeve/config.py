"""One validated configuration; nothing else reads argv or the environment."""

from __future__ import annotations

import ipaddress
import pathlib
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PORT = 6783
DEFAULT_HTTP = "127.0.0.1:6782"  # read-only: status, metrics, the /ui page
DEFAULT_API_SOCKET = "/run/sleeve/sleeve.sock"  # every change: root (or --api-group) only
DEFAULT_IFACE = "sleeve0"
DEFAULT_BRIDGE = "sleeve"
# 1500-byte underlay - IPv4/UDP 28 - sleeve 36 (header 16, tag 16, record 4) - source and
# destination peer ids 16 - inner Ethernet 14. A relayed frame also carries its source's
# 24-byte proof (proto.origin): kept out of the default so the direct path, nearly all
# traffic, keeps its MTU; TCP through a relay is clamped to fit, a full-size frame of
# another kind gets ICMP "too big" (DF, IPv6) or goes in sleeve fragments.
DEFAULT_MTU = 1406
DEFAULT_CONN_LIMIT = 200
DEFAULT_IPALLOC_RANGE = "10.32.0.0/12"  # as Weave


class ConfigError(ValueError):
    """Bad user input: shown as one line, exit code 2."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


DEFAULT_DOCKER_PLUGIN_SOCKET = "/run/docker/plugins/sleeve.sock"  # where dockerd looks


@dataclass(frozen=True)
class Config:
    psk: bytes | None  # None: an open network (explicit --open --no-encryption only)
    port: int = DEFAULT_PORT
    listen: str = "0.0.0.0"
    iface: str = DEFAULT_IFACE
    attach: str | None = None
    ip: str | None = None
    bridge: str | None = None  # the router's Linux bridge (CLI default "sleeve"); None: TAP only
    mtu: int = DEFAULT_MTU
    state_dir: pathlib.Path = pathlib.Path("/var/lib/sleeve")
    nickname: str = "sleeve"
    peers: tuple[Target, ...] = ()
    http: str | None = DEFAULT_HTTP
    # the state-changing API (status.unixsock); None: none. The CLI's default is
    # DEFAULT_API_SOCKET; in-process routers (tests) name their own or have none.
    api_socket: str | None = None
    api_group: int | None = None  # gid that may use api_socket too (0660); None: root only
    resume: bool = False  # also dial the peers remembered in state_dir/peers.json
    discovery: bool = True  # dial the peers learnt from gossip
    port_mapping: bool = True  # ask the NAT gateway for a UDP port mapping (NAT-PMP)
    port_prediction: bool = True  # punch to a port-changing NAT's predicted ports (issue 24)
    spray: bool = True  # birthday spray for a NAT that draws random ports (issue 24)
    conn_limit: int = DEFAULT_CONN_LIMIT
    fastdp: bool = True  # hand links to kernel VXLAN where policy allows (unencrypted/trusted)
    trusted_subnets: tuple[str, ...] = ()  # peers here may use the unencrypted fast datapath
    rekey_seconds: float = 120.0  # fresh-DH rekey period, data and control (--rekey-interval)
    offload: bool = True  # UDP GSO/GRO on the data plane (--no-offload: per datagram)
    clamp_mss: bool = True  # lower TCP SYNs' MSS to the link's path MTU (tinc's ClampMSS)
    dns: bool = True  # serve the micro DNS (--no-dns: the "dns" channel still runs)
    dns_listen: tuple[str, ...] = ()  # ADDR[:PORT] each; empty: the --ip address, port 53
    dns_domain: str = "sleeve.local."
    dns_ttl: int = 1
    dns_one_address: bool = False  # answer one random address instead of all, shuffled
    dns_rate: float = 500.0  # queries/s per client address (burst twice that); 0: no limit
    encrypt: bool = True  # False (--no-encryption): members authenticated, data in clear
    ipalloc_range: str = DEFAULT_IPALLOC_RANGE
    ipalloc_default_subnet: str | None = None  # None: the whole range
    ipalloc_init: str = ""  # consensus=N|seed=ID,...|observer; "": consensus=len(peers)+1
    docker_plugin: bool = False  # serve the Docker network + IPAM plugin (sleeve.docker)
    docker_plugin_socket: str = DEFAULT_DOCKER_PLUGIN_SOCKET
    docker_api: str = "/var/run/docker.sock"  # dockerd's API: containers' names ("": none)
    docker_plugin_record: str = ""  # append the requests dockerd sends here (tests, debugging)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def encrypted(self) -> bool:
        """Data and control are encrypted: a password, and no --no-encryption."""
        return self.psk is not None and self.encrypt

    @property
    def open(self) -> bool:
        """No password: anyone who reaches the port can join (only with --open)."""
        return self.psk is None

    @property
    def membership(self) -> str:
        return ("OPEN (--open): anyone who reaches the port can join" if self.open
                else "password: only routers that know it can join")


    def summary(self) -> dict[str, Any]:
        """What ``sleeve report`` shows of the configuration: never the password or keys."""
        return {"port": self.port, "listen": self.listen, "iface": self.iface,
                "bridge": self.bridge, "attach": self.attach, "ip": self.ip, "mtu": self.mtu,
                "state_dir": str(self.state_dir), "nickname": self.nickname,
                "encrypted": self.encrypted, "peers": [str(p) for p in self.peers],
                "http": self.http, "api_socket": self.api_socket,
                "api_group": self.api_group, "dns": self.dns,
                "dns_listen": list(self.dns_listen), "dns_domain": self.dns_domain,
                "dns_ttl": self.dns_ttl, "dns_one_address": self.dns_one_address,
                "dns_rate": self.dns_rate, "ipalloc_range": self.ipalloc_range,
                "ipalloc_default_subnet": self.ipalloc_default_subnet,
                "ipalloc_init": self.ipalloc_init}


def parse_target(text: str, default_port: int = DEFAULT_PORT) -> Target:
    """host, host:port, [v6]:port or a bare IPv6 address."""
    t = text.strip()
    if not t:
        raise ConfigError("empty peer address")
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep:
            raise ConfigError(f"bad peer address {text!r}: missing ']'")
        port = _port(rest[1:], text) if rest.startswith(":") else default_port
        return Target(host, port)
    if t.count(":") == 1:
        host, p = t.split(":")
        return Target(host, _port(p, text))
    return Target(t, default_port)


def _port(p: str, text: str) -> int:
    try:
        n = int(p)
    except ValueError:
        raise ConfigError(f"bad port in {text!r}") from None
    if not 0 < n < 65536:
        raise ConfigError(f"port out of range in {text!r}")
    return n


def check_cidr(text: str) -> str:
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        raise ConfigError(f"--ip needs an address with prefix length, like 198.19.0.1/24: "
                          f"{text!r}") from None
    if "/" not in text:
        raise ConfigError(f"--ip needs a prefix length, like {text}/24")
    return text


def check_subnets(text: str) -> tuple[str, ...]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ConfigError(f"--trusted-subnets needs CIDRs like 198.18.0.0/16: "
                              f"{part!r}") from None
    return tuple(out)


def check_dns_listen(specs: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``--dns-listen`` (a comma or space separated list, or a list of them) -> ADDR[:PORT]s."""
    from sleeve.dns.server import parse_listen

    parts = [specs] if isinstance(specs, str) else list(specs)
    out = []
    for part in " ".join(parts).replace(",", " ").split():
        try:
            parse_listen(part)
        except ValueError:
            raise ConfigError(f"--dns-listen needs ADDR[:PORT] (IPv6 as [ADDR]:PORT), like "
                              f"198.19.0.1:53: {part!r}") from None
        out.append(part)
    return tuple(out)


def check_dns_domain(text: str) -> str:
    """``--dns-domain`` as an absolute name with the trailing dot."""
    from sleeve.dns.names import BadName, check_name

    try:
        return check_name(text) + "."
    except BadName as e:
        raise ConfigError(f"--dns-domain: {e}") from None


def check_host_port(text: str, what: str) -> tuple[str, int]:
    t = parse_target(text, 0)
    if t.port == 0:
        raise ConfigError(f"{what} needs host:port, got {text!r}")
    return t.host, t.port


def ipalloc_init_text(cfg: Config) -> str:
    """``--ipalloc-init``, defaulting as Weave: consensus among us and the peers given."""
    return cfg.ipalloc_init or f"consensus={len(cfg.peers) + 1}"


def parse_peer_name(text: str) -> bytes:
    """A peer id as ``sleeve status peers`` shows it (``3a:9f:...``), or the same in plain hex.

    Nicknames are not accepted at launch: they are learnt from the mesh, later."""
    h = text.strip().replace(":", "")
    try:
        b = bytes.fromhex(h)
    except ValueError:
        b = b""
    if len(b) != 8:
        raise ConfigError(f"--ipalloc-init seed= needs peer ids as `sleeve status peers` shows "
                          f"them (16 hex digits, colons optional): {text!r}")
    return b


def underlay_from_config(cfg: Config) -> list[ipaddress.IPv4Network]:
    """The underlay addresses the configuration names: a specific --listen address and the
    peers given as IPv4 literals (host names are not resolved here)."""
    out = []
    for h in [cfg.listen, *(t.host for t in cfg.peers)]:
        try:
            a = ipaddress.ip_address(h)
        except ValueError:
            continue
        if isinstance(a, ipaddress.IPv4Address) and not a.is_unspecified:
            out.append(ipaddress.IPv4Network(a))
    return out


def check_ipalloc(cfg: Config, host_networks: list[ipaddress.IPv4Network] | None = None,
                  ) -> None:
    """The IPAM options against each other, the underlay and the TAP address (one line each).

    ``host_networks``: the networks of this host's interface addresses (the launch passes
    them, read by netlink); the configuration's own underlay addresses are always checked."""
    from sleeve.ipam.consensus import parse_init
    from sleeve.ipam.validate import IpamError, parse_range, parse_subnet

    try:
        net = parse_range(cfg.ipalloc_range, [*underlay_from_config(cfg), *(host_networks or [])])
    except IpamError as e:
        raise ConfigError(f"--ipalloc-range: {e}") from None
    try:
        if cfg.ipalloc_default_subnet:
            parse_subnet(cfg.ipalloc_default_subnet, net)
    except IpamError as e:
        raise ConfigError(f"--ipalloc-default-subnet: {e}") from None
    try:
        parse_init(ipalloc_init_text(cfg), parse_peer_name)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.ip:
        a = ipaddress.ip_interface(cfg.ip).ip
        if a in net:
            raise ConfigError(f"--ip {cfg.ip} is inside --ipalloc-range {net}: IPAM could hand "
                              f"that address out again (take the host's overlay address from "
                              f"IPAM with `sleeve expose`, or choose a range without it)")
