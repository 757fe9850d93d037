"""Soak test (issue 8): ``python3 -m bench.soak [--minutes 10]`` (root; network namespaces).

Five hosts on one switch (underlay 198.18.60.1-5/24, overlay 198.19.60.1-5/24), encrypted
routers each given only the previous host as a peer (a chain to discover the mesh from),
2% random loss on every host's underlay interface (``Host.loss``: ingress and egress).
For ``--minutes``, three loops run side by side:

- traffic: round-robin over all 20 ordered pairs, a ping (5 echoes) and an
  integrity-checked TCP transfer (``--transfer-mb``, sha256 compared with the expected
  digest).  A transfer that failed while one of its two endpoints' routers was being
  restarted is retried once, after that router is back; any other failure is a failure;
- restarts: every ``--restart-every`` seconds one of hosts 2-5 in turn is stopped,
  alternately with SIGTERM (must exit 0) and SIGKILL, started again (``Router.start``), and
  the mesh must reconverge (all five routers know all five peers, with the new incarnation's
  uid, 4 established links and 4 usable routes each) before the next restart.  Host 1 is
  never restarted: it is the long-lived witness for the whole run;
- sampling: every ``--sample-every`` seconds, for each router process (pid from its status
  JSON) open fds, VmRSS and threads from /proc, and its ``internal_error`` drops; per
  incarnation for the restarted routers.

Checks (exit status 1 if any fails): no router died unexpectedly, clean SIGTERM exits,
every reconvergence within ``--converge-timeout``, every transfer intact (none corrupt,
none failed outside a restart, retries succeed), pings answered outside restarts (5
echoes; a silent run gets a 10-echo follow-up, as two lost ARP exchanges can silence 5),
``internal_error`` 0 everywhere, no Traceback in the router logs, and flat resources on the
witness: fds and threads of its last minute no higher than its first minute (+2 fds of
slack for handshakes in flight), VmRSS median of the last minute at most 10% (or 5 MiB)
above the first.

Results: ``--out`` (default ``bench/results/``) gets ``soak-<stamp>.json`` (every figure and
sample) and ``soak-<stamp>.md`` (the summary); router logs are copied to ``--logs-dir``.
Progress goes to stderr.  Wrap lab runs in ``flock /tmp/sleeve-lab.lock``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import sleeve
from sleeve.lab import Host, Lab, LabCommandError
from sleeve.lab.routers import Router, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer

N: Final = 5
WITNESS: Final = 0  # host 1: never restarted
UL: Final = [f"198.18.60.{i + 1}" for i in range(N)]
OV: Final = [f"198.19.60.{i + 1}" for i in range(N)]
PASSWORD: Final = "soak password"
LOSS_PERCENT: Final = 2
WINDOW_PAD_BEFORE: Final = 1.0  # s before a stop that still counts as "during the restart"
WINDOW_PAD_AFTER: Final = 5.0  # s after reconvergence (ARP, TCP back-off) likewise
FD_SLACK: Final = 2
RSS_SLACK_FRAC: Final = 0.10
RSS_SLACK_KIB: Final = 5 * 1024
TREE: Final = pathlib.Path(__file__).resolve().parents[1]

# The status JSON straight from the router's HTTP API: a bare interpreter starts in ~20 ms,
# `sleeve status --json` (same JSON) costs several times that on the shared 2 cores.
_STATUS_PY: Final = ("import sys, urllib.request as u; sys.stdout.write(u.urlopen("
                     "'http://127.0.0.1:6782/status', timeout=5).read().decode())")
_PING_RE: Final = re.compile(r"(\d+) packets transmitted, (\d+) received")


def now() -> float:
    return time.monotonic()


def say(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def status(host: Host) -> dict[str, Any]:
    r = host.run(sys.executable, "-I", "-S", "-c", _STATUS_PY, check=False, timeout=15)
    if r.returncode != 0:
        raise RuntimeError(f"status of {host.name}: {r.stderr.strip()[-300:]}")
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def proc_sample(pid: int) -> dict[str, int]:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    fields = dict(line.split(":", 1) for line in
                  pathlib.Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"fds": fds, "rss_kib": int(fields["VmRSS"].split()[0]),
            "threads": int(fields["Threads"])}


def stats(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    return {"n": len(xs), "min": round(min(xs), 3), "median": round(statistics.median(xs), 3),
            "max": round(max(xs), 3)}


@dataclass
class Incarnation:
    host: int
    n: int
    started_t: float
    pid: int | None = None
    uid: int | None = None
    ended_t: float | None = None
    end_how: str | None = None  # SIGTERM / SIGKILL / final-SIGTERM / died
    exit_code: int | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    final_drops: dict[str, int] = field(default_factory=dict)
    final_counters: dict[str, int] = field(default_factory=dict)
    max_internal_error: int = 0
    died_unexpectedly: bool = False

    @property
    def label(self) -> str:
        return f"h{self.host + 1}#{self.n}"


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lock = threading.Lock()
        self.host_locks = [threading.Lock() for _ in range(N)]
        self.stop = threading.Event()
        self.t0 = 0.0
        self.deadline = 0.0
        self.hosts: list[Host] = []
        self.routers: list[Router] = []
        self.current: list[Incarnation] = []
        self.incarnations: list[Incarnation] = []
        self.restarting = [False] * N
        self.windows: list[list[list[float | None]]] = [[] for _ in range(N)]
        self.restarts: list[dict[str, Any]] = []
        self.transfers: list[dict[str, Any]] = []
        self.pings: list[dict[str, Any]] = []
        self.problems: list[str] = []  # anything unexpected, in order
        self.status_errors: list[str] = []
        self.mesh_rounds: list[dict[str, Any]] = []  # sampler rounds with no restart running
        self.nbytes = int(args.transfer_mb * 1_000_000)
        self.transfer_seq = 0
        self.initial_converge_s: float | None = None
        self.traffic_exc: str | None = None
        self.sampler_exc: str | None = None
        self.soak_s: float | None = None
        self.code: dict[str, Any] = {}

    def rel(self) -> float:
        return round(now() - self.t0, 2)

    def problem(self, msg: str) -> None:
        with self.lock:
            self.problems.append(f"t={self.rel():.1f}s {msg}")
        say("PROBLEM: " + msg)

    # ------------------------------------------------------------ mesh

    def converged(self, sts: list[dict[str, Any]], fresh: int | None) -> bool:
        for st in sts:
            if (len(st["peers"]) != N
                    or sum(c["state"] == "established" for c in st["connections"]) != N - 1
                    or sum(r["usable"] for r in st["routes"]) != N - 1):
                return False
        if fresh is not None:  # everyone must know the new incarnation (its new uid)
            me = next(p for p in sts[fresh]["peers"] if p["self"])
            for st in sts:
                if not any(p["peer"] == me["peer"] and p["uid"] == me["uid"]
                           for p in st["peers"]):
                    return False
        return True

    def wait_mesh(self, timeout: float, fresh: int | None = None) -> list[dict[str, Any]]:
        end = now() + timeout
        last = "no status yet"
        while now() < end:
            for i, r in enumerate(self.routers):
                if not r.running:
                    raise RuntimeError(f"router h{i + 1} exited while waiting for the mesh")
            try:
                sts = [status(h) for h in self.hosts]
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
                last = str(e)
            else:
                if self.converged(sts, fresh):
                    return sts
                last = mesh_detail(sts)
            time.sleep(0.5)
        raise TimeoutError(f"mesh not converged in {timeout}s: {last}")

    # ------------------------------------------------------------ restarts

    def overlapped(self, hosts: tuple[int, ...], t_start: float, t_end: float,
                   lock: bool = True) -> bool:
        with self.lock if lock else contextlib.nullcontext():
            for h in hosts:
                for w0, w1 in self.windows[h]:
                    assert w0 is not None
                    hi = (w1 if w1 is not None else float("inf")) + WINDOW_PAD_AFTER
                    if w0 - WINDOW_PAD_BEFORE <= t_end and t_start <= hi:
                        return True
        return False

    def wait_back(self, hosts: tuple[int, ...], timeout: float) -> bool:
        """Wait until none of ``hosts`` is restarting and the pad after it has passed."""
        end = now() + timeout
        while now() < end:
            with self.lock:
                busy = any(self.restarting[h] for h in hosts)
                last_end = max((w[1] or 0.0 for h in hosts for w in self.windows[h]),
                               default=0.0)
            if not busy and now() - self.t0 >= last_end + WINDOW_PAD_AFTER:
                return True
            time.sleep(0.5)
        return False

    def restart(self, h: int, how: str) -> None:
        r, inc = self.routers[h], self.current[h]
        rec: dict[str, Any] = {"host": h + 1, "how": how, "incarnation_stopped": inc.label}
        with self.host_locks[h]:
            with self.lock:
                self.restarting[h] = True
                self.windows[h].append([self.rel(), None])
            rec["t"] = self.rel()
            if not r.running:
                inc.died_unexpectedly = True
                self.problem(f"{inc.label} was dead before its restart (rc {r.proc.returncode})")
            else:
                try:
                    st = status(self.hosts[h])
                    inc.final_drops, inc.final_counters = st["drops"], st["counters"]
                    inc.max_internal_error = max(inc.max_internal_error,
                                                 st["drops"].get("internal_error", 0))
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
                    self.problem(f"{inc.label}: status before stop failed: {e}")
            t_stop = now()
            if how == "SIGTERM":
                try:
                    rc = r.stop()
                except Exception as e:
                    rc = None
                    self.problem(f"{inc.label}: SIGTERM stop failed: {e}")
                if rc != 0:
                    self.problem(f"{inc.label}: exit code {rc} after SIGTERM (want 0)")
            else:
                r.kill()
                rc = r.proc.returncode if r.proc is not None else None
            rec["stop_s"] = round(now() - t_stop, 2)
            rec["exit_code"] = rc
            inc.ended_t, inc.end_how, inc.exit_code = self.rel(), how, rc
            t_start = now()
            r.start()
            new = Incarnation(h, inc.n + 1, self.rel())
            with self.lock:
                self.current[h] = new
                self.incarnations.append(new)
        try:
            sts = self.wait_mesh(self.args.converge_timeout, fresh=h)
        except (TimeoutError, RuntimeError) as e:
            rec["converged"] = False
            rec["error"] = str(e)[:1000]
            self.problem(f"restart of h{h + 1} ({how}): {str(e)[:300]}")
        else:
            rec["converged"] = True
            rec["reconverge_s"] = round(now() - t_start, 2)  # from Router.start()
            rec["downtime_s"] = round(now() - t_stop, 2)  # from the stop
            new.pid, new.uid = sts[h]["pid"], next(p["uid"] for p in sts[h]["peers"]
                                                   if p["self"])
            if r.proc is not None and new.pid != r.proc.pid:
                self.problem(f"{new.label}: status pid {new.pid} != process pid {r.proc.pid}")
        with self.lock:
            self.windows[h][-1][1] = self.rel()
            self.restarting[h] = False
        rec["incarnation_started"] = new.label
        self.restarts.append(rec)
        say(f"restart {len(self.restarts)}: h{h + 1} {how} rc={rc} stop {rec['stop_s']}s, "
            + (f"mesh again in {rec['reconverge_s']}s" if rec["converged"] else "NOT converged"))

    def restart_loop(self) -> None:
        order = itertools.cycle(h for h in range(N) if h != WITNESS)
        hows = itertools.cycle(("SIGTERM", "SIGKILL"))
        nxt = self.args.restart_every
        while not self.stop.is_set():
            if self.t0 + nxt > self.deadline - 5:  # no restart whose reconvergence is cut off
                break
            self.stop.wait(max(0.0, self.t0 + nxt - now()))
            if self.stop.is_set():
                break
            self.restart(next(order), next(hows))
            nxt += self.args.restart_every
            if self.t0 + nxt < now():  # reconvergence overran the period: keep the gap
                self.problem(f"restart {len(self.restarts)} took longer than the period")
                nxt = now() - self.t0 + 1
        self.stop.wait(max(0.0, self.deadline - now()))

    # ------------------------------------------------------------ traffic

    def ping(self, i: int, j: int) -> None:
        t_start = self.rel()
        try:
            r = self.hosts[i].run("ping", "-n", "-q", "-c", "5", "-i", "0.2", "-W", "1", OV[j],
                                  check=False, timeout=15)
            m = _PING_RE.search(r.stdout)
            sent, got = (int(m.group(1)), int(m.group(2))) if m else (5, 0)
        except subprocess.TimeoutExpired:
            sent, got = 5, 0
        rec: dict[str, Any] = {"src": i + 1, "dst": j + 1, "t": t_start, "sent": sent,
                               "received": got}
        if got == 0:
            # 5 echoes span ~1.8 s, two ARP attempts (1 s apart) at 2% x 4 crossings of loss:
            # note the neighbour state, then a longer follow-up (10 echoes over ~3.7 s) tells
            # a lost ARP exchange from a path that is really broken.
            rec["neigh"] = {f"h{x + 1}": self.hosts[x].run(
                "ip", "neigh", "show", "dev", "sleeve0", check=False).stdout.strip()
                for x in (i, j)}
            try:
                r = self.hosts[i].run("ping", "-n", "-q", "-c", "10", "-i", "0.3", "-W", "1",
                                      OV[j], check=False, timeout=20)
                m = _PING_RE.search(r.stdout)
                rec["followup_received"] = int(m.group(2)) if m else 0
            except subprocess.TimeoutExpired:
                rec["followup_received"] = 0
            rec["during_restart"] = self.overlapped((i, j), t_start, self.rel())
            if not rec["during_restart"]:
                say(f"ping h{i + 1} -> h{j + 1}: no reply of {sent}; follow-up "
                    f"{rec['followup_received']}/10; neigh {rec['neigh']}")
                if rec["followup_received"] == 0:
                    self.problem(f"ping h{i + 1} -> h{j + 1}: no reply of {sent}, "
                                 "nor of 10 more")
        with self.lock:
            self.pings.append(rec)

    def one_transfer(self, i: int, j: int) -> dict[str, Any]:
        with self.lock:
            self.transfer_seq += 1
            k = self.transfer_seq
        seed = f"soak-{k}"
        want = expected_digest(self.nbytes, seed)
        rec: dict[str, Any] = {"k": k, "src": i + 1, "dst": j + 1, "t": self.rel()}
        try:
            n, digest, secs = tcp_transfer(self.hosts[i], self.hosts[j], OV[j], self.nbytes,
                                           port=5201 + k % 200,
                                           timeout=self.args.transfer_timeout, seed=seed)
        except LabCommandError as e:  # the sender failed: keep its exit status and stderr
            err = (e.stderr or "").strip()
            rec["error"] = f"sender exit {e.returncode}: {err[-600:]}"
            rec["ok"] = False
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {e}"[-600:]
            rec["ok"] = False
        else:
            rec.update(bytes=n, secs=round(secs, 3), ok=n == self.nbytes and digest == want)
            if n == self.nbytes and digest != want:
                rec["corrupt"] = True
            elif not rec["ok"]:
                rec["error"] = f"short: {n} of {self.nbytes} bytes"
        rec["t_end"] = self.rel()
        return rec

    def transfer(self, i: int, j: int) -> None:
        rec = self.one_transfer(i, j)
        if not rec["ok"]:
            rec["during_restart"] = self.overlapped((i, j), rec["t"], rec["t_end"])
            if rec["during_restart"] and not rec.get("corrupt"):
                say(f"transfer {rec['k']} h{i + 1} -> h{j + 1} failed during a restart "
                    f"({(rec.get('error') or '-').splitlines()[-1][-160:]}); retrying once")
                if self.wait_back((i, j), self.args.converge_timeout + 30):
                    rec["retry"] = self.one_transfer(i, j)
                else:
                    rec["retry"] = {"ok": False, "error": "endpoints not back in time"}
                if not rec["retry"]["ok"]:
                    self.problem(f"transfer h{i + 1} -> h{j + 1} failed again on retry: "
                                 f"{rec['retry'].get('error', '')[:300]}")
            else:
                self.problem(f"transfer {rec['k']} h{i + 1} -> h{j + 1} "
                             f"{'CORRUPT' if rec.get('corrupt') else 'failed'} outside any "
                             f"restart of its endpoints: {rec.get('error', '')[-300:]}")
        with self.lock:
            self.transfers.append(rec)

    def traffic_loop(self) -> None:
        try:
            pairs = itertools.cycle(itertools.permutations(range(N), 2))
            while not self.stop.is_set() and now() < self.deadline:
                i, j = next(pairs)
                self.ping(i, j)
                if self.stop.is_set() or now() >= self.deadline:
                    break
                self.transfer(i, j)
        except Exception as e:
            self.traffic_exc = f"{type(e).__name__}: {e}"
            self.problem(f"traffic loop crashed: {self.traffic_exc}")

    # ------------------------------------------------------------ sampling

    def sample_one(self, h: int) -> dict[str, Any] | None:
        with self.host_locks[h]:
            with self.lock:
                if self.restarting[h]:
                    return None
                inc = self.current[h]
            r = self.routers[h]
            if not r.running:
                if not inc.died_unexpectedly:
                    inc.died_unexpectedly = True
                    rc = r.proc.returncode if r.proc is not None else None
                    self.problem(f"router {inc.label} died unexpectedly (rc {rc})")
                return None
            t = self.rel()
            try:
                st = status(self.hosts[h])
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
                self.status_errors.append(f"t={t} {inc.label}: {str(e)[:200]}")
                return None
            pid = st["pid"]
            if inc.pid is None:
                inc.pid = pid
            elif pid != inc.pid:
                self.problem(f"{inc.label}: pid changed {inc.pid} -> {pid} without a restart")
                return None
            try:
                s = proc_sample(pid)
            except (OSError, KeyError, ValueError) as e:
                self.status_errors.append(f"t={t} {inc.label}: /proc/{pid}: {e!r}")
                return None
            ie = st["drops"].get("internal_error", 0)
            inc.max_internal_error = max(inc.max_internal_error, ie)
            inc.final_drops, inc.final_counters = st["drops"], st["counters"]
            inc.samples.append({"t": t, **s, "internal_error": ie, "uptime_s": st["uptime_s"],
                                "links": sum(c["state"] == "established"
                                             for c in st["connections"])})
            return st

    def sampler_loop(self) -> None:
        try:
            k = 0
            while True:
                t = self.rel()
                sts = [self.sample_one(h) for h in range(N)]
                with self.lock:
                    quiet = not any(self.restarting) and not self.overlapped(
                        tuple(range(N)), t - 0.5, self.rel(), lock=False)
                if quiet and all(st is not None for st in sts):
                    full = [st for st in sts if st is not None]
                    whole = self.converged(full, None)
                    self.mesh_rounds.append({"t": t, "whole": whole,
                                             **({} if whole else {"detail": mesh_detail(full)})})
                    if not whole:
                        say(f"mesh not whole at t={t:.0f}s outside restarts: "
                            f"{mesh_detail(full)[:600]}")
                if self.stop.is_set():
                    break
                k += 1
                self.stop.wait(max(0.0, self.t0 + k * self.args.sample_every - now()))
                if self.stop.is_set() and now() < self.deadline - 1:
                    break  # stopped early (failure): one last sample was taken above
        except Exception as e:
            self.sampler_exc = f"{type(e).__name__}: {e}"
            self.problem(f"sampler crashed: {self.sampler_exc}")

    def progress_loop(self) -> None:
        while not self.stop.wait(60):
            with self.lock:
                ok = sum(bool(t["ok"] or t.get("retry", {}).get("ok")) for t in self.transfers)
                n = len(self.transfers)
            w = self.current[WITNESS].samples[-1:] or [{}]
            say(f"t={self.rel():.0f}s transfers {ok}/{n} intact, restarts {len(self.restarts)}, "
                f"witness fds {w[0].get('fds')} rss {w[0].get('rss_kib')} KiB, "
                f"problems {len(self.problems)}")

    # ------------------------------------------------------------ the run

    def run(self, lab: Lab, wd: pathlib.Path) -> None:
        sw = lab.switch("sw")
        self.hosts = [lab.host(f"soak{i + 1}") for i in range(N)]
        for h, ul in zip(self.hosts, UL, strict=True):
            ifname = lab.connect(h, sw, f"{ul}/24")
            h.loss(ifname, LOSS_PERCENT)
        t_launch = now()
        self.t0 = t_launch  # for relative times until the soak starts
        for i, h in enumerate(self.hosts):
            self.routers.append(Router(h, ["--ip", f"{OV[i]}/24", *([UL[i - 1]] if i else [])],
                                       wd, PASSWORD))
            inc = Incarnation(i, 1, 0.0)
            self.current.append(inc)
            self.incarnations.append(inc)
        sts = self.wait_mesh(self.args.converge_timeout)
        self.initial_converge_s = round(now() - t_launch, 2)
        for i, st in enumerate(sts):
            self.current[i].pid = st["pid"]
            self.current[i].uid = next(p["uid"] for p in st["peers"] if p["self"])
        self.code = verify_router_code(self.hosts[WITNESS], self.current[WITNESS].pid)
        say(f"routers import {self.code.get('router_sleeve_module')} "
            f"(this tree: {self.code.get('router_code_is_this_tree')})")
        say(f"5-host mesh converged in {self.initial_converge_s}s; soaking for "
            f"{self.args.minutes} min")
        self.t0 = now()
        for inc in self.incarnations:
            inc.started_t = 0.0
        self.deadline = self.t0 + self.args.minutes * 60
        threads = [threading.Thread(target=f, name=f.__name__, daemon=True)
                   for f in (self.traffic_loop, self.sampler_loop, self.progress_loop)]
        for t in threads:
            t.start()
        try:
            self.restart_loop()
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=2 * self.args.transfer_timeout + self.args.converge_timeout + 60)
                if t.is_alive():
                    self.problem(f"thread {t.name} did not finish")
        self.soak_s = round(now() - self.t0, 1)
        # the end: everyone alive, the mesh whole, then a clean SIGTERM of every router
        for i, r in enumerate(self.routers):
            if not r.running and not self.current[i].died_unexpectedly:
                self.current[i].died_unexpectedly = True
                self.problem(f"router {self.current[i].label} not running at the end")
        try:
            sts = self.wait_mesh(self.args.converge_timeout)
        except (TimeoutError, RuntimeError) as e:
            self.problem(f"final mesh check: {str(e)[:300]}")
            sts = []
        for i, st in enumerate(sts):
            inc = self.current[i]
            inc.final_drops, inc.final_counters = st["drops"], st["counters"]
            inc.max_internal_error = max(inc.max_internal_error,
                                         st["drops"].get("internal_error", 0))
        for i, r in enumerate(self.routers):
            inc = self.current[i]
            if not r.running:
                continue
            try:
                rc: int | None = r.stop()
            except Exception as e:
                rc = None
                self.problem(f"{inc.label}: final stop failed: {e}")
            inc.ended_t, inc.end_how, inc.exit_code = self.rel(), "final-SIGTERM", rc
            if rc != 0:
                self.problem(f"{inc.label}: exit code {rc} after the final SIGTERM (want 0)")


def mesh_detail(sts: list[dict[str, Any]]) -> str:
    """Per router: peers known, usable routes, and each link's state (reason if not up)."""
    parts = []
    for i, st in enumerate(sts):
        links = ", ".join(
            f"{c['nickname']} {c['direction'][:2]} {c['tcp']} {c['state']}"
            + ("" if c["state"] == "established" else f" ({c['reason']})")
            for c in sorted(st["connections"], key=lambda c: str(c["nickname"])))
        parts.append(f"h{i + 1}: {len(st['peers'])} peers, "
                     f"{sum(r['usable'] for r in st['routes'])} usable routes, links [{links}]")
    return "; ".join(parts)


