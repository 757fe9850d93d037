"""CI smoke test of the fuzz harnesses in fuzz/ (atheris / libFuzzer).

- every harness really fuzzes: a bounded run in a subprocess exits 0, executed the runs
  it was asked for and covered a plausible number of edges (a harness that returns early
  or lost its instrumentation reports cov near 0 and fails here);
- the committed corpus (seeds and regression inputs) replays in-process through the
  harnesses' checks, so a decoder change that breaks a contract fails without fuzzing;
- the seeds are what fuzz/make_corpus.py generates today.

atheris is a test dependency (pyproject ``test`` extra): its absence is a failure, not a skip.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
TARGETS = ("datagram", "control", "topology")
RUNS = 2000
# Edges covered after 2000 runs are ~74 / ~265 / ~101; a harness that stops reaching the
# decoders drops far below these floors.
MIN_COV = {"datagram": 50, "control": 180, "topology": 70}


def test_atheris_is_installed() -> None:
    try:
        import atheris  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as e:  # must fail, not skip: CI would otherwise never fuzz
        pytest.fail(f"atheris is missing ({e}); install the test extra: ./install.sh --test")


@pytest.mark.parametrize("target", TARGETS)
def test_harness_fuzzes_for_a_bounded_run(target: str, tmp_path: pathlib.Path) -> None:
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz.run", "--target", target, "--runs", str(RUNS),
         "--max-time", "120", "--json", str(summary), "--logs", str(tmp_path / "logs"),
         "--artifacts", str(tmp_path / "artifacts"), "--keep-corpus", str(tmp_path / "work"),
         "--", "-seed=1"],  # a fixed libFuzzer seed: the same mutations on every CI run
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (res,) = json.loads(summary.read_text())
    assert res["target"] == target and res["ok"] and res["crash"] is None
    # libFuzzer's own closing line, read here independently of the runner's parser
    log = (tmp_path / "logs" / f"{target}.log").read_text()
    assert f"Done {RUNS} runs" in log, log[-2000:]
    assert "instrumented" in log and "no sleeve function" not in log
    assert res["runs"] == RUNS
    assert res["cov"] >= MIN_COV[target], res
    assert not any((tmp_path / "artifacts").rglob("crash-*"))


def _harness(target: str) -> Callable[[bytes], None]:
    mod = importlib.import_module(f"fuzz.fuzz_{target}")
    fn: Callable[[bytes], None] = mod.test_one_input
    return fn


@pytest.mark.parametrize("target", TARGETS)
def test_committed_corpus_replays_cleanly(target: str) -> None:
    files = sorted(p for p in (CORPUS / target).iterdir() if p.is_file())
    assert len(files) >= 5, f"corpus for {target} is missing"
    one_input = _harness(target)
    for path in files:
        one_input(path.read_bytes())  # raises AssertionError or the escaping exception


def test_seed_corpus_is_current() -> None:
    from fuzz import make_corpus

    for target, make in make_corpus.TARGETS.items():
        on_disk = {p.name[len("seed-"):]: p.read_bytes()
                   for p in (CORPUS / target).glob("seed-*")}
        assert on_disk == make(), (
            f"fuzz/corpus/{target} is stale: run `python3 -m fuzz.make_corpus`")
