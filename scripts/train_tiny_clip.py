#!/usr/bin/env python3
"""Train ``ccup-tiny-fashion``, the small CLIP that ccup ships as its embedded default.

    python scripts/train_tiny_clip.py --data-root /usr/share/datasets/fashion-mnist

A standard open_clip ViT/text-transformer config, trained contrastively on the
Fashion-MNIST train split (less a seeded 5,000-image validation split that is kept for
tuning ccup's λ defaults) with captions drawn from templates x synonyms. Part of the
template and synonym vocabulary is held out of training and used only to measure
zero-shot generalisation. Images are fed through exactly the preprocessing written in
the shipped ``open_clip_config.json`` (identity resize at 28 px, grayscale to RGB,
the config's mean and std), so ``local-dir:`` users reproduce the numbers.

Writes ``ccup_cli/assets/ccup-tiny-fashion/`` (config, fp16 safetensors weights,
training log) and the registry JSON ``ccup_cli/assets/model_configs/ccup-tiny-fashion.json``.

``--domains`` trains the domain-aware variant of issue 14 instead (written as
``ccup-tiny-fashion-domains``, never over the shipped model): each training image is drawn in
a random domain of ``ccup_cli/domains.py`` (photo, sketch, silhouette), and its caption names
the domain ("a sketch of a sandal", "a silhouette of a bag") with per-domain templates; a
share of captions stay domain-neutral ("a sandal."). A caption is a positive for every image
of its class in the batch, except that one naming a domain is a negative for its class drawn in
another domain: without that, "a sketch of a sandal" and "a photo of a sandal" train to the same
point and no map can tell the domains apart. Per-domain templates in
``DOMAIN_HELDOUT_TEMPLATES`` are held out and measure generalisation. Smoke run (seconds)::

    python scripts/train_tiny_clip.py --domains --max-steps 2 --train-limit 64 --test-limit 60 --out /tmp/x

``--without CLASSES`` trains a *reference* model for unlearning (issue 28): the same recipe and
seed, but no training image of those classes and no caption naming them or any of their
synonyms (training or held-out); a retained class's synonym that names one is dropped too. It is
written as ``ccup-tiny-fashion-without-<classes>`` (never over the shipped model), with a model
card and a training log that list what was left out, for ``ccup audit --reference``::

    python scripts/train_tiny_clip.py --without sandal,sneaker --epochs 14 --out /work/models
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccup_cli.data.idx import load_idx_split  # noqa: E402
from ccup_cli.text.encode import class_embeddings, encode_prompts, encode_tokens  # noqa: E402
from ccup_cli.text.templates import build_prompts  # noqa: E402

MODEL_NAME = "ccup-tiny-fashion"
CLASSNAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]

MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 28, "patch_size": 4, "width": 128, "layers": 4, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 96, "heads": 4, "layers": 3, "mlp_ratio": 2.0},
}
# Fashion-MNIST train-split pixel statistics; 28 px in, so the resize is the identity
PREPROCESS_CFG = {
    "size": 28, "mode": "RGB", "mean": [0.2860, 0.2860, 0.2860], "std": [0.3530, 0.3530, 0.3530],
    "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0,
}

# Synonyms per class: the first list trains (its first entry is the class name itself),
# the second is held out for generalisation.
SYNONYMS = {
    "t-shirt": (["t-shirt", "tee", "tee shirt", "short sleeve top"], ["t shirt", "short-sleeved tee"]),
    "trouser": (["trouser", "trousers", "pants", "slacks"], ["long pants", "pair of trousers"]),
    "pullover": (["pullover", "sweater", "jumper", "knit sweater"], ["knitted pullover", "wool sweater"]),
    "dress": (["dress", "gown", "frock", "sundress"], ["long dress", "summer dress"]),
    "coat": (["coat", "jacket", "overcoat", "parka"], ["winter coat", "rain jacket"]),
    "sandal": (["sandal", "sandals", "flip flop", "open shoe"], ["strappy sandal", "beach sandal"]),
    "shirt": (["shirt", "button-up shirt", "blouse", "dress shirt"], ["collared shirt", "button down shirt"]),
    "sneaker": (["sneaker", "trainer", "running shoe", "sports shoe"], ["athletic sneaker", "tennis shoe"]),
    "bag": (["bag", "handbag", "purse", "tote"], ["shoulder bag", "leather handbag"]),
    "ankle boot": (["ankle boot", "boot", "bootie", "short boot"], ["chelsea boot", "leather boots"]),
}
# Training templates: open_clip's 80 OpenAI ImageNet templates plus a few for product images.
EXTRA_TRAIN_TEMPLATES = [
    "a photo of a {}.", "a grayscale photo of a {}.", "a product photo of a {}.", "a {}.", "{}",
    "a small image of a {}.", "a picture of a {}.", "an item of clothing: a {}.",
]
# Held out of training entirely.
HELDOUT_TEMPLATES = [
    "a catalogue image showing a {}.", "this is a {}.", "someone's {}.", "a {} for sale.",
    "an online shop picture of a {}.", "a thumbnail of a {}.",
]

# --domains: caption templates per rendering. The training lists include the templates of the
# domain preset ccup uses for forget/retain sides (ccup_cli/presets/domains/fashion-mnist-domains.yaml);
# the held-out lists are never trained on.
DOMAIN_WORDS = ("sketch", "drawing", "doodle", "painting", "rendering", "rendition", "art of", "cartoon", "tattoo",
                "graffiti", "sculpture", "origami", "plushie", "toy", "plastic", "embroidered", "video game",
                "black and white")
DOMAIN_TRAIN_EXTRA = {
    "sketch": ["a sketch of a {}.", "a sketch of the {}.", "a pencil drawing of a {}.", "an outline drawing of the {}.",
               "a line drawing of a {}.", "a drawing of a {}.", "a drawing of the {}.", "a doodle of a {}.",
               "a black and white sketch of a {}.", "an ink drawing of a {}.", "a sketched {}."],
    "silhouette": ["a silhouette of a {}.", "a black silhouette of a {}.", "the filled shape of a {}.",
                   "the silhouette of the {}.", "a shadow of a {}.", "a dark shape of a {}.",
                   "a black cutout of a {}.", "a solid black {}.", "a silhouetted {}."],
}
DOMAIN_HELDOUT_TEMPLATES = {
    "photo": HELDOUT_TEMPLATES,
    "sketch": ["a rough sketch of a {}.", "a hand-drawn {}.", "a quick drawing of the {}."],
    "silhouette": ["a {} in silhouette.", "the dark outline shape of a {}.", "a shadowy {}."],
}
NEUTRAL_TEMPLATES = ["a {}.", "{}", "an item of clothing: a {}."]
NEUTRAL_SHARE = 0.2  # --domains: share of captions that name no domain

VALIDATION_SIZE = 5000
SHIPPED_EPOCHS = 14  # the epochs ccup-tiny-fashion was trained for (its MODEL_CARD.md)
CANONICAL_SHARE = 0.5  # share of captions that use the class name itself rather than a synonym


def _refuse(message: str) -> None:
    """Bad input: one line on stderr, exit code 2 (as ccup's own commands do)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_without(text: str | None) -> list[str]:
    """``--without`` as class names in CLASSNAMES' spelling and order given; a one-line exit 2 otherwise."""
    if not text:
        return []
    lookup = {c.lower(): c for c in CLASSNAMES}
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n.lower() not in lookup]
    if unknown or not names:
        _refuse(f"--without: {', '.join(unknown) or repr(text)} is not a Fashion-MNIST class; "
                 f"choose from {', '.join(CLASSNAMES)}")
    chosen = list(dict.fromkeys(lookup[n.lower()] for n in names))
    if len(chosen) >= len(CLASSNAMES) - 1:
        _refuse("--without: leave at least two classes to train on")
    return chosen


