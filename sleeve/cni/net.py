"""``sleeve-net``: the CNI plugin that attaches a container to the sleeve router's bridge.

Network config (what ``sleeve cni install`` writes; every field but name/type optional)::

    {"cniVersion": "1.0.0", "name": "sleeve", "type": "sleeve-net",
     "api": "/run/sleeve/sleeve.sock" (the router's API socket), "mtu": 0 (0: the bridge's),
     "hairpinMode": true,      "ipMasq": false,
     "ipam": {"type": "sleeve-ipam"}}           (any IPAM plugin, exec'd from CNI_PATH)

One ADD, step by step (host = the namespace the router and the plugin run in)::

    1  CNI_NETNS exists?                              no -> code 3
    2  GET /bridge: bridge name, MTU, router address   router down -> code 11, at once
    3  exec IPAM plugin (ADD, same stdin)              its error is ours
    4  veth pair: "vsl<hash(id,ifname)>" on the host, CNI_IFNAME in the container;
       host end: bridge port, hairpin, up; both ends: the MTU
    5  in the container: addresses, up, a link route to the router's address when it
       is outside the container's prefix (DNS and gateway are always reachable),
       the IPAM routes (gateway: the IPAM's, else the router's address)
    6  ipMasq: nft masquerade for the container's subnet leaving it (done here, by
       running `nft`: the router never shells out, a plugin may)
    7  POST /dns/add K8S_POD_NAME -> the container's address
    8  record (dataDir), result: interfaces [bridge, host veth, container], ips, dns
    any failure after 3: undo 4-7 and IPAM DEL, then report the error

DEL is idempotent: it removes what is there (host veth, DNS name, address via IPAM DEL)
and succeeds when nothing is. A router that is down fails DEL with code 11 only when
our record says a DNS name is still registered (the record stays for a later DEL or GC).
GC: for recorded attachments not in ``cni.dev/valid-attachments``, the same as DEL,
then the IPAM plugin's GC.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from typing import Any

from sleeve.attach import add_bridge_veth, delete_link, link_exists
from sleeve.cni import spec
from sleeve.cni.api import Records, RouterApi, api_address, data_dir
from sleeve.cni.ipam import dns_of, router_ip
from sleeve.cni.spec import (
    INVALID_CONFIG,
    IO_FAILURE,
    LIMITED,
    NOT_AVAILABLE,
    TRY_AGAIN,
    UNKNOWN_CONTAINER,
    CniError,
    Request,
)

KIND = "net"
DELEGATE_TIMEOUT = 60.0


# ---------------------------------------------------------------- config


def _ipam_type(req: Request) -> str:
    ipam = req.config.get("ipam")
    t = ipam.get("type") if isinstance(ipam, dict) else None
    if not isinstance(t, str) or not t or "/" in t:
        raise CniError(INVALID_CONFIG, "sleeve-net needs an ipam section with a plugin type")
    return t


def _flag(req: Request, key: str, default: bool) -> bool:
    v = req.config.get(key, default)
    if not isinstance(v, bool):
        raise CniError(INVALID_CONFIG, f"{key} must be true or false")
    return v


def _mtu(req: Request, bridge_mtu: int) -> int:
    v = req.config.get("mtu", 0)
    if not isinstance(v, int) or isinstance(v, bool) or not (v == 0 or 576 <= v <= 65535):
        raise CniError(INVALID_CONFIG, "mtu must be 0 (the overlay's) or 576..65535")
    return v or bridge_mtu


def host_veth(cid: str, ifname: str) -> str:
    """Deterministic host-side name: DEL and GC find it without any state."""
    return "vsl" + hashlib.sha256(f"{cid}/{ifname}".encode()).hexdigest()[:12]


# ---------------------------------------------------------------- delegation


def delegate(req: Request, command: str, plugin: str | None = None) -> dict[str, Any] | None:
    """Run the IPAM plugin from CNI_PATH with our stdin and env (spec: delegation)."""
    name = plugin or _ipam_type(req)
    exe = next((os.path.join(d, name) for d in req.path
                if os.access(os.path.join(d, name), os.X_OK)), None)
    if exe is None:
        raise CniError(INVALID_CONFIG, f"IPAM plugin {name} not found in CNI_PATH",
                       ":".join(req.path))
    env = {**req.env, "CNI_COMMAND": command}
    try:
        p = subprocess.run([exe], input=req.raw, env=env, capture_output=True,
                           timeout=DELEGATE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise CniError(TRY_AGAIN, f"IPAM plugin {name} did not answer {command} within "
                       f"{DELEGATE_TIMEOUT:.0f} s") from None
    except OSError as e:
        raise CniError(IO_FAILURE, f"cannot run IPAM plugin {exe}: {e.strerror}") from None
    try:
        out = json.loads(p.stdout) if p.stdout.strip() else None
    except ValueError:
        out = None
    if p.returncode != 0:
        if isinstance(out, dict) and isinstance(out.get("code"), int):
            raise CniError(out["code"], f"{name}: {out.get('msg', '')}",
                           str(out.get("details", "")))
        raise CniError(IO_FAILURE, f"IPAM plugin {name} failed {command} "
                       f"(exit {p.returncode})", p.stderr.decode(errors="replace")[-300:])
    if out is not None and not isinstance(out, dict):
        raise CniError(spec.DECODE, f"IPAM plugin {name} answered no JSON object")
    return out


# ---------------------------------------------------------------- netlink (pyroute2)


def _attach(req: Request, bridge: str, mtu: int, hairpin: bool,
            ips: list[dict[str, Any]], routes: list[dict[str, Any]],
            router: str | None) -> tuple[str, str, str]:
    """Steps 4 and 5; returns (bridge MAC, host veth MAC, container MAC)."""
    from pyroute2 import IPRoute, NetNS

    host = host_veth(req.container_id, req.ifname)
    with IPRoute() as ipr:
        try:
            idx = add_bridge_veth(ipr, host, req.ifname, bridge, mtu, hairpin=hairpin,
                                  peer_netns=req.netns)
        except LookupError as e:
            raise CniError(IO_FAILURE, str(e)) from None
        except FileExistsError:
            raise CniError(INVALID_CONFIG, f"{req.ifname} already exists in the "
                           "container") from None
        br = ipr.link_lookup(ifname=bridge)
        br_mac = ipr.get_links(br[0])[0].get_attr("IFLA_ADDRESS")
        host_mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    with NetNS(req.netns) as ns:
        c = ns.link_lookup(ifname=req.ifname)[0]
        prefixes = []
        for ip in ips:
            iface = ipaddress.ip_interface(ip["address"])
            prefixes.append(iface.network)
            ns.addr("add", index=c, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        ns.link("set", index=c, state="up")
        lo = ns.link_lookup(ifname="lo")
        if lo:
            ns.link("set", index=lo[0], state="up")
        if router is not None and not any(ipaddress.ip_address(router) in n
                                          for n in prefixes):
            plen = 32 if ipaddress.ip_address(router).version == 4 else 128
            ns.route("add", dst=f"{router}/{plen}", oif=c, scope=253)  # scope link
        gw_default = next((i["gateway"] for i in ips if i.get("gateway")), None)
        for r in routes:
            gw = r.get("gw") or gw_default
            dst = str(ipaddress.ip_network(r["dst"], strict=False))
            kw: dict[str, Any] = {"gateway": gw} if gw else {"oif": c, "scope": 253}
            ns.route("add", dst=dst, **kw)
        c_mac = ns.get_links(c)[0].get_attr("IFLA_ADDRESS")
    return br_mac, host_mac, c_mac


def _detach(req: Request) -> None:
    """Remove the veth pair wherever an end of it still is; nothing there is fine."""
    from pyroute2 import IPRoute, NetNS

    with IPRoute() as ipr:
        host = host_veth(req.container_id, req.ifname)
        if link_exists(ipr, host):
            with contextlib.suppress(Exception):  # gone meanwhile (container torn down)
                delete_link(ipr, host)
            return
    if req.netns and os.path.exists(req.netns):
        with NetNS(req.netns) as ns:
            idx = ns.link_lookup(ifname=req.ifname)
            if not idx:
                return
            info = ns.get_links(idx[0])[0].get_attr("IFLA_LINKINFO")
            if info is not None and info.get_attr("IFLA_INFO_KIND") == "veth":
                with contextlib.suppress(Exception):
                    ns.link("del", index=idx[0])


def masquerade_script(network: str, subnet: str) -> str:
    """nft: traffic from ``subnet`` leaving it is masqueraded (one rule per network)."""
    net = ipaddress.ip_network(subnet, strict=False)
    fam = "ip" if net.version == 4 else "ip6"
    return (f"add table {fam} sleeve_cni\n"
            f"add chain {fam} sleeve_cni postrouting {{ type nat hook postrouting "
            f"priority srcnat; }}\n"
            f"add rule {fam} sleeve_cni postrouting {fam} saddr {net} {fam} daddr != {net} "
            f"masquerade comment \"sleeve:{network}\"\n")


def _masquerade(network: str, subnet: str) -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    fam = "ip" if ipaddress.ip_network(subnet, strict=False).version == 4 else "ip6"
    have = subprocess.run([nft, "list", "table", fam, "sleeve_cni"], capture_output=True,
                          text=True, timeout=10, check=False)
    if f"sleeve:{network}" in have.stdout and subnet in have.stdout:
        return
    p = subprocess.run([nft, "-f", "-"], input=masquerade_script(network, subnet),
                       capture_output=True, text=True, timeout=10, check=False)
    if p.returncode != 0:
        raise CniError(IO_FAILURE, "ipMasq: nft failed", p.stderr.strip()[-300:])
    with contextlib.suppress(OSError), open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")


# ---------------------------------------------------------------- commands


def _dns_name(req: Request) -> str | None:
    from sleeve.dns.names import BadName, check_name

    name = req.args.get("K8S_POD_NAME", "")
    if not name:
        return None
    try:
        return check_name(name)
    except BadName as e:
        print(f"sleeve-net: not registering {name!r} in DNS: {e}", file=sys.stderr)
        return None


def _router(req: Request) -> tuple[RouterApi, dict[str, Any]]:
    api = RouterApi(api_address(req.config))
    info = api.call("bridge")
    return api, info


def add(req: Request) -> dict[str, Any]:
    _ipam_type(req)
    hairpin, masq = _flag(req, "hairpinMode", True), _flag(req, "ipMasq", False)
    if not os.path.exists(req.netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {req.netns} does not exist")
    api, info = _router(req)
    bridge = info.get("bridge")
    if not isinstance(bridge, str) or not bridge:
        raise CniError(IO_FAILURE, f"the sleeve router has no bridge ({info.get('state')}): "
                       "launch it without --no-bridge")
    want = req.config.get("bridge")
    if want not in (None, "", bridge):
        raise CniError(INVALID_CONFIG, f"bridge {want!r} is not the router's ({bridge})")
    mtu = _mtu(req, int(info.get("mtu") or 1406))
    ipam = delegate(req, "ADD") or {}
    done: list[str] = []
    try:
        ips = [i for i in ipam.get("ips", []) if isinstance(i, dict) and "address" in i]
        if not ips:
            raise CniError(IO_FAILURE, "the IPAM plugin returned no address")
        routes = [r for r in ipam.get("routes", []) or [] if isinstance(r, dict) and "dst" in r]
        router = router_ip(info)
        try:
            br_mac, host_mac, c_mac = _attach(req, bridge, mtu, hairpin, ips, routes, router)
        except CniError:
            raise
        except Exception as e:
            raise CniError(IO_FAILURE, f"attaching {req.ifname}: {e}") from None
        done.append("veth")
        if masq:
            _masquerade(req.network, str(ipaddress.ip_interface(ips[0]["address"]).network))
        name = _dns_name(req)
        first = str(ipaddress.ip_interface(ips[0]["address"]).ip)
        if name is not None:
            api.call("dns_add", name=name, address=first, id=req.container_id)
            done.append("dns")
        Records(data_dir(req.config), req.network, KIND).put(
            req.container_id, req.ifname, {"hostVeth": host_veth(req.container_id, req.ifname),
                                           "name": name, "address": first,
                                           "netns": req.netns})
    except BaseException:
        _undo(req, api, done)
        raise
    dns = ipam.get("dns") if isinstance(ipam.get("dns"), dict) else None
    if not dns or not dns.get("nameservers"):
        dns = dns_of(info)
    return {"cniVersion": req.version,
            "interfaces": [{"name": bridge, "mac": br_mac},
                           {"name": host_veth(req.container_id, req.ifname), "mac": host_mac},
                           {"name": req.ifname, "mac": c_mac, "sandbox": req.netns}],
            "ips": [{**i, "interface": 2} for i in ips], "routes": routes, "dns": dns}


def _undo(req: Request, api: RouterApi, done: list[str]) -> None:
    """Best effort after a failed ADD: the error being reported is the one that matters."""
    if "dns" in done:
        name = _dns_name(req)
        with contextlib.suppress(CniError):
            api.call("dns_remove", name=name or "")
    with contextlib.suppress(Exception):
        _detach(req)
    with contextlib.suppress(CniError):
        delegate(req, "DEL")


def delete(req: Request) -> None:
    recs = Records(data_dir(req.config), req.network, KIND)
    rec = recs.get(req.container_id, req.ifname) or {}
    try:
        _detach(req)
    except Exception as e:
        raise CniError(IO_FAILURE, f"removing {req.ifname}: {e}") from None
    _forget(req, rec)
    delegate(req, "DEL")
    recs.drop(req.container_id, req.ifname)
    return None


def _forget(req: Request, rec: dict[str, Any]) -> None:
    """Take the container's DNS name back (from our record, else from CNI_ARGS)."""
    name = rec.get("name") or _dns_name(req)
    if not name:
        return
    try:
        api = RouterApi(api_address(req.config))
        api.call("dns_remove", name=str(name), address=str(rec.get("address") or ""))
    except CniError as e:
        if e.code == TRY_AGAIN and not rec.get("name"):
            return  # nothing recorded as registered: nothing to take back
        raise


