"""Fast datapath: let the kernel carry a link with VXLAN when it may and can.

A link may use the kernel path when it is allowed to be unencrypted; it does once
full-size heartbeats sent through the kernel VXLAN path have been answered, and it
falls back to sleeve as soon as they stop. Layers, from pure to I/O:

- :mod:`.heartbeat` - heartbeat codec, keys and per-link sequence/echo (sans-IO)
- :mod:`.health` - per-link state machine: disabled / probing / fastdp / sleeve (sans-IO)
- :mod:`.link` - the two together, as the node drives them (sans-IO)
- :mod:`.hbsock` - the raw packet socket on the VXLAN device that carries heartbeats
- :mod:`.netlink` - the one thread that talks netlink (pyroute2)
- :mod:`.datapath` - bridge + TAP + VXLAN device, FDB programming
- :mod:`.probe` - start-up capability probe
"""

from sleeve.fastdp.datapath import DEFAULT_PORT, DEFAULT_VNI, Datapath
from sleeve.fastdp.hbsock import HeartbeatSocket, HeartbeatSocketError
from sleeve.fastdp.health import Action, Health, HealthParams, State
from sleeve.fastdp.heartbeat import ETHERTYPE, derive_key, heartbeat_mac, peek_sender
from sleeve.fastdp.link import Enter, FastdpLink, Leave, Output, Send
from sleeve.fastdp.netlink import DatapathError
from sleeve.fastdp.probe import Capability, aprobe, probe

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_VNI",
    "ETHERTYPE",
    "Action",
    "Capability",
    "Datapath",
    "DatapathError",
    "Enter",
    "FastdpLink",
    "Health",
    "HealthParams",
    "HeartbeatSocket",
    "HeartbeatSocketError",
    "Leave",
    "Output",
    "Send",
    "State",
    "aprobe",
    "derive_key",
    "heartbeat_mac",
    "peek_sender",
    "probe",
]
