#!/usr/bin/env python3
"""Choose ccup-proto's λ_identity on the validation split, never on the test split.

    python scripts/tune_proto.py [--pretrained PATH] [--per-class 500] [--lambdas 1e-5,1e-4,1e-3,1e-2]

The validation split is the seeded 5,000 training images that ``train_tiny_clip.py`` holds out,
drawn in the three domains of ``ccup_cli/domains.py``. For each λ_identity it solves ccup-proto
(the ``methods`` entry, with prototypes synthesized once from the original model) and text-only
ccup for the three domain cases of ``bench_domains.py``, and prints the issue's figures: the
forgotten cells' top-1, the worst drop of the same classes in other domains and of the other
classes in the same domain, and the retain cells' mean top-1 change. Zero-shot heads are the
class embeddings over the openai templates, as ``ccup unlearn`` evaluates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ccup_cli import defaults  # noqa: E402
from ccup_cli.backends.base import load_backend  # noqa: E402
from ccup_cli.data.domains import DOMAIN_NAMES, render  # noqa: E402
from ccup_cli.data.idx import load_idx_split  # noqa: E402
from ccup_cli.methods.prompt_sides import build_sides, embed_side, load_domains  # noqa: E402
from ccup_cli.methods.prototypes import pixel_geometry, synthesize  # noqa: E402
from ccup_cli.methods.table import MethodContext, solve_full_map  # noqa: E402
from ccup_cli.text.templates import fill, load_templates  # noqa: E402

CASES = {"sandal in sketch": (["sandal"], ["sketch"]), "shirt,t-shirt in silhouette": (["shirt", "t-shirt"],
                                                                                     ["silhouette"]),
         "the whole sketch domain": ([], ["sketch"])}


def validation_features(backend, data_root: str, per_class: int):
    """Projected image features by domain of the held-out validation images, and their labels."""
    from train_tiny_clip import split_indices, to_model_input

    images, labels = load_idx_split(data_root, "train")
    _, val = split_indices(len(images), 0)
    images, labels = images[val], labels[val]
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    images, labels = images[keep], labels[keep]
    feats = {}
    with torch.no_grad():
        for d in DOMAIN_NAMES:
            x = to_model_input(np.stack([render(i, d) for i in images]))
            feats[d] = torch.cat([backend.encode_images(x[i:i + 1000], projected=True)
                                  for i in range(0, len(x), 1000)]).double()
    return feats, torch.as_tensor(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", default=None, help="default: the embedded ccup-tiny-fashion-domains")
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--lambdas", default="1e-5,1e-4,1e-3,1e-2")
    args = parser.parse_args()
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    model = "ccup-tiny-fashion-domains" if args.pretrained is None else None
    backend = load_backend(model, args.pretrained, "cpu")
    backend.model.eval().requires_grad_(False)
    classnames = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
    feats, labels = validation_features(backend, args.data_root, args.per_class)
    with torch.no_grad():
        head = torch.stack([F.normalize(F.normalize(backend.encode_prompts([fill(t, c) for t in
                                                                            load_templates("openai")]), dim=-1)
                                        .mean(0), dim=0) for c in classnames]).double()
    table = load_domains("fashion-mnist-domains")
    size, mean, std = pixel_geometry(backend.preprocess)
    made = {}

    def synthesize_once(targets, params):  # every case and λ shares the 30 cells' prototypes
        key = tuple(targets.flatten()[:4].tolist()) + (len(targets),)
        if key not in made:
            with torch.enable_grad():
                made[key] = synthesize(lambda px: backend.encode_images(px, projected=True), targets, size, mean, std,
                                       params["prototypes_per_group"], params["prototype_steps"])
        return made[key]

    def cell_top1(W):
        out = {}
        for d in DOMAIN_NAMES:
            pred = (F.normalize(feats[d] @ W.T, dim=-1) @ head.T).argmax(-1)
            for c, name in enumerate(classnames):
                out[(name, d)] = float((pred[labels == c] == c).double().mean())
        return out

    base = cell_top1(torch.eye(head.shape[1], dtype=torch.float64))
    print("validation top-1 by domain:", {d: round(float(np.mean([base[(c, d)] for c in classnames])), 4)
                                          for d in DOMAIN_NAMES})
    print("| case | method | λ_identity | forgotten cells | same class, other domains (worst, pt) | "
          "same domain, other classes (worst, pt) | retain cells (mean, pt) |")
    print("|---|---|---|---|---|---|---|")
    for case, (forget, forget_domains) in CASES.items():
        retain = [c for c in classnames if c not in forget]
        sides = build_sides(forget, retain, [], [], classnames, table, forget_domains)
        encode = lambda prompts: (backend.encode_prompts(prompts), False)  # noqa: E731
        with torch.no_grad():
            f_emb, r_emb = embed_side(encode, sides[0]), embed_side(encode, sides[1])
        targets = forget or classnames
        cells = {(c, d) for c in targets for d in forget_domains}
        for method in ("ccup", "ccup-proto"):
            for lam in [float(v) for v in args.lambdas.split(",")]:
                params = {"lambda_retain": defaults.LAMBDA_RETAIN, "lambda_identity": lam, "sink": defaults.SINK,
                          "prototype_steps": defaults.PROTOTYPE_STEPS,
                          "prototypes_per_group": defaults.PROTOTYPES_PER_GROUP}
                context = MethodContext(encode=lambda p: backend.encode_prompts(p), synthesize=synthesize_once)
                W = solve_full_map(method, f_emb, r_emb, params, context)
                after = cell_top1(W)
                drop = {k: 100 * (after[k] - base[k]) for k in base}
                same_class = [v for (c, d), v in drop.items() if c in targets and (c, d) not in cells]
                same_dom = [v for (c, d), v in drop.items() if d in forget_domains and c not in targets]
                retained = [v for k, v in drop.items() if k not in cells]
                print(f"| {case} | {method} | {lam:g} | {np.mean([base[k] for k in cells]):.3f} → "
                      f"{np.mean([after[k] for k in cells]):.3f} | {min(same_class, default=float('nan')):+.1f} | "
                      f"{min(same_dom, default=float('nan')):+.1f} | {np.mean(retained):+.1f} |", flush=True)


if __name__ == "__main__":
    main()