# ---------------------------------------------------------------- report


def window(samples: list[dict[str, Any]], lo: float, hi: float, key: str) -> list[float]:
    return [s[key] for s in samples if lo <= s["t"] <= hi]


def resource_summary(inc: Incarnation, minute: float = 60.0) -> dict[str, Any]:
    s = inc.samples
    if not s:
        return {"samples": 0}
    t_first, t_last = s[0]["t"], s[-1]["t"]
    out: dict[str, Any] = {"samples": len(s), "span_s": round(t_last - t_first, 1)}
    for key in ("fds", "rss_kib", "threads"):
        first = window(s, t_first, t_first + minute - 0.01, key)
        last = window(s, t_last - minute + 0.01, t_last, key)
        allv = [x[key] for x in s]
        out[key] = {"first_min": stats(first), "last_min": stats(last),
                    "max": max(allv), "min": min(allv), "first": allv[0], "last": allv[-1]}
    if len(s) >= 3:  # least-squares slope of RSS, KiB per minute
        ts = [x["t"] / 60 for x in s]
        ys = [x["rss_kib"] for x in s]
        mt, my = statistics.fmean(ts), statistics.fmean(ys)
        den = sum((t - mt) ** 2 for t in ts)
        out["rss_slope_kib_per_min"] = round(
            sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / den, 1) if den else 0.0
    return out


