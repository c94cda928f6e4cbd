"""Export an open_clip CLIP to a Hugging Face ``transformers`` CLIP folder.

Scope: a ViT image tower pooled at its class token and a causal text tower pooled at the
end-of-text token, both built from plain ``ResidualAttentionBlock`` layers. The weights
map one to one:

- ``attn.in_proj_weight [3w, w]`` (and its bias) splits into ``q_proj``, ``k_proj``, ``v_proj``;
- ``ln_1``/``ln_2``/``ln_pre``/``ln_post``/``ln_final`` become ``layer_norm1``/``layer_norm2``/
  ``pre_layrnorm``/``post_layernorm``/``final_layer_norm``;
- ``visual.proj`` and ``text_projection`` (``x @ P``, ``[w, d]``) become the ``[d, w]`` weights
  of ``visual_projection`` and ``text_projection``;
- the activation is ``quick_gelu`` where the source uses QuickGELU, else ``gelu``.

The tokenizer files are written from open_clip's own BPE vocabulary and merges, and the
preprocessor config from the source's ``preprocess_cfg``. The folder is written atomically
and loads with ``CLIPModel.from_pretrained`` and ``CLIPProcessor.from_pretrained`` alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..errors import CheckpointError
from ..output.atomic import CommitReceipt, atomic_dir, sha256_file
from ..output.portable import portable_path
from .checkpoint import save_safetensors
from .open_clip import LoadedModel
from .transformers import WEIGHTS_NAME, import_transformers

BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
_OPEN_CLIP_SPECIALS = {"<start_of_text>": BOS_TOKEN, "<end_of_text>": EOS_TOKEN}
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL resample codes, as CLIPImageProcessor stores them
_FIX = "ccup export handles ViT image towers with a causal text tower (open_clip CLIP)"


def _refuse(problem: str) -> CheckpointError:
    return CheckpointError(f"cannot export to transformers: {problem}", _FIX)


# --- checking the source ---------------------------------------------------------------------


def _activation(blocks: nn.Module, tower: str) -> str:
    from open_clip.transformer import QuickGELU

    act = blocks[0].mlp.gelu
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, nn.GELU) and act.approximate == "none":
        return "gelu"
    raise _refuse(f"the {tower} tower's activation is {type(act).__name__}, not GELU or QuickGELU")


def _check_blocks(transformer: nn.Module, tower: str) -> None:
    from open_clip.transformer import ResidualAttentionBlock

    for i, block in enumerate(transformer.resblocks):
        if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, nn.MultiheadAttention):
            raise _refuse(f"{tower} block {i} is {type(block).__name__} with custom attention")
        if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
            raise _refuse(f"{tower} block {i} uses layer scale, which CLIPEncoderLayer lacks")
        if not isinstance(getattr(block, "ln_attn", nn.Identity()), nn.Identity):
            raise _refuse(f"{tower} block {i} has an inner attention norm")
        if block.attn.in_proj_weight is None or block.attn.in_proj_bias is None:
            raise _refuse(f"{tower} block {i} has no packed q/k/v projection with bias")


def check_exportable(loaded: LoadedModel) -> None:
    """Raise a one-line CheckpointError unless ``loaded`` maps exactly onto ``CLIPModel``."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer, get_clean_fn
    from open_clip.transformer import VisionTransformer

    model = loaded.model
    if not isinstance(model, open_clip.CLIP):
        raise _refuse(f"the model is {type(model).__name__}, not open_clip.CLIP with a built-in text tower")
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        raise _refuse(f"the image tower is {type(visual).__name__}, not a VisionTransformer")
    if visual.attn_pool is not None or visual.pool_type != "tok":
        raise _refuse(f"the image tower pools by {visual.pool_type!r}/attention, not its class token")
    if not isinstance(visual.proj, nn.Parameter):
        raise _refuse("the image tower has no x @ P projection (visual.proj)")
    if isinstance(visual.ln_pre, nn.Identity):
        raise _refuse("the image tower has no pre-norm (no_ln_pre), which CLIPVisionTransformer always applies")
    h, w = visual.image_size
    if h != w:
        raise _refuse(f"the image tower's input is {h}x{w}; transformers CLIP needs a square one")
    if visual.conv1.bias is not None:
        raise _refuse("the patch embedding has a bias, which CLIPVisionEmbeddings lacks")
    if getattr(model, "attn_mask", None) is None:
        raise _refuse("the text tower is not causal")
    if model.text_pool_type != "argmax":
        raise _refuse(f"the text tower pools by {model.text_pool_type!r}, not at the end-of-text token")
    if not isinstance(model.text_projection, nn.Parameter):
        raise _refuse("the text tower has no x @ P projection (text_projection)")
    if getattr(model, "logit_bias", None) is not None:
        raise _refuse("the model has a logit bias (a SigLIP-style loss), which CLIPModel lacks")
    _check_blocks(visual.transformer, "image")
    _check_blocks(model.transformer, "text")
    tok = loaded.tokenizer
    if not isinstance(tok, SimpleTokenizer) or tok.clean_fn is not get_clean_fn("lower") or tok.reduction_fn:
        raise _refuse(f"the tokenizer is {type(tok).__name__} with custom cleaning; only open_clip's default "
                      "lower-casing BPE tokenizer maps onto CLIPTokenizer")
    if len(tok.encoder) != model.vocab_size or (tok.sot_token_id, tok.eot_token_id) != (len(tok.encoder) - 2,
                                                                                      len(tok.encoder) - 1):
        raise _refuse("the tokenizer's vocabulary does not end in the start and end tokens of the text tower")
    image_processor_kwargs(loaded.preprocess_cfg)  # raises where the preprocessing has no CLIPImageProcessor form


