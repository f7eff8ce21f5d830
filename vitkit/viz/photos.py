"""The photos of ``data/`` as items, resized and processed once per size (memoised for sliders)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

from PIL import Image

from vitkit.checks import positive_int
from vitkit.images import image_paths, load_images
from vitkit.item import MultimodalItem
from vitkit.processing import make_items


def resize_longer_side(image: Image.Image, size: int) -> Image.Image:
    """``image`` scaled (bicubic) so that its longer side is ``size`` px, aspect ratio kept."""
    positive_int("image size (px)", size)
    w, h = image.size
    scale = size / max(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)


@lru_cache(maxsize=1)
def _photos() -> tuple[tuple[str, Image.Image], ...]:
    return tuple((p.stem, im) for p, im in zip(image_paths(), load_images()))


@lru_cache(maxsize=512)
def _photo_item(index: int, size: int, preset: str) -> tuple[str, MultimodalItem]:
    name, image = _photos()[index]
    image = resize_longer_side(image, size)
    (item,) = make_items([image], preset)
    return name, item


def photo_names() -> tuple[str, ...]:
    """File stems of the photos in ``data/``, sorted: the order ``photo_items`` uses."""
    return tuple(name for name, _ in _photos())


def photo_items(size: int, count: int, preset: str = "qwen2.5-vl-7b") -> list[tuple[str, MultimodalItem]]:
    """``(name, item)`` for the first ``count`` photos of ``data/`` (sorted by name), each
    resized to a longer side of ``size`` px and run through ``preset``'s image processor.

    Memoised per (photo, size, preset): moving a slider back re-uses the items, and the same
    photo is the same item object (and hash) in every request that shows it.
    """
    available = len(_photos())
    if positive_int("photo count", count) > available:
        raise ValueError(f"asked for {count} photos; data/ holds {available}")
    # two threads: the processor's numpy work releases the GIL, so a new size costs about half
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda i: _photo_item(i, size, preset), range(count)))
