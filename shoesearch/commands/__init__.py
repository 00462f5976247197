"""CLI commands, one module per pipeline area; each exposes ``register(subparsers)``."""
