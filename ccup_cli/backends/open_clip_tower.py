"""Where an open_clip model keeps its final linear maps, on the image side and the text side.

``image_fold_site`` knows each open_clip image tower family, ``text_fold_site`` each text tower,
and ``locate_fold_site`` picks one for ``fold: image | text | auto`` (auto: the image side where
the image tower ends in a linear map, the text side otherwise). The rest of ccup sees only the
``fold.FoldSite`` these return; ``fold.identity_map`` looks past a site.
"""

from __future__ import annotations

from torch import nn

from ..errors import CheckpointError
from .fold import FoldSite, _get, identity_map

identity_projection = identity_map  # the name the image side has always used


def _linear_site(model: nn.Module, path: str, side: str = "image") -> FoldSite:
    layer = _get(model, path)
    return FoldSite(path, "linear", f"{path}.weight", f"{path}.bias" if layer.bias is not None else None,
                    layer.in_features, layer.out_features, side)


def _parameter_site(path: str, param: nn.Parameter, side: str) -> FoldSite:
    width, dim = param.shape
    return FoldSite(path, "parameter", path, None, width, dim, side)


class NoSite(CheckpointError):
    """A tower has no final linear map to fold into (the message says why)."""


def image_fold_site(model: nn.Module) -> FoldSite:
    """The final linear map of ``model.visual`` for each open_clip tower family, or ``NoSite``."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    if isinstance(visual, VisionTransformer):
        if isinstance(visual.proj, nn.Parameter):
            return _parameter_site("visual.proj", visual.proj, "image")
        if isinstance(visual.proj, nn.Linear):
            return _linear_site(model, "visual.proj")
        raise NoSite("unsupported tower: VisionTransformer without a projection (visual.proj is None)",
                     "fold on the text side: fold: text")
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
        pool = getattr(visual.trunk, "global_pool", None)
        how = " (it ends in attention pooling, as SigLIP does)" if pool == "map" else ""
        raise NoSite(f"unsupported tower: TimmModel without a final Linear (visual.head / trunk classifier){how}",
                     "fold on the text side: fold: text")
    kind = type(visual).__name__ if visual is not None else "no image tower"
    raise NoSite(f"unsupported tower: visual is {kind}; ccup folds into ViT, ModifiedResNet and timm towers",
                 "fold on the text side: fold: text")


def text_fold_site(model: nn.Module) -> FoldSite:
    """The final linear map of the text tower, or ``NoSite``.

    CLIP keeps it as ``text_projection`` (a Parameter ``[width, d]``, used as ``x @ P``, or a
    Linear); CustomTextCLIP and CoCa as ``text.text_projection``; an HF text tower as ``text.proj``
    (a Linear, or the last Linear of its MLP).
    """
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):
        owner, prefix = text, "text."
    elif text is None and hasattr(model, "text_projection"):
        owner, prefix = model, ""
    elif text is not None and hasattr(text, "proj"):  # HFTextEncoder
        proj = text.proj
        if isinstance(proj, nn.Linear):
            return _linear_site(model, "text.proj", "text")
        if isinstance(proj, nn.Sequential) and len(proj) and isinstance(proj[-1], nn.Linear):
            return _linear_site(model, f"text.proj.{len(proj) - 1}", "text")
        raise NoSite("unsupported text tower: its projection text.proj is not a Linear (proj_type none)",
                     "fold on the image side: fold: image")
    else:
        kind = type(text).__name__ if text is not None else "no text tower"
        raise NoSite(f"unsupported text tower: {kind}", "fold on the image side: fold: image")
    projection = getattr(owner, "text_projection", None)
    path = f"{prefix}text_projection"
    if isinstance(projection, nn.Parameter):
        return _parameter_site(path, projection, "text")
    if isinstance(projection, nn.Linear):
        return _linear_site(model, path, "text")
    raise NoSite(f"unsupported text tower: no text projection ({path} is None)", "fold on the image side: fold: image")


def locate_fold_site(model: nn.Module, fold: str = "auto") -> FoldSite:
    """The site for ``fold``: "image", "text", or "auto" (image where the image tower has a site).

    "auto" with neither side foldable names both reasons in one line.
    """
    if fold == "image":
        return image_fold_site(model)
    if fold == "text":
        return text_fold_site(model)
    try:
        return image_fold_site(model)
    except NoSite as image_err:
        try:
            return text_fold_site(model)
        except NoSite as text_err:
            raise CheckpointError(f"no fold site: {image_err.problem}; {text_err.problem}",
                                  "pick a model where either tower ends in a linear map") from text_err


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """What fine-tuning trains: the last block, final norm and projection of a ViT tower; the fold site elsewhere."""
    from open_clip.transformer import VisionTransformer

    visual = model.visual
    if isinstance(visual, VisionTransformer):
        last = len(visual.transformer.resblocks) - 1
        prefixes: tuple[str, ...] = (f"visual.transformer.resblocks.{last}.", "visual.ln_post.", "visual.proj")
    else:
        prefixes = (image_fold_site(model).path,)
    return {n: p for n, p in model.named_parameters() if n.startswith(prefixes)}
