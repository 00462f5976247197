"""The model training starts from: NetVLAD at its k-means initialisation, its PCA whitening fitted."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from models.netvlad_model import ModelConfig, NetVLADFromFrozenFeatures, NetVLADModel
from training.data import PhotoDataset, PhotoSet, embed_dataset


def kmeans_model(settings, kmeans_row: dict, n_train: int) -> NetVLADModel:
    """NetVLAD at k-means init, its whitening not fitted yet (:func:`fit_whitening`)."""
    cfg = settings.train
    km = torch.load(settings.home / kmeans_row["path"], map_location="cpu", weights_only=False)
    weights = settings.embed.weights_path if km["backbone"] == settings.embed.backbone else ""
    n_fit = min(n_train, cfg.whitening_photos)  # photos the PCA is fitted on (fit_whitening)
    dim = min(cfg.descriptor_dim, n_fit - 1) if cfg.descriptor_dim else 0  # PCA has at most N-1 components
    config = ModelConfig(km["backbone"], int(km["centroids"].shape[0]), dim, cfg.image_size, cfg.trainable_blocks, weights)
    model = NetVLADModel(config)
    model.netvlad.init_from_kmeans(km["centroids"], float(km["alpha"]))
    return model


def fit_whitening(net, inputs: Dataset, settings, device: torch.device) -> None:
    """PCA whitening fitted on the NetVLAD vectors of ``inputs`` (photos, or the frozen cache for
    ``NetVLADFromFrozenFeatures``)."""
    model = net.model if isinstance(net, NetVLADFromFrozenFeatures) else net
    if model.whitening is None:
        return
    net.eval()
    cap = settings.train.whitening_photos
    if len(inputs) > cap:  # N x K*D floats: a seeded sample bounds memory on big catalogs
        pick = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(settings.train.seed))[:cap]
        inputs = Subset(inputs, sorted(pick.tolist()))
    vlad = embed_dataset(lambda x: net(x, whiten=False), inputs, settings.train.batch_size * 4,
                         settings.train.num_workers, device, "whitening")
    model.whitening.fit(vlad.to(device), settings.train.whitening_shrinkage)


def whiten_on_photos(model: NetVLADModel, settings, photos: PhotoSet, device: torch.device) -> None:
    """Fit ``model``'s PCA whitening on the NetVLAD vectors of ``photos`` (read as files, full forward)."""
    fit_whitening(model, PhotoDataset(settings, photos.paths, settings.train.image_size, model.backbone.mean,
                                      model.backbone.std), settings, device)


def model_from_kmeans(settings, kmeans_row: dict, train_photos: PhotoSet, device: torch.device) -> NetVLADModel:
    """NetVLAD at k-means init; its PCA whitening fitted on the training photos' NetVLAD vectors."""
    model = kmeans_model(settings, kmeans_row, len(train_photos)).to(device)
    whiten_on_photos(model, settings, train_photos, device)
    return model.cpu()
