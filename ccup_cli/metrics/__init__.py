"""Metrics from features: zero-shot classification and text search, per domain, and before/after comparison."""
