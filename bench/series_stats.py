"""Statistics of an interleaved series of end-to-end runs (bench.series): medians and
spreads per subject, per-repeat ratios of sleeve to each reference tunnel, the targets of
issue 23, and each reference tunnel checked against its own history of medians.

Pure functions of plain data (the per-run result dicts of ``bench.e2e.run_subject``), so
they are tested without a lab (tests/test_bench_series.py).

Why per-repeat ratios: this VM's figures move by 15-30% between runs, and the subjects of
one repeat run back to back, so a slow minute lowers both. The ratio of repeat ``i`` is
sleeve's value in repeat ``i`` over the peer's value in repeat ``i``; its median and
min..max over the repeats is the result, not one run's ratio.
"""

from __future__ import annotations

import json
import pathlib
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bench.e2e_report import METRICS, Metric, _field

# Loss is a "lower is better" figure of the UDP tests: the targets ask for less loss too.
LOSS_METRICS: Final = (
    Metric("udp64_loss", "UDP 64 B loss", "%", False, _field("udp64", "loss_percent")),
    Metric("udp512_loss", "UDP 512 B loss", "%", False, _field("udp512", "loss_percent")),
)
ALL_METRICS: Final = (*METRICS, *LOSS_METRICS)
BY_KEY: Final = {m.key: m for m in ALL_METRICS}

# Issue 23's targets: metric -> (bound on the median of sleeve/fastd, "min" or "max").
TARGETS: Final[dict[str, tuple[float, str]]] = {
    "tcp1": (2.0, "min"), "tcp1r": (2.0, "min"), "cpu_per_gb": (0.5, "max"),
    "ping_avg": (1.5, "max"), "ping_p99": (2.0, "max"),
    "udp64": (1.5, "min"), "udp512": (1.5, "min"),
    "udp64_loss": (1.0, "max"), "udp512_loss": (1.0, "max"),  # less loss than fastd
}
TARGET_PEER: Final = "fastd"
# ... and the relayed path against the direct one, both sleeve, in the same repeat:
# metric -> (bound on the median of sleeve-relayed/sleeve, "min" or "max").
RELAYED, DIRECT = "sleeve-relayed", "sleeve"
RELAY_TARGETS: Final[dict[str, tuple[float, str]]] = {"tcp1": (0.5, "min"),
                                                      "tcp1r": (0.5, "min")}
REFERENCE_PEERS: Final = ("wireguard-go", "tinc", "fastd")
# A peer's run is flagged when its figure is this far on the bad side of its reference
# median (0.75: a quarter lower throughput, or a third higher ping/CPU). The issue's
# example: fastd at 0.69 Gbit/s where it reaches ~1.0 in other runs (0.67).
FLAG_FRACTION: Final = 0.75
HISTORY_KEEP: Final = 20  # medians kept per peer and metric (bounded file)
# Which host receives in each test (the one whose UdpRcvbufErrors matter).
RECEIVER: Final = {"tcp1": "b", "tcp4": "b", "udp64": "b", "udp512": "b",
                   "tcp1r": "a", "tcp4r": "a", "cpu_per_gb": "b"}


@dataclass(frozen=True)
class Spread:
    median: float
    lo: float
    hi: float
    n: int

    def fmt(self, spec: str = ".3g") -> str:
        return f"{self.median:{spec}} ({self.lo:{spec}}..{self.hi:{spec}})"


def spread(values: Sequence[float]) -> Spread | None:
    """Median and min..max of the values (None when there are none)."""
    if not values:
        return None
    return Spread(statistics.median(values), min(values), max(values), len(values))


