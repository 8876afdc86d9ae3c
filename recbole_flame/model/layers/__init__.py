"""Layers shared by this package's models."""
