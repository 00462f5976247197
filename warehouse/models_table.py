"""The owner of the ``models`` table: every read of a model row and the one schema of its metrics.

A row is written by the step that made the model (``kmeans`` or ``train``) with :func:`model_record`;
everything else reads through the functions here. ``metrics`` is one JSON object,
``{"split": "test", "recall_at_1": ..., "recall_at_5": ..., "recall_at_10": ..., "mean_ap": ..., ...}``,
the trained model's scores on its split's test photos (:func:`test_metrics` reads it back).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

from core.errors import ShoesearchError

KINDS = ("kmeans", "netvlad")
TRAINED = "netvlad"
LIST_HINT = "see `shoesearch sql \"SELECT model_id, kind, created_at FROM models\"`"


def model_record(model_id: str, kind: str, backbone: str, path: str, parent_model_id: str | None,
                 params: dict, metrics: dict | None = None) -> dict:
    """A ``models`` row (``run_id`` is added by the run that writes it); ``metrics`` as :func:`test_metrics`."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; kinds: {', '.join(KINDS)}")
    if metrics is not None and metrics.get("split") != "test":
        raise ValueError("model metrics are the test split's: {'split': 'test', 'recall_at_1': ...}")
    return {"model_id": model_id, "kind": kind, "backbone": backbone, "path": path, "parent_model_id": parent_model_id,
            "params": json.dumps(params, default=str), "metrics": json.dumps(metrics) if metrics is not None else None,
            "created_at": datetime.now(timezone.utc)}


def model_row(wh, model_id: str, kind: str | None = None) -> dict:
    """The newest row of ``model_id`` (of ``kind`` when given); a one-line error when there is none."""
    rows = wh.query("SELECT * FROM models WHERE model_id = ? AND (? IS NULL OR kind = ?) "
                    "ORDER BY created_at DESC LIMIT 1", [model_id, kind, kind]).to_pylist()
    if not rows:
        what = "trained model" if kind == TRAINED else f"{kind} model" if kind else "model"
        raise ShoesearchError(f"no {what} {model_id!r} in the models table ({LIST_HINT})")
    return rows[0]


def find_model(wh, model_id: str | None) -> dict | None:
    """The newest row of ``model_id``, or None (also for ``None``)."""
    if model_id is None:
        return None
    rows = wh.query("SELECT * FROM models WHERE model_id = ? ORDER BY created_at DESC LIMIT 1", [model_id]).to_pylist()
    return rows[0] if rows else None


def model_of_run(wh, run_id: str) -> dict:
    """The ``models`` row written by run ``run_id`` (kmeans or train)."""
    rows = wh.query("SELECT * FROM models WHERE run_id = ?", [run_id]).to_pylist()
    if not rows:
        raise ShoesearchError(f"run {run_id} recorded no model")
    return rows[0]


def newest_model(wh, kind: str = TRAINED) -> dict | None:
    """The newest model of ``kind`` whose run succeeded (what ``index`` and ``evaluate`` use by default)."""
    rows = wh.query("""SELECT m.* FROM models m JOIN runs r ON r.run_id = m.run_id
                       WHERE m.kind = ? AND r.status = 'success' ORDER BY m.created_at DESC LIMIT 1""",
                    [kind]).to_pylist()
    return rows[0] if rows else None


def model_params(row: dict | None) -> dict:
    return json.loads(row["params"] or "{}") if row else {}


def test_metrics(row: dict | None) -> dict | None:
    """A model row's test metrics (see module docstring), or None (k-means models, older rows)."""
    if not row or not row["metrics"]:
        return None
    metrics = json.loads(row["metrics"])
    return metrics if isinstance(metrics, dict) and metrics.get("split") == "test" else None


def test_recall(wh, model_id: str) -> float | None:
    """A model's test Recall@1: its own metrics, else its newest successful ``evaluations`` row; None if
    neither exists or the value is not a number."""
    metrics = test_metrics(find_model(wh, model_id))
    value = metrics.get("recall_at_1") if metrics else None
    if value is None:
        rows = wh.query("""SELECT e.recall_at_1 FROM evaluations e JOIN runs r ON r.run_id = e.run_id
                           WHERE e.model_id = ? AND e.split = 'test' AND r.status = 'success'
                           ORDER BY r.finished_at DESC, e.photos DESC LIMIT 1""", [model_id]).to_pylist()
        value = rows[0]["recall_at_1"] if rows else None
    if not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def test_split(wh, model_id: str) -> str | None:
    """The split run whose test photos :func:`test_recall` was measured on: a trained model's own split, else
    (the ImageNet descriptor) the split of its newest successful evaluation."""
    params = model_params(find_model(wh, model_id))
    if params.get("split_run_id"):
        return params["split_run_id"]
    rows = wh.query("""SELECT s.run_id FROM evaluations e JOIN runs r ON r.run_id = e.run_id
                       JOIN runs s ON list_contains(r.input_run_ids, s.run_id) AND s.step = 'split'
                       WHERE e.model_id = ? AND e.split = 'test' AND r.status = 'success'
                       ORDER BY r.finished_at DESC LIMIT 1""", [model_id]).to_pylist()
    return rows[0]["run_id"] if rows else None


def trained_on_split(wh, split_run_id: str) -> list[dict]:
    """Models of successful ``train`` runs that read split ``split_run_id``, newest first."""
    return wh.query("""SELECT m.*, r.finished_at FROM runs r JOIN models m ON m.run_id = r.run_id
                       WHERE r.step = 'train' AND r.status = 'success' AND list_contains(r.input_run_ids, ?)
                       ORDER BY r.finished_at DESC""", [split_run_id]).to_pylist()
