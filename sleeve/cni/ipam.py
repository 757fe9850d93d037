"""``sleeve-ipam``: a CNI IPAM plugin whose addresses come from the sleeve router's IPAM.

Used by ``sleeve-net`` (delegated, per the spec) or under any main plugin, e.g. the
reference ``bridge``::

    "ipam": {"type": "sleeve-ipam",
             "subnet": "10.32.1.0/24",       (optional: else the router's default subnet)
             "routes": [{"dst": "0.0.0.0/0"}],  (optional: gateway = the router's address)
             "api": "/run/sleeve/sleeve.sock",  (optional: the router's API socket)
             "dataDir": "/var/lib/cni/sleeve"}  (optional: our records)

    ADD     GET /bridge (router address, DNS) -> POST /ipam/allocate?id=CONTAINERID -> record
            -> {"ips": [{"address", "gateway"}], "routes", "dns"}
    DEL     POST /ipam/release?id=CONTAINERID -> drop the record. Router down: succeeds if we
            hold no record (nothing was allocated), else code 11 (the record stays for GC)
    CHECK   the record exists (else 3) and prevResult carries its address (else 7)
    STATUS  the router answers (else 50)
    GC      release every recorded attachment not in cni.dev/valid-attachments

Addresses are keyed by container ID (the router hands the same address to the same ID).
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Any

from sleeve.cni import spec
from sleeve.cni.api import Records, RouterApi, api_address, data_dir
from sleeve.cni.spec import INVALID_CONFIG, NOT_AVAILABLE, TRY_AGAIN, CniError, Request

KIND = "ipam"
DEFAULT_SEARCH = "sleeve.local"


def _ipam_conf(req: Request) -> dict[str, Any]:
    ipam = req.config.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(INVALID_CONFIG, "network config needs an ipam section")
    return ipam


def _subnet(ipam: dict[str, Any]) -> str:
    s = ipam.get("subnet", "")
    if s in ("", None):
        return ""
    try:
        return str(ipaddress.ip_network(str(s), strict=True))
    except ValueError:
        raise CniError(INVALID_CONFIG, f"ipam.subnet is not a network: {str(s)[:60]!r}") from None


def _routes(ipam: dict[str, Any]) -> list[dict[str, str]]:
    raw = ipam.get("routes", [])
    if not isinstance(raw, list):
        raise CniError(INVALID_CONFIG, "ipam.routes must be a list")
    out = []
    for r in raw:
        try:
            dst = str(ipaddress.ip_network(r["dst"], strict=False))
            route = {"dst": dst}
            if r.get("gw"):
                route["gw"] = str(ipaddress.ip_address(r["gw"]))
        except (TypeError, KeyError, ValueError):
            raise CniError(INVALID_CONFIG, f"bad ipam route {str(r)[:80]}") from None
        out.append(route)
    return out


def dns_of(info: dict[str, Any]) -> dict[str, Any]:
    """The result's ``dns`` from ``GET /bridge``: the router's DNS, search its domain."""
    dns = info.get("dns") if isinstance(info.get("dns"), dict) else {}
    servers = [s for s in (dns or {}).get("nameservers", []) if isinstance(s, str)]
    domain = (dns or {}).get("domain") or DEFAULT_SEARCH
    return {"nameservers": servers, "search": [str(domain)]}


def router_ip(info: dict[str, Any]) -> str | None:
    try:
        return str(ipaddress.ip_interface(str(info.get("address"))).ip)
    except ValueError:
        return None


def _records(req: Request) -> Records:
    return Records(data_dir(req.config, ipam_plugin=True), req.network, KIND)


def _api(req: Request) -> RouterApi:
    return RouterApi(api_address(req.config))


def add(req: Request) -> dict[str, Any]:
    ipam = _ipam_conf(req)
    subnet, routes = _subnet(ipam), _routes(ipam)
    api = _api(req)
    info = api.call("bridge")
    got = api.call("allocate", id=req.container_id, subnet=subnet)
    try:
        addr = ipaddress.ip_interface(str(got.get("address")))
    except ValueError:
        raise CniError(spec.IO_FAILURE, "sleeve router answered no address",
                       str(got)[:200]) from None
    _records(req).put(req.container_id, req.ifname, {"address": str(addr),
                                                      "id": req.container_id})
    ip: dict[str, Any] = {"address": str(addr)}
    gw = router_ip(info)
    if gw is not None and ipaddress.ip_address(gw).version == addr.version:
        ip["gateway"] = gw
    return {"cniVersion": req.version, "ips": [ip], "routes": routes, "dns": dns_of(info)}


def delete(req: Request) -> None:
    recs = _records(req)
    rec = recs.get(req.container_id, req.ifname)
    try:
        _api(req).call("release", id=req.container_id)
    except CniError as e:
        if e.code == TRY_AGAIN and rec is None:
            return None  # router down and nothing recorded: nothing of ours to release
        raise
    recs.drop(req.container_id, req.ifname)
    return None


def check(req: Request) -> None:
    rec = _records(req).get(req.container_id, req.ifname)
    if rec is None:
        raise CniError(spec.UNKNOWN_CONTAINER, f"no address recorded for container "
                       f"{req.container_id} {req.ifname} on network {req.network}")
    prev = req.config.get("prevResult")
    ips = prev.get("ips", []) if isinstance(prev, dict) else []
    if not any(isinstance(i, dict) and i.get("address") == rec.get("address") for i in ips):
        raise CniError(INVALID_CONFIG, f"prevResult does not carry {rec.get('address')}")
    return None


def status(req: Request) -> None:
    try:
        _api(req).call("bridge")
    except CniError as e:
        raise CniError(NOT_AVAILABLE, e.msg, e.details) from None
    return None


def gc(req: Request) -> None:
    valid = req.valid_attachments()
    recs = _records(req)
    api = _api(req)
    for rec in recs.all():
        cid, ifname = rec["containerID"], rec["ifname"]
        if (cid, ifname) in valid:
            continue
        if any(v == cid for v, _ in valid):  # the address is keyed by container: still used
            recs.drop(cid, ifname)
            continue
        api.call("release", id=str(rec.get("id") or cid))
        recs.drop(cid, ifname)
    return None


HANDLERS: dict[str, spec.Handler] = {"ADD": add, "DEL": delete, "CHECK": check,
                                     "STATUS": status, "GC": gc}


def main() -> int:
    return spec.main("sleeve-ipam", HANDLERS)


if __name__ == "__main__":
    sys.exit(main())