def flat_check(summ: dict[str, Any]) -> tuple[bool, str]:
    if summ.get("samples", 0) < 2 or summ["span_s"] < 120:
        return True, "too short to compare (first and last minute overlap)"
    f, r, th = summ["fds"], summ["rss_kib"], summ["threads"]
    fd_ok = f["last_min"]["max"] <= f["first_min"]["max"] + FD_SLACK
    th_ok = th["last_min"]["max"] <= th["first_min"]["max"]
    base = r["first_min"]["median"]
    rss_ok = r["last_min"]["median"] <= base + max(RSS_SLACK_KIB, RSS_SLACK_FRAC * base)
    detail = (f"fds first-min max {f['first_min']['max']:.0f} / last-min max "
              f"{f['last_min']['max']:.0f}; threads {th['first_min']['max']:.0f} / "
              f"{th['last_min']['max']:.0f}; RSS median {base / 1024:.1f} -> "
              f"{r['last_min']['median'] / 1024:.1f} MiB")
    return fd_ok and th_ok and rss_ok, detail


_STOPPED_RE = re.compile(r" INFO sleeve \S+ stopped$")
_LOG_NOISE = [(re.compile(r"^\S+ \S+ "), ""),  # the time stamp
              (re.compile(r"\b[0-9a-f]{2}(:[0-9a-f]{2}){5,7}\b"), "<peer>"),
              (re.compile(r"0x[0-9a-f]+"), "<hex>"),
              (re.compile(r"198\.1[89]\.\d+\.\d+(:\d+)?"), "<addr>"),
              (re.compile(r"\d+(\.\d+)?"), "N")]


