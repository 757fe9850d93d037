"""The CNI plugins called by hand, without a kernel: bad input gives the spec's error JSON and
code, VERSION, router down -> 11 at once, IPAM against a fake router API, GC, the conflist,
the installer's shims (run for real) and the Kubernetes manifest."""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import shlex
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from sleeve.cli import build_parser
from sleeve.cni import install, ipam, net, spec
from sleeve.cni.api import PATHS

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOWN = "/nonexistent/sleeve-api.sock"  # no router: connect fails at once


class FakeRouter:
    """The router's local API as the plugins use it (PATHS, on a unix socket like the
    router's), recording every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.allocated: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.fail_allocate = 0  # HTTP status to answer allocate with (0: answer)
        fake = self

        class H(http.server.BaseHTTPRequestHandler):
            def _do(self) -> None:
                path, _, qs = self.path.partition("?")
                q = dict(urllib.parse.parse_qsl(qs))
                fake.calls.append((f"{self.command} {path}", q))
                status, body = fake.answer(f"{self.command} {path}", q)
                data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _do

            def log_message(self, *a: Any) -> None:
                pass

        self.addr = str(pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")) / "api.sock")
        self.httpd = socketserver.ThreadingUnixStreamServer(self.addr, H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, route: str, q: dict[str, str]) -> tuple[int, Any]:
        p = {f"{m} {u}": k for k, (m, u) in PATHS.items()}.get(route)
        if p == "bridge":
            return 200, {"bridge": "sleeve", "state": "created", "mtu": 1406,
                         "address": "198.19.128.1/16",
                         "dns": {"serving": True, "nameservers": ["198.19.128.1"],
                                 "domain": "sleeve.local"}}
        if p == "allocate":
            if self.fail_allocate:
                return self.fail_allocate, "no address for x after 30 s: no space"
            a = self.allocated.setdefault(q["id"], f"198.19.0.{len(self.allocated) + 2}/17")
            return 200, {"id": q["id"], "address": a}
        if p == "release":
            return 200, {"id": q["id"], "released": int(self.allocated.pop(q["id"], "") != "")}
        if p == "dns_add":
            self.names[q["name"]] = q["address"]
            return 200, {"added": True}
        if p == "dns_remove":
            return 200, {"removed": int(self.names.pop(q["name"], "") != "")}
        return 404, "not found"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def router() -> Iterator[FakeRouter]:
    r = FakeRouter()
    yield r
    r.close()


def conf(api: str, data: pathlib.Path, **over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"cniVersion": "1.0.0", "name": "sleeve", "type": "sleeve-net",
                         "api": api, "dataDir": str(data),
                         "ipam": {"type": "sleeve-ipam"}}
    c.update(over)
    return c


def env(cmd: str, **over: str) -> dict[str, str]:
    e = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/nope",
         "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent",
         "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default"}
    e.update(over)
    return {k: v for k, v in e.items() if v != "-"}


def call(handlers: dict[str, spec.Handler], e: dict[str, str], stdin: bytes | dict[str, Any],
         ) -> tuple[int, dict[str, Any] | None]:
    raw = json.dumps(stdin).encode() if isinstance(stdin, dict) else stdin
    rc, out = spec.run("test", handlers, e, raw)
    return rc, (json.loads(out) if out.strip() else None)


def is_error(out: dict[str, Any] | None, code: int) -> bool:
    return (out is not None and out["code"] == code and isinstance(out["msg"], str)
            and set(out) <= {"cniVersion", "code", "msg", "details"} and "cniVersion" in out)


# ---------------------------------------------------------------- bad input, by hand


@pytest.mark.parametrize("handlers", [net.HANDLERS, ipam.HANDLERS], ids=["net", "ipam"])
def test_bad_input_gets_the_spec_error_and_code(handlers: dict[str, spec.Handler],
                                                tmp_path: pathlib.Path) -> None:
    good = conf(DOWN, tmp_path)
    cases: list[tuple[str, dict[str, str], bytes | dict[str, Any], int]] = [
        ("no CNI_NETNS", env("ADD", CNI_NETNS="-"), good, 4),
        ("no CNI_CONTAINERID", env("ADD", CNI_CONTAINERID="-"), good, 4),
        ("container id with a slash", env("DEL", CNI_CONTAINERID="../x"), good, 4),
        ("bad CNI_IFNAME", env("ADD", CNI_IFNAME="eth0/x"), good, 4),
        ("no CNI_PATH", env("ADD", CNI_PATH="-"), good, 4),
        ("unknown command", env("FROB"), good, 4),
        ("no command", env("-"), good, 4),
        ("CNI_ARGS not key=value", env("ADD", CNI_ARGS="garbage"), good, 4),
        ("unknown cniVersion", env("ADD"), {**good, "cniVersion": "0.9.9"}, 1),
        ("old cniVersion", env("ADD"), {**good, "cniVersion": "0.3.1"}, 1),
        ("no cniVersion", env("ADD"), {k: v for k, v in good.items() if k != "cniVersion"}, 7),
        ("garbage stdin", env("ADD"), b"\x00garbage{", 6),
        ("JSON that is not an object", env("ADD"), b"[1, 2]", 6),
        ("empty stdin", env("DEL"), b"", 6),
        ("bad network name", env("ADD"), {**good, "name": "../etc"}, 7),
        ("no network name", env("ADD"), {k: v for k, v in good.items() if k != "name"}, 7),
        ("no type", env("ADD"), {**good, "type": ""}, 7),
        ("GC attachments not a list", env("GC"), {**good, "cni.dev/valid-attachments": 3}, 7),
        ("GC attachment without ifname", env("GC"),
         {**good, "cni.dev/valid-attachments": [{"containerID": "a"}]}, 7),
        ("CHECK of an unknown container", env("CHECK", CNI_NETNS="/"), good, 3),
    ]
    if handlers is net.HANDLERS:
        cases += [("missing container (netns gone)", env("ADD"), good, 3),
                  ("no ipam section", env("ADD"), {**good, "ipam": None}, 7),
                  ("hairpinMode not a bool", env("ADD", CNI_NETNS="/"),
                   {**good, "hairpinMode": "yes"}, 7)]
    else:
        cases += [("bad subnet", env("ADD"), {**good, "ipam": {"type": "sleeve-ipam",
                                                              "subnet": "10.0.0.1/8"}}, 7)]
    for what, e, stdin, code in cases:
        rc, out = call(handlers, e, stdin)
        assert rc == 1 and is_error(out, code), (what, out)
    rc, out = call(handlers, env("ADD"), {**good, "cniVersion": "0.9.9"})
    assert out is not None and out["cniVersion"] == "0.9.9"  # answered in the version asked


def test_version_answers_without_config_or_with_any_version() -> None:
    for stdin in (b"", b'{"cniVersion": "1.0.0"}', b'{"cniVersion": "0.1.0"}'):
        rc, out = call(net.HANDLERS, {"CNI_COMMAND": "VERSION"}, stdin)
        assert rc == 0 and out is not None
        assert out["supportedVersions"] == ["1.0.0", "1.1.0"]
    assert out["cniVersion"] == "0.1.0"


# ---------------------------------------------------------------- router down


@pytest.mark.parametrize("handlers", [net.HANDLERS, ipam.HANDLERS], ids=["net", "ipam"])
def test_router_down_is_try_again_later_at_once(handlers: dict[str, spec.Handler],
                                                tmp_path: pathlib.Path) -> None:
    t = time.monotonic()
    rc, out = call(handlers, env("ADD", CNI_NETNS="/"), conf(DOWN, tmp_path))
    assert time.monotonic() - t < 2.0
    assert rc == 1 and is_error(out, 11), out
    assert out is not None and "not reachable" in out["msg"]


def test_router_that_never_answers_is_11_within_the_timeout(tmp_path: pathlib.Path) -> None:
    import socket

    path = tmp_path / "api.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(1)  # accepts (kernel backlog) but never answers
    try:
        api = ipam.RouterApi(str(path), read_timeout=0.5)
        t = time.monotonic()
        with pytest.raises(spec.CniError) as ei:
            api.call("bridge")
        assert ei.value.code == 11 and time.monotonic() - t < 2.0
    finally:
        s.close()


@pytest.mark.parametrize("handlers", [net.HANDLERS, ipam.HANDLERS], ids=["net", "ipam"])
def test_a_tcp_api_address_is_refused_with_the_fix(handlers: dict[str, spec.Handler],
                                                   tmp_path: pathlib.Path) -> None:
    """A conflist from before the socket (``"api": "127.0.0.1:6782"``): the TCP API only
    serves reads, so the plugin says what to do instead of failing on a 403 later."""
    rc, out = call(handlers, env("ADD", CNI_NETNS="/"), conf("127.0.0.1:6782", tmp_path))
    assert rc == 1 and is_error(out, 7), out
    assert out is not None and "read-only" in out["msg"] and "cni install" in out["msg"]


def test_status_says_50_or_51_when_the_router_is_down(tmp_path: pathlib.Path) -> None:
    _, out = call(ipam.HANDLERS, env("STATUS"), conf(DOWN, tmp_path))
    assert is_error(out, 50)
    _, out = call(net.HANDLERS, env("STATUS"), conf(DOWN, tmp_path))
    assert is_error(out, 50)  # no containers attached: nothing loses connectivity
    net.Records(str(tmp_path), "sleeve", "net").put("c1", "eth0", {"name": None})
    _rc, out = call(net.HANDLERS, env("STATUS"), conf(DOWN, tmp_path))
    assert is_error(out, 51)  # attached containers lose the overlay


# ---------------------------------------------------------------- IPAM against a fake router


def test_ipam_add_del_check_and_idempotent_del(router: FakeRouter,
                                               tmp_path: pathlib.Path) -> None:
    c = conf(router.addr, tmp_path, type="bridge",
             ipam={"type": "sleeve-ipam", "routes": [{"dst": "0.0.0.0/0"}]})
    rc, res = call(ipam.HANDLERS, env("ADD"), c)
    assert rc == 0 and res is not None, res
    assert res["cniVersion"] == "1.0.0"
    assert res["ips"] == [{"address": "198.19.0.2/17", "gateway": "198.19.128.1"}]
    assert res["routes"] == [{"dst": "0.0.0.0/0"}]
    assert res["dns"] == {"nameservers": ["198.19.128.1"], "search": ["sleeve.local"]}
    assert ("POST /ipam/allocate", {"id": "c0ffee"}) in router.calls
    rc, again = call(ipam.HANDLERS, env("ADD"), c)
    assert again == res  # same container, same address
    rc, out = call(ipam.HANDLERS, env("CHECK", CNI_NETNS="/"), {**c, "prevResult": res})
    assert rc == 0, out
    rc, out = call(ipam.HANDLERS, env("CHECK", CNI_NETNS="/"), {**c, "prevResult": {"ips": []}})
    assert is_error(out, 7)
    for _ in range(2):  # DEL twice: the second finds nothing and still succeeds
        rc, out = call(ipam.HANDLERS, env("DEL", CNI_NETNS="-"), {**c, "prevResult": res})
        assert (rc, out) == (0, None)
    assert router.allocated == {}
    rc, out = call(ipam.HANDLERS, env("CHECK", CNI_NETNS="/"), {**c, "prevResult": res})
    assert is_error(out, 3)


def test_ipam_router_errors_map_to_codes(router: FakeRouter, tmp_path: pathlib.Path) -> None:
    router.fail_allocate = 503
    _, out = call(ipam.HANDLERS, env("ADD"), conf(router.addr, tmp_path))
    assert is_error(out, 11) and "no space" in out["msg"]  # type: ignore[index]
    router.fail_allocate = 400
    _rc, out = call(ipam.HANDLERS, env("ADD"), conf(router.addr, tmp_path))
    assert is_error(out, 7)


def test_ipam_del_with_router_down(router: FakeRouter, tmp_path: pathlib.Path) -> None:
    # nothing recorded: nothing can be leaked, DEL succeeds
    rc, out = call(ipam.HANDLERS, env("DEL"), conf(DOWN, tmp_path))
    assert (rc, out) == (0, None)
    # recorded allocation: "try again later", and the record stays for a later DEL or GC
    call(ipam.HANDLERS, env("ADD"), conf(router.addr, tmp_path))
    rc, out = call(ipam.HANDLERS, env("DEL"), conf(DOWN, tmp_path))
    assert is_error(out, 11)
    assert ipam.Records(str(tmp_path), "sleeve", "ipam").get("c0ffee", "eth0") is not None


def test_gc_releases_what_valid_attachments_no_longer_lists(router: FakeRouter,
                                                            tmp_path: pathlib.Path) -> None:
    c = conf(router.addr, tmp_path)
    for cid in ("c1", "c2", "c3"):
        assert call(ipam.HANDLERS, env("ADD", CNI_CONTAINERID=cid), c)[0] == 0
    # c3 is still in use on another interface: its address (keyed by container) stays
    valid = [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c3", "ifname": "net1"}]
    rc, out = call(ipam.HANDLERS, env("GC"), {**c, "cni.dev/valid-attachments": valid})
    assert (rc, out) == (0, None)
    assert sorted(router.allocated) == ["c1", "c3"]
    assert [r["containerID"] for r in ipam.Records(str(tmp_path), "sleeve", "ipam").all()] \
        == ["c1"]
    rc, out = call(ipam.HANDLERS, env("GC"), {**c, "cni.dev/valid-attachments": []})
    assert rc == 0 and sorted(router.allocated) == ["c3"]


def test_net_gc_and_del_forget_dns_names_and_delegate(router: FakeRouter,
                                                      tmp_path: pathlib.Path) -> None:
    bindir = tmp_path / "bin"
    install.install(str(bindir), str(tmp_path / "conf"))
    c = conf(router.addr, tmp_path / "data")
    recs = net.Records(str(tmp_path / "data"), "sleeve", "net")
    for cid, name in (("c1", "one"), ("c2", "two")):
        recs.put(cid, "eth0", {"name": name, "address": "198.19.0.9",
                               "hostVeth": net.host_veth(cid, "eth0")})
        router.names[name] = "198.19.0.9"
    e = env("GC", CNI_PATH=str(bindir))
    rc, out = call(net.HANDLERS, e, {**c, "cni.dev/valid-attachments": [
        {"containerID": "c1", "ifname": "eth0"}]})
    assert (rc, out) == (0, None), out
    assert router.names == {"one": "198.19.0.9"}
    assert ("POST /dns/remove", {"name": "two", "address": "198.19.0.9"}) in router.calls
    # DEL of an attachment that is gone (no netns, no veth): succeeds, name removed
    rc, out = call(net.HANDLERS, env("DEL", CNI_CONTAINERID="c1", CNI_NETNS="-",
                                     CNI_PATH=str(bindir)), c)
    assert (rc, out) == (0, None), out
    assert router.names == {} and recs.all() == []
    # ... and with the router down too, once nothing is recorded
    rc, out = call(net.HANDLERS, env("DEL", CNI_CONTAINERID="c1", CNI_NETNS="-",
                                     CNI_PATH=str(bindir)), conf(DOWN, tmp_path / "data"))
    assert (rc, out) == (0, None), out


# ---------------------------------------------------------------- install, conflist, shims


def test_conflist_names_the_network_and_chains_portmap_only_when_present(
        tmp_path: pathlib.Path) -> None:
    c = install.conflist(str(tmp_path))
    assert c["name"] == "sleeve" and c["cniVersion"] in spec.SUPPORTED
    assert [p["type"] for p in c["plugins"]] == ["sleeve-net"]
    assert c["plugins"][0]["ipam"] == {"type": "sleeve-ipam"}
    assert c["plugins"][0]["hairpinMode"] is True and c["plugins"][0]["ipMasq"] is False
    pm = tmp_path / "portmap"
    pm.write_text("#!/bin/sh\n")
    pm.chmod(0o755)
    c = install.conflist(str(tmp_path), masquerade=True, subnet="198.19.1.0/24")
    assert [p["type"] for p in c["plugins"]] == ["sleeve-net", "portmap"]
    assert c["plugins"][1]["capabilities"] == {"portMappings": True}
    assert c["plugins"][0]["ipam"]["subnet"] == "198.19.1.0/24"
    assert c["plugins"][0]["ipMasq"] is True


def test_cni_install_writes_runnable_plugins(tmp_path: pathlib.Path) -> None:
    b, cdir = tmp_path / "bin", tmp_path / "net.d"
    r = subprocess.run([sys.executable, "-m", "sleeve", "cni", "install", "--bin-dir", str(b),
                        "--conf-dir", str(cdir)], capture_output=True, text=True, timeout=60,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(b)) == ["sleeve-ipam", "sleeve-net"]
    conflist = json.loads((cdir / "10-sleeve.conflist").read_text())
    assert conflist["name"] == "sleeve"
    assert conflist["plugins"][0]["api"] == "/run/sleeve/sleeve.sock"  # the router's default
    r = subprocess.run([sys.executable, "-m", "sleeve", "cni", "install", "--bin-dir", str(b),
                        "--conf-dir", str(cdir), "--api", "127.0.0.1:6782"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "absolute file path" in r.stderr, r.stderr
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for exe in ("sleeve-net", "sleeve-ipam"):
        assert os.access(b / exe, os.X_OK)
        p = subprocess.run([str(b / exe)], input=b"", env={**clean, "CNI_COMMAND": "VERSION"},
                           capture_output=True, timeout=30, cwd="/")
        assert p.returncode == 0 and json.loads(p.stdout)["supportedVersions"], p.stderr
        # garbage through the real entry point: JSON on stdout, no traceback
        p = subprocess.run([str(b / exe)], input=b"{nope", capture_output=True, timeout=30,
                           env={**clean, "CNI_COMMAND": "ADD"}, cwd="/")
        assert p.returncode == 1 and json.loads(p.stdout)["code"] == 6
        assert b"Traceback" not in p.stderr


def test_timing_log_records_what_the_runtime_sent(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "cni.log"
    e = {**env("ADD"), spec.LOG_ENV: str(log)}
    call(net.HANDLERS, e, conf(DOWN, tmp_path))
    line = json.loads(log.read_text())
    assert line["command"] == "ADD" and line["code"] == 3 and line["ms"] >= 0
    assert "K8S_POD_NAME=web" in line["args"]


def test_masquerade_rule_covers_only_traffic_leaving_the_subnet() -> None:
    s = net.masquerade_script("sleeve", "198.19.0.7/17")
    assert "ip saddr 198.19.0.0/17 ip daddr != 198.19.0.0/17 masquerade" in s
    assert 'comment "sleeve:sleeve"' in s


def test_host_veth_names_are_stable_short_and_distinct() -> None:
    a, b = net.host_veth("c1", "eth0"), net.host_veth("c1", "eth1")
    assert a == net.host_veth("c1", "eth0") and a != b and len(a) <= 15


# ---------------------------------------------------------------- Kubernetes manifest


def test_kubernetes_manifest_parses_and_uses_only_real_options(tmp_path: pathlib.Path) -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/kubernetes/sleeve.yaml").read_text())
            if d]
    kinds = {d["kind"]: d for d in docs}
    assert {"DaemonSet", "ServiceAccount", "Role", "RoleBinding", "ConfigMap"} <= set(kinds)
    pod = kinds["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    main = pod["containers"][0]
    assert main["securityContext"]["privileged"] is True
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["state"]["hostPath"]["path"] == "/var/lib/sleeve"
    # the plugins on the node reach the router's API socket (its default path)
    assert vols["api"]["hostPath"]["path"] == "/run/sleeve"
    assert {"name": "api", "mountPath": "/run/sleeve"} in main["volumeMounts"]
    assert vols["password"]["secret"]["secretName"]
    assert vols["config"]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    assert "peers" in kinds["ConfigMap"]["data"]["sleeve.toml"]
    parser = build_parser()
    cmds = [c["command"] + c.get("args", []) for c in pod["initContainers"] + pod["containers"]]
    assert any(c[1:3] == ["cni", "install"] for c in cmds)
    for argv in cmds:
        assert argv[0] == "sleeve"
        try:
            parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"sleeve rejects {shlex.join(argv)}")
    # the init step, run here into temporary directories standing for the host's
    init = next(c for c in cmds if c[1:3] == ["cni", "install"])
    argv = [a.replace("/host/", f"{tmp_path}/") for a in init[1:]]
    r = subprocess.run([sys.executable, "-m", "sleeve", *argv], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    shim = (tmp_path / "opt/cni/bin/sleeve-net").read_text()
    assert "exec /opt/sleeve/venv/bin/python -m sleeve.cni.net" in shim
    assert (tmp_path / "etc/cni/net.d/10-sleeve.conflist").exists()
    rules = kinds["Role"]["rules"]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in rules)  # read-only


def test_each_plugin_keeps_records_in_its_own_data_dir() -> None:
    from sleeve.cni.api import data_dir

    c = {"dataDir": "/a", "ipam": {"type": "host-local", "dataDir": "/b"}}
    assert (data_dir(c), data_dir(c, ipam_plugin=True)) == ("/a", "/b")  # host-local's is not ours
    assert data_dir({"dataDir": "/a", "ipam": {}}, ipam_plugin=True) == "/a"
    assert data_dir({}) == "/var/lib/cni/sleeve"
    with pytest.raises(spec.CniError):
        data_dir({"dataDir": "relative"})
