"""Containers on the overlay with a real CNI client: podman (libcni, as containerd and CRI-O
use it) on three lab hosts, each with its own router, the plugins installed by
`sleeve cni install`.

Per host, everything podman uses is private and under one temporary directory: a
containers.conf (network_backend "cni", runc, cgroupfs, file events, no default ulimits:
the settings that work on this VM), a storage.conf (vfs graph root, run root), the CNI
bin dir (the reference plugins linked in, sleeve's shims written) and config dir.
Containers run from a local busybox-static rootfs (`--rootfs`, no image pull). podman runs
under `nsenter --net=/run/netns/NS` (not `ip netns exec`, which remounts /sys and hides
the cgroup mounts runc needs). Teardown, even on failure: `podman rm -af`, then any
conmon still running for our root dir (by PID), mounts under our root, network
namespaces podman made that are still there, libcni's cache entries of our containers,
and the temporary directory.

Needs root, podman, runc, busybox-static and containernetworking-plugins (Debian names):
fails, never skips, without them. Tests run in file order on one lab (module fixture);
the last one stops a router. The plugins' timing log (``"log"`` in the network config)
gives what podman sent and how long ADD and DEL took; the summary is printed (-s).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sleeve.lab import Host, Lab
from sleeve.lab.routers import Router, established_with, workdir

pytestmark = pytest.mark.lab

N = 3
UL = [f"198.18.1.{i + 1}" for i in range(N)]
OV = [f"198.19.128.{i + 1}" for i in range(N)]  # the routers' bridges: outside the IPAM range
IPAM_RANGE = "198.19.0.0/17"
ROOT = pathlib.Path(__file__).resolve().parent.parent
PODMAN_TIMEOUT = 90.0
APPLETS = ("sh", "ping", "nslookup", "sleep", "ip", "cat", "true", "hostname")
# Debug aid: run the attachment with another IPAM plugin (e.g. host-local) than the router's.
IPAM = os.environ.get("SLEEVE_LAB_CNI_IPAM", "sleeve-ipam")

_TOOLS = {"podman": "podman", "runc": "runc", "nsenter": "util-linux",
          "/bin/busybox": "busybox-static", "/usr/lib/cni/portmap": "containernetworking-plugins"}


def _missing() -> list[str]:
    why = [f"`{t}` not found (Debian package {p})" for t, p in _TOOLS.items()
           if (shutil.which(t) if "/" not in t else (t if os.path.exists(t) else None)) is None]
    if os.path.exists("/bin/busybox"):
        r = subprocess.run(["file", "-L", "/bin/busybox"], capture_output=True, text=True,
                           check=False) if shutil.which("file") else None
        if r is not None and "dynamically" in r.stdout:
            why.append("/bin/busybox is dynamically linked (install busybox-static)")
    if os.geteuid() != 0:
        why.append("not running as root")
    return why


@dataclass
class PodHost:
    host: Host
    router: Router
    dir: pathlib.Path
    env: dict[str, str]
    log: pathlib.Path

    def podman(self, *args: str, timeout: float = PODMAN_TIMEOUT,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["nsenter", f"--net=/run/netns/{self.host.netns}", "podman", *args]
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                           timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"{self.host.name}: podman {' '.join(args)} -> "
                                 f"{r.returncode}\n{r.stderr[-2000:]}")
        return r

    def api(self, path: str) -> Any:
        get = ("import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen("
               f"'http://127.0.0.1:6782{path}', timeout=5).read())")
        r = self.host.run(sys.executable, "-c", get, check=False, timeout=15)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def links(self) -> list[str]:
        out = self.host.run("ip", "-o", "link", "show").stdout
        return [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines()]

    def run_ctr(self, name: str, rootfs: pathlib.Path) -> str:
        self.podman("run", "-d", "--name", name, "--network", "sleeve", "--rootfs", str(rootfs),
                    "sleep", "600")
        r = self.podman("inspect", "-f", "{{.NetworkSettings.Networks.sleeve.IPAddress}}", name)
        return r.stdout.strip()


@dataclass
class CniLab:
    lab: Lab
    hosts: list[PodHost]
    rootfs: pathlib.Path
    root: pathlib.Path
    netns_before: set[str] = field(default_factory=set)


def _rootfs(d: pathlib.Path) -> pathlib.Path:
    for sub in ("bin", "etc", "proc", "sys", "dev", "tmp", "run"):
        (d / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", d / "bin/busybox")
    for a in APPLETS:
        os.symlink("busybox", d / "bin" / a)
    (d / "etc/passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    return d


def _podman_files(d: pathlib.Path, log: pathlib.Path, i: int, api: pathlib.Path,
                  ) -> dict[str, str]:
    bindir, confdir = d / "bin", d / "net.d"
    bindir.mkdir(parents=True)
    for p in os.listdir("/usr/lib/cni"):
        os.symlink(f"/usr/lib/cni/{p}", bindir / p)
    # each lab router has its own API socket (the hosts share one file system)
    r = subprocess.run([sys.executable, "-m", "sleeve", "cni", "install", "--bin-dir",
                        str(bindir), "--conf-dir", str(confdir), "--api", str(api)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr
    conf = json.loads((confdir / "10-sleeve.conflist").read_text())
    assert [p["type"] for p in conf["plugins"]] == ["sleeve-net", "portmap"]
    net = conf["plugins"][0]
    assert net["api"] == str(api)
    net["dataDir"] = str(d / "records")
    net["log"] = str(log)
    if IPAM != "sleeve-ipam":
        net["ipam"] = {"type": IPAM, "subnet": IPAM_RANGE, "dataDir": str(d / "ipam"),
                       "rangeStart": f"198.19.{i}.1", "rangeEnd": f"198.19.{i}.254"}
    (confdir / "10-sleeve.conflist").write_text(json.dumps(conf, indent=1))
    cc, sc = d / "containers.conf", d / "storage.conf"
    cc.write_text(f'[containers]\ndefault_ulimits = []\n'
                  f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{bindir}"]\n'
                  f'network_config_dir = "{confdir}"\n'
                  f'[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
                  f'events_logger = "file"\nevents_logfile_path = "{d}/events.log"\n'
                  f'tmp_dir = "{d}/tmp"\nvolume_path = "{d}/volumes"\n')
    sc.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{d}/graph"\nrunroot = "{d}/run"\n')
    return {**os.environ, "CONTAINERS_CONF": str(cc), "CONTAINERS_STORAGE_CONF": str(sc),
            "CONTAINERS_REGISTRIES_CONF": "/dev/null"}


def _cleanup(cl: CniLab, cache_made: bool) -> list[str]:
    """Everything podman may leave, bounded; never raises. Returns what it had to clean."""
    left: list[str] = []
    for ph in cl.hosts:
        with contextlib.suppress(Exception):
            ph.podman("rm", "-af", "-t", "0", timeout=60, check=False)
    root = str(cl.root)
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:  # conmon of our containers
        try:
            cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if root.encode() in cmd and b"conmon" in cmd.split(b"\0")[0]:
            left.append(f"conmon {pid}")
            with contextlib.suppress(OSError):
                os.kill(int(pid), 9)
    with open("/proc/mounts") as f:
        mounts = [ln.split()[1] for ln in f]
    for m in reversed(mounts):
        if m.startswith(root):
            left.append(f"mount {m}")
            subprocess.run(["umount", "-l", m], capture_output=True, timeout=10, check=False)
    for ns in sorted(set(os.listdir("/run/netns")) - cl.netns_before):
        if ns.startswith("netns-"):  # podman's naming; ours (slv-*) go with the lab
            left.append(f"netns {ns}")
            subprocess.run(["umount", "-l", f"/run/netns/{ns}"], capture_output=True,
                           timeout=10, check=False)
            with contextlib.suppress(OSError):
                os.unlink(f"/run/netns/{ns}")
    results = pathlib.Path("/var/lib/cni/results")
    if cache_made:
        shutil.rmtree("/var/lib/cni", ignore_errors=True)
    elif results.is_dir():
        ids = {json.loads(ln).get("containerID") for ph in cl.hosts if ph.log.exists()
               for ln in ph.log.read_text().splitlines()}
        for p in results.iterdir():
            if any(i and i in p.name for i in ids):
                with contextlib.suppress(OSError):
                    p.unlink()
    shutil.rmtree(cl.root, ignore_errors=True)
    return left


@pytest.fixture(scope="module")
def cl() -> Iterator[CniLab]:
    why = _missing()
    if why:
        pytest.fail("lab CNI tests cannot run: " + "; ".join(why), pytrace=False)
    root = pathlib.Path(tempfile.mkdtemp(prefix="sleeve-cni-lab-"))
    cache_made = not os.path.exists("/var/lib/cni")
    c = CniLab(Lab(), [], _rootfs(root / "rootfs"), root,
               set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set())
    try:
        with c.lab as lab:
            try:
                _build(c, lab)
                yield c
                _summary(c)
            finally:
                left = _cleanup(c, cache_made)  # inside: podman needs the namespaces
                if left:
                    print(f"\ncleaned after podman: {left}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _build(c: CniLab, lab: Lab) -> None:
    sw = lab.switch()
    hosts = [lab.host(f"p{i + 1}") for i in range(N)]
    for h, ul in zip(hosts, UL, strict=True):
        lab.connect(h, sw, f"{ul}/24")
    wd = workdir()
    for i, h in enumerate(hosts):
        d = c.root / h.name
        log = d / "cni.log"
        peers = [u for j, u in enumerate(UL) if j != i]
        ipam = ["--ipalloc-range", IPAM_RANGE] if IPAM == "sleeve-ipam" else []
        r = Router(h, ["--ip", f"{OV[i]}/16", *ipam, *peers], wd, "cni lab password")
        env = _podman_files(d, log, i, r.api_socket)
        c.hosts.append(PodHost(h, r, d, env, log))
    for ph in c.hosts:
        ph.router.wait(established_with(N - 1), 30, "full mesh")
        ph.router.wait(lambda st: st["dns"]["state"] == "serving", 10, "dns")
        ph.router.wait(lambda st: (st.get("bridge") or {}).get("up") is True, 10, "bridge")


def _entries(c: CniLab) -> list[dict[str, Any]]:
    return [json.loads(ln) for ph in c.hosts if ph.log.exists()
            for ln in ph.log.read_text().splitlines() if ln.strip()]


def _summary(c: CniLab) -> None:
    es = _entries(c)
    print(f"\npodman -> CNI: {len(es)} invocations")
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for e in es:
        seen.setdefault((e["plugin"], e["command"]), e)
    for (plugin, cmd), e in sorted(seen.items()):
        print(f"  {plugin} {cmd}: CNI_ARGS={e['args']!r} netns={e['netns']} "
              f"ifname={e['ifname']} prevResult={e['prevResult']} caller={e['caller'][:80]!r}")
    for plugin in ("sleeve-net", "sleeve-ipam"):
        for cmd in ("ADD", "DEL"):
            ms = sorted(e["ms"] for e in es if e["plugin"] == plugin and e["command"] == cmd
                        and e["exit"] == 0)
            if ms:
                p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
                print(f"  {plugin} {cmd}: n={len(ms)} median {statistics.median(ms):.1f} ms, "
                      f"p99 {p99:.1f} ms, max {ms[-1]:.1f} ms")


def _retry(fn: Any, tries: int = 15, delay: float = 0.5) -> bool:
    for _ in range(tries):
        if fn():
            return True
        time.sleep(delay)
    return False


def _dns_names(ph: PodHost) -> set[str]:
    st = ph.api("/dns") or {}
    return {r["name"].split(".")[0] for r in st.get("records", [])}


def _allocated(ph: PodHost) -> list[str]:
    """Container IDs holding an address on this host's router (IPAM status)."""
    if IPAM != "sleeve-ipam":
        d = ph.dir / "ipam"
        return [p.name for q in d.iterdir() for p in q.iterdir()
                if not p.name.startswith(("last_reserved", "lock"))] if d.exists() else []
    st = ph.api("/ipam")
    assert st is not None, f"{ph.host.name}: no IPAM status"
    return [a["id"] for a in st["allocations"]]


