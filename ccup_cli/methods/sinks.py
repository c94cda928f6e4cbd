"""Sinks: where CCUP sends each forget prompt, ``T_s`` in ``projector.ccup_map``.

The paper's CCUP maps every forget direction to zero (``sink: zero``). The forget class then
loses every classification contest, but ``Q t_forget`` still points along ``t_forget``, so a
text-to-image search for the forgotten class still ranks its own images first. A sink gives
each forget prompt a harmless target instead:

- ``zero``: the paper's method (no target; W is bit for bit the paper's).
- ``retain-mean``: the mean of the normalised retain prompt embeddings, for every forget prompt.
- ``retain-mean-orthogonal``: the same mean less its components along the forget class
  directions (the template-averaged forget class embeddings), so a search for a forgotten
  class no longer leans towards it. Measured best on the validation split: DEFAULT_SINK.
- ``text-chance``: retain-mean-orthogonal plus, per forget class, some of its own direction: as much
  as makes the patched map rank the class's own text embedding at chance among the retain prompts
  (bisection on text only), times TEXT_CHANCE_FACTOR. It aims a forgotten class's images at chance
  under its own query instead of below it (issue 21); text is a rough stand-in for where images sit,
  so it lands some classes at chance and misses others, at a retain cost (scripts/tune_chance_sink.py).
- ``reference-chance``: retain-mean-orthogonal plus, per forget class, γ times a direction read off
  unlabelled reference images (``ReferenceCalibration.directions``: the class's mean difference from
  the rest, whitened by the references' within-class spread), γ chosen so that the class sits at the
  target AUC under its own query among the references (``reference_chance_targets``), pseudo-labelled
  by the original model's zero-shot (issue 29); a target that would let the class win zero-shot is
  shortened. It needs reference images (``reference_images``); the default when they are given to ``ccup``.
- ``neutral``: each forget prompt's own template filled with NEUTRAL_WORD (one target per prompt).
- ``neutral-orthogonal``: those neutral prompts less their forget-direction components.
- any other text: a phrase filled into each forget prompt's template, like ``neutral``
  (``sink: "piece of fabric"`` targets "a photo of a piece of fabric." for "a photo of a {}.").

Backend-free: text is encoded through the caller's ``encode(prompts) -> [n, d]``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import SpecError
from ..presets import defaults
from ..text.templates import fill

if TYPE_CHECKING:  # pragma: no cover - torch is imported where tensors are made, not at import
    import torch

SINK_NAMES = ("zero", "retain-mean", "retain-mean-orthogonal", "text-chance", "reference-chance", "neutral",
              "neutral-orthogonal")
REFERENCE_SINK = "reference-chance"  # the sink ccup uses when reference images are given and no sink is
DEFAULT_SINK = defaults.SINK
NEUTRAL_WORD = "object"
# text-chance: the text-calibrated share of each class's own direction, times this; chosen on the
# validation split among 1.0, 1.15, 1.3 and 1.5 (scripts/tune_chance_sink.py)
TEXT_CHANCE_FACTOR = 1.3


def sink_problems(value: object, field: str = "sink") -> list[str]:
    """One line per problem with a sink value (empty when it is fine), each naming ``field``."""
    if not isinstance(value, str):
        return [f"{field}: expected one of {', '.join(SINK_NAMES)} or a phrase, got {type(value).__name__}"]
    text = value.strip()
    if not text:
        return [f"{field}: empty; use one of {', '.join(SINK_NAMES)} or a phrase"]
    if text != value:
        return [f'{field}: "{value}" has leading or trailing spaces']
    if "{" in text or "}" in text:
        return [f'{field}: "{value}" holds a brace; a sink phrase is filled into the forget templates as it is']
    if "\n" in text or "\r" in text:
        return [f"{field}: a sink phrase must be one line"]
    if text not in SINK_NAMES:
        close = difflib.get_close_matches(text.lower().replace("_", "-"), SINK_NAMES, n=1, cutoff=0.75)
        if close:
            return [f'{field}: "{value}" is not a sink; did you mean "{close[0]}"? '
                    "(a phrase that close to a sink name is taken for a typo)"]
    return []


def forget_class_directions(forget_embeddings: torch.Tensor, n_templates: int) -> torch.Tensor:
    """``[n_classes, d]`` float64: the template-averaged, renormalised forget class embeddings.

    ``forget_embeddings [n_classes * n_templates, d]`` is class-major (all templates of class 0,
    then class 1, ...), as ``templates.build_prompts`` orders them.
    """
    import torch.nn.functional as F

    k_f, d = forget_embeddings.shape
    if n_templates < 1 or k_f % n_templates:
        raise ValueError(f"{k_f} forget prompts are not a whole number of classes of {n_templates} templates")
    per_prompt = F.normalize(forget_embeddings.detach().double(), dim=-1).reshape(-1, n_templates, d)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def _without(targets: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """``targets [k, d]`` less their projection onto the span of ``directions [m, d]``."""
    import torch

    basis = torch.linalg.qr(directions.T).Q  # [d, m], orthonormal
    return targets - (targets @ basis) @ basis.T


def text_chance_gammas(forget_embeddings: torch.Tensor, retain_embeddings: torch.Tensor, n_templates: int,
                       base: torch.Tensor, solve: Callable[[torch.Tensor], torch.Tensor],
                       steps: int = 16) -> torch.Tensor:
    """``[n_classes]`` float64: per forget class, the γ at which the map for targets ``base + γ·d_c``
    ranks the class's own direction ``d_c`` at chance (AUC 0.5) among the retain prompts and the
    other forget directions, each mapped by the image side ``W`` and scored by ``d_c``.

    ``base [1, d]``: the shared part of the targets; ``solve(T_s [k_f, d]) -> W [d, d]``. Bisection
    on [-0.5, 1.5], all classes at once (each class's γ moves its own AUC most).
    """
    import torch
    import torch.nn.functional as F

    directions = forget_class_directions(forget_embeddings, n_templates)  # [k, d]
    items = F.normalize(retain_embeddings.detach().double(), dim=-1).to(directions.device)
    k = len(directions)
    low = torch.full((k,), -0.5, dtype=torch.float64, device=directions.device)
    high = torch.full((k,), 1.5, dtype=torch.float64, device=directions.device)
    for _ in range(steps):
        gamma = (low + high) / 2
        W = solve((base + gamma[:, None] * directions).repeat_interleave(n_templates, dim=0))
        own = F.normalize(directions @ W.T, dim=-1)  # [k, d]
        pool = F.normalize(torch.cat([items, directions]) @ W.T, dim=-1)  # [k_r + k, d]
        scores = pool @ directions.T  # [k_r + k, k]: item j under class c's query
        mine = (own * directions).sum(dim=1)  # [k]
        others = torch.ones_like(scores, dtype=torch.bool)
        others[len(items) + torch.arange(k), torch.arange(k)] = False  # a class is not its own competitor
        above = ((mine[None] > scores) & others).double().sum(0) + 0.5 * ((mine[None] == scores) & others).double().sum(0)
        auc = above / others.double().sum(0)
        high, low = torch.where(auc > 0.5, gamma, high), torch.where(auc <= 0.5, gamma, low)
    return (low + high) / 2


MIN_REFERENCE_POSITIVES = 5  # pseudo-labelled references a forget class needs for its own calibration
# a forget class counts as present in the references when at least this share of an even split (n / C)
# of them is pseudo-labelled as it (and MIN_REFERENCE_POSITIVES); otherwise the zero-shot's "positives"
# are other classes' images it confuses (measured: 0-26 of 2,000 references that hold none, against
# 178-225 that hold it), and the class is calibrated on images estimated from the text instead
REFERENCE_PRESENT_SHARE = 0.3
REFERENCE_GAMMA_RANGE = (-3.0, 3.0)
# the ridge of the per-class direction (``ReferenceCalibration.directions``), as a share of the features'
# mean variance; chosen on the validation split among 0.1, 0.03 and 0.01 (scripts/bench_reference_images.py)
REFERENCE_RIDGE = 0.01
# the AUC the reference-chance sink aims each forget class at; chosen on the validation split
# (scripts/bench_reference_images.py)
REFERENCE_TARGET_AUC = 0.45
# the AUC aimed at for a class the references hardly hold: its stand-ins only estimate where its images
# sit, and erring low keeps it out of zero-shot; chosen on the validation split among 0.45, 0.35, 0.3 and
# 0.25: the highest at which no set of ten let more than 1 % of the forget images back into zero-shot
REFERENCE_ABSENT_TARGET_AUC = 0.3
# ... and its stand-ins must lose zero-shot by this much cosine for the guard to pass (they sit less
# firmly in the class than its real images); chosen on the validation split of both shipped models among
# 0.02, 0.05, 0.1 and 0.2: the smallest at which no set let more than 1 % of the forget images back
REFERENCE_ABSENT_MARGIN = 0.2
# after the bisection, a class whose references still win zero-shot more often than this has its whole
# target scaled down in steps of REFERENCE_GUARD_STEP (at most REFERENCE_GUARD_STEPS), and γ is found
# again: the target's length moves the class's zero-shot logits but hardly its search ranking, and
# chance in search must not undo forgetting (measured on ccup-tiny-fashion's validation split: the three
# footwear classes at once and trouser + dress reach their aim this way, where lowering γ left them at
# AUC 0.14-0.30; on ccup-lit-fashion the footwear trio still needs γ lowered)
REFERENCE_MAX_FORGET_TOP1 = 0.005
REFERENCE_GUARD_STEP, REFERENCE_GUARD_STEPS = 0.1, 9
# where even the shortest target wins, γ is lowered instead in steps of REFERENCE_GAMMA_STEP (at most
# REFERENCE_GAMMA_STEPS): the class then sits below its aim, and forgetting comes first
REFERENCE_GAMMA_STEP, REFERENCE_GAMMA_STEPS = 0.05, 120
# the ridge of the text analogy that places a class absent from the references (``estimated_mean``);
# 0.01, 0.1 and 1 place the ten classes' image means equally well (mean error 0.35-0.36, leave one out)
ANALOGY_RIDGE = 0.1


@dataclass
class ReferenceCalibration:
    """What the ``reference-chance`` sink calibrates on: unlabelled reference images, already encoded.

    ``features [n, d]``: the ORIGINAL model's image features of the references (after its final map);
    ``pseudo_labels [n]``: the original model's zero-shot class among ``classnames``; ``queries [k, d]``:
    the normalised search query (classifier vector) of each forget class, in forget-class order;
    ``forget_ids``: each forget class's index in ``classnames``; ``after``: what follows the map before
    search (``erase: probe`` refits its erasure on the patched features; None: nothing). ``after``
    receives the pool's rows, the references first and any stand-ins after them, and must fit on
    the first ``len(features)`` rows only.

    A forget class the references hardly hold (``present``) is calibrated on stand-in images: the
    references of the present class nearest to it, moved to where the text says its images sit
    (``estimated_mean``). ``pool()`` is the references plus those stand-ins.
    """

    features: torch.Tensor
    pseudo_labels: torch.Tensor
    queries: torch.Tensor
    forget_ids: list[int]
    classnames: list[str]
    after: Callable[[torch.Tensor], torch.Tensor] | None = None
    chosen: dict = field(default_factory=dict)  # what the calibration chose ("gamma", "scale": [k])
    target_auc: float = REFERENCE_TARGET_AUC  # the AUC each forget class is calibrated to
    classifier: torch.Tensor | None = None  # [C, d] every class's query: the guard on forget top-1
    # pool()'s cache: the fields above are read once, so set them before the first pool(), read() or directions()
    _pool: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def own_top1(self, W: torch.Tensor) -> torch.Tensor:
        """``[k]``: per forget class, the share of its calibration images (``pool``) that the map ``W``
        (and ``after``) still classifies as it: zero-shot top-1 on the references. A class calibrated
        on stand-ins counts as winning unless it loses by ``REFERENCE_ABSENT_MARGIN``."""
        import torch
        import torch.nn.functional as F

        feats, rel = self.pool()
        feats = feats @ W.T.to(feats.device, torch.float64)
        if self.after is not None:
            feats = self.after(feats)
        scores = F.normalize(feats, dim=-1) @ self.classifier.double().T.to(feats.device)
        present = self.present()
        out = []
        for i, c in enumerate(self.forget_ids):
            mine = scores[rel[i]].clone()
            if not bool(present[i]):  # stand-ins only estimate the class: it must lose by a margin
                mine[:, c] += REFERENCE_ABSENT_MARGIN
            out.append(mine.argmax(dim=1).eq(c).double().mean())
        return torch.stack(out)

    def positives(self) -> torch.Tensor:
        """``[k]`` pseudo-labelled references per forget class."""
        import torch

        return torch.stack([self.pseudo_labels.eq(c).sum() for c in self.forget_ids])

    def present(self) -> torch.Tensor:
        """``[k]`` bool: the forget class holds enough of the references to calibrate on its own
        (``REFERENCE_PRESENT_SHARE`` of an even split, and ``MIN_REFERENCE_POSITIVES``). Without a
        classifier of every class (no text to estimate from), every class counts as present."""
        import torch

        if self.classifier is None:
            return torch.ones(len(self.forget_ids), dtype=torch.bool)
        present = set(self._present_classes())
        return torch.tensor([c in present for c in self.forget_ids], dtype=torch.bool)

    def estimated_mean(self, i: int) -> torch.Tensor:
        """``[d]``: where forget class ``i``'s normalised image features should sit, from the text alone.

        The class's query is written as a ridge combination of the present classes' queries (about their
        mean); the same combination of those classes' image means, plus the part of the query they do
        not explain scaled as text offsets map to image offsets on the present classes, places it."""
        import torch
        import torch.nn.functional as F

        x = F.normalize(self.features.double(), dim=-1)
        text = F.normalize(self.classifier.double(), dim=-1).to(x.device)
        ids = [j for j in self._present_classes() if j != self.forget_ids[i]]
        means = torch.stack([x[self.pseudo_labels.eq(j)].mean(0) for j in ids])  # [p, d]
        t_bar, m_bar = text[ids].mean(0), means.mean(0)
        T, M = text[ids] - t_bar, means - m_bar  # [p, d]
        t = text[self.forget_ids[i]] - t_bar
        gram = T @ T.T
        w = torch.linalg.solve(gram + ANALOGY_RIDGE * gram.trace() / len(gram) * torch.eye(len(gram), dtype=x.dtype,
                                                                                             device=x.device), T @ t)
        scale = (M * T).sum() / (T * T).sum().clamp(min=1e-12)
        return m_bar + w @ M + scale * (t - w @ T)

    def _present_classes(self) -> list[int]:
        """The classes (``classnames`` indices) that enough references are pseudo-labelled as."""
        counts = self.pseudo_labels.bincount(minlength=len(self.classnames))
        share = REFERENCE_PRESENT_SHARE * len(self.pseudo_labels) / len(self.classnames)
        return [j for j in range(len(self.classnames)) if counts[j] >= max(MIN_REFERENCE_POSITIVES, share)]

    def pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features [n + m, d], relevant [k, n + m] bool)``: the references, then the stand-ins of
        each absent forget class; a present class is relevant on its pseudo-labelled references, an
        absent one on its stand-ins alone (its pseudo-labelled references are other classes' images).

        A stand-in is a reference of the present class whose image mean is nearest the estimate,
        moved by the difference of the means (on the unit sphere) and kept at its own length."""
        import torch
        import torch.nn.functional as F

        if self._pool is not None:
            return self._pool
        feats = self.features.double()
        rel = self.pseudo_labels[None, :].eq(torch.as_tensor(self.forget_ids, device=self.pseudo_labels.device)[:, None])
        present = self.present()
        extra, extra_rel = [], []
        present_classes = self._present_classes() if not bool(present.all()) else []
        if len(present_classes) < 2:  # nothing to estimate from: borrow the nearest references
            scores = F.normalize(feats, dim=-1) @ self.queries.double().T.to(feats.device)
            for i in range(len(self.forget_ids)):
                if not bool(present[i]):
                    rel[i] = False
                    rel[i, scores[:, i].topk(min(MIN_REFERENCE_POSITIVES, len(scores) - 1)).indices] = True
            self._pool = (feats, rel)
            return self._pool
        x = F.normalize(feats, dim=-1)
        for i in torch.nonzero(~present).flatten().tolist():
            target = self.estimated_mean(i)
            candidates = [j for j in present_classes if j not in self.forget_ids or present[self.forget_ids.index(j)]]
            means = torch.stack([x[self.pseudo_labels.eq(j)].mean(0) for j in candidates])
            nearest = candidates[int((means - target).norm(dim=1).argmin())]
            mine = self.pseudo_labels.eq(nearest)
            moved = x[mine] - x[mine].mean(0) + target
            extra.append(moved * feats[mine].norm(dim=1, keepdim=True))
            flags = torch.zeros(len(self.forget_ids), len(moved), dtype=torch.bool, device=rel.device)
            flags[i] = True
            extra_rel.append(flags)
            rel[i] = False
        self._pool = (torch.cat([feats, *extra]), torch.cat([rel, *extra_rel], dim=1))
        return self._pool

    def relevant(self) -> torch.Tensor:
        """``[k, n + m]`` bool: which of ``pool()``'s images stand for each forget class."""
        return self.pool()[1]

    def directions(self) -> torch.Tensor:
        """``[k, d]`` float64: per forget class, the direction along which its calibration images
        separate from the rest most for their spread: the mean difference, whitened by the references'
        within-pseudo-class covariance (ridge ``REFERENCE_RIDGE``), on the unit sphere. A class the
        references hardly hold (``present``) keeps its query: whitening would magnify the stand-ins'
        error; so does a class with no other image to differ from.

        Moving a class along its own *text* direction moves its mean and spreads its top tail above
        everyone (P@10 0.1-0.3 at AUC 0.45); along this one the class moves as a narrow band."""
        import torch
        import torch.nn.functional as F

        feats, rel = self.pool()
        x = F.normalize(feats, dim=-1)
        real = F.normalize(self.features.double(), dim=-1)
        d = real.shape[1]
        within = torch.zeros(d, d, dtype=torch.float64, device=real.device)
        for c in self.pseudo_labels.unique():
            part = real[self.pseudo_labels.eq(c)]
            part = part - part.mean(0)
            within += part.T @ part
        within /= len(real)
        within += REFERENCE_RIDGE * within.trace() / d * torch.eye(d, dtype=torch.float64, device=real.device)
        out = []
        present = self.present()
        for i in range(len(self.forget_ids)):
            if not bool(present[i]) or bool(rel[i].all()):
                out.append(F.normalize(self.queries[i].double().to(real.device), dim=0))
                continue
            delta = x[rel[i]].mean(0) - x[~rel[i]].mean(0)
            out.append(F.normalize(torch.linalg.solve(within, delta), dim=0))
        return torch.stack(out)

    def read(self, W: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per forget class, on ``pool()`` (the references and any stand-ins) patched by ``W``: ``auc``
        under its own query and ``bottom_share`` (its share of the images ranked last, as many as it
        has; chance: its base rate ``base_rate`` among the pool's images)."""
        import torch
        import torch.nn.functional as F

        feats, rel = self.pool()
        feats = feats @ W.T.to(feats.device, torch.float64)
        if self.after is not None:
            feats = self.after(feats)
        scores = F.normalize(feats, dim=-1) @ self.queries.double().T.to(feats.device)  # [n + m, k]
        n_rel = rel.sum(dim=1)
        auc = ranking_auc(scores.T, rel)
        order = scores.T.argsort(dim=1)  # ascending: the last-ranked first
        bottom = torch.stack([rel[i, order[i, : int(n_rel[i])]].double().mean() for i in range(len(rel))])
        return {"auc": auc, "bottom_share": bottom, "base_rate": n_rel.double() / rel.shape[1]}


def ranking_auc(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """``[q]`` float64: the chance a relevant item outranks another (ties half), per row of ``scores [q, n]``."""
    import torch

    ranks = scores.double().argsort(dim=1).argsort(dim=1).double() + 1  # 1 = lowest
    # ties share their mean rank: average the ranks over equal scores
    for i in range(len(scores)):
        values, inverse = torch.unique(scores[i], return_inverse=True)
        if len(values) < scores.shape[1]:
            ranks[i] = torch.zeros(len(values), dtype=torch.float64).scatter_reduce(
                0, inverse, ranks[i], reduce="mean", include_self=False)[inverse]
    n_rel = relevant.double().sum(dim=1)
    n_other = relevant.shape[1] - n_rel
    return ((ranks * relevant.double()).sum(dim=1) - n_rel * (n_rel + 1) / 2) / (n_rel * n_other).clamp(min=1)


def reference_chance_targets(forget_embeddings: torch.Tensor, n_templates: int, base: torch.Tensor,
                            solve: Callable[[torch.Tensor], torch.Tensor], references: ReferenceCalibration,
                            steps: int = 16, directions: torch.Tensor | None = None) -> torch.Tensor:
    """``[n_classes, d]`` float64: per forget class, the sink target ``ρ_c (base + γ_c u_c)`` that puts the
    class at the target AUC under its own query on the references (``ReferenceCalibration.read``).

    ``u_c``: ``directions`` (default: the references' own, ``ReferenceCalibration.directions``). γ by
    bisection on ``REFERENCE_GAMMA_RANGE``, all classes at once (each class's γ moves its own AUC
    most). ρ starts at 1; a class whose references still win zero-shot (the guard) is shortened and
    its γ found again; where even the shortest target wins, ρ goes back to 1 and γ is lowered until
    the class loses. The choice is kept in ``references.chosen`` ("gamma", "scale", and "guard_met":
    [k] bool, False where the γ steps ran out first). ``forget_embeddings`` is not read (the
    directions come from the references); it keeps the sinks' common call.
    """
    import torch

    if directions is None:
        directions = references.directions()
    directions = directions.to(base.device, torch.float64)
    k = len(directions)
    scale = torch.ones(k, dtype=torch.float64, device=directions.device)
    aims = torch.where(references.present().to(directions.device), references.target_auc,
                       min(references.target_auc, REFERENCE_ABSENT_TARGET_AUC)).double()

    def targets(gamma):
        return scale[:, None] * (base + gamma[:, None] * directions)

    def bisect():
        low = torch.full((k,), REFERENCE_GAMMA_RANGE[0], dtype=torch.float64, device=directions.device)
        high = torch.full((k,), REFERENCE_GAMMA_RANGE[1], dtype=torch.float64, device=directions.device)
        for _ in range(steps):
            gamma = (low + high) / 2
            auc = references.read(solve(targets(gamma).repeat_interleave(n_templates, dim=0)))["auc"].to(gamma.device)
            high, low = torch.where(auc > aims, gamma, high), torch.where(auc <= aims, gamma, low)
        return (low + high) / 2

    def over(gamma):
        W = solve(targets(gamma).repeat_interleave(n_templates, dim=0))
        return references.own_top1(W).to(gamma.device) > REFERENCE_MAX_FORGET_TOP1

    gamma = bisect()
    if references.classifier is not None:
        for _ in range(REFERENCE_GUARD_STEPS):  # first shorten the target, keeping the class at its aim
            losing = over(gamma)
            if not bool(losing.any()):
                break
            scale = scale - REFERENCE_GUARD_STEP * losing.double()
            gamma = bisect()
        losing = over(gamma)
        if bool(losing.any()):  # where that is not enough, give up the aim: full length, lower γ
            scale = torch.where(losing, torch.ones_like(scale), scale)
            gamma = torch.where(losing, bisect(), gamma)
        for _ in range(REFERENCE_GAMMA_STEPS):
            losing = over(gamma)
            if not bool(losing.any()):
                break
            gamma = gamma - REFERENCE_GAMMA_STEP * losing.double()
        references.chosen["guard_met"] = ~over(gamma)
    references.chosen["gamma"], references.chosen["scale"] = gamma, scale
    return targets(gamma)


def resolve_sink(
    sink: str,
    forget_embeddings: torch.Tensor,
    retain_embeddings: torch.Tensor | None,
    forget_templates: Sequence[str],
    encode: Callable[[list[str]], torch.Tensor] | None,
    solve: Callable[[torch.Tensor], torch.Tensor] | None = None,
    references: ReferenceCalibration | None = None,
) -> torch.Tensor | None:
    """The sink targets ``T_s [k_f, d]`` (float64, rows match ``forget_embeddings``), or None for zero.

    ``forget_embeddings [k_f, d]``: class-major forget prompt embeddings over
    ``forget_templates``; ``retain_embeddings [k_r, d]``: retain prompt embeddings; ``encode``
    returns text features ``[n, d]`` for a list of prompts (normalised here); ``solve`` (for
    ``text-chance`` and ``reference-chance``) returns the method's map ``W [d, d]`` for given targets;
    ``references`` (for ``reference-chance``) the encoded, pseudo-labelled reference images.
    """
    import torch.nn.functional as F

    problems = sink_problems(sink)
    if problems:
        raise SpecError(problems)
    if sink == "zero":
        return None
    k_f = forget_embeddings.shape[0]
    n_templates = len(forget_templates)
    directions = forget_class_directions(forget_embeddings, n_templates)
    if sink in ("retain-mean", "retain-mean-orthogonal", "text-chance", "reference-chance"):
        if retain_embeddings is None or len(retain_embeddings) == 0:
            raise SpecError(f"sink: {sink} needs retain classes, and there are none",
                            "give retain classes or another sink")
        mean = F.normalize(retain_embeddings.detach().double(), dim=-1).mean(dim=0, keepdim=True)
        if sink in ("retain-mean-orthogonal", "text-chance", "reference-chance"):
            mean = _without(mean, directions)
        mean = mean.to(forget_embeddings.device)
        if sink == "text-chance":
            if solve is None:
                raise ValueError("sink 'text-chance' needs the method's solve to calibrate on text")
            gamma = TEXT_CHANCE_FACTOR * text_chance_gammas(forget_embeddings, retain_embeddings, n_templates, mean,
                                                            solve)
            return (mean + gamma[:, None] * directions).repeat_interleave(n_templates, dim=0)
        if sink == "reference-chance":
            if solve is None or references is None:
                raise SpecError("sink: reference-chance calibrates on unlabelled reference images, and none were given",
                                "give --reference-images DIR (reference_images: DIR), or another sink")
            chosen = reference_chance_targets(forget_embeddings, n_templates, mean, solve, references)
            return chosen.repeat_interleave(n_templates, dim=0)
        return mean.expand(k_f, -1).clone()
    if encode is None:
        raise ValueError(f"sink {sink!r} needs a text encoder to fill its phrase into the templates")
    phrase = NEUTRAL_WORD if sink in ("neutral", "neutral-orthogonal") else sink
    per_template = F.normalize(encode([fill(t, phrase) for t in forget_templates]).detach().double(), dim=-1)
    per_template = per_template.to(forget_embeddings.device)
    if sink == "neutral-orthogonal":
        per_template = _without(per_template, directions)
    # forget row i is template i mod n_templates of its class: the same template's phrase
    return per_template.repeat(k_f // n_templates, 1)
