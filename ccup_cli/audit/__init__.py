"""Is it really gone? The audit figures from features, probes, aliases, lineage, its page and plots."""
