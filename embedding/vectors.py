"""Embed the current product photos with an image model and store the vectors.

``embed_images`` streams the photos through a DataLoader in batches (never all in memory),
embeds each distinct picture (by content hash) once per model, and commits chunks as it goes:
a killed run keeps what it finished, and the next run (or a nightly run with new products)
only embeds pictures that the same ``model_id`` has not seen. ``load_embeddings`` maps vectors
back to every image id whose photo has that content hash.

On CUDA it uses pinned memory, bf16 autocast, channels_last and, for JPEGs, nvjpeg decoding on
the GPU (``embed.gpu_decode``); on the CPU, PIL decodes JPEGs at a reduced DCT scale.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import torch

from core.errors import ShoesearchError
from core.finite import require_finite
from core.progress import progress, run_logger
from embedding.embedders import embed_batch, model_id_of, open_embedder
from models.device import autocast, fast_input, on_device, pick_device
from photos.decoding import MAX_SCANS
from photos.loading import PhotoBytes, PhotoTensors, batches, is_upright_jpeg, make_loader
from photos.transforms import fit_square, preprocess_path
from warehouse import open_warehouse, start_run
from warehouse.models_table import find_model

log = logging.getLogger(__name__)

NOT_FINITE_HINT = "check the model's weights and the embed settings, e.g. embed.gem_p"

CURRENT_PHOTOS_SQL = """
    SELECT image_id, sha1, path, run_id FROM images_current
    WHERE status = 'ok' AND sha1 IS NOT NULL AND path IS NOT NULL
    ORDER BY image_id"""


def _collate_bytes(items):
    return [i for i, _, _ in items], [data for _, data, _ in items], [up for _, _, up in items]


def decode_on_gpu(datas: list[torch.Tensor], device: torch.device, size: int, mean, std,
                  upright: list[bool] | None = None, max_pixels: int = 40_000_000, max_scans: int = MAX_SCANS):
    """Raw photo bytes -> (normalised B x 3 x size x size on ``device``, ok mask). Upright JPEGs use nvjpeg;
    the others (EXIF-rotated, other formats) the catalog's CPU preprocessing, so orientation is applied."""
    from torchvision.io import ImageReadMode, decode_jpeg

    upright = upright if upright is not None else [is_upright_jpeg(d.numpy().tobytes(), max_scans) for d in datas]
    jpeg = [j for j, up in enumerate(upright) if up]
    decoded: dict[int, torch.Tensor] = {}
    if jpeg:
        try:
            for j, img in zip(jpeg, decode_jpeg([datas[j] for j in jpeg], mode=ImageReadMode.RGB, device=device)):
                decoded[j] = img
        except RuntimeError as exc:  # one bad JPEG fails the batch call: fall back per image below
            log.warning("batched GPU decode failed (%s); decoding one by one", exc)
    out, ok = [], []
    for j, data in enumerate(datas):
        img = decoded.get(j)
        if img is not None:
            out.append(fit_square(img, size, mean, std))
        else:
            try:
                out.append(preprocess_path(data.numpy().tobytes(), size, mean, std, max_pixels, max_scans).to(device))
            except Exception as exc:  # noqa: BLE001 - an unreadable photo is marked, as on the CPU path
                log.warning("cannot decode photo: %s", exc)
                out.append(None)
        ok.append(out[-1] is not None)
        if out[-1] is None:
            out[-1] = torch.zeros(3, size, size, device=device)
    return torch.stack(out), torch.tensor(ok)


def _loader(paths, embedder, settings, device: torch.device):
    cfg = settings.embed
    cuda = device.type == "cuda"
    gpu_decode = cuda and cfg.gpu_decode
    crawl = settings.crawl
    dataset = PhotoBytes(paths, crawl.max_image_scans) if gpu_decode else PhotoTensors(
        paths, embedder.image_size, embedder.mean, embedder.std, crawl.max_image_pixels, crawl.max_image_scans)
    loader = make_loader(dataset, cfg.batch_size, cfg.num_workers, device, pin_memory=cuda and not gpu_decode,
                         collate_fn=_collate_bytes if gpu_decode else None)
    return loader, gpu_decode