def test_containers_on_different_hosts_ping_by_address_and_name(cl: CniLab) -> None:
    addr = {}
    for i, ph in enumerate(cl.hosts):
        addr[f"c{i + 1}"] = ph.run_ctr(f"c{i + 1}", cl.rootfs)
    print(f"\ncontainer addresses: {addr}")
    assert len(set(addr.values())) == N and all(a.startswith("198.19.") for a in addr.values())
    for i, ph in enumerate(cl.hosts):
        me = f"c{i + 1}"
        veth = [ln for ln in ph.links() if ln.startswith("vsl")]
        assert len(veth) == 1, veth
        d = ph.host.run("ip", "-d", "link", "show", veth[0]).stdout
        assert "master sleeve" in d and "hairpin on" in d and "mtu 1406" in d, d
        rc = ph.podman("exec", me, "cat", "/etc/resolv.conf").stdout
        assert f"nameserver {OV[i]}" in rc and "sleeve.local" in rc, rc
        for other, a in addr.items():
            if other == me:
                continue
            assert _retry(lambda ph=ph, me=me, a=a: ph.podman(
                "exec", me, "ping", "-c1", "-W1", a, check=False).returncode == 0), (me, other, a)
            r = None
            for _ in range(15):  # the name travels by gossip: moments
                r = ph.podman("exec", me, "ping", "-c1", "-W1", f"{other}.sleeve.local",
                              check=False)
                if r.returncode == 0:
                    break
                time.sleep(0.5)
            assert r is not None and r.returncode == 0, (me, other, r.stdout, r.stderr)
            assert f"({a})" in r.stdout  # the name is the other container's address
    for i, ph in enumerate(cl.hosts):
        ph.podman("rm", "-f", "-t", "0", f"c{i + 1}")
    for ph in cl.hosts:
        assert _retry(lambda ph=ph: not (_dns_names(ph) & set(addr))), _dns_names(ph)