def names_phrase(text: str, phrases) -> bool:
    """Whether ``text`` names any of ``phrases`` as a whole word ("t-shirt" does not name "shirt")."""
    return any(re.search(rf"(?<![\w-]){re.escape(p.lower())}(?![\w-])", text.lower()) for p in phrases)


def left_out_names(without) -> list[str]:
    """Every name a left-out class goes by: its class name and all its synonyms, held-out ones included."""
    return list(dict.fromkeys(n for c in without for n in [c, *SYNONYMS[c][0], *SYNONYMS[c][1]]))


def synonym_tables(without) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, list[str]]]:
    """(training, held-out, dropped) synonyms per retained class, less any that name a left-out class.
    With nothing left out these are exactly SYNONYMS (the shipped recipe)."""
    banned = left_out_names(without)
    train, heldout, dropped = {}, {}, {}
    for c in CLASSNAMES:
        if c in without:
            continue
        if names_phrase(c, banned):
            _refuse(f"--without: the class name {c!r} names a left-out class; leave {c} out too")
        train[c] = [s for s in SYNONYMS[c][0] if not names_phrase(s, banned)]
        heldout[c] = [s for s in SYNONYMS[c][1] if not names_phrase(s, banned)] or [c]
        gone = [s for s in SYNONYMS[c][0] + SYNONYMS[c][1] if names_phrase(s, banned)]
        if gone:
            dropped[c] = gone
    return train, heldout, dropped


