"""How W is folded into a final linear map, on the image side or the text side (backend-free).

A zero-shot logit is ``tᵀ W f = (Wᵀ t)ᵀ f``: the same map can be folded into the image tower's
final linear map (``f → W f``) or into the text tower's (``t → Wᵀ t``). A feature is
``y = A x + b``: ``x`` the features before the fold ``[n, width]``, ``A`` the final linear map,
described by a ``FoldSite`` that each backend locates in its own model. With ``M = W`` on the
image side and ``M = Wᵀ`` on the text side, the patched tower computes ``M y``:

- kind "parameter", used as ``x @ P`` (open_clip ViT ``visual.proj``, CLIP ``text_projection``): ``P' = P Mᵀ``
  (image: ``P Wᵀ``; text: ``P W``);
- kind "linear" (open_clip ModifiedResNet ``visual.attnpool.c_proj``, timm heads, SigLIP
  ``text.text_projection``, transformers ``visual_projection``, ``text_projection``, ``text_model.head``):
  ``weight' = M weight``, ``bias' = M bias``.

Folding is done in float64 and cast back to the checkpoint's dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

SIDES = ("image", "text")
FOLD_CHOICES = ("auto", "image", "text")


@dataclass(frozen=True)
class FoldSite:
    """A tower's final linear map: its module path, state-dict keys and side."""

    path: str  # e.g. "visual.proj", "visual.attnpool.c_proj", "text.text_projection"
    kind: str  # "parameter" (x @ P) or "linear" (weight x + bias)
    weight_key: str
    bias_key: str | None
    in_features: int
    out_features: int
    side: str = "image"  # "image": f -> W f; "text": t -> Wᵀ t

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.weight_key,) if self.bias_key is None else (self.weight_key, self.bias_key)


def fold(site: FoldSite, tensors: dict[str, torch.Tensor], W: torch.Tensor) -> dict[str, torch.Tensor]:
    """The fold-site tensors with ``W [d, d]`` folded in, in their original dtype and device."""
    weight = tensors[site.weight_key]
    w64 = W.to(device=weight.device, dtype=torch.float64)
    m64 = w64.T if site.side == "text" else w64
    if site.kind == "parameter":
        out = {site.weight_key: (weight.double() @ m64.T).to(weight.dtype)}
    else:
        out = {site.weight_key: (m64 @ weight.double()).to(weight.dtype)}
        if site.bias_key is not None:
            bias = tensors[site.bias_key]
            out[site.bias_key] = (m64 @ bias.double()).to(bias.dtype)
    return out


# The LayerNorm right before a parameter-kind site without a bias, by site path: an affine map's
# offset is carried through it (``offset_carrier``). open_clip VisionTransformer ``ln_post``,
# transformers CLIP ``vision_model.post_layernorm``.
NORM_BEFORE = {"visual.proj": "visual.ln_post", "visual_projection": "vision_model.post_layernorm"}
CARRIER_MIN = 1e-3  # |Σ β/γ| below this (per unit of width) carries the offset too noisily in float32


class NoOffsetSite(ValueError):
    """The site cannot take an affine map's offset (no bias, and no LayerNorm that carries it)."""


def offset_carrier(model: nn.Module, site: FoldSite) -> torch.Tensor | None:
    """``g [width]`` float64 with ``gᵀ x = 1`` for every feature ``x`` before the site, or None where the
    site has a bias of its own (the offset goes there). A LayerNorm's output is ``γ ⊙ n + β`` with ``n``
    summing to zero over the width, so ``g = (1/γ) / Σ(β/γ)`` reads a constant 1 from any input: an
    offset ``c`` is then exactly the rank-one term ``c gᵀ`` in the final map, and no other tensor changes.
    Raises ``NoOffsetSite`` where neither works."""
    if site.bias_key is not None:
        return None
    norm_path = NORM_BEFORE.get(site.path)
    norm = None
    if norm_path is not None:
        with contextlib.suppress(AttributeError):
            norm = _get(model, norm_path)
    if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
        raise NoOffsetSite(f"the final map {site.path} has no bias and no LayerNorm before it to carry an affine "
                           "offset")
    gamma, beta = norm.weight.detach().double().cpu(), norm.bias.detach().double().cpu()
    if bool((gamma.abs() < 1e-6 * gamma.abs().max()).any()):
        raise NoOffsetSite(f"the LayerNorm {norm_path} before {site.path} has a zero weight, which cannot carry "
                           "an affine offset")
    total = float((beta / gamma).sum())
    if abs(total) < CARRIER_MIN * len(gamma) ** 0.5:
        raise NoOffsetSite(f"the LayerNorm {norm_path} before {site.path} has a bias too close to zero to carry "
                           "an affine offset")
    return (1.0 / gamma) / total


def fold_affine(site: FoldSite, tensors: dict[str, torch.Tensor], W: torch.Tensor, offset: torch.Tensor,
                carrier: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The fold-site tensors with the affine image-side map ``y -> W y + offset`` folded in.

    ``W [d, d]``, ``offset [d]``; ``carrier``: ``offset_carrier`` of the site (None: the site's own bias
    takes the offset). Image side only. Only the fold-site tensors change."""
    if site.side != "image":
        raise NoOffsetSite("an affine map acts on image features; this model folds on the text side")
    out = fold(site, tensors, W)
    c = offset.detach().double()
    if carrier is None:
        bias = out[site.bias_key]
        out[site.bias_key] = (bias.double() + c.to(bias.device)).to(bias.dtype)
        return out
    weight = out[site.weight_key]
    g = carrier.to(weight.device, torch.float64)
    if site.kind == "parameter":  # x @ P: P [width, d] gains g cᵀ
        out[site.weight_key] = (weight.double() + g[:, None] * c.to(weight.device)[None, :]).to(weight.dtype)
    else:  # weight [d, width] gains c gᵀ
        out[site.weight_key] = (weight.double() + c.to(weight.device)[:, None] * g[None, :]).to(weight.dtype)
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


def _get(root: nn.Module, dotted: str):
    obj = root
    for part in filter(None, dotted.split(".")):
        obj = getattr(obj, part)
    return obj


@contextlib.contextmanager
def identity_map(model: nn.Module, site: FoldSite) -> Iterator[None]:
    """Within the block, the site's tower returns its features before the fold ``[n, width]``.

    The final map is swapped for an exact identity (a ``width x width`` identity matrix,
    zero bias) and put back afterwards, whatever happens. Works on any ``nn.Module`` whose
    site is an attribute (a Parameter or a Linear), whatever the backend.
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
