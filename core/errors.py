"""Errors that the CLI reports as a one-line message (no traceback)."""

from contextlib import contextmanager


class ShoesearchError(Exception):
    """A problem the user can fix: bad input, missing weights, nothing to do yet."""


@contextmanager
def explained(explain):
    """Re-raise an exception as a one-line :class:`ShoesearchError` when ``explain(exc)`` has a message
    for it (a known failure of a library: Prefect's server, a DataLoader worker); others pass unchanged."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised, explained or as it was
        message = explain(exc)
        if message is None:
            raise
        raise ShoesearchError(message) from exc
