"""Where one router's memory goes (issue 23, RSS <= 60 MB per router at 50 routers):

    flock /tmp/sleeve-lab.lock python3 -m bench.router_memory

Root; one network namespace (loopback only, removed after). One router is started as
``bench.startup`` starts it (``--psk-file``, this checkout), asked for ``/status`` and
``/routes``, left 3 s, then read: VmRSS, resident KB per mapping from
``/proc/PID/smaps`` (anonymous, heap, each shared library), and, from ``python -X
importtime`` on its stderr, how many modules it imported per top-level package. A lone
router has no links; a router in a 50-router mesh holds ~4 MB more. Prints only.
"""

from __future__ import annotations

import collections
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from sleeve.crypto.kdf import format_psk, psk_from_password
from sleeve.lab.routers import ns_get_json


def smaps_by_mapping(pid: int) -> collections.Counter[str]:
    """Resident KB per mapping name ("[anon]" for nameless ones)."""
    out: collections.Counter[str] = collections.Counter()
    name = "[anon]"
    for line in pathlib.Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and not parts[0].endswith(":"):
            name = parts[5] if len(parts) > 5 else "[anon]"
        elif parts and parts[0] == "Rss:":
            out[name] += int(parts[1])
    return out


def modules_by_package(importtime: str) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for line in importtime.splitlines():
        if line.startswith("import time:") and "|" in line:
            mod = line.split("|")[2].strip()
            if mod and mod != "imported package":
                out[mod.split(".")[0]] += 1
    return out


def main() -> None:
    state = pathlib.Path(tempfile.mkdtemp(prefix="sleeve-memory-"))
    psk = state / "psk"
    psk.write_text(format_psk(psk_from_password(b"bench router memory")) + "\n")
    psk.chmod(0o600)
    ns = f"sleeve-memory-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        with open(state / "stderr", "w") as err:
            p = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-X", "importtime", "-m", "sleeve",
                 "launch", "--state-dir", str(state), "--api-socket", str(state / "api.sock"),
                 "--nickname", "memory", "--ip", "198.19.0.1/24", "--psk-file", str(psk)],
                cwd=pathlib.Path(__file__).resolve().parent.parent,
                stdout=subprocess.DEVNULL, stderr=err)
        try:
            t0 = time.monotonic()
            while True:
                try:
                    ns_get_json(ns, "/status", timeout=1.0)
                    break
                except (OSError, RuntimeError, ValueError):
                    if time.monotonic() - t0 > 20 or p.poll() is not None:
                        raise SystemExit("the router did not answer in 20 s") from None
                    time.sleep(0.05)
            ns_get_json(ns, "/routes", timeout=2.0)
            time.sleep(3)
            maps = smaps_by_mapping(p.pid)
            status = pathlib.Path(f"/proc/{p.pid}/status").read_text()
        finally:
            p.terminate()
            p.wait(10)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    rss = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    print(f"VmRSS {rss} KB; resident KB by mapping:")
    for name, kb in maps.most_common(12):
        print(f"  {kb:7d}  {name}")
    mods = modules_by_package((state / "stderr").read_text(errors="replace"))
    print(f"{sum(mods.values())} modules imported; by top-level package:")
    for name, count in mods.most_common(15):
        print(f"  {count:4d}  {name}")


if __name__ == "__main__":
    main()