def scan_logs(routers: list[Router]) -> dict[str, Any]:
    out: dict[str, Any] = {"per_host": {}, "warning_kinds": {}, "tracebacks": 0,
                           "tracebacks_at_shutdown": 0, "excerpts": []}
    kinds: Counter[str] = Counter()
    for i, r in enumerate(routers):
        text = r.log()
        lines = text.splitlines()
        c = {"lines": len(lines), "starts": text.count(" listening on "),
             "warning": sum(" WARNING " in ln for ln in lines),
             "error": sum(" ERROR " in ln or " CRITICAL " in ln for ln in lines),
             "traceback": 0, "traceback_at_shutdown": 0,
             "relayed_connects": sum("connected to" in ln and " at relay:" in ln for ln in lines),
             "duplicates_dropped": sum("duplicate connection to" in ln and ln.endswith("dropped")
                                       for ln in lines)}
        stopping = False  # between "sleeve <name> stopped" and the next start
        for k, ln in enumerate(lines):
            if _STOPPED_RE.search(ln):
                stopping = True
            elif " listening on " in ln:
                stopping = False
            # count each chained traceback once: at its first "Traceback" line
            if ln.startswith("Traceback") and not any(
                    x.startswith("Traceback") for x in lines[max(0, k - 8):k]):
                c["traceback"] += 1
                c["traceback_at_shutdown"] += stopping
            if " WARNING " in ln or " ERROR " in ln or " CRITICAL " in ln:
                norm = ln
                for rx, rep in _LOG_NOISE:
                    norm = rx.sub(rep, norm, count=1 if rep == "" else 0)
                kinds[norm[:160]] += 1
        out["per_host"][f"h{i + 1}"] = c
        out["tracebacks"] += c["traceback"]
        out["tracebacks_at_shutdown"] += c["traceback_at_shutdown"]
        for k, ln in enumerate(lines):
            if " ERROR " in ln and len(out["excerpts"]) < 5:
                out["excerpts"].append(f"h{i + 1}:\n" + "\n".join(lines[max(0, k - 3):k + 28]))
    out["warning_kinds"] = dict(kinds.most_common(30))
    return out


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "kernel": platform.release(), "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "loadavg_end": os.getloadavg(), "sleeve_version": sleeve.__version__,
        "sleeve_module": sleeve.__file__, "tree": str(TREE),
    }
    with contextlib.suppress(Exception):
        env["nft"] = subprocess.run(["nft", "--version"], capture_output=True, text=True,
                                    timeout=5).stdout.strip()
    return env


