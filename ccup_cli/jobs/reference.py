"""``ccup audit --reference REF``: the reference model beside the audited pair, from its own towers.

REF is any model the backends load: an open_clip or transformers folder, a checkpoint file
(of the audited model's architecture unless its folder says otherwise), an embedded name,
``local-dir:``/``transformers:``/``hf-hub:`` sources, or a name with ``--reference-pretrained``
(``none`` for random init). Files are checked at the door; the model is loaded before the
audited one, so an unknown name fails in one line before any image is encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backends.base import backend_for
from ..backends.sources import CHECKPOINT_SUFFIXES
from ..errors import CheckpointError, SpecError
from ..run.door import pretrained_problems

REFERENCE_PHASE = "reference_"  # the prefix of every phase the reference adds to the audit's timings
FIX = ("give --reference a model folder, a checkpoint file, an embedded name or a local-dir:/transformers: "
       "source (a model name takes --reference-pretrained)")


@dataclass(frozen=True)
class ReferenceSource:
    given: str
    model: str | None
    pretrained: str | None


def reference_source(reference: str, pretrained: str | None, audited_model: str | None) -> ReferenceSource:
    """``(model, pretrained)`` as the backends take them, from what ``--reference`` names (no torch)."""
    path = Path(reference)
    if pretrained is not None:  # a model name (or source) with its weights: a tag, a file, none
        return ReferenceSource(reference, reference, pretrained)
    if path.is_dir():  # an open_clip or transformers folder names its own architecture
        return ReferenceSource(reference, None, reference)
    if path.is_file():
        beside = (path.parent / "open_clip_config.json").is_file()
        return ReferenceSource(reference, None if beside else audited_model, reference)
    return ReferenceSource(reference, reference, None)


def check_reference(reference: str | None, pretrained: str | None, audited_model: str | None) -> \
        ReferenceSource | None:
    """The door's check of ``--reference``: a SpecError (exit 2, one line) for anything files show wrong."""
    if reference is None:
        if pretrained is not None:
            raise SpecError("reference-pretrained: given without --reference", "add --reference MODEL")
        return None
    if not reference.strip():
        raise SpecError("reference: empty", FIX)
    path = Path(reference)
    if pretrained is None and not path.exists() and (reference.endswith(CHECKPOINT_SUFFIXES) or (
            ("/" in reference or "\\" in reference) and not reference.startswith(("hf-hub:", "local-dir:",
                                                                                 "transformers:")))):
        raise SpecError(f"reference: {reference} does not exist", FIX)
    source = reference_source(reference, pretrained, audited_model)
    problems = pretrained_problems(source.model, source.pretrained)
    if problems:
        raise SpecError("; ".join(_as_reference(p) for p in problems), FIX)
    backend_for(source.model, source.pretrained)  # a missing optional package, in one line
    return source


def _as_reference(problem: str) -> str:
    for field in ("model: ", "pretrained: "):
        if problem.startswith(field):
            return "reference: " + problem[len(field):]
    return "reference: " + problem


def open_reference(source: ReferenceSource, options, device: str, timer):
    """The reference's session (its own fold site and towers); a load failure names ``--reference``."""
    # lazy: start-up time (torch loads after the door)
    from ..run.provenance import PhaseTimer
    from ..run.session import open_session

    own = PhaseTimer()  # its phases are reported apart, as reference_<phase> (merge_timings)
    try:
        with timer("reference_load_model"):
            return open_session(source.model, source.pretrained, options, device, own)
    except CheckpointError as err:
        raise CheckpointError(f"reference: {err.problem}", err.fix) from None


def merge_timings(ref_session, timer) -> None:
    """The reference session's own phases into the audit's timer, each as ``reference_<phase>``."""
    for phase, seconds in ref_session.timer.seconds.items():
        if phase != "load_model":  # timed around open_session already
            key = f"reference_{phase}"
            timer.seconds[key] = round(timer.seconds.get(key, 0.0) + seconds, 4)


def view_of(session, images, classnames, unlearn_templates, second_templates, aliases, probe_pre=None):
    """``audit.reference.ModelView`` of a session's own towers: its projected features and class vectors.

    ``images`` / ``probe_pre`` are that session's ``encode_images`` output (pre-projection on an
    image-side site, final features on a text-side one)."""
    # lazy: start-up time (torch loads after the door)
    from ..audit.reference import ModelView
    from ..backends.fold import project
    from ..text.embeddings import embed_classes

    def final(pre):
        return pre if session.site.side == "text" else project(session.site, session.original, pre)

    alias_vectors = {c: embed_classes(session.loaded.encode_prompts, names, unlearn_templates, session.cache_id,
                                      session.loaded.model_name).per_class for c, names in aliases.items()}
    return ModelView(final(images), session.classifier(classnames, unlearn_templates),
                     session.classifier(classnames, second_templates), alias_vectors,
                     None if probe_pre is None else final(probe_pre))


