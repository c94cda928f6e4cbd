"""How a run executes: torchrun ranks, encoder precision, progress callbacks."""
