"""Run the fuzz harnesses for a bounded number of runs and summarise them.

Usage::

    python3 -m fuzz.run [--runs N] [--max-time S] [--target T ...] [--keep-corpus DIR]

Each target runs as ``python3 -m fuzz.fuzz_<target> -runs=N -max_total_time=S ...`` with
two corpus directories: a scratch one first (libFuzzer writes the inputs it finds there)
and the committed seeds ``fuzz/corpus/<target>/`` second (only read, so a run never
dirties the repository). Crash inputs land in ``--artifacts`` (default ``fuzz/artifacts``,
ignored by git); copy one to ``fuzz/corpus/<target>/regress-<name>`` once it is understood.

Prints one line per target (runs, cov = covered edges, ft = libFuzzer features, corpus
size, time) and exits 1 when a target crashed, failed, or executed no runs. With
``--json FILE`` the same summary is written as JSON (tests/test_fuzz_smoke.py reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
TARGETS = ("datagram", "control", "topology")

# libFuzzer status lines look like "#20000	DONE   cov: 312 ft: 1204 corp: 88/6540b ..."
_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)", re.M)
_EXECUTED = re.compile(r"^stat::number_of_executed_units: (\d+)", re.M)
_DONE = re.compile(r"^Done (\d+) runs in (\d+) second", re.M)
_CRASH = re.compile(r"Test unit written to (\S+)")


@dataclass
class Result:
    target: str
    returncode: int
    runs: int  # executed units (libFuzzer's final stats)
    cov: int  # covered edges (instrumented Python branches) at the end
    ft: int  # features: edges plus hit-count buckets and comparison progress
    corpus: int  # inputs in the in-memory corpus at the end
    seconds: float
    crash: str | None  # path of the crash input, if any
    ok: bool

    def line(self) -> str:
        status = "ok" if self.ok else ("CRASH " + (self.crash or "") if self.crash
                                       else f"FAILED rc={self.returncode}")
        rate = self.runs / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.target:9} runs={self.runs:<8} cov={self.cov:<5} ft={self.ft:<6} "
                f"corpus={self.corpus:<5} time={self.seconds:6.1f}s ({rate:,.0f}/s)  {status}")


def parse(target: str, log: str, returncode: int, seconds: float) -> Result:
    """Read libFuzzer's stderr. Missing numbers count as 0, so a dead harness fails."""
    status = _STATUS.findall(log)
    cov = ft = corpus = 0
    if status:
        _n, _kind, c, f, corp, _size = status[-1]
        cov, ft, corpus = int(c), int(f), int(corp)
    executed = _EXECUTED.findall(log)
    done = _DONE.findall(log)
    runs = int(executed[-1]) if executed else (int(done[-1]) if done else 0)
    crash = _CRASH.findall(log)
    ok = returncode == 0 and not crash and runs > 0 and cov > 0
    return Result(target, returncode, runs, cov, ft, corpus, seconds,
                  crash[-1] if crash else None, ok)


def run_target(target: str, runs: int, max_time: int, artifacts: pathlib.Path,
               scratch: pathlib.Path, extra: list[str], log_dir: pathlib.Path | None
               ) -> Result:
    seeds = HERE / "corpus" / target
    art = artifacts / target
    art.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", f"fuzz.fuzz_{target}",
           f"-runs={runs}", f"-max_total_time={max_time}",
           "-print_final_stats=1",
           "-timeout=20",  # seconds per input: a hang is a finding too
           "-rss_limit_mb=2048",
           f"-artifact_prefix={art}/",
           *extra, str(scratch), str(seeds)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", check=False)
    seconds = time.monotonic() - start
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{target}.log").write_text(proc.stdout)
    res = parse(target, proc.stdout, proc.returncode, seconds)
    if not res.ok:
        # show the end of the log: the Python traceback of a crash is there
        sys.stdout.write("\n".join(proc.stdout.splitlines()[-60:]) + "\n")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the sleeve fuzz harnesses (bounded).")
    ap.add_argument("--runs", type=int, default=20000, help="runs per target (default 20000)")
    ap.add_argument("--max-time", type=int, default=600,
                    help="seconds per target at most (default 600)")
    ap.add_argument("--target", action="append", choices=TARGETS,
                    help="only this target (repeatable; default: all)")
    ap.add_argument("--artifacts", type=pathlib.Path, default=HERE / "artifacts",
                    help="where crash inputs are written (default fuzz/artifacts)")
    ap.add_argument("--keep-corpus", type=pathlib.Path, default=None,
                    help="keep the inputs found in DIR/<target> (default: a temp dir)")
    ap.add_argument("--logs", type=pathlib.Path, default=None, help="save full logs in DIR")
    ap.add_argument("--json", type=pathlib.Path, default=None, help="write the summary here")
    ap.add_argument("libfuzzer_args", nargs="*",
                    help="extra libFuzzer flags after --, e.g. -- -seed=1 -max_len=8192")
    args = ap.parse_args(argv)
    targets = args.target or list(TARGETS)
    results = []
    with tempfile.TemporaryDirectory(prefix="sleeve-fuzz-") as tmp:
        for t in targets:
            scratch = (args.keep_corpus or pathlib.Path(tmp)) / t
            res = run_target(t, args.runs, args.max_time, args.artifacts.resolve(), scratch,
                             args.libfuzzer_args, args.logs)
            print(res.line(), flush=True)
            results.append(res)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    failed = [r.target for r in results if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print(f"all {len(results)} targets ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