def interleaved(subjects: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """The run order: every subject once per repeat, repeats one after the other
    (A B A B ...), so that a slow stretch of the machine touches every subject."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    return [(i, s) for i in range(repeats) for s in subjects]


def values(runs: Sequence[dict[str, Any]], subject: str, metric: Metric,
           ) -> list[tuple[int, float]]:
    """(repeat, value) of every run of ``subject`` that measured ``metric``."""
    out = []
    for run in runs:
        if run["subject"] != subject:
            continue
        v = metric.get(run["result"])
        if v is not None:
            out.append((int(run["repeat"]), v))
    return out


def per_subject(runs: Sequence[dict[str, Any]], subjects: Sequence[str],
                ) -> dict[str, dict[str, Spread]]:
    """subject -> metric key -> median and spread over the repeats."""
    out: dict[str, dict[str, Spread]] = {}
    for s in subjects:
        row = {}
        for m in ALL_METRICS:
            sp = spread([v for _, v in values(runs, s, m)])
            if sp is not None:
                row[m.key] = sp
        out[s] = row
    return out


def ratios(runs: Sequence[dict[str, Any]], subject: str, peer: str,
           ) -> dict[str, tuple[Spread, list[float]]]:
    """metric key -> (spread of the per-repeat ratios subject/peer, the ratios), over the
    repeats in which both measured the metric (a zero peer figure has no ratio; a zero
    sleeve loss against a non-zero peer loss is a ratio of 0)."""
    out: dict[str, tuple[Spread, list[float]]] = {}
    for m in ALL_METRICS:
        mine = dict(values(runs, subject, m))
        theirs = dict(values(runs, peer, m))
        rs = [mine[i] / theirs[i] for i in sorted(mine) if i in theirs and theirs[i] > 0]
        sp = spread(rs)
        if sp is not None:
            out[m.key] = (sp, rs)
    return out


def targets(rat: dict[str, tuple[Spread, list[float]]],
            table: dict[str, tuple[float, str]] = TARGETS) -> list[dict[str, Any]]:
    """Each of issue 23's targets against the median ratio: met, not met, or not measured."""
    rows = []
    for key, (bound, kind) in table.items():
        got = rat.get(key)
        if got is None:
            rows.append({"metric": key, "bound": bound, "kind": kind, "status": "not measured"})
            continue
        med = got[0].median
        ok = med >= bound if kind == "min" else med <= bound
        if kind == "max" and key.endswith("_loss"):
            ok = med < bound  # "less loss": strictly
        rows.append({"metric": key, "bound": bound, "kind": kind, "median": med,
                     "lo": got[0].lo, "hi": got[0].hi,
                     "status": "met" if ok else "not met"})
    return rows


# ---------------------------------------------------------------- history and flags


def load_history(path: pathlib.Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """peer -> metric key -> [{"stamp", "median"}, ...] (oldest first); {} if absent.
    A damaged file is an error (it is committed: a silent reset would hide the drift)."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("peers"), dict):
        raise ValueError(f"{path}: expected an object with a 'peers' object")
    peers: dict[str, dict[str, list[dict[str, Any]]]] = doc["peers"]
    return peers


def reference(history: dict[str, dict[str, list[dict[str, Any]]]], peer: str, key: str,
              ) -> float | None:
    """The median of a peer's past medians for a metric (None without history)."""
    past = [float(e["median"]) for e in history.get(peer, {}).get(key, [])]
    return statistics.median(past) if past else None


def updated_history(history: dict[str, dict[str, list[dict[str, Any]]]],
                    medians: dict[str, dict[str, Spread]], stamp: str,
                    peers: Sequence[str] = REFERENCE_PEERS,
                    ) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The history with this series' medians of the reference peers appended, at most
    ``HISTORY_KEEP`` per peer and metric (the oldest go)."""
    out = {p: {k: list(v) for k, v in ms.items()} for p, ms in history.items()}
    for p in peers:
        for key, sp in medians.get(p, {}).items():
            lst = out.setdefault(p, {}).setdefault(key, [])
            lst.append({"stamp": stamp, "median": round(sp.median, 6), "n": sp.n})
            del lst[:-HISTORY_KEEP]
    return out


def save_history(path: pathlib.Path, history: dict[str, dict[str, list[dict[str, Any]]]],
                 ) -> None:
    doc = {"about": "medians of the reference tunnels per bench.series run "
                    "(bench/series_stats.py); the flag reference is their median",
           "peers": history}
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _far_below(m: Metric, v: float, ref: float) -> bool:
    if m.higher_is_better:
        return v < FLAG_FRACTION * ref
    return v > ref / FLAG_FRACTION


FLAGGED_METRICS: Final = ("tcp1", "tcp1r", "tcp4", "tcp4r", "udp64", "udp512", "ping_avg")


def flags(runs: Sequence[dict[str, Any]], history: dict[str, dict[str, list[dict[str, Any]]]],
          peers: Sequence[str] = REFERENCE_PEERS,
          medians: dict[str, dict[str, Spread]] | None = None,
          ) -> list[dict[str, Any]]:
    """Every run in which a reference peer was far below its reference (its median over
    past series; without history, its median in this series), with the run's tunnel CPU
    seconds and the receiving host's UdpRcvbufErrors, so a reader can tell a starved peer
    (low CPU) from an overloaded one (buffer overflows)."""
    out = []
    for p in peers:
        for key in FLAGGED_METRICS:
            m = BY_KEY[key]
            ref = reference(history, p, key)
            source = "history"
            if ref is None and medians is not None and key in medians.get(p, {}):
                ref, source = medians[p][key].median, "this series"
            if ref is None:
                continue
            for run in runs:
                if run["subject"] != p:
                    continue
                v = m.get(run["result"])
                if v is None or not _far_below(m, v, ref):
                    continue
                test = run["result"].get("tests", {}).get(key.split("_")[0], {})
                rcv = RECEIVER.get(key, "b")
                out.append({
                    "peer": p, "metric": key, "repeat": int(run["repeat"]), "value": v,
                    "reference": ref, "reference_from": source,
                    "cpu_seconds": test.get("daemon_cpu_seconds_total"),
                    "udp_rcvbuf_errors": (test.get("nstat_delta") or {}).get(rcv, {}).get(
                        "UdpRcvbufErrors"),
                })
    return out


# ---------------------------------------------------------------- Markdown


def _g(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def _target_lines(s: str, p: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"### Issue 23 targets: {s} ÷ {p} (on the median ratio)", "",
             "| metric | target | median (min..max) | |", "|---|---|---:|---|"]
    for t in rows:
        sign = ">=" if t["kind"] == "min" else ("<" if t["metric"].endswith("_loss") else "<=")
        got = f"{t['median']:.3f} ({t['lo']:.3f}..{t['hi']:.3f})" if "median" in t else "-"
        lines.append(f"| {BY_KEY[t['metric']].label} | {sign} {t['bound']} | {got} | "
                     f"{t['status']} |")
    return [*lines, ""]


def markdown(doc: dict[str, Any], header: Callable[[dict[str, Any]], list[str]],
             ) -> str:
    """The series report: per-subject medians, ratios to fastd and every peer with
    spreads, the targets, the flags."""
    subjects: list[str] = doc["config"]["subjects"]
    runs: list[dict[str, Any]] = doc["runs"]
    med = per_subject(runs, subjects)
    lines = [*header(doc), "## Medians (min..max) over the repeats", "",
             "| subject | " + " | ".join(f"{m.label} {m.arrow} ({m.unit})" for m in ALL_METRICS
                                       if any(m.key in med[s] for s in subjects)) + " |"]
    shown = [m for m in ALL_METRICS if any(m.key in med[s] for s in subjects)]
    lines.append("|---|" + "---:|" * len(shown))
    for s in subjects:
        cells = [med[s][m.key].fmt() if m.key in med[s] else "-" for m in shown]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("")
    sleeves = [s for s in subjects if s.startswith("sleeve")]
    peers = [p for p in subjects if p in REFERENCE_PEERS]
    pairs = [(s, p) for s in sleeves for p in peers]
    if RELAYED in subjects and DIRECT in subjects:
        pairs.insert(0, (RELAYED, DIRECT))
    for s, p in pairs:
        rat = ratios(runs, s, p)
        if not rat:
            continue
        lines += [f"## {s} ÷ {p}, per repeat", "",
                  "Ratio of the two figures measured in the same repeat; median (min..max)"
                  " over the repeats, then each repeat's. ↑: above 1 is better for "
                  f"{s}; ↓: below 1 is better.", "",
                  "| metric | median ratio (min..max) | per repeat |", "|---|---:|---|"]
        for m in shown:
            if m.key in rat:
                sp, rs = rat[m.key]
                lines.append(f"| {m.label} {m.arrow} | {sp.fmt('.3f')} | "
                             + ", ".join(f"{r:.3f}" for r in rs) + " |")
        lines.append("")
        table = (RELAY_TARGETS if (s, p) == (RELAYED, DIRECT)
                 else TARGETS if p == TARGET_PEER and s != RELAYED else None)
        if table is not None:
            lines += _target_lines(s, p, targets(rat, table))
    fl = doc.get("flags", [])
    lines += ["## Reference tunnels against their own history", "",
              f"A peer's run is flagged when its figure is worse than {FLAG_FRACTION} x "
              "(throughput) or 1/" + f"{FLAG_FRACTION} x (ping) its reference: the median "
              "of its medians in past series (`peer-history.json`), or of this series when "
              "there is no history yet.", ""]
    if not fl:
        lines += ["No run flagged.", ""]
    else:
        lines += ["| peer | metric | repeat | value | reference (from) | tunnel CPU-s | "
                  "UdpRcvbufErrors (receiver) |", "|---|---|---:|---:|---|---:|---:|"]
        for f in fl:
            lines.append(f"| {f['peer']} | {BY_KEY[f['metric']].label} | {f['repeat'] + 1} | "
                         f"{f['value']:.3g} | {f['reference']:.3g} ({f['reference_from']}) | "
                         f"{_g(f['cpu_seconds'])} | {_g(f['udp_rcvbuf_errors'], 'd')} |")
        lines.append("")
    hist = doc.get("history_reference", {})
    if hist:
        lines += ["Reference medians before this series (past series):", ""]
        for p, ms in sorted(hist.items()):
            lines.append(f"- {p}: " + ", ".join(f"{BY_KEY[k].label} {v:.3g}"
                                                for k, v in sorted(ms.items())))
        lines.append("")
    return "\n".join(lines) + "\n"
