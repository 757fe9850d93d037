"""``sleeve cni install``: the plugin executables and the network config, where runtimes look.

    BIN_DIR/sleeve-net, BIN_DIR/sleeve-ipam   small shell shims: exec THIS interpreter
                                              (sys.executable: the venv's, /opt/sleeve/venv)
                                              on sleeve.cni.net / sleeve.cni.ipam
    CONF_DIR/10-sleeve.conflist               network "sleeve": sleeve-net (+ sleeve-ipam),
                                              then portmap when BIN_DIR has it

Why shims rather than copies of the console scripts: runtimes exec plugins by file name
from their own bin dir with a minimal environment; a shim pins the interpreter and the
source tree that ran the install (PYTHONPATH is set only when that tree is not what the
interpreter would import anyway, e.g. a development checkout), so the plugin and the
router are always the same code. Files are written atomically (temp file + rename): a
runtime never execs half a shim. Idempotent: rerunning rewrites the same bytes.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import sys
from typing import Any

from sleeve.config import DEFAULT_API_SOCKET

PLUGINS = {"sleeve-net": "sleeve.cni.net", "sleeve-ipam": "sleeve.cni.ipam"}
CONFLIST = "10-sleeve.conflist"
NETWORK = "sleeve"
CNI_VERSION = "1.0.0"  # what libcni in podman 4 / containerd 1.6+ speaks; we also take 1.1.0


def source_root() -> pathlib.Path:
    """The directory that holds the ``sleeve`` package now running."""
    import sleeve

    return pathlib.Path(sleeve.__file__).resolve().parent.parent


def shim(module: str, python: str | None = None, root: pathlib.Path | None = None) -> str:
    """The executable's text. ``python`` given (a node's own venv, e.g. from a Kubernetes
    init container): that interpreter's own sleeve. Else ours, and our source tree when
    it is not inside our interpreter's prefix (a development checkout)."""
    py = python or sys.executable
    r = root or source_root()
    env = ""
    if python is None and not str(r).startswith(sys.prefix.rstrip("/") + "/"):
        env = f"PYTHONPATH={shlex.quote(str(r))}${{PYTHONPATH:+:$PYTHONPATH}} "
    return ("#!/bin/sh\n"
            "# written by `sleeve cni install`: the sleeve CNI plugin, run by the interpreter\n"
            "# (and source tree) that installed it\n"
            f"{env}exec {shlex.quote(py)} -m {module} \"$@\"\n")


def conflist(bin_dir: str, api: str = DEFAULT_API_SOCKET, subnet: str = "",
             masquerade: bool = False) -> dict[str, Any]:
    ipam: dict[str, Any] = {"type": "sleeve-ipam"}
    if subnet:
        ipam["subnet"] = subnet
    if masquerade:
        ipam["routes"] = [{"dst": "0.0.0.0/0"}]
    net: dict[str, Any] = {"type": "sleeve-net", "api": api, "hairpinMode": True,
                           "ipMasq": masquerade, "ipam": ipam}
    plugins = [net]
    if os.access(os.path.join(bin_dir, "portmap"), os.X_OK):
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True},
                        "snat": True})
    return {"cniVersion": CNI_VERSION, "name": NETWORK, "plugins": plugins}


def _write(path: pathlib.Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def install(bin_dir: str, conf_dir: str, api: str = DEFAULT_API_SOCKET, subnet: str = "",
            masquerade: bool = False, python: str | None = None) -> list[str]:
    """Write the shims and the conflist; returns the paths written (OSError on failure)."""
    b, c = pathlib.Path(bin_dir), pathlib.Path(conf_dir)
    b.mkdir(parents=True, exist_ok=True)
    c.mkdir(parents=True, exist_ok=True)
    written = []
    for exe, module in PLUGINS.items():
        _write(b / exe, shim(module, python), 0o755)
        written.append(str(b / exe))
    text = json.dumps(conflist(bin_dir, api, subnet, masquerade), indent=2) + "\n"
    _write(c / CONFLIST, text, 0o644)
    written.append(str(c / CONFLIST))
    return written
