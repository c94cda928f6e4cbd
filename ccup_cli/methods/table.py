"""The table of unlearning methods: one entry per method, read by spec, api, sweep and jobs.

A closed-form method maps the forget and retain text embeddings to its full-strength image-side
map ``W [d, d]`` (float64); strength α is then the blend ``I − α(I − W)``. Whatever else a method
may ask of the model (text encoding of a phrase, synthetic prototypes, reference-image features,
the device) reaches it in one ``MethodContext``. A method that needs labelled images
(``finetune``) has no ``solve`` and runs as its own job.

Adding a method: write its math (``projector.py`` or its own module) and add one ``Method``
entry to ``METHODS``. Importing this module costs no torch; ``solve`` imports what it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..text.embeddings import TextEmbeddings


@dataclass(frozen=True)
class Method:
    """One unlearning method: what it reads, and how it builds its map."""

    name: str
    summary: str
    params: tuple[str, ...]  # spec fields the method reads; they go into the report
    forget_side: str | None  # "per-template" or "per-class (template average)"; None: needs no text map
    uses_retain: bool
    solve: Callable[..., torch.Tensor] | None = None  # (forget, retain, params, context) -> W [d, d]
    needs_images: bool = False
    needs_references: bool = False  # reads unlabelled reference images per domain (spec domain_images)

    @property
    def closed_form(self) -> bool:
        return self.solve is not None

    def embedding_mode(self) -> dict[str, str]:
        return {"forget": self.forget_side or "unused",
                "retain": "per-template" if self.uses_retain else "unused"}


Encode = Callable[[list[str]], "torch.Tensor"]  # prompts -> text features [n, d]
# (targets [k, d], params) -> image-side prototype features [k * per_target, d] of the original model
Synthesize = Callable[["torch.Tensor", dict], "torch.Tensor"]


@dataclass
class ReferenceFeatures:
    """What the reference hook hands a method: unlabelled reference images per domain, encoded.

    ``features``: ``{domain: [n_d, d]}`` image features of the original model (after its final
    map); ``record``: per domain, the folder, image count and file-list sha256 (for the report);
    ``classifier``: optional ``(classnames, templates) -> [C, d]`` class embeddings through the
    caller's text cache; ``notes``: what the solve reports back (its strength, its mode).
    """

    features: dict[str, Any]
    record: dict[str, dict] = field(default_factory=dict)
    classifier: Callable[[list[str], list[str]], Any] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


# () -> the reference images' features, encoded on first call (domain-edit)
Reference = Callable[[], ReferenceFeatures]


@dataclass(frozen=True)
class MethodContext:
    """Everything a method's ``solve`` may ask of the model beyond the text embeddings.

    Each hook is None where the caller cannot offer it (``ccup_cli.unlearn`` without
    ``preprocess`` cannot synthesize); a method that needs a missing hook raises ValueError.
    The session builds one per run (``run.session.Session.method_context``).
    """

    device: Any = None  # where the float64 solve runs; None: the embeddings' device
    encode: Encode | None = None  # text features of free phrases (a sink phrase)
    synthesize: Synthesize | None = None  # image-side prototypes from text targets (ccup-proto)
    reference: Reference | None = None  # reference-image features per group (domain-edit; reference_images)
    erase: str = "none"  # what follows the map: "probe" (erasure.py, fitted on the references) or "none"


def _ccup(forget: TextEmbeddings, retain: TextEmbeddings, params: dict[str, Any],
          context: MethodContext) -> torch.Tensor:
    # lazy: start-up time (the table imports without torch)
    from .projector import ccup_map
    from .sinks import resolve_sink

    retain_rows = retain.per_template if len(retain.classnames) else None
    def solve(targets):
        return ccup_map(forget.per_template, retain_rows, params["lambda_retain"], params["lambda_identity"],
                        context.device, sink_embeddings=targets)

    if params["sink"] == "reference-chance":
        # lazy: start-up time (the table imports without torch)
        from .references import reference_calibration, solve_with_references

        references, calibration = reference_calibration(forget, retain, context)
        W, _, facts = solve_with_references(solve, forget.per_template, retain_rows, forget.templates, calibration,
                                            context.erase == "probe", context.encode)
        references.notes["sink"] = facts
        return W
    return solve(resolve_sink(params["sink"], forget.per_template, retain_rows, forget.templates, context.encode,
                              solve))


def _nullspace(forget: TextEmbeddings, retain: TextEmbeddings, params: dict[str, Any],
               context: MethodContext) -> torch.Tensor:
    # lazy: start-up time (the table imports without torch)
    from .projector import nullspace_map

    return nullspace_map(forget.per_class, params["energy"], context.device)[0]


def _ccup_proto(forget: TextEmbeddings, retain: TextEmbeddings, params: dict[str, Any],
                context: MethodContext) -> torch.Tensor:
    import torch

    # lazy: start-up time (the table imports without torch)
    from .bilinear import bilinear_map

    if context.synthesize is None:
        raise ValueError("ccup-proto synthesizes image prototypes and needs the model's image tower "
                         "(run it through `ccup unlearn` or `ccup_cli.unlearn`)")
    heads = torch.cat([forget.per_class, retain.per_class]) if len(retain.classnames) else forget.per_class
    keys = forget.class_keys + (retain.class_keys if len(retain.classnames) else [])
    per = params["prototypes_per_group"]
    protos = context.synthesize(heads, params)
    forget_rows = [i < len(forget.classnames) for i in range(len(heads)) for _ in range(per)]
    return bilinear_map(heads, keys, protos, [k for k in keys for _ in range(per)], forget_rows,
                        params["lambda_retain"], params["lambda_identity"], context.device)


def _domain_edit(forget: TextEmbeddings, retain: TextEmbeddings, params: dict[str, Any],
                 context: MethodContext) -> torch.Tensor:
    import torch.nn.functional as F

    # lazy: start-up time (the table imports without torch)
    from ..text.encode import class_embeddings
    from ..text.templates import build_prompts, load_templates
    from .domain_edit import domain_edit_map

    if context.reference is None:
        raise ValueError("domain-edit reads unlabelled reference images per domain; give domain_images "
                         "(--domain-images, or reference_features= in ccup_cli.unlearn)")
    references, encode = context.reference(), context.encode
    if encode is None and references.classifier is None:
        raise ValueError("domain-edit encodes the classifier's class names and needs the text tower")
    if not params["forget_domains"]:
        raise ValueError("domain-edit forgets in named domains; give forget_domains")
    forget_keys = list(dict.fromkeys(forget.class_keys))
    classes = list(dict.fromkeys(forget_keys + (retain.class_keys if len(retain.classnames) else [])))
    templates = load_templates(params["templates"]) if isinstance(params["templates"], str) else \
        list(params["templates"])
    heads = references.classifier(classes, templates) if references.classifier is not None else \
        class_embeddings(encode(build_prompts(classes, templates)), len(classes), len(templates))
    edit = domain_edit_map(F.normalize(heads.double(), dim=-1), [classes.index(k) for k in forget_keys],
                           references.features, list(params["forget_domains"]), device=context.device)
    references.notes.update({"mode": edit.mode, "strength": edit.strength,
                             "target_class": None if edit.target_class is None else classes[edit.target_class],
                             "read_on_references": {d: {"mean": m, "std": s}
                                                    for d, (m, s) in edit.read_on_references.items()}})
    return edit.W


METHODS: dict[str, Method] = {
    "ccup": Method("ccup", "CCUP closed form (arXiv 2512.14137), forget prompts sent to a sink",
                   ("lambda_retain", "lambda_identity", "sink"), "per-template", True, _ccup),
    "nullspace": Method("nullspace", "I − U Uᵀ over the forget class embeddings", ("energy",),
                        "per-class (template average)", False, _nullspace),
    "ccup-proto": Method("ccup-proto", "experimental: logit-level closed form over text heads and synthetic image "
                         "prototypes (bilinear.py, prototypes.py); measured worse than ccup on domains",
                         ("lambda_retain", "lambda_identity", "prototype_steps", "prototypes_per_group"),
                         "per-class (group mean)", True, _ccup_proto),
    "domain-edit": Method("domain-edit", "forget classes in named domains: a rank-one logit edit whose read "
                          "direction comes from unlabelled reference images per domain (domain_edit.py)",
                          ("templates", "forget_domains", "domain_images"), "per-class (group mean)", True,
                          _domain_edit, needs_references=True),
    "finetune": Method("finetune", "gradient baseline on labelled train images",
                       ("finetune_steps", "finetune_lr", "finetune_batch_size", "finetune_seed"),
                       None, False, None, needs_images=True),
}


def method_names(closed_form_only: bool = False) -> list[str]:
    return [m.name for m in METHODS.values() if m.closed_form or not closed_form_only]


def get_method(name: str) -> Method:
    """The table entry for ``name``; a ValueError names the known methods."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f'unknown method "{name}"; use one of {", ".join(METHODS)}') from None


