"""The soak test's report (``bench.soak``): resource flatness, router log scan, the JSON and
the Markdown summary.  Split from ``bench/soak.py`` to keep each module within ~600 lines."""

from __future__ import annotations

import contextlib
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import sleeve
from sleeve.lab import Host
from sleeve.lab.routers import Router

if TYPE_CHECKING:
    from bench.soak import Soak

FD_SLACK: Final = 2
RSS_SLACK_FRAC: Final = 0.10
RSS_SLACK_KIB: Final = 5 * 1024
# The soak's layout (the run in bench.soak and this report both read it)
N: Final = 5
WITNESS: Final = 0  # host 1: never restarted
UL: Final = [f"198.18.60.{i + 1}" for i in range(N)]
OV: Final = [f"198.19.60.{i + 1}" for i in range(N)]
LOSS_PERCENT: Final = 2
TREE: Final = pathlib.Path(__file__).resolve().parents[1]


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


def stats(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    return {"n": len(xs), "min": round(min(xs), 3), "median": round(statistics.median(xs), 3),
            "max": round(max(xs), 3)}


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


