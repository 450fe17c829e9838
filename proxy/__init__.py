"""Grayscale: a gradual-release gateway for machine-learning model endpoints."""

__version__ = "0.1.0"