def probe_inputs(req, planned, probe_split):
    """The probe images and draws of the three-way comparison: the audit's own (``jobs.audit.probe_data``
    split, ``draw_pool`` with the same seed), so the three models are probed on the same images."""
    import numpy as np
    import torch

    # lazy: start-up time (torch loads after the door)
    from ..audit.probe import draw_pool
    from ..audit.reference import ProbeSetup

    dataset = planned.dataset
    train, test_idx, source = probe_split
    pool = draw_pool(train.labels, req.probe_shots, req.probe_draws, req.probe_seed)
    used = np.unique(np.concatenate([idx for draws in pool.values() for idx in draws]))
    position = {int(i): j for j, i in enumerate(used)}
    local = {k: [np.array([position[int(i)] for i in idx]) for idx in draws] for k, draws in pool.items()}
    subset = train.subset(used)
    test = slice(None) if test_idx is None else torch.as_tensor(test_idx)
    test_labels = dataset.labels if test_idx is None else dataset.labels[test_idx]
    return subset, ProbeSetup(subset.labels, local, test, req.probe_seed, source), test_labels


def measure_reference(req, planned, ref_session, session, patched_tensors, patched_session, pre, after,
                      probe_split, timer) -> dict:
    """The ``reference`` section of ``audit.json``: the three-way comparison (``audit.reference.compare``).

    ``pre``: the audited original's eval features before its fold site; ``after``: the unlearned
    model's final features. The unlearned model's class vectors are the original's (an image-side
    fold, or fine-tuning of the image tower, leaves the text tower as it was). ``probe_split``: the
    audit's probe split, or None without probes. Every model's probe images are encoded by its own
    image tower; the reference's eval images too.
    """
    from dataclasses import replace

    # lazy: start-up time (torch loads after the door)
    from ..audit.reference import compare
    from ..backends.fold import project
    from ..output.portable import portable_path

    dataset = planned.dataset
    subset, setup, test_labels = probe_inputs(req, planned, probe_split) if probe_split else (None, None, None)
    pre_train = unlearned_train = ref_train = None
    if subset is not None:
        phase = "reference_probe_images"
        pre_train = session.encode_images(subset, phase=phase)[0]
        if patched_tensors is not None:
            unlearned_train = project(session.site, patched_tensors, pre_train)
        else:
            pre_p = patched_session.encode_images(subset, phase=phase)[0]
            unlearned_train = project(patched_session.site, patched_session.original, pre_p)
        ref_train = ref_session.encode_images(subset, phase=phase)[0]
    ref_pre, hit = ref_session.encode_images(dataset)
    with timer("reference_text"):
        names = (dataset.classnames, planned.unlearn_templates, planned.second_templates, planned.aliases)
        original_view = view_of(session, pre, *names, pre_train)
        unlearned_view = replace(original_view, images=after, probe_train=unlearned_train)
        ref_view = view_of(ref_session, ref_pre, *names, ref_train)
    with timer("reference_metrics"):
        result = compare({"original": original_view, "unlearned": unlearned_view, "reference": ref_view},
                         dataset.labels, dataset.classnames, planned.forget, planned.aliases,
                         (planned.unlearn_templates_name, planned.second_templates_name), setup, test_labels)
    merge_timings(ref_session, timer)
    loaded = ref_session.loaded
    checkpoint = getattr(loaded, "checkpoint_path", None)
    source = planned.reference
    result["model"] = {"given": source.given, "name": loaded.display_name, "backend": loaded.backend,
                       "pretrained": loaded.pretrained, "fold_side": ref_session.site.side,
                       "checkpoint": portable_path(checkpoint) if checkpoint else None,
                       "sha256": loaded.checkpoint_sha256, "feature_cache_hit": hit}
    card = _card(source)
    if card:
        result["model"]["card"] = card
    return result


def _card(source: ReferenceSource) -> dict | None:
    """What a reference trained by ``--without`` says it left out (its training_log.json), if it says."""
    import json

    for given in (source.pretrained, source.model):
        if not given:
            continue
        path = Path(given.removeprefix("local-dir:").removeprefix("transformers:"))
        folder = path if path.is_dir() else path.parent
        log = folder / "training_log.json"
        if log.is_file():
            try:
                data = json.loads(log.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            left = data.get("left_out") or {}
            return {"without": data.get("without"), "left_out_names": left.get("names"),
                    "train_images_removed": left.get("train_images_removed"), "model": data.get("model")}
    return None
