"""How W is folded into the image tower's final linear map (backend-free).

An image feature is ``f = A x + b``: ``x`` the pre-projection features ``[n, width]``, ``A``
the final linear map, described by a ``FoldSite`` that each backend locates in its own
model. The patched tower computes ``W f``:

- kind "parameter", used as ``x @ P`` (open_clip VisionTransformer ``visual.proj``): ``P' = P Wᵀ``;
- kind "linear" (open_clip ModifiedResNet ``visual.attnpool.c_proj``, timm heads, transformers
  ``visual_projection``): ``weight' = W weight``, ``bias' = W bias``.

Folding is done in float64 and cast back to the checkpoint's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def site_tensors(model: torch.nn.Module, site: FoldSite) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: state[k].detach().clone() for k in site.keys}
