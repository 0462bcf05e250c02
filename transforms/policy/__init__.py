"""Contextual bandits and off-policy evaluation (see docs/policy.md)."""
