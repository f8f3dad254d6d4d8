"""Thin adapters between iqa-plugin and neighbouring tools (used from a clone of the repository)."""
