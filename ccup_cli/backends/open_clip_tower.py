"""Where an open_clip image tower keeps its final linear map, and how to look past it.

``locate_fold_site`` knows each open_clip tower family; ``identity_projection`` swaps the map
for an exact identity so the tower returns its pre-projection features. The rest of ccup
sees only the ``fold.FoldSite`` these return.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import CheckpointError
from .fold import FoldSite


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




def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """What fine-tuning trains: the last block, final norm and projection of a ViT tower; the fold site elsewhere."""
    from open_clip.transformer import VisionTransformer

    visual = model.visual
    if isinstance(visual, VisionTransformer):
        last = len(visual.transformer.resblocks) - 1
        prefixes: tuple[str, ...] = (f"visual.transformer.resblocks.{last}.", "visual.ln_post.", "visual.proj")
    else:
        prefixes = (locate_fold_site(model).path,)
    return {n: p for n, p in model.named_parameters() if n.startswith(prefixes)}
