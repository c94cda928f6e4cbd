"""Load open_clip models from every source through one checked path.

Sources: a built-in name with a tag (``openai``), a local ``.safetensors``/``.pt``/``.bin``
file, ``hf-hub:org/repo``, ``local-dir:PATH`` (or a folder given as ``pretrained``), a
config JSON registered with ``open_clip.add_model_config``, the embedded
``ccup-tiny-fashion``, and ``none`` for deliberate random init.

Every route ends the same way: an architecture built by open_clip with the source's own
preprocessing, then weights read by ``checkpoint.load_weights`` with clear errors (corrupt
file, code-running pickle, wrong architecture), then ``load_state_dict``. The state dict read from the file
is kept as it was, so the patched checkpoint differs from it only at the fold site.
"""

from __future__ import annotations

import concurrent.futures
import difflib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..output.atomic import sha256_file
from ..presets.defaults import EMBEDDED_MODEL, EMBEDDED_MODELS, EMBEDDED_PRETRAINED
from ..text.encode import encode_prompts, encode_prompts_sharded, supports_fast_text
from .checkpoint import load_weights
from .fold import FoldSite
from .open_clip_tower import identity_projection, locate_fold_site, trainable_parameters
from .sources import CHECKPOINT_SUFFIXES
from .sources import checkpoint_in_dir as _checkpoint_in_dir

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EMBEDDED_DIR = ASSETS / EMBEDDED_MODEL
LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
NETWORK_PROBE_SECONDS = 5.0


@dataclass
class LoadedModel:
    """An open_clip model in eval mode: the open_clip implementation of ``base.Backend``."""

    model: torch.nn.Module
    tokenizer: Any
    preprocess: Any  # open_clip's eval transform for this source
    model_name: str  # the name open_clip knows the architecture by (or a local-dir:/hf-hub: id)
    pretrained: str | None  # tag, path, or None for random init
    model_cfg: dict
    preprocess_cfg: dict
    checkpoint_path: Path | None
    checkpoint_sha256: str | None
    display_name: str = ""  # what people read: "ccup-tiny-fashion" rather than its local-dir path
    source_state_dict: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    site: FoldSite | None = None  # the final linear map W is folded into (open_clip_tower.locate_fold_site)
    backend: str = "open_clip"

    def __post_init__(self) -> None:
        if self.site is None:
            self.site = locate_fold_site(self.model)

    def select_fold(self, fold: str) -> FoldSite:
        """Make the site of ``fold`` (auto, image, text) this model's fold site; a one-line error where it has none."""
        self.site = locate_fold_site(self.model, fold)
        return self.site

    @property
    def cache_id(self) -> str | None:
        """What identifies these weights for caches; None for random init (never cached)."""
        return self.checkpoint_sha256

    def encode_images(self, pixels: torch.Tensor, projected: bool = False) -> torch.Tensor:
        """Image features ``[n, d]``, or before an image-side fold site (``projected=False``) ``[n, width]``.

        With the fold on the text side the image tower does not change: its features are returned as they are.
        """
        pixels = pixels.to(next(self.model.parameters()).device)
        if projected or self.site.side != "image":
            return self.model.encode_image(pixels)
        with identity_projection(self.model, self.site):
            return self.model.encode_image(pixels)

    def encode_prompts(self, prompts, batch_size: int = 256, progress=None) -> torch.Tensor:
        return encode_prompts(self.model, self.tokenizer, prompts, batch_size, progress)

    def encode_prompts_across_ranks(self, prompts, batch_size: int = 256) -> torch.Tensor:
        """``encode_prompts`` under torchrun: each rank encodes its share of the batches; rows on every rank.

        Each prompt is encoded in the same batch as in one process, so the rows equal it bit for bit.
        """
        return encode_prompts_sharded(self.model, self.tokenizer, list(prompts), batch_size, all_ranks=True)

    def supports_fast_text(self) -> bool:
        return supports_fast_text(self.model)

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return trainable_parameters(self.model)

    def write_config_files(self, folder: Path) -> dict[str, Path]:
        """``open_clip_config.json``: open_clip's local-dir format, with the source's preprocessing."""
        path = Path(folder) / "open_clip_config.json"
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg}
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return {path.name: path}

    def provenance(self) -> dict:
        import open_clip

        return {"backend": self.backend, "open_clip": open_clip.__version__, "torch": torch.__version__}


def embedded_names() -> list[str]:
    """The embedded models whose files are shipped, the default first."""
    return [n for n in EMBEDDED_MODELS if (ASSETS / n).is_dir()]


