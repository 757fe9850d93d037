"""Start-up capability probe: can this host run the fast datapath?

Creates, and always deletes, a throwaway bridge and VXLAN device with unique names,
exercising everything the real datapath needs: both device kinds, enslaving,
port isolation (Linux >= 4.18) and binding the VXLAN UDP port (bringing the device
up fails with EADDRINUSE if another program holds the port). Runs on its own short-lived
netlink worker thread, so it is safe to call from inside the running event loop
(it blocks for the few milliseconds the probe takes; ``aprobe`` does not). Never raises.
"""

from __future__ import annotations

import errno
import secrets
from dataclasses import dataclass
from typing import Any

from sleeve.fastdp.datapath import DEFAULT_PORT
from sleeve.fastdp.netlink import NetlinkWorker, describe, nl_errno


@dataclass(frozen=True, slots=True)
class Capability:
    ok: bool
    reason: str  # shown by status: "vxlan and bridge available" or why not


_STEP_HINTS = {
    errno.EOPNOTSUPP: "the kernel lacks this device type (modprobe {kind}?)",
    errno.EPERM: "not permitted (needs CAP_NET_ADMIN)",
    errno.EACCES: "not permitted (needs CAP_NET_ADMIN)",
    errno.EADDRINUSE: "UDP port {port} is already in use by another program",
}


def _explain(e: BaseException, step: str, kind: str, port: int) -> str:
    code = nl_errno(e)
    hint = _STEP_HINTS.get(code) if code is not None else None
    detail = hint.format(kind=kind, port=port) if hint else describe(e)
    return f"cannot {step}: {detail}"


def _run_probe(ipr: Any, port: int, family: int) -> Capability:
    tag = secrets.token_hex(4)
    br, vx = f"slvpb{tag}", f"slvpx{tag}"
    vni = (1 << 23) | secrets.randbelow(1 << 23)  # unlikely to clash with a real VNI
    made: list[str] = []
    step, kind = "create a bridge", "bridge"
    try:
        ipr.link("add", ifname=br, kind="bridge")
        made.append(br)
        step, kind = "create a VXLAN device", "vxlan"
        spec: dict[str, Any] = dict(ifname=vx, kind="vxlan", vxlan_id=vni, vxlan_port=port,
                                    vxlan_learning=0)
        if family == 6:
            spec["vxlan_local6"] = "::1"
        ipr.link("add", **spec)
        made.insert(0, vx)
        bi, vi = ipr.link_lookup(ifname=br)[0], ipr.link_lookup(ifname=vx)[0]
        step = "add a VXLAN device to a bridge"
        ipr.link("set", index=vi, master=bi)
        step = "isolate a bridge port (Linux >= 4.18)"
        ipr.brport("set", index=vi, isolated=1)
        step = f"bind VXLAN to UDP port {port}"
        ipr.link("set", index=vi, state="up")
    except Exception as e:
        return Capability(False, _explain(e, step, kind, port))
    finally:
        for name in made:
            try:
                idx = ipr.link_lookup(ifname=name)
                if idx:
                    ipr.link("del", index=idx[0])
            except Exception:  # best effort; the names are unique, nothing else uses them
                pass
    return Capability(True, f"vxlan and bridge available (UDP port {port})")


def probe(port: int = DEFAULT_PORT, family: int = 4, timeout: float = 10.0) -> Capability:
    """Can we create a VXLAN device on ``port`` and a bridge here? Never raises."""
    worker = NetlinkWorker("sleeve-fastdp-probe")
    try:
        return worker.call(lambda ipr: _run_probe(ipr, port, family), timeout)
    except Exception as e:
        return Capability(False, f"probe failed: {describe(e)}")
    finally:
        worker.close(1.0)


async def aprobe(port: int = DEFAULT_PORT, family: int = 4,
                 timeout: float = 10.0) -> Capability:
    """:func:`probe` without blocking the running event loop."""
    worker = NetlinkWorker("sleeve-fastdp-probe")
    try:
        return await worker.acall(lambda ipr: _run_probe(ipr, port, family), timeout)
    except Exception as e:
        return Capability(False, f"probe failed: {describe(e)}")
    finally:
        worker.close(0.0)
