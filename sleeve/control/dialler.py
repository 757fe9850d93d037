"""The dialler: which addresses to connect to, when, and what we remember of them.

Targets come from the command line, from ``sleeve connect`` (the API) and, unless
``--no-discovery``, from gossip (every address the mesh lists for a peer we know of).
Each tick, targets that are due and not already connected or being dialled get one
connection attempt; a failed or ended attempt backs off (jittered, 2 s x1.5 up to
60 s). Of two peers that discover each other, the smaller id dials first (the other
after ``DISCOVERED_DEFER``), so a forming mesh does not shake hands twice per link.
A peer whose first direct dial is still untried or in flight is not hole-punched yet
(``direct_first``): on a loaded host a dial can take longer than traversal's grace, and
a relayed attempt to a peer that the direct dial is about to reach is pure load. A peer
that comes back with a new incarnation (it restarted) is dialled at once, without the
backoff its refused attempts built up while it was down (``renewed``).
Connection tasks (ours and traversal's relayed ones) run in the node's task group
through ``task_spawner``, which isolates them: an exception nobody expected is counted
as an ``internal_error`` drop and logged once with its traceback, and the attempt is
retried like any failed one. A bug in one connection must never end the task group,
and with it the router. A target that turned out to be ourselves is never dialled
again. The targets the user gave are remembered in ``state_dir/peers.json`` so
``launch --resume`` rejoins (a few hundred bytes, written only when the set changes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sleeve.config import Config, Target, parse_target
from sleeve.control.connections import Connections, TargetState
from sleeve.proto.stats import Counters

log = logging.getLogger("sleeve")

BACKOFF_START = 2.0
BACKOFF_MAX = 60.0
DISCOVERED_DEFER = 4.0  # s the larger id waits before dialling a peer it discovered

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Dialler:
    def __init__(self, cfg: Config, conns: Connections) -> None:
        self.cfg = cfg
        self.conns = conns
        self.targets: dict[Target, TargetState] = {t: TargetState(t) for t in cfg.peers}
        self.on_added: Callable[[], None] = lambda: None  # the node's ticker: dial soon
        if cfg.resume:
            self._load()

    def add(self, t: Target) -> None:
        self.targets.setdefault(t, TargetState(t))
        self.on_added()

    def forget(self, t: Target) -> bool:
        return self.targets.pop(t, None) is not None

    # ------------------------------------------------------------------ per tick
    def tick(self, now: float, spawn: Spawn) -> None:
        """Start a connection attempt for every target that is due."""
        links = self.conns.links
        dialling: set[bytes] = {ts.peer for ts in self.targets.values()
                                if ts.connecting and ts.peer is not None}
        for ts in self.targets.values():
            if ts.dead or ts.connecting or now < ts.next_try:
                continue
            if ts.peer is not None and (ts.peer in links or ts.peer in dialling):
                continue
            if len(links) >= self.cfg.conn_limit:
                break
            ts.connecting = True
            ts.attempts += 1
            if ts.peer is not None:
                dialling.add(ts.peer)
            spawn(self._dial(ts))

    async def _dial(self, ts: TargetState) -> None:
        try:
            ts.last_error = await self.conns.dial(ts)
        except Exception as e:
            ts.last_error = f"internal error: {type(e).__name__}"  # the spawner logs it
            raise
        finally:
            ts.connecting = False
            if not ts.dead:
                # exponent capped: 1.5 ** n overflows a float past n ~ 1750 attempts
                base = min(BACKOFF_MAX,
                           BACKOFF_START * (1.5 ** min(max(0, ts.attempts - 1), 60)))
                ts.next_try = time.monotonic() + random.uniform(base / 2, base * 1.5)

    def discover(self, known: set[bytes], candidates: dict[bytes, set[Target]]) -> None:
        """Add dial targets for peers learnt from gossip; drop the ones no longer listed."""
        if not self.cfg.discovery:
            return
        listed: set[Target] = set()
        for peer, addrs in candidates.items():
            if peer not in known:
                continue  # only mentioned: its own record has not arrived (or it left)
            listed |= addrs
            if peer in self.conns.links:
                continue
            for t in addrs:
                if t not in self.targets:
                    # Both ends learn of each other at about the same time; if both dial,
                    # one of the two connections is a duplicate that is thrown away after
                    # a full handshake. The smaller id dials first; the other waits a
                    # little, and dials only if no link came (e.g. the smaller cannot
                    # reach it). Halves the handshakes of a mesh forming.
                    later = (random.uniform(DISCOVERED_DEFER, 1.5 * DISCOVERED_DEFER)
                             if self.conns.ident.me > peer else 0.0)
                    self.targets[t] = TargetState(t, peer=peer, discovered=True,
                                                  next_try=time.monotonic() + later)
        for t, ts in list(self.targets.items()):
            if ts.discovered and not ts.connecting and t not in listed:
                del self.targets[t]

    def busy(self, now: float, soon: float) -> bool:
        """A dial is under way, or one is due before ``soon`` (the node's tick pacing)."""
        links = self.conns.links
        # ``connecting`` stays True while the connection lasts: only an unlinked one counts
        return any((ts.connecting or (not ts.dead and ts.next_try < soon))
                   and (ts.peer is None or ts.peer not in links)
                   for ts in self.targets.values())

    def direct_first(self) -> set[bytes]:
        """Peers whose first direct dial has not failed yet (untried or in flight): the
        traversal part leaves them alone until it has."""
        out: set[bytes] = set()
        for ts in self.targets.values():
            if ts.peer is not None and not ts.dead and (
                    ts.attempts == 0 or (ts.connecting and ts.attempts == 1)):
                out.add(ts.peer)
        return out

    def renewed(self, peers: set[bytes], now: float) -> None:
        """These peers have a new incarnation (restarted): dial them now, from scratch.

        Their targets backed off while the process was down (each refused attempt
        lengthens the wait, up to ``BACKOFF_MAX``); the new record is proof it is up
        again, so a restarted router is back within one tick of its record arriving."""
        for ts in self.targets.values():
            if ts.peer in peers and not ts.connecting and ts.peer not in self.conns.links:
                ts.attempts = 0
                ts.next_try = min(ts.next_try, now)

    # ------------------------------------------------------------------ known peers
    def _file(self) -> pathlib.Path:
        return self.cfg.state_dir / "peers.json"

    def _load(self) -> None:
        try:
            saved = json.loads(self._file().read_text())
            for text in saved.get("peers", []):
                self.add(parse_target(str(text), self.cfg.port))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as e:
            log.warning("ignoring unreadable %s: %s", self._file(), e)

    def save(self) -> None:
        path = self._file()
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"peers": sorted(str(t) for t, ts in self.targets.items()
                                                       if not ts.discovered)}))
            tmp.replace(path)
        except OSError as e:
            log.warning("cannot remember peers in %s: %s", path, e.strerror)

    # ------------------------------------------------------------------ API and status
    def api_connect(self, q: dict[str, str]) -> dict[str, Any]:
        added = []
        for p in q.get("peer", "").split(","):
            t = parse_target(p, self.cfg.port)  # ConfigError is a ValueError: HTTP 400
            self.add(t)
            added.append(str(t))
        self.save()
        return {"added": added}

    def api_forget(self, q: dict[str, str]) -> dict[str, Any]:
        gone = []
        for p in q.get("peer", "").split(","):
            t = parse_target(p, self.cfg.port)
            if self.forget(t):
                gone.append(str(t))
        self.save()
        return {"forgotten": gone}

    def status(self, now: float) -> list[dict[str, Any]]:
        links = self.conns.links
        return [{"target": str(ts.target), "connected": ts.peer in links,
                 "discovered": ts.discovered,
                 "attempts": ts.attempts, "last_error": ts.last_error,
                 "retry_in_s": max(0.0, round(ts.next_try - now, 1))}
                for ts in self.targets.values()]


def task_spawner(tg: asyncio.TaskGroup | None, drops: Counters) -> Spawn:
    """Run connection tasks in ``tg``, each isolated from the others and from the group."""
    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        if tg is None:
            coro.close()
            return
        tg.create_task(_isolated(coro, drops))
    return spawn


async def _isolated(coro: Coroutine[Any, Any, None], drops: Counters) -> None:
    # A task group cancels every task and re-raises when one task fails: catch here, once,
    # so the failure is reported a single time and ends nothing but this connection.
    # CancelledError is a BaseException and passes through (shutdown).
    try:
        await coro
    except Exception:
        drops.inc("internal_error")
        log.exception("internal error in a connection task; that connection ends, "
                      "the router carries on")
