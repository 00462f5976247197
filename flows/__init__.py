"""Prefect flows: they only wire the steps of ``tasks/``; each takes ``home`` + ``overrides`` (see below).

Every flow run is named after what it does and its data home (``nightly-<home>-<date>``,
``denoise-<home>-t1.1``: ``run_name``) and tagged with the home (``home:<name>``: ``label_run``), so two
homes' runs tell apart in the Prefect UI; the steps log their figures to the run's log
(``core.progress.run_logger``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path


def flow_settings(settings) -> dict:
    """The one way settings reach a flow: the data home and every effective value (``as_overrides``); the
    flow rebuilds them with ``Settings.load(home, overrides)``. Commands and subflows pass these; deployments
    pass the home and only the ``--set`` values (``flows.serve`` says why); DDP ranks get the same overrides."""
    return {"home": str(settings.home), "overrides": settings.as_overrides()}


def home_name(home: str | Path | None) -> str:
    """The data home as run names and tags show it: its folder's name (the default home when None)."""
    if home is None:
        from core.settings import Settings

        home = Settings.load(home=None).home
    return Path(home).expanduser().resolve().name or "home"


def home_tags(home: str | Path | None) -> list[str]:
    return [f"home:{home_name(home)}"]


def describe(kind: str, params: dict, today: dt.date | None = None) -> str:
    """A flow run's name from its parameters: ``nightly-<home>-<date>``, ``denoise-<home>-t1.1`` (the threshold,
    or ``-drop0.1`` when a drop rate calibrates it), ``crawl-<home>-<site host>``, ``train-<home>-<photos>``."""
    home = home_name(params.get("home"))
    overrides = params.get("overrides") or {}
    if kind == "denoise":
        rate = params.get("drop_rate") if params.get("drop_rate") is not None else overrides.get("denoise.drop_rate")
        threshold = params.get("threshold") if params.get("threshold") is not None else overrides.get("denoise.threshold")
        how = f"-drop{float(rate):g}" if rate is not None else f"-t{float(threshold):g}" if threshold is not None else ""
        return f"denoise-{home}{how}"
    if kind == "crawl":
        site = params.get("site")
        return f"crawl-{home}-{site.split('//', 1)[-1].split('/', 1)[0] if site else 'jd'}"
    if kind == "train":
        return f"train-{home}-{params.get('photos') or 'auto'}"
    return f"{kind}-{home}-{(today or dt.date.today()).isoformat()}"


def run_name(kind: str) -> Callable[[], str]:
    """``flow_run_name`` for ``@flow``: the run's name from its parameters (``describe``)."""
    def name() -> str:
        from prefect.runtime import flow_run

        try:
            return describe(kind, dict(flow_run.parameters or {}))
        except Exception:  # noqa: BLE001 - a bad parameter fails in the flow with its own message, not here
            return kind

    return name


def label_run(settings) -> None:
    """Tag the current flow run with its home (kept with any tags it was started with); a no-op outside a
    flow run, and never a reason for a flow to fail."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.runtime import flow_run

        if not flow_run.id:
            return
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run.id)
            client.update_flow_run(flow_run.id, tags=sorted(set(run.tags or []) | set(home_tags(settings.home))))
    except Exception:  # noqa: BLE001 - tags are a convenience: a lost server is reported by the flow's steps
        pass
