"""bench/search_vectors.py: the search bench's gallery drawn from the committed descriptor statistics."""

from __future__ import annotations

import numpy as np

from bench import search_vectors


def test_committed_statistics_are_small_and_reproduce_their_recorded_neighbourhoods():
    assert search_vectors.STATS.stat().st_size < 200_000
    stats = search_vectors.load_stats()
    dim = stats["dim"]
    assert len(stats["between_var"]) == len(stats["within_var"]) == dim
    # the same seed and size as fit_stats used: the generator still draws what the fit recorded
    assert search_vectors._synthetic(stats, 100) == stats["synthetic"]
    x, product, catalog = search_vectors.generate(stats, 1_000, np.random.default_rng(0))
    assert x.shape == (1_000, dim) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    counts = np.bincount(product)
    assert counts.sum() == 1_000 and set(counts[:-1]) <= {int(k) for k in stats["photos_per_product"]}
    q = search_vectors.queries(catalog, 50)
    assert q.shape == (50, dim)
    # a new photo of a product is nearer its own product's photos than a random photo is
    assert float(np.median((q @ x.T).max(1))) > float(np.median(x[:50] @ x[50:100].T))
