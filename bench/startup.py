"""What one router start costs (issue 23: 50 start-ups on 2 cores were 8-20 s of the
50-router convergence time):

    flock /tmp/sleeve-lab.lock python3 -m bench.startup [--repeats 3]

Root; one network namespace at a time (loopback only, removed after each start). A copy
of the sleeve package is started with ``sleeve launch`` in three variants, interleaved
(A B C A B C ...): the password as the lab gave it before, with the package compiled from
source (this machine sets PYTHONDONTWRITEBYTECODE, so nothing caches it); the password
with bytecode present (as a pip install has); ``--psk-file`` with bytecode (no Argon2id).
Per start: CPU (utime + stime) and wall time from exec to the first answer of ``GET
/status``, and VmHWM then. Medians and ranges printed; nothing written.
"""

from __future__ import annotations

import argparse
import compileall
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import sleeve
from sleeve.crypto.kdf import format_psk, psk_from_password
from sleeve.lab.routers import ns_get_json

PASSWORD = "bench startup password"


def one_start(cwd: pathlib.Path, auth: list[str], state: pathlib.Path,
              timeout: float = 20.0) -> tuple[float, float, float]:
    """(CPU s, wall s, VmHWM MB) of one router from exec to its first answer."""
    ns = f"sleeve-startup-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "sleeve", "launch",
             "--state-dir", str(state), "--api-socket", str(state / "api.sock"),
             "--nickname", "startup", "--ip", "198.19.0.1/24", *auth],
            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        try:
            while True:
                try:
                    ns_get_json(ns, "/status", timeout=1.0)
                    break
                except (OSError, RuntimeError, ValueError):
                    if time.monotonic() - t0 > timeout or p.poll() is not None:
                        raise RuntimeError(f"the router did not answer in {timeout:.0f} s "
                                           f"(exit status {p.poll()})") from None
                    time.sleep(0.01)
            wall = time.monotonic() - t0
            stat = pathlib.Path(f"/proc/{p.pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            hwm = next(int(ln.split()[1]) for ln in
                       pathlib.Path(f"/proc/{p.pid}/status").read_text().splitlines()
                       if ln.startswith("VmHWM:"))
            return cpu, wall, hwm / 1024
        finally:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()  # never leave a router behind
                p.wait(10)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.startup: needs root (network namespaces)", file=sys.stderr)
        return 2
    wd = pathlib.Path(tempfile.mkdtemp(prefix="sleeve-startup-"))
    try:
        src = pathlib.Path(sleeve.__file__).parent
        plain, compiled = wd / "plain", wd / "compiled"
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(src, plain / "sleeve", ignore=ignore)
        shutil.copytree(src, compiled / "sleeve", ignore=ignore)
        compileall.compile_dir(compiled / "sleeve", quiet=2)
        (wd / "pw").write_text(PASSWORD)
        (wd / "psk").write_text(format_psk(psk_from_password(PASSWORD.encode())))
        for f in ("pw", "psk"):
            (wd / f).chmod(0o600)
        variants = {
            "password, compiled from source": (plain, ["--password-file", str(wd / "pw")]),
            "password, bytecode": (compiled, ["--password-file", str(wd / "pw")]),
            "--psk-file, bytecode": (compiled, ["--psk-file", str(wd / "psk")]),
        }
        res: dict[str, list[tuple[float, float, float]]] = {k: [] for k in variants}
        for rep in range(args.repeats):
            for i, (k, (cwd, auth)) in enumerate(variants.items()):
                # a state dir of its own: the first start in a dir also makes its static key
                res[k].append(one_start(cwd, auth, wd / f"state-{rep}-{i}"))
        for k, v in res.items():
            cpu, wall, hwm = ([x[i] for x in v] for i in range(3))
            print(f"{k}: CPU to first answer median {statistics.median(cpu):.2f} s "
                  f"({min(cpu):.2f}-{max(cpu):.2f}), wall {statistics.median(wall):.2f} s "
                  f"({min(wall):.2f}-{max(wall):.2f}), VmHWM {statistics.median(hwm):.0f} MB")
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
