"""The Docker network and IPAM plugin (libnetwork remote driver) served by the router."""
