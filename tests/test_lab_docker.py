"""The Docker plugin with a real dockerd (Debian docker.io 20.10) on two lab hosts.

Each host: a router with ``--docker-plugin`` and a dockerd started here, both in the
host's network namespace. dockerd runs under ``nsenter --net`` (not ``ip netns exec``,
which remounts /sys and hides the cgroup hierarchy dockerd needs) and ``--mount`` into a
*persistent* mount namespace of its host (``unshare --mount=FILE``, FILE under our temp
dir), in which the host's private plugin directory is bind-mounted over
/run/docker/plugins: two dockerds on one machine each find only their own router's
``sleeve.sock``. The namespace outlives dockerd on purpose: dockerd keeps each
container's network namespace as a bind mount under its exec root, in its mount
namespace; a restarted dockerd in a fresh namespace finds no sandbox there and deletes
the endpoint of a container that still runs (what the first version of this test saw).
Everything else is private too: --data-root, --exec-root, -H unix socket, --pidfile,
--config-file (with deprecated-key-path: else /etc/docker/key.json), a cgroup parent named
after this run, all under one temp dir removed afterwards; cgroupfs, vfs storage,
--iptables=false --ip6tables=false --bridge=none --ip-masq=false --ip-forward=false: it
never touches the host's firewall or forwarding. Host d1's dockerd runs with
--live-restore, d2's without (its container has ``--restart always``): the two restart
cases.

The image is ``docker import`` of a directory with busybox-static (no registry).
dockerd, its containerd, shims and container processes left are stopped by PID (found
under our temp dir and our cgroup parent); our mounts are unmounted; paths dockerd may
create outside the temp dir (/etc/docker, /var/lib/docker, /run/containerd, ...) are put
back as they were. Requests dockerd sent are recorded (``--docker-plugin-record``) and
written to tests/data/docker_requests.json when SLEEVE_RECORD_DOCKER=1.

Run: ``flock /tmp/sleeve-lab.lock python3 -m pytest -q tests/test_lab_docker.py``
(root; Debian packages docker.io, busybox-static, curl: ./install.sh --test).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sleeve.lab import Host, Lab
from sleeve.lab.routers import Router, established_with, workdir

pytestmark = pytest.mark.lab

ROOT = pathlib.Path(__file__).resolve().parent.parent
UL = ["198.18.3.1", "198.18.3.2"]
# the bridges' /24s lie outside the IPAM range (the config refuses the address inside):
# the plugin routes the pool to the bridge, so the host (and its micro DNS) answers
# containers
OV = ["198.19.3.1", "198.19.3.2"]
RANGE = "198.19.64.0/18"
NET = "sleevenet"
IMAGE = "sleeve-busybox:lab"
APPLETS = ("sh", "ping", "sleep", "nslookup", "ip", "cat", "ls", "grep", "wc")
PLUGINS = pathlib.Path("/run/docker/plugins")
# Debian's paths first (a docker CLI elsewhere on PATH may be another version); a machine
# with docker-ce instead (install.sh leaves it) has them in /usr/bin
DOCKERD = "/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else shutil.which("dockerd")
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
RECORDED = ROOT / "tests" / "data" / "docker_requests.json"
# what dockerd could create outside its --data-root/--exec-root: put back as found
OUTSIDE = [pathlib.Path(p) for p in ("/etc/docker", "/var/lib/docker", "/var/lib/containerd",
                                     "/run/containerd", "/run/docker", "/var/run/docker.sock",
                                     "/var/run/docker.pid", "/run/docker.sock")]


@dataclass
class DockerHost:
    host: Host
    router: Router
    dir: pathlib.Path
    mntns: pathlib.Path  # the persistent mount namespace dockerd runs in
    cgroup: str
    live_restore: bool
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> str:
        return str(self.dir / "docker.sock")

    @property
    def plugin_sock(self) -> pathlib.Path:
        return self.dir / "plugins" / "sleeve.sock"

    def docker(self, *args: str, timeout: float = 60,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(DOCKER), "-H", f"unix://{self.sock}", *args],
                           capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"{self.host.name}: docker {' '.join(args)} -> "
                                 f"{r.returncode}\n{r.stderr[-2000:]}\n{self.log()[-3000:]}")
        return r

    def log(self) -> str:
        p = self.dir / "dockerd.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def make_mntns(self) -> None:
        """The mount namespace, kept by a bind mount on ``mntns``: plugins dir bound in."""
        self.mntns.touch()
        subprocess.run(["unshare", f"--mount={self.mntns}", "--propagation", "private",
                        "mount", "--bind", str(self.dir / "plugins"), str(PLUGINS)],
                       check=True, capture_output=True, timeout=15)

    def start_dockerd(self) -> None:
        d = self.dir
        # the trust key's path is a daemon.json key only (else /etc/docker/key.json)
        (d / "daemon.json").write_text(json.dumps({"deprecated-key-path": f"{d}/key.json"}))
        argv = ["nsenter", f"--mount={self.mntns}", f"--net=/run/netns/{self.host.netns}",
                str(DOCKERD), f"--data-root={d}/data", f"--exec-root={d}/exec",
                "-H", f"unix://{self.sock}", f"--pidfile={d}/docker.pid",
                f"--config-file={d}/daemon.json",
                "--exec-opt", "native.cgroupdriver=cgroupfs", f"--cgroup-parent={self.cgroup}",
                "--storage-driver=vfs", "--iptables=false", "--ip6tables=false",
                "--bridge=none", "--ip-masq=false", "--ip-forward=false",
                "--userland-proxy=false", "--log-level=info",
                *(["--live-restore"] if self.live_restore else [])]
        with open(d / "dockerd.log", "ab") as log:  # nsenter execs dockerd: one PID
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        for _ in range(120):  # bounded: 60 s
            if self.proc.poll() is not None:
                raise AssertionError(f"dockerd exited {self.proc.returncode}:\n"
                                     f"{self.log()[-3000:]}")
            if self.docker("version", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError(f"dockerd did not answer within 60 s:\n{self.log()[-3000:]}")

    def stop_dockerd(self, timeout: float = 40) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)

    def links(self) -> list[str]:
        out = self.host.run("ip", "-o", "link", "show").stdout
        return [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines()]

    def veths(self) -> list[str]:
        return [n for n in self.links() if n.startswith("vsd")]

    def route(self) -> str:
        return self.host.run("ip", "-4", "route", "show", RANGE).stdout.strip()

    def api(self, path: str) -> Any:
        r = self.host.run("curl", "-sf", "--max-time", "5", f"http://127.0.0.1:6782{path}",
                          check=False, timeout=15)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def docker_status(self) -> dict[str, Any]:
        st = self.api("/status")
        assert st is not None and st.get("docker"), st
        return dict(st["docker"])

    def requests(self) -> list[str]:
        """The methods dockerd called, in order (the router's record)."""
        p = self.dir / "requests.jsonl"
        if not p.exists():
            return []
        return [json.loads(ln)["path"] for ln in p.read_text().splitlines() if ln.strip()]

    def plugin(self, method: str, body: str) -> tuple[int, Any]:
        r = subprocess.run(["curl", "-s", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}",
                            "--unix-socket", str(self.plugin_sock), "-d", body,
                            f"http://plugin/{method}"], capture_output=True, text=True,
                           timeout=15, check=False)
        text, _, code = r.stdout.rpartition("\n")
        return int(code or 0), json.loads(text) if text.strip() else None


