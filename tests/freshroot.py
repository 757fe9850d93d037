"""A stock Debian root in a chroot, for tests that install sleeve the way a new user would.

The pristine root is what ``debootstrap --variant=minbase SUITE`` gives, nothing added. It is
built once and kept as a tarball in CACHE_DIR (``/var/cache/sleeve-test/``, one file per
suite/variant/architecture, with the sha256 recorded beside it when it was built; delete it to
rebuild); every test run checks that sum and extracts it into a fresh directory under /var/tmp,
so each run starts from the same untouched root. A tarball that is missing, has no recorded sum
or does not match it (an interrupted copy, a disk error, a hand edit) is built again, which
needs debootstrap (installed from apt if missing) and fails loudly without it. The mirror is the one
this machine's apt already uses (its sources), so no host name is written into the project.

Mounts: the root is bind-mounted onto itself (``ip netns exec`` makes "/" an rslave mount, which
fails unless "/" is a mount point), then proc, and binds of /dev (the demo needs /dev/net/tun),
/dev/pts and /sys, each made private so nothing propagates back to the host. ``FreshRoot``
removes every mount under the root, then the root, even when the test fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

CACHE_DIR = pathlib.Path("/var/cache/sleeve-test")
# root's PATH on Debian: what a user who logs in as root (or uses sudo -i) has
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BINDS = ("dev", "dev/pts", "sys")


class FreshRootError(Exception):
    """The root could not be built, mounted or removed."""


def run(argv: list[str], *, timeout: float, check: bool = True,
        cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and r.returncode != 0:
        raise FreshRootError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def ensure_tool(tool: str, package: str) -> str:
    """Path of ``tool``, installed from Debian's ``package`` first if missing (fails loudly)."""
    path = os.pathsep.join([ROOT_PATH, os.environ.get("PATH", "")])
    found = shutil.which(tool, path=path)
    if found is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
            if r.returncode != 0:
                raise FreshRootError(f"{tool} missing and {' '.join(argv)} failed:\n{r.stderr}")
        found = shutil.which(tool, path=path)
        if found is None:
            raise FreshRootError(f"{tool} still missing after installing {package}")
    return found


# ------------------------------------------------------------------ apt sources


def _one_line_sources(text: str) -> Iterator[tuple[str, str]]:
    """(uri, suite) of each ``deb`` line of a sources.list file."""
    for line in text.splitlines():
        line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0])  # drop comments and [options]
        f = line.split()
        if len(f) >= 3 and f[0] == "deb":
            yield f[1], f[2]


def _deb822_sources(text: str) -> Iterator[tuple[str, str]]:
    """(uri, suite) of each enabled ``Types: deb`` stanza of a .sources file (deb822)."""
    text = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line[:1].isspace() and key:  # continuation of a multi-line field
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                yield uri, suite


def mirror_for(suite: str, one_line: list[str], deb822: list[str]) -> str | None:
    """The URI of the first apt source that carries ``suite`` itself (not -updates etc.)."""
    for text in one_line:
        for uri, s in _one_line_sources(text):
            if s == suite:
                return uri
    for text in deb822:
        for uri, s in _deb822_sources(text):
            if s == suite:
                return uri
    return None


def host_mirror(suite: str) -> str:
    """This machine's mirror for ``suite``, read from its apt sources (the files apt reads)."""
    apt = pathlib.Path("/etc/apt")
    lists = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    sources = sorted((apt / "sources.list.d").glob("*.sources"))
    uri = mirror_for(suite, [p.read_text() for p in lists if p.is_file()],
                     [p.read_text() for p in sources])
    if uri is None:
        raise FreshRootError(f"no apt source on this machine carries {suite!r} "
                             f"(looked in {apt}/sources.list and sources.list.d/)")
    return uri


# ------------------------------------------------------------------ mounts


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(root: pathlib.Path) -> list[str]:
    """Mount points at or below ``root``, in mount order (from /proc/mounts)."""
    with open("/proc/mounts", encoding="utf-8") as f:
        targets = [_unescape(line.split()[1]) for line in f]
    r = str(root)
    return [t for t in targets if t == r or t.startswith(r + "/")]


def unmount_all(root: pathlib.Path) -> None:
    """Unmount everything at or below ``root``, newest first; lazily if a plain umount fails
    (something still holds it open). Raises if a mount is left."""
    for _ in range(64):  # bounded: stacked mounts at one point each take a turn
        left = mounts_under(root)
        if not left:
            return
        target = left[-1]
        if subprocess.run(["umount", target], capture_output=True, timeout=60).returncode:
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=60)
    raise FreshRootError(f"mounts left under {root}: {mounts_under(root)}")


def remove_tree(path: pathlib.Path) -> None:
    """rm -rf, but never through a mount: a bind of /dev below ``path`` would lose host files."""
    unmount_all(path)
    run(["rm", "-rf", "--one-file-system", str(path)], timeout=300)


# ------------------------------------------------------------------ processes


def processes_in(root: pathlib.Path) -> dict[int, str]:
    """pid -> command line of every process whose root directory is ``root`` (or below)."""
    out: dict[int, str] = {}
    r = str(root)
    for p in pathlib.Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            proot = os.readlink(p / "root")
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile, or a kernel thread
            continue
        if proot == r or proot.startswith(r + "/"):
            out[int(p.name)] = cmd.strip()
    return out


# ------------------------------------------------------------------ the root


def _arch() -> str:
    return run(["dpkg", "--print-architecture"], timeout=30).stdout.strip()


