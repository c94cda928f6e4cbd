"""What every job shares: the door (spec -> plan), the session (plan -> features), the sweep, provenance, the writer, run options."""
