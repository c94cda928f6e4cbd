"""The transformers backend: Hugging Face ``CLIPModel``, ``SiglipModel`` and ``VisionTextDualEncoderModel`` folders.

A folder of ``config.json`` (``model_type: clip`` or ``siglip``), ``model.safetensors``,
``preprocessor_config.json`` and tokenizer files.

- CLIP: the image tower ends in ``visual_projection``, a Linear without bias, so the image-side
  fold site is ``visual_projection.weight`` (``weight' = W · weight``) and the pre-projection
  features are the vision model's pooled output ``[n, width]``. The text side ends in
  ``text_projection`` (``weight' = Wᵀ · weight``), for ``fold: text``.
- SigLIP: the image tower ends in a residual attention-pooling head, so there is no image-side
  site; W goes into the text tower's ``text_model.head`` (a Linear with bias:
  ``weight' = Wᵀ · weight``, ``bias' = Wᵀ · bias``). The text tower is bidirectional and pooled at
  the last position, so prompts are padded to ``max_position_embeddings`` as SigLIP was trained.
- Dual encoders (``model_type: vision-text-dual-encoder``, any vision and text tower transformers
  provides, e.g. a LiT pairing of a ViT with a BERT): like CLIP, the image side ends in
  ``visual_projection`` and the text side in ``text_projection``, both Linears without bias; the
  pre-projection features are the vision tower's ``pooler_output``. Prompts run unpadded, batched
  with prompts of the same token length, so no padding or attention mask can change a feature.

``transformers`` is an optional extra, imported only inside functions.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, DependencyError
from ..output.atomic import sha256_file
from .checkpoint import read_state_dict
from .fold import FoldSite, _get
from .sources import UNSUPPORTED_MODEL_TYPES, transformers_folder_problems

TRANSFORMERS_PREFIX = "transformers:"
WEIGHTS_NAME = "model.safetensors"
SITE_PATH = "visual_projection"
# the final linear maps of each supported model_type: (image side, text side); None: that side has none
DUAL_ENCODER = "vision-text-dual-encoder"
SITES = {"clip": ("visual_projection", "text_projection"), "siglip": (None, "text_model.head"),
         DUAL_ENCODER: ("visual_projection", "text_projection")}
MODEL_CLASSES = {"clip": "CLIPModel", "siglip": "SiglipModel", DUAL_ENCODER: "VisionTextDualEncoderModel"}
# every file a CLIP or SigLIP folder keeps beside its weights; missing ones are skipped
CONFIG_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                "added_tokens.json", "chat_template.json", "spiece.model", "vocab.txt")
_NO_IMAGE_SITE = "its vision head ends in a residual attention-pooling MLP, so no single final linear map can be folded"


def import_transformers():
    """The ``transformers`` module, or a one-line DependencyError that names the extra."""
    try:
        import transformers
    except ImportError as err:
        raise DependencyError("the transformers backend needs the transformers package",
                              "pip install 'ccup[transformers]'") from err
    return transformers


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars and only errors from transformers inside the block (the library never prints)."""
    logging = import_transformers().utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def strip_prefix(path: str | Path) -> Path:
    text = str(path)
    return Path(text[len(TRANSFORMERS_PREFIX):] if text.startswith(TRANSFORMERS_PREFIX) else text)


def _model_type(folder: Path) -> str | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def is_transformers_folder(path: str | Path) -> bool:
    """A folder whose ``config.json`` has a supported ``model_type`` (a ``transformers:`` prefix is allowed)."""
    folder = strip_prefix(path)
    return folder.is_dir() and _model_type(folder) in SITES


