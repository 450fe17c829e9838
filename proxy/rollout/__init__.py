"""Rollout state: the state machine, its stores and the controller that applies changes."""
