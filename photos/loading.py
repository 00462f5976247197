"""Photo datasets and the one DataLoader builder every step uses (embed, train, evaluate, index).

Worker processes are started by a *forkserver*, never by forking the step's own process: a Prefect
flow runs an event loop, API-client and logging threads, and a DataLoader worker forked from that
process dies at exit (``exited unexpectedly with exit code 1``), which is what broke every flow with
the default ``num_workers``. The forkserver is a clean single-threaded process that imports torch and
this module once (``set_forkserver_preload``; not torchvision, which no catalog worker needs and which
doubled the server's start: a first batch after 9.4 s instead of 4.8 s on a loaded 2-core machine), so the
start-up is paid once per process, each later worker starts in milliseconds, and on CUDA it also avoids
forking an initialised CUDA context.

Every dataset a worker unpickles lives here (workers import only this light module, preloaded into the
forkserver, not the task modules with Prefect and the warehouse). Datasets held in memory (the frozen-stage cache) are read in the main process: workers would only
copy the tensors through pickling. A photo that cannot be read names the file and the cause;
:func:`batches` turns a worker's wrapped error into one line (no worker traceback wall).
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from core.errors import ShoesearchError, explained
from photos.decoding import JPEG_FORMATS, MAX_SCANS, scan_refusal
from photos.transforms import preprocess_path

log = logging.getLogger(__name__)

UNREADABLE = (OSError, ValueError, SyntaxError)  # PIL's errors for broken / truncated / bomb photos
_PRELOAD = ["torch", "PIL.Image", "photos.transforms", "photos.loading"]  # what every worker imports


class PhotoError(ShoesearchError):
    """A photo file could not be turned into a tensor: the message names the file and the cause."""


def read_photo(path: Path, size: int, mean, std, max_pixels: int, max_scans: int = MAX_SCANS) -> torch.Tensor:
    """One photo file -> normalised tensor, or :class:`PhotoError` naming the file and the cause."""
    try:
        return preprocess_path(path, size, mean, std, max_pixels, max_scans)
    except Exception as exc:  # noqa: BLE001 - any decoder failure becomes a named, one-line error
        raise PhotoError(f"cannot read photo {path}: {type(exc).__name__}: {exc}") from exc


class PhotoTensors(Dataset):
    """(index, normalised tensor, ok) per photo file; an unreadable photo is marked, not fatal (embed)."""

    reads_files = True

    def __init__(self, paths: list[Path], size: int, mean, std, max_pixels: int, max_scans: int = MAX_SCANS):
        self.paths, self.size, self.mean, self.std, self.max_pixels = paths, size, mean, std, max_pixels
        self.max_scans = max_scans

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, read_photo(self.paths[i], self.size, self.mean, self.std, self.max_pixels, self.max_scans), True
        except PhotoError as exc:
            log.warning("%s", exc)
            return i, torch.zeros(3, self.size, self.size), False


def is_upright_jpeg(data: bytes, max_scans: int = MAX_SCANS) -> bool:
    """A JPEG (or MPO) whose EXIF orientation is 1 (or absent): nvjpeg's pixels equal the displayed photo. One
    with more than ``max_scans`` scans is not: the CPU path refuses it."""
    import io

    from PIL import Image

    if data[:2] != b"\xff\xd8":
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            fmt, orientation = img.format, img.getexif().get(0x0112, 1)
        return fmt in JPEG_FORMATS and orientation == 1 and scan_refusal(fmt, data, max_scans) is None
    except Exception:  # noqa: BLE001 - an unreadable header is decoded (and reported) on the CPU path
        return False


class PhotoBytes(Dataset):
    """(index, raw file bytes as uint8 tensor, upright JPEG?) per photo: upright JPEGs are decoded on the
    GPU; every other photo (EXIF-rotated, PNG, WebP ...) takes the catalog's CPU preprocessing."""

    reads_files = True

    def __init__(self, paths: list[Path], max_scans: int = MAX_SCANS):
        self.paths, self.max_scans = paths, max_scans

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            raw = Path(self.paths[i]).read_bytes()
        except OSError as exc:
            raise PhotoError(f"cannot read photo {self.paths[i]}: {exc}") from exc
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        return i, data, is_upright_jpeg(raw, self.max_scans)


class PhotoDataset(Dataset):
    """Decoded, resized, normalised photos by index into a list of paths."""

    reads_files = True

    def __init__(self, settings, paths: list[str], image_size: int, mean, std):
        self.root = settings.images_dir
        self.paths = paths
        self.max_pixels, self.max_scans = settings.crawl.max_image_pixels, settings.crawl.max_image_scans
        self.image_size, self.mean, self.std = image_size, mean, std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        # The same preprocessing as embedding, indexing and search (long side scaled, padded square).
        return read_photo(self.root / self.paths[i], self.image_size, self.mean, self.std, self.max_pixels,
                          self.max_scans)