def build_report(soak: Soak, meta: dict[str, Any], logs: dict[str, Any]) -> dict[str, Any]:
    tr = soak.transfers
    first_ok = [t for t in tr if t["ok"]]
    retried = [t for t in tr if "retry" in t]
    retried_ok = [t for t in retried if t["retry"]["ok"]]
    corrupt = [t for t in tr if t.get("corrupt") or t.get("retry", {}).get("corrupt")]
    failed = [t for t in tr if not t["ok"] and not t.get("retry", {}).get("ok")]
    moved = sum(t.get("bytes", 0) for t in tr if t["ok"]) + sum(
        t["retry"].get("bytes", 0) for t in retried_ok)
    secs = [t["secs"] for t in tr if t["ok"]] + [t["retry"]["secs"] for t in retried_ok]
    pings = soak.pings
    p_sent = sum(p["sent"] for p in pings)
    p_got = sum(p["received"] for p in pings)
    rs = soak.restarts
    witness = soak.incarnations[WITNESS] if soak.incarnations else None
    incs = [{"label": inc.label, "host": inc.host + 1, "pid": inc.pid, "uid": inc.uid,
             "started_t": inc.started_t, "ended_t": inc.ended_t, "end_how": inc.end_how,
             "exit_code": inc.exit_code, "died_unexpectedly": inc.died_unexpectedly,
             "max_internal_error": inc.max_internal_error,
             "resources": resource_summary(inc)} for inc in soak.incarnations]
    drops: Counter[str] = Counter()
    for inc in soak.incarnations:
        drops.update(inc.final_drops)
    w_summ = resource_summary(witness) if witness else {"samples": 0}
    w_flat, w_detail = flat_check(w_summ)
    other_flat = []
    for inc in soak.incarnations:
        if inc.host == WITNESS:
            continue
        ok, d = flat_check(resource_summary(inc))
        if not ok:
            other_flat.append(f"{inc.label}: {d}")
    p_quiet = [p for p in pings if p["received"] == 0 and not p.get("during_restart")]
    p_fail = [p for p in p_quiet if not p.get("followup_received")]
    conv = [r["reconverge_s"] for r in rs if r.get("converged")]
    broken = [x for x in soak.mesh_rounds if not x["whole"]]
    checks = {
        "no router died unexpectedly": (
            not any(i.died_unexpectedly for i in soak.incarnations),
            ", ".join(i.label for i in soak.incarnations if i.died_unexpectedly) or "none"),
        "SIGTERM exits 0": (
            all(i.exit_code == 0 for i in soak.incarnations
                if i.end_how in ("SIGTERM", "final-SIGTERM")),
            ", ".join(f"{i.label}={i.exit_code}" for i in soak.incarnations
                      if i.end_how in ("SIGTERM", "final-SIGTERM") and i.exit_code != 0)
            or "all 0"),
        "mesh reconverged after every restart": (
            bool(rs) and all(r.get("converged") for r in rs),
            f"{len(conv)}/{len(rs)} within {soak.args.converge_timeout:.0f}s"),
        "every transfer intact": (
            bool(tr) and not failed and not corrupt,
            f"{len(tr) - len(failed)}/{len(tr)} intact, {len(corrupt)} corrupt, "
            f"{len(retried)} retried ({len(retried_ok)} ok)"),
        "no transfer failed outside a restart of its endpoints": (
            not any(not t["ok"] and not t.get("during_restart") for t in tr),
            f"{sum(not t['ok'] and not t.get('during_restart') for t in tr)}"),
        "mesh whole at every sample outside restarts": (
            not broken, f"{len(soak.mesh_rounds) - len(broken)}/{len(soak.mesh_rounds)} sample "
            "rounds whole" + ("; not whole at t = " + ", ".join(f"{x['t']:.0f}" for x in broken)
                              + " s" if broken else "")),
        "pings answered outside restarts": (
            not p_fail, f"{len(p_fail)} pairs without reply to 5 + 10 echoes "
            f"({len(p_quiet) - len(p_fail)} silent for 5, answered the follow-up)"),
        "internal_error drops 0": (
            all(i.max_internal_error == 0 for i in soak.incarnations),
            f"max {max((i.max_internal_error for i in soak.incarnations), default=0)}"),
        "no Traceback in router logs": (
            logs["tracebacks"] == 0,
            f"{logs['tracebacks']} 'Traceback' lines; tracebacks logged during a shutdown "
            f"(after 'stopped'): {logs['tracebacks_at_shutdown']}"),
        "witness fds/threads/RSS flat": (w_flat, w_detail),
        "restarted incarnations >=2 min flat": (not other_flat, "; ".join(other_flat) or "ok"),
        "harness ran to the end": (
            meta.get("exception") is None and soak.traffic_exc is None
            and soak.sampler_exc is None,
            meta.get("exception") or soak.traffic_exc or soak.sampler_exc or "ok"),
    }
    return {
        "ok": all(ok for ok, _ in checks.values()),
        "checks": {k: {"ok": ok, "detail": d} for k, (ok, d) in checks.items()},
        "meta": meta,
        "config": {**vars(soak.args), "hosts": N, "loss_percent": LOSS_PERCENT,
                   "witness": f"h{WITNESS + 1}", "underlay": UL, "overlay": OV},
        "initial_converge_s": soak.initial_converge_s,
        "transfers": {"done": len(tr), "intact_first_try": len(first_ok),
                      "retried": len(retried), "retried_ok": len(retried_ok),
                      "intact": len(tr) - len(failed), "failed": len(failed),
                      "corrupt": len(corrupt), "bytes_each": soak.nbytes,
                      "bytes_moved": moved, "secs": stats(secs),
                      "not_ok_records": [t for t in tr if not t["ok"]]},
        "pings": {"runs": len(pings), "echoes_sent": p_sent, "echoes_received": p_got,
                  "echo_loss_percent": round(100 * (1 - p_got / p_sent), 2) if p_sent else None,
                  "runs_without_reply": sum(p["received"] == 0 for p in pings),
                  "runs_without_reply_outside_restarts": len(p_quiet),
                  "of_which_answered_on_followup": len(p_quiet) - len(p_fail),
                  "quiet_runs_outside_restarts": p_quiet},
        "restarts": {"count": len(rs),
                     "sigterm": sum(r["how"] == "SIGTERM" for r in rs),
                     "sigkill": sum(r["how"] == "SIGKILL" for r in rs),
                     "reconverge_s": stats(conv),
                     "downtime_s": stats([r["downtime_s"] for r in rs if r.get("converged")]),
                     "stop_s": stats([r["stop_s"] for r in rs]),
                     "records": rs},
        "witness": {"label": witness.label if witness else None, "resources": w_summ},
        "incarnations": incs,
        "drops_total": dict(sorted(drops.items())),
        "status_errors": soak.status_errors,
        "mesh_rounds": {"checked": len(soak.mesh_rounds), "not_whole": broken},
        "problems": soak.problems,
        "logs": logs,
        "samples": {inc.label: inc.samples for inc in soak.incarnations},
        "all_transfers": tr,
        "all_pings": pings,
    }