@dataclass
class DockerLab:
    lab: Lab
    hosts: list[DockerHost]
    root: pathlib.Path
    made: list[pathlib.Path] = field(default_factory=list)


def _missing() -> list[str]:
    why = [f"{t} not found (Debian package {p})" for t, p in
           (("dockerd", "docker.io"), ("docker", "docker.io"),
            ("curl", "curl"), ("nsenter", "util-linux"), ("unshare", "util-linux"))
           if (DOCKERD if t == "dockerd" else DOCKER if t == "docker" else shutil.which(t))
           is None]
    if shutil.which("busybox") is None:
        why.append("busybox not found (Debian package busybox-static)")
    if os.geteuid() != 0:
        why.append("not running as root")
    return why


def _image(dh: DockerHost, root: pathlib.Path) -> None:
    rootfs = root / "rootfs"
    if not rootfs.exists():
        for sub in ("bin", "etc", "proc", "sys", "dev", "tmp"):
            (rootfs / sub).mkdir(parents=True)
        shutil.copy(shutil.which("busybox") or "/bin/busybox", rootfs / "bin/busybox")
        for a in APPLETS:
            os.symlink("busybox", rootfs / "bin" / a)
        (rootfs / "etc/passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    tar = root / "rootfs.tar"
    if not tar.exists():
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], timeout=60, check=True)
    dh.docker("import", str(tar), IMAGE, timeout=120)