def register_embedded() -> None:
    """Make the embedded models (``ccup-tiny-fashion`` …) names open_clip knows (architecture only)."""
    import open_clip

    for name in EMBEDDED_MODELS:
        cfg_file = ASSETS / "model_configs" / f"{name}.json"
        if cfg_file.is_file() and name not in open_clip.list_models():
            open_clip.add_model_config(cfg_file)


# --- network ---------------------------------------------------------------------------------


def _network_reachable(host: str = "huggingface.co", port: int = 443) -> bool:
    def probe() -> bool:
        with socket.create_connection((host, port), timeout=NETWORK_PROBE_SECONDS):
            return True

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(probe).result(timeout=NETWORK_PROBE_SECONDS + 1)
    except Exception:  # noqa: BLE001 - DNS failure, refusal, timeout all mean "no network"
        return False
    finally:
        pool.shutdown(wait=False)


def _hub_cached(model_id: str, filenames: list[str]) -> str | None:
    """A file of a Hugging Face repo already in the local cache, without any network call."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in filenames:
        found = try_to_load_from_cache(model_id, filename)
        if isinstance(found, str):
            return found
    return None


_HUB_WEIGHT_NAMES = ["open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin", "open_clip_model.bin"]


def _tag_cached(tag_cfg: dict) -> str | None:
    hub = tag_cfg.get("hf_hub", "")
    if not hub:
        return None
    model_id, filename = os.path.split(hub)
    names = [filename, filename.replace(".bin", ".safetensors")] if filename else _HUB_WEIGHT_NAMES
    return _hub_cached(model_id, names)


def _download(what: str, fetch, cached,
              fix: str = "download the weights where a network exists and pass the file with --pretrained PATH"):
    """``cached()`` where no network answers (fails at once if it finds nothing), else ``fetch()``.

    open_clip's own download retries for about 40 s without a network; this answers in
    about ``NETWORK_PROBE_SECONDS``.
    """
    if not _network_reachable():
        found = cached()
        if found is None:
            raise CheckpointError(f"{what} needs a download and no network answers", fix)
        return found
    try:
        return fetch()
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"could not download {what}: {str(err).splitlines()[0]}",
                              "check the name, or pass a local file with --pretrained PATH") from err


# --- resolving a source ----------------------------------------------------------------------


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)]
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else "run `ccup models` to list them"


def read_local_dir_config(folder: Path) -> dict:
    cfg_path = folder / "open_clip_config.json"
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist", "check the local-dir: path")
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} has no open_clip_config.json", "pass a folder written by ccup or open_clip")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_path} is not valid JSON (line {err.lineno})", "repair or re-export it") from err
    except (RecursionError, UnicodeDecodeError):
        raise CheckpointError(f"{cfg_path} is not a valid config: nested too deeply or not UTF-8 text",
                              "repair or re-export it") from None
    if not isinstance(cfg, dict) or "model_cfg" not in cfg:
        raise CheckpointError(f"{cfg_path} has no model_cfg", "write it as {\"model_cfg\": ..., \"preprocess_cfg\": ...}")
    return cfg


def builtin_model_names() -> list[str]:
    import open_clip

    register_embedded()
    return open_clip.list_models()


def canonical_tag(model_name: str) -> str | None:
    """``openai`` where open_clip has it for this architecture, else the first tag it lists."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if not tags:
        return None
    return "openai" if "openai" in tags else tags[0]


@dataclass
class Source:
    """Where a model comes from, resolved before anything is built or read."""

    arch_name: str  # what open_clip builds: a registered name, local-dir:PATH or hf-hub:ID
    display: str
    model_cfg: dict
    preprocess_cfg: dict
    checkpoint: Path | None  # None: random init on purpose
    pretrained_desc: str | None