def _fmt_stats(s: dict[str, float] | None, unit: str = "s") -> str:
    if not s:
        return "-"
    return f"{s['min']:.1f} / {s['median']:.1f} / {s['max']:.1f} {unit} (n={s['n']:.0f})"


def _mm(s: dict[str, float] | None, scale: float = 1.0, fmt: str = ".0f") -> str:
    if not s:
        return "-"
    return (f"{s['min'] / scale:{fmt}} / {s['median'] / scale:{fmt}} / "
            f"{s['max'] / scale:{fmt}}")


def markdown(rep: dict[str, Any]) -> str:
    m, t, p, r = rep["meta"], rep["transfers"], rep["pings"], rep["restarts"]
    env = m["env"]
    out = [
        f"# Soak {m['stamp']}: {'PASS' if rep['ok'] else 'FAIL'}", "",
        f"{rep['config']['hosts']} hosts on one switch, encrypted routers given one peer each "
        f"(chain), {rep['config']['loss_percent']}% random loss in and out of every host's "
        f"underlay interface; traffic between all ordered pairs; hosts 2-5 restarted in turn "
        f"every {rep['config']['restart_every']:.0f} s (SIGTERM and SIGKILL alternately), "
        f"host 1 never (the witness).", "",
        f"- duration: soak {m.get('soak_s')} s (`--minutes {rep['config']['minutes']}`), "
        f"wall {m.get('wall_s')} s including set-up and teardown; initial convergence "
        f"{rep['initial_converge_s']} s",
        f"- environment: kernel {env['kernel']}, Python {env['python']}, {env['cpus']} CPUs "
        f"(shared), load average at the end {', '.join(f'{x:.2f}' for x in env['loadavg_end'])}",
        f"- router code: `{m.get('router_sleeve_module')}`", "",
        "## Checks", "", "| check | result | detail |", "|---|---|---|",
    ]
    for name, c in rep["checks"].items():
        out.append(f"| {name} | {'ok' if c['ok'] else '**FAIL**'} | {c['detail']} |")
    out += [
        "", "## Traffic", "",
        "| figure | value |", "|---|---|",
        f"| transfers done | {t['done']} x {t['bytes_each'] / 1e6:.1f} MB |",
        f"| intact | {t['intact']} ({t['intact_first_try']} first try) |",
        f"| retried (overlapped a restart of an endpoint) | {t['retried']} "
        f"({t['retried_ok']} intact on retry) |",
        f"| failed | {t['failed']} (corrupt: {t['corrupt']}) |",
        f"| bytes moved intact | {t['bytes_moved'] / 1e6:.1f} MB |",
        f"| transfer time min / median / max | {_fmt_stats(t['secs'])} |",
        f"| ping runs (5 echoes each) | {p['runs']}: {p['echoes_received']}/{p['echoes_sent']} "
        f"echoes answered ({p['echo_loss_percent']}% lost; 2% on 4 interface crossings "
        f"= 7.8% expected) |",
        f"| ping runs without any reply | {p['runs_without_reply']} "
        f"({p['runs_without_reply_outside_restarts']} outside restarts, of which "
        f"{p['of_which_answered_on_followup']} answered a 10-echo follow-up) |",
        "", "## Restarts", "",
        f"- {r['count']} restarts ({r['sigterm']} SIGTERM, {r['sigkill']} SIGKILL)",
        f"- reconvergence, from `Router.start()` to all five seeing all five "
        f"(min / median / max): {_fmt_stats(r['reconverge_s'])}",
        f"- downtime, from the stop: {_fmt_stats(r['downtime_s'])}; stop itself "
        f"{_fmt_stats(r['stop_s'])}",
        "- (polled every 0.5 s, five status fetches a round: resolution about 1 s)",
    ]
    for x in r["records"]:
        if not x.get("converged"):
            out += ["", f"Restart of h{x['host']} ({x['how']}) at t={x['t']:.0f} s did not "
                    f"reconverge: `{x.get('error', '')[:1500]}`"]
    for x in rep["mesh_rounds"]["not_whole"][:3]:
        out += ["", f"Mesh not whole at t={x['t']:.0f} s (no restart running): "
                f"`{x['detail'][:1500]}`"]
    out += [
        "", "## Resources", "",
        "Witness (host 1, never restarted), samples every "
        f"{rep['config']['sample_every']:.0f} s; min / median / max:", "",
        "| | first minute | last minute | max over the run | slope |", "|---|---|---|---|---|",
    ]
    w = rep["witness"]["resources"]
    if w.get("samples"):
        out += [
            f"| open fds | {_mm(w['fds']['first_min'])} | {_mm(w['fds']['last_min'])} | "
            f"{w['fds']['max']} | |",
            f"| VmRSS MiB | {_mm(w['rss_kib']['first_min'], 1024, '.1f')} | "
            f"{_mm(w['rss_kib']['last_min'], 1024, '.1f')} | {w['rss_kib']['max'] / 1024:.1f} | "
            f"{w.get('rss_slope_kib_per_min', 0):+.0f} KiB/min |",
            f"| threads | {_mm(w['threads']['first_min'])} | {_mm(w['threads']['last_min'])} | "
            f"{w['threads']['max']} | |",
        ]
    out += ["", "Per incarnation (fds and VmRSS: first sample -> last sample, max; "
            "first/last-minute medians where the incarnation lived at least 2 min):", "",
            "| incarnation | lived | ended | samples | fds | RSS MiB | RSS 1st/last min median "
            "| threads | internal_error |", "|---|---|---|---|---|---|---|---|---|"]
    for inc in rep["incarnations"]:
        res = inc["resources"]
        end = inc["ended_t"] if inc["ended_t"] is not None else m.get("soak_s")
        lived = f"{inc['started_t']:.0f}-{end:.0f} s" if end is not None else "-"
        how = f"{inc['end_how']} rc={inc['exit_code']}" + (
            " **died**" if inc["died_unexpectedly"] else "")
        if res.get("samples"):
            f, rr, th = res["fds"], res["rss_kib"], res["threads"]
            med = (f"{rr['first_min']['median'] / 1024:.1f} / {rr['last_min']['median'] / 1024:.1f}"
                   if res["span_s"] >= 120 else "-")
            out.append(f"| {inc['label']} | {lived} | {how} | {res['samples']} | "
                       f"{f['first']} -> {f['last']}, max {f['max']} | "
                       f"{rr['first'] / 1024:.1f} -> {rr['last'] / 1024:.1f}, max "
                       f"{rr['max'] / 1024:.1f} | {med} | {th['first']} -> {th['last']} | "
                       f"{inc['max_internal_error']} |")
        else:
            out.append(f"| {inc['label']} | {lived} | {how} | 0 | - | - | - | - | "
                       f"{inc['max_internal_error']} |")
    drops = rep["drops_total"]
    out += ["", "## Drops and logs", "",
            "Drops by reason, summed over the last status of every incarnation: "
            + (", ".join(f"{k}={v}" for k, v in drops.items()) or "none"), ""]
    lg = rep["logs"]
    out.append("Router logs: " + ", ".join(
        f"{h}: {c['lines']} lines, {c['starts']} starts, {c['warning']} warnings, "
        f"{c['error']} errors, {c['traceback']} tracebacks ({c['traceback_at_shutdown']} at "
        f"shutdown), {c['relayed_connects']} relayed control connections, "
        f"{c['duplicates_dropped']} duplicate connections dropped"
        for h, c in lg["per_host"].items()))
    if lg["warning_kinds"]:
        out += ["", "Warnings/errors by kind (numbers, addresses and peer names folded):", ""]
        out += [f"- {n} x `{k}`" for k, n in lg["warning_kinds"].items()]
    for ex in lg["excerpts"][:2]:
        out += ["", "```", ex[:3000], "```"]
    if rep["status_errors"]:
        out += ["", f"Status fetch errors while sampling: {len(rep['status_errors'])} "
                f"(first: {rep['status_errors'][0]})"]
    if rep["problems"]:
        out += ["", "## Problems", ""] + [f"- {x}" for x in rep["problems"][:50]]
    out += ["", f"Raw samples, every transfer and ping: `{m['stamp_name']}.json`. "
            f"Router logs were copied to `{m.get('logs_dir')}`.", ""]
    return "\n".join(out)


