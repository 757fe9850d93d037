"""Service discovery: a micro DNS in every router (placeholder docstring, see below)."""
