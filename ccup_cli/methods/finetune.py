"""The fine-tuning baseline: what a user would do without CCUP.

Gradient unlearning on labelled training images (never the evaluation images):

- forget images: the softmax mass the zero-shot classifier puts on the forget classes is
  pushed down (a bounded loss, in [0, 1], so it cannot blow up the way −log(1 − p) does);
- retain images: the usual cross-entropy over all classes keeps them right;
- only the image tower's last block, its final norm and the final linear map are trained (the backend says which),
  with AdamW; the text classifier is fixed (computed once from the original model).

It stops at the step budget, or earlier once forget top-1 on a held-out slice of the training
data is at most the target. Seeded; the output differs from the source only in the
trained tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.dataset import EvalDataset
from ..errors import CheckpointError
from ..metrics.zero_shot import LOGIT_SCALE
from ..presets import defaults

CHECK_EVERY = 25


@dataclass
class FinetuneResult:
    trained_keys: list[str]
    steps: int
    images_seen: int
    stopped_early: bool
    history: list[dict]


def finetune_unlearn(
    backend,
    train: EvalDataset,
    classifier: torch.Tensor,
    forget_ids: Sequence[int],
    steps: int = defaults.FINETUNE_STEPS,
    lr: float = defaults.FINETUNE_LR,
    batch_size: int = defaults.FINETUNE_BATCH_SIZE,
    target_forget_acc: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``backend.model`` in place to forget ``forget_ids`` (class indices of ``train``).

    ``backend`` is a ``backends.base.Backend``: it names the parameters to train, preprocesses the
    images and computes image features with autograd (``encode_images(x, projected=True)``).
    """
    model, transform = backend.model, backend.preprocess
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    labels = train.labels
    is_forget = np.isin(labels, np.asarray(forget_ids))
    forget_idx, retain_idx = np.flatnonzero(is_forget), np.flatnonzero(~is_forget)
    if len(forget_idx) == 0:
        raise CheckpointError("finetune: the train split has no image of the forget classes",
                              "check --eval and the forget list")
    rng.shuffle(forget_idx)
    n_holdout = min(100, len(forget_idx) // 5)
    if n_holdout == 0:  # too few images to hold any out: check on the training images themselves
        holdout = forget_idx
    else:
        holdout, forget_idx = forget_idx[:n_holdout], forget_idx[n_holdout:]
    trained = backend.trainable_parameters()
    if not trained:
        raise CheckpointError("finetune: found no image-tower parameters to train", "use method ccup or nullspace")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trained.values():
        p.requires_grad_(True)
    optim = torch.optim.AdamW(list(trained.values()), lr=lr, weight_decay=0.0)
    classifier = classifier.to(device).float()
    forget_mask = torch.zeros(classifier.shape[0], dtype=torch.bool, device=device)
    forget_mask[list(forget_ids)] = True

    def batch(indices: np.ndarray) -> torch.Tensor:
        return torch.stack([transform(train.load_image(int(i))) for i in indices]).to(device)

    def holdout_forget_acc() -> float:
        model.eval()
        with torch.no_grad():
            logits = F.normalize(backend.encode_images(batch(holdout), projected=True), dim=-1) @ classifier.T
        return float((logits.argmax(1).cpu() == torch.as_tensor(labels[holdout])).double().mean())

    history, images_seen, stopped = [], 0, False
    half = batch_size // 2
    step = 0
    for step in range(1, steps + 1):
        model.train()
        f_idx = forget_idx[torch.randint(len(forget_idx), (half,), generator=gen).numpy()]
        r_idx = retain_idx[torch.randint(len(retain_idx), (batch_size - half,), generator=gen).numpy()]
        x = batch(np.concatenate([f_idx, r_idx]))
        y = torch.as_tensor(labels[np.concatenate([f_idx, r_idx])], device=device)
        logits = LOGIT_SCALE * F.normalize(backend.encode_images(x, projected=True), dim=-1) @ classifier.T
        probs = logits.softmax(dim=1)
        forget_loss = probs[:half][:, forget_mask].sum(dim=1).mean()  # bounded in [0, 1]
        retain_loss = F.cross_entropy(logits[half:], y[half:])
        loss = forget_loss + retain_loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        images_seen += len(x)
        if progress is not None:
            progress("fine-tuning", step, steps)
        if step % CHECK_EVERY == 0 or step == steps:
            acc = holdout_forget_acc()
            images_seen += len(holdout)
            history.append({"step": step, "loss": float(loss.detach()), "holdout_forget_top1": acc})
            if acc <= target_forget_acc:
                stopped = step < steps
                break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return FinetuneResult(sorted(trained), step, images_seen, stopped, history)
