"""Prefect flow ``nightly``: crawl -> embed new photos -> denoise (the ``denoise`` flow, as a subflow: its
second pass uses the served trained model) -> (re)train -> evaluate -> index -> gated switch -> analyst snapshot.
Training runs on a policy (``tasks.nightly.retrain_decision``: the catalog changed enough, or the model is old);
a night that does not train updates the current index with what changed and says why it did not train.

Over nights this is the chain denoise -> train -> re-denoise -> retrain: the denoise flow's second pass
re-judges, with the model that serves (switched in by an earlier night), the products it never trained on
(``tasks.denoise_second``); new products enter training judged by it, and the index holds its decisions.
Each pass is a ``denoise`` run with lineage (first-pass run, the model's train run, its embed run). A model
never re-judges photos before it has passed the switch gate.

Wiring only; the steps live in ``tasks/``. Training warm-starts from the model behind the current index, or the
newest trained model when the ImageNet descriptor serves (k-means only on a cold start). The index holds the
trained model's vectors unless the ImageNet descriptor scored a higher test Recall@1 in the same evaluation
(``schedule.baseline_gate``; ``tasks.gate.descriptor_to_serve``). The new index becomes current only if its model's test Recall@1 does
not drop below the current one's (``schedule.gate_tolerance``); a refusal is recorded in ``indexes``
and reported in the ``nightly`` artifact. Any failed step leaves the previous index serving, and the
next run resumes (crawl jobs resume, embedding is incremental, an unchanged split is reused so
training resumes from its checkpoints, finished training/evaluation is reused).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from core.settings import Settings
from flows import flow_settings, label_run, run_name
from flows.denoise import denoise_flow
from tasks.crawl import crawl_task
from tasks.embed import embed_images_task
from tasks.evaluate import evaluate_task
from tasks.gate import descriptor_to_serve_task, switch_index_task
from tasks.index import build_index_task, index_lock
from tasks.kmeans import kmeans_init_task
from tasks.nightly import (
    finished_evaluation_task,
    finished_train_task,
    report_nightly_task,
    retrain_decision_task,
    warm_start_model_task,
)
from tasks.snapshot import refresh_snapshot_task
from tasks.split import split_for_nightly_task
from tasks.train import model_id_of_run, train_model_task


@flow(name="nightly", log_prints=True, flow_run_name=run_name("nightly"))
def nightly(site: str | None = None, crawl: bool = True, home: str | None = None,
            overrides: dict[str, Any] | None = None) -> dict:
    """One nightly update; returns the outcome (status current/refused, ids of every step, summary)."""
    settings = Settings.load(home=home, overrides=overrides)
    label_run(settings)
    retry = {"retries": settings.schedule.task_retries, "retry_delay_seconds": settings.schedule.retry_delay_s}
    steps: dict[str, str | None] = {}
    steps["crawl"] = crawl_task.with_options(**retry)(settings, site=site) if crawl else None
    steps["embed"] = embed_images_task.with_options(**retry)(settings, None)
    steps["denoise"] = denoise_flow(**flow_settings(settings), embed_run_id=steps["embed"])
    decision = retrain_decision_task(settings)
    if not decision["train"]:  # index what changed with the model that serves; say why nothing trained
        with index_lock(settings):
            steps["index"] = build_index_task.with_options(**retry)(settings, decision["serve"])
            steps["switch"] = switch_index_task(settings, steps["index"])
        outcome = report_nightly_task(settings, steps, training=decision["reason"])
        refresh_snapshot_task(settings)
        return outcome
    steps["split"] = split_for_nightly_task(settings)
    warm = warm_start_model_task(settings)
    steps["train"] = finished_train_task(settings, steps["split"], warm)
    if steps["train"] is None:
        if warm is None:
            steps["kmeans"] = kmeans_init_task(settings, steps["split"])
        steps["train"] = train_model_task(settings, steps["split"], init_model_id=warm, kmeans_run_id=steps.get("kmeans"))
    model_id = model_id_of_run(settings, steps["train"])
    steps["evaluate"] = finished_evaluation_task(settings, model_id) or evaluate_task(settings, model_id)
    served = descriptor_to_serve_task(settings, steps["evaluate"], model_id)
    with index_lock(settings):  # another nightly's or a manual `index`'s build + switch waits (see index_lock)
        steps["index"] = build_index_task.with_options(**retry)(settings, served["model_spec"], steps["evaluate"])
        steps["switch"] = switch_index_task(settings, steps["index"])
    outcome = report_nightly_task(settings, steps, served["reason"], decision["reason"])
    refresh_snapshot_task(settings)
    return outcome
