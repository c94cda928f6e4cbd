"""``unlearn``: the library entry point for an in-memory open_clip model.

    import open_clip, ccup_cli
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained="openai")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    result = ccup_cli.unlearn(model, tokenizer, forget=["cat", "dog"], alpha=0.9)
    result.model  # a patched copy (or the same model with inplace=True)

``unlearn`` encodes the prompts and calls ``methods.apply.apply_unlearning``, the lower-level
step the unlearn job shares, with embeddings, fold-site tensors and a ``MethodContext``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .backends.fold import NoOffsetSite, site_tensors
from .backends.open_clip_tower import locate_fold_site
from .data.reference_images import DEPLOYMENT, MIN_REFERENCE_IMAGES
from .methods.apply import UnlearnResult, apply_unlearning
from .methods.erasure import ERASE_CHOICES, concept_erasure_available
from .methods.prompt_sides import build_sides, domain_problems, embed_side, load_domains
from .methods.prototypes import frozen_weights, pixel_geometry, synthesize
from .methods.sinks import REFERENCE_SINK
from .methods.table import METHODS, MethodContext, ReferenceFeatures, get_method
from .presets import defaults
from .text.embeddings import TextEmbeddings, default_retain, embed_forget_and_retain
from .text.encode import encode_prompts
from .text.templates import load_templates

__all__ = ["UnlearnResult", "apply_unlearning", "unlearn"]


def _eval_mode_encoder(model: nn.Module, tokenizer):
    """``encode(prompts, batch_size, progress)`` for an in-memory open_clip model, run in eval mode."""

    def encode(prompts, batch_size: int = 256, progress=None) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            return encode_prompts(model, tokenizer, prompts, batch_size, progress)
        finally:
            model.train(was_training)

    return encode


def _templates(value: str | Sequence[str]) -> list[str]:
    return load_templates(value) if isinstance(value, str) else list(value)


def unlearn(
    model: nn.Module,
    tokenizer,
    forget: Sequence[str] = (),
    retain: Sequence[str] | None = None,
    alpha: float = 1.0,
    method: str = "ccup",
    templates: str | Sequence[str] = defaults.FORGET_TEMPLATES,
    retain_templates: str | Sequence[str] = defaults.RETAIN_TEMPLATES,
    lambda_retain: float = defaults.LAMBDA_RETAIN,
    lambda_identity: float = defaults.LAMBDA_IDENTITY,
    energy: float = defaults.ENERGY,
    sink: str | None = None,
    inplace: bool = False,
    forget_domains: Sequence[str] = (),
    domains: str | dict[str, list[str]] | None = None,
    forget_prompts: Sequence[str] = (),
    retain_prompts: Sequence[str] = (),
    preprocess=None,
    prototype_steps: int = defaults.PROTOTYPE_STEPS,
    prototypes_per_group: int = defaults.PROTOTYPES_PER_GROUP,
    reference_features: dict[str, torch.Tensor] | None = None,
    fold: str = "auto",
    reference_images: torch.Tensor | None = None,
    erase: str = "none",
) -> UnlearnResult:
    """Make ``model`` forget ``forget`` by folding a closed-form map into its image tower (or its text tower).

    ``retain`` defaults to ImageNet-1k class names less the forget classes. ``templates``
    and ``retain_templates`` are a set name (openai, simple, photo), a file, or a list of
    ``"{}"`` strings. ``method`` is a closed-form entry of ``methods.METHODS`` (ccup,
    ccup-proto, nullspace); each reads its own parameters among λ_retain, λ_identity, sink,
    energy and the prototype settings. ``sink`` (ccup) says where the forget prompts go:
    "zero" is the paper's method, whose text search still finds the class; the default takes
    it off the top of its search and avoids it at the bottom (``sinks.py``).

    Narrower forgetting (``prompt_sides.build_sides``): ``domains`` (a preset name, a YAML file
    or a ``{domain: templates}`` dict) with ``forget_domains`` forgets the classes only in those
    domains (every retain class, when ``forget`` is empty); ``forget_prompts`` and
    ``retain_prompts`` are added to the sides as they stand. ``method="ccup-proto"`` also needs
    ``preprocess`` (the model's image transform) to synthesize its image prototypes.
    ``method="domain-edit"`` needs ``reference_features``: ``{domain: [n, d]}`` image features
    (``model.encode_image``) of a few unlabelled images of every domain in ``domains``.

    ``reference_images`` (``[n, d]``, ``model.encode_image`` of a few hundred unlabelled images from
    where the model is deployed, at least ``MIN_REFERENCE_IMAGES``) calibrates the sink on them:
    ``sink`` then defaults to "reference-chance", which puts each forget class at chance in its own
    text search on those images (``methods/references.py``). ``erase="probe"`` adds a linear erasure
    (LEACE on the original model's zero-shot pseudo-labels; needs ``concept-erasure``) after the map,
    in the same final map. Neither removes what a probe trained on labelled images can decode.

    ``fold`` says where W goes: "image" (``f → W f`` in the image tower's final linear map),
    "text" (``t → Wᵀ t`` in the text tower's), or "auto" (image where the image tower ends in a
    linear map, text otherwise, as for SigLIP). Zero-shot logits ``tᵀ W f`` are the same either way.
    """
    forget = list(forget)
    if not forget and not forget_domains and not forget_prompts:
        raise ValueError("forget must name at least one class (or give forget_domains or forget_prompts)")
    sink, references = _reference_choices(sink, reference_images, reference_features, erase, method)
    entry = get_method(method)
    if not entry.closed_form:
        raise ValueError(f"method {method} needs labelled images; run it with `ccup unlearn --method {method}`")
    retain = default_retain(forget) if retain is None else list(retain)
    site = locate_fold_site(model, fold)
    if erase == "probe" and site.side == "text":
        raise ValueError("erase='probe' changes image features, and this model takes the map in its text tower; "
                         "drop erase or fold='image'")
    encode = _eval_mode_encoder(model, tokenizer)
    if domains is not None or forget_domains or forget_prompts or retain_prompts:
        forget_emb, retain_emb = _prompt_side_embeddings(encode, forget, retain, templates, retain_templates,
                                                         domains, forget_domains, forget_prompts, retain_prompts)
    else:
        forget_emb, retain_emb = embed_forget_and_retain(encode, forget, retain, _templates(templates),
                                                         _templates(retain_templates))
    values = {"lambda_retain": lambda_retain, "lambda_identity": lambda_identity, "energy": energy, "sink": sink,
              "prototype_steps": prototype_steps, "prototypes_per_group": prototypes_per_group,
              "templates": templates if isinstance(templates, str) else list(templates),
              "forget_domains": list(forget_domains), "domain_images": None}
    params = {p: values[p] for p in entry.params}
    synthesizer = _synthesizer(model, preprocess) if preprocess is not None else None
    reference = None
    if references:
        given = ReferenceFeatures(references)
        reference = lambda: given  # noqa: E731
    context = MethodContext(encode=encode, synthesize=synthesizer, reference=reference, erase=erase)
    try:
        return apply_unlearning(model, site, site_tensors(model, site), forget_emb, retain_emb, method, alpha, params,
                                inplace, context=context)
    except NoOffsetSite as err:
        raise ValueError(f"erase='probe' cannot be folded into this tower: {err}") from None


def _reference_choices(sink, reference_images, reference_features, erase, method) -> tuple[str, dict]:
    """The sink to use and the reference features by group, checked (ValueError in one line), with the
    CLI's rules (``spec.schema.reference_problems``)."""
    if erase not in ERASE_CHOICES:
        raise ValueError(f"erase must be one of {', '.join(ERASE_CHOICES)}, got {erase!r}")
    if reference_images is not None and method != "ccup" and erase == "none":
        raise ValueError(f"reference_images: method {method} does not read them (ccup calibrates its sink on them); "
                         "add erase='probe', use method='ccup', or drop reference_images")
    if erase == "probe" and method in METHODS and METHODS[method].needs_references:
        raise ValueError(f"erase='probe' does not follow method {method}; use ccup or nullspace")
    references = dict(reference_features or {})
    if reference_images is not None:
        if not isinstance(reference_images, torch.Tensor) or reference_images.dim() != 2:
            raise ValueError("reference_images must be a [n, d] tensor of image features (model.encode_image)")
        if len(reference_images) < MIN_REFERENCE_IMAGES:
            raise ValueError(f"reference_images holds {len(reference_images)} images; give at least "
                             f"{MIN_REFERENCE_IMAGES} (a few hundred is better)")
        references[DEPLOYMENT] = reference_images.detach()
    sink = sink if sink is not None else (REFERENCE_SINK if reference_images is not None else defaults.SINK)
    if reference_images is None and (sink == REFERENCE_SINK or erase == "probe"):
        what = "sink='reference-chance'" if sink == REFERENCE_SINK else "erase='probe'"
        raise ValueError(f"{what} reads unlabelled reference images; give reference_images=[n, d] image features")
    if erase == "probe" and not concept_erasure_available():
        raise ValueError("erase='probe' needs the concept-erasure package: pip install 'ccup[audit]'")
    return sink, references


def _prompt_side_embeddings(encode, forget, retain, templates, retain_templates, domains, forget_domains,
                            forget_prompts, retain_prompts) -> tuple[TextEmbeddings, TextEmbeddings]:
    """Both sides built by ``prompt_sides.build_sides`` and embedded (groups as classes)."""
    table = load_domains(domains) if isinstance(domains, str) else (dict(domains) if domains else None)
    if table is not None and forget_domains:
        problems = domain_problems(forget_domains, table)
        if problems:
            raise ValueError("; ".join(problems))
    sides = build_sides(forget, retain, _templates(templates), _templates(retain_templates), retain, table,
                        forget_domains, forget_prompts, retain_prompts)
    cached = lambda prompts: (encode(prompts), False)  # noqa: E731
    forget_emb, retain_emb = embed_side(cached, sides[0]), embed_side(cached, sides[1])
    if retain_emb is None:
        empty = torch.empty(0, forget_emb.per_class.shape[1])
        retain_emb = TextEmbeddings([], ["{}"], empty, empty)
    return forget_emb, retain_emb


def _synthesizer(model: nn.Module, preprocess):
    """``methods.Synthesize`` for an in-memory open_clip model (ccup-proto), run in eval mode."""
    size, mean, std = pixel_geometry(preprocess)

    def run(targets: torch.Tensor, params: dict) -> torch.Tensor:
        with frozen_weights(model):
            return synthesize(model.encode_image, targets, size, mean, std, per_target=params["prototypes_per_group"],
                              steps=params["prototype_steps"], device=next(model.parameters()).device)

    return run