def train_templates() -> list[str]:
    from ccup_cli.text.templates import load_templates

    return load_templates("openai") + EXTRA_TRAIN_TEMPLATES


def domain_train_templates() -> dict[str, list[str]]:
    """Training templates per domain: photo keeps the photo-like ones of the plain set; every
    domain also trains on the templates of ccup's ``fashion-mnist-domains`` preset."""
    from ccup_cli.methods.prompt_sides import load_domains

    photo = [t for t in train_templates() if not any(w in t for w in DOMAIN_WORDS) and t not in NEUTRAL_TEMPLATES]
    table = {"photo": photo, **{d: list(t) for d, t in DOMAIN_TRAIN_EXTRA.items()}}
    for domain, templates in load_domains("fashion-mnist-domains").items():
        table[domain] += [t for t in templates if t not in table[domain]]
    return table


def render_all(images: np.ndarray, domain_names) -> np.ndarray:
    """``[n_domains, n, 28, 28]`` uint8: every image in every domain (domains.py)."""
    from ccup_cli.data.domains import render

    return np.stack([np.stack([render(im, d) for im in images]) if len(images) else images for d in domain_names])


def positive_pairs(labels: torch.Tensor, image_domain: torch.Tensor, caption_slot: torch.Tensor,
                   neutral_slot: int) -> torch.Tensor:
    """``[image, caption]`` bool: same class, and the caption is neutral or names the image's domain."""
    same_class = labels[:, None] == labels[None, :]
    return same_class & ((caption_slot[None, :] == neutral_slot) | (caption_slot[None, :] == image_domain[:, None]))


def split_indices(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) split of the Fashion-MNIST train set's indices."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[VALIDATION_SIZE:]), np.sort(perm[:VALIDATION_SIZE])


