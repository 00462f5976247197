"""Photos for training and evaluation: which ones (SQL over the warehouse), decoding, embedding.

``photos`` chooses the photo set everywhere in the train area:

* ``"denoised"``: photos the latest denoise run kept (``denoise_current.kept``);
* ``"raw"``: every stored photo (``images_current.status = 'ok'``), noise included;
* ``"auto"``: denoised when a denoise run exists, raw otherwise (so training works on a catalog
  that was never denoised, and says so in the run parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from core.errors import ShoesearchError
from core.progress import progress
from models.device import forward
from models.netvlad_model import unwrap  # noqa: F401 - the loop modules take it from here
from photos.loading import PhotoDataset, batches, make_loader  # noqa: F401 - PhotoDataset is used from here
from warehouse import latest_run
from warehouse.views import DENOISE_OF_RUN

PHOTO_SETS = ("auto", "raw", "denoised")
# Short stage labels for the step's bar (``core.progress``), by what callers of ``embed_dataset`` pass.
STAGE_LABELS = {"frozen": "cache", "cache": "mine", "recall": "val", "evaluate": "eval",
                "k-means descriptors": "k-means", "whitening": "whiten"}


@dataclass
class PhotoSet:
    """Photos of one or more splits, in a fixed order (sorted by image id)."""

    image_ids: list[str]
    product_ids: list[str]
    paths: list[str]  # relative to settings.images_dir
    splits: list[str]
    domains: list[str | None]
    photos: str  # "raw" | "denoised": what was actually used
    denoise_run_id: str | None

    def __len__(self) -> int:
        return len(self.image_ids)

    def labels(self) -> torch.Tensor:
        """Integer product label per photo (same product, same label)."""
        index = {p: i for i, p in enumerate(dict.fromkeys(self.product_ids))}
        return torch.tensor([index[p] for p in self.product_ids])


def resolve_photos(wh, photos: str) -> tuple[str, str | None]:
    """``(raw|denoised, denoise run id or None)`` for a requested photo set."""
    if photos not in PHOTO_SETS:
        raise ShoesearchError(f"photos must be one of {', '.join(PHOTO_SETS)}, got {photos!r}")
    denoise_run = latest_run(wh, "denoise")
    if photos == "denoised" and denoise_run is None:
        raise ShoesearchError("no denoise run yet: run `shoesearch denoise` or use raw photos")
    if photos == "raw" or denoise_run is None:
        return "raw", None
    return "denoised", denoise_run


def load_photos(wh, split_run_id: str, photos: str = "auto", splits: tuple[str, ...] = ("train",)) -> PhotoSet:
    """The photos of ``splits`` (from split run ``split_run_id``) in the requested photo set."""
    used, denoise_run = resolve_photos(wh, photos)
    # The denoise run resolve_photos read, not denoise_current again: one committing meanwhile is not mixed in.
    kept = f"JOIN {DENOISE_OF_RUN} d ON d.image_id = i.image_id AND d.kept" if used == "denoised" else ""
    marks = ", ".join("?" for _ in splits)
    rows = wh.query(
        f"""SELECT i.image_id, i.product_id, i.path, s.split, i.domain
            FROM images_current i JOIN splits s ON s.product_id = i.product_id AND s.run_id = ?
            {kept}
            WHERE i.status = 'ok' AND s.split IN ({marks})
            ORDER BY i.image_id""",
        [split_run_id, *([denoise_run] if used == "denoised" else []), *splits],
    ).to_pydict()
    return PhotoSet(rows["image_id"], rows["product_id"], rows["path"], rows["split"], rows["domain"],
                    used, denoise_run)




@torch.no_grad()
def embed_dataset(fn, dataset: Dataset, batch_size: int, num_workers: int, device: torch.device,
                  desc: str = "embed") -> torch.Tensor:
    """Apply ``fn`` (images -> B x D) to every photo of ``dataset``: N x D float32 on the CPU. Rows are written
    into one tensor allocated at the first batch (concatenating a list of batches held N x D twice: 2 x 2.7 GB
    for the whitening's 8,192 NetVLAD vectors of Lite0); an ``fn`` giving another number of rows than images
    (k-means' sampled local descriptors) is concatenated."""
    out, parts, at = None, [], 0
    photos = make_loader(dataset, batch_size, num_workers, device)
    with progress(STAGE_LABELS.get(desc, desc), len(dataset), "photos") as bar:
        for x in batches(photos):
            y = forward(fn, x, device).cpu()
            bar.advance(len(x))
            out, parts, at = _collect(out, parts, at, x, y, len(dataset))
    if out is not None:
        parts.append(out[:at])
    return torch.cat(parts) if len(parts) > 1 else parts[0] if parts else torch.empty(0, 0)


def _collect(out, parts: list, at: int, x, y, n: int):
    """``embed_dataset``'s bookkeeping for one batch: rows into ``out`` (allocated at the first batch) or,
    when ``fn`` gives another number of rows than images, onto ``parts``."""
    if out is None and not parts and len(y) == len(x):
        out = torch.empty(n, *y.shape[1:], dtype=y.dtype)
    if out is not None and len(y) == len(x) and at + len(y) <= len(out):
        out[at:at + len(y)] = y
        at += len(y)
    else:
        parts += [out[:at]] if out is not None else []
        out, at = None, 0
        parts.append(y)
    return out, parts, at