def image_features(output) -> torch.Tensor:
    """Projected features ``[n, d]`` from ``get_image_features`` (or ``get_text_features``).

    transformers 4.x returns the tensor; transformers 5 returns an output object whose
    ``pooler_output`` holds the projected features.
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"get_image_features returned {type(output).__name__} without pooler_output")


def _site(model: nn.Module, path: str, side: str) -> FoldSite:
    layer = _get(model, path)
    if not isinstance(layer, nn.Linear):
        raise CheckpointError(f"{path} is not a Linear", "pass a standard CLIPModel or SiglipModel folder")
    return FoldSite(path, "linear", f"{path}.weight", f"{path}.bias" if layer.bias is not None else None,
                    layer.in_features, layer.out_features, side)


def fold_site(model: nn.Module, model_type: str, fold: str = "auto") -> FoldSite:
    """The site of ``fold`` (auto: the image side where there is one) for a supported ``model_type``."""
    image_path, text_path = SITES[model_type]
    if fold == "text" or (fold == "auto" and image_path is None):
        return _site(model, text_path, "text")
    if image_path is None:
        raise CheckpointError(f"fold: image: {model_type}: {_NO_IMAGE_SITE}", "fold on the text side: fold: text")
    return _site(model, image_path, "image")


class HFImageTransform:
    """PIL image -> float tensor ``[3, H, W]``, by the folder's own image processor.

    Its ``repr`` is the processor's configuration, so feature caches keyed on it are stable.
    """

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"HFImageTransform({self.processor.to_json_string()})"


@dataclass
class HFLoaded:
    """A transformers ``CLIPModel`` or ``SiglipModel`` in eval mode with what ccup needs to know about its source."""

    model: nn.Module
    preprocess: Callable
    model_name: str  # "transformers:/abs/folder"
    display_name: str
    pretrained: str | None  # the weights file
    checkpoint_path: Path | None
    checkpoint_sha256: str | None
    source_state_dict: dict[str, torch.Tensor] = field(repr=False)
    site: FoldSite
    tokenizer: Callable = field(repr=False, default=None)
    folder: Path | None = None
    backend: str = "transformers"
    model_type: str = "clip"

    def select_fold(self, fold: str) -> FoldSite:
        """Make the site of ``fold`` (auto, image, text) this model's fold site; a one-line error where it has none."""
        self.site = fold_site(self.model, self.model_type, fold)
        return self.site

    @property
    def cache_id(self) -> str | None:
        return self.checkpoint_sha256

    @property
    def preprocess_cfg(self) -> dict:
        """The image processor's settings, as its preprocessor_config.json holds them."""
        return json.loads(self.preprocess.processor.to_json_string())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_images(self, pixels: torch.Tensor, projected: bool = False) -> torch.Tensor:
        """Pooled vision output ``[n, width]``, or with ``projected`` the image features ``[n, d]``.

        With the fold on the text side the image tower does not change: its features are returned as they are.
        """
        pixels = pixels.to(self.device)
        if projected or self.site.side != "image":
            return image_features(self.model.get_image_features(pixel_values=pixels))
        return self.model.vision_model(pixel_values=pixels).pooler_output

    def _tokenize(self, prompts: Sequence[str], pad: bool) -> list[list[int]] | torch.Tensor:
        max_length = self.model.config.text_config.max_position_embeddings
        if pad:
            return self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_length,
                                  return_tensors="pt")["input_ids"]
        return self.tokenizer(list(prompts), padding=False, truncation=True, max_length=max_length)["input_ids"]

    def _text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        pooled = self.model.text_model(input_ids=input_ids.to(self.device)).pooler_output
        if self.model_type == "siglip":  # text_model.head is applied inside the text model
            return pooled
        return self.model.text_projection(pooled)

    def supports_fast_text(self) -> bool:
        """Whether prompts run unpadded, batched by token length (exact: no pad token is ever seen).

        True for CLIP's causal, EOS-pooled text tower and for a dual encoder's text tower (a prompt
        of the same length as its batch-mates needs neither padding nor an attention mask). SigLIP's
        text tower attends both ways and is pooled at the last position, so every prompt runs padded
        to its full length, as SigLIP was trained.
        """
        if self.model_type == DUAL_ENCODER:
            return True
        return self.model_type == "clip" and isinstance(self.model.text_model, import_transformers().CLIPTextModel)

    def encode_prompts(self, prompts: Sequence[str], batch_size: int = 256,
                       progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Unnormalised text features ``[n, d]`` (float32, on the model's device), in the given order.

        CLIP's text tower is causal and pooled at the first EOS token, so positions after it
        cannot change the result: each prompt runs unpadded, batched with prompts of the
        same token length. Any other text model runs the plain padded path.
        """
        if len(prompts) == 0:
            raise ValueError("encode_prompts needs at least one prompt")
        fast = self.supports_fast_text()
        out: torch.Tensor | None = None
        if fast:
            ids = self._tokenize(prompts, pad=False)
            order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
            batches, start = [], 0
            while start < len(order):
                stop = start + 1
                while stop < len(order) and stop - start < batch_size and len(ids[order[stop]]) == len(ids[order[start]]):
                    stop += 1
                batches.append(order[start:stop])
                start = stop
        else:
            padded = self._tokenize(prompts, pad=True)
            batches = [list(range(s, min(s + batch_size, len(prompts)))) for s in range(0, len(prompts), batch_size)]
        with torch.inference_mode():
            for idx in batches:
                batch = torch.tensor([ids[i] for i in idx]) if fast else padded[idx]
                feats = self._text_features(batch).float()
                if out is None:
                    out = torch.empty(len(prompts), feats.shape[-1], dtype=torch.float32, device=feats.device)
                out[torch.tensor(idx, device=feats.device)] = feats
                if progress is not None:
                    progress(len(idx))
        assert out is not None
        return out

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The image tower's last encoder layer, its post-layernorm and ``visual_projection``."""
        if self.model_type not in ("clip", DUAL_ENCODER):
            raise CheckpointError(f"fine-tuning trains the image tower's final linear map, and a {self.model_type} "
                                  "image tower has none", "use method ccup, which folds on the text side")
        if self.model_type == "clip":
            last = len(self.model.vision_model.encoder.layers) - 1
            prefixes = (f"vision_model.encoder.layers.{last}.", "vision_model.post_layernorm.", f"{SITE_PATH}.")
            return {n: p for n, p in self.model.named_parameters() if n.startswith(prefixes)}
        return _vision_tail(self.model)

    def write_config_files(self, folder: Path) -> dict[str, Path]:
        """Copy the source's config, preprocessor and tokenizer files into ``folder``; name -> path."""
        if self.folder is None:
            raise CheckpointError("this transformers model has no source folder to copy config files from",
                                  "load it with load_transformers_model(PATH)")
        written = {}
        for name in CONFIG_FILES:
            if (self.folder / name).is_file():
                written[name] = Path(shutil.copyfile(self.folder / name, Path(folder) / name))
        return written

    def provenance(self) -> dict:
        return {"backend": self.backend, "transformers": _version("transformers"), "torch": torch.__version__}


def _vision_tail(model: nn.Module) -> dict[str, nn.Parameter]:
    """A dual encoder's image-tower tail, whatever the tower: its last encoder layer, every parameter
    after the encoder (final norm, pooler) and ``visual_projection``."""
    names = [n for n, _ in model.named_parameters() if n.startswith("vision_model.")]
    layer_ids = sorted({int(part) for n in names for a, part in zip(n.split("."), n.split(".")[1:])
                        if a in ("layer", "layers") and part.isdigit()})
    last = f".{layer_ids[-1]}." if layer_ids else None

    def wanted(name: str) -> bool:
        if name.startswith(f"{SITE_PATH}."):
            return True
        if not name.startswith("vision_model."):
            return False
        if ".encoder." in name:
            return last is not None and (f".layer{last}" in name or f".layers{last}" in name)
        return "embeddings" not in name and "pre_layrnorm" not in name

    return {n: p for n, p in model.named_parameters() if wanted(n)}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_folder(folder: Path) -> Path:
    """The weights file of a loadable CLIP folder, or a one-line CheckpointError."""
    if not folder.is_dir():
        raise CheckpointError(f"transformers folder {folder} does not exist", "check the transformers: path")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} has no config.json", "pass a folder written by save_pretrained")
    model_type = _model_type(folder)
    if model_type not in SITES:
        why = UNSUPPORTED_MODEL_TYPES.get(str(model_type), "ccup folds into CLIP, SigLIP and dual-encoder models only")
        raise CheckpointError(f"{folder}: model_type {model_type!r} is not supported: {why}",
                              "pass a CLIP, SigLIP or VisionTextDualEncoder folder (config.json model_type \"clip\", \"siglip\" "
                              "or \"vision-text-dual-encoder\")")
    weights = folder / WEIGHTS_NAME
    missing = transformers_folder_problems(folder)
    if weights.is_file() and missing:  # weights present, processor or tokenizer files missing
        raise CheckpointError(missing[0].removeprefix("model: "))
    if not weights.is_file():
        others = sorted(p.name for p in folder.iterdir()
                        if p.name.endswith((".bin", ".safetensors", ".safetensors.index.json")))
        fix = (f"it holds {', '.join(others)}; save it as a single model.safetensors "
               "(model.save_pretrained(folder, max_shard_size='100GB'))" if others
               else "copy the model's weights into the folder")
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}", fix)
    return weights


