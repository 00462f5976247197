"""Serve the deployments: ``nightly`` on its cron schedule, ``denoise`` for manual runs.

    shoesearch serve-flows                       # keeps running; Ctrl-C stops it
    prefect deployment run 'denoise/manual' -p threshold=0.9
    prefect deployment run 'nightly/nightly' -p site=http://127.0.0.1:8765
"""

from __future__ import annotations

import time

from prefect import serve
from prefect.schedules import Cron

from flows import home_tags
from flows.denoise import denoise_flow
from flows.nightly import nightly


def local_timezone() -> str:
    """This machine's IANA zone name (for the cron schedule), falling back to UTC."""
    import os
    from pathlib import Path

    if os.environ.get("TZ"):
        return os.environ["TZ"].lstrip(":")
    link = Path("/etc/localtime")
    if link.is_symlink() and "zoneinfo/" in str(link.resolve()):
        return str(link.resolve()).split("zoneinfo/", 1)[1]
    tzfile = Path("/etc/timezone")
    if tzfile.exists() and tzfile.read_text().strip():
        return tzfile.read_text().strip()
    return time.tzname[0] if time.tzname[0] in ("UTC", "GMT") else "UTC"


def deployments(settings, overrides: dict | None = None) -> list:
    """The two deployments, parameterised with this data home and the ``--set`` overrides given to
    ``serve-flows``. Not every effective value: ``<home>/shoesearch.toml`` and the serving process's
    environment are read again when each run starts, so editing the file takes effect without re-serving.
    A manual run may add its own: ``-p overrides='{"denoise.threshold": 0.9}'``."""
    params = {"home": str(settings.home), "overrides": dict(overrides or {})}
    return [
        nightly.to_deployment(name="nightly", parameters=params, tags=home_tags(settings.home), schedule=Cron(
            settings.schedule.nightly_cron, timezone=settings.schedule.timezone or local_timezone())),
        denoise_flow.to_deployment(name="manual", parameters=params, tags=home_tags(settings.home)),
    ]


def serve_flows(settings, overrides: dict | None = None) -> None:
    """Serve both deployments until interrupted (schedules stay active after shutdown)."""
    print(f"serving 'nightly/nightly' (cron {settings.schedule.nightly_cron!r}, "
          f"{settings.schedule.timezone or local_timezone()}) and 'denoise/manual'; Ctrl-C to stop")
    try:
        serve(*deployments(settings, overrides), pause_on_shutdown=False)
    except KeyboardInterrupt:  # Ctrl-C is how it stops: also while serve() is still starting its runner
        print("stopped serving", flush=True)
