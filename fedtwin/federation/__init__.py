"""Combining the twins' updates: aggregation strategies, and the checks every update passes first."""
