"""Small steps of the nightly flow: reuse finished work, pick the warm-start model, report the outcome.

Resuming: a nightly run that failed part way leaves every finished step in the warehouse. The next run
reuses (``tasks.split.split_for_nightly``) the newest split when the product set is unchanged (so training
resumes from its per-epoch checkpoints, which are keyed by the split), reuses a finished training run with the same split and
parent model (or the one that made the warm-start model on this very split), and an evaluation of the same
model, instead of redoing them.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from core.progress import run_logger
from index.store import current_index_row, served_trained_model
from warehouse import open_warehouse
from warehouse.models_table import find_model, model_params, newest_model, trained_on_split
from warehouse.runs import now


def retrain_decision(settings) -> dict:
    """Whether tonight trains, and why: ``{"train": bool, "reason": str, "serve": spec to index when not}``.

    It trains when no index serves yet, there is no trained model, the model behind the current index (or the
    newest trained one, when the ImageNet descriptor serves) is older than ``schedule.retrain_after_days``, or
    the products changed by more than ``schedule.retrain_change`` (added + removed, as a share of the products
    its training split held). Otherwise the night indexes what changed with the model that serves."""
    cfg, wh = settings.schedule, open_warehouse(settings)
    current = current_index_row(wh)
    model = find_model(wh, served_trained_model(settings)) or newest_model(wh)
    if current is None or model is None:
        return {"train": True, "reason": "no index serves yet" if current is None else "no trained model yet"}
    days = (now() - model["created_at"]).total_seconds() / 86400
    if days > cfg.retrain_after_days:
        return {"train": True, "reason": f"model {model['model_id']} is {days:.1f} days old "
                                         f"(schedule.retrain_after_days {cfg.retrain_after_days:g})"}
    split = model_params(model).get("split_run_id")
    n = wh.query("""WITH now_p AS (SELECT DISTINCT product_id FROM images_current WHERE status = 'ok'),
                         split_p AS (SELECT product_id FROM splits WHERE run_id = ?)
                    SELECT (SELECT count(*) FROM split_p) AS n_split,
                           (SELECT count(*) FROM now_p WHERE product_id NOT IN (SELECT product_id FROM split_p)) AS n_new,
                           (SELECT count(*) FROM split_p WHERE product_id NOT IN (SELECT product_id FROM now_p)) AS n_gone""",
                 [split]).to_pylist()[0]
    change = (n["n_new"] + n["n_gone"]) / max(n["n_split"], 1)
    said = (f"{n['n_new']} products added, {n['n_gone']} removed since model {model['model_id']} was trained on "
            f"{n['n_split']} ({change:.0%}; schedule.retrain_change {cfg.retrain_change:g})")
    if change > cfg.retrain_change:
        return {"train": True, "reason": said}
    return {"train": False, "serve": current["model_id"],
            "reason": f"no training: {said}, model {days:.1f} days old; the index is updated with what changed"}


def warm_start_model(settings) -> str | None:
    """The trained model behind the current index, else (the ImageNet descriptor serves, or no index yet) the
    newest trained model; None for a cold start."""
    served = served_trained_model(settings)
    if served:
        return served
    wh = open_warehouse(settings)
    newest = newest_model(wh)
    return newest["model_id"] if newest else None


def finished_train(settings, split_run_id: str, parent_model_id: str | None) -> str | None:
    """A successful train run on this split from this parent (a cold start from k-means when None), or the run
    that made the parent itself on this split (the products did not change since: nothing new to learn)."""
    wh = open_warehouse(settings)
    for row in trained_on_split(wh, split_run_id):
        parent = find_model(wh, row["parent_model_id"])
        cold = parent is not None and parent["kind"] == "kmeans"
        if (parent_model_id is None and cold) or parent_model_id in (row["parent_model_id"], row["model_id"]):
            return row["run_id"]
    return None


def finished_evaluation(settings, model_id: str) -> str | None:
    wh = open_warehouse(settings)
    rows = wh.query(
        """SELECT DISTINCT r.run_id, r.finished_at FROM runs r JOIN evaluations e ON e.run_id = r.run_id
           WHERE r.step = 'evaluate' AND r.status = 'success' AND e.model_id = ? AND e.variant = 'trained'
           ORDER BY r.finished_at DESC LIMIT 1""", [model_id]).to_pylist()
    return rows[0]["run_id"] if rows else None


def report_nightly(settings, steps: dict, served: str = "", training: str = "") -> dict:
    """Summarise the run (switch decision + evaluation table) as a Prefect artifact; returns it."""
    wh = open_warehouse(settings)
    decision = wh.query("SELECT * FROM indexes WHERE run_id = ?", [steps["switch"]]).to_pylist()[0]
    evals = wh.query(
        """SELECT variant, photos, model_id, queries, recall_at_1, recall_at_5, recall_at_10, mean_ap
           FROM evaluations WHERE run_id = ? ORDER BY variant""", [steps.get("evaluate")]).to_pylist()
    lines = [f"# Nightly: index {decision['index_id']} {decision['status'].upper()}", "",
             f"model `{decision['model_id']}` — {decision['note']}", "",
             *([f"training: {training}", ""] if training else []),
             *([f"served: {served}", ""] if served else []),
             f"index: {decision['kind']}, {decision['n_vectors']} photos, recall vs exact "
             f"{decision['recall_vs_exact']:.3f}", "",
             "| variant | photos | R@1 | R@5 | R@10 | mAP |", "|---|---|---|---|---|---|"]
    lines += [f"| {e['variant']} | {e['photos']} | {e['recall_at_1']:.3f} | {e['recall_at_5']:.3f} | "
              f"{e['recall_at_10']:.3f} | {e['mean_ap']:.3f} |" for e in evals]
    lines += ["", "| step | run id |", "|---|---|"] + [f"| {k} | {v} |" for k, v in steps.items() if v]
    brief = nightly_brief(wh, steps, decision, served, training)
    markdown = "\n".join(lines[:2] + ["## Summary", "", *[f"- {line}" for line in brief], ""] + lines[2:])
    try:
        create_markdown_artifact(key="nightly", markdown=markdown, description=f"nightly: {decision['status']}")
    except Exception:  # noqa: BLE001 - outside a flow run there is nowhere to publish; the summary still returns
        pass
    run_logger("nightly").info("nightly summary:\n%s", "\n".join(brief))
    return {"status": decision["status"], "index_id": decision["index_id"], "model_id": decision["model_id"],
            "note": decision["note"], "served": served, "training": training, "evaluations": evals, "steps": steps,
            "summary": markdown, "brief": brief, "flow_run_name": _flow_run_name()}


def _flow_run_name() -> str | None:
    """The Prefect flow run this report belongs to (``nightly-<home>-<date>``), None outside one."""
    try:
        from prefect.runtime import flow_run

        return flow_run.name
    except Exception:  # noqa: BLE001 - no run context
        return None


def switch_said(decision: dict) -> str:
    """The switch decision in plain words (the gate's note "no current index" read like an error)."""
    note, index = decision["note"] or "", decision["index_id"]
    if decision["status"] != "current":
        return f"index {index} was not switched in ({note}); the previous index keeps serving"
    if note == "no current index":
        return f"index {index} now serves: the first index of this home, nothing to compare it with"
    return f"index {index} now serves ({note})"


def nightly_brief(wh, steps: dict, decision: dict, served: str = "", training: str = "") -> list[str]:
    """The night in a few lines: products crawled, photos kept, how training went and why it stopped, which
    descriptor serves and why, the index's size and whether it was switched in."""
    ids = [v for v in steps.values() if v]
    runs = {r["run_id"]: r for r in wh.query(f"SELECT run_id, message FROM runs WHERE run_id IN "
                                             f"({', '.join('?' for _ in ids)})", ids).to_pylist()} if ids else {}
    out = []
    crawl = runs.get(steps.get("crawl") or "")
    out.append(f"crawl: {_first(crawl['message'])}" if crawl else "crawl: skipped (no crawl tonight)")
    kept = wh.query("SELECT count(*) FILTER (WHERE kept) AS kept, count(*) AS n, any_value(threshold) AS t "
                    "FROM denoise WHERE run_id = ?", [steps.get("denoise")]).to_pylist()[0]
    if kept["n"]:
        out.append(f"photos kept: {kept['kept']} of {kept['n']} (denoise threshold {kept['t']:.3f})")
    train = runs.get(steps.get("train") or "")
    if train:
        epochs = wh.query("SELECT count(*) FROM train_metrics WHERE run_id = ?", [train["run_id"]]).column(0)[0].as_py()
        why = _first(train["message"]) or f"run {train['run_id']}"
        out.append(f"training: {epochs} epoch{'s' if epochs != 1 else ''}; {why}")
    elif training:
        out.append(f"training: {training}")
    if served:
        out.append(f"served descriptor: {served}")
    out.append(f"index: {decision['n_vectors']} photos ({decision['kind']}, recall vs exact "
               f"{decision['recall_vs_exact']:.3f}); {switch_said(decision)}")
    return out


def _first(message: str | None) -> str:
    return (message or "").strip().splitlines()[0] if (message or "").strip() else ""


warm_start_model_task = task(warm_start_model, name="warm-start-model", cache_policy=NO_CACHE)
finished_train_task = task(finished_train, name="finished-train", cache_policy=NO_CACHE)
finished_evaluation_task = task(finished_evaluation, name="finished-evaluation", cache_policy=NO_CACHE)
report_nightly_task = task(report_nightly, name="report-nightly", cache_policy=NO_CACHE)
retrain_decision_task = task(retrain_decision, name="retrain-decision", cache_policy=NO_CACHE)
