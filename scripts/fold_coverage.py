"""Which open_clip configs ccup can fold, and where: every config in ``open_clip.list_models()``.

Each model is built without weights, on the meta device (no memory, no download): the model class
open_clip's factory would pick (CLIP, CustomTextCLIP or CoCa) from the config. A text tower taken
from Hugging Face (``hf_model_name``) needs a download to build, so there only the image tower is
built, and the text side is read from the config and marked unverified. For each config it records
the image-side and text-side fold sites (``open_clip_tower``) or the one-line reason there is none,
and what ``fold: auto`` does.

    python scripts/fold_coverage.py            # writes docs/benchmarks.md (fold_coverage) and the README line
    python scripts/fold_coverage.py --no-write # prints only
"""

from __future__ import annotations

import argparse
import copy
import logging
import re
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import write_section  # noqa: E402

README = ROOT / "README.md"
README_BEGIN, README_END = "<!-- fold_coverage:begin -->", "<!-- fold_coverage:end -->"


def build_on_meta(cfg: dict):
    """(model, text_built): the model open_clip's factory would build, on the meta device, without weights.

    With a Hugging Face text tower only the image tower is built (as ``model.visual``).
    """
    import open_clip
    import torch
    from torch import nn

    cfg = copy.deepcopy(cfg)
    with torch.device("meta"):
        if "hf_model_name" in cfg.get("text_cfg", {}):
            from open_clip.model import _build_vision_tower

            holder = nn.Module()
            holder.visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], cfg.get("quick_gelu", False))
            return holder, False
        if "multimodal_cfg" in cfg:
            from open_clip.coca_model import CoCa

            cfg.pop("custom_text", None)
            return CoCa(**cfg), True
        custom = cfg.pop("custom_text", False)
        return (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**cfg), True


def tower_shape(model, cfg: dict) -> str:
    """The row of the coverage table a config belongs to."""
    visual = type(model.visual).__name__
    vision = cfg.get("vision_cfg", {})
    if "multimodal_cfg" in cfg:
        return "CoCa (ViT)"
    if visual == "VisionTransformer":
        return "CLIP ViT"
    if visual == "ModifiedResNet":
        return "ModifiedResNet"
    name = vision.get("timm_model_name", "")
    if vision.get("timm_pool") == "map" and vision.get("timm_proj") == "none":
        return "SigLIP / SigLIP 2 (timm map pool, no projection)"
    if "mobileclip" in name.lower() or "fastvit" in name.lower():
        return "MobileCLIP / MobileCLIP2 (timm)"
    if not vision.get("timm_proj"):
        return "timm, the trunk's own classifier (EVA, PE-Core, ...)"
    return "timm with a linear or MLP projection (ConvNeXt, ViTamin, ...)"


def _hf_text_site(cfg: dict) -> str:
    """The text site an HF text tower would have, from its config alone (``HFTextEncoder``)."""
    text = cfg["text_cfg"]
    proj = text.get("hf_proj_type", text.get("proj_type"))
    if proj == "linear":
        return "text.proj"
    if proj == "mlp":
        return "text.proj.2"
    return "none (proj_type none: an Identity when widths match)"


def survey() -> list[dict]:
    import open_clip

    from ccup_cli.backends.open_clip_tower import NoSite, image_fold_site, locate_fold_site, text_fold_site
    from ccup_cli.errors import CheckpointError

    rows = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name)
        model, text_built = build_on_meta(cfg)
        row = {"config": name, "shape": tower_shape(model, cfg), "text_built": text_built}
        try:
            row["image"] = image_fold_site(model).path
        except NoSite as err:
            row["image"], row["image_reason"] = None, err.problem
        if text_built:
            try:
                row["text"] = text_fold_site(model).path
            except NoSite as err:
                row["text"], row["text_reason"] = None, err.problem
            try:
                site = locate_fold_site(model, "auto")
                row["auto"] = f"{site.side}: {site.path}"
            except CheckpointError as err:
                row["auto"], row["refused"] = None, err.problem
        else:
            hf_site = _hf_text_site(cfg)
            row["text"] = None
            row["text_reason"] = (f"not built: the Hugging Face text tower {cfg['text_cfg']['hf_model_name']} "
                                  f"needs a download; its config gives {hf_site}")
            if row["image"]:
                row["auto"] = f"image: {row['image']}"
            elif hf_site.startswith("text.proj"):
                row["auto"] = f"text: {hf_site} (from the config, unverified)"
            else:
                row["auto"], row["refused"] = None, f"{row['image_reason']}; {row['text_reason']}"
        rows.append(row)
        del model
    return rows


