"""Service discovery: a micro DNS in every router, with names gossiped on their own channel.

Modules (imports point downwards)::

    server.py    asyncio adapter: UDP/TCP listeners, forwarding to upstreams, bounds, stats
    resolver.py  sans-IO core: query bytes -> Answer | Forward | Drop (wire format: dnslib)
    records.py   sans-IO gossip channel "dns": the record table (implements Gossiper)
    wire.py      the channel's msgpack codec (field diagram there) and its GossipData
    names.py     RFC 1123 name checks (BadName), reverse-pointer parsing
    service.py   the router's glue (DnsService): registers the channel, persists our own
                 records in STATE_DIR/dns.json, starts the server, the local API

How the parts fit (service.py does this for the router; nothing but service.py reads files
or the clock)::

    from sleeve.dns.names import BadName, relative_name
    from sleeve.dns.records import Records, TableFull
    from sleeve.dns.resolver import Resolver, ResolverConfig
    from sleeve.dns.server import DnsServer, parse_listen, read_resolv_conf, upstreams_from

    records = Records(my_peer_id,                     # 8-byte peer id
                      is_known_peer=topology_knows,   # optional: (peer) -> bool, like Weave
                      on_change=None)                 # optional: () -> None after any change
    records.set_gossip(router.register("dns", records))
    # the router calls records.peer_gone(peer) when the topology forgets a peer, and
    # records.tick(now) at records.next_deadline() (tombstone expiry; one timer per owner)

    config = ResolverConfig(domain="sleeve.local.",   # --dns-domain
                            ttl=1, one_address=False, # answer all addresses shuffled, or one
                            rate=500.0, burst=1000.0) # per-source queries/s (0: no limit)
    resolver = Resolver(records, allowed=may_recurse) # (client_ip: str) -> bool: forwarding
                                                      # only for the overlay subnets and the host
    listen = [parse_listen(s) for s in dns_listen_args]  # --dns-listen ADDR[:PORT], default
                                                      # the bridge/overlay address(es), port 53
    ups = upstreams_from(read_resolv_conf(resolv_conf_text), listen,
                         local_addresses=host_addresses)  # never ourselves
    server = DnsServer(resolver, listen, ups, upstream_timeout=2.0, max_inflight=64,
                       max_pending=512, tcp_idle=10.0, max_tcp_conns=128)
    await server.start()   # raises OSError if an address cannot be bound
    ...
    await server.close()

Registration (``sleeve dns add/remove``, the HTTP API, CNI/Docker) calls, with
``now = loop.time()``:

- ``records.add(relative_name(NAME, domain), ADDRESS, owner_id or "", now)`` -> bool
  (False: already there); raises ``BadName`` (a ``ValueError`` whose ``str`` is one line),
  ``ValueError`` for a bad address, ``TableFull`` past the bounds;
- ``records.remove(relative_name(NAME, domain), ADDRESS or None, now)`` -> count;
- ``records.remove_owner(owner_id, now)`` -> count (a container died);
- ``records.lookup(name)``, ``records.lookup_address(ip)``, ``records.entries()``;
- status: ``records.status()`` (table, drops by reason, re-asserts) and
  ``server.status()`` (listeners, upstreams, forwarding counters, ``resolver.status()``).

Names are kept relative to the domain in the table (``web`` stands for
``web.sleeve.local.``), so a router's ``--dns-domain`` changes only what it serves.

Not done here: per-record signatures. Gossip relays other origins' records and we trust
their versions, as Weave did, so a malicious mesh member can forge records of another
origin O; they last until the forgery reaches O, which outbids it (re-asserts its own
state, tombstones a live record it does not hold). Signing records like the topology's
``PeerRecord`` would close that. Persistence of our own records across a restart is in
``service.py`` (``Store``); stale records of a former life that were not saved are
tombstoned when gossip brings them back. Also not done: RFC 8020 empty non-terminals
(``prod.sleeve.local.`` when only ``db.prod`` exists answers NXDOMAIN).
"""
