"""The package version (recorded with every run as part of its code version)."""

__version__ = "0.1.0"
