"""Maintenance scripts of the repository (not part of the relay package or its wheel)."""
