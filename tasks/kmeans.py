"""k-means initialisation of NetVLAD (step ``kmeans``).

``kmeans_init(settings, split_run_id, photos="auto") -> run_id`` samples local conv descriptors
(L2-normalised, as NetVLAD sees them) from up to ``train.kmeans_images`` training photos, clusters
them into ``train.clusters`` centres (torch, on the GPU when there is one), chooses NetVLAD's
softmax sharpness ``alpha`` from the same descriptors, and stores ``models/kmeans/<model_id>.pt``
(centres, alpha, backbone, the image ids used) plus a ``models`` row ``kind="kmeans"`` whose run
lists the split (and denoise) run it read: the lineage says which photos and which backbone.
"""

from __future__ import annotations

import math

import torch
from prefect import task

from core.errors import ShoesearchError
from core.files import atomic_path
from core.finite import require_finite
from models import functional
from models.device import pick_device
from training.data import PhotoDataset, embed_dataset, load_photos
from warehouse import open_warehouse, start_run
from warehouse.models_table import model_record


def sample_local_descriptors(features: torch.Tensor, per_image: int, gen: torch.Generator) -> torch.Tensor:
    """Up to ``per_image`` random L2-normalised local descriptors per feature map: (B*n) x D."""
    x = functional.l2n(features.float(), dim=1).flatten(2).transpose(1, 2)  # B x N x D
    n = min(per_image, x.shape[1])
    picks = torch.stack([torch.randperm(x.shape[1], generator=gen)[:n] for _ in range(x.shape[0])])
    return x.gather(1, picks.to(x.device).unsqueeze(2).expand(-1, -1, x.shape[2])).reshape(-1, x.shape[2])


def kmeans_init(settings, split_run_id: str, photos: str = "auto") -> str:
    """Cluster local descriptors of training photos; returns the kmeans run id (model row inside)."""
    from models.backbones import id_part, load_backbone

    cfg = settings.train
    wh = open_warehouse(settings)
    photo_set = load_photos(wh, split_run_id, photos, ("train",))
    if len(photo_set) == 0:
        raise ShoesearchError(f"split {split_run_id} has no training photos")
    gen = torch.Generator().manual_seed(cfg.seed)
    chosen = sorted(torch.randperm(len(photo_set), generator=gen)[: cfg.kmeans_images].tolist())
    image_ids = [photo_set.image_ids[i] for i in chosen]
    device = pick_device(cfg.device)
    backbone = load_backbone(cfg.backbone, settings.embed.weights_path if cfg.backbone == settings.embed.backbone else "")
    backbone = backbone.to(device).eval()
    per_image = math.ceil(cfg.kmeans_descriptors / len(chosen))
    params = {"clusters": cfg.clusters, "backbone": cfg.backbone, "weights_id": backbone.weights_id,
              "image_size": cfg.image_size, "images": len(chosen), "per_image": per_image,
              "iterations": cfg.kmeans_iterations, "seed": cfg.seed, "photos": photo_set.photos}
    with start_run(wh, step="kmeans", params=params, inputs=[split_run_id, photo_set.denoise_run_id]) as run:
        dataset = PhotoDataset(settings, [photo_set.paths[i] for i in chosen], cfg.image_size, backbone.mean, backbone.std)
        sample = lambda x: sample_local_descriptors(backbone.features(x), per_image, gen)  # noqa: E731
        descriptors = embed_dataset(sample, dataset, cfg.batch_size * 4, cfg.num_workers, device,
                                    "k-means descriptors")
        if descriptors.shape[0] < cfg.clusters:
            raise ShoesearchError(f"only {descriptors.shape[0]} local descriptors for {cfg.clusters} clusters: "
                                  "add photos or lower train.clusters")
        centroids = functional.kmeans(descriptors.to(device), cfg.clusters, cfg.kmeans_iterations, cfg.seed).cpu()
        alpha = functional.netvlad_alpha(descriptors, centroids)
        require_finite("kmeans: centroids and alpha", {"centroids": centroids, "alpha": alpha},
                       f"the {cfg.backbone} descriptors of the sampled photos are broken")
        model_id = f"kmeans-{id_part(cfg.backbone)}-{run.run_id.split('-', 1)[1]}"
        rel = f"models/kmeans/{model_id}.pt"
        with atomic_path(settings.home / rel) as tmp:
            torch.save({"centroids": centroids, "alpha": alpha, "backbone": cfg.backbone,
                        "weights_id": backbone.weights_id, "image_ids": image_ids}, tmp)
        run.write("models", [model_record(model_id, "kmeans", cfg.backbone, rel, None,
                                          {**params, "descriptors": int(descriptors.shape[0]), "alpha": alpha})])
    return run.run_id


kmeans_init_task = task(kmeans_init, name="kmeans")
