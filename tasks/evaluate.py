"""Retrieval evaluation and the ablation table (step ``evaluate``).

``evaluate(settings, model_id, protocol="all", compare=(), photos="auto") -> run_id`` measures
Recall@1/5/10 and mAP on the test split of the model's split run: (a) the off-the-shelf ImageNet
global descriptor of the same backbone, (b) NetVLAD at its k-means initialisation (untrained),
(c) the trained model, and the same (b)/(c) for every model in ``compare`` (e.g. one trained on raw
photos next to one trained on denoised photos). All variants see the same test photos.
The ImageNet row's ``model_id`` is that descriptor's id (``imagenet:...``), so the gate can compare it with
trained models. ``protocol="all"``: each photo queries all other test photos. ``"consumer-to-shop"``: user photos
(``images.domain = 'user'``) query shop photos only, as DeepFashion's consumer-to-shop benchmark.
Rows go to ``evaluations``; the table and a PNG go to ``reports/`` and to a Prefect artifact.
"""

from __future__ import annotations

from prefect import task

from core.errors import ShoesearchError
from core.files import atomic_path, atomic_write_text
from core.finite import require_finite
from models.device import pick_device
from models.netvlad_model import NetVLADEmbedder, load_checkpoint
from training.data import PhotoSet, load_photos
from training.evaluation import PROTOCOLS, score
from warehouse import open_warehouse, start_run
from warehouse.models_table import TRAINED, find_model, model_params, model_row


def variant_embedders(settings, wh, model_id: str, device):
    """(variant, photos, model_id, embedder factory) for (b) and (c) of one trained model."""
    row = model_row(wh, model_id, TRAINED)
    params = model_params(row)
    out = []
    parent = find_model(wh, row["parent_model_id"])
    if parent is not None and parent["kind"] == "kmeans":
        out.append(("kmeans_init", params["photos"], model_id,
                    lambda: NetVLADEmbedder(load_checkpoint(settings.home / params["init_path"])[0], model_id, device)))
    out.append(("trained", params["photos"], model_id,
                lambda: NetVLADEmbedder(load_checkpoint(settings.home / row["path"])[0], model_id, device)))
    return row, params, out


def _same_split(wh, a: str, b: str) -> bool:
    """Two split runs are the same split when they place every product identically (content, not run id)."""
    sql = """SELECT count(*) FROM ((SELECT product_id, split FROM splits WHERE run_id = ?
                                    EXCEPT SELECT product_id, split FROM splits WHERE run_id = ?)
                                   UNION ALL (SELECT product_id, split FROM splits WHERE run_id = ?
                                    EXCEPT SELECT product_id, split FROM splits WHERE run_id = ?))"""
    return a == b or wh.query(sql, [a, b, b, a]).column(0)[0].as_py() == 0


def evaluate(settings, model_id: str, protocol: str = "all", compare: tuple[str, ...] | list[str] = (),
             photos: str = "auto") -> str:
    """The ablation on the test split (see module docstring); returns the evaluate run id."""
    from models.embedder_spec import load_embedder

    if protocol not in PROTOCOLS:
        raise ShoesearchError(f"unknown protocol {protocol!r}; use {' or '.join(PROTOCOLS)}")
    wh = open_warehouse(settings)
    device = pick_device(settings.train.device)
    main_row, main_params, variants = variant_embedders(settings, wh, model_id, device)
    for other in compare:
        _, other_params, more = variant_embedders(settings, wh, other, device)
        if not _same_split(wh, other_params["split_run_id"], main_params["split_run_id"]):
            raise ShoesearchError(f"{other} was trained on another split than {model_id}: not comparable")
        variants += more
    test = load_photos(wh, main_params["split_run_id"], photos, ("test",))
    if protocol == "consumer-to-shop" and not any(d == "user" for d in test.domains):
        raise ShoesearchError("no test photo has domain 'user': consumer-to-shop needs labels.csv with a domain column")
    if len(test) < 2:
        raise ShoesearchError(f"the test split has {len(test)} photo(s): nothing to evaluate")
    baseline = ("imagenet", test.photos, None, lambda: load_embedder(f"imagenet:{main_row['backbone']}", settings))
    params = {"model_id": model_id, "compare": list(compare), "protocol": PROTOCOLS[protocol], "photos": test.photos}
    with start_run(wh, step="evaluate", params=params,
                   inputs=[main_params["split_run_id"], main_row["run_id"], test.denoise_run_id]) as run:
        rows = []
        for variant, trained_on, mid, build in [baseline, *variants]:
            embedder = build()
            if hasattr(embedder, "to"):
                embedder.to(device)
            metrics = score(embedder, settings, test, protocol, device)
            if not metrics["queries"]:  # recall_and_map's NaN for "nothing to score": not a result to store
                raise ShoesearchError(f"no test photo has another photo of its product to find ({protocol})")
            require_finite(f"evaluate: {variant} metrics", metrics)
            rows.append({"model_id": mid or embedder.model_id, "variant": variant, "photos": trained_on, "protocol": PROTOCOLS[protocol],
                         "split": "test", **metrics})
        run.write("evaluations", rows)
        write_report(settings, run.run_id, rows, test)
    return run.run_id


def report_markdown(rows: list[dict], test: PhotoSet) -> str:
    lines = [f"Test split: {len(set(test.product_ids))} products, {len(test)} photos ({test.photos}); "
             f"protocol {rows[0]['protocol']}.", "",
             "| variant | trained on | queries | Recall@1 | Recall@5 | Recall@10 | mAP |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        trained_on = "-" if r["variant"] == "imagenet" else r["photos"]
        lines.append(f"| {r['variant']} | {trained_on} | {r['queries']} | {r['recall_at_1']:.3f} | "
                     f"{r['recall_at_5']:.3f} | {r['recall_at_10']:.3f} | {r['mean_ap']:.3f} |")
    return "\n".join(lines) + "\n"


def report_chart(rows: list[dict]):
    """A matplotlib figure: one group of bars per metric, one bar per variant with its value on it; the legend
    sits beside the axes, where it covers no bar whatever the values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["Recall@1", "Recall@5", "Recall@10", "mAP"]
    keys = ["recall_at_1", "recall_at_5", "recall_at_10", "mean_ap"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        label = r["variant"] if r["variant"] == "imagenet" else f"{r['variant']} ({r['photos']})"
        bars = ax.bar([j + i * width for j in range(len(keys))], [r[k] for k in keys], width, label=label)
        if len(rows) <= 6:  # more bars than that are too thin to carry a number
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], names)
    ax.set_ylim(0, 1.1)  # room above a bar at 1.0 for its number
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("score (1 = perfect)")
    ax.set_title(f"Retrieval on the test split ({rows[0]['protocol']})")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    return fig


def write_report(settings, run_id: str, rows: list[dict], test: PhotoSet) -> str:
    """Markdown + PNG under ``reports/``, and a Prefect artifact when running inside a flow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    md = report_markdown(rows, test)
    out = settings.reports_dir / f"{run_id}"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = report_chart(rows)
    with atomic_path(out.with_suffix(".png")) as tmp:
        fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")  # "tight": the legend beside the axes is kept
    plt.close(fig)
    atomic_write_text(out.with_suffix(".md"), f"# Evaluation {run_id}\n\n{md}\n![plot]({out.name}.png)\n")
    _artifact(md, run_id)
    return md


def _artifact(markdown: str, run_id: str) -> None:
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() or TaskRunContext.get():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key="evaluation", description=f"evaluate run {run_id}")


evaluate_task = task(evaluate, name="evaluate")