def test_twenty_containers_per_host_leave_nothing_behind(cl: CniLab) -> None:
    def churn(ph: PodHost) -> None:
        names = [f"{ph.host.name}t{k}" for k in range(20)]
        for n in names:
            ph.run_ctr(n, cl.rootfs)
        assert sum(ln.startswith("vsl") for ln in ph.links()) == 20
        ph.podman("rm", "-f", "-t", "0", *names, timeout=180)

    with concurrent.futures.ThreadPoolExecutor(N) as ex:
        for f in [ex.submit(churn, ph) for ph in cl.hosts]:
            f.result(timeout=600)
    for ph in cl.hosts:
        assert [ln for ln in ph.links() if ln.startswith("vsl")] == [], ph.links()
        assert _retry(lambda ph=ph: _dns_names(ph) == set()), _dns_names(ph)
        assert _allocated(ph) == []
        left = [str(f) for f in (ph.dir / "records").rglob("*") if f.is_file()]
        assert left == [], left  # the plugins' records of attachments
        assert ph.podman("ps", "-aq").stdout.strip() == ""
    new_ns = set(os.listdir("/run/netns")) - cl.netns_before
    assert not [n for n in new_ns if n.startswith("netns-")], new_ns
    es = _entries(cl)
    assert sum(e["command"] == "ADD" and e["exit"] == 0 for e in es) >= 20 * N
    assert sum(e["command"] == "DEL" and e["exit"] == 0 for e in es) >= 20 * N


def test_router_stopped_podman_run_fails_with_the_plugin_error(cl: CniLab) -> None:
    ph = cl.hosts[-1]
    ph.router.stop()
    t = time.monotonic()
    r = ph.podman("run", "--rm", "--name", "down", "--network", "sleeve", "--rootfs",
                  str(cl.rootfs), "true", check=False, timeout=60)
    took = time.monotonic() - t
    print(f"\npodman run with the router stopped: exit {r.returncode} after {took:.1f} s: "
          f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    assert r.returncode != 0
    assert "sleeve router not reachable" in r.stderr and "try again later" in r.stderr
    assert took < 20
    assert [ln for ln in ph.links() if ln.startswith("vsl")] == []
