"""Running Prefect flows from the command line: one way, for every command that runs a flow.

* **Settings.** A flow gets the data home and *every* effective setting (``Settings.as_overrides``),
  so defaults < ``shoesearch.toml`` < environment < ``--set`` reach each task exactly as the CLI
  resolved them; flows re-create the settings object with ``Settings.load(home, overrides)``.
* **The Prefect server.** With ``PREFECT_API_URL`` set, that server is used. Without it Prefect starts
  a temporary local server; its start-up timeout (Prefect's default 20 s) is raised to
  ``DEFAULT_STARTUP_TIMEOUT_S`` because a loaded 2-core machine needs longer, and a start that still
  fails, or an unreachable server, is reported as one line that says what to do.
* **A lost server, SIGTERM.** Prefect's client retries a failed call once (``PREFECT_CLIENT_DEFAULTS``);
  a server lost mid-flow ends the command with the outcome the warehouse committed, and SIGTERM ends it
  within seconds with its temporary server (``shoesearch.flow_guard``).
* **The console.** Prefect's own INFO lines and its traceback dumps of a failed task are kept off the
  terminal unless ``--debug`` (they stay in the flow run's log, in the Prefect server / UI); the CLI
  reports a failure itself, as one line.
"""

from __future__ import annotations

import logging
import os

from core.errors import ShoesearchError, explained

DEFAULT_STARTUP_TIMEOUT_S = 300
STARTUP_TIMEOUT_VAR = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# Prefect retries a failed API call 5 times, sleeping 2, 4, 8, 16, 32 s: a lost server cost ~1 min per
# call and minutes per command. 1 retry (one 2 s wait) still rides out a one-off refused connection or a
# 503 from a busy local server; a server still gone then is reported at once (``shoesearch.flow_guard``).
PREFECT_CLIENT_DEFAULTS = {"PREFECT_CLIENT_MAX_RETRIES": "1"}


def prepare_prefect_environment() -> None:
    """Environment defaults for Prefect, set before it is imported (explicit values win)."""
    os.environ.setdefault(STARTUP_TIMEOUT_VAR, str(DEFAULT_STARTUP_TIMEOUT_S))
    for name, value in PREFECT_CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if os.environ.get("PREFECT_API_URL", None) == "":  # empty is not unset for Prefect: it breaks event workers
        del os.environ["PREFECT_API_URL"]


# Prefect's plumbing (event and log delivery, its service threads): when its server is unreachable these
# repeat the same connection error many times; the CLI names a lost server once (``shoesearch.flow_guard``).
PLUMBING_LOGGERS = ("prefect._internal", "prefect.events", "prefect.logging")


class _QuietPrefect(logging.Filter):
    """Lets through what is not Prefect's, and Prefect's warnings that carry no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect"):
            return True
        if record.exc_info or record.levelno >= logging.ERROR or record.name.startswith(PLUMBING_LOGGERS):
            return False  # a failed task's traceback wall: the CLI prints the cause as one line
        return record.levelno >= logging.WARNING


def quiet_prefect_console() -> None:
    """Install the console filter on the handlers Prefect configured (idempotent)."""
    import prefect  # noqa: F401 - importing prefect configures its logging

    logging.raiseExceptions = False  # else Prefect's log shipper prints "--- Error logging to API ---" raw
    for logger in (logging.getLogger(), logging.getLogger("prefect._internal")):  # the latter: own handler
        for handler in logger.handlers:
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
    """Call ``flow(home=..., overrides=<every setting>, **params)`` with one-line errors for Prefect trouble.

    SIGTERM stops it within seconds, and a Prefect server lost after the outcome step committed does not
    turn that outcome into a failure (``shoesearch.flow_guard``: raises :class:`FlowEnded`)."""
    from flows import flow_settings
    from shoesearch.flow_guard import (FlowEnded, Terminated, lost_server, outcome_after_lost_server,
                                       recording_flow_runs, sigterm_seen, stop_on_sigterm)

    if not debug:
        quiet_prefect_console()
    flow_runs: set[str] = set()
    try:
        with stop_on_sigterm(), explained(prefect_trouble):  # only Prefect's own failures are translated
            return recording_flow_runs(flow, flow_runs)(**flow_settings(settings), **params)
    except Exception as exc:
        if sigterm_seen():
            raise Terminated() from exc
        where = lost_server(exc)
        if where is None:
            raise
        ended = outcome_after_lost_server(settings, flow.name, flow_runs, where)
        if ended is not None:
            raise ended from exc
        if isinstance(exc, ShoesearchError):  # e.g. PREFECT_API_URL's server: already says what to do
            raise
        raise FlowEnded(f"shoesearch: error: lost the Prefect server at {where} before the flow {flow.name!r} "
                        "committed its outcome; run the command again (committed work is kept)", 2) from exc


def prefect_trouble(exc: BaseException) -> str | None:
    """A one-line explanation when ``exc`` means Prefect could not start or reach its API server."""
    text = str(exc)
    url = os.environ.get("PREFECT_API_URL")
    if "ephemeral Prefect API server" in text:
        return (f"Prefect's temporary server did not start within {os.environ.get(STARTUP_TIMEOUT_VAR)} s "
                f"(machine busy?): raise {STARTUP_TIMEOUT_VAR}, or run `prefect server start` in another "
                "terminal and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    from shoesearch.flow_guard import exception_chain

    names = {type(e).__name__ for e in exception_chain(exc)}
    if url and names & {"ConnectError", "ConnectTimeout", "PrefectHTTPStatusError"}:
        return (f"cannot reach the Prefect server at PREFECT_API_URL={url}: start it (`prefect server start`) "
                "or unset PREFECT_API_URL to use a temporary local server")
    return None