def method_params(method: Method, values: Any) -> dict[str, Any]:
    """The method's parameters read from ``values`` (a spec, or any object with those attributes)."""
    return {p: getattr(values, p) for p in method.params}


def solve_full_map(name: str, forget: TextEmbeddings, retain: TextEmbeddings, params: dict[str, Any],
                   context: MethodContext | None = None) -> torch.Tensor:
    """The full-strength map ``W [d, d]`` float64 of a closed-form method (``context``: its hooks)."""
    method = get_method(name)
    if method.solve is None:
        raise ValueError(f"method {name} has no closed form; it runs as its own job")
    return method.solve(forget, retain, params, context or MethodContext())


def build_projector(name: str, forget: TextEmbeddings, retain: TextEmbeddings, alpha: float,
                    params: dict[str, Any], context: MethodContext | None = None):
    """The ``projector.Projector`` of a closed-form method at strength ``alpha``."""
    # lazy: the table imports without torch (start-up time)
    from .projector import projector_at

    return projector_at(solve_full_map(name, forget, retain, params, context), alpha, name, params)


def split_variant(entry: str) -> tuple[str, dict[str, Any]]:
    """A sweep entry ``method`` or ``ccup:SINK`` -> (method name, the parameters it overrides)."""
    name, _, sink = entry.partition(":")
    return name, ({"sink": sink} if sink else {})
