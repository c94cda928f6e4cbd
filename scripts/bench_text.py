#!/usr/bin/env python3
"""Fast exact text encoding against open_clip's ``encode_text``, and the text-phase budget.

    python scripts/bench_text.py [--model ViT-B-32] [--prompts 512]

1. Speed-up of ``ccup_cli.encode_prompts`` over ``model.encode_text(tokenizer(prompts))``
   on short prompts ("a photo of a {class}."), same model, same process, and the largest
   difference between the two outputs.
2. The text phase of ``ccup unlearn`` with the default retain vocabulary (ImageNet-1k less
   the forget classes, ``simple`` templates) and 2 forget classes with all 80 ``openai``
   templates, cache off. Random-init weights: the cost is the same as with real ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import write_section  # noqa: E402

from ccup_cli.data.catalog import generic_vocabulary  # noqa: E402
from ccup_cli.text.embeddings import default_retain, embed_classes  # noqa: E402
from ccup_cli.text.encode import encode_prompts  # noqa: E402
from ccup_cli.text.templates import build_prompts, load_templates  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(args.model, pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer(args.model)
    prompts = build_prompts(generic_vocabulary()[: args.prompts], ["a photo of a {}."])

    with torch.inference_mode():
        encode_prompts(model, tokenizer, prompts[:32])  # warm up both paths
        model.encode_text(tokenizer(prompts[:32]))
        t0 = time.perf_counter()
        reference = torch.cat([model.encode_text(tokenizer(prompts[i:i + 256])) for i in range(0, len(prompts), 256)])
        t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = encode_prompts(model, tokenizer, prompts, batch_size=256)
    t_fast = time.perf_counter() - t0
    max_diff = float((fast - reference).abs().max())

    forget = ["tabby cat", "golden retriever"]
    retain = default_retain(forget)
    t0 = time.perf_counter()
    def encode(texts, batch_size=256, progress=None):
        return encode_prompts(model, tokenizer, texts, batch_size, progress)

    embed_classes(encode, forget, load_templates("openai"))
    embed_classes(encode, retain, load_templates("simple"))
    t_phase = time.perf_counter() - t0
    n_phase = len(forget) * 80 + len(retain) * len(load_templates("simple"))

    body = f"""| measurement | value |
|---|---|
| open_clip `encode_text`, {len(prompts)} short prompts | {t_ref:.2f} s |
| `ccup_cli.encode_prompts`, same prompts | {t_fast:.2f} s |
| **speed-up** | **{t_ref / t_fast:.1f}×** |
| largest abs. difference between the two | {max_diff:.2e} |
| text phase, default retain vocabulary ({len(retain)} classes × {len(load_templates('simple'))} templates + {len(forget)} forget × 80) = {n_phase} prompts, cache off | {t_phase:.1f} s |

Model: random-init {args.model} (same cost as real weights)."""
    print(body)
    if not args.no_doc:
        write_section("bench_text", f"python scripts/bench_text.py --model {args.model} --prompts {args.prompts}", body)


if __name__ == "__main__":
    main()
