"""Embedding task: streamed, deterministic, resumable, incremental, shared pictures embedded once."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from embedding.vectors import embed_images, load_embeddings
from models.embedder_spec import load_embedder
from photos.transforms import preprocess_path
from warehouse import open_warehouse

MODEL_ID = "imagenet:efficientnet_lite0@57934424:gem3:128px"


def _distinct_ok_sha1(wh, image_ids=None) -> set[str]:
    rows = wh.query("SELECT image_id, sha1 FROM images_current WHERE status = 'ok'").to_pylist()
    return {r["sha1"] for r in rows if image_ids is None or r["image_id"] in image_ids}


def test_embeddings_cover_every_photo_and_match_a_direct_forward(embedded_settings):
    wh = open_warehouse(embedded_settings)
    rows = wh.query("SELECT sha1, model_id, dim, len(vector) AS n FROM embeddings").to_pylist()
    assert {r["model_id"] for r in rows} == {MODEL_ID}
    assert sorted(r["sha1"] for r in rows) == sorted(_distinct_ok_sha1(wh))  # one row per picture
    assert all(r["dim"] == r["n"] == 1280 for r in rows)
    ids, vectors = load_embeddings(wh, MODEL_ID)
    n_ok = wh.query("SELECT count(*) AS n FROM images_current WHERE status = 'ok'").to_pylist()[0]["n"]
    assert len(ids) == n_ok == vectors.shape[0] and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Deterministic: the stored vectors equal a fresh forward pass of the same files.
    embedder = load_embedder(None, embedded_settings)
    paths = {r["image_id"]: r["path"] for r in wh.query("SELECT image_id, path FROM images_current").to_pylist()}
    some = ids[:3]
    x = torch.stack([preprocess_path(embedded_settings.images_dir / paths[i], 128, embedder.mean, embedder.std)
                     for i in some])
    with torch.inference_mode():
        fresh = embedder(x).numpy()
    _, stored = load_embeddings(wh, MODEL_ID, some)
    assert np.allclose(stored, fresh, atol=1e-4)
    # Nothing new: a rerun embeds nothing.
    run_id = embed_images(embedded_settings)
    assert wh.query("SELECT message FROM runs WHERE run_id = ?", [run_id]).to_pylist()[0]["message"] == "nothing to embed"


def test_a_killed_run_resumes_where_it_stopped(ingested_settings, monkeypatch):
    import embedding.vectors as embed_module

    for key, value in {"embed.image_size": 96, "embed.batch_size": 4, "embed.commit_every": 4,
                       "embed.num_workers": 0}.items():
        ingested_settings.set(key, value)
    wh = open_warehouse(ingested_settings)
    subset = [r["image_id"] for r in wh.query(
        "SELECT image_id FROM images_current WHERE status = 'ok' ORDER BY image_id LIMIT 14").to_pylist()]
    real_batch, calls = embed_module.embed_batch, []

    def dies_on_third_batch(embedder, x):
        calls.append(len(x))
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return real_batch(embedder, x)

    monkeypatch.setattr(embed_module, "embed_batch", dies_on_third_batch)
    with pytest.raises(RuntimeError, match="power cut"):
        embed_images(ingested_settings, image_ids=subset)
    failed = wh.query("SELECT status FROM runs WHERE step = 'embed'").to_pylist()
    assert [r["status"] for r in failed] == ["failed"]
    first = wh.query("SELECT sha1 FROM embeddings").column("sha1").to_pylist()
    assert len(first) == 8  # two committed chunks survive the crash
    monkeypatch.setattr(embed_module, "embed_batch", real_batch)
    run_id = embed_images(ingested_settings, image_ids=subset)
    rows = wh.query("SELECT sha1, run_id FROM embeddings").to_pylist()
    assert sorted(r["sha1"] for r in rows) == sorted(_distinct_ok_sha1(wh, set(subset)))  # no duplicates
    assert sum(r["run_id"] == run_id for r in rows) == len(rows) - 8  # only the rest was embedded


def test_a_picture_shared_by_two_products_is_embedded_once(tmp_path, synthetic_catalog, small_settings):
    from tasks.ingest import ingest_catalog

    catalog = tmp_path / "cat"
    for product in ("a", "b"):
        (catalog / product).mkdir(parents=True)
    shutil.copy(synthetic_catalog / "p00000" / "00.jpg", catalog / "a" / "00.jpg")
    shutil.copy(synthetic_catalog / "p00001" / "00.jpg", catalog / "a" / "01.jpg")
    shutil.copy(synthetic_catalog / "p00001" / "00.jpg", catalog / "b" / "00.jpg")  # same bytes
    ingest_catalog(small_settings, catalog, name="dup")
    timings: dict = {}
    run_id = embed_images(small_settings, timings=timings)
    wh = open_warehouse(small_settings)
    assert wh.query("SELECT count(*) AS n FROM embeddings").to_pylist()[0]["n"] == 2
    # the step says its start-up (to the first batch) apart from its steady rate, in the run's message too
    assert timings["photos"] == 2 and timings["start_s"] > 0 and timings["steady_img_per_s"] >= 0
    message = wh.query("SELECT message FROM runs WHERE run_id = ?", [run_id]).to_pylist()[0]["message"]
    assert message.startswith("2 photos embedded") and "first batch after" in message
    ids, vectors = load_embeddings(wh, MODEL_ID)
    assert ids == ["dup:a#0", "dup:a#1", "dup:b#0"]
    assert np.array_equal(vectors[1], vectors[2]) and not np.array_equal(vectors[0], vectors[1])
    with pytest.raises(Exception, match="no .* embedding"):
        load_embeddings(wh, "imagenet:resnet50@11ad3fa6:gem3", ["dup:a#0"])


def test_gpu_decode_path_applies_exif_orientation_like_the_cpu_path(tmp_path):
    """The nvjpeg path (run here with device=cpu: same code, torchvision's CPU JPEG decoder) sends an
    EXIF-rotated JPEG and a PNG through the catalog's CPU preprocessing, so every photo's tensor matches
    ``preprocess_path``; before, the rotated JPEG came out sideways (nvjpeg ignores EXIF)."""
    import torch
    from PIL import Image

    from embedding.vectors import decode_on_gpu
    from photos.loading import PhotoBytes
    from photos.transforms import preprocess_path

    base = Image.new("RGB", (120, 60), (200, 30, 30))
    base.paste((30, 30, 200), (0, 0, 40, 60))  # blue on the left: orientation matters
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displayed = rotate 270
    paths = {"upright.jpg": lambda p: base.save(p, quality=95),
             "rotated.jpg": lambda p: base.rotate(90, expand=True).save(p, quality=95, exif=exif.tobytes()),
             "photo.png": lambda p: base.save(p)}
    files = []
    for name, write in paths.items():
        write(tmp_path / name)
        files.append(tmp_path / name)
    items = [PhotoBytes(files)[i] for i in range(len(files))]
    assert [up for _, _, up in items] == [True, False, False]
    x, ok = decode_on_gpu([d for _, d, _ in items], torch.device("cpu"), 64, [0.5] * 3, [0.5] * 3,
                          [up for _, _, up in items])
    assert ok.all()
    for k, path in enumerate(files):
        expected = preprocess_path(path, 64, [0.5] * 3, [0.5] * 3)
        tol = 0.08 if k == 0 else 1e-5  # nvjpeg/libjpeg full decode vs PIL draft() on the upright JPEG
        assert (x[k] - expected).abs().mean() < tol, path.name


def test_a_full_imagenet_model_id_fixes_its_pooling_and_size(small_settings):
    """An index built at one size is searched at that size, whatever ``embed.image_size`` says now."""
    from core.errors import ShoesearchError

    default = load_embedder(None, small_settings)
    weights = default.model_id.split(":")[1]
    other = load_embedder(f"imagenet:{weights}:avg:40px", small_settings)
    assert (other.image_size, other.pool.tag) == (40, "avg") and other.model_id == f"imagenet:{weights}:avg:40px"
    assert default.image_size == small_settings.embed.image_size != 40
    for bad, message in ((f"imagenet:{weights}:max:40px", "unknown pooling"), (f"imagenet:{weights}:gem3:40", "bad input size")):
        with pytest.raises(ShoesearchError, match=message):
            load_embedder(bad, small_settings)
