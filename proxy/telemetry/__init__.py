"""Metrics, the access log and process logging."""