def check_vocabulary(folder: Path, tokens: int, embedding_rows: int) -> None:
    """Refuse a tokenizer far smaller than the text tower's token embedding: transformers 5 builds a
    2-token tokenizer from a folder without tokenizer files, and every prompt then reads the same."""
    if tokens < embedding_rows // 2:
        raise CheckpointError(f"{folder}: its tokenizer has {tokens} tokens for a text embedding of "
                              f"{embedding_rows} rows, so the tokenizer files are missing or wrong",
                              "copy the model's tokenizer.json (or vocab.json and merges.txt) into the folder")


def load_transformers_model(path: str | Path, device: str = "cpu", fold: str = "auto") -> HFLoaded:
    """Load a transformers CLIP or SigLIP folder (``transformers:PATH`` or ``PATH``) in eval mode on ``device``."""
    folder = strip_prefix(path).absolute()
    weights = _check_folder(folder)
    model_type = str(_model_type(folder))
    transformers = import_transformers()
    source_state = read_state_dict(weights)
    try:
        with quiet_transformers():
            model = getattr(transformers, MODEL_CLASSES[model_type]).from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds; each becomes one line
        raise CheckpointError(f"transformers could not load {folder}: {str(err).splitlines()[0]}",
                              f"check that the folder is a complete {MODEL_CLASSES[model_type]} "
                              "save_pretrained folder") from err
    site = fold_site(model, model_type, fold)
    missing = [k for k in site.keys if k not in source_state]
    if missing:
        raise CheckpointError(f"{weights} holds no {missing[0]}", "pass a whole-model checkpoint, not a single tower")
    if model_type in ("clip", DUAL_ENCODER) and (not isinstance(model.visual_projection, nn.Linear)
                                                 or model.visual_projection.bias is not None):
        raise CheckpointError(f"{folder}: visual_projection is not a Linear without bias",
                              f"pass a standard {MODEL_CLASSES[model_type]} folder")
    try:
        with quiet_transformers():
            processor = (transformers.CLIPImageProcessor if model_type == "clip"
                         else transformers.AutoImageProcessor).from_pretrained(str(folder))
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{folder}: preprocessor or tokenizer files cannot be read: {str(err).splitlines()[0]}",
                              "keep preprocessor_config.json and the tokenizer files beside config.json") from err
    check_vocabulary(folder, len(tokenizer), model.config.text_config.vocab_size)
    return HFLoaded(
        model=model.to(device).eval(), preprocess=HFImageTransform(processor),
        model_name=TRANSFORMERS_PREFIX + str(folder), display_name=folder.name, pretrained=str(weights),
        checkpoint_path=weights, checkpoint_sha256=sha256_file(weights), source_state_dict=source_state,
        site=site, tokenizer=tokenizer, folder=folder, model_type=model_type,
    )
