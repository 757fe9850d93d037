"""A new user's machine (issue 14): the README's set-up commands work as written.

The lab test builds a stock Debian 12 root (``debootstrap --variant=minbase bookworm``, cached in
/var/cache/sleeve-test/, see tests/freshroot.py), copies the committed checkout in, and runs the
README's first command in a chroot: install.sh must bring everything, Python included, and the
demo must pass and leave nothing behind. It prints how long each step took (the README's note).
The chroot shares this machine's network namespace (the demo makes and removes its own) and
reaches the package registries directly: this machine's pip and apt settings are not in it.

The other tests check install.sh's refusals, the service unit and that .ci/run runs the README's
test command.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from tests import freshroot
from tests.freshroot import (
    ROOT_PATH,
    FreshRoot,
    FreshRootError,
    cached_whole,
    ensure_tool,
    mirror_for,
    mounts_under,
    pristine_tarball,
    processes_in,
    sha256_of,
    sum_file,
)

REPO = pathlib.Path(__file__).resolve().parent.parent
VENV = pathlib.Path("/opt/sleeve/venv")
LINK = pathlib.Path("/usr/local/bin/sleeve")


def readme_commands(readme: str) -> list[str]:
    """The ```sh blocks of the README's "Set up" section: the commands a new user types."""
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", section, re.S)]


# ------------------------------------------------------------------ quick checks


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one() -> None:
    cmds = readme_commands((REPO / "README.md").read_text())
    assert len(cmds) == 2 and all("\n" not in c for c in cmds), cmds
    assert cmds[0] == "./install.sh && sleeve demo"
    # the tests run on the venv's interpreter, not on whatever python3 is first on PATH
    assert cmds[1].startswith(f"./install.sh --test && {VENV}/bin/python -m pytest ")
    ci = (REPO / ".ci/run").read_text().splitlines()
    assert cmds[1] in ci, ".ci/run must run the README's test command verbatim"


def test_mirror_from_apt_sources() -> None:
    one_line = ["# deb http://old.invalid/debian bookworm main\n"
                "deb [arch=amd64 signed-by=/k.gpg] http://one.invalid/debian bookworm main\n"]
    deb822 = ["Types: deb-src deb\nURIs: http://a.invalid/debian\n"
              "Suites: bookworm-updates\n  bookworm\nComponents: main\n\n"
              "# a comment\nTypes: deb\nURIs: http://b.invalid/debian\nSuites: bookworm\n"]
    assert mirror_for("bookworm", [], deb822) == "http://a.invalid/debian"
    assert mirror_for("bookworm", one_line, deb822) == "http://one.invalid/debian"
    disabled = ["Enabled: no\nTypes: deb\nURIs: http://c.invalid/x\nSuites: bookworm\n"]
    assert mirror_for("bookworm", [], disabled) is None
    assert mirror_for("trixie", one_line, deb822) is None


def test_cached_root_is_used_only_when_its_recorded_sum_matches(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged or unsummed cache is never used: it is built again, and without
    debootstrap that build fails loudly instead of falling back to the cache. A whole one
    is used as it is, with no build."""
    tar = tmp_path / "debian-bookworm-minbase-amd64.tar"
    tar.write_bytes(b"a stock root " * 1000)
    assert not cached_whole(tar)  # no sum recorded
    sum_file(tar).write_text(f"{sha256_of(tar)}  {tar.name}\n")
    assert cached_whole(tar)
    tar.write_bytes(b"a stock root " * 999)  # cut short
    assert not cached_whole(tar)

    def no_debootstrap(tool: str, package: str) -> str:
        raise FreshRootError(f"{tool} missing and apt-get install {package} failed")

    monkeypatch.setattr(freshroot, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(freshroot, "_arch", lambda: "amd64")
    monkeypatch.setattr(freshroot, "ensure_tool", no_debootstrap)
    with pytest.raises(FreshRootError, match="debootstrap missing"):
        pristine_tarball("bookworm", "minbase")
    sum_file(tar).unlink()
    with pytest.raises(FreshRootError, match="debootstrap missing"):  # unsummed: the same
        pristine_tarball("bookworm", "minbase")
    tar.unlink()
    with pytest.raises(FreshRootError, match="debootstrap missing"):  # missing: the same
        pristine_tarball("bookworm", "minbase")
    tar.write_bytes(b"a stock root " * 1000)
    sum_file(tar).write_text(f"{sha256_of(tar)}  {tar.name}\n")
    assert pristine_tarball("bookworm", "minbase") == (tar, None)  # whole: used, no build


def _install_sh(argv: list[str], env: dict[str, str], user: int | None = None
                ) -> subprocess.CompletedProcess[str]:
    def drop() -> None:
        if user is not None:
            os.setgroups([])
            os.setgid(user)
            os.setuid(user)
    return subprocess.run(["/bin/sh", str(REPO / "install.sh"), *argv], capture_output=True,
                          text=True, timeout=30, env=env, preexec_fn=drop)


def test_install_sh_refuses_clearly() -> None:
    """Not root, no apt, a wrong option: one line on stderr, non-zero exit, nothing done."""
    env = {"PATH": ROOT_PATH}
    r = _install_sh([], env, user=65534)  # nobody
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "must run as root" in r.stderr, r.stderr
    r = _install_sh(["--frobnicate"], env)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "unknown option" in r.stderr
    with tempfile.TemporaryDirectory() as d:  # a PATH with what runs before the apt check only
        for tool in ("dirname", "id"):
            os.symlink(shutil.which(tool, path=ROOT_PATH) or tool, os.path.join(d, tool))
        r = _install_sh([], {"PATH": d})
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "needs apt-get and dpkg" in r.stderr, r.stderr


def test_service_unit_runs_the_installed_command() -> None:
    """systemd-analyze verify checks the unit, including that ExecStart is executable: the
    link install.sh makes (the README's test command runs install.sh first)."""
    if os.geteuid() != 0:
        pytest.fail("needs root (installs systemd-analyze if missing)")
    analyze = ensure_tool("systemd-analyze", "systemd")
    unit = REPO / "deploy/sleeve.service"
    assert f"ExecStart={LINK} launch" in unit.read_text()
    # the API socket's directory: /run is read-only under ProtectSystem=strict without it
    assert "RuntimeDirectory=sleeve\n" in unit.read_text()
    assert LINK.resolve() == (VENV / "bin/sleeve").resolve(), f"{LINK}: run ./install.sh"
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stdout + r.stderr


# ------------------------------------------------------------------ the fresh machine


def _netns() -> set[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30,
                       check=True)
    return {ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()}


def _links() -> set[str]:
    r = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=30,
                       check=True)
    return {ln.split(":")[1].strip() for ln in r.stdout.splitlines() if ln.strip()}


def _changed_since(root: pathlib.Path, t_ns: int, rels: list[str]) -> list[str]:
    """Paths below ``rels`` (relative to ``root``) modified after ``t_ns``."""
    out = []
    for rel in rels:
        for d, dirs, files in os.walk(root / rel):
            for name in [*dirs, *files, "."]:
                p = os.path.join(d, name)
                if os.lstat(p).st_mtime_ns > t_ns:
                    out.append(os.path.relpath(p, root))
    return out


def _check(r: subprocess.CompletedProcess[str], what: str) -> None:
    assert r.returncode == 0, f"{what}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"


@pytest.mark.lab
@pytest.mark.timeout(900)
def test_readme_commands_on_a_fresh_debian_root(capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root (debootstrap, mount, chroot, network namespaces)")
    times: list[tuple[str, float]] = []
    t0 = time.monotonic()
    tarball, built = pristine_tarball("bookworm", "minbase")
    times.append((f"debootstrap --variant=minbase bookworm, cached as {tarball}", built)
                 if built is not None else
                 (f"pristine root from the cache {tarball} (sha256 checked)",
                  time.monotonic() - t0))
    ns_before, links_before = _netns(), _links()
    fr = FreshRoot(tarball)
    try:
        t = time.monotonic()
        with fr:
            fr.copy_in_checkout(REPO)
            times.append(("extract the root, mount, git archive HEAD into /src",
                          time.monotonic() - t))
            cmds = readme_commands((fr.root / "src/README.md").read_text())
            assert cmds[0] == "./install.sh && sleeve demo"
            assert not processes_in(fr.root) and not (fr.root / "opt/sleeve").exists()

            r, secs = fr.sh(f"cd /src && {cmds[0]}", timeout=600)
            print(r.stdout, r.stderr)
            _check(r, cmds[0])
            demo = re.search(r"done in ([0-9.]+)s", r.stdout)
            assert demo, r.stdout
            times.append(("./install.sh  (first run; the rest of the command)",
                          secs - float(demo.group(1))))
            times.append(("sleeve demo  (as it reports: done in ...)", float(demo.group(1))))
            assert "checksum matches" in r.stdout and "FAILED" not in r.stdout
            assert "namespaces left: 0" in r.stdout and "TAP devices left: 0" in r.stdout
            # nothing left: no process in the root, no namespace (the demo's are made in the
            # root's /run/netns), no link or namespace on the host, no mount under the root
            assert processes_in(fr.root) == {}
            netns_dir = fr.root / "run/netns"
            assert not netns_dir.exists() or not list(netns_dir.iterdir())
            assert _netns() - ns_before == set()
            assert _links() - links_before == set()
            # `ip netns add` makes /run/netns itself a (shared) mount point and leaves it, as on
            # any host; each namespace is a bind mount below it, and none may be left
            bound = [m for m in mounts_under(fr.root) if m.startswith(f"{netns_dir}/")]
            assert not bound, bound

            # a second run changes nothing and is quick
            mark = time.time_ns()
            time.sleep(0.01)
            r, secs = fr.sh("cd /src && ./install.sh", timeout=120)
            _check(r, "second ./install.sh")
            times.append(("./install.sh  (second run)", secs))
            assert "installing" not in r.stdout and "already installed" in r.stdout, r.stdout
            changed = _changed_since(fr.root, mark, ["opt/sleeve", "usr/local/bin",
                                                     "var/lib/dpkg", "var/lib/apt"])
            assert changed == [], changed
            assert secs < 30

            # the README's test command, on one quick test file instead of the whole suite
            assert cmds[1].endswith(" tests"), cmds[1]
            r, secs = fr.sh(f"cd /src && {cmds[1].removesuffix('tests')}"
                            "tests/test_noise_vectors.py", timeout=600)
            print(r.stdout, r.stderr)
            _check(r, cmds[1])
            assert " passed" in r.stdout
            times.append(("./install.sh --test && pytest tests/test_noise_vectors.py", secs))
    finally:
        with capsys.disabled():
            print("\nfresh Debian 12 root, timings:")
            for what, sec in times:
                print(f"  {sec:7.1f} s  {what}")
            print(f"  {time.monotonic() - t0:7.1f} s  in all")
    # FreshRoot's exit unmounted everything under the root and deleted it (or raised)
    assert mounts_under(fr.top) == [] and not fr.top.exists()
