"""Who may change a running router: the CLI as root, as ``nobody`` and as an --api-group
member, against an in-process router (real unix socket, real TCP on loopback, no
namespaces). Needs root: it switches users with setpriv and makes a temporary group.

``nobody`` cannot reach /root, where the test interpreter lives, so the CLI runs as
other users under the system's python3 with this tree on PYTHONPATH: the client
commands import only the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import urllib.error
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from sleeve.capture.memory import MemoryPort
from sleeve.config import Config, Target
from sleeve.crypto.noise import KeyPair
from sleeve.node import Node
from tests.test_node_inproc import PSK, wait_for
from tests.test_status_api import free_port, get

ROOT = pathlib.Path(__file__).resolve().parent.parent
SYSTEM_PY = "/usr/bin/python3"
NOBODY = 65534


def _need_root_tools() -> None:
    """Fail loudly (never skip) when this machine cannot run the test."""
    missing = [t for t in ("setpriv", "groupadd", "groupdel") if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.append("root (to switch users)")
    if not os.access(SYSTEM_PY, os.X_OK):
        missing.append(SYSTEM_PY)
    assert not missing, f"test_api_socket needs: {', '.join(missing)}"


def _base_dir() -> pathlib.Path:
    """0755, root's: every user can reach the socket file, so its own mode decides."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="sleeve-api-"))
    d.chmod(0o755)
    return d


def cli(*args: str, uid: int = 0, gid: int = 0, groups: str = "",
        ) -> subprocess.CompletedProcess[str]:
    if uid == 0:
        argv = [sys.executable, "-m", "sleeve", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT)
    who = [f"--reuid={uid}", f"--regid={gid}",
           f"--groups={groups}" if groups else "--clear-groups"]
    argv = ["setpriv", *who, "env", f"PYTHONPATH={ROOT}", SYSTEM_PY, "-m", "sleeve", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1 and "Traceback" not in r.stderr, r
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sleeve: error: "), r.stderr
    return lines[0]


def run_router(base: pathlib.Path, gid: int | None,
               body: Callable[[Node, list[str]], Awaitable[None]]) -> None:
    sock = base / "api.sock"
    cfg = Config(psk=PSK, port=0, listen="127.0.0.1", http=f"127.0.0.1:{free_port()}",
                 api_socket=str(sock), api_group=gid,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))
    n = Node(cfg, MemoryPort(), static=KeyPair.generate())

    async def main() -> None:
        t = asyncio.create_task(n.run())
        try:
            await wait_for(lambda: sock.exists() and n.port is not None)
            await body(n, ["--api-socket", str(sock)])
        finally:
            n.stop()
            await asyncio.wait_for(t, 5)
        assert not sock.exists()  # removed at stop: nobody finds a socket no one answers

    asyncio.run(asyncio.wait_for(main(), 90))


def state(n: Node) -> tuple[set[str], list[Any]]:
    return {str(t) for t in n.targets}, [(r["name"], r["address"]) for r in
                                         n.dns.status()["records"]]


@pytest.fixture
def group() -> Iterator[tuple[str, int]]:
    _need_root_tools()
    import grp

    name = f"slvt{os.getpid() % 100000}"
    subprocess.run(["groupadd", name], check=True, capture_output=True, timeout=30)
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True, timeout=30)


def test_nobody_cannot_change_the_router_root_can_and_tcp_refuses() -> None:
    _need_root_tools()
    base = _base_dir()

    async def body(n: Node, api: list[str]) -> None:
        dead = free_port()  # a closed local port: dialling it never leaves the machine
        r = await asyncio.to_thread(cli, "connect", f"127.0.0.1:{dead}", *api)
        assert r.returncode == 0, r.stderr
        r = await asyncio.to_thread(cli, "dns", "add", "web", "198.19.0.5", *api)
        assert r.returncode == 0 and json.loads(r.stdout)["added"] is True, r.stderr
        before = state(n)
        assert before == ({f"127.0.0.1:{dead}"}, [("web.sleeve.local.", "198.19.0.5")])
        for argv in (["connect", "127.0.0.1:9"], ["forget", f"127.0.0.1:{dead}"],
                     ["dns", "add", "evil", "198.19.0.6"], ["dns", "remove", "web"]):
            r = await asyncio.to_thread(cli, *argv, *api, uid=NOBODY, gid=NOBODY)
            assert "permission denied on the router's API socket" in one_line(r), argv
        assert state(n) == before  # nothing changed
        # reads stay open to every user on TCP
        r = await asyncio.to_thread(cli, "status", "--json", "--http", str(n.cfg.http),
                                    uid=NOBODY, gid=NOBODY)
        assert r.returncode == 0 and json.loads(r.stdout)["name"] == n.name, r.stderr
        # the same changes on TCP, as a browser page or any local process could send them
        for path in (f"/forget?peer=127.0.0.1:{dead}", "/connect?peer=127.0.0.1:9",
                     "/dns/add?name=evil&address=198.19.0.6"):
            with pytest.raises(urllib.error.HTTPError) as ei:
                await asyncio.to_thread(get, f"http://{n.cfg.http}{path}", "POST")
            assert ei.value.code == 403 and b"read-only" in ei.value.read()
        assert state(n) == before
        r = await asyncio.to_thread(cli, "forget", f"127.0.0.1:{dead}", *api)
        assert r.returncode == 0 and Target("127.0.0.1", dead) not in n.targets, r.stderr

    run_router(base, None, body)


def test_an_api_group_member_can_change_the_router(group: tuple[str, int]) -> None:
    _, gid = group
    base = _base_dir()

    async def body(n: Node, api: list[str]) -> None:
        # a member by primary group, and by a supplementary one (SO_PEERCRED would miss it)
        for who in ({"gid": gid}, {"gid": NOBODY, "groups": str(gid)}):
            r = await asyncio.to_thread(cli, "dns", "add", f"m{who['gid']}", "198.19.0.7",
                                        *api, uid=NOBODY, **who)  # type: ignore[arg-type]
            assert r.returncode == 0, (who, r.stderr)
        names = {r[0] for r in state(n)[1]}
        assert names == {f"m{gid}.sleeve.local.", f"m{NOBODY}.sleeve.local."}
        r = await asyncio.to_thread(cli, "connect", "127.0.0.1:9", *api, uid=NOBODY, gid=gid)
        assert r.returncode == 0 and Target("127.0.0.1", 9) in n.targets, r.stderr
        # not a member: still refused, nothing changed
        before = state(n)
        r = await asyncio.to_thread(cli, "forget", "127.0.0.1:9", *api, uid=NOBODY,
                                    gid=NOBODY)
        assert "permission denied" in one_line(r)
        assert state(n) == before

    run_router(base, gid, body)
    with contextlib.suppress(OSError):
        shutil.rmtree(base)
