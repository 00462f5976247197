"""Running Prefect flows from the command line: one way, for every command that runs a flow.

* **Settings.** A flow gets the data home and *every* effective setting (``Settings.as_overrides``),
  so defaults < ``shoesearch.toml`` < environment < ``--set`` reach each task exactly as the CLI
  resolved them; flows re-create the settings object with ``Settings.load(home, overrides)``.
* **The Prefect server.** With ``PREFECT_API_URL`` set, that server is used. Without it Prefect starts
  a temporary local server; its start-up timeout (Prefect's default 20 s) is raised to
  ``DEFAULT_STARTUP_TIMEOUT_S`` because a loaded 2-core machine needs longer, and a start that still
  fails, or an unreachable server, is reported as one line that says what to do.
* **The console.** Prefect's own INFO lines and its traceback dumps of a failed task are kept off the
  terminal unless ``--debug`` (they stay in the flow run's log, in the Prefect server / UI); the CLI
  reports a failure itself, as one line.
"""

from __future__ import annotations

import logging
import os

from core.errors import explained

DEFAULT_STARTUP_TIMEOUT_S = 300
STARTUP_TIMEOUT_VAR = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def prepare_prefect_environment() -> None:
    """Environment defaults for Prefect, set before it is imported (explicit values win)."""
    os.environ.setdefault(STARTUP_TIMEOUT_VAR, str(DEFAULT_STARTUP_TIMEOUT_S))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if os.environ.get("PREFECT_API_URL", None) == "":  # empty is not unset for Prefect: it breaks event workers
        del os.environ["PREFECT_API_URL"]


class _QuietPrefect(logging.Filter):
    """Lets through what is not Prefect's, and Prefect's warnings that carry no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect"):
            return True
        if record.exc_info or record.levelno >= logging.ERROR:
            return False  # a failed task's traceback wall: the CLI prints the cause as one line
        return record.levelno >= logging.WARNING


def quiet_prefect_console() -> None:
    """Install the console filter on the handlers Prefect configured (idempotent)."""
    import prefect  # noqa: F401 - importing prefect configures its logging

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _QuietPrefect) for f in handler.filters):
            handler.addFilter(_QuietPrefect())


def set_overrides(pairs: list[str]) -> dict[str, str]:
    """``--set SECTION.FIELD=VALUE`` pairs as an overrides dict (values are read as the field's type later)."""
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--set takes SECTION.FIELD=VALUE, got {pair!r}")
        out[key.strip()] = value
    return out


def run_flow(flow, settings, debug: bool = False, **params):
    """Call ``flow(home=..., overrides=<every setting>, **params)`` with one-line errors for Prefect trouble."""
    if not debug:
        quiet_prefect_console()
    with explained(prefect_trouble):  # only Prefect's own start/connect failures are translated
        from flows import flow_settings

        return flow(**flow_settings(settings), **params)


def prefect_trouble(exc: BaseException) -> str | None:
    """A one-line explanation when ``exc`` means Prefect could not start or reach its API server."""
    text = str(exc)
    url = os.environ.get("PREFECT_API_URL")
    if "ephemeral Prefect API server" in text:
        return (f"Prefect's temporary server did not start within {os.environ.get(STARTUP_TIMEOUT_VAR)} s "
                f"(machine busy?): raise {STARTUP_TIMEOUT_VAR}, or run `prefect server start` in another "
                "terminal and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    names = {type(e).__name__ for e in _chain(exc)}
    if url and names & {"ConnectError", "ConnectTimeout", "PrefectHTTPStatusError"}:
        return (f"cannot reach the Prefect server at PREFECT_API_URL={url}: start it (`prefect server start`) "
                "or unset PREFECT_API_URL to use a temporary local server")
    return None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
