"""Synthetic visual prototypes: image-side features made without any image (``ccup-proto``).

For each target text embedding, a few input images start from seeded noise around the
preprocessing mean and are optimised so that the model's image features point at the text
(cosine ascent, Adam). Pixels are kept in ``[0, 1]`` through a sigmoid and fed through the
model's own normalisation; small random shifts and flips at every step keep the result from
being a single-pixel adversarial pattern. The features of the final images, through the
original final map, are the prototypes.

Cost: ``steps`` forward and backward passes of the image tower over ``per_target × targets``
images, about ``3 × steps`` evaluation passes over as many images. Seconds for the embedded
model on a CPU; for a ViT-B-32 on a CPU, many minutes: use ``--device cuda`` there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

DEFAULT_STEPS = 100
DEFAULT_PER_TARGET = 4
DEFAULT_LR = 0.1
MAX_SHIFT = 2  # pixels of random translation per step


def _jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    dy, dx = (int(v) for v in torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2,), generator=gen))
    x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    if bool(torch.rand((), generator=gen) < 0.5):
        x = x.flip(-1)
    return x


def synthesize(
    encode: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    image_size: tuple[int, int],
    mean: list[float],
    std: list[float],
    per_target: int = DEFAULT_PER_TARGET,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """``[len(targets) * per_target, d]`` float32 image features, ``per_target`` rows per target in order.

    ``encode`` maps normalised pixels ``[n, 3, H, W]`` to projected image features ``[n, d]``
    (the original model's) and must be differentiable. ``targets [k, d]`` are text embeddings.
    """
    if steps < 1 or per_target < 1:
        raise ValueError("steps and per_target must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    goal = F.normalize(targets.detach().float(), dim=-1).repeat_interleave(per_target, 0).to(device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)[None, :, None, None]
    std_t = torch.tensor(std, dtype=torch.float32, device=device)[None, :, None, None]
    # start near the mean grey: logit(mean) plus seeded noise
    h, w = image_size
    start = torch.logit(mean_t.clamp(0.05, 0.95)).expand(len(goal), len(mean), h, w)
    noise = torch.randn(len(goal), len(mean), h, w, generator=gen).to(device)
    out = []
    for lo in range(0, len(goal), batch_size):
        raw = (start[lo : lo + batch_size] + 0.5 * noise[lo : lo + batch_size]).clone().requires_grad_(True)
        optim = torch.optim.Adam([raw], lr=lr)
        g = goal[lo : lo + batch_size]
        for _ in range(steps):
            pixels = (_jitter(torch.sigmoid(raw), gen) - mean_t) / std_t
            loss = -(F.normalize(encode(pixels), dim=-1) * g).sum(-1).mean()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
        with torch.no_grad():
            out.append(encode((torch.sigmoid(raw) - mean_t) / std_t).float().cpu())
    return torch.cat(out)


@contextmanager
def frozen_weights(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode, no weight gradients, gradients enabled (for the pixels); all restored after."""
    was_training = model.training
    trainable = [p.requires_grad for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)
        for p, flag in zip(model.parameters(), trainable):
            p.requires_grad_(flag)


def pixel_geometry(preprocess: Callable) -> tuple[tuple[int, int], list[float], list[float]]:
    """``((H, W), mean, std)`` of a preprocessing callable, read off a black and a white image.

    CLIP preprocessing ends in a per-channel ``(x − mean) / std``, so a constant image gives
    ``−mean/std`` (black) and ``(1 − mean)/std`` (white); this works for every backend.
    """
    from PIL import Image

    black = preprocess(Image.new("RGB", (64, 64), (0, 0, 0)))
    white = preprocess(Image.new("RGB", (64, 64), (255, 255, 255)))
    lo, hi = black.flatten(1).mean(1).double(), white.flatten(1).mean(1).double()
    std = 1.0 / (hi - lo)
    mean = -lo * std
    return (int(black.shape[-2]), int(black.shape[-1])), mean.tolist(), std.tolist()