def verify_router_code(host: Host, pid: int | None) -> dict[str, Any]:
    """Which sleeve the routers import: same interpreter, environment and cwd as a router."""
    out: dict[str, Any] = {}
    r = host.run(sys.executable, "-c", "import sleeve; print(sleeve.__file__)", check=False)
    out["router_sleeve_module"] = r.stdout.strip() or r.stderr.strip()[-200:]
    if pid is not None:
        with contextlib.suppress(OSError):
            out["router_cwd"] = os.readlink(f"/proc/{pid}/cwd")
            env = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            out["router_pythonpath"] = next((e.decode()[11:] for e in env
                                             if e.startswith(b"PYTHONPATH=")), None)
            out["router_cmdline"] = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(
                b"\0", b" ").decode().strip()
    out["router_code_is_this_tree"] = out["router_sleeve_module"].startswith(str(TREE) + "/")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="soak duration (default 10)")
    ap.add_argument("--restart-every", type=float, default=30.0, help="seconds (default 30)")
    ap.add_argument("--sample-every", type=float, default=10.0, help="seconds (default 10)")
    ap.add_argument("--transfer-mb", type=float, default=2.0, help="MB per transfer (default 2)")
    ap.add_argument("--transfer-timeout", type=float, default=60.0)
    ap.add_argument("--converge-timeout", type=float, default=60.0)
    ap.add_argument("--out", type=pathlib.Path, default=TREE / "bench" / "results")
    ap.add_argument("--logs-dir", type=pathlib.Path, default=None,
                    help="where to copy the router logs (default /tmp/soak-<stamp>-logs)")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.restart_every < 5 or args.sample_every < 1:
        ap.error("need --minutes > 0, --restart-every >= 5, --sample-every >= 1")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"soak-{stamp}"
    logs_dir = args.logs_dir or pathlib.Path(f"/tmp/{name}-logs")
    t_wall = now()
    meta: dict[str, Any] = {"stamp": stamp, "stamp_name": name,
                            "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                            "loadavg_start": os.getloadavg(), "exception": None}
    say(f"sleeve from {sleeve.__file__}; results to {args.out}/{name}.{{json,md}}")
    soak = Soak(args)
    logs: dict[str, Any] = {"per_host": {}, "warning_kinds": {}, "tracebacks": 0,
                           "tracebacks_at_shutdown": 0, "excerpts": []}
    with Lab() as lab:
        wd = workdir("sleeve-soak-")
        try:
            soak.run(lab, wd)
        except BaseException as e:  # report what we have, then fail
            meta["exception"] = f"{type(e).__name__}: {e}"[:2000]
            say(f"run aborted: {meta['exception'][:500]}")
            soak.stop.set()
        finally:
            logs = scan_logs(soak.routers)
            logs_dir.mkdir(parents=True, exist_ok=True)
            for f in wd.glob("*.log"):
                shutil.copy2(f, logs_dir / f.name)
    meta["soak_s"] = soak.soak_s
    meta.update(soak.code)
    meta["wall_s"] = round(now() - t_wall, 1)
    meta["lab_teardown_errors"] = lab.errors
    meta["logs_dir"] = str(logs_dir)
    meta["env"] = environment()
    meta["env"]["loadavg_start"] = meta["loadavg_start"]
    rep = build_report(soak, meta, logs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(rep, indent=1, default=str) + "\n")
    md = markdown(rep)
    (args.out / f"{name}.md").write_text(md)
    print(md)
    say(f"{'PASS' if rep['ok'] else 'FAIL'}: {args.out}/{name}.md, wall {meta['wall_s']} s")
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
