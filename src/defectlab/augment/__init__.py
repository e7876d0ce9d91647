"""Synthesised pseudo-defects for self-supervised training (never the test data's renderer)."""
