"""How images become the model's pixel tensors: one table of decoders.

- ``pil`` (the default): PIL opens the image and the model's own open_clip transform makes the
  tensor, bit for bit what CLIP_benchmark computes.
- ``pil-draft``: the same transform, but a JPEG at least twice the model's input size is first
  decoded by libjpeg at 1/2, 1/4 or 1/8 scale (PIL's draft mode, keeping at least twice the
  input size, as ``Image.thumbnail`` does). Pixels change; other files are untouched.
- ``tensor``: ``torchvision.io`` decodes files to uint8 tensors and ``tensor_transform`` applies
  the same steps as the model's transform (resize, centre crop, scale, normalise) to them.
  Pixels change slightly (a different resize kernel implementation).
- ``gpu``: workers only read JPEG files' bytes; the main process decodes a whole batch at once
  with ``torchvision.io.decode_jpeg(..., device=device)`` (nvJPEG on CUDA) and applies
  ``tensor_transform`` on that device. Anything that is not a JPEG file (PNG, in-memory arrays)
  is decoded on the CPU workers as in ``tensor`` and finished on the device; ``fallbacks``
  counts those, and the first one raises a ``UserWarning`` (once per decoder).

A decoder has two halves: ``item``/``collate`` run in the DataLoader's worker processes (so the
decoder pickles), ``unpack``/``join`` in the main process, which turns the workers' chunks into
the model's batches.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..errors import SpecError
from ..presets.defaults import DECODERS, DEFAULT_DECODER  # noqa: F401 - there the door reads them without torch

DRAFT_GAP = 2  # pil-draft keeps at least this many times the model's input size (PIL's thumbnail default)
TORCHVISION_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp"}  # what torchvision.io.decode_image reads
JPEG_SUFFIXES = {".jpg", ".jpeg"}


def check_decoder(name: str) -> str:
    """``name`` if it is a decoder; otherwise a one-line ``SpecError`` that lists them."""
    if name not in DECODERS:
        raise SpecError(f'decode: "{name}" is not one of {", ".join(DECODERS)}',
                        "pass --decode pil (exact), pil-draft, tensor or gpu")
    return name


# --- the model's transform, step for step, on uint8 tensors -------------------------------------


@dataclass(frozen=True)
class TensorTransform:
    """open_clip's eval transform on ``uint8 [3, H, W]`` or ``[n, 3, H, W]`` tensors, on any device.

    ``size``: the resize target (an int: the shorter side, as ``transforms.Resize``), ``crop``:
    ``(h, w)``, ``mean``/``std``: per channel. Returns float32 ``[..., 3, h, w]``, scaled to
    [0, 1] as ``ToTensor`` does and normalised with the same function open_clip calls.
    """

    size: int | tuple[int, ...]
    interpolation: str
    max_size: int | None
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F1
        from torchvision.transforms.v2 import functional as F2

        size = [self.size] if isinstance(self.size, int) else list(self.size)
        out = F2.resize(pixels, size, interpolation=InterpolationMode(self.interpolation), max_size=self.max_size,
                        antialias=True)
        out = F2.center_crop(out, list(self.crop))
        out = out.to(torch.float32).div(255)  # as ToTensor: float, then / 255
        return F1.normalize(out, list(self.mean), list(self.std))


def tensor_transform(preprocess: Callable) -> TensorTransform:
    """The ``TensorTransform`` equal in steps to ``preprocess`` (open_clip's eval ``Compose``).

    Only the steps open_clip's ``resize_mode: shortest`` transform uses are known; anything else
    (``longest``'s keep-ratio resize and padding, an HF image processor) is a ``SpecError``
    whose fix is ``--decode pil``.
    """
    from torchvision import transforms as T

    steps = getattr(preprocess, "transforms", None)
    if steps is None:
        raise SpecError("decode: pil-draft, tensor and gpu read their sizes off an open_clip transform, not "
                        f"{type(preprocess).__name__}", "use --decode pil")
    resize = crop = normalize = None
    for step in steps:
        name = type(step).__name__
        if isinstance(step, T.Resize) and resize is None:
            resize = step
        elif isinstance(step, T.CenterCrop) and crop is None:
            crop = step
        elif isinstance(step, T.Normalize):
            normalize = step
        elif name == "MaybeConvertMode" and getattr(step, "mode", "RGB") == "RGB":
            pass  # the tensor decoders always decode to RGB
        elif isinstance(step, T.ToTensor) or name == "MaybeToTensor":
            pass
        else:
            raise SpecError(f"decode: the tensor decoders do not know the transform step {name}",
                            "use --decode pil")
    if resize is None or crop is None or normalize is None:
        raise SpecError("decode: the tensor decoders need a Resize, CenterCrop and Normalize transform",
                        "use --decode pil")
    return TensorTransform(
        size=resize.size if isinstance(resize.size, int) else tuple(resize.size),
        interpolation=resize.interpolation.value, max_size=resize.max_size,
        crop=tuple(crop.size), mean=tuple(float(m) for m in normalize.mean),
        std=tuple(float(s) for s in normalize.std))


def input_side(preprocess: Callable) -> int:
    """The model's input side in pixels (the largest side of its centre crop)."""
    tf = tensor_transform(preprocess)
    return max(tf.crop)


# --- reading one image -------------------------------------------------------------------------


@contextlib.contextmanager
def _torchvision_io() -> Iterator[None]:
    """torchvision 0.29 marks ``torchvision.io``'s image codecs deprecated (torchcodec succeeds them)
    and warns on every call; the codecs are what this module uses, so that one notice is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        yield


def _file(dataset, i: int) -> Path | None:
    image_file = getattr(dataset, "image_file", None)
    return None if image_file is None else Path(image_file(i))


def decode_uint8(dataset, i: int) -> torch.Tensor:
    """Image ``i`` as ``uint8 [3, H, W]`` RGB: ``torchvision.io`` for files it reads, else PIL's pixels."""
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.functional import pil_to_tensor

    path = _file(dataset, i)
    if path is not None and path.suffix.lower() in TORCHVISION_SUFFIXES:
        with _torchvision_io():
            return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    return pil_to_tensor(dataset.load_image(i).convert("RGB"))


def open_draft(path: Path, side: int) -> Image.Image:
    """``path`` opened by PIL; a JPEG is decoded at the smallest DCT scale keeping ``DRAFT_GAP * side`` px."""
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft(None, (DRAFT_GAP * side, DRAFT_GAP * side))
        img.load()
        return img


# --- the decoders -------------------------------------------------------------------------------


@dataclass
class PilDecoder:
    """``pil`` and ``pil-draft``: the model's own transform on PIL images, in the workers."""

    preprocess: Callable
    draft_side: int | None = None  # pil-draft: the model's input side

    def item(self, dataset, i: int) -> torch.Tensor:
        path = _file(dataset, i) if self.draft_side else None
        image = open_draft(path, self.draft_side) if path is not None else dataset.load_image(i)
        return self.preprocess(image)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        from torch.utils.data import default_collate

        return default_collate(items)  # in a worker: stacked straight into shared memory

    def unpack(self, chunk: torch.Tensor) -> torch.Tensor:
        return chunk

    def join(self, pieces: Sequence[torch.Tensor], device: str | torch.device, pin: bool) -> torch.Tensor:
        """One ``[b, 3, H, W]`` batch from the pieces: a view when there is one piece and no pinning;
        otherwise one copy, into page-locked memory when ``pin`` (so ``.to(cuda, non_blocking=True)``
        overlaps the model)."""
        if len(pieces) == 1 and not pin:
            return pieces[0]
        first = pieces[0]
        out = torch.empty((sum(len(p) for p in pieces), *first.shape[1:]), dtype=first.dtype, pin_memory=pin)
        return torch.cat(list(pieces), out=out)


@dataclass
class TensorDecoder(PilDecoder):
    """``tensor``: ``torchvision.io`` decode and ``TensorTransform`` in the workers."""

    transform: TensorTransform | None = None

    def item(self, dataset, i: int) -> torch.Tensor:
        return self.transform(decode_uint8(dataset, i))


@dataclass
class DeviceDecoder:
    """``gpu``: workers read JPEG bytes (others: uint8 pixels); ``join`` decodes a batch on ``device``."""

    transform: TensorTransform
    fallbacks: int = 0  # images that were not JPEG files, decoded on the CPU instead
    _warned: bool = field(default=False, repr=False)

    def item(self, dataset, i: int) -> tuple[bool, torch.Tensor]:
        from torchvision.io import read_file

        path = _file(dataset, i)
        if path is not None and path.suffix.lower() in JPEG_SUFFIXES:
            with _torchvision_io():
                return True, read_file(str(path))
        return False, decode_uint8(dataset, i)

    def collate(self, items: list[tuple[bool, torch.Tensor]]) -> tuple[list[bool], list[tuple[int, ...]], torch.Tensor]:
        """The chunk as one flat uint8 tensor (one shared-memory block per chunk, not one per image)."""
        flags = [is_jpeg for is_jpeg, _ in items]
        shapes = [tuple(data.shape) for _, data in items]
        return flags, shapes, torch.cat([data.reshape(-1) for _, data in items])

    def unpack(self, chunk) -> list[tuple[bool, torch.Tensor]]:
        flags, shapes, flat = chunk
        out, start = [], 0
        for is_jpeg, shape in zip(flags, shapes):
            n = math.prod(shape)
            out.append((bool(is_jpeg), flat[start:start + n].view(*shape)))
            start += n
        return out

    def join(self, pieces: Sequence[list], device: str | torch.device, pin: bool) -> torch.Tensor:
        """``float32 [b, 3, h, w]`` on ``device``: JPEGs decoded in one batched call, then resized and
        normalised there, images of one size together."""
        from torchvision.io import ImageReadMode, decode_jpeg

        items = [entry for piece in pieces for entry in piece]
        device = torch.device(device)
        jpegs = [data for is_jpeg, data in items if is_jpeg]
        with _torchvision_io():
            decoded = iter(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device) if jpegs else [])
        images = []
        for is_jpeg, data in items:
            if is_jpeg:
                images.append(next(decoded))
            else:
                self._fallback()
                images.append(data.to(device))
        out = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, image in enumerate(images):
            by_shape.setdefault(tuple(image.shape), []).append(k)
        for ks in by_shape.values():
            transformed = self.transform(torch.stack([images[k] for k in ks]))
            for k, row in zip(ks, transformed):
                out[k] = row
        return torch.stack(out)

    def _fallback(self) -> None:
        self.fallbacks += 1
        if not self._warned:
            self._warned = True
            warnings.warn("decode gpu: images that are not JPEG files are decoded on the CPU "
                          "(torchvision.io), then resized and normalised on the device", stacklevel=3)


def make_decoder(name: str, preprocess: Callable):
    """The decoder called ``name`` for a model whose open_clip transform is ``preprocess``."""
    check_decoder(name)
    if name == "pil":
        return PilDecoder(preprocess)
    if name == "pil-draft":
        return PilDecoder(preprocess, draft_side=input_side(preprocess))
    if name == "tensor":
        return TensorDecoder(preprocess, transform=tensor_transform(preprocess))
    return DeviceDecoder(tensor_transform(preprocess))
