"""Reports of the end-to-end benchmark (bench.e2e): ratios, Markdown, PNG chart, profile
summary.  Pure functions of the result document, so they are tested without a lab.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

USERSPACE_PEERS: Final = ("wireguard-go", "tinc", "fastd")
SLEEVE_SUBJECTS: Final = ("sleeve", "sleeve-plain", "sleeve-fast", "sleeve-relayed")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    get: Callable[[dict[str, Any]], float | None]

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


def _test(r: dict[str, Any], name: str) -> dict[str, Any] | None:
    t = r.get("tests", {}).get(name)
    return t if isinstance(t, dict) and "error" not in t else None


def _field(name: str, key: str, scale: float = 1.0) -> Callable[[dict[str, Any]], float | None]:
    def get(r: dict[str, Any]) -> float | None:
        t = _test(r, name)
        v = None if t is None else t.get(key)
        return None if v is None else float(v) * scale

    return get


METRICS: Final = (
    Metric("tcp1", "TCP 1 stream a->b", "Gbit/s", True, _field("tcp1", "bits_per_second", 1e-9)),
    Metric("tcp1r", "TCP 1 stream b->a", "Gbit/s", True,
           _field("tcp1r", "bits_per_second", 1e-9)),
    Metric("tcp4", "TCP 4 streams a->b", "Gbit/s", True, _field("tcp4", "bits_per_second", 1e-9)),
    Metric("tcp4r", "TCP 4 streams b->a", "Gbit/s", True,
           _field("tcp4r", "bits_per_second", 1e-9)),
    Metric("udp64", "UDP 64 B received", "kpps", True, _field("udp64", "rx_pps", 1e-3)),
    Metric("udp512", "UDP 512 B received", "kpps", True, _field("udp512", "rx_pps", 1e-3)),
    Metric("ping_avg", "ping avg", "ms", False, _field("ping", "avg_ms")),
    Metric("ping_p99", "ping p99", "ms", False, _field("ping", "p99_ms")),
    Metric("cpu_per_gb", "tunnel CPU-s per GB, TCP 1 stream a->b", "CPU-s/GB", False,
           _field("tcp1", "daemon_cpu_s_per_gb")),
)
METRIC_BY_KEY: Final = {m.key: m for m in METRICS}


def _ok(r: dict[str, Any]) -> bool:
    return r.get("status") == "ok" or (r.get("status") == "failed" and "tests" in r)


def ratios(doc: dict[str, Any]) -> dict[str, Any]:
    """For each measured sleeve subject and metric: its value, and its ratio (sleeve value
    divided by the reference's) to the best userspace peer of this run (best for that
    metric), to vxlan and to veth."""
    by = {r["subject"]: r for r in doc["results"] if _ok(r)}
    out: dict[str, Any] = {}
    for s in SLEEVE_SUBJECTS:
        if s not in by:
            continue
        rows: dict[str, Any] = {}
        for m in METRICS:
            v = m.get(by[s])
            row: dict[str, Any] = {"value": v, "unit": m.unit,
                                   "higher_is_better": m.higher_is_better}
            peers = [(p, m.get(by[p])) for p in USERSPACE_PEERS if p in by]
            peers_v = [(p, pv) for p, pv in peers if pv is not None and pv > 0]
            best = None
            if peers_v:
                pick = max if m.higher_is_better else min
                best = pick(peers_v, key=lambda x: x[1])
            row["best_peer"] = (
                {"subject": best[0], "value": best[1],
                 "ratio": v / best[1] if v is not None else None} if best else None)
            for ref in ("vxlan", "veth"):
                rv = m.get(by[ref]) if ref in by else None
                row[f"vs_{ref}"] = (
                    {"value": rv, "ratio": v / rv if v is not None and rv else None}
                    if rv is not None else None)
            rows[m.key] = row
        out[s] = rows
    return out


# ---------------------------------------------------------------- formatting


def _f(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _sig(v: float | None) -> str:
    """Three significant figures, at most 3 decimals."""
    if v is None:
        return "-"
    if v == 0:
        return "0"
    a = abs(v)
    spec = ".0f" if a >= 100 else ".1f" if a >= 10 else ".2f" if a >= 1 else ".3f"
    return format(v, spec)


def stamp_line(env: dict[str, Any]) -> str:
    """Machine, kernel, Python and library versions in one line."""
    libs = ", ".join(f"{k} {env.get(k)}" for k in ("sleeve", "pynacl", "uvloop", "msgpack",
                                                   "matplotlib", "py-spy") if env.get(k))
    return (f"{env.get('hostname')} ({env.get('machine')}, {env.get('cpu_model')} "
            f"x{env.get('cpus')}, {env.get('mem_gib')} GiB, {env.get('os')}), "
            f"kernel {env.get('kernel')}, Python {env.get('python')}; {libs}; "
            f"{env.get('iperf3')}")


def _background_line(doc: dict[str, Any]) -> str:
    parts = []
    for when, bg in (("before", doc["environment"].get("background_before")),
                     ("after", doc.get("background_after"))):
        if not bg:
            continue
        procs = "; ".join(f"`{p['cmd'][:60]}` {p['cpu_percent']}% (nice {p['nice']})"
                          for p in bg.get("busy_processes", [])) or "nothing else busy"
        parts.append(f"{when}: load {bg.get('loadavg')}, {procs}")
    return " / ".join(parts)


def _packages_line(env: dict[str, Any]) -> str:
    pk = env.get("debian_packages") or {}
    return ", ".join(f"{k} {v or 'not installed'}" for k, v in pk.items())


def _udp_cell(r: dict[str, Any], name: str) -> str:
    t = _test(r, name)
    if t is None:
        return "-"
    return f"{_sig((t.get('rx_pps') or 0) / 1e3)} ({_f(t.get('loss_percent'), '.0f')}%)"


def _cpu_cell(r: dict[str, Any]) -> str:
    t = _test(r, "tcp1")
    if t is None or "daemon_cpu_s_per_gb" not in t:
        return "kernel" if r.get("kind") == "kernel" else "-"
    return _f(t["daemon_cpu_s_per_gb"], ".1f")


def _check_cell(r: dict[str, Any]) -> str:
    bits = []
    mc = r.get("mtu_check") or {}
    if mc.get("ok") is False:
        bits.append("MTU check FAILED")
    lk = r.get("leak_check") or {}
    if lk and not lk.get("checked"):
        bits.append("unchecked")
    elif lk.get("checked"):
        if lk.get("plaintext_seen"):
            bits.append("LEAK" if r.get("encrypted") else "clear")
        else:
            bits.append("sealed")
    return ", ".join(bits) or "-"


def markdown(doc: dict[str, Any], files: dict[str, str] | None = None) -> str:
    env, cfg = doc["environment"], doc["config"]
    files = files or {}
    lines = [
        f"# sleeve end-to-end benchmark ({env['date']})",
        "",
        f"- machine: {stamp_line(env)}",
        f"- reference tunnels (Debian): {_packages_line(env)}",
        f"- two lab hosts on one switch (veth + bridge), everything on the same "
        f"{env.get('cpus')} cores; each iperf3 run {cfg['seconds']} s; UDP: iperf3 -b 0 "
        f"(as fast as possible), packets received per second and loss; ping "
        f"{cfg['ping_count']} x 10 ms; CPU = utime+stime of both ends' tunnel processes "
        "during the run, per GB received",
        f"- whole run: {doc.get('wall_seconds')} s wall; tests {', '.join(cfg['tests'])}",
        f"- other load on the machine (>= 10% of a core, sampled 1 s) {_background_line(doc)}",
        f"- {doc.get('anchor_note', '')}",
    ]
    if files:
        lines.append("- files: " + ", ".join(f"{k} `{v}`" for k, v in files.items() if v))
    lines += [
        "",
        "## Results",
        "",
        "| subject | layer | MTU | wire | TCP 1 a→b | TCP 1 b→a | TCP 4 a→b | TCP 4 b→a "
        "| UDP 64 B kpps (loss) | UDP 512 B kpps (loss) | ping avg / p99 ms | CPU-s/GB "
        "| retrans (TCP 1 a→b) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    unavailable: list[str] = []
    for r in doc["results"]:
        s = r["subject"]
        if r.get("status") == "not available":
            lines.append(f"| {s} | {r.get('layer', '')} | | | not available |||||||||")
            unavailable.append(f"- **{s}**: not available: {r.get('reason')}")
            continue
        if "tests" not in r:
            lines.append(f"| {s} | {r.get('layer', '')} | | | FAILED |||||||||")
            unavailable.append(f"- **{s}**: FAILED: {str(r.get('error'))[:300]}")
            continue
        g = {m.key: m.get(r) for m in METRICS}
        t1 = _test(r, "tcp1") or {}
        ping = f"{_f(g['ping_avg'])} / {_f(g['ping_p99'])}"
        lines.append(
            f"| {s} | {r.get('layer', '')} | {_f(r.get('mtu'), 'd')} | {_check_cell(r)} "
            f"| {_sig(g['tcp1'])} | {_sig(g['tcp1r'])} | {_sig(g['tcp4'])} | {_sig(g['tcp4r'])} "
            f"| {_udp_cell(r, 'udp64')} | {_udp_cell(r, 'udp512')} | {ping} "
            f"| {_cpu_cell(r)} | {_f(t1.get('retransmits'), 'd')} |")
        if r.get("status") == "failed":
            unavailable.append(f"- **{s}**: {r.get('error')}")
    lines += ["", "Gbit/s received; `wire`: what tcpdump on the switch saw of a patterned "
              "ping (sealed: pattern not visible; clear: visible, the subject does not "
              "encrypt). Subjects not measured:" if unavailable else
              "Gbit/s received; `wire`: what tcpdump on the switch saw of a patterned ping "
              "(sealed: pattern not visible; clear: visible, the subject does not encrypt).",
              ""]
    if unavailable:
        lines += [*unavailable, ""]
    rt = doc.get("ratios") or {}
    for s, rows in rt.items():
        lines += [f"## Ratios: {s} ÷ reference", "",
                  "Ratio = sleeve value ÷ reference value. ↑ metrics: above 1 means sleeve "
                  "is better; ↓ metrics: below 1 means sleeve is better. Best peer = the best "
                  "userspace tunnel of this run for that metric.", "",
                  "| metric | unit | " + s + " | best userspace peer | " + s + "/peer "
                  "| vxlan | " + s + "/vxlan | veth | " + s + "/veth |",
                  "|---|---|---:|---|---:|---:|---:|---:|---:|"]
        for key, row in rows.items():
            m = METRIC_BY_KEY[key]
            bp, vx, ve = row.get("best_peer"), row.get("vs_vxlan"), row.get("vs_veth")
            lines.append(
                f"| {m.label} {m.arrow} | {m.unit} | {_sig(row['value'])} "
                f"| {(bp['subject'] + ' ' + _sig(bp['value'])) if bp else '-'} "
                f"| {_f(bp['ratio']) if bp else '-'} "
                f"| {_sig(vx['value']) if vx else '-'} | {_f(vx['ratio']) if vx else '-'} "
                f"| {_sig(ve['value']) if ve else '-'} | {_f(ve['ratio']) if ve else '-'} |")
        lines.append("")
    lines += _details(doc)
    lines += _profile_md(doc)
    return "\n".join(lines).rstrip() + "\n"


def _details(doc: dict[str, Any]) -> list[str]:
    lines = ["## Details per run", "",
             "Tunnel CPU-s: both ends' tunnel processes; box CPU-s: busy time of the whole "
             "machine (of cores x seconds); UdpRcvbufErrors: receiving host (b for a->b, a "
             "for b->a).", "",
             "| subject | test | Gbit/s | tx kpps | rx kpps | loss % | retrans "
             "| tunnel CPU-s | CPU-s/GB | box CPU-s | UdpRcvbufErrors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        for name, t in (r.get("tests") or {}).items():
            if name == "ping":
                continue
            if "error" in t:
                lines.append(f"| {r['subject']} | {name} | FAILED: {t['error'][:80]} "
                             "||||||||")
                continue
            rcv = "a" if name.endswith("r") else "b"
            nd = (t.get("nstat_delta") or {}).get(rcv, {})
            box = (f"{_f(t.get('box_busy_cpu_seconds'), '.1f')} of "
                   f"{_f(t.get('box_total_cpu_seconds'), '.0f')}")
            tx = t.get("tx_pps")
            rx = t.get("rx_pps")
            lines.append(
                f"| {r['subject']} | {name} | {_sig(t['bits_per_second'] / 1e9)} "
                f"| {_sig(tx / 1e3) if tx else '-'} | {_sig(rx / 1e3) if rx else '-'} "
                f"| {_f(t.get('loss_percent'), '.1f')} | {_f(t.get('retransmits'), 'd')} "
                f"| {_f(t.get('daemon_cpu_seconds_total'), '.2f')} "
                f"| {_f(t.get('daemon_cpu_s_per_gb'), '.1f')} | {box} "
                f"| {_f(nd.get('UdpRcvbufErrors'), 'd')} |")
    lines.append("")
    notes = [f"- {r['subject']}: {n}" for r in doc["results"] for n in (r.get("notes") or [])]
    for r in doc["results"]:
        mc = r.get("mtu_check") or {}
        if mc.get("ok") is False:
            notes.append(f"- {r['subject']}: MTU check failed: {json.dumps(mc)}")
        if r.get("teardown_errors"):
            notes.append(f"- {r['subject']}: teardown errors: {r['teardown_errors']}")
    if notes:
        lines += ["Notes:", "", *notes, ""]
    return lines


# ---------------------------------------------------------------- profile


_LINE_RE: Final = re.compile(r"^(.*) (\d+)$")
_FRAME_RE: Final = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")
IDLE_LEAVES: Final = ("epoll_pwait", "epoll_wait", "poll", "ppoll", "select", "pselect6")
CATEGORIES: Final = ("idle", "syscalls", "crypto", "python+interpreter")
# A helper thread's stack through one of these is parked (blocked without the GIL).
_PARKED: Final = ("acquire_lock", "SimpleQueue_get", "Condition.wait", "epoll_wait",
                  "select (", "poll (", "recv (", "recvmsg (")


def _split_frame(frame: str) -> tuple[str, str]:
    """``func (path/mod.py:123)`` -> (``func``, ``path/mod.py``)."""
    m = _FRAME_RE.match(frame.strip())
    if not m:
        return frame.strip(), ""
    return m.group(1), m.group(2)


def _short_frame(frame: str) -> str:
    """``func (/long/path/pkg/mod.py:123)`` -> ``func (pkg/mod.py)``; sleeve's own modules
    keep their path from ``sleeve/``."""
    func, path = _split_frame(frame)
    if not path:
        return func
    if path.startswith("sleeve/") or "/sleeve/" in path:
        path = "sleeve/" + path.rsplit("/sleeve/", 1)[-1].removeprefix("sleeve/")
    else:
        path = "/".join(path.split("/")[-2:])
    return f"{func} ({path})"


def _category(frames: list[str]) -> str:
    func, path = _split_frame(frames[-1])
    if func in IDLE_LEAVES:
        return "idle"
    if any("crypto_aead_" in f or "libsodium" in f for f in frames):
        return "crypto"
    if path.startswith("libc.so"):
        return "syscalls"
    return "python+interpreter"


def summarize_collapsed(text: str, top: int = 15) -> dict[str, Any]:
    """Where a py-spy raw (collapsed) profile spends its samples.

    ``categories``: share of all samples whose leaf is an idle wait (epoll), a libc
    system call (the kernel work done in the router's own context: UDP send/receive,
    TAP read/write), inside libsodium's AEAD (``crypto``), or anything else (Python code
    and the interpreter). ``self``: the hottest leaf functions (line numbers dropped);
    ``inclusive``: the sleeve functions with the most samples on their stack.

    Only the main (event loop) thread's samples count: py-spy samples every thread, and a
    helper thread (the executor's worker, the fast datapath's netlink worker) parked on a
    lock would otherwise show as a third of the samples "in libc". Helper threads are
    counted apart: ``helper``: samples, and how many of them were not parked on a lock
    or a wait (``helper_busy``: these compete with the loop for the GIL).
    """
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    total = helper = helper_busy = 0
    for line in text.splitlines():
        m = _LINE_RE.match(line.strip())
        if not m:
            continue
        stack, n = m.group(1), int(m.group(2))
        if "Thread._bootstrap" in stack:
            helper += n
            if not any(w in stack for w in _PARKED):
                helper_busy += n
            continue
        frames = [f for f in stack.split(";")
                  if f and not f.startswith(("process ", "thread "))]
        total += n
        if not frames:
            self_c["(no frame)"] += n
            cats["python+interpreter"] += n
            continue
        cats[_category(frames)] += n
        short = [_short_frame(f) for f in frames]
        self_c[short[-1]] += n
        for f in set(short):
            if "(sleeve/" in f:
                incl[f] += n
    if total == 0:
        return {"samples": 0, "categories": {}, "self": [], "inclusive": [],
                "helper": helper, "helper_busy": helper_busy}

    def pct(c: int) -> float:
        return round(100.0 * c / total, 1)

    return {
        "samples": total,
        "categories": {c: pct(cats[c]) for c in CATEGORIES},
        "self": [[f, c, pct(c)] for f, c in self_c.most_common(top)],
        # the entry points (__main__, cli.launch) are on every stack: not informative
        "inclusive": [[f, c, pct(c)] for f, c in incl.most_common()
                      if c < total][:top],
        "helper": helper, "helper_busy": helper_busy,
    }


def _profile_md(doc: dict[str, Any]) -> list[str]:
    prof = next((r.get("profile") for r in doc["results"] if r.get("profile")), None)
    if prof is None:
        return []
    lines = ["## Profile: encrypted sleeve routers under load", ""]
    if prof.get("status") != "ok":
        why = prof.get("reason") or prof.get("error") or "; ".join(
            f"{h}: {v.get('error')}" for h, v in (prof.get("summary") or {}).items())
        return [*lines, f"Profile {prof.get('status')}: {why}", ""]
    bps = prof.get("bits_per_second_while_profiled")
    lines += [f"{prof.get('tool')}, {prof['rate_hz']} Hz with native frames (the router is "
              "paused per sample, so it runs slower while profiled), idle samples included, "
              f"{prof['seconds']} s of {prof['load']}"
              + (f" ({bps / 1e9:.3f} Gbit/s while profiled)" if bps else "")
              + ". Raw collapsed stacks (load them into speedscope or flamegraph.pl): "
              + ", ".join(f"`{f}`" for f in prof["files"].values() if f) + ".", ""]
    for host, s in prof.get("summary", {}).items():
        lines += [f"### router {host}: {s.get('role')}, {s.get('samples', 0)} samples", ""]
        if "error" in s:
            lines += [f"py-spy failed: {s['error']}", ""]
            continue
        cats = s.get("categories") or {}
        helpers = (f" Helper threads (not counted above): {s['helper']} samples, "
                   f"{s.get('helper_busy', 0)} of them not parked on a lock or a wait."
                   if s.get("helper") else "")
        lines += ["Samples by leaf (event-loop thread): "
                  + ", ".join(f"{k} {v}%" for k, v in cats.items()) + "." + helpers, "",
                  "| self % | leaf function | | inclusive % | sleeve function (on the stack) |",
                  "|---:|---|---|---:|---|"]
        for i in range(max(len(s["self"]), len(s["inclusive"]))):
            a = s["self"][i] if i < len(s["self"]) else None
            b = s["inclusive"][i] if i < len(s["inclusive"]) else None
            lines.append(f"| {a[2] if a else ''} | {('`' + a[0] + '`') if a else ''} | "
                         f"| {b[2] if b else ''} | {('`' + b[0] + '`') if b else ''} |")
        lines.append("")
    return lines


# ---------------------------------------------------------------- chart


def chart(doc: dict[str, Any], path: pathlib.Path) -> str | None:
    """Write the PNG chart; return None, or why it was not written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (./install.sh --bench)"
    results = [r for r in doc["results"] if r.get("status") != "not available"
               and "tests" in r]
    names = [r["subject"] for r in results]
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    panels = [
        (axes[0][0], ("tcp1", "tcp1r", "tcp4", "tcp4r"), "TCP throughput, Gbit/s (log)", True),
        (axes[0][1], ("udp64", "udp512"), "UDP packets received, kpps (iperf3 -b 0)", False),
        (axes[1][0], ("ping_avg", "ping_p99"), "ping RTT, ms", False),
        (axes[1][1], ("cpu_per_gb",), "tunnel CPU-s per GB (TCP 1 stream a→b)", False),
    ]
    x = list(range(len(names)))
    for ax, keys, title, log in panels:
        width = 0.8 / len(keys)
        for k, key in enumerate(keys):
            m = METRIC_BY_KEY[key]
            vals = [m.get(r) for r in results]
            xs = [i + (k - (len(keys) - 1) / 2) * width for i in x]
            if log:
                ax.set_yscale("log")
            ax.bar(xs, [v if v is not None else 0 for v in vals], width, label=m.label)
            for xi, v, r in zip(xs, vals, results, strict=True):
                if v is not None:
                    ax.annotate(_sig(v), (xi, v), ha="center", va="bottom", fontsize=6,
                                rotation=90)
                else:
                    ax.annotate("kernel" if r.get("kind") == "kernel" and key == "cpu_per_gb"
                                else "n/a", (xi, 0), xycoords=("data", "axes fraction"),
                                xytext=(0, 3), textcoords="offset points",
                                ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_title(title, fontsize=10)
        if log:
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, hi * 4)
        else:
            ax.margins(y=0.15)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(axis="y", alpha=0.3)
    na = [r["subject"] for r in doc["results"] if r.get("status") == "not available"]
    env = doc["environment"]
    foot = stamp_line(env)
    if na:
        foot += "\nnot available: " + ", ".join(na)
    fig.suptitle(f"sleeve end-to-end benchmark, {env['date']}", fontsize=12)
    fig.text(0.01, 0.005, foot, fontsize=7, va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ---------------------------------------------------------------- files


def write_all(doc: dict[str, Any], out: pathlib.Path, stamp: str,
              latest: bool = True) -> dict[str, pathlib.Path]:
    """Write ``e2e-<stamp>.{png,md,json}`` (and LATEST.md); return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"e2e-{stamp}.json", "md": out / f"e2e-{stamp}.md"}
    png = out / f"e2e-{stamp}.png"
    why = chart(doc, png)
    doc["chart"] = {"file": png.name} if why is None else {"file": None, "reason": why}
    if why is None:
        paths["png"] = png
    files = {"json": paths["json"].name, "chart": png.name if why is None else "",
             "md": paths["md"].name}
    for r in doc["results"]:
        prof = r.get("profile") or {}
        for host, f in (prof.get("files") or {}).items():
            if f:
                files[f"profile {host}"] = f
    md = markdown(doc, files)
    if why is not None:
        md += f"\nChart not written: {why}\n"
    paths["md"].write_text(md)
    paths["json"].write_text(json.dumps(doc, indent=2) + "\n")
    if latest:
        paths["latest"] = out / "LATEST.md"
        paths["latest"].write_text(md)
    return paths