class TupleDataset(Dataset):
    """The images of one mined tuple, stacked: (1 + P + N) x 3 x S x S; each through ``augment`` when given."""

    def __init__(self, photos: Dataset, tuples: list[list[int]], augment=None):
        self.photos, self.tuples, self.augment = photos, tuples, augment
        self.reads_files = reads_files(photos)  # photos: workers decode them; the frozen cache: in memory

    def __len__(self) -> int:
        return len(self.tuples)

    def __getitem__(self, i: int) -> torch.Tensor:
        images = [self.photos[j] for j in self.tuples[i]]
        return torch.stack([self.augment(x) for x in images] if self.augment else images)


class CropColour:
    """A random resized crop (``scale`` of the area, aspect 3:4 to 4:3, back to the photo's size) and colour
    jitter (brightness, contrast, saturation ``jitter``, hue ``hue``) of one normalised photo: the crop and
    lighting of another shot of the same shoe. Works in pixel space (un-normalise, transform, normalise)."""

    def __init__(self, mean, std, scale: tuple[float, float] = (0.6, 1.0), jitter: float = 0.3, hue: float = 0.05):
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.scale, self.jitter, self.hue = scale, jitter, hue

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import v2

        size = list(x.shape[-2:])
        t = v2.Compose([v2.RandomResizedCrop(size, scale=self.scale, antialias=True),
                        v2.ColorJitter(self.jitter, self.jitter, self.jitter, self.hue)])
        pixels = (x * self.std + self.mean).clamp(0, 1)
        return (t(pixels).clamp(0, 1) - self.mean) / self.std


class WithMirrors(Dataset):
    """``photos`` and their left-right mirrors: index ``i < N`` is photo ``i``, ``N + i`` is photo ``i`` mirrored
    (the other shoe of the pair, seen from the same side). A frozen-stage cache of this dataset is exact: the
    mirror is taken before the network, and the cache holds both versions."""

    def __init__(self, photos: Dataset):
        self.photos, self.n = photos, len(photos)
        self.reads_files = reads_files(photos)

    def __len__(self) -> int:
        return 2 * self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.photos[i % self.n]
        return x.flip(-1) if i >= self.n else x


def mirror_some(tuples: list[list[int]], n: int, gen: torch.Generator, p: float = 0.5) -> list[list[int]]:
    """Each photo index of each tuple replaced by its mirror's (``+ n`` in :class:`WithMirrors`) with
    probability ``p``, drawn from ``gen`` (seeded: the same on resume)."""
    flips = (torch.rand(sum(len(t) for t in tuples), generator=gen) < p).tolist()
    it = iter(flips)
    return [[j + n if next(it) else j for j in t] for t in tuples]


def reads_files(dataset: Dataset) -> bool:
    """Whether items are decoded from files (worth worker processes) rather than held in memory."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return bool(getattr(dataset, "reads_files", False))


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device, *,
                shuffle: bool = False, collate_fn=None, pin_memory: bool | None = None) -> DataLoader:
    """The DataLoader for ``dataset``: forkserver workers for file datasets, pinned memory on CUDA."""
    cuda = device.type == "cuda"
    workers = num_workers if reads_files(dataset) else 0
    extra = {}
    if workers:
        if cuda:  # see the ecosystem notes: fd sharing hangs on the GPU hosts
            torch.multiprocessing.set_sharing_strategy("file_system")
        extra = {"multiprocessing_context": _context(), "prefetch_factor": 4}
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=cuda if pin_memory is None else pin_memory, collate_fn=collate_fn,
                      persistent_workers=False, **extra)


def batches(loader: Iterable) -> Iterator:
    """Iterate ``loader``; a worker's failure becomes one :class:`ShoesearchError` line with its cause."""
    with explained(worker_cause):
        yield from loader


def worker_cause(exc: Exception) -> str | None:
    """One line for a DataLoader worker failure, or None when ``exc`` is not one."""
    text = str(exc)
    if text.startswith("Caught "):  # torch's ExceptionWrapper: the last line is "Type: message"
        last = [line for line in text.splitlines() if line.strip()][-1]
        return f"photo loader worker failed: {last.strip()}"
    if "DataLoader worker" in text and ("exited unexpectedly" in text or "killed by signal" in text):
        return (f"photo loader worker died ({text.split('. ')[0]}): out of memory, or a crashing decoder? "
                "Rerun with --set embed.num_workers=0 --set train.num_workers=0 to see the cause in-process")
    return None
