"""Many routers on one lab switch: start them, poll them cheaply, measure them.

Used by ``bench.scale`` (50 routers) and ``tests/test_lab_scale.py`` (12). Each router is
a real ``sleeve launch`` in its own namespace, all on one bridge (underlay
198.18.0.0/24), overlay 198.19.0.0/24 on their TAPs, IPAM range 198.19.128.0/17.

How they meet: router i is given only ``peers`` initial peers -- its ring neighbours
i-1 and i+1, then i+n/2, i+n/4, ... -- a connected graph whose diameter shrinks with
the chords; discovery (topology gossip) brings the rest, as on a real network where
each host's config names a few others.

"Routes to all" (``converged``): the router's ``GET /routes`` lists a route to every
other router's peer name and each route's next hop is an established link
(``usable``). Polling uses that endpoint over a socket made inside the namespace (no
process per poll, O(peers) bytes), so watching 50 routers costs them little.
"""

from __future__ import annotations

import compileall
import concurrent.futures
import json
import os
import pathlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sleeve
from sleeve.crypto.kdf import format_psk, psk_from_password
from sleeve.lab.netns import Host, Lab
from sleeve.lab.routers import Router, workdir

CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_WORKERS = 8
IPAM_RANGE = "198.19.128.0/17"


def initial_peers(i: int, n: int, k: int) -> list[int]:
    """Ring neighbours, then chords at n/2, n/4, ...: ``k`` distinct others (fewer if n is
    small)."""
    want = [i - 1, i + 1]
    step = n // 2
    while step >= 2:
        want.append(i + step)
        step //= 2
    out: list[int] = []
    for j in want:
        j %= n
        if j != i and j not in out:
            out.append(j)
    return out[:k]


def poll_pool(n: int) -> concurrent.futures.ThreadPoolExecutor:
    """The threads that poll ``n`` routers: one per router, so that a round of polls lasts
    as long as its slowest answer (at most the timeout). With 8 workers for 50 routers a
    round under the forming mesh's load took 19-20 s (seven waves of slow answers), and
    the convergence times were quantized by that."""
    return concurrent.futures.ThreadPoolExecutor(max(POLL_WORKERS, n))