def _snapshot() -> dict[pathlib.Path, set[str] | None]:
    """For each OUTSIDE path: None (absent), its entries (a directory), or empty (a file)."""
    out: dict[pathlib.Path, set[str] | None] = {}
    for p in OUTSIDE:
        out[p] = (set(os.listdir(p)) if p.is_dir() else set()) if p.exists() else None
    return out


def _restore(before: dict[pathlib.Path, set[str] | None]) -> list[str]:
    """Remove what appeared in OUTSIDE since ``before``; returns what it removed."""
    gone = []
    for p, had in before.items():
        if not p.exists() and not p.is_symlink():
            continue
        new = ([p] if had is None else
               [p / n for n in (set(os.listdir(p)) - had)] if p.is_dir() else [])
        for q in new:
            gone.append(str(q))
            if q.is_dir() and not q.is_symlink():
                shutil.rmtree(q, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    q.unlink()
    return gone


def _kill_cgroup(name: str) -> list[str]:
    """Processes left in our cgroup parent (containers whose shim died): killed, then the
    cgroup directories removed, deepest first. Bounded."""
    left = []
    for ctl in pathlib.Path("/sys/fs/cgroup").iterdir():
        top = ctl / name
        if not top.is_dir():
            continue
        dirs = sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts))
        for d in [*dirs, top]:
            for _ in range(20):
                try:
                    pids = (d / "cgroup.procs").read_text().split()
                except OSError:
                    pids = []
                for pid in pids:
                    left.append(f"cgroup process {pid}")
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
                with contextlib.suppress(OSError):
                    d.rmdir()
                    break
                time.sleep(0.1)
    return left