def summary_table(rows: list[dict]) -> str:
    shapes = Counter(r["shape"] for r in rows)
    lines = ["| tower shape | configs | fold: auto | image-side site | text-side site |", "|---|---|---|---|---|"]
    for shape, count in shapes.most_common():
        group = [r for r in rows if r["shape"] == shape]
        sides = Counter((r["auto"] or "refused").split(":")[0] for r in group)
        image = sorted({r["image"] for r in group if r["image"]}) or ["none"]
        text = sorted({r["text"] for r in group if r["text"]})
        unbuilt = sum(not r["text_built"] for r in group)
        text_cell = ", ".join(f"`{t}`" for t in text) or "—"
        if unbuilt:
            text_cell += f" ({unbuilt} HF text towers not built: need a download)"
        auto = ", ".join(f"{side} {n}" for side, n in sides.most_common())
        lines.append(f"| {shape} | {count} | {auto} | {', '.join(f'`{i}`' if i != 'none' else i for i in image)} "
                     f"| {text_cell} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only; leave the docs alone")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import open_clip

    start = time.perf_counter()
    rows = survey()
    seconds = time.perf_counter() - start
    total = len(rows)
    image = sum(1 for r in rows if r["auto"] and r["auto"].startswith("image"))
    text = sum(1 for r in rows if r["auto"] and r["auto"].startswith("text") and r["text_built"])
    unverified = sum(1 for r in rows if r["auto"] and r["auto"].startswith("text") and not r["text_built"])
    refused = [r for r in rows if not r["auto"]]
    both = sum(1 for r in rows if r["image"] and r["text"])
    hf_text = sum(1 for r in rows if not r["text_built"])
    either = [r for r in rows if r["image"] or r["text"]]
    refused_with_a_map = [r for r in refused if r in either]

    verdict = (f"{image + text} of {total} open_clip {open_clip.__version__} configs fold with `fold: auto` "
               f"({image} on the image side, {text} on the text side); {unverified} more fold on the text side "
               f"by their config alone (a Hugging Face text tower this machine cannot download); "
               f"{len(refused)} refused.")
    body = [verdict, "",
            f"Target: no config refused while either tower ends in a linear map: "
            f"{'met' if not refused_with_a_map else 'missed: ' + ', '.join(r['config'] for r in refused_with_a_map)}."
            f" {both} configs can fold on either side (`fold: image` or `fold: text`). "
            f"{hf_text} configs take their text tower from Hugging Face (`hf_model_name`); their image tower was "
            f"built alone and their text side is read from the config. Survey time: {seconds:.0f} s (2 shared "
            "cores; every model on the meta device, no weights).", "",
            summary_table(rows), ""]
    if refused:
        body += ["Refused, one line each:", ""] + [f"- `{r['config']}`: {r['refused']}" for r in refused] + [""]
    body += ["<details><summary>Every config</summary>", "", "| config | fold: auto | image side | text side |",
             "|---|---|---|---|"]
    for r in rows:
        image_cell = f"`{r['image']}`" if r["image"] else f"none ({r.get('image_reason', '')})"
        text_cell = f"`{r['text']}`" if r["text"] else r.get("text_reason", "none")
        body.append(f"| {r['config']} | {r['auto'] or 'refused'} | {image_cell} | {text_cell} |")
    body += ["", "</details>"]
    text_body = "\n".join(body)
    print(text_body)
    if args.no_write:
        return
    write_section("fold_coverage", "python scripts/fold_coverage.py", text_body)
    readme = README.read_text(encoding="utf-8")
    line = (f"{README_BEGIN}\nFold coverage: {verdict} Per tower shape: "
            f"[docs/benchmarks.md](docs/benchmarks.md#fold_coverage) (`scripts/fold_coverage.py`).\n{README_END}")
    if README_BEGIN in readme and README_END in readme:
        readme = re.sub(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), lambda _: line, readme, flags=re.S)
        README.write_text(readme, encoding="utf-8")
    else:
        print(f"README.md has no {README_BEGIN} marker; the line is:\n{line}", file=sys.stderr)


if __name__ == "__main__":
    main()