def sha256_of(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sum_file(tar: pathlib.Path) -> pathlib.Path:
    return tar.with_name(f"{tar.name}.sha256")


def cached_whole(tar: pathlib.Path) -> bool:
    """True if ``tar`` is there and its sha256 is the one recorded when it was built."""
    try:
        want = sum_file(tar).read_text().split()[0]
    except (OSError, IndexError):
        return False
    return tar.is_file() and sha256_of(tar) == want


def pristine_tarball(suite: str, variant: str) -> tuple[pathlib.Path, float | None]:
    """The cached pristine root's tarball and, if it had to be built now, debootstrap's seconds."""
    tar = CACHE_DIR / f"debian-{suite}-{variant}-{_arch()}.tar"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # one run at a time checks or builds the cache: another run's build between our check
    # and our use could otherwise pair its tarball with our sum
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached_whole(tar):
            return tar, None
        # missing, never summed or damaged: build it again (never extract a root we cannot
        # vouch for). Nothing is deleted first: a good but unsummed root stays until a new
        # one replaces it, so a machine that cannot build keeps what it had.
        return tar, _build(tar, suite, variant)


def _build(tar: pathlib.Path, suite: str, variant: str) -> float:
    debootstrap = ensure_tool("debootstrap", "debootstrap")
    mirror = host_mirror(suite)
    build = pathlib.Path(tempfile.mkdtemp(prefix="sleeve-debootstrap-", dir="/var/tmp"))
    t0 = time.monotonic()
    try:
        run([debootstrap, f"--variant={variant}", suite, str(build / "root"), mirror],
            timeout=900)
        seconds = time.monotonic() - t0
        part = tar.with_name(f"{tar.name}.{os.getpid()}.part")
        try:
            run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cpf", str(part),
                 "-C", str(build / "root"), "."], timeout=600)
            digest = sha256_of(part)
            part.replace(tar)  # atomic: a concurrent or interrupted run never sees half a root
            sums = sum_file(part)
            sums.write_text(f"{digest}  {tar.name}\n")
            sums.replace(sum_file(tar))  # last: a tarball without its sum is rebuilt
        finally:
            part.unlink(missing_ok=True)
            sum_file(part).unlink(missing_ok=True)
    finally:
        remove_tree(build)  # debootstrap mounts proc/sys in the target, and may leave them
    return seconds


class FreshRoot:
    """A mounted copy of the pristine root: ``with FreshRoot(tar) as fr: fr.sh("...")``.

    Leaving the block stops what still runs in the root (only processes whose root is this
    directory: the test started them all), unmounts everything below it and deletes it.
    """

    def __init__(self, tarball: pathlib.Path) -> None:
        self.tarball = tarball
        self.top = pathlib.Path(tempfile.mkdtemp(prefix="sleeve-fresh-", dir="/var/tmp"))
        self.root = self.top / "root"

    def __enter__(self) -> FreshRoot:
        try:
            self.root.mkdir()
            run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf",
                 str(self.tarball), "-C", str(self.root)], timeout=600)
            self._copy_site_network_config()
            self._mount("--bind", str(self.root), str(self.root))
            self._mount("-t", "proc", "proc", str(self.root / "proc"))
            for rel in _BINDS:
                self._mount("--bind", f"/{rel}", str(self.root / rel))
        except BaseException:
            self.close()
            raise
        return self

    def _copy_site_network_config(self) -> None:
        """What any new machine on this network is given, not part of a stock root: the
        resolver, and the site's own CAs (/usr/local/share/ca-certificates: e.g. the CA of a
        TLS-inspecting proxy; without it pip's HTTPS fails here). The CAs enter the root's
        store only when install.sh installs ca-certificates, as on a real machine."""
        # Copied, not bind-mounted: the root may rewrite them, the host's must stay as they are
        (self.root / "etc/resolv.conf").unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", self.root / "etc/resolv.conf")
        local_cas = pathlib.Path("/usr/local/share/ca-certificates")
        if local_cas.is_dir():
            shutil.copytree(local_cas, self.root / local_cas.relative_to("/"), dirs_exist_ok=True)

    def _mount(self, *argv: str) -> None:
        run(["mount", *argv], timeout=60)
        # private: on a host whose mounts are shared (systemd's default), mounting dev/pts
        # over a bind of /dev would otherwise also stack it on the host's /dev/pts
        run(["mount", "--make-private", argv[-1]], timeout=60)

    def copy_in_checkout(self, repo: pathlib.Path, dest: str = "src") -> None:
        """The checkout's committed tree (HEAD, via ``git archive``): the test tests what is
        committed, as a user who clones would get it; uncommitted edits are not in it."""
        d = self.root / dest
        d.mkdir()
        archive = subprocess.Popen(["git", "-C", str(repo), "archive", "--format=tar", "HEAD"],
                                   stdout=subprocess.PIPE)
        assert archive.stdout is not None
        try:
            subprocess.run(["tar", "-x", "-C", str(d)], stdin=archive.stdout, check=True,
                           timeout=120)
        finally:
            archive.stdout.close()
            rc = archive.wait(timeout=120)
        if rc != 0:
            raise FreshRootError(f"git archive HEAD exited {rc}")

    def sh(self, script: str, timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
        """Run ``script`` with /bin/sh in the root, with the clean environment of a root login
        (none of this machine's PIP_*/PYTHON* variables); returns the result and its seconds."""
        env = {"PATH": ROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
        t0 = time.monotonic()
        r = subprocess.run([shutil.which("chroot", path=ROOT_PATH) or "chroot", str(self.root),
                            "/bin/sh", "-c", script], capture_output=True, text=True,
                           timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        return r, time.monotonic() - t0

    def close(self) -> None:
        for pid in processes_in(self.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while processes_in(self.root) and time.monotonic() < deadline:
            time.sleep(0.1)
        remove_tree(self.top)

    def __exit__(self, *exc: object) -> None:
        self.close()
