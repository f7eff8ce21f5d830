"""The sample photographs shipped in ``data/`` (see data/README.md for sources and licences)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def image_paths(directory: Path | str = DATA_DIR) -> list[Path]:
    """Paths of the image files in ``directory`` (default: the repository's ``data/``), sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"image directory {directory} does not exist")
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {directory}")
    return paths


def load_images(directory: Path | str = DATA_DIR) -> list[Image.Image]:
    """The images of ``directory`` as RGB PIL images, sorted by file name (fully loaded, files closed)."""
    images = []
    for path in image_paths(directory):
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    return images