# --- configs -------------------------------------------------------------------------------


def _tower_config(transformer: nn.Module, norm: nn.LayerNorm, act: str, projection_dim: int) -> dict:
    block = transformer.resblocks[0]
    return {
        "hidden_size": block.attn.embed_dim,
        "intermediate_size": block.mlp.c_fc.out_features,
        "num_hidden_layers": len(transformer.resblocks),
        "num_attention_heads": block.attn.num_heads,
        "hidden_act": act,
        "layer_norm_eps": norm.eps,
        "projection_dim": projection_dim,
    }


def clip_config_dict(loaded: LoadedModel) -> dict:
    """Keyword arguments of ``CLIPConfig`` that describe ``loaded.model`` exactly."""
    model = loaded.model
    visual = model.visual
    embed_dim = visual.proj.shape[1]
    vision = _tower_config(visual.transformer, visual.ln_post, _activation(visual.transformer.resblocks, "image"),
                           embed_dim)
    vision.update(image_size=visual.image_size[0], patch_size=visual.patch_size[0], num_channels=3)
    text = _tower_config(model.transformer, model.ln_final, _activation(model.transformer.resblocks, "text"),
                         embed_dim)
    text.update(vocab_size=model.vocab_size, max_position_embeddings=model.positional_embedding.shape[0],
                bos_token_id=loaded.tokenizer.sot_token_id, eos_token_id=loaded.tokenizer.eot_token_id,
                pad_token_id=1)  # pad id as in the OpenAI releases; EOS pooling never reads it
    dtype = str(visual.proj.dtype).removeprefix("torch.")
    return {"text_config": text, "vision_config": vision, "projection_dim": embed_dim,
            "logit_scale_init_value": float(model.logit_scale.detach()), "dtype": dtype}


def image_processor_kwargs(preprocess_cfg: dict) -> dict:
    """``CLIPImageProcessor`` keyword arguments equal to open_clip's eval transform for ``preprocess_cfg``."""
    resize_mode = preprocess_cfg.get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "squash"):
        raise _refuse(f"preprocess resize_mode {resize_mode!r} (letterbox) has no CLIPImageProcessor form")
    if preprocess_cfg.get("interpolation", "bicubic") not in _RESAMPLE:
        raise _refuse(f"preprocess interpolation {preprocess_cfg.get('interpolation')!r} has no CLIPImageProcessor form")
    size = preprocess_cfg.get("size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    kwargs = {
        "image_mean": list(preprocess_cfg["mean"]), "image_std": list(preprocess_cfg["std"]),
        "resample": _RESAMPLE[preprocess_cfg.get("interpolation", "bicubic")],
        "do_convert_rgb": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_resize": True,
    }
    if resize_mode == "squash":
        kwargs.update(size={"height": height, "width": width}, do_center_crop=False)
    else:
        if height != width:
            raise _refuse(f"preprocess size {height}x{width} is not square")
        kwargs.update(size={"shortest_edge": height}, crop_size={"height": height, "width": width},
                      do_center_crop=True)
    return kwargs


def bpe_vocabulary(open_clip_tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """open_clip's BPE vocabulary (token -> id, special tokens renamed as CLIPTokenizer names them)
    and its merges in rank order."""
    vocab = {_OPEN_CLIP_SPECIALS.get(token, token): index for token, index in open_clip_tokenizer.encoder.items()}
    merges = [pair for pair, _ in sorted(open_clip_tokenizer.bpe_ranks.items(), key=lambda item: item[1])]
    return vocab, merges


def build_tokenizer(open_clip_tokenizer, context_length: int):
    """A ``CLIPTokenizer`` with open_clip's BPE vocabulary and merges."""
    transformers = import_transformers()
    vocab, merges = bpe_vocabulary(open_clip_tokenizer)
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length,
                                      bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN,
                                      pad_token=EOS_TOKEN)


