"""What unlabelled reference images buy CCUP: a sink calibrated to chance, and ``erase: probe`` (issue 29).

The references are the ORIGINAL model's image features of a few hundred to a few thousand unlabelled
images from the deployment distribution (``data.reference_images``), pseudo-labelled by the original
model's own zero-shot over the forget and retain classes. Two uses, each chosen on the references alone:

- the ``reference-chance`` sink (``sinks.reference_chance_targets``): per forget class, how far along
  the references' own direction for it (and how long) its sink target goes, so that it sits at chance
  under its own query on the references; a class they hardly hold is calibrated on stand-ins;
- ``erase: probe`` (``erasure.fit_erasure``): LEACE on the patched reference features against each forget
  class's pseudo-label, composed after the map. With both, the sink is calibrated *through* the
  erasure (the erasure is refitted at every step), since erasing moves a class's ranking too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..data.reference_images import DEPLOYMENT
from ..text.encode import class_embeddings
from ..text.templates import build_prompts
from .erasure import Erasure, fit_erasure, recentred
from .sinks import (
    REFERENCE_SINK,
    REFERENCE_TARGET_AUC,
    ReferenceCalibration,
    resolve_sink,
)


def pseudo_labels(features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """``[n]``: the original model's zero-shot class of each reference (``features [n, d]`` original,
    ``classifier [C, d]`` normalised class embeddings)."""
    return (F.normalize(features.double(), dim=-1) @ classifier.double().T.to(features.device)).argmax(dim=1)


def calibration_for(features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor,
                    forget_ids: Sequence[int], classnames: Sequence[str]) -> ReferenceCalibration:
    """The ``ReferenceCalibration`` of encoded references: their pseudo-labels ``labels`` index
    ``classnames``/``classifier`` rows; the forget classes are ``forget_ids`` (class order)."""
    classifier = F.normalize(classifier.double(), dim=-1)
    return ReferenceCalibration(features.double(), labels, classifier[list(forget_ids)], list(forget_ids),
                                list(classnames), classifier=classifier)


def reference_calibration(forget, retain, context) -> tuple[Any, ReferenceCalibration]:
    """The context's deployment references (``MethodContext.reference``) pseudo-labelled among the forget
    and retain classes by the original model's zero-shot (the forget templates), as a calibration.

    Returns ``(methods.table.ReferenceFeatures, ReferenceCalibration)``. The calibration is kept in
    ``references.notes["calibration"]``, so the erasure step after the map
    fits on the same pseudo-labels."""
    if context.reference is None:
        raise ValueError("the reference-chance sink and erase: probe read unlabelled reference images; give "
                         "reference_images (--reference-images)")
    references = context.reference()
    if "calibration" in references.notes:
        return references, references.notes["calibration"]
    if DEPLOYMENT not in references.features:
        raise ValueError("reference-chance needs deployment reference images (reference_images), not domain images")
    feats = references.features[DEPLOYMENT].double()
    classes = list(dict.fromkeys(forget.classnames + list(retain.classnames)))
    if references.classifier is not None:
        classifier = references.classifier(classes, list(forget.templates))
    else:
        classifier = class_embeddings(context.encode(build_prompts(classes, forget.templates)), len(classes),
                                      len(forget.templates))
    classifier = F.normalize(classifier.double(), dim=-1).to(feats.device)
    labels = pseudo_labels(feats, classifier)
    calibration = calibration_for(feats, labels, classifier, [classes.index(c) for c in forget.classnames], classes)
    calibration.target_auc = REFERENCE_TARGET_AUC
    references.notes["calibration"] = calibration
    return references, calibration


def erasure_after(W: torch.Tensor, forget, retain, context) -> Erasure:
    """``erase: probe`` after the map ``W`` (at its strength): LEACE fitted on the references patched by W."""
    references, calibration = reference_calibration(forget, retain, context)
    erasure = erasure_for(calibration)(calibration.features @ W.T.to(calibration.features.device, torch.float64))
    references.notes["erasure"] = {"method": "LEACE (concept-erasure) on zero-shot pseudo-labels",
                                   "rank": erasure.rank, "fitted_on": erasure.fitted_on,
                                   "pseudo_labelled": erasure.positives,
                                   "offset_norm": round(float(erasure.c.norm()), 6)}
    return erasure


def erasure_for(calibration: ReferenceCalibration) -> Callable[[torch.Tensor], Erasure]:
    """``patched reference features [n, d] -> Erasure`` fitted on the calibration's pseudo-labels."""
    names = [calibration.classnames[i] for i in calibration.forget_ids]
    return lambda feats: recentred(fit_erasure(feats, calibration.pseudo_labels, calibration.forget_ids, names),
                                   feats, calibration.queries)


def solve_with_references(solve: Callable[[torch.Tensor], torch.Tensor], forget_embeddings: torch.Tensor,
                          retain_embeddings: torch.Tensor | None, forget_templates: Sequence[str],
                          calibration: ReferenceCalibration, erase: bool,
                          encode=None) -> tuple[torch.Tensor, Erasure | None, dict]:
    """The calibrated map ``W [d, d]``, the erasure fitted after it (None without ``erase``), and what the
    references read: per forget class its γ, AUC and bottom share on the references (and base rate)."""
    fit = erasure_for(calibration)
    if erase:  # refitted on the real references only; the absent classes' stand-ins are read through it
        n = len(calibration.features)
        calibration.after = lambda feats: fit(feats[:n])(feats)
    targets = resolve_sink(REFERENCE_SINK, forget_embeddings, retain_embeddings, forget_templates, encode, solve,
                           calibration)
    W = solve(targets)
    erasure = fit(calibration.features @ W.T) if erase else None
    return W, erasure, reference_facts(calibration, W)


def reference_facts(calibration: ReferenceCalibration, W: torch.Tensor) -> dict:
    """Per forget class, what the references read at ``W`` (through ``calibration.after``)."""
    read = calibration.read(W)
    positives = calibration.positives()
    gammas, scales = calibration.chosen.get("gamma"), calibration.chosen.get("scale")
    guard = calibration.chosen.get("guard_met")
    present = calibration.present()
    calibrated_on = calibration.relevant().sum(dim=1)
    out = {}
    for i, c in enumerate(calibration.forget_ids):
        name = calibration.classnames[c]
        out[name] = {"gamma": None if gammas is None else round(float(gammas[i]), 6),
                     "scale": None if scales is None else round(float(scales[i]), 6),
                     "pseudo_labelled": int(positives[i]), "auc": round(float(read["auc"][i]), 4),
                     "bottom_share": round(float(read["bottom_share"][i]), 4),
                     "base_rate": round(float(read["base_rate"][i]), 4),
                     # too few of the references are this class: it was calibrated on stand-ins (other
                     # classes' references moved to where the text places it), an estimate
                     "estimated": not bool(present[i]), "calibrated_on": int(calibrated_on[i])}
        if guard is not None and not bool(guard[i]):  # the γ steps ran out with the class still winning
            out[name]["guard_met"] = False
    return out
