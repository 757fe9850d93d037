"""Links to peers: one ``Link`` per authenticated peer (``link``) and the table that
registers them, resolves duplicates, tracks liveness and announces ups and downs
(``table``)."""
