"""Checks around a run: preflight before it starts, quality gates after it, and the run summary."""
