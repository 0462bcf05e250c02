"""Feedback joined to its prediction, batch-wise and streaming, into per-arm accumulators."""