def _cleanup(dl: DockerLab) -> list[str]:
    """Stop what we started (by PID), bounded; never raises. Returns what it had to kill."""
    left: list[str] = []
    for dh in dl.hosts:
        with contextlib.suppress(Exception):
            ids = dh.docker("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                dh.docker("rm", "-f", *ids, check=False, timeout=60)
        with contextlib.suppress(Exception):
            dh.docker("network", "rm", NET, check=False, timeout=30)
        with contextlib.suppress(Exception):
            dh.stop_dockerd()
    root = str(dl.root).encode()
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:  # dockerd's containerd and shims
        try:
            cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        exe = cmd.split(b"\0")[0].decode(errors="replace")
        if root in cmd and ("containerd" in exe or "dockerd" in exe):
            left.append(f"{exe} {pid}")
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
    for dh in dl.hosts:
        left += _kill_cgroup(dh.cgroup)
    with open("/proc/mounts") as f:
        mounts = [ln.split()[1] for ln in f]
    for m in reversed(mounts):  # the mount namespaces' files, then their directory
        if m.startswith(str(dl.root)):
            subprocess.run(["umount", "-l", m], capture_output=True, timeout=10, check=False)
    return left


@pytest.fixture(scope="module")
def dl() -> Iterator[DockerLab]:
    why = _missing()
    if why:
        pytest.fail("lab Docker tests cannot run: " + "; ".join(why), pytrace=False)
    before = _snapshot()
    root = pathlib.Path(tempfile.mkdtemp(prefix="sleeve-docker-lab-"))
    made = [p for p in (PLUGINS.parent, PLUGINS) if not p.exists()]
    PLUGINS.mkdir(parents=True, exist_ok=True)  # the mount point; removed if we made it
    try:
        with Lab() as lab:
            c = DockerLab(lab, [], root, made)
            try:
                _build(c, lab)
                yield c
            finally:
                left = _cleanup(c)
                _record(c)  # after the cleanup: its docker rm and network rm too
                if left:
                    print(f"\ncleaned after dockerd: {left}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for p in reversed(made):
            with contextlib.suppress(OSError):
                p.rmdir()
        gone = _restore(before)
        if gone:
            print(f"\nremoved what dockerd left outside its roots: {gone}")


def _build(c: DockerLab, lab: Lab) -> None:
    sw = lab.switch()
    wd = workdir()
    ns = c.root / "ns"  # a private mount point: unshare --mount=FILE refuses a shared one
    ns.mkdir()
    subprocess.run(["mount", "--bind", str(ns), str(ns)], check=True, timeout=10)
    subprocess.run(["mount", "--make-private", str(ns)], check=True, timeout=10)
    for i in range(2):
        h = lab.host(f"d{i + 1}")
        lab.connect(h, sw, f"{UL[i]}/24")
        d = c.root / h.name
        (d / "plugins").mkdir(parents=True)
        args = ["--ip", f"{OV[i]}/24", "--ipalloc-range", RANGE, "--ipalloc-init",
                "consensus=2", "--docker-plugin", "--docker-plugin-socket",
                str(d / "plugins" / "sleeve.sock"), "--docker-api", str(d / "docker.sock"),
                "--docker-plugin-record", str(d / "requests.jsonl"), *([UL[0]] if i else [])]
        c.hosts.append(DockerHost(h, Router(h, args, wd, "docker lab"), d, ns / h.name,
                                  f"{c.root.name}-{h.name}", live_restore=i == 0))
    for dh in c.hosts:
        dh.router.wait(established_with(1), 30, "mesh of two")
        for _ in range(60):
            if dh.plugin_sock.exists():
                break
            time.sleep(0.25)
        assert oct(dh.plugin_sock.stat().st_mode & 0o777) == "0o660"
    for dh in c.hosts:
        dh.make_mntns()
        dh.start_dockerd()
        _image(dh, c.root)


def _record(c: DockerLab) -> None:
    if os.environ.get("SLEEVE_RECORD_DOCKER") != "1":
        return
    out = []
    for dh in c.hosts:
        p = dh.dir / "requests.jsonl"
        if p.exists():
            out += [{"host": dh.host.name, **json.loads(ln)} for ln in p.read_text().splitlines()]
    RECORDED.parent.mkdir(exist_ok=True)
    RECORDED.write_text(json.dumps(out, indent=1) + "\n")


def _ip(dh: DockerHost, name: str) -> str:
    return dh.docker("inspect", "-f", f"{{{{.NetworkSettings.Networks.{NET}.IPAddress}}}}",
                     name).stdout.strip()


def _pid(dh: DockerHost, name: str) -> int:
    return int(dh.docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())


def _ping(dh: DockerHost, ctr: str, dst: str, tries: int = 10) -> bool:
    for _ in range(tries):
        with contextlib.suppress(subprocess.TimeoutExpired):
            if dh.docker("exec", ctr, "ping", "-c", "1", "-W", "2", dst, check=False,
                         timeout=20).returncode == 0:
                return True
        time.sleep(0.5)
    return False


def _run(dh: DockerHost, name: str, i: int, *extra: str) -> str:
    dh.docker("run", "-d", "--name", name, "--network", NET, "--dns", OV[i],
              "--dns-search", "sleeve.local", *extra, IMAGE, "sleep", "3600")
    return _ip(dh, name)


def _names(dh: DockerHost) -> dict[str, str]:
    return {r.get("name", "").split(".")[0]: r.get("address", "")
            for r in (dh.api("/dns") or {}).get("records", [])}


def _wait_name(dh: DockerHost, name: str, present: bool = True, address: str = "") -> bool:
    for _ in range(40):
        names = _names(dh)
        if (name in names) == present and (not address or names.get(name) == address):
            return True
        time.sleep(0.25)
    return False


def _pinger(dh: DockerHost, ctr: str, dst: str, seconds: int) -> str:
    """A ping in the container that outlives docker exec (and dockerd), 5 a second for
    ``seconds``; returns its log inside the container."""
    out = f"/tmp/ping-{time.monotonic_ns()}.log"  # one file per pinger: they overlap
    dh.docker("exec", "-d", ctr, "sh", "-c",
              f"ping -i 0.2 -w {seconds} {dst} > {out} 2>&1")
    return out


def _replies(dh: DockerHost, ctr: str, log: str) -> list[int]:
    text = dh.docker("exec", ctr, "cat", log).stdout
    return [int(w.split("=")[1]) for ln in text.splitlines() if "bytes from" in ln
            for w in ln.split() if w.startswith("seq=")]


def test_network_create_on_both_hosts(dl: DockerLab) -> None:
    for dh in dl.hosts:
        dh.docker("network", "create", "-d", "sleeve", "--ipam-driver", "sleeve", NET)
        info = json.loads(dh.docker("network", "inspect", NET).stdout)[0]
        assert info["Driver"] == "sleeve" and info["IPAM"]["Driver"] == "sleeve"
        assert info["IPAM"]["Config"][0]["Subnet"] == RANGE
    for dh in dl.hosts:  # the host's way back to its containers: the pool on the bridge
        assert "dev sleeve" in dh.route(), dh.route()


def test_containers_ping_by_address_and_name(dl: DockerLab) -> None:
    a, b = dl.hosts
    ip1, ip2 = _run(a, "c1", 0), _run(b, "c2", 1, "--restart", "always")
    assert ip1 and ip2 and ip1 != ip2, (ip1, ip2)
    ifaces = a.docker("exec", "c1", "ip", "-o", "addr").stdout
    assert "ethwe" in ifaces and ip1 in ifaces, ifaces
    assert _ping(a, "c1", ip2), f"c1 -> {ip2}"
    assert _ping(b, "c2", ip1), f"c2 -> {ip1}"
    assert _wait_name(a, "c2") and _wait_name(b, "c1"), (a.api("/dns"), a.router.log()[-2000:])
    # sleeve's DNS answers the container directly (the connected route Join adds there,
    # the pool's route on the bridge here) ...
    ns = a.docker("exec", "c1", "nslookup", "c2.sleeve.local", OV[0], check=False,
                  timeout=30)
    assert ip2 in ns.stdout, ns.stdout + ns.stderr
    # ... and through dockerd's embedded resolver (127.0.0.11), which forwards to --dns
    assert _ping(a, "c1", "c2", tries=3), a.docker("exec", "c1", "cat",
                                                   "/etc/resolv.conf").stdout
    assert _ping(b, "c2", "c1.sleeve.local", tries=3)
    assert a.host.run("ping", "-c", "1", "-W", "2", ip1, check=False).returncode == 0


def test_bad_requests_get_err(dl: DockerLab) -> None:
    dh = dl.hosts[0]
    for method, body in (("NetworkDriver.CreateNetwork", "{not json"),
                         ("NetworkDriver.Join", '{"NetworkID": 5}'),
                         ("IpamDriver.RequestPool", '{"Pool": "10.0.0.0/8"}'),
                         ("NoSuch.Method", "{}")):
        code, ans = dh.plugin(method, body)
        assert code in (404, 500) and isinstance(ans, dict) and ans.get("Err"), (method, ans)
    code, ans = dh.plugin("NetworkDriver.CreateNetwork", "x" * 100_000)
    assert code == 413, (code, ans)
    assert dh.router.running


def test_router_restart_keeps_containers_connected(dl: DockerLab) -> None:
    a, b = dl.hosts
    ip2 = _ip(b, "c2")
    log = _pinger(a, "c1", ip2, 40)
    time.sleep(1)
    n0 = len(_replies(a, "c1", log))
    assert n0 > 0, "no replies before the restart"
    a.router.stop()
    a.router.start()
    a.router.wait(established_with(1), 30, "mesh again")
    assert _ping(a, "c1", ip2, tries=30)
    time.sleep(1)
    n1 = len(_replies(a, "c1", log))
    assert n1 >= n0 + 3, (n0, n1)  # the same ping, still answered after the restart
    st = a.docker_status()
    assert st["endpoints"] == 1 and st["networks"] == 1, st
    assert "dev sleeve" in a.route() and len(a.veths()) == 1, (a.route(), a.veths())
    assert _ping(a, "c1", "c2", tries=5)  # names: ours from dns.json, c2 by gossip
    assert _ping(b, "c2", "c1", tries=5)


def test_dockerd_live_restore_restart_keeps_containers_connected(dl: DockerLab) -> None:
    a, b = dl.hosts
    ip1, ip2, pid = _ip(a, "c1"), _ip(b, "c2"), _pid(a, "c1")
    log = _pinger(a, "c1", ip2, 30)
    time.sleep(1)
    mark = len(a.requests())
    a.stop_dockerd()
    assert _ping(b, "c2", ip1, tries=3)  # connected while dockerd is down
    a.start_dockerd()
    assert _pid(a, "c1") == pid, "dockerd restarted the container"
    since = a.requests()[mark:]
    assert not {"/NetworkDriver.Leave", "/NetworkDriver.DeleteEndpoint"} & set(since), since
    assert a.host.run("ping", "-c", "1", "-W", "2", ip1, check=False).returncode == 0
    assert _ping(a, "c1", "c2", tries=5)
    time.sleep(1)
    seqs = _replies(a, "c1", log)  # the ping that ran before, during and after
    lost = sorted(set(range(max(seqs or [0]) + 1)) - set(seqs))
    assert len(seqs) >= 10 and len(lost) <= 3, (len(seqs), lost)  # hardly a reply lost
    st = a.docker_status()
    assert st["endpoints"] == 1 and len(a.veths()) == 1, (st, a.veths())


def test_dockerd_restart_without_live_restore_reconnects(dl: DockerLab) -> None:
    """Without --live-restore dockerd stops its containers when it stops (Leave,
    DeleteEndpoint, ReleaseAddress) and restarts ``--restart always`` ones when it
    starts: the container comes back on the network, by name, with nothing leaked."""
    a, b = dl.hosts
    b.stop_dockerd()
    b.start_dockerd()
    ip2 = ""
    for _ in range(60):
        r = b.docker("inspect", "-f", "{{.State.Running}}", "c2", check=False)
        if r.stdout.strip() == "true" and (ip2 := _ip(b, "c2")):
            break
        time.sleep(0.5)
    assert ip2, b.log()[-3000:]
    assert _ping(b, "c2", "c1", tries=10)
    assert _wait_name(a, "c2", address=ip2), (_names(a), ip2)
    assert _ping(a, "c1", "c2", tries=5)
    st = b.docker_status()
    assert st["endpoints"] == 1 and st["addresses"] == 2, st  # c2 and the gateway
    assert len(b.veths()) == 1, b.veths()


def test_docker_rm_cleans_up(dl: DockerLab) -> None:
    for i, dh in enumerate(dl.hosts):
        name = f"c{i + 1}"
        ip = _ip(dh, name)
        assert dh.veths()
        dh.docker("rm", "-f", name)
        assert dh.veths() == [], dh.veths()
        assert _wait_name(dh, name, present=False), _names(dh)
        st = dh.docker_status()
        assert st["endpoints"] == 0 and st["addresses"] == 1, st  # the network's gateway
        allocs = json.dumps(dh.api("/ipam"))
        assert f'"{ip}' not in allocs, allocs
        dh.docker("network", "rm", NET)
        assert dh.docker_status()["addresses"] == 0
        assert dh.route() == "", dh.route()
