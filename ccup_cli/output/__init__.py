"""Outputs on disk: atomic writes, caches, the report (JSON and tables), plots."""
