"""What the Docker plugin remembers across router restarts: ``STATE_DIR/docker.json``.

    {"format": 1,
     "networks":  {NetworkID: "198.19.128.0/18"},
     "endpoints": {EndpointID: {"network": NetworkID, "address": "A.B.C.D/P",
                                "joined": true, "name": "web" | null}},
     "addresses": {"A.B.C.D": "docker:<random>"}}      address -> IPAM id

Why it is needed: dockerd does not replay its requests to a restarted plugin, and
ReleaseAddress names only the address (RequestAddress had no endpoint id), so the IPAM
id of every address we handed out must survive us. Veths survive the router on their
own (kernel objects on the bridge, which a restarted router adopts); the networks' pools
say which routes to the bridge to put back (``Driver.restore``) should the bridge be new.

Written atomically after every change; a file that is unreadable or not ours is logged
and ignored (dockerd's own deletes and releases of what we forgot still succeed).
"""

from __future__ import annotations

import json
import logging
import pathlib
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from sleeve.ipam.service import write_atomic

log = logging.getLogger("sleeve")

FILE: Final = "docker.json"
MAX_BYTES: Final = 16 << 20
MAX_ENTRIES: Final = 100_000  # per table: far beyond what one host runs


@dataclass
class Endpoint:
    network: str
    address: str
    joined: bool = False
    name: str | None = None


@dataclass
class State:
    path: pathlib.Path | None  # None: in memory only (tests)
    networks: dict[str, str] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    save_errors: int = 0

    @classmethod
    def load(cls, path: pathlib.Path | None) -> State:
        st = cls(path)
        if path is None or not path.exists():
            return st
        try:
            if path.stat().st_size > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES} bytes")
            data = json.loads(path.read_bytes())
            if data.get("format") != 1:
                raise ValueError("unknown format")
            st.networks = {str(k): str(v) for k, v in data["networks"].items()}
            st.endpoints = {str(k): Endpoint(str(v["network"]), str(v["address"]),
                                             bool(v.get("joined")),
                                             None if v.get("name") is None else str(v["name"]))
                            for k, v in data["endpoints"].items()}
            st.addresses = {str(k): str(v) for k, v in data["addresses"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("docker plugin: ignoring %s: %s", path, e)
            return cls(path)
        return st

    def to_json(self) -> dict[str, Any]:
        return {"format": 1, "networks": self.networks,
                "endpoints": {k: asdict(v) for k, v in self.endpoints.items()},
                "addresses": self.addresses}

    def full(self) -> bool:
        return max(len(self.networks), len(self.endpoints), len(self.addresses)) >= MAX_ENTRIES

    def save(self) -> bool:
        if self.path is None:
            return True
        try:
            write_atomic(self.path, json.dumps(self.to_json(), indent=1).encode())
        except OSError as e:
            self.save_errors += 1
            log.warning("docker plugin: cannot save %s: %s", self.path, e.strerror or e)
            return False
        return True
