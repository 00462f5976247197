"""The ``denoise`` flow: embed the current photos, decide kept/dropped, write the report, and let the served
trained model re-judge the products it never trained on (second pass).

Triggered by hand (``shoesearch denoise``, or ``prefect deployment run 'denoise/manual' -p threshold=0.9``)
and called by the nightly flow.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from core.settings import Settings
from flows import label_run, run_name
from tasks.denoise import denoise_task
from tasks.denoise_report import denoise_report_task
from tasks.denoise_second import second_pass_task, served_trained_model_task
from tasks.embed import embed_images_task
from tasks.snapshot import refresh_snapshot_task


@flow(name="denoise", flow_run_name=run_name("denoise"))
def denoise_flow(threshold: float | None = None, drop_rate: float | None = None, backbone: str | None = None,
                 home: str | None = None, overrides: dict[str, Any] | None = None,
                 embed_run_id: str | None = None) -> str:
    """Embed (incremental) -> denoise -> report -> second pass -> analyst snapshot; returns the denoise run id
    (the second pass's when it ran: its ``first_run_id`` parameter names the first pass).

    Second pass (``denoise.second_pass``, default off: measured worse): when a trained model serves, it re-judges the
    products it never trained on (``tasks.denoise_second``). Nothing happens while the ImageNet descriptor serves.

    ``threshold`` is an absolute distance in [0, 2]; ``drop_rate`` calibrates it instead; neither
    means ``settings.denoise``. ``backbone`` picks the ImageNet model (default ``embed.backbone``).
    ``home`` / ``overrides`` ("section.field": value) select the data home and settings.
    ``embed_run_id``: the photos were just embedded by that run (the nightly flow): skip embedding.
    """
    settings = Settings.load(home=home, overrides=overrides)
    label_run(settings)
    model_spec = f"imagenet:{backbone}" if backbone else None
    embed_run = embed_run_id or embed_images_task(settings, model_spec)
    run_id = denoise_task(settings, threshold, drop_rate, model_spec, embed_run_id=embed_run)
    denoise_report_task(settings, run_id)
    served = served_trained_model_task(settings) if settings.denoise.second_pass else None
    if served:
        run_id = second_pass_task(settings, served, run_id)
    refresh_snapshot_task(settings)
    return run_id
