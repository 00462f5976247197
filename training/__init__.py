"""training stage package (see docs/ARCHITECTURE.md)."""
