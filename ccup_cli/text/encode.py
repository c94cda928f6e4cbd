"""Fast exact text encoding and the on-disk text-embedding cache (templates: ``templates.py``).

The fast path: a causal text tower pooled at the EOT token cannot let positions after
the EOT token influence it, so running the tower on only the first ``L`` positions, where
``L`` is one past the last EOT position in the batch, gives the same features as the full
``context_length`` run. Prompts are also sorted by length so that each batch is cut as
short as its own prompts allow. Towers where this does not hold fall back to
``model.encode_text``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..output.cache import cached_tensor
from ..runtime import distributed

# --- fast exact encoding -------------------------------------------------------------------


@dataclass
class _CausalTextTower:
    token_embedding: nn.Module
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: nn.Module | torch.Tensor | None
    attn_mask: torch.Tensor
    pool_type: str
    eos_id: int | None


def _causal_tower(model: nn.Module) -> _CausalTextTower | None:
    """The pieces of a causal, EOT-pooled text tower, or None where the fast path is not exact."""
    from open_clip.transformer import TextTransformer

    owner = None
    if all(hasattr(model, a) for a in ("token_embedding", "positional_embedding", "transformer", "ln_final")):
        owner, pool_type, eos_id = model, getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None)
    elif isinstance(getattr(model, "text", None), TextTransformer):
        text = model.text
        if text.cls_emb is not None or getattr(text, "use_pad_mask", False):
            return None
        owner, pool_type, eos_id = text, text.pool_type, getattr(text, "eos_id", None)
    if owner is None or getattr(owner, "attn_mask", None) is None:
        return None
    if pool_type not in ("argmax", "eos") or (pool_type == "eos" and eos_id is None):
        return None
    return _CausalTextTower(
        owner.token_embedding, owner.positional_embedding, owner.transformer, owner.ln_final,
        getattr(owner, "text_projection", None), owner.attn_mask, pool_type, eos_id,
    )


def supports_fast_text(model: nn.Module) -> bool:
    return _causal_tower(model) is not None


def _pool_positions(tokens: torch.Tensor, tower: _CausalTextTower) -> torch.Tensor:
    if tower.pool_type == "argmax":
        return tokens.argmax(dim=-1)
    return (tokens == tower.eos_id).int().argmax(dim=-1)


def encode_tokens(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Text features ``[n, d]`` for token ids ``[n, context_length]``, keeping autograd.

    Runs the causal tower on only as many positions as the batch's last pooled token
    needs; equal to ``model.encode_text(tokens)`` up to float rounding.
    """
    tower = _causal_tower(model)
    if tower is None:
        return model.encode_text(tokens)
    pool_at = _pool_positions(tokens, tower)
    length = int(pool_at.max().item()) + 1
    cut = tokens[:, :length]
    cast_dtype = tower.transformer.get_cast_dtype() if hasattr(tower.transformer, "get_cast_dtype") else None
    x = tower.token_embedding(cut)
    if cast_dtype is not None:
        x = x.to(cast_dtype)
    x = x + tower.positional_embedding[:length].to(x.dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), pool_at]
    if tower.text_projection is not None:
        if isinstance(tower.text_projection, nn.Linear):
            x = tower.text_projection(x)
        else:
            x = x @ tower.text_projection
    return x


def prompt_batches(model: nn.Module, tokens: torch.Tensor, batch_size: int = 256) -> list[torch.Tensor]:
    """The batches ``encode_prompts`` runs, as index tensors into ``tokens [n, context_length]``.

    Prompts of equal token length go together (at most ``batch_size``), so no batch is cut
    longer than its prompts need. Sharding whole batches of this plan over ranks gives each
    prompt the same batch, hence the same bits, as a single process.
    """
    tower = _causal_tower(model)
    if tower is None:
        return list(torch.arange(len(tokens)).split(batch_size))
    lengths = _pool_positions(tokens, tower)
    order = torch.argsort(lengths, stable=True)
    sorted_lengths = lengths[order].tolist()
    batches, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and stop - start < batch_size and sorted_lengths[stop] == sorted_lengths[start]:
            stop += 1
        batches.append(order[start:stop])
        start = stop
    return batches


