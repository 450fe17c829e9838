"""Wiring: one process's listeners and config, and the workers of a host."""
