"""The spec: what to do, as a validated YAML schema with field-path errors."""