def resolve_source(model_name: str | None = None, pretrained: str | None = None) -> Source:
    """Resolve ``(model_name, pretrained)`` as open_clip names them; downloads only where needed.

    ``model_name`` None means the embedded ``ccup-tiny-fashion``. ``pretrained`` None means
    the architecture's canonical tag; ``"none"`` means random init on purpose.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    register_embedded()
    if model_name is None and pretrained not in (None, "none") and Path(pretrained).is_file() \
            and (Path(pretrained).parent / "open_clip_config.json").is_file():
        # a checkpoint inside an output folder: the folder's config says what it is
        folder = Path(pretrained).parent
        local_cfg = read_local_dir_config(folder)
        preprocess_cfg = merge_preprocess_dict(dict(PreprocessCfg().__dict__), local_cfg.get("preprocess_cfg", {}))
        return Source(LOCAL_DIR + str(folder), str(pretrained), local_cfg["model_cfg"], preprocess_cfg,
                      Path(pretrained), str(pretrained))
    name = model_name or EMBEDDED_MODEL
    display = name
    embedded = name in EMBEDDED_MODELS and pretrained in (None, EMBEDDED_PRETRAINED)
    if embedded:  # the shipped weights, in their local-dir folder
        name, pretrained = LOCAL_DIR + str(ASSETS / name), None
    if pretrained is not None and pretrained != "none" and Path(pretrained).is_dir():
        name, pretrained = LOCAL_DIR + pretrained, None  # an output folder of ccup, or any local-dir
        display = name

    checkpoint: Path | None = None
    preprocess_cfg = dict(PreprocessCfg().__dict__)
    if name.startswith(LOCAL_DIR):
        folder = Path(name[len(LOCAL_DIR):])
        local_cfg = read_local_dir_config(folder)
        model_cfg = local_cfg["model_cfg"]
        preprocess_cfg = merge_preprocess_dict(preprocess_cfg, local_cfg.get("preprocess_cfg", {}))
        checkpoint = _checkpoint_in_dir(folder)
        if checkpoint is None:
            raise CheckpointError(f"{folder} holds no checkpoint file", "write model.safetensors beside its config")
        arch_name, pretrained_desc = name, EMBEDDED_PRETRAINED if embedded else str(checkpoint)
    elif name.startswith(HF_HUB):
        model_id = name[len(HF_HUB):]
        from open_clip.factory import _get_hf_config
        from open_clip.pretrained import download_pretrained_from_hf

        def cached_cfg():
            found = _hub_cached(model_id, ["open_clip_config.json"])
            return json.loads(Path(found).read_text()) if found else None

        cfg = _download(name, lambda: _get_hf_config(model_id), cached_cfg)
        model_cfg = cfg["model_cfg"]
        preprocess_cfg = merge_preprocess_dict(preprocess_cfg, cfg.get("preprocess_cfg", {}))
        checkpoint = Path(_download(name, lambda: download_pretrained_from_hf(model_id),
                                    lambda: _hub_cached(model_id, _HUB_WEIGHT_NAMES)))
        arch_name, pretrained_desc = name, name
    else:
        if name.endswith(".json") and Path(name).is_file():
            open_clip.add_model_config(name)
            name = Path(name).stem
        known = open_clip.list_models()
        if name not in known:
            raise CheckpointError(f'unknown model "{name}"', _suggest(name, known))
        model_cfg = open_clip.get_model_config(name)
        if name in EMBEDDED_MODELS:  # its preprocessing lives in its local-dir config
            preprocess_cfg = merge_preprocess_dict(
                preprocess_cfg, read_local_dir_config(ASSETS / name).get("preprocess_cfg", {}))
        if pretrained is None:
            pretrained = canonical_tag(name)
            if pretrained is None:
                raise CheckpointError(
                    f"{name} has no pretrained tag in open_clip",
                    "pass --pretrained PATH to a checkpoint, or --pretrained none for random weights",
                )
        arch_name, pretrained_desc = name, pretrained
        if pretrained == "none":
            pretrained_desc = None
        elif open_clip.get_pretrained_cfg(name, pretrained):
            tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
            preprocess_cfg = merge_preprocess_dict(preprocess_cfg, tag_cfg)
            if "file" in tag_cfg:  # a tag registered with a local file needs no network
                checkpoint = Path(tag_cfg["file"])
            else:
                checkpoint = Path(_download(f"{name} pretrained={pretrained}",
                                            lambda: open_clip.download_pretrained(tag_cfg),
                                            lambda: _tag_cached(tag_cfg)))
        elif Path(pretrained).suffix in CHECKPOINT_SUFFIXES or os.sep in pretrained or Path(pretrained).exists():
            checkpoint = Path(pretrained)
            if not checkpoint.is_file():
                raise CheckpointError(f"pretrained file {checkpoint} does not exist",
                                      "check the path given to --pretrained")
            sibling = checkpoint.parent / "open_clip_config.json"
            if sibling.is_file():  # a ccup output folder: keep the source's preprocessing
                preprocess_cfg = merge_preprocess_dict(
                    preprocess_cfg, read_local_dir_config(checkpoint.parent).get("preprocess_cfg", {}))
        else:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise CheckpointError(
                f'"{pretrained}" is neither a pretrained tag of {name} nor a file',
                f"use one of {', '.join(tags)} or a checkpoint path" if tags else "pass a checkpoint path",
            )
    return Source(arch_name, display, model_cfg, preprocess_cfg, checkpoint, pretrained_desc)


def load_model(model_name: str | None = None, pretrained: str | None = None, device: str = "cpu") -> LoadedModel:
    """Resolve the source, build the architecture with the source's preprocessing, load the weights.

    Random init (``pretrained="none"``) is seeded inside a forked RNG, so reruns give the same
    weights and the caller's RNG state is left alone.
    """
    import open_clip
    from open_clip import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    src = resolve_source(model_name, pretrained)
    arch_name, model_cfg, checkpoint = src.arch_name, src.model_cfg, src.checkpoint
    preprocess_cfg = src.preprocess_cfg
    tokenizer = _tokenizer(arch_name, model_cfg)  # before the build: a missing download is refused at once
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random init (and any init before loading) is deterministic
            if arch_name.startswith(HF_HUB):
                model = _model_from_cfg(model_cfg, preprocess_cfg)
            else:
                # size always follows the built tower; the rest is the source's preprocessing
                pp = {k: v for k, v in preprocess_cfg.items() if k != "size"}
                model = open_clip.create_model(arch_name, pretrained=None, load_weights=False,
                                               force_preprocess_cfg=pp)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"open_clip could not build {arch_name}: {str(err).splitlines()[0]}",
                              "check the model config") from err
    if checkpoint is not None:
        source_state, sha = load_weights(model, checkpoint, arch_name), sha256_file(checkpoint)
    else:
        source_state, sha = {k: v.detach().clone() for k, v in model.state_dict().items()}, None
    model = model.to(device).eval()
    final_pp = get_model_preprocess_cfg(model)
    transform = image_transform_v2(PreprocessCfg(**final_pp), is_train=False)
    return LoadedModel(
        model=model, tokenizer=tokenizer, preprocess=transform, model_name=arch_name, pretrained=src.pretrained_desc,
        model_cfg=model_cfg, preprocess_cfg=_jsonable(final_pp), checkpoint_path=checkpoint,
        checkpoint_sha256=sha, source_state_dict=source_state, display_name=src.display,
    )


TOKENIZER_FIX = ("give the config a name without \"siglip\" (open_clip then uses its own tokenizer), or set "
                 "text_cfg.hf_tokenizer_name to a local tokenizer folder")


def _tokenizer(arch_name: str, model_cfg: dict):
    """open_clip's tokenizer for ``arch_name``; one that lives on the Hugging Face hub (SigLIP's
    ``hf_tokenizer_name``) is read from the local cache where no network answers, else refused at once."""
    import open_clip

    def build():
        try:
            return open_clip.get_tokenizer(arch_name)
        except Exception as err:  # noqa: BLE001 - whatever the library raises (ImportError, OSError, ...)
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"open_clip could not make the tokenizer of {arch_name}: {first}",
                                  TOKENIZER_FIX) from err

    hub_name = model_cfg.get("text_cfg", {}).get("hf_tokenizer_name")
    if not hub_name or Path(hub_name).is_dir():
        if ":" not in arch_name and "siglip" in arch_name.lower():
            # open_clip picks SigLIP's sentencepiece vocabulary by the name alone and fetches it
            return _download(f"the tokenizer of {arch_name} (open_clip picks SigLIP's by the name)", build,
                             lambda: None, TOKENIZER_FIX)
        return build()

    def cached():
        found = _hub_cached(hub_name, ["tokenizer.json", "tokenizer_config.json", "spiece.model"])
        if found is None:
            return None
        from open_clip.tokenizer import HFTokenizer

        text_cfg = model_cfg["text_cfg"]
        return HFTokenizer(str(Path(found).parent), context_length=text_cfg.get("context_length", 77),
                           **text_cfg.get("tokenizer_kwargs", {}))

    return _download(f"the tokenizer {hub_name} of {arch_name}", lambda: open_clip.get_tokenizer(arch_name), cached,
                     "fetch it once where a network exists (it is then read from the Hugging Face cache)")


def _model_from_cfg(model_cfg: dict, preprocess_cfg: dict) -> torch.nn.Module:
    import copy

    import open_clip
    from open_clip.model import set_model_preprocess_cfg

    cfg = copy.deepcopy(model_cfg)
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = cls(**cfg)
    pp = dict(preprocess_cfg)
    pp["size"] = getattr(model.visual, "image_size", pp.get("size"))
    set_model_preprocess_cfg(model, pp)
    return model


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
