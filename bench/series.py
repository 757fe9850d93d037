"""Interleaved repeats of the end-to-end bench: ``python3 -m bench.series``.

    flock /tmp/sleeve-lab.lock python3 -m bench.series --subjects sleeve,fastd --repeats 3

One run's ratio is not a result on this VM (figures move by 15-30% between runs). Here
every subject is measured once per repeat, in the same order each time (A B A B ...),
each in a fresh lab as in ``bench.e2e``; the report gives every figure's median and
min..max per subject, and every sleeve/peer ratio per repeat with its median and
spread, against issue 23's targets. Each reference tunnel's medians are also checked
against its own history (``bench/results/peer-history.json``, updated by the run): a run
in which a peer was far below its usual figure is flagged, with its CPU and the
receiver's UdpRcvbufErrors. Output: ``series-<stamp>.json`` and ``.md`` in ``--out``, and
``LATEST.md`` (unless ``--no-latest``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench import e2e
from bench import e2e_report as report
from bench import series_stats as st

DEFAULT_SUBJECTS = "sleeve,sleeve-relayed,fastd"
DEFAULT_TESTS = "tcp1,tcp1r,udp64,udp512,ping"
HISTORY_NAME = "peer-history.json"


def run_series(subjects: Sequence[str], repeats: int, cfg: e2e.Config,
               ) -> list[dict[str, Any]]:
    """Every subject once per repeat, interleaved; each run's result as bench.e2e gives it."""
    order = st.interleaved(subjects, repeats)
    runs: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for n, (i, s) in enumerate(order, 1):
        e2e.say(f"--- series run {n}/{len(order)}: repeat {i + 1}, {s} "
                f"({time.monotonic() - t0:.0f} s so far)")
        try:
            res = e2e.run_subject(s, cfg)
        except Exception as e:  # recorded, the other runs go on
            res = {"subject": s, "status": "failed", "error": f"{type(e).__name__}: {e}"}
        runs.append({"repeat": i, "subject": s, "result": res})
    return runs


def _header(doc: dict[str, Any]) -> list[str]:
    c = doc["config"]
    return [f"# sleeve interleaved benchmark series ({doc['started']})", "",
            "- " + report.stamp_line(doc["environment"]),
            f"- subjects {', '.join(c['subjects'])}; {c['repeats']} repeats interleaved "
            f"(order: {' '.join(s for _, s in st.interleaved(c['subjects'], 1))}, repeated);"
            f" tests {', '.join(c['tests'])}, {c['seconds']} s each; ping {c['ping_count']}"
            " x 10 ms; each run a fresh two-host lab (bench.e2e)",
            f"- whole series: {doc['wall_seconds']} s wall; failed runs: "
            + (", ".join(f"repeat {r['repeat'] + 1} {r['subject']}" for r in doc["runs"]
                         if r["result"].get("status") != "ok") or "none"),
            f"- reproduce: `{doc['command']}`", ""]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.series",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--subjects", default=DEFAULT_SUBJECTS,
                   help=f"comma-separated, of {','.join(e2e.SUBJECTS)} ({DEFAULT_SUBJECTS})")
    p.add_argument("--tests", default=DEFAULT_TESTS, help=f"({DEFAULT_TESTS})")
    p.add_argument("--repeats", type=int, default=3, help="repeats, 3..20 (3)")
    p.add_argument("--seconds", type=int, default=5, help="each iperf3 run (5)")
    p.add_argument("--ping-count", type=int, default=200, help="pings 10 ms apart (200)")
    p.add_argument("--out", type=pathlib.Path, default=e2e.DEFAULT_OUT)
    p.add_argument("--history", type=pathlib.Path, default=None,
                   help=f"peer medians file (default <out>/{HISTORY_NAME})")
    p.add_argument("--no-history-update", action="store_true",
                   help="check against the history but do not add this series to it")
    p.add_argument("--no-latest", action="store_true", help="do not write LATEST.md")
    args = p.parse_args(argv)
    subjects = e2e._csv(args.subjects, e2e.SUBJECTS, "subjects", p.error)
    tests = e2e._csv(args.tests, tuple(e2e.TESTS), "tests", p.error)
    if not 3 <= args.repeats <= 20:
        p.error("--repeats must be 3..20 (fewer is one run's luck, not a median)")
    if not 1 <= args.seconds <= 60:
        p.error("--seconds must be 1..60 (a series holds the lab lock)")
    if not 1 <= args.ping_count <= 2000:
        p.error("--ping-count must be 1..2000")
    out: pathlib.Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    hist_path: pathlib.Path = args.history or out / HISTORY_NAME
    try:
        history = st.load_history(hist_path)
    except ValueError as e:
        p.error(str(e))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    cfg = e2e.Config(args.seconds, tests, args.ping_count, 0, None, out, stamp)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    env = e2e.environment()
    t0 = time.monotonic()
    runs = run_series(subjects, args.repeats, cfg)
    medians = st.per_subject(runs, subjects)
    doc: dict[str, Any] = {
        "schema": 1, "started": started, "environment": env,
        "command": "python3 -m bench.series " + " ".join(sys.argv[1:] if argv is None
                                                          else argv),
        "config": {"subjects": subjects, "tests": tests, "repeats": args.repeats,
                   "seconds": args.seconds, "ping_count": args.ping_count},
        "wall_seconds": round(time.monotonic() - t0, 1), "runs": runs,
        "history_reference": {
            peer: {k: v for k in st.FLAGGED_METRICS
                   if (v := st.reference(history, peer, k)) is not None}
            for peer in st.REFERENCE_PEERS if peer in history},
    }
    doc["flags"] = st.flags(runs, history, medians=medians)
    doc["medians"] = {s: {k: vars(v) for k, v in ms.items()} for s, ms in medians.items()}
    md = st.markdown(doc, _header)
    (out / f"series-{stamp}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / f"series-{stamp}.md").write_text(md)
    if not args.no_latest:
        (out / "LATEST.md").write_text(md)
    if not args.no_history_update:
        st.save_history(hist_path, st.updated_history(history, medians, stamp))
    print(md)
    return 1 if any(r["result"].get("status") != "ok" for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
