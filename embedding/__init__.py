"""embedding stage package (see docs/ARCHITECTURE.md)."""
