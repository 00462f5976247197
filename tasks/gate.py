"""Which descriptor to serve, and the switch step with its gate: a built index becomes current only when its
model is not worse.

Before the nightly builds its index, :func:`descriptor_to_serve` picks the trained model or, when the
off-the-shelf ImageNet descriptor scored better on the same test photos, that descriptor (a small catalog can
leave a trained model behind it: docs/training.md and bench/REPORT.md "Retrieval quality").

The gate compares the test Recall@1 of the index's model with the current index's model on the same
test photos; a refusal is recorded as an ``indexes`` row with status ``refused`` and the previous index
keeps serving. The pointer and the directory format are ``index.store``'s.
"""

from __future__ import annotations

import math

import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from core.errors import ShoesearchError
from core.finite import require_finite
from embedding.embedders import open_embedder
from index.store import INDEX_FILE, MAPPING_FILE, current_index_row, index_row, prune_indexes, write_pointer
from warehouse import open_warehouse, start_run
from warehouse.models_table import test_recall, test_split
from warehouse.runs import now


def recall_on_split(settings, model_id: str, split_run_id: str) -> float:
    """Test Recall@1 of ``model_id`` (a trained model or the ImageNet descriptor) on the test photos of
    ``split_run_id``, each photo querying all the others (as ``evaluate`` scores them)."""
    from models.device import pick_device
    from training.data import load_photos
    from training.evaluation import score

    wh = open_warehouse(settings)
    device = pick_device(settings.train.device)
    embedder = open_embedder(settings, model_id)
    if hasattr(embedder, "to"):
        embedder.to(device)
    test = load_photos(wh, split_run_id, "auto", ("test",))
    return float(score(embedder, settings, test, "all", device)["recall_at_1"])


def gate_decision(wh, new_model_id: str, current: dict | None, tolerance: float,
                  settings=None) -> tuple[bool, str]:
    """Whether a new model may replace the current index's model, and why.

    Both models are compared on the same test photos: when the current model was scored on another
    split (the catalog grew), it is re-scored on the new model's test split (needs ``settings``).
    A missing or NaN Recall@1 of the new model is a refusal; a NaN tolerance is an error (it would accept any).
    """
    require_finite("schedule.gate_tolerance", tolerance, "a NaN tolerance would let any model through")
    if current is None:
        return True, "no current index"
    if current["model_id"] == new_model_id:
        return True, "same model as the current index"
    old = test_recall(wh, current["model_id"])
    new = test_recall(wh, new_model_id)
    new_split, old_split = test_split(wh, new_model_id), test_split(wh, current["model_id"])
    if settings is not None and new_split and old_split != new_split:
        old = recall_on_split(settings, current["model_id"], new_split)
    old, new = (v if v is not None and math.isfinite(v) else None for v in (old, new))  # NaN: no score
    if old is None:
        return True, f"current model {current['model_id']} has no test Recall@1; new: {new}"
    if new is None:
        return False, f"refused: new model {new_model_id} has no test Recall@1 (current: {old:.4f})"
    verdict = f"test Recall@1 new {new:.4f} vs current {old:.4f} on the same test photos (tolerance {tolerance})"
    if new < old - tolerance:
        return False, "refused: " + verdict
    return True, "accepted: " + verdict


def descriptor_to_serve(settings, evaluate_run_id: str, model_id: str) -> dict:
    """Which descriptor the nightly indexes: the trained model, unless the off-the-shelf ImageNet descriptor of
    its backbone scored a higher test Recall@1 in the same evaluation (same test photos) and
    ``schedule.baseline_gate`` is on. Returns ``{"model_spec", "evaluate_run_id", "reason"}``."""
    wh = open_warehouse(settings)
    rows = {r["variant"]: r for r in wh.query(
        "SELECT variant, model_id, recall_at_1 FROM evaluations WHERE run_id = ? AND split = 'test'",
        [evaluate_run_id]).to_pylist()}
    trained, baseline = rows.get("trained"), rows.get("imagenet")
    if trained is None or trained["model_id"] != model_id:
        raise ShoesearchError(f"evaluation {evaluate_run_id} did not score model {model_id}")
    choice = {"model_spec": model_id, "evaluate_run_id": evaluate_run_id}
    if not settings.schedule.baseline_gate or baseline is None or baseline["model_id"] is None:
        return {**choice, "reason": "trained model (no ImageNet comparison)"}
    verdict = (f"test Recall@1 trained {trained['recall_at_1']:.4f} vs ImageNet {baseline['recall_at_1']:.4f} "
               "on the same test photos")
    if trained["recall_at_1"] >= baseline["recall_at_1"]:
        return {**choice, "reason": f"trained model: {verdict}"}
    print(f"serving the ImageNet descriptor, not {model_id}: {verdict}", flush=True)
    return {**choice, "model_spec": baseline["model_id"], "reason": f"ImageNet descriptor: {verdict}"}


def switch_index(settings, index_id: str, gate: bool = True) -> str:
    """Make a built index current (``indexes`` row + ``CURRENT`` pointer), unless the gate refuses it.

    The gate compares the test Recall@1 of the index's model with the current index's model; a
    refusal is recorded as an ``indexes`` row with status ``refused`` and the previous index keeps
    serving. Returns the run id of this switch step.
    """
    import faiss

    wh = open_warehouse(settings)
    built = index_row(wh, index_id, "built")
    current = current_index_row(wh)
    ok, reason = gate_decision(wh, built["model_id"], current, settings.schedule.gate_tolerance, settings) if gate \
        else (True, "gate bypassed")
    inputs = [built["run_id"], current["run_id"] if current else None]
    with start_run(wh, step="switch", params={"index_id": index_id, "gate": gate}, inputs=inputs) as run:
        if ok:
            index = faiss.read_index(str(settings.home / built["path"] / INDEX_FILE))  # loads: not half-built
            rows = pq.ParquetFile(settings.home / built["path"] / MAPPING_FILE).metadata.num_rows  # + removed rows
            if index.ntotal != rows or rows < built["n_vectors"]:
                raise ShoesearchError(f"index {index_id} holds {index.ntotal} vectors for {rows} mapping rows, "
                                      f"expected {built['n_vectors']} photos")
        status = "current" if ok else "refused"
        run.write("indexes", [{**{k: v for k, v in built.items() if k != "run_id"},
                               "status": status, "note": reason, "created_at": now()}])
        run.message = f"{status}: {reason}"
    if ok:
        write_pointer(settings, index_id)
        prune_indexes(settings, keep=settings.index.keep_indexes)
    print(f"index {index_id}: {status} ({reason})", flush=True)
    return run.run_id


switch_index_task = task(switch_index, name="switch-index", cache_policy=NO_CACHE)
descriptor_to_serve_task = task(descriptor_to_serve, name="descriptor-to-serve", cache_policy=NO_CACHE)
