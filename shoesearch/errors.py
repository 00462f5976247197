"""Errors that the CLI reports as a one-line message (no traceback)."""


class ShoesearchError(Exception):
    """A problem the user can fix: bad input, missing weights, nothing to do yet."""
