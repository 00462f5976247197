"""Prefect flows: they only wire the steps of ``tasks/``; each takes ``home`` + ``overrides`` (see below)."""


def flow_settings(settings) -> dict:
    """The one way settings reach a flow: the data home and every effective value (``as_overrides``); the
    flow rebuilds them with ``Settings.load(home, overrides)``. Commands and subflows pass these; deployments
    pass the home and only the ``--set`` values (``flows.serve`` says why); DDP ranks get the same overrides."""
    return {"home": str(settings.home), "overrides": settings.as_overrides()}
