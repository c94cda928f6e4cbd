"""Domain datasets: one image set in several renderings, or a ``root/<domain>/<class>/`` folder.

A domain dataset is an ``EvalDataset`` whose ``domains [n]`` array names each image's domain
(an index into ``domain_names``). Two ways to get one:

- ``rendered_domains``: a grey-scale dataset drawn in every rendering of ``domains.py``,
  domain-major (all photos, then all sketches, then all silhouettes); image ``i`` of domain
  ``k`` is row ``k * n + i``. Fashion-MNIST's test split gives 3 × 10,000 images.
- ``domain_folder``: the PACS / DomainNet layout, one folder per domain holding one folder
  per class; the classes are the union of the class folders, sorted, so a class missing from
  a domain keeps its label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DatasetError
from .dataset import IMAGE_SUFFIXES, EvalDataset, files_dataset
from .domains import DOMAIN_NAMES, RENDER_VERSION, render


def rendered_domains(name: str, base: EvalDataset, domain_names=DOMAIN_NAMES) -> EvalDataset:
    """``base`` (a grey-scale ``EvalDataset``) drawn in each of ``domain_names``, domain-major."""
    n = len(base)
    labels = np.tile(base.labels, len(domain_names))
    domains = np.repeat(np.arange(len(domain_names), dtype=np.int64), n)
    item_ids = [f"{item}@{d}" for d in domain_names for item in base.item_ids]
    parent = base.load_image

    def load(i: int) -> Image.Image:
        photo = np.asarray(parent(i % n).convert("L"))
        return Image.fromarray(render(photo, domain_names[i // n]))

    content = f"{base.content_id}|render-v{RENDER_VERSION}|{','.join(domain_names)}"
    return EvalDataset(name, base.split, list(base.classnames), labels, item_ids, load, content, domains,
                       list(domain_names))


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_domain_folder(path: Path) -> bool:
    """Whether ``path`` is laid out ``<domain>/<class>/images``: every top folder holds only
    folders (no images of its own), and at least one class folder name recurs across domains
    (or there is a single domain)."""
    if not path.is_dir():
        return False
    tops = _visible_dirs(path)
    if not tops:
        return False
    class_sets = []
    for top in tops:
        if any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES for f in top.iterdir()):
            return False
        inner = _visible_dirs(top)
        if not inner:
            return False
        class_sets.append({p.name for p in inner})
    if len(class_sets) == 1:
        return False  # one folder of folders is an ordinary ImageFolder with nested images
    shared = set.intersection(*class_sets)
    return bool(shared)


def domain_folder(path: Path, name: str | None = None) -> EvalDataset:
    """The ``root/<domain>/<class>/`` layout as a domain ``EvalDataset``.

    Class names are the class folder names (sorted union over domains), renamed by an optional
    ``classnames.txt`` at the root (``folder<TAB>name`` lines); domain names are the folder names.
    """
    domain_dirs = _visible_dirs(path)
    class_folders = sorted({p.name for d in domain_dirs for p in _visible_dirs(d)})
    classnames = list(class_folders)
    mapping_file = path / "classnames.txt"
    if mapping_file.is_file():
        lines = [ln.strip() for ln in mapping_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not all("\t" in ln for ln in lines):
            raise DatasetError(f"{mapping_file}: a domain folder's class names are folder<TAB>name lines",
                               "write one folder<TAB>name line per class folder")
        mapping = dict(ln.split("\t", 1) for ln in lines)
        classnames = [mapping.get(c, c) for c in class_folders]
    label_of = {c: i for i, c in enumerate(class_folders)}
    files, labels, domains = [], [], []
    for d, domain_dir in enumerate(domain_dirs):
        for class_dir in _visible_dirs(domain_dir):
            for f in sorted(class_dir.rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                    files.append(f)
                    labels.append(label_of[class_dir.name])
                    domains.append(d)
    return files_dataset(path, name or path.name, classnames, files, labels,
                         domains=np.asarray(domains, dtype=np.int64), domain_names=[d.name for d in domain_dirs])