def encode_prompts(
    model: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    prompts: Sequence[str],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Unnormalised text features ``[n, d]`` (float32, on the model's device) for ``prompts``.

    Equal to ``model.encode_text(tokenizer(prompts))`` within 1e-4. Prompts of equal token
    length are encoded together (at most ``batch_size`` a batch), then put back in the given
    order. ``progress`` is
    called with the number of prompts done after each batch.
    """
    if len(prompts) == 0:
        raise ValueError("encode_prompts needs at least one prompt")
    device = next(model.parameters()).device
    tokens = tokenizer(list(prompts))
    batches = prompt_batches(model, tokens, batch_size)
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for idx in batches:
            feats = encode_tokens(model, tokens[idx].to(device)).float()
            if out is None:
                out = torch.empty(len(prompts), feats.shape[-1], dtype=torch.float32, device=feats.device)
            out[idx.to(feats.device)] = feats
            if progress is not None:
                progress(len(idx))
    assert out is not None
    return out


def class_embeddings(features: torch.Tensor, n_classes: int, n_templates: int) -> torch.Tensor:
    """Zero-shot class embeddings ``[n_classes, d]`` from class-major prompt features.

    The usual recipe: normalise each template embedding, average per class, renormalise.
    """
    per_template = F.normalize(features.float(), dim=-1).reshape(n_classes, n_templates, -1)
    return F.normalize(per_template.mean(dim=1), dim=-1)


# --- cache ---------------------------------------------------------------------------------


def text_cache_key(checkpoint_sha256: str, model_name: str, prompts: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"checkpoint": checkpoint_sha256, "model": model_name}).encode())
    for p in prompts:
        h.update(p.encode("utf-8") + b"\0")
    return h.hexdigest()


def cached_encode_prompts(
    encode: Callable[..., torch.Tensor],
    prompts: Sequence[str],
    cache_key: str | None,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, bool]:
    """``encode(prompts, batch_size, progress)`` through the on-disk cache: (features on the CPU, cache_hit).

    ``encode`` is a backend's ``encode_prompts``. ``cache_key`` None disables the cache
    (in-memory models, random init, ``--no-cache``).
    """
    feats, hit = cached_tensor("text", cache_key, len(prompts),
                               lambda: encode(list(prompts), batch_size, progress).float().cpu())
    if hit and progress is not None:
        progress(len(prompts))
    return feats, hit


def encode_prompts_sharded(model, tokenizer, prompts: list[str], batch_size: int = 256,
                           all_ranks: bool = False) -> torch.Tensor | None:
    """``encode_prompts`` split over the ranks: ``[n, d]`` float32 on rank 0's CPU.

    Every rank tokenizes all prompts (cheap) and takes a contiguous share of the batches of
    ``prompt_batches``: each prompt is encoded in the same batch as in one process, so
    the rows are bit-for-bit the single-process ones (at the same thread count).
    """
    here = distributed.world()
    tokens = tokenizer(list(prompts))
    plan = prompt_batches(model, tokens, batch_size)
    share = distributed.shard_indices(len(plan), here.rank, here.world_size)
    mine = plan[share.start:share.stop]
    device = next(model.parameters()).device
    width = None
    rows = []
    with distributed.phase("encoding prompts"), torch.inference_mode():
        for idx in mine:
            rows.append(encode_tokens(model, tokens[idx].to(device)).float().cpu())
        if not rows:  # fewer batches than ranks: learn the width from one prompt
            width = encode_tokens(model, tokens[:1].to(device)).shape[-1]
    local = torch.cat(rows) if rows else torch.empty(0, width)
    gathered = distributed.gather_varied(local, all_ranks=all_ranks)
    if gathered is None:
        return None
    order = torch.cat(plan)
    out = torch.empty_like(gathered)
    out[order] = gathered
    return out
