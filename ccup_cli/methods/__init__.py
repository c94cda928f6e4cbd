"""Unlearning methods: the table (one entry each), their math (projector, sinks, bilinear, prototypes), prompt sides, apply."""
