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
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Final

import sleeve
from bench.soak_report import (
    LOSS_PERCENT,
    OV,
    UL,
    WITNESS,
    Incarnation,
    N,
    build_report,
    environment,
    markdown,
    mesh_detail,
    scan_logs,
    verify_router_code,
)
from sleeve.lab import Host, Lab, LabCommandError
from sleeve.lab.routers import Router, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer

PASSWORD: Final = "soak password"
WINDOW_PAD_BEFORE: Final = 1.0  # s before a stop that still counts as "during the restart"
WINDOW_PAD_AFTER: Final = 5.0  # s after reconvergence (ARP, TCP back-off) likewise
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
                rc = r.proc.returncode if r.proc is not None else None
                self.problem(f"{inc.label} was dead before its restart (rc {rc})")
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