def _rows(image_ids: list[str], sha1s: list[str], vectors: np.ndarray, model_id: str) -> pa.Table:
    n, dim = vectors.shape
    flat = pa.array(vectors.astype(np.float32, copy=False).reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    return pa.table({
        "image_id": pa.array(image_ids, pa.string()), "sha1": pa.array(sha1s, pa.string()),
        "model_id": pa.array([model_id] * n, pa.string()), "dim": pa.array([dim] * n, pa.int32()),
        "vector": pa.ListArray.from_arrays(offsets, flat),
    })


def embed_images(settings, model_spec: str | None = None, image_ids: list[str] | None = None,
                 timings: dict | None = None) -> str:
    """Embed current ok photos not yet embedded by this model; returns the embed run id. The model is loaded
    only when there is a photo to embed (``model_id_of`` names it without its weights). ``timings``, when
    given, receives ``start_s`` (the step's start to its first batch embedded: model, loader workers),
    ``steady_img_per_s`` (the photos after the first batch over the time after it) and ``photos``."""
    started = time.perf_counter()
    wh = open_warehouse(settings)
    model_id = model_id_of(settings, model_spec)
    device = pick_device(settings.embed.device)
    photos = wh.query(CURRENT_PHOTOS_SQL).to_pylist()
    if image_ids is not None:
        wanted = set(image_ids)
        photos = [p for p in photos if p["image_id"] in wanted]
    written = {r["sha1"]: r["run_id"] for r in wh.query(  # which run wrote this model's vector of each picture
        "SELECT sha1, max(run_id) AS run_id FROM embeddings WHERE model_id = ? GROUP BY sha1", [model_id]).to_pylist()}
    todo: dict[str, dict] = {}
    for p in photos:  # one entry per distinct picture: a photo shared by products is embedded once
        if p["sha1"] not in written and p["sha1"] not in todo:
            todo[p["sha1"]] = p
    embedder = open_embedder(settings, model_spec) if todo else None
    model_run, source = _model_source(wh, model_id)
    params = {"model_spec": model_spec, "model_id": model_id, "model_run_id": model_run, "model_source": source,
              "device": str(device), "engine": settings.compute.engine,
              "image_size": embedder.image_size if embedder else None, "photos": len(photos), "to_embed": len(todo)}
    # Lineage: the photos' runs, the run that made the model (a trained one), and the earlier embed runs whose
    # vectors of these photos stand (so an index built on this run names the runs that wrote its vectors).
    reused = {written[p["sha1"]] for p in photos if p["sha1"] in written}
    inputs = sorted({p["run_id"] for p in photos} | reused) + ([model_run] if model_run else [])
    with start_run(wh, step="embed", params=params, inputs=inputs) as run:
        run.message = _embed_pending(run, list(todo.values()), embedder, model_spec, settings, device, timings,
                                     started)
    run_logger("embed").info("embed %s with %s (%s): %s; %d photos already embedded by %d earlier run(s)",
                             run.run_id, model_id, source, run.message, sum(p["sha1"] in written for p in photos),
                             len(reused))
    return run.run_id


def _embed_pending(run, todo: list[dict], embedder, spec: str | None, settings, device: torch.device,
                   timings: dict | None = None, started: float | None = None) -> str:
    """Embed ``todo`` photos in batches on ``compute.engine``, committing every ``embed.commit_every``; returns a
    summary (start-up and steady rate apart). Both engines give (todo positions, ok flags, vectors of the ok
    photos) per batch."""
    if not todo:
        return "nothing to embed"
    if settings.compute.engine == "ray":
        from embedding.ray_engine import ray_batches

        stream = ray_batches(todo, spec, settings, (embedder.image_size, embedder.mean, embedder.std))
    else:
        stream = _local_batches(todo, embedder, settings, device)
    pending: list[tuple[str, str, np.ndarray]] = []
    embedded = unreadable = 0
    started = time.perf_counter() if started is None else started
    first: tuple[float, int] | None = None  # (when, photos) at the first batch: start-up is paid before it
    with progress(f"embed ({_short(embedder.model_id)})", len(todo), "photos") as bar:
        for rows, ok, vectors in stream:
            require_finite(f"embed: {embedder.model_id} vectors of {len(vectors)} photos", vectors, NOT_FINITE_HINT)
            for i, vec in zip(np.asarray(rows)[ok], vectors):
                pending.append((todo[i]["image_id"], todo[i]["sha1"], vec))
            embedded += int(ok.sum())
            unreadable += int((~ok).sum())
            first = first or (time.perf_counter(), len(rows))
            bar.advance(len(rows))
            if len(pending) >= settings.embed.commit_every:
                _commit(run, pending, embedder.model_id)
                pending = []
        _commit(run, pending, embedder.model_id)
    end = time.perf_counter()
    start_s = first[0] - started if first else end - started
    steady = (len(todo) - first[1]) / (end - first[0]) if first and end > first[0] else 0.0
    if timings is not None:
        timings.update(start_s=start_s, steady_img_per_s=steady, photos=len(todo))
    return (f"{embedded} photos embedded ({embedded / max(end - started, 1e-9):.1f} img/s; first batch after "
            f"{start_s:.1f} s, then {steady:.1f} img/s), {unreadable} unreadable")


def _model_source(wh, model_id: str) -> tuple[str | None, str]:
    """(the run that made the model, how the run names it): a trained model's ``train`` run, or none for an
    ImageNet backbone (pretrained weights: no run of ours made them)."""
    if model_id.startswith("imagenet:"):
        return None, "ImageNet-pretrained backbone, no training run"
    row = find_model(wh, model_id)
    if row is None:
        return None, "model not in the models table"
    return row["run_id"], f"{row['kind']} model made by run {row['run_id']}"


def _short(model_id: str) -> str:
    """The model as the bar's label names it: ``imagenet`` or ``trained`` (the full id is in the run)."""
    return "imagenet" if model_id.startswith("imagenet:") else "trained"


def _local_batches(todo: list[dict], embedder, settings, device: torch.device):
    """The local engine: DataLoader workers decode (or nvjpeg on the GPU), this process runs the model."""
    embedder = on_device(embedder, device)
    loader, gpu_decode = _loader([settings.images_dir / p["path"] for p in todo], embedder, settings, device)
    for batch in batches(loader):
        if gpu_decode:
            index, datas, upright = batch
            x, ok = decode_on_gpu(datas, device, embedder.image_size, embedder.mean, embedder.std, upright,
                                  settings.crawl.max_image_pixels, settings.crawl.max_image_scans)
        else:
            index, x, ok = batch
        x = fast_input(x, device)
        with torch.inference_mode(), autocast(device):
            vectors = embed_batch(embedder, x[ok.to(x.device)])
        yield torch.as_tensor(index).tolist(), ok.cpu().numpy().astype(bool), vectors


def _commit(run, pending, model_id: str) -> None:
    if pending:
        ids, sha1s, vecs = zip(*pending)
        run.commit_chunk("embeddings", _rows(list(ids), list(sha1s), np.stack(vecs), model_id))


def load_embeddings(wh, model_id: str, image_ids: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(image ids, N x D float32) of current ok photos embedded by ``model_id``, sorted by image id,
    or in the order of ``image_ids`` (every one must be embedded)."""
    table = wh.query(
        """WITH e AS (
               SELECT sha1, vector, row_number() OVER (PARTITION BY sha1 ORDER BY run_id DESC) AS rn
               FROM embeddings WHERE model_id = ?)
           SELECT i.image_id, e.vector FROM images_current i JOIN e ON e.sha1 = i.sha1 AND e.rn = 1
           WHERE i.status = 'ok' ORDER BY i.image_id""",
        [model_id],
    )
    ids = table.column("image_id").to_pylist()
    vectors = _matrix(table.column("vector"))
    require_finite(f"stored {model_id} embeddings", vectors, "stored before embed checked its vectors")
    if image_ids is None:
        return ids, vectors
    row = {image_id: k for k, image_id in enumerate(ids)}
    missing = [i for i in image_ids if i not in row]
    if missing:
        raise ShoesearchError(
            f"{len(missing)} photo(s) have no {model_id} embedding (e.g. {', '.join(missing[:3])}): "
            "run `shoesearch embed` first")
    return list(image_ids), vectors[[row[i] for i in image_ids]]


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    if len(column) == 0:
        return np.zeros((0, 0), np.float32)
    arr = column.combine_chunks()
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(arr), -1)

