"""Simulated serving traffic for demos, tests and benchmarks: a router, click data, a real-time publisher."""
