"""Fast checks of the Ray engine's pieces that need no cluster (the cluster itself: tests/test_ray_engine.py)."""

from __future__ import annotations

import numpy as np
import torch

from embedding import ray_engine


class _Cluster:
    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


def test_actors_follow_the_gpus_else_half_the_cpus(settings):
    assert ray_engine.actor_count(settings, _Cluster(CPU=16, GPU=4)) == (4, 1.0)
    assert ray_engine.actor_count(settings, _Cluster(CPU=16)) == (8, 0.0)
    assert ray_engine.actor_count(settings, _Cluster(CPU=1)) == (1, 0.0)
    settings.set("ray.embed_actors", 3)
    assert ray_engine.actor_count(settings, _Cluster(CPU=16, GPU=4)) == (3, 1.0)
    settings.set("embed.device", "cpu")  # GPUs in the cluster, but the model is asked to run on CPUs
    assert ray_engine.actor_count(settings, _Cluster(CPU=16, GPU=4)) == (3, 0.0)


def test_decode_gives_the_local_loaders_tensors_and_marks_unreadable_photos(tmp_path):
    from PIL import Image

    from photos.loading import PhotoTensors

    good = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not a photo")
    mean = std = (0.5, 0.5, 0.5)
    out = ray_engine._decode({"row": np.array([7, 9]), "path": np.array([str(good), str(bad)])}, 32, mean, std,
                             40_000_000, 100)
    assert out["row"].tolist() == [7, 9] and out["ok"].tolist() == [True, False]
    assert out["pixels"].shape == (2, 3, 32, 32) and out["pixels"].dtype == np.float32
    _, local, ok = PhotoTensors([good], 32, mean, std, 40_000_000, 100)[0]
    assert ok and torch.equal(torch.from_numpy(out["pixels"][0]), local)