def _write_bpe_files(open_clip_tokenizer, folder: Path) -> None:
    """``vocab.json`` and ``merges.txt``, for readers that build the tokenizer from them."""
    vocab, merges = bpe_vocabulary(open_clip_tokenizer)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [" ".join(pair) for pair in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- weights -------------------------------------------------------------------------------


def _map_blocks(state: dict[str, torch.Tensor], src: str, dst: str, layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        s, d = f"{src}.{i}", f"{dst}.{i}"
        for part in ("weight", "bias"):
            q, k, v = state[f"{s}.attn.in_proj_{part}"].chunk(3, dim=0)
            out.update({f"{d}.self_attn.q_proj.{part}": q, f"{d}.self_attn.k_proj.{part}": k,
                        f"{d}.self_attn.v_proj.{part}": v})
            out[f"{d}.self_attn.out_proj.{part}"] = state[f"{s}.attn.out_proj.{part}"]
            out[f"{d}.layer_norm1.{part}"] = state[f"{s}.ln_1.{part}"]
            out[f"{d}.layer_norm2.{part}"] = state[f"{s}.ln_2.{part}"]
            out[f"{d}.mlp.fc1.{part}"] = state[f"{s}.mlp.c_fc.{part}"]
            out[f"{d}.mlp.fc2.{part}"] = state[f"{s}.mlp.c_proj.{part}"]
    return out


def map_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ``CLIPModel`` state dict of an open_clip ``CLIP`` (contiguous copies, source dtypes)."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    out = {
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "visual_projection.weight": state["visual.proj"].T,
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_projection.weight": state["text_projection"].T,
        "logit_scale": state["logit_scale"],
    }
    for part in ("weight", "bias"):
        out[f"vision_model.pre_layrnorm.{part}"] = state[f"visual.ln_pre.{part}"]
        out[f"vision_model.post_layernorm.{part}"] = state[f"visual.ln_post.{part}"]
        out[f"text_model.final_layer_norm.{part}"] = state[f"ln_final.{part}"]
    out.update(_map_blocks(state, "visual.transformer.resblocks", "vision_model.encoder.layers",
                           len(model.visual.transformer.resblocks)))
    out.update(_map_blocks(state, "transformer.resblocks", "text_model.encoder.layers",
                           len(model.transformer.resblocks)))
    return {k: v.contiguous().cpu().clone() for k, v in out.items()}


def _check_fits(config, tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``CLIPModel(config)`` is present with its shape (built on the meta device)."""
    transformers = import_transformers()
    with torch.device("meta"):
        expected = transformers.CLIPModel(config).state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tuple(expected[k].shape) != tuple(tensors[k].shape)]
    if missing or extra or wrong:  # a bug in the mapping, not a user error
        raise RuntimeError(f"export mapping does not fit CLIPModel: missing {missing[:3]}, extra {extra[:3]}, "
                           f"wrong shape {wrong[:3]}")


# --- writing -------------------------------------------------------------------------------


def export_to_transformers(loaded: LoadedModel, out: Path, overwrite: bool) -> dict:
    """Write ``loaded`` as a transformers CLIP folder at ``out``; return what was written.

    The result: ``{"out", "files": {name: sha256}, "config": CLIPConfig kwargs, "source": {...},
    "transformers": version}``. ``out`` appears only once complete; an existing ``out`` is
    replaced only with ``overwrite``.
    """
    transformers = import_transformers()
    check_exportable(loaded)
    config_kwargs = clip_config_dict(loaded)
    config = transformers.CLIPConfig(**config_kwargs)
    config.architectures = ["CLIPModel"]
    tensors = map_state_dict(loaded.model)
    _check_fits(config, tensors)
    tokenizer = build_tokenizer(loaded.tokenizer, config_kwargs["text_config"]["max_position_embeddings"])
    image_processor = transformers.CLIPImageProcessor(**image_processor_kwargs(loaded.preprocess_cfg))
    source = {"model": portable_path(loaded.display_name or loaded.model_name),
              "pretrained": portable_path(loaded.pretrained), "checkpoint_sha256": loaded.checkpoint_sha256}
    unlearning = unlearning_facts(loaded.checkpoint_path)
    metadata = {"format": "pt", "ccup_export_from": "open_clip", "ccup_source_model": str(source["model"]),
                "ccup_source_sha256": str(loaded.checkpoint_sha256),
                **{f"ccup_unlearning_{key}": value for key, value in (unlearning or {}).items()}}
    files: dict[str, str] = {}
    out = Path(out)
    receipt = CommitReceipt()
    with atomic_dir(out, overwrite, receipt) as tmp:
        config.save_pretrained(str(tmp))
        image_processor.save_pretrained(str(tmp))  # preprocessor_config.json
        tokenizer.save_pretrained(str(tmp))  # tokenizer.json, tokenizer_config.json
        _write_bpe_files(loaded.tokenizer, tmp)  # vocab.json, merges.txt for tokenizers without tokenizer.json
        files[WEIGHTS_NAME] = save_safetensors(tensors, tmp / WEIGHTS_NAME, metadata)
        (tmp / "README.md").write_text(export_readme(source, unlearning), encoding="utf-8")
        for path in sorted(tmp.iterdir()):
            if path.name != WEIGHTS_NAME:
                files[path.name] = sha256_file(path)
    return {"out": str(out.absolute()), "files": dict(sorted(files.items())), "config": config_kwargs,
            "source": source, "unlearning": unlearning, "transformers": transformers.__version__,
            **({"replaced": receipt.replaced} if receipt.replaced else {})}


# the string metadata an unlearned checkpoint carries (writer.write_checkpoint_folder) that an export keeps
UNLEARNING_KEYS = ("method", "alpha", "forget", "forget_domains", "fold_site", "steps", "lr", "model", "pretrained",
                   "source_sha256", "spec_sha256", "ccup_version")


def unlearning_facts(checkpoint: Path | None) -> dict[str, str] | None:
    """What ``ccup unlearn`` recorded in a checkpoint's safetensors metadata, or None for a model that
    was never unlearned (no ``method`` key)."""
    if checkpoint is None or Path(checkpoint).suffix != ".safetensors" or not Path(checkpoint).is_file():
        return None
    with safe_open(str(checkpoint), framework="pt") as f:
        metadata = f.metadata() or {}
    if "method" not in metadata or "ccup_version" not in metadata:
        return None
    return {key: metadata[key] for key in UNLEARNING_KEYS if key in metadata}


def export_readme(source: dict, unlearning: dict[str, str] | None) -> str:
    """The exported folder's README.md: where the weights came from and, for an unlearned model, what
    was forgotten, how, and what that does not remove."""
    lines = ["# A CLIP model exported by `ccup export`", "",
             f"Converted from the open_clip model `{source['model']}` (weights sha256 "
             f"`{(source['checkpoint_sha256'] or 'random-init')[:12]}…`) into a transformers `CLIPModel` folder: "
             "`CLIPModel.from_pretrained` and `CLIPProcessor.from_pretrained` load it alone. The conversion "
             "maps every weight one to one.", ""]
    if unlearning is None:
        lines += ["No unlearning: this is the source model in another format.", ""]
        return "\n".join(lines)
    forget = ", ".join(json.loads(unlearning.get("forget", "[]"))) or "no class"
    domains = json.loads(unlearning.get("forget_domains", "[]"))
    how = (f"`{unlearning['method']}`" + (f", α = {unlearning['alpha']}" if "alpha" in unlearning else "")
           + (f", {unlearning['steps']} fine-tuning steps" if "steps" in unlearning else "")
           + (f", folded into `{unlearning['fold_site']}`" if "fold_site" in unlearning else ""))
    tower = ("the text tower's final linear map" if "text" in unlearning.get("fold_site", "")
             else "the image tower's final linear map")
    lines += ["## Unlearning", "",
              f"The source was made by `ccup unlearn` {unlearning.get('ccup_version', '')}: forget {forget}"
              + (f" in the domains {', '.join(domains)}" if domains else "") + f"; method {how}.",
              f"It was unlearned from `{unlearning.get('model', '?')}` / `{unlearning.get('pretrained', '?')}` "
              f"(sha256 `{unlearning.get('source_sha256', '?')[:12]}…`); the unlearning spec's sha256 is "
              f"`{unlearning.get('spec_sha256', '?')[:12]}…`.", "",
              "The same facts are in `model.safetensors`'s metadata, as `ccup_unlearning_*` keys.", "",
              "## What this does and does not remove", "",
              f"The unlearning changed {tower} (fine-tuning: its last layers). It removes zero-shot recognition "
              "of the forgotten classes; with the default sink, text search no longer finds them at the top but "
              "avoids them at the bottom (`ccup audit`: NOT GONE). It does not remove what a probe trained on "
              "labelled images can decode; `ccup audit` on the unlearn output folder measures that.", ""]
    return "\n".join(lines)
