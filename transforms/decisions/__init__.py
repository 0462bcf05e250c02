"""From per-arm totals to decisions: statistics, router state, per-experiment tables."""
