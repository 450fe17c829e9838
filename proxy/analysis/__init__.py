"""Automatic analysis: candidate against stable in the same window, and rollback on failure."""
