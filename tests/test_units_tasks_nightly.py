"""Unit tests of the nightly flow's small steps (tasks/nightly.py) on a fresh warehouse whose ``runs``,
``models``, ``evaluations`` and ``indexes`` rows are written here with ``start_run``, as the steps write them."""

from __future__ import annotations

import pytest

BACKBONE = "efficientnet_lite0"
SPLIT = "split-20260101T000000-aaaaaa"
OTHER_SPLIT = "split-20260102T000000-bbbbbb"


def add_model(wh, step: str, model_id: str, kind: str, parent: str | None = None, inputs=(),
              fail: bool = False) -> str:
    """A ``kmeans``/``train`` run that wrote one ``models`` row; ``fail``: the run failed after writing it."""
    from warehouse import start_run
    from warehouse.models_table import model_record

    try:
        with start_run(wh, step=step, params={}, inputs=list(inputs)) as run:
            run.write("models", [model_record(model_id, kind, BACKBONE, f"models/{model_id}.pt", parent,
                                              {"split_run_id": inputs[0] if inputs else None})])
            if fail:
                raise RuntimeError("killed")
    except RuntimeError:
        pass
    return run.run_id


def add_evaluation(wh, model_id: str, variants=("imagenet", "kmeans_init", "trained"), recall: float = 0.5) -> str:
    from warehouse import start_run

    rows = [{"model_id": model_id, "variant": v, "photos": "raw", "protocol": "all-vs-all", "split": "test",
             "queries": 10, "recall_at_1": recall, "recall_at_5": 0.8, "recall_at_10": 0.9, "mean_ap": 0.4}
            for v in variants]
    with start_run(wh, step="evaluate", params={"model_id": model_id}) as run:
        run.write("evaluations", rows)
    return run.run_id


def add_index(wh, model_id: str, status: str, note: str = "") -> tuple[str, str]:
    """A ``switch`` run that wrote an ``indexes`` row; returns (run id, index id)."""
    from datetime import datetime, timezone

    from warehouse import start_run

    with start_run(wh, step="switch", params={}) as run:
        index_id = f"index-{run.run_id}"
        run.write("indexes", [{"index_id": index_id, "model_id": model_id, "kind": "flat_ip",
                               "path": f"indexes/{index_id}", "n_vectors": 96, "dim": 64, "recall_vs_exact": 1.0,
                               "status": status, "note": note, "created_at": datetime.now(timezone.utc)}])
    return run.run_id, index_id


def test_warm_start_is_the_newest_successful_trained_model_when_no_trained_model_serves(settings, wh):
    from tasks.nightly import warm_start_model

    assert warm_start_model(settings) is None  # a cold start
    add_model(wh, "kmeans", "kmeans-a", "kmeans", inputs=[SPLIT])
    assert warm_start_model(settings) is None  # a k-means init is no trained model
    add_model(wh, "train", "netvlad-old", "netvlad", inputs=[SPLIT])
    add_model(wh, "train", "netvlad-new", "netvlad", inputs=[SPLIT])
    assert warm_start_model(settings) == "netvlad-new"
    add_index(wh, "imagenet:efficientnet_lite0@abc", "current")  # the ImageNet descriptor serves
    assert warm_start_model(settings) == "netvlad-new"


def test_warm_start_is_the_trained_model_behind_the_current_index(settings, wh):
    from tasks.nightly import warm_start_model

    add_model(wh, "train", "netvlad-old", "netvlad", inputs=[SPLIT])
    add_model(wh, "train", "netvlad-new", "netvlad", inputs=[SPLIT])
    add_index(wh, "netvlad-old", "current")
    add_index(wh, "netvlad-new", "refused")  # refused by the gate: not served
    assert warm_start_model(settings) == "netvlad-old"


def test_finished_train_is_reused_for_the_same_split_and_parent(settings, wh):
    from tasks.nightly import finished_train

    kmeans_run = add_model(wh, "kmeans", "kmeans-a", "kmeans", inputs=[SPLIT])
    add_model(wh, "train", "netvlad-failed", "netvlad", parent="kmeans-a", inputs=[SPLIT], fail=True)
    assert finished_train(settings, SPLIT, None) is None  # a failed run is never reused
    cold = add_model(wh, "train", "netvlad-cold", "netvlad", parent="kmeans-a", inputs=[SPLIT, kmeans_run])
    assert finished_train(settings, SPLIT, None) == cold  # a cold start from k-means
    assert finished_train(settings, SPLIT, "netvlad-cold") == cold  # the parent was made on this split
    assert finished_train(settings, SPLIT, "netvlad-elsewhere") is None
    assert finished_train(settings, OTHER_SPLIT, None) is None
    warm = add_model(wh, "train", "netvlad-warm", "netvlad", parent="netvlad-cold", inputs=[SPLIT])
    assert finished_train(settings, SPLIT, "netvlad-cold") == warm  # the newest run from that parent


def test_finished_evaluation_is_the_newest_one_of_the_trained_model(settings, wh):
    from tasks.nightly import finished_evaluation

    assert finished_evaluation(settings, "netvlad-a") is None
    add_evaluation(wh, "netvlad-a", variants=("imagenet", "kmeans_init"))  # the trained model not scored
    assert finished_evaluation(settings, "netvlad-a") is None
    first = add_evaluation(wh, "netvlad-a")
    assert finished_evaluation(settings, "netvlad-a") == first
    newer = add_evaluation(wh, "netvlad-a")
    assert finished_evaluation(settings, "netvlad-a") == newer
    assert finished_evaluation(settings, "netvlad-b") is None