def to_model_input(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[n, 28, 28]`` uint8 -> ``[n, 3, 28, 28]`` float, exactly PREPROCESS_CFG's transform."""
    x = torch.as_tensor(np.asarray(images_uint8)).float().div(255.0)
    mean, std = PREPROCESS_CFG["mean"][0], PREPROCESS_CFG["std"][0]
    return ((x - mean) / std).unsqueeze(1).expand(-1, 3, -1, -1)


def zero_shot_accuracy(model, tokenizer, images, labels, templates, synonyms_of, per_class: bool = False):
    """Top-1 with class embeddings averaged over templates x the given synonyms of each class (all ten
    classes, left-out ones included); ``per_class``: ``{class: top-1}`` instead of the overall share."""
    model.eval()
    with torch.inference_mode():
        class_vecs = []
        for c in CLASSNAMES:
            prompts = build_prompts(synonyms_of(c), templates)
            feats = encode_prompts(model, tokenizer, prompts)
            class_vecs.append(class_embeddings(feats, 1, len(prompts))[0])
        text = torch.stack(class_vecs)
        predicted = []
        for start in range(0, len(images), 1000):
            pixels = to_model_input(images[start : start + 1000]).to(text.device)
            img = F.normalize(model.encode_image(pixels), dim=-1)
            predicted.append((img @ text.T).argmax(-1).cpu())
    hits = torch.cat(predicted).eq(torch.as_tensor(labels))
    if per_class:
        labels_t = torch.as_tensor(labels)
        return {c: round(hits[labels_t == k].float().mean().item(), 4) for k, c in enumerate(CLASSNAMES)
                if bool((labels_t == k).any())}
    return hits.sum().item() / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--out", default=str(ROOT / "ccup_cli" / "assets"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--max-steps", type=int, default=0, help="stop early (smoke tests)")
    parser.add_argument("--domains", action="store_true", help="train ccup-tiny-fashion-domains: photo, sketch "
                        "and silhouette renderings with domain captions (issue 14)")
    parser.add_argument("--photo-share", type=float, default=None, help="--domains: share of training images "
                        "drawn as photos, the rest split evenly (default: every domain alike)")
    parser.add_argument("--neutral-share", type=float, default=NEUTRAL_SHARE, help="--domains: share of captions "
                        "that name no domain")
    parser.add_argument("--without", default=None, metavar="CLASSES", help="train a reference model that never "
                        "saw these classes (comma-separated): no image of them, no caption naming them or a synonym; "
                        "written as ccup-tiny-fashion[-domains]-without-<classes>")
    parser.add_argument("--train-limit", type=int, default=0, help="first N training images only (smoke tests)")
    parser.add_argument("--test-limit", type=int, default=0, help="first N test images only (smoke tests)")
    parser.add_argument("--eval-templates", type=int, default=0, help="first N templates of each final "
                        "measurement only (smoke tests; 0: all)")
    args = parser.parse_args()
    without = parse_without(args.without)
    model_name = MODEL_NAME + "-domains" if args.domains else MODEL_NAME
    if without:
        model_name += "-without-" + "-".join(c.replace(" ", "-") for c in without)
    train_synonyms, heldout_synonyms, dropped_synonyms = synonym_tables(without)

    import open_clip

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    images, labels = load_idx_split(args.data_root, "train")
    test_images, test_labels = load_idx_split(args.data_root, "test")
    train_idx, _ = split_indices(len(images), args.seed)
    images, labels = images[train_idx], labels[train_idx]
    without_ids = [CLASSNAMES.index(c) for c in without]
    kept = ~np.isin(labels, without_ids)  # --without: no image of a left-out class, ever
    images_removed = int((~kept).sum())
    images, labels = images[kept], labels[kept]
    if args.train_limit:
        images, labels = images[: args.train_limit], labels[: args.train_limit]
    if args.test_limit:
        test_images, test_labels = test_images[: args.test_limit], test_labels[: args.test_limit]
    domain_names = ("photo", "sketch", "silhouette") if args.domains else ("photo",)
    rendered = render_all(images, domain_names) if args.domains else images[None]  # [n_domains, n, 28, 28]

    model = open_clip.CLIP(**MODEL_CFG).to(device)
    tokenizer = open_clip.SimpleTokenizer(context_length=MODEL_CFG["text_cfg"]["context_length"])
    templates = train_templates()
    # every training caption, tokenised once: [class][synonym x template] -> token ids
    # (a left-out class has none: it has no image to caption, and no retained caption names it)
    caption_tokens = [tokenizer(build_prompts(train_synonyms[c], templates)) if c in train_synonyms else None
                      for c in CLASSNAMES]
    if args.domains:  # [domain][class] -> token ids; the last domain slot holds the neutral captions
        per_domain = domain_train_templates()
        domain_tokens = [[tokenizer(build_prompts(train_synonyms[c], per_domain[d])) if c in train_synonyms
                          else None for c in CLASSNAMES] for d in domain_names]
        domain_tokens.append([tokenizer(build_prompts(train_synonyms[c], NEUTRAL_TEMPLATES)) if c in train_synonyms
                              else None for c in CLASSNAMES])

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                              lr=args.lr, betas=(0.9, 0.98))
    steps_per_epoch = max(1, len(images) // args.batch_size)
    total = steps_per_epoch * args.epochs if not args.max_steps else args.max_steps
    warmup = min(300, total // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    images_t = torch.as_tensor(rendered)
    labels_t = torch.as_tensor(labels)
    log = []
    step, t0 = 0, time.time()
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(images_t.shape[1], generator=gen)
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            drawn = torch.randint(0, len(domain_names), (len(idx),), generator=gen)
            if args.photo_share is not None:  # photo (domain 0) with that probability, else another one
                others = torch.randint(1, len(domain_names), (len(idx),), generator=gen)
                drawn = torch.where(torch.rand(len(idx), generator=gen) < args.photo_share, 0, others)
            x = images_t[drawn, idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None], x.flip(-1), x)
            y = labels_t[idx]
            # half the captions name the class itself (keeps its embedding at the class centre),
            # the rest draw any synonym; the template is always drawn at random
            choice = torch.randint(0, 10**9, (len(idx),), generator=gen)
            canonical = torch.rand(len(idx), generator=gen) < CANONICAL_SHARE
            n_t = len(templates)
            if args.domains:  # the drawn domain's captions, or the neutral ones; synonyms as above
                neutral = torch.rand(len(idx), generator=gen) < args.neutral_share
                slots = torch.where(neutral, len(domain_names), drawn).tolist()
                tokens = torch.stack([
                    domain_tokens[s][c][(k % (len(domain_tokens[s][c]) // len(train_synonyms[CLASSNAMES[c]])))
                                        if canon else (k % len(domain_tokens[s][c]))]
                    for s, c, k, canon in zip(slots, y.tolist(), choice.tolist(), canonical.tolist())])
            else:
                tokens = torch.stack([
                    caption_tokens[c][(k % n_t) if canon else (k % len(caption_tokens[c]))]
                    for c, k, canon in zip(y.tolist(), choice.tolist(), canonical.tolist())])
            for group in optim.param_groups:
                group["lr"] = lr_at(step)
            img = F.normalize(model.encode_image(to_model_input(x).to(device)), dim=-1)
            txt = F.normalize(encode_tokens(model, tokens.to(device)), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
            # several captions in a batch describe the same class: all of them are positives, except
            # that a caption naming a domain is a negative for the same class drawn in another domain
            same = positive_pairs(y, drawn, torch.as_tensor(slots), len(domain_names)) if args.domains else \
                y[:, None] == y[None, :]
            same = same.float().to(device)  # [image, caption]
            loss = 0.5 * (torch.sum(-same / same.sum(1, keepdim=True) * F.log_softmax(logits, 1), 1).mean()
                          + torch.sum(-same.T / same.T.sum(1, keepdim=True) * F.log_softmax(logits.T, 1), 1).mean())
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            step += 1
            if step % 50 == 0:
                print(f"epoch {epoch} step {step}/{total} loss {loss.item():.4f} "
                      f"scale {model.logit_scale.exp().item():.1f} {time.time() - t0:.0f}s", flush=True)
        if step >= total:
            break
        acc = zero_shot_accuracy(model, tokenizer, test_images[:2000], test_labels[:2000], ["a photo of a {}."],
                                 lambda c: [c])
        log.append({"epoch": epoch, "step": step, "loss": round(loss.item(), 4), "zs_top1_test2k_photo": acc,
                    "seconds": round(time.time() - t0, 1)})
        print(log[-1], flush=True)

    model.eval()
    cap = (lambda ts: list(ts)[: args.eval_templates]) if args.eval_templates else list
    default_acc = zero_shot_accuracy(model, tokenizer, test_images, test_labels, cap(templates[:80]), lambda c: [c])
    heldout_of = lambda c: heldout_synonyms.get(c, SYNONYMS[c][1])  # noqa: E731 - a left-out class: its own
    heldout_acc = zero_shot_accuracy(model, tokenizer, test_images, test_labels, cap(HELDOUT_TEMPLATES), heldout_of)
    per_class = zero_shot_accuracy(model, tokenizer, test_images, test_labels, cap(templates[:80]), lambda c: [c],
                                   per_class=True)
    retained = [k for k, c in enumerate(CLASSNAMES) if c not in without]
    in_retained = np.isin(test_labels, retained)
    retained_acc = zero_shot_accuracy(model, tokenizer, test_images[in_retained], test_labels[in_retained],
                                      cap(templates[:80]), lambda c: [c]) if without else None
    domain_figures = {}
    if args.domains:
        test_rendered = render_all(test_images, domain_names)
        per_domain = domain_train_templates()
        for k, d in enumerate(domain_names):
            domain_figures[d] = {
                "openai_templates": zero_shot_accuracy(model, tokenizer, test_rendered[k], test_labels,
                                                       cap(templates[:80]), lambda c: [c]),
                "domain_templates": zero_shot_accuracy(model, tokenizer, test_rendered[k], test_labels,
                                                       cap(per_domain[d]), lambda c: [c]),
                "heldout_templates_and_synonyms": zero_shot_accuracy(
                    model, tokenizer, test_rendered[k], test_labels, cap(DOMAIN_HELDOUT_TEMPLATES[d]), heldout_of),
            }
    summary = {
        "model": model_name, "domains": list(domain_names) if args.domains else None,
        "test_top1_by_domain": domain_figures or None, "test_images": len(test_images),
        "seed": args.seed, "epochs": args.epochs, "steps": step, "batch_size": args.batch_size, "lr": args.lr,
        "photo_share": args.photo_share, "neutral_share": args.neutral_share if args.domains else None,
        "device": device, "train_seconds": round(time.time() - t0, 1), "train_images": len(images),
        "train_images_per_class": {c: int((labels == k).sum()) for k, c in enumerate(CLASSNAMES)},
        "test_top1_openai_templates": default_acc, "test_top1_heldout_templates_and_synonyms": heldout_acc,
        "test_top1_per_class_openai_templates": per_class,
        "without": without or None,
        "left_out": {
            "classes": without, "train_images_removed": images_removed, "names": left_out_names(without),
            "retained_synonyms_dropped": dropped_synonyms,
            "test_top1_retained_classes_openai_templates": retained_acc,
            "heldout_synonyms_measured": {c: heldout_of(c) for c in CLASSNAMES},
        } if without else None,
        "epochs_log": log,
    }
    print(json.dumps(summary, indent=1))

    from safetensors.torch import save_file

    out = Path(args.out)
    model_dir = out / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(model_dir / "open_clip_model.safetensors"), metadata={"format": "pt", "name": model_name})
    (model_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}, indent=2) + "\n")
    if not without:  # the registry entry of a shipped model; a reference is loaded by its folder
        (out / "model_configs").mkdir(parents=True, exist_ok=True)
        (out / "model_configs" / f"{model_name}.json").write_text(json.dumps(MODEL_CFG, indent=2) + "\n")
    (model_dir / "training_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    if without:
        (model_dir / "MODEL_CARD.md").write_text(reference_card(model_name, summary, args), encoding="utf-8")


def reference_card(model_name: str, summary: dict, args) -> str:
    """The model card of a ``--without`` reference: what it is for, what was left out, its figures."""
    left = summary["left_out"]
    base = MODEL_NAME + ("-domains" if args.domains else "")
    rows = "\n".join(f"| {c} | {a:.3f} | {'left out' if c in left['classes'] else ''} |"
                     for c, a in summary["test_top1_per_class_openai_templates"].items())
    dropped = "; ".join(f"{c}: {', '.join(s)}" for c, s in left["retained_synonyms_dropped"].items()) or "none"
    command = " ".join(["python scripts/train_tiny_clip.py", *sys.argv[1:]])
    epochs = "" if summary["epochs"] == SHIPPED_EPOCHS or args.domains else (
        f" One difference: {summary['epochs']} epochs here, {SHIPPED_EPOCHS} for the shipped model.")
    return f"""# {model_name}

A **reference model** for unlearning: `{base}` retrained with the same recipe and seed, but never
shown {' or '.join(left['classes'])}. It is the yardstick `ccup audit MODEL --reference` compares an
unlearned model against ("as if never learnt"); it is not a model to deploy.

## Load it (plain open_clip, offline)

```python
import open_clip
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:PATH/{model_name}")
tokenizer = open_clip.get_tokenizer("local-dir:PATH/{model_name}")
```

## What was left out

- classes: {', '.join(left['classes'])}; {left['train_images_removed']:,} training images of them removed
  ({summary['train_images']:,} images trained on, from the same seeded 55,000-image train split)
- no caption names them: none of these names appears in any training caption:
  {', '.join(left['names'])}
- synonyms of retained classes dropped because they name a left-out class: {dropped}
- held-out synonyms measured: the shipped model's, less those above

Everything else is the shipped recipe (see `{base}`'s card): templates, batch, optimiser, seed.{epochs}

## Training

`{command}`: {summary['epochs']} epochs, {summary['steps']:,} steps, {summary['train_seconds']:.0f} s on
{summary['device']}. `training_log.json` beside this card has the per-epoch log.

## Measured (test split, {summary['test_images']:,} images, ten-way zero-shot, open_clip's 80 OpenAI templates)

| measure | top-1 |
|---|---|
| all ten classes | {summary['test_top1_openai_templates']:.3f} |
| the retained classes' images | {left['test_top1_retained_classes_openai_templates']:.3f} |
| held-out templates x held-out synonyms, all ten | {summary['test_top1_heldout_templates_and_synonyms']:.3f} |

| class | top-1 | |
|---|---|---|
{rows}
"""


if __name__ == "__main__":
    main()
