"""Scoring a model on a photo set: Recall@k and mAP, each photo querying the others.

``recall`` scores the network being trained (validation each epoch, test at the end); ``score`` scores any
embedder (trained, ImageNet descriptor, a variant) under an evaluation protocol for the ``evaluate`` step and
the switch gate.
"""

from __future__ import annotations

import torch

from core.finite import require_finite
from models import functional
from training.data import PhotoDataset, PhotoSet, embed_dataset, unwrap

PROTOCOLS = {"all": "all-vs-all", "consumer-to-shop": "consumer-to-shop"}
KS = (1, 5, 10)


def recall(model, settings, photo_set: PhotoSet, device: torch.device) -> dict[str, float]:
    """Recall@1/5/10 and mAP of ``model`` on ``photo_set`` (each photo queries all the others)."""
    cfg = settings.train
    if len(photo_set) < 2:
        return {"queries": 0, "recall_at_1": float("nan"), "recall_at_5": float("nan"),
                "recall_at_10": float("nan"), "mean_ap": float("nan")}
    m = unwrap(model)
    ds = PhotoDataset(settings, photo_set.paths, m.config.image_size, m.backbone.mean, m.backbone.std)
    model.eval()
    desc = embed_dataset(m, ds, cfg.batch_size * 4, cfg.num_workers, device, "recall")
    return functional.recall_and_map(desc, photo_set.labels())


def score(embedder, settings, test: PhotoSet, protocol: str, device: torch.device,
          product_level: bool = False) -> dict[str, float]:
    """Metrics of one embedder on the test photos under ``protocol`` (with ``product_level``: also
    product-level Recall@k, ``models.functional.product_recall``; all photos query all)."""
    ds = PhotoDataset(settings, test.paths, embedder.image_size, embedder.mean, embedder.std)
    desc = embed_dataset(embedder, ds, settings.embed.batch_size, settings.train.num_workers, device, "evaluate")
    require_finite(f"{getattr(embedder, 'model_id', 'the model')} descriptors of {len(test)} test photos", desc,
                   "NaN scores no Recall@1: the model's weights or settings are broken")
    masks = {}
    if protocol == "consumer-to-shop":
        masks = {"query_mask": torch.tensor([d == "user" for d in test.domains]),
                 "gallery_mask": torch.tensor([d != "user" for d in test.domains])}
    metrics = functional.recall_and_map(desc, test.labels(), KS, **masks)
    return {**metrics, **functional.product_recall(desc, test.labels(), KS)} if product_level else metrics
