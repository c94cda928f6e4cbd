"""Evaluation datasets and their readable class names.

A dataset is opened by name from a registry of small loader functions, or as an
ImageFolder path. Every loader returns an ``EvalDataset``: class names, labels, and a way
to get each image as a PIL image (the model's own open_clip transform is applied later).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DatasetError
from .catalog import (
    MINI_DOMAINS_NAME,
    MINI_NAME,
    check_dataset_name,
    preset_classnames,
)
from .dataset import IMAGE_SUFFIXES, EvalDataset, array_dataset, files_dataset
from .domain_data import domain_folder, is_domain_folder, rendered_domains
from .idx import load_idx_split

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MINI_FILE = ASSETS / MINI_NAME / "fashion-mnist-mini.npz"
DEBIAN_FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


# --- loaders -------------------------------------------------------------------------------


def _mini(root: str | None, split: str, download: bool) -> EvalDataset:
    with np.load(MINI_FILE) as z:
        images, labels = z["images"], z["labels"]
    return array_dataset(MINI_NAME, "test", preset_classnames("fashion-mnist"), images, labels, MINI_FILE.name)


def _idx_dataset(name: str, default_root: str | None, torchvision_cls: str):
    def load(root: str | None, split: str, download: bool) -> EvalDataset:
        root = root or default_root
        if root is None and not download:
            raise DatasetError(f"{name} needs --data-root", "point it at the idx files, or pass --download")
        root_path = Path(root or Path.home() / ".cache" / "ccup" / "datasets")
        try:
            images, labels = load_idx_split(root_path, split)
        except DatasetError:
            if not download:
                raise
            import torchvision

            getattr(torchvision.datasets, torchvision_cls)(str(root_path), train=split == "train", download=True)
            images, labels = load_idx_split(root_path, split)
        return array_dataset(name, split, preset_classnames(name), images, labels, f"{name}-{split}")

    return load


def _torchvision(name: str, cls_name: str, split_kw: Callable[[str], dict], classnames_of=None):
    def load(root: str | None, split: str, download: bool) -> EvalDataset:
        if root is None:
            raise DatasetError(f"{name} needs --data-root", "point it at the dataset folder, or add --download")
        if not download and not Path(root).is_dir():  # said before torchvision (and torch) load
            raise DatasetError(f"{name}: data root {root} does not exist", "check --data-root, or add --download")
        import torchvision  # lazy: torchvision loads torch (start-up time)

        try:
            ds = getattr(torchvision.datasets, cls_name)(root, download=download, **split_kw(split))
        except (RuntimeError, FileNotFoundError, OSError) as err:
            hint = "check --data-root" if download else f"add --download to fetch {name} into {root}"
            raise DatasetError(f"{name} is not under {root} ({str(err).splitlines()[0]})", hint) from err
        classnames = preset_classnames(name) or classnames_of(ds)
        labels = np.asarray(_labels_of(ds), dtype=np.int64)

        def image(i: int) -> Image.Image:
            img = ds[i][0]
            return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))

        return EvalDataset(name, split, classnames, labels, [f"{name}-{split}#{i}" for i in range(len(labels))],
                           image, f"{len(labels)}")

    return load


def _labels_of(ds) -> list[int]:
    for attr in ("targets", "labels", "_labels", "y"):
        if hasattr(ds, attr):
            return list(getattr(ds, attr))
    return [ds[i][1] for i in range(len(ds))]


def _clean(names) -> list[str]:
    return [str(n).replace("_", " ").strip().lower() for n in names]


def _imagenet(root: str | None, split: str, download: bool) -> EvalDataset:
    if root is None:
        raise DatasetError("imagenet needs --data-root", "point it at the val folder (one sub-folder per wnid)")
    folder = Path(root) / split if (Path(root) / split).is_dir() else Path(root)
    ds = image_folder(folder, name="imagenet")
    names = preset_classnames("imagenet")
    if len(ds.classnames) != len(names):
        raise DatasetError(f"imagenet at {folder} has {len(ds.classnames)} class folders, not 1000",
                           "point --data-root at the full val split")
    ds.classnames = names
    return ds


def _fashion_domains(root: str | None, split: str, download: bool) -> EvalDataset:

    base = _idx_dataset("fashion-mnist", DEBIAN_FASHION_ROOT, "FashionMNIST")(root, split, download)
    return rendered_domains("fashion-mnist-domains", base)


def _mini_domains(root: str | None, split: str, download: bool) -> EvalDataset:

    return rendered_domains(MINI_DOMAINS_NAME, _mini(root, split, download))


DATASETS: dict[str, Callable[[str | None, str, bool], EvalDataset]] = {
    MINI_NAME: _mini,
    MINI_DOMAINS_NAME: _mini_domains,
    "fashion-mnist-domains": _fashion_domains,
    "fashion-mnist": _idx_dataset("fashion-mnist", DEBIAN_FASHION_ROOT, "FashionMNIST"),
    "mnist": _idx_dataset("mnist", None, "MNIST"),
    "cifar10": _torchvision("cifar10", "CIFAR10", lambda s: {"train": s == "train"}),
    "cifar100": _torchvision("cifar100", "CIFAR100", lambda s: {"train": s == "train"}),
    "stl10": _torchvision("stl10", "STL10", lambda s: {"split": s}),
    "flowers102": _torchvision("flowers102", "Flowers102", lambda s: {"split": s},
                               lambda ds: [f"flower {i}" for i in range(102)]),
    "oxford-pets": _torchvision("oxford-pets", "OxfordIIITPet", lambda s: {"split": "test" if s == "test" else "trainval"},
                                lambda ds: _clean(ds.classes)),
    "food101": _torchvision("food101", "Food101", lambda s: {"split": s}, lambda ds: _clean(ds.classes)),
    "caltech101": _torchvision("caltech101", "Caltech101", lambda s: {}, lambda ds: _clean(ds.categories)),
    "imagenet": _imagenet,
}




def image_folder(path: Path, name: str | None = None) -> EvalDataset:
    """One sub-folder per class; ``classnames.txt`` (``folder<TAB>name`` or one name per line) renames."""
    if not path.is_dir():
        raise DatasetError(f"dataset folder {path} does not exist", "check the --eval path")
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"dataset folder {path} has no class sub-folders",
                           "lay it out as one sub-folder of images per class")
    classnames = [f.name for f in folders]
    mapping_file = path / "classnames.txt"
    if mapping_file.is_file():
        lines = [ln.strip() for ln in mapping_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if all("\t" in ln for ln in lines):
            mapping = dict(ln.split("\t", 1) for ln in lines)
            classnames = [mapping.get(f.name, f.name) for f in folders]
        elif len(lines) == len(folders):
            classnames = lines
        else:
            raise DatasetError(f"{mapping_file} has {len(lines)} names for {len(folders)} class folders",
                               "write one name per folder, in sorted folder order, or folder<TAB>name lines")
    files, labels = [], []
    for label, folder in enumerate(folders):
        for f in sorted(folder.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                files.append(f)
                labels.append(label)
    return files_dataset(path, name or path.name, classnames, files, labels)


def read_classnames_file(path: str | Path, expected: int) -> list[str]:
    """Class names from a file, one per line in label order; the count must match the dataset."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"class-name file {path} does not exist", "check the --classnames path")
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(names) != expected:
        raise DatasetError(f"{path} has {len(names)} class names but the dataset has {expected} classes",
                           "write one name per class, in label order")
    return names


def open_dataset(name: str, data_root: str | None = None, split: str = "test", download: bool = False,
                 limit: int | None = None, classnames_file: str | None = None) -> EvalDataset:
    """Open an evaluation dataset by registry name or ImageFolder path, optionally capped per class.

    ``classnames_file`` replaces the dataset's class names (one per line, in label order).
    """
    if name in DATASETS:
        ds = DATASETS[name](data_root, split, download)
    elif Path(name).exists() or "/" in name or name.startswith((".", "~")):

        folder = Path(name).expanduser()
        ds = domain_folder(folder) if is_domain_folder(folder) else image_folder(folder)
    else:
        check_dataset_name(name)
    if len(ds) == 0:
        raise DatasetError(f"dataset {name} ({split}) is empty", "check --data-root and --eval-split")
    if classnames_file is not None:
        ds.classnames = read_classnames_file(classnames_file, len(ds.classnames))
    if limit is not None:
        ds = ds.limit_per_class(limit)
    return ds