def check(req: Request) -> None:
    if not os.path.exists(req.netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {req.netns} does not exist")
    rec = Records(data_dir(req.config), req.network, KIND).get(req.container_id, req.ifname)
    if rec is None:
        raise CniError(UNKNOWN_CONTAINER, f"container {req.container_id} has no {req.ifname} "
                       f"on network {req.network}")
    _, info = _router(req)
    from pyroute2 import IPRoute, NetNS

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=str(rec.get("hostVeth")))
        br = ipr.link_lookup(ifname=str(info.get("bridge")))
        if not idx or not br or ipr.get_links(idx[0])[0].get_attr("IFLA_MASTER") != br[0]:
            raise CniError(IO_FAILURE, f"{rec.get('hostVeth')} is not a port of "
                           f"{info.get('bridge')}")
    with NetNS(req.netns) as ns:
        c = ns.link_lookup(ifname=req.ifname)
        have = {a.get_attr("IFA_ADDRESS") for a in ns.get_addr(index=c[0])} if c else set()
    if rec.get("address") not in have:
        raise CniError(IO_FAILURE, f"{req.ifname} lost its address {rec.get('address')}")
    delegate(req, "CHECK")
    return None


def status(req: Request) -> None:
    try:
        _, info = _router(req)
    except CniError as e:
        recs = Records(data_dir(req.config), req.network, KIND).all()
        raise CniError(LIMITED if recs else NOT_AVAILABLE, e.msg, e.details) from None
    if not info.get("bridge"):
        raise CniError(NOT_AVAILABLE, f"the sleeve router has no bridge ({info.get('state')})")
    delegate(req, "STATUS")
    return None


def gc(req: Request) -> None:
    valid = req.valid_attachments()
    recs = Records(data_dir(req.config), req.network, KIND)
    for rec in recs.all():
        cid, ifname = rec["containerID"], rec["ifname"]
        if (cid, ifname) in valid:
            continue
        stale = Request("DEL", cid, "", ifname, {}, req.path, req.config, req.raw, req.env)
        _detach(stale)
        _forget(stale, rec)
        recs.drop(cid, ifname)
    delegate(req, "GC")
    return None


HANDLERS: dict[str, spec.Handler] = {"ADD": add, "DEL": delete, "CHECK": check,
                                     "STATUS": status, "GC": gc}


def main() -> int:
    return spec.main("sleeve-net", HANDLERS)


if __name__ == "__main__":
    sys.exit(main())
