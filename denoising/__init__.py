"""denoising stage package (see docs/ARCHITECTURE.md)."""
