"""Domain renderings of grey-scale images: ``photo``, ``sketch`` and ``silhouette``, numpy and PIL only.

Each rendering takes a ``[h, w]`` uint8 image of a light object on a dark background (the
Fashion-MNIST convention) and returns a ``[h, w]`` uint8 image. They are deterministic and
need no extra data, so a domain test set is the plain test split drawn three ways:

- ``photo``: the image as it is (light object, black background);
- ``sketch``: dark strokes on white paper where the image has edges (Sobel magnitude);
- ``silhouette``: the object's filled outline, black on white, holes filled.

``RENDER_VERSION`` enters the datasets' content id: change it when a rendering changes, so
cached image features are not reused.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

RENDER_VERSION = "1"
SKETCH_GAIN = 1.5  # Sobel magnitude (relative to the image's strongest edge) to full ink
SILHOUETTE_THRESHOLD = 24  # grey level above which a pixel belongs to the object


def photo(image: np.ndarray) -> np.ndarray:
    """The image unchanged (a copy)."""
    return np.array(image, dtype=np.uint8, copy=True)


def _sobel_magnitude(image: np.ndarray) -> np.ndarray:
    """``[h, w]`` float64 gradient magnitude, edge-padded so the border adds no edge."""
    x = np.pad(np.asarray(image, dtype=np.float64), 1, mode="edge")
    gx = (x[:-2, 2:] + 2 * x[1:-1, 2:] + x[2:, 2:]) - (x[:-2, :-2] + 2 * x[1:-1, :-2] + x[2:, :-2])
    gy = (x[2:, :-2] + 2 * x[2:, 1:-1] + x[2:, 2:]) - (x[:-2, :-2] + 2 * x[:-2, 1:-1] + x[:-2, 2:])
    return np.hypot(gx, gy)


def sketch(image: np.ndarray) -> np.ndarray:
    """Edges as dark strokes on white: ``255 − ink``, ink growing with the Sobel magnitude."""
    magnitude = _sobel_magnitude(image)
    peak = float(magnitude.max())
    if peak == 0.0:
        return np.full(np.shape(image), 255, dtype=np.uint8)
    ink = np.clip(SKETCH_GAIN * magnitude / peak, 0.0, 1.0)
    return np.round(255.0 * (1.0 - ink)).astype(np.uint8)


def filled_mask(image: np.ndarray, threshold: int = SILHOUETTE_THRESHOLD) -> np.ndarray:
    """``[h, w]`` bool: pixels above ``threshold``, plus every hole not reachable from the border."""
    mask = np.asarray(image) > threshold
    padded = Image.fromarray(np.pad(mask, 1).astype(np.uint8) * 255).copy()  # fromarray may share a read-only buffer
    ImageDraw.floodfill(padded, (0, 0), 128)  # the background reachable from outside
    outside = np.asarray(padded)[1:-1, 1:-1] == 128
    return ~outside


def silhouette(image: np.ndarray) -> np.ndarray:
    """The filled shape in black on white."""
    return np.where(filled_mask(image), 0, 255).astype(np.uint8)


RENDERINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "photo": photo,
    "sketch": sketch,
    "silhouette": silhouette,
}
DOMAIN_NAMES = tuple(RENDERINGS)


def render(image: np.ndarray, domain: str) -> np.ndarray:
    """``image [h, w]`` uint8 drawn in ``domain`` (a key of ``RENDERINGS``)."""
    return RENDERINGS[domain](image)
