"""Shipped data and defaults: every default number, class-name and domain presets, open_clip's metadata."""
