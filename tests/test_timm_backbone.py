"""Any timm CNN as the backbone, from a local weights file (no download): exact features, blocks, the pipeline."""

from __future__ import annotations

import pytest
import torch

from core.errors import ShoesearchError
from models.backbones import load_backbone

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Weights files of two timm families, saved as timm ships them (state dict .pth, and .safetensors)."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    resnet = timm.create_model("resnet10t", pretrained=False).eval()
    torch.save(resnet.state_dict(), folder / "resnet10t.pth")
    mobile = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    save_file({k: v.contiguous() for k, v in mobile.state_dict().items()}, str(folder / "mnv3.safetensors"))
    return {"resnet10t": (resnet, folder / "resnet10t.pth"),
            "mobilenetv3_small_050": (mobile, folder / "mnv3.safetensors")}


@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_050"])
def test_timm_backbone_gives_the_models_own_feature_map(weights, name):
    net, path = weights[name]
    backbone = load_backbone(f"timm/{name}", path)
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        expected = net.forward_features(x)
        assert torch.allclose(backbone.features(x), expected, atol=1e-5)  # the file's weights, cut at the conv map
        # Split into stem / stages / head, so train.trainable_blocks freezes the early ones.
        blocks = backbone.blocks()
        assert len(blocks) >= 4
        y = x
        for block in blocks:
            y = block(y)
        assert torch.allclose(y, expected, atol=1e-5)
    assert backbone.out_channels == expected.shape[1]
    assert backbone.weights_id.startswith(f"timm/{name}@") and backbone.mean == tuple(net.pretrained_cfg["mean"])


def test_timm_backbone_errors_are_one_line(weights, tmp_path):
    with pytest.raises(ShoesearchError, match="embed.weights_path"):
        load_backbone("timm/resnet10t")  # weights are never downloaded
    with pytest.raises(ShoesearchError, match="does not fit backbone 'timm/resnet10t'"):
        load_backbone("timm/resnet10t", weights["mobilenetv3_small_050"][1])
    vit = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), vit)
    with pytest.raises(ShoesearchError, match="choose a CNN"):
        load_backbone("timm/vit_tiny_patch16_224", vit)
    with pytest.raises(ShoesearchError, match="timm cannot build 'no_such_net'"):
        load_backbone("timm/no_such_net", vit)
    with pytest.raises(ShoesearchError, match="needs a model name"):
        load_backbone("timm/", vit)


@pytest.mark.e2e
def test_timm_backbone_through_embed_kmeans_and_training(weights, tmp_path):
    """One setting switches the pipeline to a timm model: ImageNet embedding (denoise), k-means, training and
    the trained embedder, with model ids and files that stay flat (no '/' from the model name)."""
    from core.settings import Settings
    from demo_shop.synthetic import generate_catalog
    from embedding.embedders import open_embedder
    from embedding.vectors import embed_images, load_embeddings
    from tasks.ingest import ingest_catalog
    from tasks.kmeans import kmeans_init
    from tasks.split import make_split
    from tasks.train import model_id_of_run, train_model
    from warehouse import open_warehouse

    catalog = generate_catalog(tmp_path / "shoes", 12, noise_rate=0.0, seed=3, image_size=96)
    overrides = {"embed.backbone": "timm/resnet10t", "train.backbone": "timm/resnet10t",
                 "embed.weights_path": str(weights["resnet10t"][1]), "embed.image_size": 96, "train.image_size": 96,
                 "train.clusters": 8, "train.descriptor_dim": 16, "train.kmeans_descriptors": 200,
                 "train.kmeans_images": 20, "train.epochs": 1, "train.batch_size": 4, "train.negatives_pool": 16,
                 "train.hard_negatives": 2, "train.max_positives": 2, "train.device": "cpu"}
    settings = Settings.load(home=tmp_path / "home", overrides=overrides)
    ingest_catalog(settings, catalog, name="shoes")
    embed_images(settings)
    wh = open_warehouse(settings)
    ids, vectors = load_embeddings(wh, open_embedder(settings).model_id)
    assert len(ids) > 40 and vectors.shape[1] == 512
    split = make_split(settings)
    model_id = model_id_of_run(settings, train_model(settings, split, kmeans_run_id=kmeans_init(settings, split)))
    assert model_id.startswith("netvlad-timm-resnet10t-")
    rows = wh.query("SELECT model_id, path FROM models").to_pylist()
    assert all("/" not in r["model_id"] and (settings.home / r["path"]).is_file() for r in rows)
    trained = open_embedder(settings, model_id)
    with torch.no_grad():
        out = trained(torch.rand(2, 3, 96, 96))
    assert out.shape == (2, 16) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-4)
