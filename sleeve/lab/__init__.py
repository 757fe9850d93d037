"""Network-namespace test lab: hosts, switches, links, NAT, loss and blocking.

Test tooling only (it shells out to ``ip``/``nft``/``sysctl``); the router never imports it.
"""

from sleeve.lab.guard import OVERLAY, UNDERLAY
from sleeve.lab.netns import (
    AUTO,
    Host,
    Lab,
    LabCommandError,
    LabError,
    Switch,
)

__all__ = [
    "AUTO",
    "OVERLAY",
    "UNDERLAY",
    "Host",
    "Lab",
    "LabCommandError",
    "LabError",
    "Switch",
]
