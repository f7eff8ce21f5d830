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


# --- the sample clip ------------------------------------------------------------------------------
CLIP_PATH = DATA_DIR / "coffee_pan.webp"  # made by pan_zoom_frames from coffee.jpg (data/README.md)


def pan_zoom_frames(image: Image.Image, frames: int, size: tuple[int, int], zoom: float,
                    toward: tuple[float, float] = (0.5, 0.5)) -> list[Image.Image]:
    """A slow zoom into ``image`` as ``frames`` RGB frames of ``size`` (width, height) px: the crop
    shrinks linearly from the whole image (cropped to ``size``'s aspect) to ``1 / zoom`` of it while its
    centre moves to ``toward`` (fractions of width and height), each crop resized bicubically."""
    if frames < 1 or zoom < 1:
        raise ValueError(f"pan_zoom_frames: frames must be >= 1 and zoom >= 1, got {frames} and {zoom}")
    width, height = image.size
    aspect = size[0] / size[1]
    crop_w, crop_h = min(width, height * aspect), min(height, width / aspect)  # the whole image at that aspect
    out = []
    for k in range(frames):
        f = k / max(frames - 1, 1)
        scale = 1 - f * (1 - 1 / zoom)
        w, h = crop_w * scale, crop_h * scale
        cx = width / 2 + f * (toward[0] * width - width / 2)
        cy = height / 2 + f * (toward[1] * height - height / 2)
        left = min(max(cx - w / 2, 0), width - w)
        top = min(max(cy - h / 2, 0), height - h)
        box = (left, top, left + w, top + h)
        out.append(image.convert("RGB").resize(size, Image.Resampling.BICUBIC, box=box))
    return out


def save_clip(frames: list[Image.Image], path: Path | str, fps: float = 8.0, quality: int = 80) -> None:
    """Write ``frames`` as an animated WebP (lossy at ``quality``), ``fps`` frames a second."""
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0,
                   quality=quality, method=6)


def load_clip(path: Path | str = CLIP_PATH) -> list[Image.Image]:
    """The frames of an animated image file (default: the sample clip, data/coffee_pan.webp) as RGB PIL
    images, in order, fully loaded."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"clip {path} does not exist")
    frames = []
    with Image.open(path) as clip:
        for k in range(getattr(clip, "n_frames", 1)):
            clip.seek(k)
            frames.append(clip.convert("RGB"))
    return frames
