"""A model source checked from its files alone, before torch loads (the door's part of the backends).

Which folder the transformers backend claims, which files such a folder needs, and everything
wrong with ``(model, pretrained)`` that the file system shows: a missing checkpoint or folder, a
file given where a folder is meant, a ``--model`` a folder would ignore. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

TRANSFORMERS_PREFIX = "transformers:"


def transformers_source(model: str | None, pretrained: str | None) -> Path | None:
    """The folder the transformers backend loads, or None: ``transformers:PATH``, or a folder with a
    ``config.json`` and no ``open_clip_config.json`` given as the model or as ``pretrained``."""
    if model is not None and model.startswith(TRANSFORMERS_PREFIX):
        return Path(model[len(TRANSFORMERS_PREFIX):])
    for given in (pretrained, model):
        if not given or given == "none" or given.startswith(("hf-hub:", "local-dir:")):
            continue
        folder = Path(given)
        if folder.is_dir() and (folder / "config.json").is_file() and not (folder / "open_clip_config.json").is_file():
            return folder
    return None


# the files a transformers CLIP or SigLIP folder needs; the tokenizer is tokenizer.json, vocab.json with
# merges.txt, or SigLIP's sentencepiece spiece.model
TRANSFORMERS_NEEDS = ("config.json", "model.safetensors", "preprocessor_config.json")
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("spiece.model",), ("vocab.txt",))
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")  # the files a --pretrained path can be
_NOT_PATHS = ("none", "embedded")


# the config.json model_types the transformers backend loads
TRANSFORMERS_MODEL_TYPES = ("clip", "siglip", "vision-text-dual-encoder")
UNSUPPORTED_MODEL_TYPES = {
    "siglip2": "Siglip2Model takes NaFlex patch inputs (pixel_attention_mask, spatial_shapes) that ccup's image "
               "pipeline does not produce yet",
}


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _is_transformers_dir(folder: Path) -> bool:
    return folder.is_dir() and (folder / "config.json").is_file() and not (folder / "open_clip_config.json").is_file()


def transformers_folder_problems(folder: Path, field: str = "model") -> list[str]:
    """What keeps ``folder`` from loading as a transformers CLIP folder, one line each (torch-free).

    A folder without tokenizer files would load: transformers 5 builds a 2-token tokenizer instead of
    failing, and every prompt becomes the same tokens. So the files are checked by name.
    """
    if not folder.exists():
        return [f"{field}: transformers folder {folder} does not exist; check the path"]
    if folder.is_file():
        return [f"{field}: {folder} is a file; pass the folder that holds it: transformers:{folder.parent}"]
    model_type = _model_type(folder)
    if (folder / "config.json").is_file() and model_type not in TRANSFORMERS_MODEL_TYPES:
        why = UNSUPPORTED_MODEL_TYPES.get(str(model_type), "ccup folds into CLIP, SigLIP and dual-encoder models only")
        return [f"{field}: {folder}: model_type {model_type!r} is not supported: {why}; pass a CLIP, SigLIP or "
                'VisionTextDualEncoder folder (config.json model_type "clip", "siglip" or "vision-text-dual-encoder")']
    missing = [name for name in TRANSFORMERS_NEEDS if not (folder / name).is_file()]
    if not any(all((folder / name).is_file() for name in group) for group in TOKENIZER_FILES):
        missing.append("tokenizer.json (or vocab.json and merges.txt, or vocab.txt)")
    if missing:
        return [f"{field}: transformers folder {folder} lacks {', '.join(missing)}; save the model, its processor "
                "and its tokenizer there (CLIPModel / CLIPProcessor.save_pretrained)"]
    return []


def _path_like(value: str) -> bool:
    return value.endswith(CHECKPOINT_SUFFIXES) or "/" in value or "\\" in value


def source_problems(model: str | None, pretrained: str | None) -> list[str]:
    """Everything wrong with ``(model, pretrained)`` that files alone show, one line each (torch-free):
    missing files and folders, a file given where a folder is needed, a ``--model`` a folder would ignore."""
    problems: list[str] = []
    hf_folder = transformers_source(model, pretrained)
    if hf_folder is not None:
        by_model = model is not None and (model.startswith(TRANSFORMERS_PREFIX) or Path(model) == hf_folder)
        problems += transformers_folder_problems(hf_folder, "model" if by_model else "pretrained")
    if model is None or model.startswith(TRANSFORMERS_PREFIX):
        pass  # the embedded default, or a transformers folder (checked above)
    elif model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):])
        if not folder.exists():
            problems.append(f"model: model folder {folder} does not exist; check the local-dir: path")
        elif folder.is_file():
            problems.append(f"model: {folder} is a file; pass the folder that holds it: local-dir:{folder.parent}")
        elif not (folder / "open_clip_config.json").is_file():
            hint = (f"it is a transformers folder: pass transformers:{folder}" if _is_transformers_dir(folder)
                    else "pass a folder written by ccup or open_clip")
            problems.append(f"model: {folder} has no open_clip_config.json; {hint}")
    elif model.endswith(".json") and not model.startswith("hf-hub:"):
        path = Path(model)
        if not path.is_file():
            problems.append(f"model: config file {model} does not exist; check the path")
        elif path.name == "config.json" and _is_transformers_dir(path.parent):
            problems.append(f"model: {model} is the config of a transformers folder; pass the folder: "
                            f"transformers:{path.parent}")
    elif not model.startswith("hf-hub:") and ("/" in model or "\\" in model) \
            and not Path(model).exists():
        problems.append(f"model: {model} is neither a model name nor an existing path; check the path, or run "
                        "`ccup models` for the names")
    if pretrained is None or pretrained in _NOT_PATHS or pretrained.startswith(("hf-hub:", "local-dir:")):
        return problems
    given = Path(pretrained)
    if given.is_file() and _is_transformers_dir(given.parent):
        problems.append(f"pretrained: {pretrained} is a file inside a transformers folder; pass the folder: "
                        f"--pretrained {given.parent}")
    elif given.is_dir():
        plain_model = model is not None and not model.startswith((TRANSFORMERS_PREFIX, "local-dir:", "hf-hub:"))
        if not (given / "open_clip_config.json").is_file() and not _is_transformers_dir(given):
            problems.append(f"pretrained: folder {pretrained} holds neither open_clip_config.json nor config.json; "
                            "pass a checkpoint file, or a folder written by ccup, open_clip or save_pretrained")
        elif plain_model:
            problems.append(f"model: {model} would be ignored: --pretrained {pretrained} is a model folder, which "
                            "names its own architecture; drop --model")
    elif not given.exists() and _path_like(pretrained):
        problems.append(f"pretrained: file {pretrained} does not exist; check the path given to --pretrained")
    return problems
