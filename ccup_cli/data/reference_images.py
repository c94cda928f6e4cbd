"""Reference images: folders of unlabelled images, encoded once through the session's loader and cache.

One concept, two inputs, one plumbing (``Plan.references``: group -> folder; the session encodes every
group alike and hands them to the method through ``MethodContext.reference``):

- ``reference_images``: ONE folder of images from where the model is deployed (group
  ``DEPLOYMENT``), any classes, found recursively. ccup calibrates its sink on them and ``erase:
  probe`` fits its erasure on them; labels come from the original model's zero-shot, never from
  folder names. A folder with fewer than ``MIN_REFERENCE_IMAGES`` images, or with an image that
  cannot be read, is refused at the door with every problem at once.
- ``domain_images``: one folder per domain (method domain-edit), as below.

``method: domain-edit`` reads where each domain sits on the image side from a handful of
images per domain, of any class. The spec gives them as a mapping ``{domain: folder}`` or as
one folder holding a ``<domain>/`` folder per domain; the flag as ``sketch=DIR,photo=DIR`` (or
one ``DIR``). Images are found recursively and any sub-folder is ignored as a label. Every
domain of the domain table needs images, and every folder must hold some; all problems are
reported at once, one line each. Importable without torch: this runs at the door.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import SpecError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEPLOYMENT = "deployment"  # the group name of reference_images in Plan.references
# fewer than this and a forget class (about a tenth of them) has too few pseudo-labelled images to
# calibrate on; the bench's curve (scripts/bench_reference_images.py) starts at 100
MIN_REFERENCE_IMAGES = 50
UNREADABLE_SHOWN = 3


def resolve_reference_images(value: str) -> dict[str, Path]:
    """``{DEPLOYMENT: folder}`` for ``reference_images``, checked: a folder, enough images, every one
    readable. A ``SpecError`` lists every problem, one line each."""
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise SpecError(f"reference_images: {value} is not a folder",
                        "give a folder of unlabelled images from where the model is deployed")
    files = image_files(folder)
    if not files:
        raise SpecError(f"reference_images: folder {value} holds no images (.png, .jpg, ...)",
                        f"give a few hundred unlabelled images (at least {MIN_REFERENCE_IMAGES})")
    problems = []
    if len(files) < MIN_REFERENCE_IMAGES:
        problems.append(f"reference_images: folder {value} holds {len(files)} images, too few to calibrate on; "
                        f"give at least {MIN_REFERENCE_IMAGES} (a few hundred is better)")
    bad = unreadable(files)
    if bad:
        shown = ", ".join(str(f.relative_to(folder)) for f in bad[:UNREADABLE_SHOWN])
        more = f" and {len(bad) - UNREADABLE_SHOWN} more" if len(bad) > UNREADABLE_SHOWN else ""
        problems.append(f"reference_images: {len(bad)} of {len(files)} images in {value} cannot be read "
                        f"({shown}{more}); remove or replace them")
    if problems:
        raise SpecError(problems)
    return {DEPLOYMENT: folder}


def unreadable(files: Sequence[Path]) -> list[Path]:
    """The files PIL cannot open and verify (header and, for PNG, checksums; no full decode)."""
    # lazy: start-up time (PIL stays out of the door until references are given)
    from PIL import Image

    bad = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.verify()
        except Exception:  # noqa: BLE001 - any failure to read is the user's file, reported as such
            bad.append(f)
    return bad


def parse_domain_images(value: Any) -> Any:
    """The flag form ``"sketch=DIR,photo=DIR"`` as a mapping; a single folder stays a string."""
    if isinstance(value, str) and "=" in value:
        out: dict[str, str] = {}
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            domain, _, folder = part.partition("=")
            out[domain.strip()] = folder.strip()
        return out
    return value


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, sorted (hidden entries skipped)."""
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def resolve_domain_images(value: str | dict[str, str], domains: Sequence[str]) -> dict[str, Path]:
    """``{domain: folder}`` for every domain of ``domains``, checked; a ``SpecError`` lists every problem."""
    problems = []
    if isinstance(value, str):
        root = Path(value).expanduser()
        if not root.is_dir():
            raise SpecError(f"domain_images: {value} is not a folder",
                            "give one folder with a sub-folder per domain, or domain=DIR pairs")
        folders = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
        where = f"{root}/<domain>/"
    else:
        folders = {str(k).strip(): Path(str(v)).expanduser() for k, v in value.items()}
        where = "domain_images"
    for name in folders:
        if name not in domains:
            close = difflib.get_close_matches(name, list(domains), n=1, cutoff=0.5)
            hint = f'did you mean "{close[0]}"?' if close else f"the domains are {', '.join(domains)}"
            problems.append(f'domain_images.{name}: "{name}" is not a domain of the domain table; {hint}')
    for domain in domains:
        folder = folders.get(domain)
        if folder is None:
            problems.append(f"domain_images.{domain}: no images for domain {domain} (in {where}); "
                            f"give a few unlabelled {domain} images of any class, e.g. {domain}=DIR")
        elif not folder.is_dir():
            problems.append(f"domain_images.{domain}: folder {folder} does not exist")
        elif not image_files(folder):
            problems.append(f"domain_images.{domain}: folder {folder} holds no images (.png, .jpg, ...)")
    if problems:
        raise SpecError(problems)
    return {d: folders[d] for d in domains}


def reference_datasets(folders: dict[str, Path]) -> dict:
    """One unlabelled ``data.EvalDataset`` per domain (every label 0), for the usual loader and caches."""
    # lazy: start-up time (numpy and PIL stay out of the door)
    from .dataset import files_dataset

    def name(group: str) -> str:
        return "reference-images" if group == DEPLOYMENT else f"domain-images:{group}"

    return {d: files_dataset(folder, name(d), ["unlabelled"], image_files(folder),
                             [0] * len(image_files(folder))) for d, folder in folders.items()}


def reference_record(folders: dict[str, Path], datasets: dict) -> dict:
    """What the report says the method read: per domain, the folder, the image count and the file-list sha256."""
    return {d: {"folder": str(folders[d]), "count": len(datasets[d]), "file_list_sha256": datasets[d].file_list_sha256()}
            for d in folders}

