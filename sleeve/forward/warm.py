"""Keep the lone-frame path warm while small frames flow (issue 23, ping latency).

PROTOTYPE. A router woken by a ping every 10 ms runs its per-frame Python on a cold CPU.
"""

from __future__ import annotations

import asyncio
import os
import time

from sleeve.proto import datagram as dg
from sleeve.proto.mactable import MacTable
from sleeve.proto.session import DataSession
from sleeve.proto.stats import Counters


class Warmer:
    def __init__(self, macs: MacTable, stats: Counters, interval: float, linger: float = 1.0) -> None:
        self._macs = macs
        self._c = stats.c
        self.interval = interval
        self._linger = linger
        k1, k2 = os.urandom(32), os.urandom(32)
        self._tx = DataSession(1, 2, k1, k2, True)
        self._rx = DataSession(2, 1, k2, k1, True)
        self._frame = bytes.fromhex("02ffffff0001" "02ffffff0002" "0800") + bytes(84)
        self._peer = b"\xff" * 8
        self._handle: asyncio.TimerHandle | None = None
        self._seen = -1
        self._quiet_since = 0.0
        self.armed = False
        self.polls: list = []

    def arm(self) -> None:
        if self.armed or self.interval <= 0:
            return
        self.armed = True
        self._quiet_since = time.monotonic()
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        seen = self._c["tx_lone_frames"]
        if seen != self._seen:
            self._seen, self._quiet_since = seen, now
        elif now - self._quiet_since > self._linger:
            self.armed = False
            self._handle = None
            return
        self.rehearse(now)
        for p in self.polls:
            p()
        self._c["warm_ticks"] += 1
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def rehearse(self, now: float) -> None:
        f = self._frame
        macs = self._macs
        macs.lookup(f[0:6], now)
        body = dg.frame_record(f)
        d = self._tx.seal(body)
        _index, counter = dg.decode_header(d)
        self._rx.open(counter, d)
        macs.refresh(f[6:12], self._peer, now)