@pytest.fixture
def published(monkeypatch):
    """The nightly artifact calls, captured (outside a flow Prefect would start a server to take them)."""
    import tasks.nightly

    calls = []
    monkeypatch.setattr(tasks.nightly, "create_markdown_artifact", lambda **kw: calls.append(kw))
    return calls


def test_report_names_the_decision_the_scores_and_every_step(settings, wh, published):
    from tasks.nightly import report_nightly

    switch, index_id = add_index(wh, "netvlad-a", "current", note="recall 0.700 >= 0.650")
    evaluate = add_evaluation(wh, "netvlad-a", recall=0.7)
    steps = {"crawl": None, "split": SPLIT, "evaluate": evaluate, "switch": switch}
    outcome = report_nightly(settings, steps, served="trained model netvlad-a")
    assert (outcome["status"], outcome["index_id"], outcome["model_id"]) == ("current", index_id, "netvlad-a")
    assert outcome["note"] == "recall 0.700 >= 0.650" and outcome["steps"] == steps
    assert [e["variant"] for e in outcome["evaluations"]] == ["imagenet", "kmeans_init", "trained"]
    summary = outcome["summary"]
    assert summary.startswith(f"# Nightly: index {index_id} CURRENT")
    assert "served: trained model netvlad-a" in summary and "| trained | raw | 0.700 | 0.800 | 0.900 | 0.400 |" in summary
    assert f"| switch | {switch} |" in summary and "| crawl |" not in summary  # steps that did not run: left out
    (artifact,) = published
    assert artifact["key"] == "nightly" and artifact["markdown"] == summary
    assert artifact["description"] == "nightly: current"


def test_report_of_a_refused_index_still_returns_when_publishing_fails(settings, wh, monkeypatch):
    import tasks.nightly

    def unreachable(**kw):
        raise RuntimeError("no Prefect API")

    monkeypatch.setattr(tasks.nightly, "create_markdown_artifact", unreachable)
    switch, _ = add_index(wh, "netvlad-b", "refused", note="recall dropped")
    outcome = tasks.nightly.report_nightly(settings, {"evaluate": add_evaluation(wh, "netvlad-b"), "switch": switch})
    assert outcome["status"] == "refused" and "REFUSED" in outcome["summary"] and outcome["served"] == ""
    assert "served:" not in outcome["summary"]


def test_the_nightly_steps_are_prefect_tasks_that_never_cache():
    from prefect.cache_policies import NO_CACHE
    from prefect.tasks import Task

    from tasks import nightly

    for name in ("warm_start_model", "finished_train", "finished_evaluation", "report_nightly"):
        task = getattr(nightly, f"{name}_task")
        assert isinstance(task, Task) and task.fn is getattr(nightly, name)
        assert task.cache_policy is NO_CACHE  # a reused run is looked up afresh each night


def test_the_nightly_ends_with_a_brief_that_reads_plainly(settings, wh, published):
    """The summary the command prints: what was crawled, how training went and why it stopped, which descriptor
    serves and why, the index's size, and the first index said as such, not as "(no current index)"."""
    from tasks.nightly import report_nightly
    from warehouse import start_run

    with start_run(wh, step="train", params={}) as run:
        run.commit_chunk("train_metrics", [{"model_id": "netvlad-a", "epoch": e, "loss": 0.1, "val_recall_at_1": 0.5,
                                            "val_recall_at_5": 0.6, "images_per_s": 10.0, "seconds": 1.0}
                                           for e in (1, 2, 3)])
        run.message = "stopped early at epoch 3: no gain for 2 epochs (best val R@1 0.500); model netvlad-a: ..."
    switch, index_id = add_index(wh, "netvlad-a", "current", note="no current index")
    steps = {"crawl": None, "train": run.run_id, "evaluate": add_evaluation(wh, "netvlad-a"), "switch": switch}
    outcome = report_nightly(settings, steps, served="trained model: test Recall@1 0.7 > ImageNet 0.6",
                             training="no index serves yet")
    brief = outcome["brief"]
    assert brief[0] == "crawl: skipped (no crawl tonight)"
    assert brief[1] == "training: 3 epochs; stopped early at epoch 3: no gain for 2 epochs (best val R@1 0.500); model netvlad-a: ..."
    assert brief[2] == "served descriptor: trained model: test Recall@1 0.7 > ImageNet 0.6"
    assert brief[3] == (f"index: 96 photos (flat_ip, recall vs exact 1.000); index {index_id} now serves: the first "
                        "index of this home, nothing to compare it with")
    assert "no current index" not in "\n".join(brief)
    assert "## Summary" in outcome["summary"] and f"- {brief[3]}" in outcome["summary"]
    refused, refused_id = add_index(wh, "netvlad-b", "refused", note="refused: recall dropped")
    brief = report_nightly(settings, {"switch": refused})["brief"]
    assert brief[-1].endswith(f"index {refused_id} was not switched in (refused: recall dropped); the previous "
                              "index keeps serving")
