"""Configuration layers below the command line: TOML file, then SLEEVE_* environment.

Precedence, highest first: command-line flags > environment (SLEEVE_PORT, ...) >
config file (``--config F`` or env SLEEVE_CONFIG) > built-in defaults. The file
uses the long option names with dashes or underscores::

    port = 6783
    password-file = "/etc/sleeve/password"
    ip = "198.19.0.1/24"
    peers = ["198.18.0.2", "198.18.0.3:6783"]
    dns-listen = "198.19.0.1:53,127.0.0.1:5353"   # env SLEEVE_DNS_LISTEN, same form
    ipalloc-range = "10.32.0.0/12"                # env SLEEVE_IPALLOC_RANGE
    ipalloc-init = "consensus=3"                  # env SLEEVE_IPALLOC_INIT
    docker-plugin = true                          # env SLEEVE_DOCKER_PLUGIN=1
    docker-plugin-socket = "/run/docker/plugins/sleeve.sock"
    docker-api = "/var/run/docker.sock"           # "" : containers get no DNS name
    no-port-prediction = true                     # env SLEEVE_NO_PORT_PREDICTION=1
    no-spray = true                               # env SLEEVE_NO_SPRAY=1
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Any

from sleeve.config import ConfigError

# option -> type; the argparse dest names of `sleeve launch`
OPTIONS: dict[str, type] = {
    "password_file": str, "psk_file": str, "no_encryption": bool, "open": bool, "port": int,
    "listen": str, "iface": str,
    "attach": str, "ip": str, "mtu": int, "state_dir": str, "nickname": str, "http": str,
    "api_socket": str, "api_group": str,
    "log_level": str, "log_format": str, "peers": list, "resume": bool,
    "offload": bool, "clamp_mss": bool, "no_discovery": bool, "conn_limit": int, "no_fastdp": bool,
    "no_port_mapping": bool, "no_port_prediction": bool, "no_spray": bool,
    "trusted_subnets": str, "rekey_seconds": float,
    "no_dns": bool, "dns_listen": str, "dns_domain": str, "dns_ttl": int,
    "dns_one_address": bool, "dns_rate_limit": float,
    "ipalloc_range": str, "ipalloc_default_subnet": str, "ipalloc_init": str,
    "docker_plugin": bool, "docker_plugin_socket": str, "docker_api": str,
}


def _coerce(key: str, value: Any, source: str) -> Any:
    want = OPTIONS[key]
    if want is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false",
                                                        "no", "off", ""):
            return value.lower() in ("1", "true", "yes", "on")
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif want is list:
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return value
    elif isinstance(value, str):
        return value
    raise ConfigError(f"{source}: {key.replace('_', '-')} has a value of the wrong type: "
                      f"{value!r}")


def load_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.replace("-", "_")
        if key not in OPTIONS:
            raise ConfigError(f"config file {path}: unknown option {k!r}")
        out[key] = _coerce(key, v, f"config file {path}")
    return out


def load_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in OPTIONS:
        name = "SLEEVE_" + key.upper()
        if name in environ:
            out[key] = _coerce(key, environ[name], f"environment {name}")
    return out


def layered_defaults(config_path: str | None, environ: Mapping[str, str] = os.environ,
                     ) -> dict[str, Any]:
    path = config_path or environ.get("SLEEVE_CONFIG")
    merged: dict[str, Any] = load_file(path) if path else {}
    merged.update(load_env(environ))
    return merged
