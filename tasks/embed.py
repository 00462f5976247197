"""Step ``embed``: vectors for the current photos that this model has not embedded yet.

The work is ``embedding.vectors.embed_images`` (streamed, incremental by content hash, committed in chunks);
this module makes it a Prefect task: settings + an optional model spec in, the embed run id out.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from embedding.vectors import embed_images

embed_images_task = task(embed_images, name="embed", cache_policy=NONE)
