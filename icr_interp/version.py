"""The library's version: one definition, read by the package root and by checkpoints (which record it)."""

__version__ = "0.2.0"
