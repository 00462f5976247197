"""Issue 25 item 10: no step commits NaN or infinite vectors or metrics (``core.finite.require_finite``).

The NaNs come from real forwards: GeM at p = 1000 (a model id the settings' range for ``embed.gem_p`` does not
cover) overflows float32 on real EfficientNet features, and the L2 norm turns inf into NaN. Older warehouses may
hold such rows already: they are written through the warehouse's own commit path, as a run before the fix did.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.finite import NotFinite
from warehouse import open_warehouse, start_run

OVERFLOWING_MODEL = "imagenet::gem1000:128px"  # the installed ImageNet backbone, GeM p = 1000, 128 px photos


def _counts(wh, *tables: str) -> dict[str, int]:
    return {t: wh.query(f"SELECT count(*) AS n FROM {t}").column(0)[0].as_py() for t in tables}


def test_embed_refuses_non_finite_vectors_in_one_line_and_commits_none(ingested_settings, capsys):
    from shoesearch.cli import main

    wh = open_warehouse(ingested_settings)
    before = _counts(wh, "embeddings")
    rc = main(["--home", str(ingested_settings.home), "--set", "embed.batch_size=4", "--set", "embed.num_workers=0",
               "embed", "--model", OVERFLOWING_MODEL])  # the first batch fails: 4 photos embedded
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1, (out, err)
    assert err.startswith("shoesearch: error: embed: imagenet:") and ":gem1000:128px vectors of 4 photos: " in err
    assert "values are not finite (e.g. nan): refused before committing" in err
    assert _counts(wh, "embeddings") == before
    runs = wh.query("SELECT status, message FROM runs WHERE step = 'embed'").to_pylist()
    assert [r["status"] for r in runs] == ["failed"] and "not finite" in runs[0]["message"]


def test_denoise_never_reads_a_nan_vector_as_far(embedded_settings):
    """A NaN embedding stored by an older embed run: denoise used to drop that photo as ``far`` (NaN <= threshold
    is false) and commit; now it refuses, and denoise / denoise_current stay as they were."""
    from embedding.embedders import open_embedder
    from embedding.vectors import _rows
    from tasks.denoise import denoise

    wh = open_warehouse(embedded_settings)
    model_id = open_embedder(embedded_settings).model_id
    photo = wh.query("SELECT image_id, sha1 FROM images_current WHERE status = 'ok' ORDER BY image_id LIMIT 1"
                     ).to_pylist()[0]
    dim = wh.query("SELECT first(dim) FROM embeddings WHERE model_id = ?", [model_id]).column(0)[0].as_py()
    with start_run(wh, step="embed", params={"model_id": model_id}) as run:  # what an unchecked run committed
        run.commit_chunk("embeddings", _rows([photo["image_id"]], [photo["sha1"]], np.full((1, dim), np.nan),
                                             model_id))
    before = _counts(wh, "denoise", "denoise_current")
    with pytest.raises(NotFinite, match=rf"stored {model_id} embeddings: {dim} of \d+ values are not finite"):
        denoise(embedded_settings)
    assert _counts(wh, "denoise", "denoise_current") == before
    assert wh.query("SELECT count(*) FROM runs WHERE step = 'denoise'").column(0)[0].as_py() == 0


def test_evaluation_refuses_nan_descriptors_of_a_real_model(ingested_settings):
    """``score`` is what evaluate and the gate's re-scoring share: NaN descriptors never become a Recall@1."""
    from models.device import pick_device
    from models.embedder_spec import load_embedder
    from tasks.split import make_split
    from training.data import load_photos
    from training.evaluation import score

    wh = open_warehouse(ingested_settings)
    test = load_photos(wh, make_split(ingested_settings), "raw", ("test",))
    embedder = load_embedder(OVERFLOWING_MODEL, ingested_settings)
    with pytest.raises(NotFinite, match=rf":gem1000:128px descriptors of {len(test)} test photos: \d+ of \d+ values"):
        score(embedder, ingested_settings, test, "all", pick_device("cpu"))


def test_gate_refuses_a_nan_tolerance_and_scores_nan_as_missing(settings):
    """``schedule.gate_tolerance=nan`` once accepted 0.05 against 0.90 (``new < old - nan`` is false)."""
    from tasks.gate import gate_decision
    from warehouse.models_table import model_record

    wh = open_warehouse(settings)
    with start_run(wh, step="train") as run:
        run.write("models", [model_record(name, "netvlad", "efficientnet_lite0", f"models/{name}.pt", None, {},
                                          {"split": "test", "recall_at_1": r1})
                             for name, r1 in (("old", 0.90), ("worse", 0.05), ("broken", math.nan))])
    current = {"model_id": "old", "run_id": run.run_id}
    assert gate_decision(wh, "worse", current, 0.0)[0] is False
    with pytest.raises(NotFinite, match="schedule.gate_tolerance: 1 of 1 values are not finite"):
        gate_decision(wh, "worse", current, math.nan)
    ok, reason = gate_decision(wh, "broken", current, 0.0)
    assert ok is False and reason.startswith("refused: new model broken has no test Recall@1")
