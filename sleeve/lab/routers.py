"""Run `sleeve launch` inside lab hosts, as a user would, and read its status.

Used by the lab tests, the benchmarks and `sleeve demo`. Each router gets its
own state dir and log file under the lab's work directory; the process is
tracked by the lab and stopped by PID. ``SLEEVE_LAB_ROUTER_ARGS`` (split on spaces) is
appended to every router's command line: ``SLEEVE_LAB_ROUTER_ARGS=--no-offload`` runs a
lab test with offloads off.

Lab hosts are network namespaces that share one file system, so the default API
socket (/run/sleeve/sleeve.sock) would be one path for every router: each gets
its own in its state dir (``api_socket``), and ``cli()`` runs the CLI against it.
The TCP API (127.0.0.1:6782, read-only) is per namespace, as each has its own
loopback.
"""

from __future__ import annotations

import atexit
import ctypes
import http.client
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from sleeve.lab.netns import Host

STATUS_ADDR = "127.0.0.1:6782"  # each namespace has its own loopback; reads only
CLONE_NEWNET = 0x40000000
_setns_lock = threading.Lock()  # one thread in a foreign namespace at a time: simple to audit


def ns_connect(netns: str, host: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP socket connected from inside ``netns`` (a socket stays in the namespace it
    was made in). Much cheaper than ``ip netns exec python -m sleeve status``, which
    starts a Python per call: what lets a bench poll 50 routers every second.

    setns(2) moves only the calling thread; it is moved back before the lock is let go.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    with _setns_lock, open("/proc/thread-self/ns/net", "rb") as home, \
            open(f"/run/netns/{netns}", "rb") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                # a thread stuck in a lab namespace would send the caller's traffic there
                os.abort()
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def ns_get_json(netns: str, path: str, addr: str = STATUS_ADDR,
                timeout: float = 5.0) -> Any:
    """GET ``path`` from the status API of the router in ``netns``; its JSON, decoded."""
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.sock = ns_connect(netns, host, int(port), timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET {path} in {netns}: HTTP {resp.status}: {body[:200]!r}")
    return json.loads(body)


class Router:
    def __init__(self, host: Host, args: list[str], workdir: pathlib.Path,
                 password: str | None, env: dict[str, str] | None = None,
                 module: str = "sleeve", psk: str | None = None) -> None:
        self.host = host
        self.module = module  # tests run altered routers (e.g. tests.evil_router)
        self.args = args
        self.workdir = workdir
        self.password = password
        self.psk = psk  # `sleeve psk` text: given, the router gets --psk-file, not the password
        self.env = env or {}
        self.log_path = workdir / f"{host.name}.log"
        self.state_dir = workdir / f"{host.name}.state"
        self.api_socket = self.state_dir / "api.sock"  # changes: root only, as in production
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        # SLEEVE_LAB_ROUTER_ARGS: options for every lab router of a run, e.g. "--no-offload"
        # to run the data-path lab tests again with offloads off.
        extra = os.environ.get("SLEEVE_LAB_ROUTER_ARGS", "").split()
        argv = [sys.executable, "-m", self.module, "launch", "--state-dir", str(self.state_dir),
                "--api-socket", str(self.api_socket), "--nickname", self.host.name, *self.args,
                *extra]
        if self.psk is not None:
            key = self.workdir / f"{self.host.name}.psk"
            key.write_text(self.psk)
            key.chmod(0o600)
            argv += ["--psk-file", str(key)]
            # a password in the caller's environment would make the router refuse the file
            env = {**(self.env or {}), "SLEEVE_PASSWORD": "", "SLEEVE_PASSWORD_FILE": "",
                   "SLEEVE_OPEN": ""}
        elif self.password is None:
            argv += ["--no-encryption", "--open"]  # the lab's old default: an open network
        else:
            pw = self.workdir / f"{self.host.name}.password"
            pw.write_text(self.password)
            pw.chmod(0o600)
            argv += ["--password-file", str(pw)]
        with open(self.log_path, "ab") as log:
            self.proc = self.host.popen(*argv, stdout=log, stderr=log,
                                        env=env if self.psk is not None else self.env)

    def stop(self) -> int:
        assert self.proc is not None
        return self.host.stop(self.proc)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def api_args(self) -> list[str]:
        """What a `sleeve` client command needs to reach this router."""
        return ["--api-socket", str(self.api_socket)]

    def cli(self, *args: str, pre: tuple[str, ...] = (), timeout: float = 40,
            ) -> subprocess.CompletedProcess[str]:
        """``sleeve ARGS --api-socket <ours>`` in the router's host (``pre``: e.g. setpriv)."""
        return self.host.run(*pre, sys.executable, "-m", "sleeve", *args, *self.api_args,
                             check=False, timeout=timeout)

    def status_http(self, path: str = "/status", timeout: float = 5.0) -> Any:
        """Like :meth:`status` (or any GET) straight over HTTP: no process per call."""
        return ns_get_json(self.host.netns, path, timeout=timeout)

    def status(self) -> dict[str, Any]:
        r = self.cli("status", "--json", timeout=15)
        if r.returncode != 0:
            raise RuntimeError(f"status of {self.host.name} failed: {r.stderr.strip()}")
        data: dict[str, Any] = json.loads(r.stdout)
        return data

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0,
             what: str = "condition") -> dict[str, Any]:
        end = time.monotonic() + timeout
        last: dict[str, Any] | str = "no status yet"
        while time.monotonic() < end:
            if not self.running:
                raise RuntimeError(f"router on {self.host.name} exited:\n{self.log()[-3000:]}")
            try:
                st = self.status()
                last = st
                if pred(st):
                    return st
            except RuntimeError as e:
                last = str(e)
            time.sleep(0.3)
        raise TimeoutError(f"{self.host.name}: {what} not reached in {timeout}s; last status: "
                           f"{json.dumps(last)[:2000]}\nlog:\n{self.log()[-3000:]}")


def established_with(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda st: sum(c["state"] == "established" for c in st["connections"]) >= n


def link_to(st: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The connection to peer ``name`` in a ``/status`` document, if any."""
    return next((c for c in st["connections"] if c["peer"] == name), None)


def direct(st: dict[str, Any], name: str) -> bool:
    """An established link to ``name`` whose UDP endpoint was heard (not punching)."""
    c = link_to(st, name)
    return c is not None and c["state"] == "established" and c["endpoint_learnt"]


def workdir(prefix: str = "sleeve-lab-") -> pathlib.Path:
    """A private (0700) directory for router logs, state and password files.

    Removed at interpreter exit: it holds a password and node keys. Set
    SLEEVE_LAB_KEEP=1 to keep it for debugging.
    """
    d = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    if not os.environ.get("SLEEVE_LAB_KEEP"):
        atexit.register(shutil.rmtree, d, True)
    return d
