"""index stage package (see docs/ARCHITECTURE.md)."""
