"""Numeric precision of the encoders: ``fp32`` (default), ``fp16`` or ``bf16``.

Lower precision runs the image and text encoders under ``torch.autocast``; their outputs
are cast back to float32 before anything else sees them. The projector (covariances, the
solve, W) always stays float64, whatever the precision.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import SpecError

if TYPE_CHECKING:  # pragma: no cover - checking a name needs no torch
    import torch

PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_PRECISION = "fp32"


def check_precision(value: object, field: str = "precision") -> str:
    """The canonical precision name, or ``SpecError`` with one line naming ``field``."""
    if isinstance(value, str) and value.strip().lower() in PRECISIONS:
        return value.strip().lower()
    close = difflib.get_close_matches(str(value).lower(), PRECISIONS, n=1)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    raise SpecError(f'{field}: "{value}" is not one of {", ".join(PRECISIONS)}{hint}')


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision``; None for fp32 (no autocast)."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(check_precision(precision))


@contextlib.contextmanager
def encoder_precision(precision: str, device: str | torch.device) -> Iterator[None]:
    """Run the encoder calls inside under ``precision`` on ``device`` (a no-op for fp32).

    Wrap only encoder forward passes: float64 math inside an autocast region is left alone
    by autocast, but keeping the projector outside makes that explicit.
    """
    dtype = autocast_dtype(precision)
    if dtype is None:
        yield
        return
    import torch

    device_type = torch.device(device).type
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield
