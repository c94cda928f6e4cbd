#!/usr/bin/env python3
"""Write the README quick start's stand-ins: a checkpoint file and an ImageFolder.

    python scripts/make_quickstart.py            # writes model.safetensors and images/ here

``model.safetensors`` is the embedded ccup-tiny-fashion's open_clip state dict, copied as it ships:
the file a user would have for their own ViT-B-32, named with ``--model ccup-tiny-fashion`` as theirs
is with ``--model ViT-B-32``. ``images/`` is the embedded fashion-mnist-mini subset written as an
ImageFolder: one sub-folder per class, named as the class, with ``--per-class`` PNGs each (the
first ones of the subset, in its seeded order). Torch-free; takes about a second.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccup_cli.data.catalog import preset_classnames  # noqa: E402
from ccup_cli.data.datasets import ASSETS, MINI_FILE  # noqa: E402

EMBEDDED = ASSETS / "ccup-tiny-fashion"


def write_quickstart(out: Path, per_class: int = 100) -> tuple[Path, Path]:
    """Write ``out/model.safetensors`` and ``out/images/``; refuse to overwrite either.
    Returns (checkpoint, folder)."""
    checkpoint, folder = out / "model.safetensors", out / "images"
    for path in (checkpoint, folder):
        if path.exists():
            raise SystemExit(f"error: {path} exists; remove it or pass --out to another folder")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(EMBEDDED / "open_clip_model.safetensors", checkpoint)
    names = preset_classnames("fashion-mnist")
    with np.load(MINI_FILE) as z:
        images, labels = z["images"], z["labels"]
    for label, name in enumerate(names):
        (folder / name).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == label)[:per_class]):
            Image.fromarray(images[index]).save(folder / name / f"{i:04d}.png")
    return checkpoint, folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder to write into (default: here)")
    parser.add_argument("--per-class", type=int, default=100, help="images per class (at most 200)")
    args = parser.parse_args()
    checkpoint, folder = write_quickstart(args.out, args.per_class)
    print(f"wrote {checkpoint} (the embedded ccup-tiny-fashion) and {folder}/ "
          f"({args.per_class} images in each of 10 class folders)")


if __name__ == "__main__":
    main()
