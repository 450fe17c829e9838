"""Tools around the proxy: selftest, simulate, explain, the demo and seeded trials."""
