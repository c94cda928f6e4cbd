"""Where the image tower's final linear map lives, and how W is folded into it.

An open_clip image feature is ``f = A x + b``: ``x`` the pre-projection features
``[n, width]``, ``A`` the final linear map. The patched tower computes ``W f``:

- ``nn.Parameter`` used as ``x @ P`` (VisionTransformer ``visual.proj``): ``P' = P Wᵀ``;
- ``nn.Linear`` (ModifiedResNet ``visual.attnpool.c_proj``, timm ``visual.head.proj`` or
  the trunk's classifier): ``weight' = W weight``, ``bias' = W bias``.

Folding is done in float64 and cast back to the checkpoint's dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .errors import CheckpointError


@dataclass(frozen=True)
class FoldSite:
    """The image tower's final linear map: its module path and state-dict keys."""

    path: str  # e.g. "visual.proj" or "visual.attnpool.c_proj"
    kind: str  # "parameter" (x @ P) or "linear" (weight x + bias)
    weight_key: str
    bias_key: str | None
    in_features: int
    out_features: int

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.weight_key,) if self.bias_key is None else (self.weight_key, self.bias_key)


def _get(root: nn.Module, dotted: str):
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _linear_site(model: nn.Module, path: str) -> FoldSite:
    layer = _get(model, path)
    return FoldSite(path, "linear", f"{path}.weight", f"{path}.bias" if layer.bias is not None else None,
                    layer.in_features, layer.out_features)


def locate_fold_site(model: nn.Module) -> FoldSite:
    """The final linear map of ``model.visual`` for each open_clip tower family."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    if isinstance(visual, VisionTransformer):
        if isinstance(visual.proj, nn.Parameter):
            width, dim = visual.proj.shape
            return FoldSite("visual.proj", "parameter", "visual.proj", None, width, dim)
        if isinstance(visual.proj, nn.Linear):
            return _linear_site(model, "visual.proj")
        raise CheckpointError("unsupported tower: VisionTransformer without a projection (visual.proj is None)",
                              "pick a model whose image tower ends in a linear projection")
    if isinstance(visual, ModifiedResNet):
        return _linear_site(model, "visual.attnpool.c_proj")
    if isinstance(visual, TimmModel):
        head_proj = getattr(visual.head, "proj", None)
        if isinstance(head_proj, nn.Linear):
            return _linear_site(model, "visual.head.proj")
        mlp = getattr(visual.head, "mlp", None)
        if mlp is not None and isinstance(getattr(mlp, "fc2", None), nn.Linear):
            return _linear_site(model, "visual.head.mlp.fc2")
        classifier = visual.trunk.get_classifier() if hasattr(visual.trunk, "get_classifier") else None
        if isinstance(classifier, nn.Linear):
            for name, module in visual.trunk.named_modules():
                if module is classifier:
                    return _linear_site(model, f"visual.trunk.{name}")
        raise CheckpointError("unsupported tower: TimmModel without a final Linear (visual.head / trunk classifier)",
                              "pick a timm tower with timm_proj 'linear'")
    kind = type(visual).__name__ if visual is not None else "no image tower"
    raise CheckpointError(f"unsupported tower: visual is {kind}; ccup folds into ViT, ModifiedResNet and timm towers",
                          "pick a supported open_clip architecture")


@contextlib.contextmanager
def identity_projection(model: nn.Module, site: FoldSite) -> Iterator[None]:
    """Within the block, the tower's output is its pre-projection features ``[n, width]``.

    The final map is swapped for an exact identity (a ``width x width`` identity matrix,
    zero bias) and put back afterwards, whatever happens.
    """
    parent_path, _, attr = site.path.rpartition(".")
    parent = _get(model, parent_path)
    original = getattr(parent, attr)
    ref = original if isinstance(original, torch.Tensor) else original.weight
    eye = torch.eye(site.in_features, dtype=ref.dtype, device=ref.device)
    if site.kind == "parameter":
        replacement: nn.Module | nn.Parameter = nn.Parameter(eye, requires_grad=False)
    else:
        replacement = nn.Linear(site.in_features, site.in_features, bias=True).to(ref.device, ref.dtype)
        with torch.no_grad():
            replacement.weight.copy_(eye)
            replacement.bias.zero_()
    setattr(parent, attr, replacement)
    try:
        yield
    finally:
        setattr(parent, attr, original)


def fold(site: FoldSite, tensors: dict[str, torch.Tensor], W: torch.Tensor) -> dict[str, torch.Tensor]:
    """The fold-site tensors with ``W [d, d]`` folded in, in their original dtype and device."""
    weight = tensors[site.weight_key]
    w64 = W.to(device=weight.device, dtype=torch.float64)
    if site.kind == "parameter":
        out = {site.weight_key: (weight.double() @ w64.T).to(weight.dtype)}
    else:
        out = {site.weight_key: (w64 @ weight.double()).to(weight.dtype)}
        if site.bias_key is not None:
            bias = tensors[site.bias_key]
            out[site.bias_key] = (w64 @ bias.double()).to(bias.dtype)
    return out


def project(site: FoldSite, tensors: dict[str, torch.Tensor], pre_projection_features: torch.Tensor) -> torch.Tensor:
    """Apply the fold-site map given by ``tensors`` to ``pre_projection_features [n, width]``."""
    x = pre_projection_features.float()
    weight = tensors[site.weight_key].to(x.device, torch.float32)
    if site.kind == "parameter":
        return x @ weight
    y = x @ weight.T
    if site.bias_key is not None:
        y = y + tensors[site.bias_key].to(x.device, torch.float32)
    return y


def site_tensors(model: nn.Module, site: FoldSite) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: state[k].detach().clone() for k in site.keys}
