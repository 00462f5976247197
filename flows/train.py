"""Prefect flow ``train``: split -> k-means -> train -> evaluate (wiring only)."""

from __future__ import annotations

from prefect import flow

from flows import label_run, run_name
from tasks.evaluate import evaluate_task
from tasks.kmeans import kmeans_init_task
from tasks.split import make_split_task
from tasks.train import model_id_of_run, train_model_task


@flow(name="train", flow_run_name=run_name("train"))
def train_flow(home: str | None = None, overrides: dict | None = None, photos: str = "auto") -> dict:
    """Returns the run ids of each step and the trained model id."""
    from core.settings import Settings

    settings = Settings.load(home=home, overrides=overrides)
    label_run(settings)
    split_run = make_split_task(settings)
    kmeans_run = kmeans_init_task(settings, split_run, photos)
    train_run = train_model_task(settings, split_run, kmeans_run_id=kmeans_run, photos=photos)
    model_id = model_id_of_run(settings, train_run)
    eval_run = evaluate_task(settings, model_id)
    return {"split": split_run, "kmeans": kmeans_run, "train": train_run, "model_id": model_id, "evaluate": eval_run}
