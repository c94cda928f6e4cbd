"""The backend seam: one protocol for every model format, and the table that picks one.

A backend loads a model from ``(model, pretrained)`` and answers what the jobs ask of it:
the fold site, the preprocessing, image features with and without the final map, text
features for prompts, the parameters fine-tuning trains, the config files written beside
the weights, and its provenance. Jobs call this protocol and never ask which backend they
got; ``projector``, ``fold``, the metrics, the sweep and the writer know none of them.

Adding a backend: one module with a loader returning an object of this protocol, and one
row in ``BACKENDS`` saying which ``(model, pretrained)`` it claims.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import CheckpointError, DependencyError
from ..presets.defaults import EMBEDDED_PRETRAINED, LIT_MODELS
from .sources import transformers_source

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    # lazy: start-up time (the seam is read at the door)
    from .fold import FoldSite


class Backend(Protocol):
    """A loaded model, whatever its format (``open_clip.LoadedModel``, ``transformers.HFLoaded``)."""

    backend: str  # "open_clip", "transformers"
    model: nn.Module
    preprocess: Callable  # PIL image -> float tensor [3, H, W]
    preprocess_cfg: dict  # the settings behind preprocess, for the report
    model_name: str
    display_name: str
    pretrained: str | None
    checkpoint_path: Path | None
    checkpoint_sha256: str | None
    source_state_dict: dict[str, torch.Tensor]
    site: FoldSite  # where W goes: the image tower's final linear map, or the text tower's (fold.FoldSite.side)

    def select_fold(self, fold: str) -> FoldSite:
        """Set and return ``site`` for ``fold`` (auto, image, text); a one-line CheckpointError where there is none."""
        ...

    @property
    def cache_id(self) -> str | None: ...

    def encode_images(self, pixels: torch.Tensor, projected: bool = False) -> torch.Tensor:
        """Image features ``[n, d]``; with ``projected=False`` and an image-side site, those before it ``[n, width]``."""
        ...

    def encode_prompts(self, prompts: list[str], batch_size: int = 256,
                       progress: Callable[[int], None] | None = None) -> torch.Tensor: ...

    def supports_fast_text(self) -> bool: ...

    def trainable_parameters(self) -> dict[str, nn.Parameter]: ...

    def write_config_files(self, folder: Path) -> dict[str, Path]: ...

    def provenance(self) -> dict[str, Any]: ...


def _load_transformers(model: str | None, pretrained: str | None, device: str) -> Backend:
    # lazy: start-up time (the seam is read at the door)
    from .transformers import load_transformers_model

    return load_transformers_model(transformers_source(model, pretrained), device)


def _check_transformers() -> None:
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise DependencyError("this model is a transformers folder, and the transformers package is missing",
                              "pip install 'ccup[transformers]'")


def _load_lit(model: str | None, pretrained: str | None, device: str) -> Backend:
    # lazy: start-up time (the seam is read at the door)
    from .lit import assemble
    from .transformers import load_transformers_model

    if pretrained not in (None, EMBEDDED_PRETRAINED):
        raise CheckpointError(f"{model} ships its own weights; --pretrained {pretrained} cannot replace them",
                              f"drop --pretrained, or pass an unlearned {model} folder as --pretrained without --model")
    loaded = load_transformers_model(assemble(str(model)), device)
    loaded.display_name = str(model)
    return loaded


def _check_lit() -> None:
    from .lit import check_lit_extra

    check_lit_extra()


def _load_open_clip(model: str | None, pretrained: str | None, device: str) -> Backend:
    # lazy: start-up time (the seam is read at the door)
    from .open_clip import load_model

    return load_model(model, pretrained, device)


@dataclass(frozen=True)
class BackendEntry:
    name: str
    claims: Callable[[str | None, str | None], bool]  # (model, pretrained) -> is it mine? cheap, no torch
    load: Callable[[str | None, str | None, str], Backend]
    check: Callable[[], None] = lambda: None  # at the door: raise DependencyError when its package is missing


BACKENDS: list[BackendEntry] = [  # the first that claims a source loads it; open_clip takes the rest
    BackendEntry("transformers", lambda model, pretrained: transformers_source(model, pretrained) is not None,
                 _load_transformers, _check_transformers),
    BackendEntry("lit", lambda model, pretrained: model in LIT_MODELS, _load_lit, _check_lit),
    BackendEntry("open_clip", lambda model, pretrained: True, _load_open_clip),
]


def backend_for(model: str | None, pretrained: str | None) -> BackendEntry:
    """The table entry that loads ``(model, pretrained)``; its optional package is checked here."""
    entry = next(e for e in BACKENDS if e.claims(model, pretrained))
    entry.check()
    return entry


def load_backend(model: str | None, pretrained: str | None, device: str = "cpu") -> Backend:
    return backend_for(model, pretrained).load(model, pretrained, device)
