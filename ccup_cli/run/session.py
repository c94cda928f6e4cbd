"""A loaded model and what every job derives from it once: fold site, text embeddings, image features.

Only one final linear map ever changes, the fold site. On the image side, images are encoded
once, up to the features *before* that map; on the text side, images are encoded once as they
are (the image tower does not change) and the classifier's prompts up to the features before
the text tower's map. The original model, the patched model and every strength are computed
from those features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..backends.base import Backend, load_backend
from ..backends.features import encode_pre_projection, feature_cache_key
from ..backends.fold import FoldSite, identity_map, project, site_tensors
from ..data.dataset import EvalDataset
from ..data.reference_images import reference_datasets, reference_record
from ..methods.prompt_sides import embed_side, forgotten_classes
from ..methods.prototypes import frozen_weights, pixel_geometry, synthesize
from ..methods.table import MethodContext, ReferenceFeatures
from ..runtime.distributed import World, cached_collective, cached_gather, init_if_needed, rank_device
from ..runtime.precision import encoder_precision
from ..runtime.progress import step_counter
from ..text.embeddings import TextEmbeddings, default_retain, embed_classes, embed_forget_and_retain
from ..text.encode import cached_encode_prompts, class_embeddings, text_cache_key
from ..text.templates import build_prompts
from .options import RunOptions
from .provenance import PhaseTimer
from .sweep import SweepInputs
from .vocabulary import Choices, choose_sides

if TYPE_CHECKING:  # pragma: no cover
    from .door import Plan


@dataclass
class Features:
    """What ``Session.features`` computed from a plan, once."""

    forget: TextEmbeddings
    retain: TextEmbeddings
    retain_names: list[str]  # the retain classes as resolved (spec, dataset, or ImageNet names)
    forget_names: list[str]  # the classes of the forget split (every class of a forgotten domain, too)
    inputs: SweepInputs | None  # image features, classifier, fold site: None without a dataset
    choices: Choices | None = None  # how the class sides were chosen (concepts, near names); None with prompt sides


@dataclass
class Session:
    """One model, loaded once, with its fold site and the fold-site tensors as stored."""

    loaded: Backend  # models.LoadedModel (open_clip) or hf_backend.HFLoaded (transformers)
    site: FoldSite
    original: dict[str, torch.Tensor]  # fold-site tensors as the checkpoint stores them
    options: RunOptions
    device: str
    timer: PhaseTimer
    world: World = field(default_factory=World)  # the torchrun ranks (one without torchrun)

    @property
    def cache_id(self) -> str | None:
        """What caches key on; None with --no-cache or random init (never cached)."""
        return self.loaded.cache_id if self.options.use_cache else None

    @property
    def text_cache_name(self) -> str:
        """The model's name in text-cache keys; a lower encoder precision is part of it."""
        precision = self.options.precision
        return self.loaded.model_name if precision == "fp32" else f"{self.loaded.model_name}|{precision}"

    def _text_precision(self):
        return encoder_precision(self.options.precision, self.device)

    def _cached_text(self, encode, prompts, key, batch_size: int = 256, progress=None):
        """Text features through the cache; under torchrun each rank encodes its share, all get the rows.

        A backend without ``encode_prompts_across_ranks`` encodes every prompt on every rank.
        """
        if not self.world.distributed:
            return cached_encode_prompts(encode, prompts, key, batch_size, progress)
        across = getattr(self.loaded, "encode_prompts_across_ranks", None)
        run = (lambda: across(prompts, batch_size)) if across else (lambda: encode(prompts, batch_size).float().cpu())
        return cached_collective("text", key, len(prompts), run)

    def embed_sides(self, forget: Sequence[str], retain: Sequence[str], templates: Sequence[str],
                    retain_templates: Sequence[str]) -> tuple[TextEmbeddings, TextEmbeddings]:
        with self.timer("text"), self._text_precision():
            return embed_forget_and_retain(self.loaded.encode_prompts, forget, retain, templates,
                                           retain_templates, self.cache_id, self.text_cache_name,
                                           self.options.progress, cache=self._cached_text)

    def embed_prompt_sides(self, forget_side, retain_side) -> tuple[TextEmbeddings, TextEmbeddings]:
        """Embeddings of ``prompt_sides.PromptSide`` sides (domains, free prompts); groups as classes."""

        def encode_cached(prompts: list[str]):
            key = text_cache_key(self.cache_id, self.text_cache_name, prompts) if self.cache_id else None
            return self._cached_text(self.loaded.encode_prompts, prompts, key, self.options.batch_size)

        with self.timer("text"), self._text_precision():
            forget = embed_side(encode_cached, forget_side)
            retain = embed_side(encode_cached, retain_side)
        if retain is None:
            empty = torch.empty(0, forget.per_class.shape[1])
            retain = TextEmbeddings([], ["{}"], empty, empty)
        return forget, retain

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Unnormalised text features ``[n, d]`` of free prompts (a sink phrase in the templates)."""
        with self._text_precision():
            return self.loaded.encode_prompts(prompts, self.options.batch_size).float()

    def synthesize_prototypes(self, targets: torch.Tensor, params: dict) -> torch.Tensor:
        """Synthetic image prototypes of the original model (``prototypes.synthesize``) for ccup-proto.

        Called before the fold, so the final map is still the checkpoint's. Weights are frozen
        for the duration; only the input pixels are optimised.
        """
        size, mean, std = pixel_geometry(self.loaded.preprocess)
        with self.timer("prototypes"), frozen_weights(self.loaded.model):
            return synthesize(lambda px: self.loaded.encode_images(px, projected=True), targets, size, mean, std,
                              per_target=params["prototypes_per_group"], steps=params["prototype_steps"],
                              device=self.device)

    def method_context(self, references: dict | None = None, erase: str = "none") -> MethodContext:
        """What a method may ask of this model (``methods.table.MethodContext``), one object.

        ``references`` (``{group: folder}``, the plan's checked ``domain_images`` or ``reference_images``)
        becomes the reference hook: the images are encoded on its first call, once. ``erase``: the step
        after the map (``erase: probe``)."""
        hook = None
        if references:
            encoded: list = []

            def hook():
                if not encoded:
                    encoded.append(self.reference_features(references))
                return encoded[0]

        return MethodContext(device=self.device, encode=self.encode_text, synthesize=self.synthesize_prototypes,
                             reference=hook, erase=erase)

    def features(self, plan: Plan) -> Features:
        """The plan turned into features, once: both text sides and, with a dataset, the image features
        and the classifier (``SweepInputs``) that the metrics at any strength read."""
        spec, dataset = plan.spec, plan.dataset
        classnames = dataset.classnames if dataset else None
        choices = None
        if plan.sides is not None:  # domains or free prompts (prompt_sides.py)
            retain_names = spec.retain if spec.retain is not None else default_retain(spec.forget, classnames)
            forget, retain = self.embed_prompt_sides(*plan.sides)
            forget_names = forgotten_classes(spec.forget, spec.forget_domains, classnames or [])
        else:  # concepts and the default vocabulary's near names are decided here (vocabulary.py)
            choices = choose_sides(self, plan)
            forget, retain, forget_names, retain_names = (choices.forget, choices.retain, choices.forget_names,
                                                          choices.retain_names)
        inputs = None
        if dataset is not None:
            inputs = evaluation_inputs(self, dataset, plan.templates, forget, retain)
            inputs.forget_names, inputs.forget_domains = forget_names, tuple(spec.forget_domains)
        return Features(forget, retain, list(retain_names), forget_names, inputs, choices)

    def reference_features(self, folders: dict) -> ReferenceFeatures:
        """``methods.table.ReferenceFeatures`` of ``{group: folder}``: each group's unlabelled images,
        encoded through the same loader and feature cache as evaluation images, then projected by the
        original final map."""
        datasets = reference_datasets(folders)
        features = {}
        for domain, ds in datasets.items():
            pre, _ = self.encode_images(ds, phase="encode_domain_images")
            # a text-side site leaves the image tower whole: its features are already the final ones
            features[domain] = pre if self.site.side == "text" else project(self.site, self.original, pre)
        return ReferenceFeatures(features, reference_record(folders, datasets), classifier=self.classifier)

    def classifier(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Zero-shot class embeddings ``[C, d]`` (normalised), the usual template-averaged recipe."""
        with self.timer("eval_text"), self._text_precision():
            return embed_classes(self.loaded.encode_prompts, classnames, templates, self.cache_id,
                                 self.text_cache_name, cache=self._cached_text).per_class

    def prompts_before_fold(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Text-side fold: the classifier's prompt features before the site ``[C, K, width]`` (float32, CPU).

        The text tower runs with its final map swapped for an identity (``fold.identity_map``);
        ``fold.project`` of these rows with any fold-site tensors gives that model's prompt features.
        """
        prompts = build_prompts(classnames, templates)
        name = f"{self.text_cache_name}|before:{self.site.path}"
        key = text_cache_key(self.cache_id, name, prompts) if self.cache_id else None
        with self.timer("eval_text"), self._text_precision(), identity_map(self.loaded.model, self.site):
            feats, _ = self._cached_text(self.loaded.encode_prompts, prompts, key, self.options.batch_size)
        return feats.float().cpu().reshape(len(classnames), len(templates), -1)

    def encode_images(self, dataset: EvalDataset, use_cache: bool | None = None,
                      phase: str = "encode_images") -> tuple[torch.Tensor, bool]:
        """``pre_projection_features [n, width]`` of every image, and whether the cache served them.

        With a text-side site these are the image features themselves ``[n, d]``.
        """
        use_cache = self.options.use_cache if use_cache is None else use_cache
        options = self.options
        key = feature_cache_key(self.loaded.cache_id, self.site, dataset, self.loaded.preprocess,
                                options.precision, decode=options.decode) if use_cache else None
        step = step_counter(options.progress, "encoding images", len(dataset))
        with self.timer(phase):
            if not self.world.distributed:
                return encode_pre_projection(self.loaded, dataset, options.batch_size, self.device, step, key,
                                             workers=options.workers, precision=options.precision,
                                             decode=options.decode)
            # torchrun: each rank encodes its contiguous shard; every rank gets all rows in dataset order
            return cached_gather("features", key, len(dataset), lambda shard: encode_pre_projection(
                self.loaded, dataset, options.batch_size, self.device, step, None, workers=options.workers,
                indices=shard, precision=options.precision, decode=options.decode)[0], all_ranks=True)


def open_session(model: str | None, pretrained: str | None, options: RunOptions, device: str,
                 timer: PhaseTimer, fold: str = "auto") -> Session:
    """Load the model through its backend; the backend knows its fold sites, ``fold`` picks one
    (auto: the image side where the image tower ends in a linear map, else the text side).

    Under torchrun (``WORLD_SIZE`` > 1) this joins the process group first: gloo on CPU, NCCL
    on CUDA, one GPU per rank.
    """
    device = rank_device(device)
    here = init_if_needed(device)
    with timer("load_model"):
        loaded = load_backend(model, pretrained, device)
    site = loaded.select_fold(fold)
    stored = loaded.source_state_dict
    original = {k: stored[k] for k in site.keys} if set(site.keys) <= set(stored) else site_tensors(loaded.model,
                                                                                                   site)
    return Session(loaded, site, original, options, device, timer, here)


def evaluation_inputs(session: Session, dataset: EvalDataset, templates: Sequence[str], forget: TextEmbeddings,
                      retain: TextEmbeddings) -> SweepInputs:
    """Encode the images once and build the classifier: everything metrics at any strength need.

    Text-side site: the classifier's prompts are encoded once up to the site, and the original
    classifier is projected from them like every patched one (``evaluate.features_at``).
    """
    pre, hit = session.encode_images(dataset)
    prompts = None
    if session.site.side == "text":
        prompts = session.prompts_before_fold(dataset.classnames, templates)
        n_classes, n_templates, width = prompts.shape
        classifier = class_embeddings(project(session.site, session.original, prompts.reshape(-1, width)),
                                      n_classes, n_templates).to(pre.device)
    else:
        classifier = session.classifier(dataset.classnames, templates).to(pre.device)
    return SweepInputs(session.site, session.original, pre, classifier, dataset, forget, retain,
                       feature_cache_hit=hit, prompts_before_fold=prompts)
