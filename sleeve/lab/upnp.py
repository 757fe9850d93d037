"""A port-mapping gateway for the lab: Debian's miniupnpd (NAT-PMP, PCP, UPnP IGD) and the
STUN server it needs to believe its outside address (test tooling, never imported by the router).

miniupnpd refuses to map ports when its outside address is private or reserved, and the
lab's underlay, 198.18.0.0/16, is reserved (benchmarking). With ``ext_perform_stun=yes`` it
instead asks a STUN server (RFC 5780-style: four binding requests, with and without
CHANGE-REQUEST's change-IP/change-port flags) and maps when all four answers come back
and show its own address and ports unchanged: "unrestricted". Debian's ``stund``
(package ``stun-server``) answers from a second address and port, so the public host
gets two addresses.

miniupnpd is run by hand in the gateway's namespace with a private config, lease file
and pid file, stopped by PID (``Host.stop``); its nftables chains live in the table
``inet slv_upnp`` of that namespace and go with it.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import time

from sleeve.lab.guard import check_ifname, check_ip
from sleeve.lab.netns import Host, LabError

STUN_PORT = 3478  # stund's primary port; its alternate is 3479

_CONF = """ext_ifname={out}
{listen}
enable_natpmp={natpmp}
enable_upnp={upnp}
ext_perform_stun=yes
ext_stun_host={stun}
ext_stun_port={stun_port}
secure_mode=yes
system_uptime=yes
http_port={http_port}
lease_file={wd}/miniupnpd-{name}.leases
upnp_table_name=slv_upnp
upnp_nat_table_name=slv_upnp
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07d
allow 1024-65535 198.18.0.0/16 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""

# miniupnpd (nftables backend) adds its rules to chains it expects to exist; the base
# chains jump to them. Forwarding a mapped port also needs the lab NAT's own forward
# chain (``Lab.nat``: outside to inside only when established) to let DNAT'ed flows
# through, as a home router's firewall does ("ct status dnat accept").
_NFT = """add table inet slv_upnp
add chain inet slv_upnp forward { type filter hook forward priority -1; }
add chain inet slv_upnp miniupnpd
add rule inet slv_upnp forward jump miniupnpd
add chain inet slv_upnp prerouting { type nat hook prerouting priority -100; }
add chain inet slv_upnp postrouting { type nat hook postrouting priority 100; }
add chain inet slv_upnp prerouting_miniupnpd
add chain inet slv_upnp postrouting_miniupnpd
add rule inet slv_upnp prerouting jump prerouting_miniupnpd
add rule inet slv_upnp postrouting jump postrouting_miniupnpd
insert rule ip slv_nat nat_forward ct status dnat accept
"""


def need(tool: str, package: str) -> None:
    """Fail loudly (never skip) when a lab tool is missing."""
    if shutil.which(tool) is None:
        raise LabError(f"{tool} missing: ./install.sh --test installs {package}")


def start_stund(host: Host, primary: str, alternate: str) -> subprocess.Popen[bytes]:
    """Debian's stund on ``primary`` and ``alternate`` (both already on ``host``), ports
    3478/3479; stopped with the lab (or ``host.stop``)."""
    need("stund", "stun-server")
    return host.popen("stund", "-h", check_ip(primary), "-a", check_ip(alternate))


class Miniupnpd:
    """miniupnpd in ``gw``'s namespace; ``gw`` must already be a ``Lab.nat`` gateway."""

    def __init__(self, gw: Host, out: str, inside: list[str], wd: pathlib.Path, stun: str, *,
                 natpmp: bool = True, upnp: bool = False, http_port: int = 5000) -> None:
        need("miniupnpd", "miniupnpd")
        self.gw = gw
        self.wd = wd
        gw.nft(_NFT)
        listen = "\n".join(f"listening_ip={check_ifname(i)}" for i in inside)
        self.conf = wd / f"miniupnpd-{gw.name}.conf"
        self.conf.write_text(_CONF.format(
            out=check_ifname(out), listen=listen, natpmp="yes" if natpmp else "no",
            upnp="yes" if upnp else "no", stun=check_ip(stun), stun_port=STUN_PORT,
            http_port=http_port, wd=wd, name=gw.name))
        self.log_path = wd / f"miniupnpd-{gw.name}.log"
        with open(self.log_path, "ab") as log:
            # -d: foreground, logs to stderr; the pid file is private to this run
            self.proc = gw.popen("miniupnpd", "-d", "-f", str(self.conf),
                                 "-P", str(wd / f"miniupnpd-{gw.name}.pid"),
                                 stdout=log, stderr=log)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_forwarding(self, timeout: float = 15.0) -> None:
        """Until miniupnpd's STUN check says port forwarding works (it takes ~1 s)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.log()
            if "Port forwarding is now enabled" in text:
                return
            if self.proc.poll() is not None or "Port forwarding is now disabled" in text:
                break
            time.sleep(0.2)
        raise LabError(f"miniupnpd on {self.gw.name} would not forward:\n{self.log()[-2000:]}")

    def rules(self) -> str:
        """miniupnpd's current nftables chains (its mappings as DNAT rules)."""
        return self.gw.run("nft", "list", "table", "inet", "slv_upnp").stdout

    def stop(self) -> None:
        self.gw.stop(self.proc)