@dataclass
class Member:
    idx: int
    host: Host
    ul: str
    ov: str
    ifname: str
    router: Router | None = None
    name: str | None = None  # peer name, from its first answer (stable: the key persists)
    pid: int | None = None


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (/proc/PID/stat fields 14 and 15)."""
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    vals: dict[str, int] = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            vals[key] = int(rest.split()[0])
    return vals["VmRSS"], vals["VmHWM"]


@dataclass
class ScaleLab:
    lab: Lab
    n: int
    peers: int = 3
    password: str = "scale lab password"
    psk_file: bool = True  # routers get `sleeve psk` of the password: no Argon2id per start
    extra: list[str] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    up_at: dict[int, float] = field(default_factory=dict)  # first answer since (re)start

    def __post_init__(self) -> None:
        sw = self.lab.switch("sw")
        for i in range(self.n):
            h = self.lab.host(f"s{i + 1}")
            ifname = self.lab.connect(h, sw)  # 198.18.0.<i+1>/24
            self.members.append(Member(i, h, h.ipv4(ifname)[0].split("/")[0],
                                       f"198.19.0.{i + 1}", ifname))
        self._static_arp()
        self.psk = format_psk(psk_from_password(self.password.encode())) if self.psk_file else None
        compileall.compile_dir(pathlib.Path(sleeve.__file__).parent, quiet=2)
        self.wd = workdir("sleeve-scale-")
        self.pool = poll_pool(self.n)

    def _static_arp(self) -> None:
        """Permanent ARP entries for every other member, in every namespace.

        Why: the kernel's neighbour table is one for all namespaces, and its gc_thresh3
        (1024 by default, settable only in the root namespace, which the lab never
        touches) caps the entries of all of them together. 50 hosts that each talk to 49
        others need 2,450: past 1,024 the kernel logs "neighbor table overflow" and drops
        packets of random pairs, so TCP connects time out and UDP is lost -- a lab
        artefact (real hosts have a kernel each) that made the first 50-router runs churn
        links endlessly. Permanent entries are not counted against gc_thresh (Linux >=
        5.0)."""
        macs = {}
        for m in self.members:
            out = m.host.run("ip", "-j", "link", "show", "dev", m.ifname).stdout
            macs[m.idx] = json.loads(out)[0]["address"]
        for m in self.members:
            script = "".join(f"neigh replace {o.ul} lladdr {macs[o.idx]} dev {m.ifname} "
                             "nud permanent\n" for o in self.members if o is not m)
            m.host.run("ip", "-batch", "-", input=script.encode())

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def start(self, idxs: Iterable[int]) -> float:
        """Start (or restart) these routers, all at once; the monotonic time of the last."""
        for i in idxs:
            m = self.members[i]
            if m.router is None:
                args = ["--ip", f"{m.ov}/24", "--ipalloc-range", IPAM_RANGE, *self.extra,
                        *(self.members[j].ul for j in initial_peers(i, self.n, self.peers))]
                m.router = Router(m.host, args, self.wd, self.password, psk=self.psk)
            else:
                m.router.start()
            m.pid = None
            self.up_at.pop(i, None)
        return time.monotonic()

    def stop(self, idxs: Iterable[int]) -> None:
        """SIGTERM these routers together and wait for each (bounded by the lab's stop)."""
        rs = [r for i in idxs if (r := self.members[i].router) is not None]
        list(self.pool.map(lambda r: r.stop(), rs))

    def get(self, i: int, path: str, timeout: float = 30.0) -> Any:
        r = self.members[i].router
        assert r is not None
        return r.status_http(path, timeout)

    def poll(self, idxs: Iterable[int], path: str = "/routes",
             timeout: float = 5.0) -> dict[int, Any]:
        """GET ``path`` from these routers concurrently; failures are left out."""
        return {i: v for i, (_t, v) in self.poll_timed(idxs, path, timeout).items()}

    def poll_timed(self, idxs: Iterable[int], path: str = "/routes",
                   timeout: float = 5.0) -> dict[int, tuple[float, Any]]:
        """Like ``poll``, each answer with the monotonic time it arrived."""
        idxs = list(idxs)

        def one(i: int) -> tuple[float, Any] | None:
            try:
                v = self.get(i, path, timeout)
            except (OSError, RuntimeError, ValueError):
                return None
            return time.monotonic(), v

        return {i: r for i, r in zip(idxs, self.pool.map(one, idxs), strict=True)
                if r is not None}

    def routes_to_all(self, i: int, view: dict[str, Any], live: set[int]) -> bool:
        """Router i has a usable route to every other live router (see the module doc)."""
        others = {self.members[j].name for j in live if j != i}
        if None in others:
            return False  # someone has not answered yet: its name is unknown
        usable = {r["destination"] for r in view["routes"] if r["usable"]}
        return others <= usable

    def wait_converged(self, live: set[int], deadline: float, period: float = 0.5,
                       gone: set[int] | None = None) -> dict[int, float]:
        """Poll until every live router has routes to all live ones (and none to
        ``gone``); the monotonic time each first did. TimeoutError past ``deadline``."""
        done: dict[int, float] = {}
        gone_names = {self.members[j].name for j in gone or ()}
        last: dict[int, Any] = {}
        while True:
            now = time.monotonic()
            for i in live:
                r = self.members[i].router
                if r is None or not r.running:
                    raise RuntimeError(f"router s{i + 1} exited:\n{r.log()[-2000:] if r else ''}")
            timed = self.poll_timed(sorted(live))
            for i, (at, v) in timed.items():
                m = self.members[i]
                m.name, m.pid = v["name"], v["pid"]
                last[i] = v
                self.up_at.setdefault(i, at)
            for i, (at, v) in timed.items():
                dests = {r["destination"] for r in v["routes"]}
                ok = self.routes_to_all(i, v, live) and not (dests & gone_names)
                if ok:
                    # when its answer came: a router shown done had its routes by then
                    # (an upper bound; the round's start was a bound on neither side)
                    done.setdefault(i, at)
                else:
                    done.pop(i, None)  # a route can go away again while the mesh settles
            if len(done) == len(live):
                return done
            if now > deadline:
                missing = sorted(set(live) - set(done))
                detail = {f"s{i + 1}": ({k: (len(v) if k == "routes" else v)
                                          for k, v in last[i].items() if k != "name"}
                                         if i in last else "no answer")
                          for i in missing[:10]}
                raise TimeoutError(f"{len(missing)} of {len(live)} routers without routes to "
                                   f"all: {detail}")
            time.sleep(max(0.0, period - (time.monotonic() - now)))

    def wait_quiet(self, live: set[int], quiet: float, timeout: float,
                   period: float = 1.0) -> tuple[float, dict[int, int]]:
        """Poll until no router's count of established links has changed for ``quiet`` s
        (discovery keeps adding direct links after routes to all exist: a mesh still
        forming is not idle). Returns (seconds waited, established links per router);
        TimeoutError past ``timeout``."""
        t0 = time.monotonic()
        seen: dict[int, int] = {}
        since = t0
        while True:
            now = time.monotonic()
            est = {i: v["established"] for i, v in self.poll(sorted(live)).items()}
            if est != seen or len(est) < len(live):
                seen, since = est, now
            elif now - since >= quiet:
                return now - t0, seen
            if now - t0 > timeout:
                raise TimeoutError(f"links still changing after {timeout:.0f}s")
            time.sleep(max(0.0, period - (time.monotonic() - now)))

    def router_pid(self, i: int) -> int:
        """The pid of router i's process (``ip netns exec`` execs it: the same pid),
        known from its start, before it answers."""
        r = self.members[i].router
        assert r is not None and r.proc is not None, f"s{i + 1} was never started"
        return r.proc.pid

    def pids(self, idxs: Iterable[int]) -> dict[int, int]:
        out = {}
        for i in idxs:
            pid = self.members[i].pid
            assert pid is not None, f"s{i + 1}: pid unknown (never answered)"
            out[i] = pid
        return out

    def control_bytes(self, idxs: Iterable[int]) -> dict[int, dict[str, int]]:
        """Per router: control bytes written to each link (keyed by peer) and each gossip
        channel's payload bytes sent (keyed ``gossip:<channel>``)."""
        out: dict[int, dict[str, int]] = {}
        for i, st in self.poll(idxs, "/status", timeout=30).items():
            d = {c["peer"]: c["counters"].get("control_tx_bytes", 0) for c in st["connections"]}
            d.update({f"gossip:{ch}": v.get("tx_bytes", 0) for ch, v in st["gossip"].items()})
            out[i] = d
        return out


def delta_bytes(before: dict[int, dict[str, int]],
                after: dict[int, dict[str, int]]) -> dict[int, dict[str, int]]:
    """Per router: control bytes sent on links present in both snapshots ("control"), and
    per gossip channel payload bytes."""
    out: dict[int, dict[str, int]] = {}
    for i, a in after.items():
        b = before.get(i)
        if b is None:
            continue
        d = {"control": sum(v - b[k] for k, v in a.items()
                            if k in b and not k.startswith("gossip:"))}
        d.update({k: v - b.get(k, 0) for k, v in a.items() if k.startswith("gossip:")})
        out[i] = d
    return out


def idle_usage(pids: dict[int, int], seconds: float) -> dict[int, tuple[float, int, int]]:
    """Per router over ``seconds``: (% of one core, VmRSS KiB, VmHWM KiB)."""
    t0 = time.monotonic()
    c0 = {i: cpu_ticks(p) for i, p in pids.items()}
    time.sleep(seconds)
    c1 = {i: cpu_ticks(p) for i, p in pids.items()}
    dt = time.monotonic() - t0
    out = {}
    for i, p in pids.items():
        rss, hwm = memory_kb(p)
        out[i] = (100.0 * (c1[i] - c0[i]) / CLK_TCK / dt, rss, hwm)
    return out
